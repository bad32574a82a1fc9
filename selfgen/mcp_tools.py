"""Real tools over MCP: the servers of an `mcpServers` JSON file, as langchain-core tools.

The file is the one MCP clients share (Claude Desktop, Cursor, ...): each entry of
`mcpServers` is a stdio server (`command`, optional `args`, `env`, `cwd`) or a streamable HTTP
server (`url`, optional `headers`). langchain-mcp-adapters turns each server's tools into
langchain-core tools, so their JSON schemas reach prompts, constraints, validation and export
the way the tools of a `tools/` folder do.

A call opens its own session (for a stdio server, its own server process): a server that
crashes fails that call only. Every call is validated against the tool's schema before it is
sent, and bounded by a timeout; an error the server reports, a crash, a refused connection or
a hang all become a failed call with its reason, as a sandbox failure does. Each tool is
recorded with its server and a hash of its schema, so that a replay can say which tool has
changed since the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfgen.sandbox import MAX_OUTPUT, ToolResult
from selfgen.tooling import ToolError, ToolSpec, validate_arguments

# Seconds to start a server and list its tools (a server started with npx or uvx may first
# install itself).
LOAD_TIMEOUT_S = 120.0


def read_mcp_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """The connections of an `mcpServers` file, by server name, in the form
    langchain-mcp-adapters takes; a defect is a ToolError naming the file and the server."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolError(f"--mcp-config: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ToolError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict) or not servers:
        raise ToolError(f"{path}: needs an 'mcpServers' object naming at least one server")
    out = {}
    for name, entry in servers.items():
        where = f"{path}: server '{name}'"
        if not isinstance(entry, dict):
            raise ToolError(f"{where}: must be an object")
        if "command" in entry:
            args, env = entry.get("args", []), entry.get("env")
            if not isinstance(entry["command"], str) or not (
                isinstance(args, list) and all(isinstance(a, str) for a in args)
            ):
                raise ToolError(f"{where}: 'command' must be text and 'args' a list of text")
            if env is not None and not (
                isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
            ):
                raise ToolError(f"{where}: 'env' must map names to text")
            conn: dict[str, Any] = {
                "transport": "stdio",
                "command": entry["command"],
                "args": args,
                "env": env,
            }
            if isinstance(entry.get("cwd"), str):
                conn["cwd"] = entry["cwd"]
        elif "url" in entry:
            transport = entry.get("transport", entry.get("type", "streamable_http"))
            if transport not in ("streamable_http", "streamable-http", "http"):
                raise ToolError(
                    f"{where}: transport '{transport}' is not supported (stdio or streamable HTTP)"
                )
            headers = entry.get("headers")
            if not isinstance(entry["url"], str) or (
                headers is not None and not isinstance(headers, dict)
            ):
                raise ToolError(f"{where}: 'url' must be text and 'headers' an object")
            conn = {"transport": "streamable_http", "url": entry["url"]}
            if headers:
                conn["headers"] = headers
        else:
            raise ToolError(f"{where}: needs a 'command' (stdio) or a 'url' (streamable HTTP)")
        out[name] = conn
    return out


def schema_hash(spec: ToolSpec) -> str:
    """A short hash of everything a model is shown of a tool: name, description, schema."""
    text = json.dumps(spec.openai(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ToolSource:
    """Where a tool comes from: its MCP server (or "" for a tools folder) and schema hash."""

    server: str
    schema_hash: str


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failed call, from an exception or an exception group."""
    # anyio task groups raise groups (Python >= 3.11), so the first member is the reason.
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(content: Any) -> str:
    """A tool's content as text: the text of its content blocks, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, str):
                parts.append(block)
            else:
                parts.append(json.dumps(block, ensure_ascii=False, default=str))
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False, default=str)


class McpTools:
    """The tools of the servers of an `mcpServers` file; `call` runs one of them."""

    def __init__(self, path: str | Path, timeout_s: float = 5.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s
        self.connections = read_mcp_config(path)
        self._tools: dict[str, Any] = {}
        self.specs: dict[str, ToolSpec] = {}
        self.sources: dict[str, ToolSource] = {}
        self._load()

    def _load(self) -> None:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        try:
            from langchain_mcp_adapters.client import MultiServerMCPClient
        except ImportError:
            raise ToolError(
                "--mcp-config needs the MCP client: pip install 'selfgen[mcp]'"
            ) from None

        # An MCP error result raises, so that it becomes a failed call with its text.
        client = MultiServerMCPClient(self.connections, handle_tool_errors=False)  # type: ignore[arg-type]
        for server in self.connections:
            try:
                tools = asyncio.run(
                    asyncio.wait_for(client.get_tools(server_name=server), LOAD_TIMEOUT_S)
                )
            except (TimeoutError, asyncio.TimeoutError):
                raise ToolError(
                    f"{self.path}: server '{server}' did not list its tools within"
                    f" {LOAD_TIMEOUT_S:g} s"
                ) from None
            except BaseException as exc:  # a server's own failure, whatever it raised
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise ToolError(
                    f"{self.path}: server '{server}' could not be started or reached"
                    f" ({_reason(exc)})"
                ) from None
            for tool in tools:
                if tool.name in self._tools:
                    raise ToolError(
                        f"{self.path}: servers '{self.sources[tool.name].server}' and"
                        f" '{server}' both have a tool named '{tool.name}'"
                    )
                fn = convert_to_openai_tool(tool)["function"]
                spec = ToolSpec(tool.name, fn.get("description", ""), fn.get("parameters", {}))
                self._tools[tool.name] = tool
                self.specs[tool.name] = spec
                self.sources[tool.name] = ToolSource(server, schema_hash(spec))

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Validate the arguments against the tool's schema, then call it on its server."""
        start = time.monotonic()
        if name not in self._tools:
            return ToolResult(False, error=f"unknown tool '{name}'")
        if problem := validate_arguments(self.specs[name], arguments):
            return ToolResult(False, error=f"invalid arguments: {problem}")
        server = self.sources[name].server
        try:
            content = asyncio.run(
                asyncio.wait_for(self._tools[name].ainvoke(arguments), self.timeout_s)
            )
        except (TimeoutError, asyncio.TimeoutError):
            return ToolResult(
                False,
                error=f"timed out after {self.timeout_s:g} s (server '{server}')",
                seconds=time.monotonic() - start,
            )
        except BaseException as exc:  # the server's failure becomes the call's reason
            if isinstance(exc, KeyboardInterrupt):
                raise
            from langchain_core.tools import ToolException

            what = "the tool reported an error" if isinstance(exc, ToolException) else "failed"
            return ToolResult(
                False,
                error=f"{what} (server '{server}'): {_reason(exc)}"[:MAX_OUTPUT],
                seconds=time.monotonic() - start,
            )
        return ToolResult(
            True, output=_text(content)[:MAX_OUTPUT], seconds=time.monotonic() - start
        )

    def close(self) -> None:
        """Nothing stays open between calls; here for the same use as a sandbox."""


class ToolBox:
    """The tools of a run: those of a tools folder (run in the sandbox) and those of MCP
    servers, called by name."""

    def __init__(self, sandbox: Any | None, mcp: McpTools | None) -> None:
        self.sandbox = sandbox
        self.mcp = mcp

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self.mcp is not None and name in self.mcp.specs:
            return self.mcp.call(name, arguments)
        if self.sandbox is None:
            return ToolResult(False, error=f"unknown tool '{name}'")
        return self.sandbox.call(name, arguments)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def __enter__(self) -> ToolBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
