"""vLLM inside the selfgen process, on the user's GPU(s).

Every batch the loop submits becomes one `LLM.generate` call (prompts) and one `LLM.chat` call
(chat messages), so vLLM's continuous batching sees whole stages of a round at once and its
prefix cache reuses the few-shot demonstrations the prompts share. Each request keeps its own
seed, so a batch gives the same answers however vLLM schedules it.

Constraints become `SamplingParams(structured_outputs=StructuredOutputsParams(choice=... |
json=...))`. Offline `LLM.chat(tools=...)` renders the tools into the chat template but does
not parse the calls out of the answer, so calls in the Hermes format (`<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`, which Qwen, Hermes and SmolLM-family templates use) are
parsed here into `Completion.extra["tool_calls"]`; a block that is not a call is reported in
`extra["tool_call_errors"]`, never evaluated.

`continuation_loss` sends each context + continuation as token ids (`TokensPrompt`, the two
parts tokenized separately so the boundary is exact) with `SamplingParams(prompt_logprobs=0,
max_tokens=1)` and reads the continuation's entries of `RequestOutput.prompt_logprobs`. Chat
messages are rendered with the tokenizer's chat template and generation prompt, and tokenized
without added special tokens, as `LLM.chat` does.

vLLM is an optional extra (`pip install 'selfgen[vllm]'`); it is imported when the backend is
built, never when selfgen is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selfgen.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    Completion,
    ContinuationLoss,
    GenerationRequest,
    LossRequest,
    parse_hermes_tool_calls,
)


def loss_token_ids(tokenizer: Any, request: LossRequest) -> tuple[list[int], list[int]]:
    """The context's and the continuation's token ids, tokenized separately.

    A text prompt gets the special tokens the tokenizer adds (its BOS), as `LLM.generate`
    tokenizes a prompt; an empty one becomes the BOS token. Chat messages are rendered with
    the chat template and its generation prompt and tokenized without added special tokens
    (the template writes its own), as `LLM.chat` does.
    """
    if request.messages is not None:
        text = tokenizer.apply_chat_template(
            list(request.messages), tokenize=False, add_generation_prompt=True
        )
        context = list(tokenizer.encode(text, add_special_tokens=False))
    else:
        context = list(tokenizer.encode(request.prompt or ""))
    continuation = list(tokenizer.encode(request.continuation, add_special_tokens=False))
    if not context and continuation:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise BackendError(
                "the model has no beginning-of-text token, so the first token of a"
                " continuation after an empty prompt has no probability"
            )
        context = [bos]
    return context, continuation


def continuation_logprobs(prompt_logprobs: Any, ids: Sequence[int], first: int) -> list[float]:
    """log P(ids[i] | ids[:i]) for i >= first, from a RequestOutput's `prompt_logprobs`.

    `prompt_logprobs` holds one entry per prompt token (None for the first, which nothing
    predicts): a mapping from token id to a Logprob with `.logprob`, which with
    prompt_logprobs=0 holds at least the prompt's own token. vLLM's FlatLogprobs answers
    indexing the same way.
    """
    if prompt_logprobs is None or len(prompt_logprobs) != len(ids):
        raise BackendError(
            "vLLM returned no log-probability for each prompt token"
            f" ({0 if prompt_logprobs is None else len(prompt_logprobs)} for {len(ids)})"
        )
    out = []
    for i in range(first, len(ids)):
        entry = prompt_logprobs[i]
        if entry is None or ids[i] not in entry:
            raise BackendError(f"vLLM returned no log-probability for prompt token {i}")
        out.append(float(entry[ids[i]].logprob))
    return out


def sampling_params(request: GenerationRequest, default_seed: int) -> Any:
    """vLLM's SamplingParams for one request."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    p = request.params
    structured = None
    if request.constraint is not None:
        c = request.constraint
        structured = (
            StructuredOutputsParams(choice=list(c.choices))
            if c.choices is not None
            else StructuredOutputsParams(json=c.json_schema)
        )
    return SamplingParams(
        temperature=p.temperature,
        top_p=p.top_p,
        max_tokens=p.max_tokens,
        stop=list(p.stop) or None,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed if p.seed is not None else default_seed,
        structured_outputs=structured,
    )


class VLLMBackend(Backend):
    """vLLM's offline `LLM` engine; one `generate`/`chat` call per submitted batch."""

    name = "vllm"
    batches_natively = True
    supports_continuation_loss = True

    @dataclass(frozen=True)
    class Options(BackendOptions):
        model: str | None = None  # a Hugging Face model id or folder (required)
        n_ctx: int | None = 4096  # the longest sequence; None: the model's own limit
        tensor_parallel_size: int = 1
        gpu_memory_utilization: float = 0.9
        dtype: str = "auto"

    def __init__(self, options: Options | None = None) -> None:
        options = options or self.Options()
        if not options.model:
            raise BackendError(
                "the vllm backend needs a Hugging Face model id or folder", option="model"
            )
        try:
            from vllm import LLM
        except ImportError as exc:
            raise BackendError(
                f"the vllm backend needs vLLM: pip install 'selfgen[vllm]' ({exc})"
            ) from None
        self.model = str(options.model)
        self.seed = options.seed
        self.options = {
            "tensor_parallel_size": options.tensor_parallel_size,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "max_model_len": options.n_ctx,
            "dtype": options.dtype,
        }
        try:
            self._llm = LLM(model=self.model, seed=self.seed, **self.options)
        except Exception as exc:  # vLLM raises many kinds; the user needs the message
            raise BackendError(f"vLLM cannot load {self.model} ({exc})", option="model") from None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, **self.options}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        prompts = [i for i, r in enumerate(requests) if r.prompt is not None]
        chats = [i for i, r in enumerate(requests) if r.prompt is None]
        start = time.perf_counter()
        if prompts:
            results = self._llm.generate(
                [requests[i].prompt for i in prompts],
                [sampling_params(requests[i], self.seed) for i in prompts],
                use_tqdm=False,
            )
            for i, result in zip(prompts, results, strict=True):
                out[i] = self._completion(result, start, parse_tools=False)
        # Requests with the same tools go together: `chat` takes one tool list per call.
        by_tools: dict[str, list[int]] = {}
        for i in chats:
            by_tools.setdefault(json.dumps(requests[i].tools, sort_keys=True), []).append(i)
        for group in by_tools.values():
            tools = requests[group[0]].tools
            results = self._llm.chat(
                [list(requests[i].messages or ()) for i in group],
                [sampling_params(requests[i], self.seed) for i in group],
                use_tqdm=False,
                tools=list(tools) if tools else None,
            )
            for i, result in zip(group, results, strict=True):
                out[i] = self._completion(result, start, parse_tools=bool(tools))
        return [c for c in out if c is not None]

    def continuation_loss(self, requests: Sequence[LossRequest]) -> list[ContinuationLoss]:
        """See :meth:`Backend.continuation_loss`; one `LLM.generate` call for the batch.

        A request needs its context, its continuation and the one generated token within
        `n_ctx`; a longer one raises BackendError.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tokenizer = self._llm.get_tokenizer()
        out: list[ContinuationLoss] = [ContinuationLoss(())] * len(requests)
        todo: list[tuple[int, list[int], int]] = []
        limit = self.options.get("max_model_len")
        for i, request in enumerate(requests):
            context, continuation = loss_token_ids(tokenizer, request)
            if not continuation:
                continue
            ids = context + continuation
            if limit is not None and len(ids) + 1 > limit:
                raise BackendError(
                    f"a loss request of {len(context)} context and {len(continuation)}"
                    f" continuation tokens does not fit the context of {limit} tokens"
                )
            todo.append((i, ids, len(context)))
        if not todo:
            return out
        # prompt_logprobs=0: the prompt token's own log-probability and no others. The one
        # generated token is greedy so that nothing random is drawn.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        try:
            results = self._llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for _, ids, _ in todo], params, use_tqdm=False
            )
        except ValueError as exc:  # vLLM refuses a prompt it cannot take
            raise BackendError(f"vLLM refused a loss request ({exc})") from None
        for (i, ids, first), result in zip(todo, results, strict=True):
            out[i] = ContinuationLoss(
                tuple(continuation_logprobs(result.prompt_logprobs, ids, first))
            )
        return out

    @staticmethod
    def _completion(result: Any, start: float, parse_tools: bool) -> Completion:
        best = result.outputs[0]
        extra: dict[str, Any] = {}
        if parse_tools:
            calls, errors = parse_hermes_tool_calls(best.text)
            extra = {"tool_calls": calls, "tool_call_errors": errors}
        return Completion(
            text=best.text,
            finish_reason=best.finish_reason or "stop",
            prompt_tokens=len(result.prompt_token_ids or ()),
            completion_tokens=len(best.token_ids),
            # Requests of a batch run together: each one's latency is the batch's so far.
            latency_s=time.perf_counter() - start,
            extra=extra,
        )

    def close(self) -> None:
        super().close()
        self._llm = None
