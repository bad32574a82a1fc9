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
    Completion,
    Constraint,
    GenerationRequest,
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
