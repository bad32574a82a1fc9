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
from selfgen.backends.vllm import STRUCTURED_OUTPUTS


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
        + ["--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.3"]
        + ["--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS)],
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


# Unit tests of the backend's control flow on a scripted stand-in for vLLM (tests/vllm_standin.py).
# They pin what selfgen does with vLLM's answers and refusals; tests/test_vllm_contract.py checks
# that vLLM itself answers and refuses that way.


def _standin_backend(monkeypatch, **llm_options):
    import vllm_standin

    from selfgen.backends.vllm import VLLMBackend

    vllm_standin.install(monkeypatch)
    llm = vllm_standin.LLM(**llm_options)
    return VLLMBackend(VLLMBackend.Options(model="m", seed=7), llm=llm), llm


def _prompt(text, **params):
    return GenerationRequest(prompt=text, params=SamplingParams(**params))


def test_an_over_long_prompt_is_an_error_completion_and_the_rest_are_answered(monkeypatch):
    backend, llm = _standin_backend(monkeypatch, max_model_len=20)
    out = backend.generate([_prompt("short"), _prompt("x" * 19), _prompt("also short")])
    # "x" * 19 is 20 tokens with the BOS: no room for one token of answer.
    assert [c.finish_reason for c in out] == ["stop", "error", "stop"]
    assert "20 tokens and the context holds 20" in out[1].extra["error"]
    assert out[1].prompt_tokens == 20
    [call] = llm.calls  # one batch, without the over-long prompt
    assert call.inputs == ["short", "also short"]
    assert out[0].prompt_tokens == 6 and out[0].completion_tokens == 2


def test_a_batch_vllm_refuses_is_sent_again_one_by_one(monkeypatch):
    # vLLM counts the prompt as longer than selfgen does (a template it renders differently):
    # it refuses the batch, and only the request it refuses alone fails.
    backend, llm = _standin_backend(monkeypatch, max_model_len=64, limit=10)
    out = backend.generate([_prompt("ab"), _prompt("abcdefghijk"), _prompt("cd")])
    assert [c.finish_reason for c in out] == ["stop", "error", "stop"]
    assert (
        "vLLM refused the request: This model's maximum context length is 10"
        in (out[1].extra["error"])
    )
    assert [c.inputs for c in llm.calls] == [
        ["ab", "abcdefghijk", "cd"],
        ["ab"],
        ["abcdefghijk"],
        ["cd"],
    ]


def test_an_engine_failure_is_a_backend_error(monkeypatch):
    from selfgen.backends.base import BackendError

    backend, llm = _standin_backend(monkeypatch)
    llm.fail = RuntimeError("CUDA error: an illegal memory access")
    with pytest.raises(BackendError, match="vLLM failed .RuntimeError: CUDA error"):
        backend.generate([_prompt("a")])


@pytest.mark.parametrize("reason", ["abort", "error", "repetition", None])
def test_finish_reasons_other_than_stop_and_length_are_errors(monkeypatch, reason):
    backend, _ = _standin_backend(monkeypatch, reply=lambda _: ("half an answ", reason))
    [comp] = backend.generate([_prompt("a")])
    assert (comp.finish_reason, comp.text) == ("error", "")
    assert comp.extra["error"] == f"vLLM finished the request with '{reason}'"
    backend, _ = _standin_backend(monkeypatch, reply=lambda _: ("cut", "length"))
    assert backend.generate([_prompt("a")])[0].finish_reason == "length"


def test_tool_requests_keep_special_tokens(monkeypatch):
    tool = {"type": "function", "function": {"name": "calculator", "parameters": {}}}
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
    backend, llm = _standin_backend(monkeypatch, max_model_len=200, reply=lambda _: (call, "stop"))
    schema = {"type": "object"}
    requests = [
        GenerationRequest(
            messages=({"role": "user", "content": "1+1?"},),
            params=SamplingParams(),
            tools=(tool,),
        ),
        GenerationRequest(messages=({"role": "user", "content": "hi"},), params=SamplingParams()),
        GenerationRequest(
            prompt="Call:", params=SamplingParams(), constraint=Constraint(json_schema=schema)
        ),
        GenerationRequest(
            prompt="Yes?", params=SamplingParams(), constraint=Constraint(choices=("Yes", "No"))
        ),
    ]
    out = backend.generate(requests)
    assert out[0].extra["tool_calls"] == [
        {"name": "calculator", "arguments": {"expression": "1+1"}}
    ]
    by_kind = {(c.kind, bool(c.kwargs.get("tools"))): c for c in llm.calls}
    [with_tools] = by_kind["chat", True].params
    [without] = by_kind["chat", False].params
    assert with_tools.skip_special_tokens is False and without.skip_special_tokens is True
    json_params, choice_params = by_kind["generate", False].params
    assert json_params.structured_outputs.json == schema
    assert choice_params.structured_outputs.choice == ["Yes", "No"]
    assert json_params.seed == 7  # the backend's seed for requests without one


def test_the_engine_writes_compact_json(monkeypatch):
    import vllm_standin

    from selfgen.backends.vllm import VLLMBackend

    vllm = vllm_standin.install(monkeypatch)
    made = []
    vllm.LLM = lambda **options: made.append(options) or vllm_standin.LLM()
    VLLMBackend(VLLMBackend.Options(model="m", n_ctx=None, seed=3))
    # The per-request field is not read by vLLM 0.33's grammar backends: the engine's is.
    assert made == [
        {
            "model": "m",
            "seed": 3,
            "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
            "tensor_parallel_size": 1,
            "gpu_memory_utilization": 0.9,
            "max_model_len": None,
            "dtype": "auto",
        }
    ]


def test_load_errors_name_the_option_to_change(monkeypatch):
    import vllm_standin

    from selfgen.backends.base import BackendError
    from selfgen.backends.vllm import VLLMBackend, load_error

    vllm = vllm_standin.install(monkeypatch, platform_unspecified=True)
    with pytest.raises(BackendError, match="needs a CUDA GPU") as caught:
        VLLMBackend(VLLMBackend.Options(model="m"))
    assert caught.value.option is None

    message = (
        "1 validation error for ModelConfig\n  Value error, User-specified max_model_len (9000)"
        " is greater than the derived max_model_len (max_position_embeddings=8192.0 or"
        " model_max_length=None in model's config.json). To allow overriding this maximum, set"
        " the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
    )
    error = load_error(ValueError(message), "some/model")
    assert (error.option, error.problem) == (
        "n_ctx",
        "9000 tokens is more than some/model takes (max_position_embeddings=8192 in its"
        " config.json): give 8192 or less",
    )
    error = load_error(OSError("no such model\nmore"), "some/model")
    assert (error.option, error.problem) == ("model", "vLLM cannot load some/model (no such model)")

    def refuse(**_):
        raise ValueError(message)

    vllm_standin.install(monkeypatch)
    vllm = sys.modules["vllm"]
    vllm.LLM = refuse
    with pytest.raises(BackendError) as caught:
        VLLMBackend(VLLMBackend.Options(model="some/model", n_ctx=9000))
    assert caught.value.option == "n_ctx"


def test_hf_model_fixture_writes_dense_weights(hf_model):
    # transformers refuses to save a model that still carries the GGUF quantizer; vLLM needs
    # the folder to load it.
    config = json.loads((hf_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert (hf_model / "model.safetensors").is_file()
    assert (hf_model / "tokenizer.json").is_file()
