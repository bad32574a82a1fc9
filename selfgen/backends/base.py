"""The backend contract: requests in, completions with token usage out.

Every backend (the embedded llama.cpp one, a server, a user's plug-in) implements
:class:`Backend` and is found by name through :func:`get_backend`. Built-in backends are
registered through the same ``selfgen.backends`` entry-point group a third-party package would
use, so there is one path, not two. This module imports nothing heavy.
"""

from __future__ import annotations

import abc
import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from selfgen.plugins import Registry


class BackendError(RuntimeError):
    """A backend that cannot start or cannot answer; the message is meant for the user.

    `option` names the backend option whose value is at fault, if one is; the message then
    speaks of that value, and the command line names the flag the user gave it with.
    """

    def __init__(self, problem: str, *, option: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.option = option

    def __str__(self) -> str:
        return self.problem if self.option is None else f"option '{self.option}': {self.problem}"


class CapabilityError(BackendError):
    """The backend cannot do what was asked of it at all (not: it failed this time).

    The message is one sentence that names the backend and says why; a caller that needs the
    capability (a quality scorer) adds its own name.
    """


@dataclass(frozen=True)
class BackendOptions:
    """The options every backend takes; a backend's own `Options` dataclass extends these.

    A backend class (or factory) with an `Options` attribute is built with one `Options`
    object, and an option its `Options` does not declare is refused by :func:`get_backend`.
    A factory without one is called with the options as keyword arguments, unchecked.
    """

    seed: int = 0  # for requests that carry none


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Constraint:
    """Restricts what the model may write: one of `choices`, or JSON matching `json_schema`."""

    choices: tuple[str, ...] | None = None
    json_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.choices is None) == (self.json_schema is None):
            raise ValueError("a Constraint takes exactly one of choices or json_schema")


@dataclass(frozen=True)
class GenerationRequest:
    """A text prompt to continue, or chat `messages` to answer.

    `shared_prefix` is a hint: the first that many characters of `prompt` are shared by many
    requests (few-shot demonstrations), so a backend may compute them once and reuse them.
    `tools` (OpenAI function-tool dicts) go with `messages`: the backend renders them the way
    its chat template does and returns the calls it finds in `Completion.extra["tool_calls"]`
    as `{"name", "arguments"}` dicts, unvalidated. `tool_choice` goes with `tools`, in the
    OpenAI form: "auto", "none", or `{"type": "function", "function": {"name": ...}}` for one
    tool; a server that constrains decoding then constrains the call to that tool's schema.
    """

    params: SamplingParams
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    constraint: Constraint | None = None
    shared_prefix: int = 0
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a GenerationRequest takes exactly one of prompt or messages")
        if self.tools is not None and self.messages is None:
            raise ValueError("tools go with chat messages, not with a prompt")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice goes with tools")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (stop string or end of text) or "length" (max_tokens cut it)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossRequest:
    """A `continuation` whose likelihood is wanted after a context.

    The context is a text `prompt` (may be "": the continuation alone, after the model's
    beginning-of-text token) or chat `messages`, rendered with the model's chat template and its
    generation prompt, exactly as `generate` renders them; the continuation is then the
    assistant's reply. The continuation is scored as given: append the end-of-turn text to
    score the model's stopping there too.
    """

    continuation: str
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a LossRequest takes exactly one of prompt or messages")


@dataclass(frozen=True)
class ContinuationLoss:
    """How likely the model finds a continuation: one natural-log probability per token."""

    token_logprobs: tuple[float, ...]

    @property
    def tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_loss(self) -> float:
        """Mean negative log-likelihood per token, in nats; nan when there is no token."""
        if not self.token_logprobs:
            return math.nan
        return -math.fsum(self.token_logprobs) / len(self.token_logprobs)


class Backend(abc.ABC):
    """A language model that answers batches of requests.

    `generate` returns one completion per request, in order. A backend may run the batch
    concurrently; the result must not depend on how it is scheduled when each request
    carries a seed.

    `submit` is the non-blocking form the loop uses, so that the model works on queued
    requests while the loop parses and filters earlier answers. The default runs `generate`
    on one background thread, in submission order: request by request, so each future is
    resolved as soon as its own answer exists, or, for a backend that sets
    `batches_natively` (one call over many requests is much faster than many calls), one
    `generate` call per submitted batch. A backend with its own concurrency overrides
    `submit`. Either way `generate` is only ever called from that one thread, so a backend
    need not be thread-safe.
    """

    name: str = "backend"
    batches_natively: bool = False
    # Whether `continuation_loss` can work; check it before starting work that needs it. A
    # backend that knows only when it has asked (a server) says True and may still raise.
    supports_continuation_loss: bool = False

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]: ...

    def continuation_loss(self, requests: Sequence[LossRequest]) -> list[ContinuationLoss]:
        """The log-probability of each request's continuation after its context, in order.

        Deterministic: the same request gives the same numbers, whatever came before it. It
        may be called from any thread while `submit` has work queued; a backend that holds one
        model serialises the two itself. Raises CapabilityError where the backend cannot compute log-probabilities of a given
        text, and BackendError for a request that does not fit the model's context.
        """
        raise CapabilityError(
            f"the {self.name} backend cannot compute log-probabilities of a given text"
        )

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[Completion]]:
        """Start answering `requests`; one future per request, in order."""
        executor = self._executor()
        if self.batches_natively and requests:
            batch = executor.submit(self.generate, list(requests))
            return [_item(batch, i) for i in range(len(requests))]
        return [executor.submit(_first, self.generate, request) for request in requests]

    def _executor(self) -> ThreadPoolExecutor:
        with _executor_lock:
            executor = self.__dict__.get("_submit_executor")
            if executor is None:
                executor = ThreadPoolExecutor(1, thread_name_prefix=f"selfgen-{self.name}")
                self.__dict__["_submit_executor"] = executor
            return executor

    def shutdown(self) -> None:
        """Cancel what `submit` has queued and wait for the request in progress."""
        executor = self.__dict__.pop("_submit_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """What identifies the model, stored with each run (never secrets)."""
        return {"backend": self.name}

    def close(self) -> None:
        """Release the model. Subclasses that hold resources extend this and call it."""
        self.shutdown()


_executor_lock = threading.Lock()


def _first(generate: Callable[..., list[Completion]], request: GenerationRequest) -> Completion:
    return generate([request])[0]


def _item(batch: Future[list[Completion]], index: int) -> Future[Completion]:
    """A future for one completion of a batch future."""
    out: Future[Completion] = Future()

    def done(f: Future[list[Completion]]) -> None:
        if f.cancelled():
            out.set_exception(CancelledError())
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(f.result()[index])

    out.set_running_or_notify_cancel()
    batch.add_done_callback(done)
    return out


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes_tool_calls(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The calls in `text` written as `<tool_call>{json}</tool_call>` blocks, and one error
    message per block that is not a JSON object with a string `name` and object `arguments`."""
    calls: list[dict[str, Any]] = []
    errors: list[str] = []
    for block in _TOOL_CALL.findall(text):
        try:
            value = json.loads(block)
        except ValueError as exc:
            errors.append(f"not JSON ({exc.msg}): {block[:200]}")
            continue
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            errors.append(f"no tool name: {block[:200]}")
            continue
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        if not isinstance(arguments, dict):
            errors.append(f"arguments are not an object: {block[:200]}")
            continue
        calls.append({"name": value["name"], "arguments": arguments})
    return calls, errors


BackendFactory = Callable[..., Backend]
_registry: Registry[BackendFactory] = Registry("selfgen.backends")


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make a backend available by name (used by tests and by code that embeds selfgen)."""
    _registry.register(name, factory)


def available_backends() -> list[str]:
    return _registry.names()


def _factory(name: str) -> BackendFactory:
    factory = _registry.find(name)
    if factory is None:
        known = ", ".join(available_backends()) or "none"
        raise BackendError(f"unknown backend '{name}' (known: {known})")
    return factory


def options_class(name: str) -> type[BackendOptions] | None:
    """The `Options` dataclass of the backend registered as `name`, or None for a plain
    factory that takes any keyword arguments."""
    return _options_class(_factory(name))


def _options_class(factory: BackendFactory) -> type[BackendOptions] | None:
    options = getattr(factory, "Options", None)
    return options if isinstance(options, type) and is_dataclass(options) else None


def check_options(name: str, options: Mapping[str, Any]) -> BackendOptions | None:
    """The backend `name`'s `Options` made from `options` (None for a plain factory).

    An option the backend does not declare is refused with a BackendError that names the
    backend and the option (its `option` attribute holds the name). Nothing is loaded, so this
    can run before anything costly starts.
    """
    return _check(name, _factory(name), options)


def _check(name: str, factory: BackendFactory, options: Mapping[str, Any]) -> BackendOptions | None:
    cls = _options_class(factory)
    if cls is None:
        return None
    known = {f.name for f in fields(cls)}
    for option in options:
        if option not in known:
            raise BackendError(
                f"not taken by the {name} backend (it takes {', '.join(sorted(known))})",
                option=option,
            )
    return cls(**options)


def get_backend(name: str, options: Mapping[str, Any] | None = None, /, **more: Any) -> Backend:
    """Build the backend registered as `name` with `options` (a mapping, keywords, or both).

    An option the backend does not take is refused (see :func:`check_options`).
    """
    values = {**(options or {}), **more}
    factory = _factory(name)
    checked = _check(name, factory, values)
    return factory(**values) if checked is None else factory(checked)
