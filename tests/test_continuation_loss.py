"""`Backend.continuation_loss`: log-probabilities of a given continuation after a context.

The embedded llama.cpp backend with the bundled model, the same numbers from a real
`python -m llama_cpp.server` through the `openai` backend, the Ray engine forwarding to its
workers, and the parsing of vLLM's `prompt_logprobs` on a stand-in output (vLLM needs a GPU).
"""

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from conftest import ROOT, ScriptedBackend
from test_openai_backend import Proxy, free_port, start_server, wait_for

from selfgen.backends.base import (
    Backend,
    BackendError,
    CapabilityError,
    Completion,
    ContinuationLoss,
    GenerationRequest,
    LossRequest,
    SamplingParams,
    get_backend,
    register_backend,
)
from selfgen.backends.llamacpp import bundled_model_path, load_vocabulary
from selfgen.backends.openai import EchoError, echo_logprobs
from selfgen.backends.vllm import continuation_logprobs, loss_token_ids

QUESTION = ({"role": "user", "content": "What is the capital of France?"},)
ANSWER = "The capital of France is Paris."
UNRELATED = "Bananas are yellow and grow in bunches."
# SmolLM2's chat template written out: it starts with <|im_start|>, the model's BOS token.
CHAT_TEXT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

# In-process and server numbers come from the same llama.cpp build and weights; they differ
# only in float32 rounding (llama-cpp-python's server takes the log-softmax in float32, the
# backend in float64). Measured: at most 3.5e-7 nats per token.
SERVER_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def llama():
    backend = get_backend("llamacpp", n_ctx=1024, n_threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary(bundled_model_path())


def own_tokens(vocab, text):
    return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def test_loss_request_takes_exactly_one_context():
    with pytest.raises(ValueError, match="exactly one of prompt or messages"):
        LossRequest("x")
    with pytest.raises(ValueError, match="exactly one of prompt or messages"):
        LossRequest("x", prompt="", messages=QUESTION)


def test_mean_loss_is_the_mean_negative_log_likelihood():
    loss = ContinuationLoss((-1.0, -2.0, -0.5))
    assert loss.tokens == 3 and loss.mean_loss == pytest.approx(3.5 / 3)
    empty = ContinuationLoss(())
    assert empty.tokens == 0 and math.isnan(empty.mean_loss)


def test_a_backend_without_the_capability_says_so_by_name():
    backend = ScriptedBackend(lambda r: "")
    assert backend.supports_continuation_loss is False
    with pytest.raises(CapabilityError) as caught:
        backend.continuation_loss([LossRequest(ANSWER, prompt="")])
    assert str(caught.value) == (
        "the scripted backend cannot compute log-probabilities of a given text"
    )
    assert isinstance(caught.value, BackendError)


def test_the_right_answer_is_likelier_than_an_unrelated_one(llama):
    assert llama.supports_continuation_loss
    right, unrelated = llama.continuation_loss(
        [LossRequest(ANSWER, messages=QUESTION), LossRequest(UNRELATED, messages=QUESTION)]
    )
    assert right.mean_loss < 1.0 < 3.0 < unrelated.mean_loss
    assert all(v <= 0 and math.isfinite(v) for v in right.token_logprobs + unrelated.token_logprobs)


def test_token_counts_are_the_models_own_tokenization(llama, vocab):
    texts = [ANSWER, UNRELATED, " Paris.", "巴黎是法国的首都。", "x"]
    for text in texts:
        [after_chat, alone, after_text] = llama.continuation_loss(
            [
                LossRequest(text, messages=QUESTION),
                LossRequest(text, prompt=""),
                LossRequest(text, prompt="The capital of France is"),
            ]
        )
        n = len(own_tokens(vocab, text))
        assert after_chat.tokens == alone.tokens == after_text.tokens == n, text


def test_empty_prompt_scores_every_token_after_the_bos(llama):
    # SmolLM2 adds no BOS when tokenizing, so the first token is scored after its BOS token,
    # and text in context is likelier than the same text alone.
    [alone, in_context] = llama.continuation_loss(
        [LossRequest(ANSWER, prompt=""), LossRequest(ANSWER, messages=QUESTION)]
    )
    assert alone.tokens == in_context.tokens == 7
    assert alone.mean_loss > in_context.mean_loss + 2


def test_the_same_request_gives_the_same_numbers_whatever_ran_before(llama):
    request = LossRequest(ANSWER, messages=QUESTION)
    [first] = llama.continuation_loss([request])
    params = SamplingParams(temperature=0.0, max_tokens=8)
    before = llama.generate([GenerationRequest(params, messages=QUESTION)])[0].text
    batch = llama.continuation_loss(
        [LossRequest(UNRELATED, prompt="Once upon a time"), request, LossRequest("", prompt="")]
    )
    after = llama.generate([GenerationRequest(params, messages=QUESTION)])[0].text
    assert batch[1] == first and batch[2] == ContinuationLoss(())
    # The loss leaves nothing in the cache that generation would reuse.
    assert after == before


def test_a_request_longer_than_the_context_is_one_clear_error(llama):
    with pytest.raises(BackendError, match=r"does not fit the context of 1024 tokens"):
        llama.continuation_loss([LossRequest("word " * 1200, prompt="Say:")])


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    url = f"http://127.0.0.1:{port}/v1"
    wait_for(url, proc)
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def client(server):
    backend = get_backend("openai", base_url=server, concurrency=2)
    yield backend
    backend.close()


def assert_same(local, remote):
    assert local.tokens == remote.tokens
    for a, b in zip(local.token_logprobs, remote.token_logprobs, strict=True):
        assert a == pytest.approx(b, abs=SERVER_TOLERANCE)


@pytest.mark.slow  # a llama_cpp.server of its own
def test_the_server_gives_the_same_numbers(llama, client):
    # The model id llama_cpp.server reports is its GGUF path: its chat template renders the
    # messages here. A text prompt works where it starts with the BOS token (see below).
    requests = [
        LossRequest(ANSWER, messages=QUESTION),
        LossRequest(UNRELATED, messages=QUESTION),
        LossRequest(ANSWER, prompt=CHAT_TEXT),
        LossRequest(" Paris.", prompt=CHAT_TEXT + "The capital of France is"),
        LossRequest("巴黎是法国的首都。", prompt=CHAT_TEXT),
        LossRequest("", prompt=CHAT_TEXT),
    ]
    assert client.supports_continuation_loss
    for local, remote in zip(
        llama.continuation_loss(requests), client.continuation_loss(requests), strict=True
    ):
        assert_same(local, remote)


@pytest.mark.slow  # a llama_cpp.server of its own
def test_over_http_a_token_across_the_boundary_belongs_to_the_continuation(llama, client):
    # The server tokenizes "is Paris." as " Paris" + "."; the backend tokenizes a context
    # ending in a space and "Paris." apart, which the model finds far less likely (1.75
    # against 0.12 nats per token here). Over HTTP the token that crosses the boundary is
    # the continuation's: the numbers are those of the context without the space.
    [remote] = client.continuation_loss(
        [LossRequest("Paris.", prompt=CHAT_TEXT + "The capital of France is ")]
    )
    [local_split, local_merged] = llama.continuation_loss(
        [
            LossRequest("Paris.", prompt=CHAT_TEXT + "The capital of France is "),
            LossRequest(" Paris.", prompt=CHAT_TEXT + "The capital of France is"),
        ]
    )
    assert_same(local_merged, remote)
    assert local_split.mean_loss > remote.mean_loss + 1


@pytest.mark.slow  # a llama_cpp.server of its own
def test_a_shifted_server_answer_is_refused_not_used(client):
    # llama-cpp-python's server reads each prompt token's log-probability one position late
    # when the prompt does not start with the BOS token (SmolLM2 adds none); the backend
    # notices and refuses instead of returning wrong numbers. With an empty prompt the
    # continuation's first token would be the text's first, which that server never scores.
    for request in [
        LossRequest(" Paris.", prompt="The capital of France is"),
        LossRequest("\n", prompt="The capital of France is Paris."),
        LossRequest(ANSWER, prompt=""),
    ]:
        with pytest.raises(CapabilityError, match="the openai backend cannot compute") as caught:
            client.continuation_loss([request])
        assert "shifted by one token" in str(caught.value)


@pytest.mark.slow  # a llama_cpp.server of its own
def test_servers_that_cannot_are_capability_errors(server):
    def answer_with(status, body):
        def fault(n, path):
            return (status, "application/json", body) if path.endswith("/completions") else None

        return fault

    no_echo = (
        b'{"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": [{'
        b'"text": "\\n", "index": 0, "finish_reason": "length", "logprobs": {"tokens": ["\\n"],'
        b' "token_logprobs": [-0.5], "text_offset": [0], "top_logprobs": [{"\\n": -0.5}]}}],'
        b' "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}'
    )
    cases = [
        (404, b'{"error": {"message": "Not Found"}}', "it has no /completions endpoint"),
        (
            400,
            b'{"error": {"message": "echo is not supported"}}',
            "it refuses a completion with echo and logprobs (echo is not supported)",
        ),
        (200, no_echo, "it does not echo the prompt"),  # llama.cpp's C++ server
    ]
    for status, body, why in cases:
        with Proxy(server, answer_with(status, body)) as url:
            backend = get_backend("openai", base_url=url)
            try:
                with pytest.raises(CapabilityError) as caught:
                    backend.continuation_loss([LossRequest(ANSWER, prompt=CHAT_TEXT)])
            finally:
                backend.close()
        assert (
            str(caught.value)
            == f"the openai backend cannot compute log-probabilities at {url}: {why}"
        )

    openai_itself = get_backend("openai", base_url=server, server_flavour="openai")
    assert openai_itself.supports_continuation_loss is False
    with pytest.raises(CapabilityError, match="OpenAI's API does not return log-probabilities"):
        openai_itself.continuation_loss([LossRequest(ANSWER, prompt="")])


@pytest.mark.slow  # a llama_cpp.server of its own
def test_chat_messages_over_http_need_the_model_file(server):
    named = get_backend("openai", base_url=server, api_model="smollm2")
    with pytest.raises(CapabilityError, match="give its GGUF file as the model_file option"):
        named.continuation_loss([LossRequest(ANSWER, messages=QUESTION)])
    named.close()
    given = get_backend(
        "openai", base_url=server, api_model="smollm2", model_file=str(bundled_model_path())
    )
    try:
        [loss] = given.continuation_loss([LossRequest(ANSWER, messages=QUESTION)])
    finally:
        given.close()
    assert loss.tokens == 7 and loss.mean_loss < 1.0


def choice(text, tokens, offsets, values, tops):
    logprobs = SimpleNamespace(
        tokens=tokens, text_offset=offsets, token_logprobs=values, top_logprobs=tops
    )
    return SimpleNamespace(text=text, logprobs=logprobs)


def test_echo_parsing_in_openais_documented_shape():
    # Offsets into the echoed text, an entry for the BOS token (vLLM writes it as text the
    # prompt does not hold), and one for the generated token, which is the most likely one.
    prompt, continuation = "Q: capital? A:", " Paris."
    answer = choice(
        prompt + continuation + "\n",
        ["<s>", "Q", ":", " capital", "?", " A", ":", " Paris", ".", "\n"],
        [0, 3, 4, 5, 13, 14, 16, 17, 23, 24],
        [None, -5.0, -1.0, -6.0, -2.0, -1.5, -0.1, -0.3, -0.4, -0.2],
        [None, *[{"x": -0.01}] * 6, {" Paris": -0.3}, {".": -0.4}, {"\n": -0.2}],
    )
    assert echo_logprobs(answer, 1, prompt, continuation) == [-0.3, -0.4]
    with pytest.raises(EchoError, match="does not echo the prompt"):
        echo_logprobs(choice("\n", ["\n"], [0], [-0.2], [None]), 1, prompt, continuation)
    with pytest.raises(EchoError, match="generated token only"):
        echo_logprobs(
            choice(prompt + continuation + "\n", ["\n"], [0], [-0.2], [None]),
            1,
            prompt,
            continuation,
        )


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def test_vllm_prompt_logprobs_are_read_for_the_continuation():
    ids = [1, 10, 11, 12, 13]
    prompt_logprobs = [
        None,
        {10: Logprob(-3.0, 5)},
        {11: Logprob(-2.0, 2), 99: Logprob(-0.5, 1)},  # the prompt token and a likelier one
        {12: Logprob(-0.25, 1)},
        {13: Logprob(-1.0, 1)},
    ]
    assert continuation_logprobs(prompt_logprobs, ids, 3) == [-0.25, -1.0]
    assert continuation_logprobs(prompt_logprobs, ids, 1) == [-3.0, -2.0, -0.25, -1.0]
    with pytest.raises(BackendError, match="no log-probability for prompt token 0"):
        continuation_logprobs(prompt_logprobs, ids, 0)
    with pytest.raises(BackendError, match="for each prompt token"):
        continuation_logprobs(prompt_logprobs[:4], ids, 3)


class FakeTokenizer:
    """Encodes each character as its code point, with BOS 1 as a special token."""

    bos_token_id = 1

    def __init__(self, adds_bos):
        self.adds_bos = adds_bos

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens and self.adds_bos else []) + [ord(c) for c in text]

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_vllm_tokenizes_the_two_parts_apart():
    for adds_bos in (True, False):
        tokenizer = FakeTokenizer(adds_bos)
        bos = [1] if adds_bos else []
        assert loss_token_ids(tokenizer, LossRequest("ab", prompt="x")) == (bos + [120], [97, 98])
        # An empty prompt is the BOS token, whether or not the tokenizer adds one.
        assert loss_token_ids(tokenizer, LossRequest("ab", prompt="")) == ([1], [97, 98])
        # The chat template writes its own special tokens: none are added to it.
        context, _ = loss_token_ids(
            tokenizer, LossRequest("ab", messages=({"role": "u", "content": "q"},))
        )
        assert context == [ord(c) for c in "<u>q<assistant>"]


class Scored(Backend):
    """Scores a continuation as minus the length of each of its words; "die-once" kills the
    worker process the first time any worker sees it (a marker file remembers)."""

    name = "scored"
    supports_continuation_loss = True

    def __init__(self, marker: str = "", **_: object) -> None:
        self.marker = marker

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [Completion("", "stop", 1, 1) for _ in requests]

    def continuation_loss(self, requests: Sequence[LossRequest]) -> list[ContinuationLoss]:
        for r in requests:
            if r.continuation == "die-once" and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
        return [
            ContinuationLoss(tuple(-float(len(w)) for w in r.continuation.split()))
            for r in requests
        ]


class Unscored(Scored):
    name = "unscored"
    supports_continuation_loss = False
    continuation_loss = Backend.continuation_loss


def register_scored() -> None:
    register_backend("scored", Scored)
    register_backend("unscored", Unscored)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    register_scored()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024**2,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": register_scored,
            "env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), *sys.path])},
        },
    )
    yield
    ray.shutdown()


def test_ray_forwards_to_the_workers_in_order(local_ray, tmp_path):
    from selfgen.engines.ray import RayBackend

    notes: list[str] = []
    backend = RayBackend(
        "scored", {"marker": str(tmp_path / "died")}, workers=2, notify=notes.append
    )
    try:
        assert backend.supports_continuation_loss
        texts = ["a bb", "ccc", "die-once", "dddd e", "", "ff"]
        out = backend.continuation_loss([LossRequest(t, prompt="") for t in texts])
        assert out == [ContinuationLoss(tuple(-float(len(w)) for w in t.split())) for t in texts]
        assert backend.replacements == 1 and "a Ray worker died" in notes[0]
        assert backend.continuation_loss([]) == []
    finally:
        backend.close()

    unscored = RayBackend("unscored", {}, workers=1)
    try:
        assert unscored.supports_continuation_loss is False
        with pytest.raises(CapabilityError) as caught:
            unscored.continuation_loss([LossRequest("x", prompt="")])
        assert str(caught.value) == (
            "the unscored backend cannot compute log-probabilities of a given text"
        )
    finally:
        unscored.close()


@pytest.mark.slow  # a llama_cpp.server of its own
def test_ifd_is_the_same_in_process_and_through_the_server(llama, client):
    from selfgen.scoring import Example, get_scorer

    examples = [
        Example("What is the capital of France?", "", ANSWER),
        Example("What is the capital of France?", "", UNRELATED),
        Example("Add the numbers.", "2 and 3", "5"),
    ]
    local = get_scorer("ifd", llama).score(examples)
    remote = get_scorer("ifd", client).score(examples)
    for a, b in zip(local, remote, strict=True):
        # A ratio of two mean losses, each within SERVER_TOLERANCE per token.
        assert a.value == pytest.approx(b.value, abs=10 * SERVER_TOLERANCE)
    assert local[0].value < local[1].value
