"""Plain records that flow through the loop and into the run store, and the words for where
they are (`Stage`) and what became of them (`Fate`).

A `Candidate` (a machine instruction that may become a task) and a `Trace` (a user request that
may become a tool-use trace) are both a `Record`: something the model generated that passes
stage after stage until one rejects it, with its reason, or it is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class _Word(str, Enum):
    """A string enum whose members print, format and store as their value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Stage(_Word):
    """The last stage a record reached; a rejected record was rejected there.

    Tasks pass parse, rules, rouge, classify and instances (and score, when the run scores
    them); traces pass parse, rules, rouge, then format, target (when the request was written for
    one tool), execution, grounding (when the run checks it), semantic (and score) and
    verified.
    """

    GENERATED = "generated"
    PARSE = "parse"
    RULES = "rules"
    ROUGE = "rouge"
    CLASSIFY = "classify"
    INSTANCES = "instances"
    FORMAT = "format"
    TARGET = "target"
    EXECUTION = "execution"
    GROUNDING = "grounding"
    SEMANTIC = "semantic"
    VERIFIED = "verified"
    SCORE = "score"


# Rejected at these stages, a record never joined the novelty pool.
BEFORE_NOVELTY = (Stage.PARSE, Stage.RULES, Stage.ROUGE)
# The stages of a task, in the order it passes them (the funnel's order).
TASK_STAGES = (Stage.PARSE, Stage.RULES, Stage.ROUGE, Stage.CLASSIFY, Stage.INSTANCES)
# The checks a trace passes once it reached a tool, in order (after APIGen).
TRACE_CHECKS = (Stage.FORMAT, Stage.TARGET, Stage.EXECUTION, Stage.GROUNDING, Stage.SEMANTIC)


class Fate(_Word):
    PENDING = "pending"
    KEPT = "kept"
    REJECTED = "rejected"


# The reason of a record that passed every filter after the run's target was met: it stays in
# the store, marked, and is neither counted nor exported.
TARGET_REACHED = "target_reached"


@dataclass(frozen=True)
class Instance:
    """One input/output example of a task. `input` may be empty; `id` is the store's, once
    stored (it takes no part in comparisons)."""

    input: str
    output: str
    id: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SeedTask:
    """A human-written task in the Self-Instruct seed format."""

    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool: what the model asked for and, once executed, what came back."""

    name: str
    arguments: dict[str, Any]
    output: str | None = None
    error: str | None = None
    # Made in the same assistant turn as the call before it (parallel calls).
    parallel: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The call as stored: `parallel` only where it is set, so that the records of runs
        without parallel calls stay as they were."""
        out = dict(self.__dict__)
        if not self.parallel:
            del out["parallel"]
        return out


def call_turns(calls: list[ToolCall] | tuple[ToolCall, ...]) -> list[list[ToolCall]]:
    """The calls grouped by assistant turn: a call marked `parallel` joins the turn before."""
    turns: list[list[ToolCall]] = []
    for call in calls:
        if call.parallel and turns:
            turns[-1].append(call)
        else:
            turns.append([call])
    return turns


@dataclass(frozen=True)
class ToolSeed:
    """A human-written tool-use example: a request, its calls and the answer."""

    id: str
    request: str
    calls: tuple[ToolCall, ...]
    answer: str

    @property
    def parallel(self) -> bool:
        """Whether the example makes several calls in one turn."""
        return any(c.parallel for c in self.calls)


@dataclass(kw_only=True)
class Record:
    """What the model generated, on its way through the stages.

    `stage` is the last stage it reached and `fate` is kept, rejected or pending; a rejected
    record carries the stage's `reason`. `nearest` and `rouge_l` are its nearest neighbour in
    the novelty pool and their ROUGE-L F, once it reached the novelty filter.
    """

    stage: Stage = Stage.GENERATED
    fate: Fate = Fate.PENDING
    reason: str | None = None
    nearest: str | None = None
    rouge_l: float | None = None

    @property
    def text(self) -> str:
        """The text the filters judge (an instruction, a request)."""
        raise NotImplementedError

    def reject(self, stage: Stage, reason: str) -> None:
        self.stage = stage
        self.fate = Fate.REJECTED
        self.reason = reason

    def keep(self, stage: Stage) -> None:
        self.stage = stage
        self.fate = Fate.KEPT


@dataclass
class Candidate(Record):
    """A machine-generated instruction that may become a task (with its instances)."""

    instruction: str
    generation_index: int
    is_classification: bool | None = None
    classify_generation_index: int | None = None
    instance_generation_index: int | None = None
    instances: list[Instance] = field(default_factory=list)
    # With scoring in the loop: for each instance, {scorer: (value, detail)}.
    scores: list[dict[str, tuple[float | None, dict[str, Any]]]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.instruction


@dataclass
class Trace(Record):
    """A user request on its way through the tool agent and verification."""

    request: str
    generation_index: int
    # "single" (one call a turn) or "parallel" (several independent calls in the first turn).
    kind: str = "single"
    # The tool the request was written for (the run's target_tools setting), else None.
    target: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    checks: dict[str, tuple[bool, str | None]] = field(default_factory=dict)
    step_generation_indexes: list[int] = field(default_factory=list)
    # Each trace scorer's (value, detail), when the run scores traces.
    scores: dict[str, tuple[float | None, dict[str, Any]]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.request

    def check(self, stage: Stage, reason: str | None) -> bool:
        """Record a verification stage; reject the trace at the first failing one."""
        self.checks[str(stage)] = (reason is None, reason)
        if reason is not None:
            self.reject(stage, reason)
        return reason is None

    def messages(self) -> list[dict[str, Any]]:
        """The trace as OpenAI chat messages: each turn's calls in one assistant message
        (several `tool_calls` for parallel calls), then one tool message per call."""
        out: list[dict[str, Any]] = [{"role": "user", "content": self.request}]
        i = 0
        for turn in call_turns(self.calls):
            ids = [f"call_{i + k}" for k in range(len(turn))]
            i += len(turn)
            out.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": json.dumps(call.arguments),
                            },
                        }
                        for call_id, call in zip(ids, turn, strict=True)
                    ],
                }
            )
            for call_id, call in zip(ids, turn, strict=True):
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": call_id,
                        "name": call.name,
                        "content": call.output
                        if call.output is not None
                        else f"error: {call.error}",
                    }
                )
        if self.answer is not None:
            out.append({"role": "assistant", "content": self.answer})
        return out
