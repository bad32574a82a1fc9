"""Tools declared with langchain-core, loaded from a folder of Python modules.

One declaration (`@tool` or `StructuredTool`) gives both the JSON schema (for prompts,
constrained decoding, validation and export, via `convert_to_openai_tool`) and the callable.
Any module-level tool object in a `*.py` file of the folder is loaded; users add their own file.
Tools are executed in the sandbox (selfgen.sandbox), never in the loop's process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ToolError(ValueError):
    """A tools folder or a tool call that cannot be used; the message is meant for the user."""


@dataclass(frozen=True)
class ToolSpec:
    """What the loop knows of a tool: its name, description and JSON schema of arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    # The SHA-256 of the module file that declares the tool, when known (provenance of exports).
    source_sha256: str | None = field(default=None, compare=False)

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def load_tool_objects(folder: str | Path) -> dict[str, Any]:
    """Import every module of `folder` and return its langchain tools by name."""
    return {name: obj for name, (obj, _) in _load_tools(folder).items()}


def _load_tools(folder: str | Path) -> dict[str, tuple[Any, Path]]:
    """Every langchain tool of `folder` by name, with the file that declares it."""
    from langchain_core.tools import BaseTool

    folder = Path(folder)
    if not folder.is_dir():
        raise ToolError(f"--tools: no such folder: {folder}")
    tools: dict[str, tuple[Any, Path]] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"selfgen_user_tools.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a user's module: report it, whatever it raised
            raise ToolError(f"{path}: cannot import ({type(exc).__name__}: {exc})") from None
        for value in vars(module).values():
            if isinstance(value, BaseTool):
                if value.name in tools and tools[value.name][0] is not value:
                    raise ToolError(f"{path}: a second tool named '{value.name}'")
                tools[value.name] = (value, path)
    if not tools:
        raise ToolError(f"--tools: no langchain tool found in {folder}/*.py")
    return tools


def tool_specs(folder: str | Path) -> dict[str, ToolSpec]:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    specs = {}
    for name, (obj, path) in _load_tools(folder).items():
        fn = convert_to_openai_tool(obj)["function"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        specs[name] = ToolSpec(name, fn.get("description", ""), fn.get("parameters", {}), digest)
    return specs


def validate_arguments(spec: ToolSpec, arguments: Any) -> str | None:
    """Why `arguments` do not satisfy the tool's schema, or None when they do."""
    import jsonschema

    try:
        jsonschema.validate(arguments, spec.parameters)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
        return f"{where}: {exc.message}"
    return None
