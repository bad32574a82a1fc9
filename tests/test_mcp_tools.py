"""Tools of real MCP servers (tests/mcp_fixture_server.py, written with the `mcp` SDK), over
stdio and streamable HTTP: listed, validated, called; an error, a crash and a hang are failed
calls with their reasons; a run records each tool's server and schema hash, and a replay
tells a tool that has changed."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd

pytest.importorskip("langchain_mcp_adapters")

from selfgen.backends.base import get_backend  # noqa: E402
from selfgen.config import build_config  # noqa: E402
from selfgen.loop import Loop  # noqa: E402
from selfgen.mcp_tools import McpTools, ToolBox, read_mcp_config  # noqa: E402
from selfgen.records import ToolCall, ToolSeed  # noqa: E402
from selfgen.seeds import load_seed_tasks  # noqa: E402
from selfgen.store import RunStore  # noqa: E402
from selfgen.tooling import ToolError  # noqa: E402

SERVER = ROOT / "tests" / "mcp_fixture_server.py"


def write_config(path, variant=None, **servers):
    """An mcpServers file with the fixture server on stdio (as `fixture`) and `servers`."""
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    if variant:
        env["MCP_FIXTURE_VARIANT"] = variant
    entries = {"fixture": {"command": sys.executable, "args": [str(SERVER)], "env": env}}
    entries.update(servers)
    path.write_text(json.dumps({"mcpServers": entries}))
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("mcp") / "mcp.json")


@pytest.fixture(scope="module")
def mcp(config):
    return McpTools(config, timeout_s=120.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", r"mcp.json:1: not valid JSON"),
        ("{}", r"needs an 'mcpServers' object"),
        ('{"mcpServers": {"a": {"args": []}}}', r"server 'a': needs a 'command' \(stdio\)"),
        (
            '{"mcpServers": {"a": {"url": "http://x", "transport": "sse"}}}',
            r"server 'a': transport 'sse' is not supported",
        ),
        ('{"mcpServers": {"a": {"command": "x", "args": "y"}}}', r"'args' a list of text"),
    ],
)
def test_bad_config_files_are_one_error(tmp_path, text, message):
    path = tmp_path / "mcp.json"
    path.write_text(text)
    with pytest.raises(ToolError, match=message):
        read_mcp_config(path)


def test_the_servers_tools_and_their_schemas(mcp):
    assert set(mcp.specs) == {"add", "shout", "refuse", "crash", "hang"}
    assert mcp.specs["add"].parameters["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": "integer"},
    }
    assert {s.server for s in mcp.sources.values()} == {"fixture"}
    assert len({s.schema_hash for s in mcp.sources.values()}) == 5


def test_calls_and_their_failures(mcp):
    assert mcp.call("add", {"a": 2, "b": 3}).output == "5"
    assert mcp.call("shout", {"text": "hi"}).output == "HI"
    refused = mcp.call("refuse", {"reason": "closed on Sundays"})
    assert not refused.ok and "the tool reported an error" in refused.error
    assert "refused: closed on Sundays" in refused.error
    # Validated before sending: the server never sees arguments that break the schema.
    invalid = mcp.call("add", {"a": "two", "b": 3})
    assert invalid.error == "invalid arguments: a: 'two' is not of type 'integer'"
    crashed = mcp.call("crash", {"code": 3})
    assert not crashed.ok and crashed.error.startswith("failed (server 'fixture')")
    # A crash fails its own call only.
    assert mcp.call("add", {"a": 1, "b": 1}).output == "2"


def test_a_hanging_server_is_a_timed_out_call(config):
    mcp = McpTools(config, timeout_s=8.0)
    hung = mcp.call("hang", {"seconds": 3600})
    assert not hung.ok and hung.error == "timed out after 8 s (server 'fixture')"
    assert McpTools(config, timeout_s=120.0).call("add", {"a": 1, "b": 2}).output == "3"


def test_a_server_that_cannot_start_is_one_error(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "gone": {"command": sys.executable, "args": ["-c", "raise SystemExit(1)"]}
                }
            }
        )
    )
    with pytest.raises(ToolError, match=r"server 'gone' could not be started or reached"):
        McpTools(path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(3000):  # until the server listens (it imports its framework first)
            assert proc.poll() is None, "the HTTP server ended"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        path = tmp_path / "mcp.json"
        path.write_text(
            json.dumps({"mcpServers": {"web": {"url": f"http://127.0.0.1:{port}/mcp"}}})
        )
        mcp = McpTools(path, timeout_s=30.0)
        assert mcp.sources["add"].server == "web"
        assert mcp.call("add", {"a": 40, "b": 2}).output == "42"
        # The server dies while it holds the request: the call runs into its timeout.
        crashed = mcp.call("crash", {"code": 1})
        assert crashed.error == "timed out after 30 s (server 'web')"
        proc.wait(timeout=60)
        gone = mcp.call("add", {"a": 1, "b": 1})
        assert not gone.ok and gone.error.startswith("failed (server 'web')")
    finally:
        proc.kill()
        proc.wait()


def test_tools_commands_with_mcp(config, child_env):
    listed = subprocess.run(
        [*selfgen_cmd(), "tools", "list", "--mcp-config", str(config), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=900,
    )
    assert listed.returncode == 0, listed.stderr
    assert {t["function"]["name"] for t in json.loads(listed.stdout)} == {
        "add", "shout", "refuse", "crash", "hang",
    }  # fmt: skip
    called = subprocess.run(
        [*selfgen_cmd(), "tools", "call", "add", '{"a": 1, "b": 2}', "--mcp-config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=900,
    )
    assert (called.returncode, called.stdout) == (0, "3\n"), called.stderr
    bad = subprocess.run(
        [*selfgen_cmd(), "tools", "call", "add", '{"a": "x", "b": 2}', "--mcp-config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=900,
    )
    assert bad.returncode == 2
    assert bad.stderr == "error: ARGUMENTS: a: 'x' is not of type 'integer'\n"


REQUEST = "Please add 1200 and 34 for my tally sheet."


def _reply(request):
    prompt = request.prompt
    if prompt.startswith("Come up with a series of tasks"):
        return ""
    if prompt.startswith("An assistant can call these tools"):
        return f" {REQUEST}\n"
    if prompt.endswith("Call:"):
        return " " + json.dumps({"name": "add", "arguments": {"a": 1200, "b": 34}})
    if prompt.endswith("Answer:"):
        return " The sum is 1234."
    return "Answer:"


def test_a_run_on_mcp_tools_records_them_and_replay_tells_a_changed_tool(
    tmp_path, scripted, config, mcp, child_env
):
    cfg = build_config(
        {},
        {
            "backend": "scripted",
            "prompts_per_round": 1,
            "num_tasks": 1,
            "num_traces": 1,
            "max_rounds": 1,
            "trace_prompts_per_round": 1,
            "target_tools": "off",  # the scripted model writes one list for all the tools
            "mcp_config": str(config),
            "tool_timeout_s": 120.0,
        },
    )
    scripted(_reply)
    run = tmp_path / "run"
    store = RunStore.create(run, cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    seed = ToolSeed(
        "mcp_0", "What is 2 plus 3?", (ToolCall("add", {"a": 2, "b": 3}, "5"),), "2 plus 3 is 5."
    )
    sources = {n: (s.server, s.schema_hash) for n, s in mcp.sources.items()}
    store.save_tools(mcp.specs, [seed], sources)
    with ToolBox(None, mcp) as box:
        Loop(cfg, store, get_backend("scripted"), sandbox=box).run()
    row = store.db.execute(
        "SELECT fate, messages FROM traces WHERE request = ?", (REQUEST,)
    ).fetchone()
    assert row["fate"] == "kept"
    assert json.loads(row["messages"])[2]["content"] == "1234"
    assert store.tool_sources()["add"] == sources["add"]
    store.close()

    same = subprocess.run(
        [*selfgen_cmd(), "traces", "replay", str(run)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=900,
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert "1 reproduced, 0 differ" in same.stdout

    changed = write_config(tmp_path / "changed.json", variant="changed")
    proc = subprocess.run(
        [*selfgen_cmd(), "traces", "replay", str(run), "--mcp-config", str(changed)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=900,
    )
    assert proc.returncode == 1
    assert "tool 'add' of server 'fixture' has changed since the run (schema " in proc.stdout
    assert proc.stdout.endswith("1 reproduced, 0 differ; 1 tools changed\n")
