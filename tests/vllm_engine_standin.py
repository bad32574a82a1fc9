"""A stand-in for vLLM's engine core, so that vLLM's own `LLM` runs on a machine without a GPU.

vLLM's `LLM.generate` / `LLM.chat` render and tokenize each prompt (chat template, tools), check
it (context length, sampling values, structured-output specs, LoRA), and hand an
`EngineCoreRequest` to the engine core client; the core (scheduler and model, on the GPU)
answers with `EngineCoreOutput`s of token ids, which vLLM's output processor detokenizes, cuts
at stop strings and turns into `RequestOutput`s. Only the core is replaced here: the
`EngineCoreClient` this module installs takes the real requests and answers each with the token
ids of a scripted text, decoding under the request's real structured-output grammar (compiled by
the vLLM grammar backend the request was given, from the engine's own config) the way a model's
masked sampling would.

This checks the contract between selfgen and vLLM's API, not generation: no model runs, and the
"model" writes what the test scripts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

# vLLM detects no platform on a machine without a GPU, and then cannot even build its config
# ("Device string must not be empty"). Its CPU platform builds the config; nothing here runs
# on it. Read when vLLM is first imported, so set before that.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import numpy as np  # noqa: E402
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason  # noqa: E402
from vllm.v1.engine.core_client import EngineCoreClient  # noqa: E402
from vllm.v1.structured_output.backend_guidance import GuidanceBackend  # noqa: E402
from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend  # noqa: E402
from vllm.v1.structured_output.request import get_structured_output_key  # noqa: E402

# What the scripted "model" writes for a request: its text, or (text, finish reason) to end
# the request another way (FinishReason.ABORT, ...).
Script = Callable[[Any], "str | tuple[str, FinishReason]"]


class EngineCoreStandIn(EngineCoreClient):
    """Answers every request it is given in the next step, from `script`."""

    def __init__(self, vllm_config: Any) -> None:
        self.vllm_config = vllm_config
        self.script: Script = lambda request: "ok"
        self.pending: dict[str, Any] = {}
        self.received: list[Any] = []  # every EngineCoreRequest, in order
        self.aborted: list[str] = []
        self._grammars: dict[str, Any] = {}

    @property
    def tokenizer(self) -> Any:
        from vllm.tokenizers import cached_tokenizer_from_config

        return cached_tokenizer_from_config(model_config=self.vllm_config.model_config)

    def add_request(self, request: Any) -> None:
        lora = request.lora_request
        if lora is not None:
            # What the GPU worker checks when it loads the adapter.
            rank = _adapter_rank(lora.lora_path)
            most = self.vllm_config.lora_config.max_lora_rank
            assert rank <= most, f"adapter rank {rank} > max_lora_rank {most}"
        self.pending[request.request_id] = request
        self.received.append(request)

    def get_output(self) -> Any:
        outputs = [self._answer(request) for request in self.pending.values()]
        self.pending.clear()
        return EngineCoreOutputs(outputs=outputs)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.aborted += request_ids
        for request_id in request_ids:
            self.pending.pop(request_id, None)

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def dp_engines_running(self) -> bool:
        return False

    def reset_mm_cache(self) -> None:
        pass

    def shutdown(self, timeout: float | None = None) -> None:
        pass

    def _answer(self, request: Any) -> Any:
        params = request.sampling_params
        scripted = self.script(request)
        text, finish = scripted if isinstance(scripted, tuple) else (scripted, None)
        eos = self.tokenizer.eos_token_id
        if params.structured_outputs is not None:
            ids, why = self._guided(request, text, params.max_tokens, eos)
        else:
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            why = FinishReason.LENGTH if len(ids) > params.max_tokens else FinishReason.STOP
            ids = ids[: params.max_tokens] + ([eos] if why == FinishReason.STOP else [])
        return EngineCoreOutput(
            request_id=request.request_id, new_token_ids=ids, finish_reason=finish or why
        )

    def _guided(self, request: Any, text: str, max_tokens: int, eos: int) -> tuple[list[int], Any]:
        """The tokens a model that wants to write `text` writes under the request's grammar.

        At each step it takes the longest allowed token that `text` goes on with; where the
        grammar allows none, the longest that does once the whitespace it wanted is left out
        (a grammar of compact JSON masks it); where none fits still, it gives up the character
        it wanted. Once it has written all it wanted, the end of text if the grammar allows it.
        """
        structured = request.sampling_params.structured_outputs
        backend = self._grammar_backend(structured._backend)
        grammar = backend.compile_grammar(*get_structured_output_key(structured))
        vocab = _decoded_vocab(self.vllm_config.model_config.model)
        bitmask = backend.allocate_token_bitmask(1)
        ids: list[int] = []
        while len(ids) < max_tokens and not grammar.is_terminated():
            grammar.fill_bitmask(bitmask, 0)
            bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
            allowed = np.flatnonzero(bits[: len(vocab)])
            best, rest = None, ""
            while best is None and text:
                for skip in (False, True):
                    fits = {
                        i: r for i in allowed if (r := _follows(vocab[i], text, skip)) is not None
                    }
                    if fits:
                        best = max(fits, key=lambda i: len(vocab[i]))
                        rest = fits[best]
                        break
                else:
                    text = text[1:]
            if best is None:
                best = eos if eos in allowed else int(allowed[0])
            else:
                text = rest
            assert grammar.accept_tokens(request.request_id, [int(best)])
            ids.append(int(best))
        done = grammar.is_terminated()
        return ids, FinishReason.STOP if done else FinishReason.LENGTH

    def _grammar_backend(self, name: str) -> Any:
        """vLLM's grammar backend `name`, made from the engine's config as the engine makes it
        (its `disable_any_whitespace` included)."""
        kinds = {"xgrammar": XgrammarBackend, "guidance": GuidanceBackend}
        if name not in self._grammars:
            self._grammars[name] = kinds[name](
                self.vllm_config,
                tokenizer=self.tokenizer,
                vocab_size=self.vllm_config.model_config.get_vocab_size(),
            )
        return self._grammars[name]


def _follows(token: str, text: str, skip_whitespace: bool) -> str | None:
    """What is left of `text` once `token` is written, None if `text` does not go on with it;
    with `skip_whitespace`, whitespace of `text` that the token does not write is passed over."""
    if not token:
        return None
    at = 0
    for char in token:
        while skip_whitespace and not char.isspace() and at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text) or text[at] != char:
            return None
        at += 1
    return text[at:]


@lru_cache(maxsize=4)
def _decoded_vocab(model: str) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [tokenizer.decode([i]) for i in range(len(tokenizer))]


def _adapter_rank(path: str) -> int:
    import json
    from pathlib import Path

    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


@contextmanager
def engine_core_standin():
    """While active, every `vllm.LLM` made in this process gets a stand-in engine core; the
    list it yields holds them, newest last."""
    made: list[EngineCoreStandIn] = []
    original = EngineCoreClient.__dict__["make_client"]

    def make_client(multiprocess_mode, asyncio_mode, vllm_config, executor_class, log_stats, **_):
        made.append(EngineCoreStandIn(vllm_config))
        return made[-1]

    EngineCoreClient.make_client = staticmethod(make_client)
    try:
        yield made
    finally:
        EngineCoreClient.make_client = original
