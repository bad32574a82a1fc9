"""Quality scorers: numbers that say whether an example is good, not only well-formed.

A scorer takes examples (an instruction, its input and an output; or a tool-use trace) and
returns one `Score` each. It asks a backend for what it needs: the log-probabilities of a given
continuation (`Backend.continuation_loss`) or a graded answer. Scorers are found by name through
the `selfgen.scorers` entry-point group, as backends are, so a package can add its own:

    [project.entry-points."selfgen.scorers"]
    mine = "my_package.scorers:MyScorer"

Built in:
    ifd         Instruction-Following Difficulty (Li et al. 2023): loss of the output given the
                instruction and input over its loss alone. Lower is better; near or above 1 the
                instruction does not help predict the output.
    judge       a model grades the example from 1 to 5 with the Self-Instruct paper's three
                questions as the rubric. Higher is better.
    toolformer  for traces (Schick et al. 2023): how much the call and its result lower the
                loss of the answer. Higher is better; below tau the call did not help.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfgen.backends.base import Backend, BackendError
from selfgen.plugins import Registry


class ScorerError(ValueError):
    """A scorer that cannot be built or cannot run with this backend; meant for the user."""


@dataclass(frozen=True)
class Example:
    """One instruction-following example: the instruction, its input (may be empty), the output."""

    instruction: str
    input: str
    output: str

    def user_message(self) -> str:
        """The instruction and input as one user turn, the way `selfgen export` writes them."""
        if self.input.strip():
            return f"{self.instruction}\n\n{self.input}"
        return self.instruction


@dataclass(frozen=True)
class TraceExample:
    """One tool-use trace as OpenAI chat messages (user, assistant tool_calls, tool, answer)."""

    messages: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Score:
    """A scorer's verdict on one example. `value` is None when it could not be scored (the
    reason is in `detail["error"]`); `detail` holds what the value was computed from."""

    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)


class Scorer(abc.ABC):
    """Scores examples of one kind ("task" examples or "trace" examples) with a backend."""

    name: str = "scorer"
    kind: str = "task"  # or "trace"
    higher_is_better: bool = True

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @abc.abstractmethod
    def score(self, examples: Sequence[Any]) -> list[Score]:
        """One score per example, in order."""

    def settings(self) -> dict[str, Any]:
        """What the scores depend on besides the model, stored beside every score."""
        return {}

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` is better than score `b`."""
        return a > b if self.higher_is_better else a < b


def mean_loss(token_logprobs: Sequence[float]) -> float:
    """Mean negative log-likelihood per token; nan for an empty continuation."""
    if not token_logprobs:
        return math.nan
    return -sum(token_logprobs) / len(token_logprobs)


ScorerFactory = Callable[..., Scorer]
_registry: Registry[ScorerFactory] = Registry("selfgen.scorers")


def register_scorer(name: str, factory: ScorerFactory) -> None:
    """Make a scorer available by name (used by tests and by code that embeds selfgen)."""
    _registry.register(name, factory)


def available_scorers() -> list[str]:
    return _registry.names()


def scorer_class(name: str) -> ScorerFactory:
    """The class (or factory) registered as `name`, not yet built."""
    factory = _registry.find(name)
    if factory is None:
        raise ScorerError(f"unknown scorer '{name}' (known: {', '.join(available_scorers())})")
    return factory


def get_scorer(name: str, backend: Backend, **options: Any) -> Scorer:
    """Build the scorer registered as `name` on `backend`."""
    factory = scorer_class(name)
    try:
        return factory(backend, **options)
    except TypeError as exc:
        raise ScorerError(f"scorer '{name}': {exc}") from None


def losses(backend: Backend, requests: Sequence[Any]) -> list[Any]:
    """`backend.continuation_loss(requests)`, where a request the backend refuses (one that does
    not fit the context) becomes its error message instead of failing the whole batch. A
    backend that cannot compute log-probabilities at all still raises."""
    from selfgen.backends.base import CapabilityError

    try:
        return list(backend.continuation_loss(requests))
    except CapabilityError:
        raise
    except BackendError:
        if len(requests) == 1:
            raise
    out: list[Any] = []
    for request in requests:
        try:
            out += backend.continuation_loss([request])
        except CapabilityError:
            raise
        except BackendError as exc:
            out.append(str(exc))
    return out


def needs_log_probabilities(scorer: str, backend: Backend) -> None:
    """Refuse, before any work, a backend that cannot give what `scorer` needs."""
    if not getattr(backend, "supports_continuation_loss", False):
        raise ScorerError(
            f"the {scorer} scorer needs log-probabilities of a given text, which the "
            f"{backend.name} backend cannot give (use llamacpp, vllm, or a completions server "
            "such as vllm serve or llama_cpp.server)"
        )


__all__ = [
    "BackendError",
    "Example",
    "Score",
    "Scorer",
    "ScorerError",
    "TraceExample",
    "available_scorers",
    "get_scorer",
    "scorer_class",
    "mean_loss",
    "register_scorer",
]
