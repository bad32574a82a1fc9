"""vLLM contract tests: selfgen's `vllm` backend and the vLLM path of `selfgen eval`, run through
vLLM 0.33's own `LLM` without a GPU.

These check the API contract, not GPU generation. vLLM's `LLM.__init__` builds and validates its
real config; `LLM.generate` / `LLM.chat` render chat templates (with tools), tokenize, check each
prompt and its SamplingParams, structured-output spec and LoRA request, and turn the engine's
token ids into `RequestOutput`s (detokenizing, cutting at stop strings) with vLLM's own code.
Only the engine core (scheduler and model) is replaced, by tests/vllm_engine_standin.py, which
answers with the token ids of scripted text under the request's real structured-output grammar.
Nothing here shows that a model on a GPU generates well: `scripts/gpu_check.sh` does that on a
machine with one.

vLLM pins its own torch, so it lives in its own environment:

    scripts/vllm_contract_env.sh
    .venv-vllm/bin/python -m pytest tests/test_vllm_contract.py

Skipped where vLLM is not installed (the project's own environment).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (scripts/vllm_contract_env.sh)", allow_module_level=True)

from conftest import ROOT, SEEDS, selfgen_cmd  # noqa: E402
from vllm_engine_standin import FinishReason, engine_core_standin  # noqa: E402

from selfgen.backends.base import (  # noqa: E402
    BackendError,
    Constraint,
    GenerationRequest,
    SamplingParams,
    get_backend,
)
from selfgen.config import build_config  # noqa: E402
from selfgen.stages.tool_agent import call_schema  # noqa: E402

# Renders tools the way Hermes-style templates do, without writing the call tags themselves.
HERMES_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|im_start|>system\nYou may call these tools:\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "Write a call as JSON between the tool call tags.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CALCULATOR = {
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


@pytest.fixture(scope="session")
def standins():
    with engine_core_standin() as made:
        yield made


@pytest.fixture(scope="session")
def llama_style(hf_model, tmp_path_factory):
    """The bundled model with a tokenizer like Llama's and Hermes-style models': it adds a BOS
    to text it encodes, its chat template writes the BOS itself and renders tools, and it marks
    <tool_call> and </tool_call> as special tokens."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("llama-style")
    for path in hf_model.iterdir():
        shutil.copy(path, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"], special_tokens=True)
    tokenizer.chat_template = HERMES_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["bos_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    data = json.loads((folder / "tokenizer.json").read_text())
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def _backend(standins, model, **options):
    backend = get_backend("vllm", {"model": str(model), "seed": 0, **options})
    return backend, standins[-1]


def _prompt(text, **params):
    return GenerationRequest(prompt=text, params=SamplingParams(**params))


def test_selfgen_counts_prompt_tokens_as_vllm_does(standins, llama_style):
    from selfgen.backends.vllm import prompt_token_ids

    backend, core = _backend(standins, llama_style)
    tokenizer = backend._llm.get_tokenizer()
    requests = [
        _prompt("Come up with a series of tasks:\n1."),
        GenerationRequest(
            messages=({"role": "user", "content": "What is 17 * 23?"},), params=SamplingParams()
        ),
        GenerationRequest(
            messages=({"role": "user", "content": "What is 17 * 23?"},),
            params=SamplingParams(),
            tools=(CALCULATOR,),
        ),
    ]
    out = backend.generate(requests)
    received = {tuple(r.prompt_token_ids) for r in core.received[-3:]}
    for request, completion in zip(requests, out, strict=True):
        ids = prompt_token_ids(tokenizer, request)
        assert tuple(ids) in received
        assert completion.prompt_tokens == len(ids)
    # The text prompt has the BOS this tokenizer adds; the chat has the template's one only.
    assert prompt_token_ids(tokenizer, requests[0])[0] == 0
    assert prompt_token_ids(tokenizer, requests[1])[:2] != [0, 0]
    assert len(prompt_token_ids(tokenizer, requests[2])) > len(
        prompt_token_ids(tokenizer, requests[1])
    )
    backend.close()


def test_an_over_long_prompt_is_an_error_and_the_batch_goes_on(standins, hf_model):
    backend, core = _backend(standins, hf_model, n_ctx=64)
    core.script = lambda request: " a fine answer"
    words = " ".join(["word"] * 200)
    out = backend.generate(
        [
            _prompt("Short one."),
            _prompt(words),
            GenerationRequest(
                messages=({"role": "user", "content": words},), params=SamplingParams()
            ),
            _prompt("Another short one.", max_tokens=100),  # past n_ctx: vLLM cuts it
        ]
    )
    assert [c.finish_reason for c in out] == ["stop", "error", "error", "stop"]
    assert out[0].text == " a fine answer"
    assert "the context holds 64" in out[1].extra["error"]
    # A prompt of exactly n_ctx tokens leaves no room for an answer: vLLM refuses it too.
    tokenizer = backend._llm.get_tokenizer()
    exact = "x" * 300
    while len(tokenizer.encode(exact)) > 64:
        exact = exact[:-1]
    assert len(tokenizer.encode(exact)) == 64
    [comp] = backend.generate([_prompt(exact)])
    assert comp.finish_reason == "error"
    with pytest.raises(Exception, match="maximum model length|maximum context length"):
        backend._llm.generate([exact], use_tqdm=False)
    backend.close()


@pytest.mark.parametrize(
    ("setting", "bad", "good", "vllm_name"),
    [
        ("temperature", 2.01, 2.0, "temperature"),
        ("temperature", -0.01, 0.0, "temperature"),
        ("top_p", 0.0, 1.0, "top_p"),
        ("presence_penalty", 2.01, -2.0, "presence_penalty"),
        ("frequency_penalty", -2.01, 2.0, "frequency_penalty"),
        ("max_tokens", 0, 1, "max_tokens"),
    ],
)
def test_config_refuses_the_sampling_values_vllm_refuses(setting, bad, good, vllm_name):
    from vllm import SamplingParams as VLLMSamplingParams

    with pytest.raises(Exception, match=vllm_name):
        VLLMSamplingParams(**{vllm_name: bad})
    VLLMSamplingParams(**{vllm_name: good})
    with pytest.raises(Exception, match=setting):
        build_config({}, {setting: bad})
    build_config({}, {setting: good})


def test_tool_calls_survive_tags_that_are_special_tokens(standins, llama_style):
    backend, core = _backend(standins, llama_style)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "17*23"}}</tool_call>'
    core.script = lambda request: call
    [comp] = backend.generate(
        [
            GenerationRequest(
                messages=({"role": "user", "content": "What is 17 * 23?"},),
                params=SamplingParams(temperature=0.0),
                tools=(CALCULATOR,),
            )
        ]
    )
    assert comp.extra["tool_calls"] == [
        {"name": "calculator", "arguments": {"expression": "17*23"}}
    ]
    backend.close()


def test_a_tool_call_is_compact_json_before_its_newline_stop(standins, hf_model):
    # The tool agent's call request: the calls' JSON schema, stopping at the first newline.
    from selfgen.tooling import tool_specs

    backend, core = _backend(standins, hf_model)
    schema = call_schema(tool_specs(ROOT / "tools"))
    # A model that likes to lay JSON out on several lines.
    core.script = lambda request: (
        '{\n  "name": "calculator",\n  "arguments": {\n    "expression": "17*23"\n  }\n}'
    )
    [comp] = backend.generate(
        [
            GenerationRequest(
                prompt="Request: what is 17 * 23?\nCall:",
                params=SamplingParams(temperature=0.0, max_tokens=160, stop=("\n",)),
                constraint=Constraint(json_schema=schema),
            )
        ]
    )
    assert comp.finish_reason == "stop", comp
    assert json.loads(comp.text) == {"name": "calculator", "arguments": {"expression": "17*23"}}
    backend.close()


def test_choices_compile_and_constrain(standins, hf_model):
    backend, core = _backend(standins, hf_model)
    core.script = lambda request: " Yes, of course"
    [comp] = backend.generate(
        [
            GenerationRequest(
                prompt="Is this a classification task? Answer:",
                params=SamplingParams(temperature=0.0, max_tokens=3),
                constraint=Constraint(choices=(" Yes", " No")),
            )
        ]
    )
    assert (comp.text, comp.finish_reason) == (" Yes", "stop")
    backend.close()


@pytest.mark.parametrize("reason", [FinishReason.ABORT, FinishReason.ERROR])
def test_finish_reasons_other_than_stop_and_length_are_errors(standins, hf_model, reason):
    backend, core = _backend(standins, hf_model)
    core.script = lambda request: ("half an ans", reason)
    [comp] = backend.generate([_prompt("Say something.")])
    assert comp.finish_reason == "error"
    assert comp.extra["error"] == f"vLLM finished the request with '{reason}'"
    backend.close()


def test_an_n_ctx_beyond_the_model_names_ctx(standins, hf_model):
    with pytest.raises(BackendError) as caught:
        get_backend("vllm", model=str(hf_model), n_ctx=100_000)
    assert caught.value.option == "n_ctx"
    assert caught.value.problem == (
        f"100000 tokens is more than {hf_model} takes (max_position_embeddings=8192 in its"
        " config.json): give 8192 or less"
    )


def test_without_a_gpu_the_cli_says_it_needs_one(hf_model, tmp_path, child_env):
    env = {k: v for k, v in child_env.items() if k != "VLLM_TARGET_DEVICE"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--backend", "vllm", "--model", str(hf_model)]
        + ["--seeds", str(SEEDS), "--out", str(out), "-n", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_the_cli_names_ctx_when_it_is_beyond_the_model(hf_model, tmp_path, child_env):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--backend", "vllm", "--model", str(hf_model), "--ctx", "100000"]
        + ["--seeds", str(SEEDS), "--out", str(out), "-n", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**child_env, "VLLM_TARGET_DEVICE": "cpu"},
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == (
        f"error: --ctx: 100000 tokens is more than {hf_model} takes (max_position_embeddings="
        "8192 in its config.json): give 8192 or less"
    )


@pytest.fixture(scope="session")
def rank4_adapter(hf_model, tmp_path_factory):
    """A PEFT LoRA adapter of rank 4 (`selfgen tune --lora-r 4`), untrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter-r4")
    model = AutoModelForCausalLM.from_pretrained(hf_model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def test_eval_runs_a_rank_4_adapter_on_vllm(standins, llama_style, rank4_adapter, monkeypatch):
    import selfgen.tune.evaluate as evaluate

    monkeypatch.setattr(evaluate, "_vllm_usable", lambda source: True)  # no GPU here
    progress = []
    results = evaluate.evaluate(
        SEEDS,
        model_spec=str(llama_style),
        adapter=rank4_adapter,
        compare=True,
        limit=3,
        max_new_tokens=8,
        progress=lambda done, total: progress.append((done, total)),
    )
    core = standins[-1]
    assert results["generator"] == "vllm"
    assert core.vllm_config.lora_config.max_lora_rank == 8
    received = core.received[-len(results["items"]) * 2 :]
    assert [r.lora_request is not None for r in received] == (
        [False] * len(results["items"]) + [True] * len(results["items"])
    )
    # The chat template writes the BOS; the prompt must not get a second one.
    assert all(r.prompt_token_ids[:2] == [0, 1] for r in received)
    assert progress[-1] == (2 * len(results["items"]), 2 * len(results["items"]))
    assert results["models"]["tuned"]["overall"]["n"] == len(results["items"])


# The flags the README gives `vllm serve` for `--backend openai`: the server's engine takes
# compact JSON from its own config only, as the in-process engine does.
SERVE_FLAGS = [
    "--structured-outputs-config",
    '{"backend": "guidance", "disable_any_whitespace": true}',
]


def test_the_readme_serve_flags_make_the_engine_write_compact_json():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from selfgen.backends.vllm import STRUCTURED_OUTPUTS

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "m", *SERVE_FLAGS])
    config = AsyncEngineArgs.from_cli_args(args).structured_outputs_config
    assert (config.backend, config.disable_any_whitespace) == ("guidance", True)
    assert json.loads(SERVE_FLAGS[1]) == STRUCTURED_OUTPUTS
    assert (
        " ".join(SERVE_FLAGS[:1]) + " '" + SERVE_FLAGS[1] + "'" in (ROOT / "README.md").read_text()
    )


def test_the_vllm_cli_serves_with_the_readme_command():
    vllm = shutil.which("vllm", path=os.path.dirname(sys.executable))
    assert vllm is not None
    proc = subprocess.run([vllm, "serve", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
