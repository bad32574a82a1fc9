"""Any OpenAI-compatible server through the `openai` client: `vllm serve`,
`python -m llama_cpp.server`, OpenAI itself.

Requests of a batch are sent concurrently (`concurrency` in flight) with `AsyncOpenAI`, which
retries connection errors, 429 and 5xx with exponential backoff. A batch that still fails
raises BackendError; the loop has committed every finished round, so the run resumes.
Constraints go the way the server understands them (`server_flavour`):

- `llamacpp`: a GBNF grammar in the request body (`grammar`);
- `vllm`: `structured_outputs` (`choice` or `json`) in the request body;
- `openai`: `response_format` with a JSON schema (chat only).

The API key is taken from the argument or OPENAI_API_KEY and is never logged or stored.

`continuation_loss` sends context + continuation to /completions with `echo`, `logprobs=1` and
`max_tokens=1` and reads the log-probabilities the server gives the prompt's own tokens (see
:func:`echo_logprobs` for how the continuation's tokens are found, and where that is
approximate). OpenAI's API and llama.cpp's C++ server return no such log-probabilities;
chat messages need the served model's chat template, read from its GGUF file (`model_file`,
or the model id when that names a .gguf file here, as `python -m llama_cpp.server` reports
it). Each of these limits raises CapabilityError naming the backend and the reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from selfgen.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    CapabilityError,
    Completion,
    Constraint,
    ContinuationLoss,
    GenerationRequest,
    LossRequest,
)

if TYPE_CHECKING:
    import asyncio

FLAVOURS = ("auto", "llamacpp", "vllm", "openai", "none")
MODES = ("auto", "completions", "chat")


def _is_local(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _refused(base_url: str, exc: Any) -> str:
    hint = {
        401: "check --api-key / OPENAI_API_KEY",
        403: "the key may not use this model",
        404: "check --base-url and --api-model",
    }.get(exc.status_code, "")
    return f"{base_url} answered {exc.status_code}" + (f": {hint}" if hint else "")


def _message(exc: Any) -> str:
    """The server's own words in an error answer."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(getattr(exc, "message", exc))


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    """The server's parsed tool calls as `{"name", "arguments"}`; arguments that are not a
    JSON object are passed on as the string the model wrote, for the caller to reject."""
    calls = []
    for call in message.tool_calls or ():
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = call.function.arguments
        calls.append({"name": call.function.name, "arguments": arguments})
    return calls


class EchoError(ValueError):
    """An echoed answer that gives no log-probabilities of the continuation; says why."""


def echo_logprobs(
    choice: Any, completion_tokens: int | None, prompt: str, continuation: str
) -> list[float | None]:
    """The log-probabilities of `continuation`'s tokens in a /completions answer (`choice`) to
    `prompt + continuation` sent with echo, logprobs and max_tokens=1; None for a token the
    server gives none (the first token of the prompt).

    Servers do not agree on what `text_offset` counts from: llama-cpp-python's counts the text
    without special tokens (its entries skip the BOS token, and `<|im_end|>` is zero-width),
    so offsets are only used relative to the end of the prompt, where the continuation is.
    The continuation's tokens are the prompt's last entries that end after the end of the
    prompt minus len(continuation) characters. The server tokenizes the whole text at once;
    where the tokens it chose cross the boundary (a context ending in a space, a word split
    across it), the token that crosses is counted as the continuation's, so the count and the
    first log-probability can differ from tokenizing the two parts separately. Special-token
    text inside the continuation is not measured by llama-cpp-python's offsets and is not
    supported here.

    Raises EchoError when the answer holds no log-probabilities of the prompt, or when they
    are visibly shifted by one token (see :func:`_shifted`).
    """
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None or not logprobs.token_logprobs or not logprobs.text_offset:
        raise EchoError("it returns no log-probabilities for the prompt")
    text = choice.text or ""
    if not text.startswith(prompt + continuation):
        raise EchoError("it does not echo the prompt")
    generated = text[len(prompt + continuation) :]
    values, offsets = list(logprobs.token_logprobs), list(logprobs.text_offset)
    tokens = list(logprobs.tokens or [""] * len(values))
    tops = [top or {} for top in logprobs.top_logprobs or [None] * len(values)]
    n_gen = completion_tokens if completion_tokens is not None else int(bool(generated))
    n_prompt = len(values) - n_gen
    if n_prompt <= 0:
        raise EchoError("it returns log-probabilities of the generated token only, not the prompt")
    if _shifted(values, tokens, tops, n_prompt, generated):
        raise EchoError(
            "its log-probabilities of the prompt are shifted by one token (llama-cpp-python's"
            " server does this for a model that adds no beginning-of-text token, unless the"
            " prompt starts with it)"
        )
    if n_gen:
        end = offsets[n_prompt]
    else:
        end = offsets[n_prompt - 1] + len(tokens[n_prompt - 1])
    start = end - len(continuation)
    picked: list[float | None] = []
    for i in range(n_prompt):
        # Where the token ends: the next larger offset (a zero-width entry, such as the first
        # bytes of a character split over two tokens, ends where its character does).
        stop = next((o for o in offsets[i + 1 : n_prompt] if o > offsets[i]), end)
        if stop > start:
            picked.append(values[i])
    return picked


def _shifted(
    values: list[float | None],
    tokens: list[str],
    tops: list[dict[str, float]],
    n_prompt: int,
    generated: str,
) -> bool:
    """Whether each entry's log-probability was read one position late: from the distribution
    that predicts the next token instead of the one that predicts this token.

    llama-cpp-python's server (0.3.x) does this when the prompt does not start with the BOS
    token, and then drops the generated token's entry. Three signs, each from the entries'
    most likely tokens (top_logprobs), which a shifted answer also takes one position late:
    with temperature 0 the generated token is the most likely one, so an entry for it that
    is not the most likely of its position is shifted; without one (the model ended the
    text), a last entry whose most likely token is the generated end, not itself, is
    shifted; and where the entries' most likely tokens match the next entry's token more
    often than their own, they predict one position ahead.
    """

    def best(i: int) -> str | None:
        return max(tops[i], key=tops[i].__getitem__) if tops[i] else None

    if n_prompt < len(values):
        value, top = values[n_prompt], tops[n_prompt]
        if top and value is not None and value < max(top.values()) - 1e-6:
            return True
    elif best(n_prompt - 1) == generated != tokens[n_prompt - 1]:
        return True
    own = sum(best(i) == tokens[i] for i in range(1, n_prompt))
    ahead = sum(best(i) == tokens[i + 1] for i in range(1, min(n_prompt, len(tokens) - 1)))
    return ahead > own


def constraint_body(flavour: str, constraint: Constraint | None, chat: bool) -> dict[str, Any]:
    """The request-body fields that constrain an answer the way a server of `flavour` reads
    them."""
    if constraint is None or flavour == "none":
        return {}
    if flavour == "vllm":
        spec = (
            {"choice": list(constraint.choices)}
            if constraint.choices is not None
            else {"json": constraint.json_schema}
        )
        return {"extra_body": {"structured_outputs": spec}}
    if flavour == "llamacpp":
        from selfgen.backends.llamacpp import choice_grammar, schema_grammar

        grammar = (
            choice_grammar(constraint.choices)
            if constraint.choices is not None
            else schema_grammar(constraint.json_schema or {})
        )
        return {"extra_body": {"grammar": grammar}}
    if chat:  # openai: structured outputs on chat completions
        # The root of a response_format schema must be an object, so choices (and a schema
        # with another root, such as the anyOf of tool calls) are wrapped in {"answer": ...}
        # and unwrapped by unwrap. Strict mode also needs every object closed and every
        # property required, which only the choice wrapper is known to satisfy.
        if not _wrapped(constraint):
            schema, strict = constraint.json_schema or {}, False
        else:
            inner = (
                {"enum": list(constraint.choices)}
                if constraint.choices is not None
                else constraint.json_schema or {}
            )
            schema = {
                "type": "object",
                "properties": {"answer": inner},
                "required": ["answer"],
                "additionalProperties": False,
            }
            strict = constraint.choices is not None
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": strict},
            }
        }
    # OpenAI's completions endpoint has no structured outputs: the stage's parser checks the
    # answer, as it does for every backend.
    return {}


def _wrapped(constraint: Constraint) -> bool:
    """Whether the openai flavour sends `constraint` wrapped in {"answer": ...}."""
    return constraint.choices is not None or (constraint.json_schema or {}).get("type") != "object"


def unwrap(flavour: str, text: str, constraint: Constraint | None, chat: bool) -> str:
    """The answer inside an {"answer": ...} wrapper that constraint_body added."""
    if flavour != "openai" or not chat or constraint is None or not _wrapped(constraint):
        return text
    try:
        answer = json.loads(text)["answer"]
    except (ValueError, KeyError, TypeError):
        return text  # left as it came, for the stage's parser to reject
    return answer if isinstance(answer, str) else json.dumps(answer)


class OpenAIBackend(Backend):
    name = "openai"
    supports_continuation_loss = True  # per server; see __init__

    @dataclass(frozen=True)
    class Options(BackendOptions):
        base_url: str | None = None  # None: OPENAI_BASE_URL, else OpenAI's
        api_model: str | None = None  # None: the first model the server lists
        api_key: str | None = field(default=None, repr=False)  # None: OPENAI_API_KEY
        concurrency: int = 8
        server_flavour: str = "auto"
        api_mode: str = "auto"
        timeout_s: float = 300.0
        max_retries: int = 5
        # The served model's GGUF file, if this machine has it: its chat template renders chat
        # messages for continuation_loss. None: the model id, when it is a .gguf file here.
        model_file: str | None = None

    def __init__(self, options: Options | None = None) -> None:
        import openai

        options = options or self.Options()
        server_flavour, api_mode = options.server_flavour, options.api_mode
        if server_flavour not in FLAVOURS:
            raise BackendError(
                f"'{server_flavour}' is not one of {', '.join(FLAVOURS)}", option="server_flavour"
            )
        if api_mode not in MODES:
            raise BackendError(f"'{api_mode}' is not one of {', '.join(MODES)}", option="api_mode")
        self.base_url = (
            options.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        )
        key = options.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not _is_local(self.base_url):
                raise BackendError(
                    f"no API key for {self.base_url} (give one, or set OPENAI_API_KEY)",
                    option="api_key",
                )
            key = "no-key"  # local servers accept any non-empty key
        self._key = key
        self.concurrency = max(1, options.concurrency)
        self.timeout_s = options.timeout_s
        self.max_retries = options.max_retries
        self.seed = options.seed
        api_model = options.api_model
        client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=30.0, max_retries=self.max_retries
        )
        try:
            models = client.models.list().data
        except openai.APIConnectionError:
            raise BackendError(
                f"cannot reach an OpenAI-compatible server at {self.base_url}", option="base_url"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise BackendError(_refused(self.base_url, exc)) from None
        except openai.APIStatusError as exc:
            # Some servers have no /models; the model can still be named with --api-model.
            if api_model is None:
                raise BackendError(
                    f"{self.base_url} answered {exc.status_code} to /models; "
                    "name the model with --api-model",
                    option="base_url",
                ) from None
            models = []
        finally:
            client.close()
        if api_model is None:
            if not models:
                raise BackendError(f"{self.base_url} lists no model; name one", option="api_model")
            api_model = models[0].id
        self.model = api_model
        owner = next((getattr(m, "owned_by", "") for m in models if m.id == api_model), "")
        if server_flavour == "auto":
            if owner == "vllm":
                server_flavour = "vllm"
            elif "api.openai.com" in self.base_url:
                server_flavour = "openai"
            else:
                server_flavour = "llamacpp" if _is_local(self.base_url) else "none"
        self.flavour = server_flavour
        # In "auto" mode a server that answers 404 to /completions (a chat-only server) is sent
        # chat requests from then on.
        self._detect_mode = api_mode == "auto" and server_flavour != "openai"
        if api_mode == "auto":
            api_mode = "chat" if server_flavour == "openai" else "completions"
        self.mode = api_mode
        # OpenAI's completions endpoint no longer echoes log-probabilities of the prompt.
        self.supports_continuation_loss = server_flavour != "openai"
        self.model_file = options.model_file
        self._vocab: Any = None  # the model file's tokenizer and template, loaded when needed
        self._lock = threading.Lock()
        self._session: tuple[asyncio.AbstractEventLoop, Any, asyncio.Semaphore] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "server_flavour": self.flavour,
            "api_mode": self.mode,
        }

    async def _one(self, client: Any, sem: asyncio.Semaphore, req: GenerationRequest) -> Completion:
        import openai

        p = req.params
        common: dict[str, Any] = dict(
            model=self.model,
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            seed=p.seed if p.seed is not None else self.seed,
        )
        if p.stop:
            common["stop"] = list(p.stop)[:4]  # the OpenAI API takes at most four
        async with sem:
            start = time.perf_counter()
            try:
                try:
                    return await self._request(client, req, dict(common), start)
                except openai.NotFoundError:
                    if not self._detect_mode or req.messages is not None:
                        raise
                    self.mode = "chat"  # no /completions here: chat from now on (one retry)
                    return await self._request(client, req, dict(common), start)
            except (
                openai.APIConnectionError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as exc:
                raise BackendError(
                    f"{self.base_url} failed after {self.max_retries} retries ({exc})"
                ) from None
            except (
                openai.AuthenticationError,
                openai.PermissionDeniedError,
                openai.NotFoundError,
            ) as exc:
                # Every request would get the same answer: stop the run rather than reject
                # every candidate.
                raise BackendError(_refused(self.base_url, exc)) from None
            except (
                openai.APIStatusError,
                openai.APIResponseValidationError,
                ValueError,
                AttributeError,
                IndexError,
                TypeError,
            ) as exc:
                # A request the server refuses (e.g. too long), or an answer that is not an
                # answer (not JSON, or JSON of another shape): recorded as a failed completion
                # (the candidate is rejected with it), not a failed run.
                return Completion(
                    "",
                    "error",
                    0,
                    0,
                    time.perf_counter() - start,
                    extra={"error": f"{type(exc).__name__}: {exc}"[:500]},
                )

    async def _request(
        self, client: Any, req: GenerationRequest, common: dict[str, Any], start: float
    ) -> Completion:
        """One request; raises the client's errors, or AttributeError/IndexError/TypeError
        when the answer does not have the shape of a completion."""
        chat = self.mode == "chat" or req.messages is not None
        common.update(constraint_body(self.flavour, req.constraint, chat))
        if chat:
            messages = (
                list(req.messages)
                if req.messages is not None
                else [{"role": "user", "content": req.prompt}]
            )
            if req.tools:
                common["tools"] = list(req.tools)
            if req.tool_choice is not None:
                common["tool_choice"] = req.tool_choice
            out = await client.chat.completions.create(messages=messages, **common)
            choice = out.choices[0]
            text = choice.message.content or ""
            extra = {"tool_calls": _tool_calls(choice.message)} if req.tools else {}
        else:
            out = await client.completions.create(prompt=req.prompt, **common)
            choice = out.choices[0]
            text = choice.text
            extra = {}
        if not isinstance(text, str):
            raise TypeError(f"the answer's text is {type(text).__name__}, not a string")
        usage = out.usage
        return Completion(
            text=unwrap(self.flavour, text, req.constraint, chat),
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            latency_s=time.perf_counter() - start,
            extra=extra,
        )

    def continuation_loss(self, requests: Sequence[LossRequest]) -> list[ContinuationLoss]:
        """See :meth:`Backend.continuation_loss` and :func:`echo_logprobs`.

        Chat messages are rendered here with the model file's chat template, as llama.cpp
        renders them. After an empty prompt the continuation's first token is the first token
        of the text, which a server scores only after a beginning-of-text token it adds
        itself (vLLM with a model that adds one); llama-cpp-python's server gives the first
        token it echoes no log-probability whatever precedes it, so there CapabilityError.
        """
        import asyncio

        if not self.supports_continuation_loss:
            raise CapabilityError(
                f"the openai backend cannot compute log-probabilities of a given text at"
                f" {self.base_url}: OpenAI's API does not return log-probabilities of the prompt"
            )
        prompts = [self._loss_prompt(r) for r in requests]
        loop, client, sem = self._start()
        futures = [
            asyncio.run_coroutine_threadsafe(self._loss(client, sem, p, r.continuation), loop)
            for p, r in zip(prompts, requests, strict=True)
        ]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def _loss_prompt(self, request: LossRequest) -> str:
        """The text sent before the continuation."""
        if request.messages is None:
            return request.prompt or ""
        vocab = self._model_vocab()
        if vocab is None:
            raise CapabilityError(
                f"the openai backend cannot compute log-probabilities of a chat reply at"
                f" {self.base_url} without the served model's chat template: give its GGUF"
                " file as the model_file option"
            )
        from selfgen.backends.llamacpp import render_chat

        # Whether a BOS is added to this text is the server's to decide, as for any prompt.
        return render_chat(vocab, request.messages)[0]

    def _model_vocab(self) -> Any:
        """A vocabulary-only llama.cpp model of the served model's GGUF file, or None."""
        path = self.model_file or (self.model if self.model.endswith(".gguf") else None)
        if path is None or not os.path.isfile(path):
            if self.model_file:
                raise BackendError(f"no such GGUF file: {self.model_file}", option="model_file")
            return None
        with self._lock:
            if self._vocab is None:
                from selfgen.backends.llamacpp import load_vocabulary

                self._vocab = load_vocabulary(path, option="model_file")
            return self._vocab

    async def _loss(
        self, client: Any, sem: asyncio.Semaphore, prompt: str, continuation: str
    ) -> ContinuationLoss:
        import openai

        if not continuation:
            return ContinuationLoss(())
        cannot = f"the openai backend cannot compute log-probabilities at {self.base_url}"
        async with sem:
            try:
                out = await client.completions.create(
                    model=self.model,
                    prompt=prompt + continuation,
                    # llama-cpp-python reads max_tokens=0 as "no limit"; one token is cheap.
                    max_tokens=1,
                    echo=True,
                    logprobs=1,
                    temperature=0.0,
                )
            except openai.NotFoundError:
                raise CapabilityError(f"{cannot}: it has no /completions endpoint") from None
            except openai.BadRequestError as exc:
                reason = _message(exc)
                if "context" in reason.lower():  # too long for the model: this request only
                    raise BackendError(
                        f"{self.base_url} refused a loss request: {reason}"
                    ) from None
                raise CapabilityError(
                    f"{cannot}: it refuses a completion with echo and logprobs ({reason})"
                ) from None
            except (
                openai.APIConnectionError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as exc:
                raise BackendError(
                    f"{self.base_url} failed after {self.max_retries} retries ({exc})"
                ) from None
            except openai.APIStatusError as exc:
                raise BackendError(_refused(self.base_url, exc)) from None
        try:
            usage = getattr(out, "usage", None)
            values = echo_logprobs(
                out.choices[0],
                getattr(usage, "completion_tokens", None),
                prompt,
                continuation,
            )
        except EchoError as exc:
            raise CapabilityError(f"{cannot}: {exc}") from None
        except (AttributeError, IndexError, TypeError) as exc:
            raise CapabilityError(f"{cannot}: its answer has another shape ({exc})") from None
        if any(v is None for v in values):
            raise CapabilityError(
                f"{cannot} after an empty prompt: it gives the first token of a text no"
                " log-probability"
            )
        return ContinuationLoss(tuple(float(v) for v in values if v is not None))

    def _start(self) -> tuple[asyncio.AbstractEventLoop, Any, asyncio.Semaphore]:
        """The event loop thread, client and semaphore that every request shares (lazily)."""
        import asyncio  # here, not at the top: the command line reads Options for its --help

        with self._lock:
            if self._session is None:
                import openai

                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="selfgen-openai", daemon=True
                )
                thread.start()

                async def open_session() -> tuple[Any, asyncio.Semaphore]:
                    client = openai.AsyncOpenAI(
                        base_url=self.base_url,
                        api_key=self._key,
                        timeout=self.timeout_s,
                        max_retries=self.max_retries,
                    )
                    return client, asyncio.Semaphore(self.concurrency)

                client, sem = asyncio.run_coroutine_threadsafe(open_session(), loop).result()
                self._session = (loop, client, sem)
                self._thread = thread
            return self._session

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[Completion]]:
        """Queue requests on the shared event loop; at most `concurrency` are in flight."""
        import asyncio

        loop, client, sem = self._start()
        return [asyncio.run_coroutine_threadsafe(self._one(client, sem, r), loop) for r in requests]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [future.result() for future in self.submit(requests)]

    def shutdown(self) -> None:
        """Cancel queued and running requests, close the client and stop the event loop."""
        import asyncio

        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        loop, client, _ = session

        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join()
        loop.close()
