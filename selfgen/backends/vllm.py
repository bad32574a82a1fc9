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

Requests carrying tools are decoded with `skip_special_tokens=False`: tokenizers that mark
`<tool_call>` as a special token would otherwise lose the tags in decoding (vLLM's own Hermes
tool parser turns it off for the same reason). JSON comes out compact (`STRUCTURED_OUTPUTS`), so
a tool call never contains the newline its request stops at.

Before a batch is submitted, every prompt is tokenized with the engine's tokenizer as vLLM will
tokenize it (a text prompt with the tokenizer's special tokens; chat messages rendered with
the chat template and tools, without them). One that does not leave room for a single token of
answer within the context becomes a `finish_reason="error"` completion, as on the other
backends, instead of vLLM refusing the whole batch. Should vLLM still refuse a batch (a check
this count does not foresee), its requests are sent again one by one, and only those it refuses
alone become errors; any other failure of vLLM is a BackendError. vLLM's finish reasons other
than `stop` and `length` (`abort`, `error`, ...) are errors too.

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
import re
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

# Compact JSON: a JSON grammar that allows whitespace lets the model break a line inside the
# object, and a tool call's request stops at the first line break. vLLM 0.33 takes
# `disable_any_whitespace` only from the engine's config (its xgrammar and guidance backends do
# not read the per-request field of StructuredOutputsParams), and only with a named backend:
# guidance, the one vLLM's "auto" falls back to for schemas xgrammar cannot compile (a string
# with both a pattern and a maxLength, as the bundled sql_query tool has: xgrammar 0.2.8 fails
# on it). tests/test_vllm_contract.py checks both.
STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}

# The finish reasons that mean vLLM produced an answer; any other (abort, error, repetition) is
# reported as an error completion.
FINISHED = ("stop", "length")


def chat_text(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """Chat messages rendered with the chat template and its generation prompt, as `LLM.chat`
    renders them (tools as the template writes them)."""
    kwargs: dict[str, Any] = {"tools": list(tools)} if tools else {}
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **kwargs
    )


def prompt_token_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The prompt's token ids as vLLM makes them: a text prompt with the special tokens the
    tokenizer adds (its BOS), as `LLM.generate` does; chat messages rendered by
    :func:`chat_text` and tokenized without them (the template writes its own), as `LLM.chat`
    does."""
    if request.prompt is not None:
        return list(tokenizer.encode(request.prompt))
    text = chat_text(tokenizer, request.messages or (), request.tools)
    return list(tokenizer.encode(text, add_special_tokens=False))


def length_problem(tokens: int, limit: int) -> str | None:
    """Why vLLM would refuse a prompt of `tokens` tokens in a context of `limit` (it needs room
    for one token of answer), or None."""
    if tokens == 0:
        return "the prompt is empty (no tokens)"
    if tokens >= limit:
        return (
            f"the prompt has {tokens} tokens and the context holds {limit}, with room for at"
            " least one token of answer needed (raise --ctx, or shorten the prompt)"
        )
    return None


def error_completion(
    problem: str, prompt_tokens: int = 0, start: float | None = None
) -> Completion:
    return Completion(
        text="",
        finish_reason="error",
        prompt_tokens=prompt_tokens,
        completion_tokens=0,
        latency_s=0.0 if start is None else time.perf_counter() - start,
        extra={"error": problem[:500]},
    )


def loss_token_ids(tokenizer: Any, request: LossRequest) -> tuple[list[int], list[int]]:
    """The context's and the continuation's token ids, tokenized separately.

    A text prompt gets the special tokens the tokenizer adds (its BOS), as `LLM.generate`
    tokenizes a prompt; an empty one becomes the BOS token. Chat messages are rendered with
    the chat template and its generation prompt and tokenized without added special tokens
    (the template writes its own), as `LLM.chat` does.
    """
    if request.messages is not None:
        text = chat_text(tokenizer, request.messages)
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
            else StructuredOutputsParams(json=c.json_schema)  # compact: STRUCTURED_OUTPUTS
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
        # Tool-call tags may be special tokens; skipping them would hide every call.
        skip_special_tokens=not request.tools,
    )


def refusal_types() -> tuple[type[BaseException], ...]:
    """The exceptions with which vLLM refuses a request it was given (its input checks), as
    opposed to failing to run: VLLMClientError (VLLMValidationError and kin), and ValueError,
    which pydantic's ValidationError and older vLLM versions raise."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # vLLM before VLLMClientError raised ValueError
        return (ValueError,)
    return (VLLMClientError, ValueError)


_CTX_TOO_LONG = re.compile(
    r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len"
    r" \((\w+)=([\d.]+)"
)


def load_error(exc: BaseException, model: str) -> BackendError:
    """The BackendError for vLLM failing to load `model`, naming the option to change."""
    message = str(exc).strip()
    if m := _CTX_TOO_LONG.search(message):
        most = int(float(m.group(3)))
        return BackendError(
            f"{m.group(1)} tokens is more than {model} takes ({m.group(2)}={most} in its"
            f" config.json): give {most} or less",
            option="n_ctx",
        )
    first = message.splitlines()[0] if message else type(exc).__name__
    return BackendError(f"vLLM cannot load {model} ({first})", option="model")


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

    def __init__(self, options: Options | None = None, *, llm: Any = None) -> None:
        """Load `options.model` into a new `vllm.LLM`, or use `llm`, one already loaded (by
        code that embeds selfgen, or a test)."""
        options = options or self.Options()
        if not options.model:
            raise BackendError(
                "the vllm backend needs a Hugging Face model id or folder", option="model"
            )
        self.model = str(options.model)
        self.seed = options.seed
        self.options = {
            "tensor_parallel_size": options.tensor_parallel_size,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "max_model_len": options.n_ctx,
            "dtype": options.dtype,
        }
        self._llm = llm if llm is not None else self._load()
        # The context vLLM enforces: --ctx, or the model's own limit when --ctx is not given.
        self.max_model_len = int(self._llm.model_config.max_model_len)

    def _load(self) -> Any:
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise BackendError(
                f"the vllm backend needs vLLM: pip install 'selfgen[vllm]' ({exc})"
            ) from None
        if current_platform.is_unspecified():
            # vLLM would fail later with "Device string must not be empty".
            raise BackendError(
                "the vllm backend needs a CUDA GPU, and vLLM finds none on this machine"
                " (use the llamacpp backend, or the openai backend with a server that has one)"
            )
        try:
            return LLM(
                model=self.model,
                seed=self.seed,
                structured_outputs_config=dict(STRUCTURED_OUTPUTS),
                **self.options,
            )
        except Exception as exc:  # vLLM raises many kinds; the user needs the message
            raise load_error(exc, self.model) from None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            **self.options,
            "structured_outputs_config": STRUCTURED_OUTPUTS,
        }

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        start = time.perf_counter()
        tokenizer = self._llm.get_tokenizer()
        out: list[Completion | None] = [None] * len(requests)
        prompts: list[int] = []
        by_tools: dict[str, list[int]] = {}  # `chat` takes one tool list per call
        for i, request in enumerate(requests):
            tokens = len(prompt_token_ids(tokenizer, request))
            if problem := length_problem(tokens, self.max_model_len):
                out[i] = error_completion(problem, tokens, start)
            elif request.prompt is not None:
                prompts.append(i)
            else:
                by_tools.setdefault(json.dumps(request.tools, sort_keys=True), []).append(i)
        groups = ([prompts] if prompts else []) + list(by_tools.values())
        for group in groups:
            for i, completion in zip(group, self._run(requests, group, start), strict=True):
                out[i] = completion
        return [c for c in out if c is not None]

    def _run(
        self, requests: Sequence[GenerationRequest], group: list[int], start: float
    ) -> list[Completion]:
        """One `generate` or `chat` call for `group` (requests of one kind and one tool list);
        when vLLM refuses it, each request alone, so that only the refused ones fail."""
        refused = refusal_types()
        try:
            results = self._call([requests[i] for i in group])
        except refused as exc:
            if len(group) == 1:
                return [error_completion(f"vLLM refused the request: {exc}", start=start)]
            return [c for i in group for c in self._run(requests, [i], start)]
        except Exception as exc:  # the engine failed: no request of the batch has an answer
            raise BackendError(f"vLLM failed ({type(exc).__name__}: {exc})") from None
        tools = requests[group[0]].tools
        return [self._completion(result, start, parse_tools=bool(tools)) for result in results]

    def _call(self, batch: list[GenerationRequest]) -> list[Any]:
        params = [sampling_params(r, self.seed) for r in batch]
        if batch[0].prompt is not None:
            return self._llm.generate([r.prompt for r in batch], params, use_tqdm=False)
        tools = batch[0].tools
        return self._llm.chat(
            [list(r.messages or ()) for r in batch],
            params,
            use_tqdm=False,
            tools=list(tools) if tools else None,
        )

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
        limit = self.max_model_len
        for i, request in enumerate(requests):
            context, continuation = loss_token_ids(tokenizer, request)
            if not continuation:
                continue
            ids = context + continuation
            if len(ids) + 1 > limit:
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
        except refusal_types() as exc:  # vLLM refuses a prompt it cannot take
            raise BackendError(f"vLLM refused a loss request ({exc})") from None
        for (i, ids, first), result in zip(todo, results, strict=True):
            out[i] = ContinuationLoss(
                tuple(continuation_logprobs(result.prompt_logprobs, ids, first))
            )
        return out

    @staticmethod
    def _completion(result: Any, start: float, parse_tools: bool) -> Completion:
        best = result.outputs[0]
        prompt_tokens = len(result.prompt_token_ids or ())
        if best.finish_reason not in FINISHED:
            return error_completion(
                f"vLLM finished the request with '{best.finish_reason}'", prompt_tokens, start
            )
        extra: dict[str, Any] = {}
        if parse_tools:
            calls, errors = parse_hermes_tool_calls(best.text)
            extra = {"tool_calls": calls, "tool_call_errors": errors}
        return Completion(
            text=best.text,
            finish_reason=best.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(best.token_ids),
            # Requests of a batch run together: each one's latency is the batch's so far.
            latency_s=time.perf_counter() - start,
            extra=extra,
        )

    def close(self) -> None:
        super().close()
        self._llm = None
