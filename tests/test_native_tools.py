"""Tool calls in the model's own format (`tool_protocol = "native"`): chat messages with the
tools, calls parsed by the server, verified like text-protocol calls."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd

from selfgen.backends.base import GenerationRequest, SamplingParams
from selfgen.config import ConfigError, build_config
from selfgen.records import ToolCall, ToolSeed
from selfgen.stages.native_agent import (
    NativeToolAgent,
    demo_messages,
    parse_native_calls,
    request_messages,
)
from selfgen.tooling import tool_specs


@pytest.fixture(scope="module")
def specs():
    return tool_specs(str(ROOT / "tools"))


def test_calls_as_the_server_found_them_are_parsed_or_rejected_with_a_reason(specs):
    calls, problem = parse_native_calls(
        [
            {"name": "weekday", "arguments": {"day": "2026-07-04"}},
            {"name": "weekday", "arguments": {"day": "2026-12-25"}},
        ],
        [],
        specs,
    )
    assert problem is None
    assert [(c.name, c.parallel) for c in calls] == [("weekday", False), ("weekday", True)]
    cases = [
        ([{"name": "weekday", "arguments": '{"day": "2026-07-04"'}], [], "arguments_not_an_object"),
        ([{"name": "teleport", "arguments": {}}], [], "unknown_tool:teleport"),
        ([{"arguments": {}}], [], "no_tool_name"),
        ([], ["<tool_call> block is not JSON"], "unparsed_call: <tool_call> block is not JSON"),
        (
            [{"name": "weekday", "arguments": {"day": "2026-07-04"}}] * 2,
            [],
            "duplicate_calls",
        ),
        (
            [{"name": "weekday", "arguments": {"day": "2026-07-04"}}, {"name": "x"}],
            [],
            "call 2: unknown_tool:x",
        ),
    ]
    for raw, errors, reason in cases:
        assert parse_native_calls(raw, errors, specs) == ([], reason)


def test_worked_examples_become_earlier_turns_with_their_own_call_ids():
    seeds = [
        ToolSeed("a", "What is 2 + 3?", (ToolCall("calculator", {"expression": "2 + 3"}, "5"),),
                 "It is 5."),
        ToolSeed("b", "Hello!", (), "Hello, how can I help?"),
    ]  # fmt: skip
    messages = demo_messages(seeds)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user",
                                             "assistant"]  # fmt: skip
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == "example0_call_0"
    assert messages[1]["content"] is None
    # Sent with empty content for a turn of calls: llama_cpp.server refuses null.
    assert request_messages(messages)[1]["content"] == ""
    assert request_messages(messages)[3]["content"] == "It is 5."


def test_the_first_step_names_the_target_tool_and_the_last_allows_none(specs):
    from selfgen.records import Trace

    cfg = build_config({}, {"tools": str(ROOT / "tools"), "num_traces": 1,
                            "tool_protocol": "native"})  # fmt: skip
    agent = NativeToolAgent(cfg, specs, [], sandbox=None)
    trace = Trace(request="r", generation_index=0, target="weekday")
    assert agent.tool_choice(trace, 0) == {"type": "function", "function": {"name": "weekday"}}
    assert agent.tool_choice(trace, 1) == "auto"
    assert agent.tool_choice(trace, cfg.max_tool_steps) == "none"
    assert agent.tool_choice(Trace(request="r", generation_index=0), 0) == "auto"
    with pytest.raises(ValueError, match="tool_choice goes with tools"):
        GenerationRequest(params=SamplingParams(), messages=({"role": "user", "content": "x"},),
                          tool_choice="auto")  # fmt: skip


def test_an_unknown_protocol_is_one_error():
    with pytest.raises(ConfigError, match="tool_protocol.*'text' or 'native'"):
        build_config({}, {"tool_protocol": "xml"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def function_server():
    """`python -m llama_cpp.server` on the bundled GGUF with a chat format that parses calls
    and constrains a named tool's arguments to its schema."""
    from selfgen.backends.llamacpp import bundled_model_path

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192", "--n_threads", "2",
         "--chat_format", "chatml-function-calling"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600  # stops only a server that never starts
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=5)
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start")
    yield url
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_native_run_against_a_real_server(function_server, tmp_path):
    """The bundled model behind llama_cpp.server with chatml-function-calling: every agent
    step is a chat request with the tools; the first names the request's tool, and the server
    returns calls of that tool, which are validated, executed and checked like any other."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--seeds", str(SEEDS), "--tools", "tools", "--num-traces", "1",
         "-n", "1", "--max-rounds", "1", "--seed", "1", "--backend", "openai", "--base-url",
         function_server, "--tool-protocol", "native", "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OPENAI_API_KEY": "local"},
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = sqlite3.connect(out / "selfgen.db")
    steps = db.execute(
        "SELECT id, messages, constraint_spec, response FROM generations WHERE stage = 'tool_chat'"
    ).fetchall()
    assert steps
    first_steps = {
        json.loads(ids)[0]: json.loads(msgs)
        for ids, msgs in db.execute(
            "SELECT step_generation_ids, messages FROM traces WHERE step_generation_ids != '[]'"
        )
    }
    assert first_steps
    executed = 0
    for gen_id, messages, spec, response in steps:
        messages, spec, response = json.loads(messages), json.loads(spec), json.loads(response)
        assert messages[-1]["role"] in ("user", "tool")
        assert set(response) == {"content", "tool_calls", "tool_call_errors"}
        if gen_id in first_steps:
            named = spec["tool_choice"]["function"]["name"]
            # The server constrains the call to the named tool.
            assert [c["name"] for c in response["tool_calls"]] == [named]
            trace = first_steps[gen_id]
            if len(trace) > 1:
                assert trace[1]["tool_calls"][0]["function"]["name"] == named
                executed += 1
    assert executed, "no call of the named tool was executed"
    for (checks,) in db.execute("SELECT checks FROM traces WHERE checks != '{}'"):
        assert set(json.loads(checks)) <= {"format", "target", "execution", "grounding",
                                           "semantic"}  # fmt: skip
