"""The in-process `vllm` backend, and the `openai` backend against `vllm serve`.

The GPU tests need CUDA and vLLM (`pip install 'selfgen[vllm,tune,test]'`;
`scripts/gpu_check.sh` runs them); they are skipped otherwise. Their model is the bundled
SmolLM2-135M GGUF, converted once to a Hugging Face folder with transformers (no download; the
`hf_model` fixture of conftest.py). The other tests run everywhere: the parsing of tool calls
from model text, the clear error when vLLM is not installed, and unit tests of the backend's
control flow against a scripted stand-in for `vllm.LLM` (tests/vllm_standin.py). That stand-in
only checks what selfgen does with vLLM's answers; tests/test_vllm_contract.py runs the same
paths through vLLM's own request processing.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd

from selfgen.backends.base import (
    Constraint,
    GenerationRequest,
    SamplingParams,
    get_backend,
    parse_hermes_tool_calls,
)


def _cuda() -> bool:
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


gpu = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU and vLLM")


def test_hermes_tool_calls_are_parsed_defensively():
    text = (
        "Let me look.\n<tool_call>\n"
        '{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>\n'
        '<tool_call>{"name": "dates", "arguments": "{\\"days\\": 3}"}</tool_call>\n'
        "<tool_call>not json</tool_call>\n"
        '<tool_call>{"arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "units", "arguments": [1, 2]}</tool_call>\n'
        '<tool_call>{"name": "kb_search", "arguments": {"query": "tea"'
    )
    calls, errors = parse_hermes_tool_calls(text)
    assert calls == [
        {"name": "calculator", "arguments": {"expression": "2+2"}},
        {"name": "dates", "arguments": {"days": 3}},
    ]
    # The last block is cut off (no closing brace, no closing tag): not JSON.
    assert [e.split(":")[0] for e in errors] == [
        "not JSON (Expecting value)",
        "no tool name",
        "arguments are not an object",
        "not JSON (Expecting ',' delimiter)",
    ]
    assert parse_hermes_tool_calls("no calls here") == ([], [])


def test_tools_go_with_chat_messages_only():
    with pytest.raises(ValueError, match="tools go with chat messages"):
        GenerationRequest(params=SamplingParams(), prompt="x", tools=({"type": "function"},))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_missing_is_one_clear_error(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--backend", "vllm", "--model", "some/model"]
        + ["--seeds", str(SEEDS), "--out", str(out), "-n", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "pip install 'selfgen[vllm]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def _batch_invariance() -> bool:
    """Whether vLLM can promise the same answers however a batch is made up: only with
    VLLM_BATCH_INVARIANT=1, on NVIDIA GPUs of compute capability 8.0 or more."""
    import torch

    return torch.cuda.get_device_capability() >= (8, 0)


@pytest.fixture(scope="module")
def vllm_backend(hf_model):
    invariant = _batch_invariance()
    saved = os.environ.get("VLLM_BATCH_INVARIANT")
    if invariant:
        os.environ["VLLM_BATCH_INVARIANT"] = "1"  # read when the engine starts
    try:
        backend = get_backend(
            "vllm", model=str(hf_model), n_ctx=4096, gpu_memory_utilization=0.3, seed=0
        )
    finally:
        if saved is None:
            os.environ.pop("VLLM_BATCH_INVARIANT", None)
        else:
            os.environ["VLLM_BATCH_INVARIANT"] = saved
    backend.batch_invariant = invariant
    yield backend
    backend.close()


@gpu
@pytest.mark.gpu
def test_vllm_constraints_and_seeds(vllm_backend):
    schema = {
        "type": "object",
        "properties": {"name": {"enum": ["calculator", "dates"]}, "n": {"type": "integer"}},
        "required": ["name", "n"],
    }
    requests = [
        GenerationRequest(
            prompt="Is 'Sort these numbers' a classification task? Answer:",
            params=SamplingParams(temperature=0.0, max_tokens=3, seed=1),
            constraint=Constraint(choices=(" Yes", " No")),
        ),
        GenerationRequest(
            prompt="Call a tool as JSON:",
            params=SamplingParams(temperature=0.7, max_tokens=64, seed=2),
            constraint=Constraint(json_schema=schema),
        ),
        GenerationRequest(
            prompt="Write a list of three fruits:\n1.",
            params=SamplingParams(temperature=0.9, max_tokens=32, seed=3),
        ),
    ]
    first = vllm_backend.generate(requests)
    assert first[0].text in (" Yes", " No")
    call = json.loads(first[1].text)
    assert call["name"] in ("calculator", "dates") and isinstance(call["n"], int)
    assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in first)
    # Each request's seed fixes its answer, whatever else is in the batch: vLLM promises it
    # only in its batch-invariant mode (see the fixture).
    if not vllm_backend.batch_invariant:
        pytest.skip("this GPU has no batch-invariant mode (compute capability below 8.0)")
    again = vllm_backend.generate(requests[::-1])[::-1]
    assert [c.text for c in again] == [c.text for c in first]


@gpu
@pytest.mark.gpu
def test_vllm_chat_returns_parsed_tool_calls(vllm_backend):
    tool = {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
    [comp] = vllm_backend.generate(
        [
            GenerationRequest(
                messages=({"role": "user", "content": "What is 17 * 23? Use the calculator."},),
                params=SamplingParams(temperature=0.0, max_tokens=64, seed=4),
                tools=(tool,),
            )
        ]
    )
    # A 135M model may or may not call the tool; whatever it wrote is accounted for.
    assert "tool_calls" in comp.extra and "tool_call_errors" in comp.extra
    for call in comp.extra["tool_calls"]:
        assert isinstance(call["name"], str) and isinstance(call["arguments"], dict)


@gpu
@pytest.mark.gpu
def test_selfgen_run_on_vllm_reaches_its_target(hf_model, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--backend", "vllm", "--model", str(hf_model)]
        + ["--gpu-memory-utilization", "0.3", "--seeds", str(SEEDS), "--out", str(out)]
        + ["-n", "10", "--seed", "1", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reached the target of 10 kept tasks" in proc.stdout


@gpu
@pytest.mark.gpu
def test_openai_backend_against_vllm_serve(hf_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vllm = shutil.which("vllm", path=str(Path(sys.executable).parent)) or "vllm"
    server = subprocess.Popen(
        [vllm, "serve", str(hf_model)]
        + ["--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 900  # only stops a server that never starts
        while server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        backend = get_backend("openai", base_url=url, concurrency=16)
        assert backend.flavour == "vllm"
        [yes_no] = backend.generate(
            [
                GenerationRequest(
                    prompt="Is 'Sort these numbers' a classification task? Answer:",
                    params=SamplingParams(temperature=0.0, max_tokens=3, seed=1),
                    constraint=Constraint(choices=(" Yes", " No")),
                )
            ]
        )
        backend.close()
        assert yes_no.text in (" Yes", " No")
        out = tmp_path / "run"
        proc = subprocess.run(
            [*selfgen_cmd(), "run", "--backend", "openai", "--base-url", url]
            + ["--seeds", str(SEEDS), "--out", str(out), "-n", "10", "--seed", "1", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1200,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "reached the target of 10 kept tasks" in proc.stdout
    finally:
        server.kill()
        server.wait()
