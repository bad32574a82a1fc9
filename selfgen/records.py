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
    verified. A multi-turn trace passes those checks once per user turn, and each follow-up
    first passes `followup` (the rule and novelty filters of the user's next message).
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
    FOLLOWUP = "followup"
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
class SeedTurn:
    """One user turn of a tool seed: the request, its calls and the answer (the later turns of
    a multi-turn seed are its `followups`)."""

    request: str
    calls: tuple[ToolCall, ...]
    answer: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "calls": [c.to_dict() for c in self.calls],
            "answer": self.answer,
        }


@dataclass(frozen=True)
class ToolSeed:
    """A human-written tool-use example: a request, its calls and the answer (and, for a
    multi-turn example, the user's follow-ups, each with its calls and answer)."""

    id: str
    request: str
    calls: tuple[ToolCall, ...]
    answer: str
    followups: tuple[SeedTurn, ...] = ()

    @property
    def parallel(self) -> bool:
        """Whether the example makes several calls in one turn."""
        return any(c.parallel for c in self.calls)

    @property
    def kind(self) -> str:
        """The kind of trace the example demonstrates: multiturn, parallel or single."""
        if self.followups:
            return "multiturn"
        return "parallel" if self.parallel else "single"

    def turns(self) -> list[SeedTurn]:
        """Every user turn of the example, the first one included."""
        return [SeedTurn(self.request, self.calls, self.answer), *self.followups]


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
class FollowUp(Record):
    """A later user turn of a multi-turn trace: the user's next message (judged by the rule
    and novelty filters like a request), then the calls and the answer of that turn."""

    request: str
    generation_index: int
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None

    @property
    def text(self) -> str:
        return self.request


@dataclass
class Trace(Record):
    """A user request on its way through the tool agent and verification.

    A multi-turn trace (kind "multiturn") goes on with `followups`: `request`, `calls` and
    `answer` stay the first turn's, and the agent works on the last turn (`turn_calls`,
    `turn_request`, `set_answer`). Its checks are recorded per turn (see `check_turn`).
    """

    request: str
    generation_index: int
    # "single" (one call a turn), "parallel" (several independent calls in the first turn) or
    # "multiturn" (the user follows up, two to four user turns).
    kind: str = "single"
    # The tool the request was written for (the run's target_tools setting), else None.
    target: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    checks: dict[str, tuple[bool, str | None]] = field(default_factory=dict)
    step_generation_indexes: list[int] = field(default_factory=list)
    # Each trace scorer's (value, detail), when the run scores traces.
    scores: dict[str, tuple[float | None, dict[str, Any]]] = field(default_factory=dict)
    # The user's later turns (multi-turn traces only), in order.
    followups: list[FollowUp] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.request

    @classmethod
    def from_seed(cls, seed: ToolSeed) -> Trace:
        """A tool seed as a trace (its messages are the seed's conversation)."""
        return cls(
            request=seed.request,
            generation_index=-1,
            kind=seed.kind,
            calls=list(seed.calls),
            answer=seed.answer,
            followups=[
                FollowUp(
                    request=t.request, generation_index=-1, calls=list(t.calls), answer=t.answer
                )
                for t in seed.followups
            ],
        )

    @classmethod
    def from_messages(cls, messages: list[dict[str, Any]], kind: str = "single") -> Trace:
        """A stored trace back from its chat messages (the inverse of :meth:`messages`): each
        user message starts a turn; a call's output is its tool message's content."""
        outputs = {m["tool_call_id"]: m.get("content") for m in messages if m["role"] == "tool"}
        turns: list[tuple[str, list[ToolCall], str | None]] = []
        for m in messages:
            if m["role"] == "user":
                turns.append((m["content"], [], None))
            elif m["role"] == "assistant" and turns and m.get("tool_calls"):
                for k, call in enumerate(m["tool_calls"]):
                    fn = call["function"]
                    turns[-1][1].append(
                        ToolCall(
                            fn["name"],
                            json.loads(fn["arguments"]),
                            outputs.get(call["id"]),
                            parallel=k > 0,
                        )
                    )
            elif m["role"] == "assistant" and turns:
                turns[-1] = (turns[-1][0], turns[-1][1], m.get("content"))
        if not turns:
            raise ValueError("a trace's messages have no user message")
        (request, calls, answer), *later = turns
        return cls(
            request=request,
            generation_index=-1,
            kind=kind,
            calls=calls,
            answer=answer,
            followups=[
                FollowUp(request=r, generation_index=-1, calls=c, answer=a) for r, c, a in later
            ],
        )

    @property
    def turn(self) -> int:
        """The number of the user turn the trace is at (1 for the first request)."""
        return 1 + len(self.followups)

    @property
    def turn_request(self) -> str:
        """The user message of the current turn."""
        return self.followups[-1].request if self.followups else self.request

    @property
    def turn_calls(self) -> list[ToolCall]:
        """The calls of the current turn (the list itself: the agent appends to it)."""
        return self.followups[-1].calls if self.followups else self.calls

    @property
    def turn_answer(self) -> str | None:
        return self.followups[-1].answer if self.followups else self.answer

    def set_answer(self, answer: str) -> None:
        """Record the answer of the current turn."""
        if self.followups:
            self.followups[-1].answer = answer
        else:
            self.answer = answer

    def earlier_turns(self) -> list[tuple[str, list[ToolCall], str | None]]:
        """(request, calls, answer) of each turn before the current one."""
        turns = [(self.request, self.calls, self.answer)]
        turns += [(f.request, f.calls, f.answer) for f in self.followups]
        return turns[:-1]

    def check(self, stage: Stage, reason: str | None) -> bool:
        """Record a verification stage; reject the trace at the first failing one."""
        self.checks[str(stage)] = (reason is None, reason)
        if reason is not None:
            self.reject(stage, reason)
        return reason is None

    def check_turn(self, stage: Stage, reason: str | None) -> bool:
        """Record a check of the current turn: the first turn's as `check` does; a later
        turn's under "turn N <stage>", and in the trace's own entry for the stage, which says
        whether every turn got through it: a failure names its turn, and the trace's entries
        for the checks after it (passed by the earlier turns) go, as if the trace had stopped
        there in its first turn. A follow-up the filters reject fails `followup` alone."""
        if not self.followups:
            return self.check(stage, reason)
        n = self.turn
        self.checks[f"turn {n} {stage}"] = (reason is None, reason)
        if reason is not None:
            if stage in TRACE_CHECKS:
                for later in TRACE_CHECKS[TRACE_CHECKS.index(stage) + 1 :]:
                    self.checks.pop(str(later), None)
            return self.check(stage, f"turn {n}: {reason}")
        self.checks.setdefault(str(stage), (True, None))
        return True

    def reject_turn(self, stage: Stage, reason: str) -> None:
        """Reject the trace where no check decided (a generation that failed), naming the
        turn in a follow-up."""
        self.reject(stage, f"turn {self.turn}: {reason}" if self.followups else reason)

    def messages(self) -> list[dict[str, Any]]:
        """The trace as OpenAI chat messages: each turn's calls in one assistant message
        (several `tool_calls` for parallel calls), then one tool message per call; a
        multi-turn trace goes on with each follow-up's user message, calls and answer (call
        ids numbered on through the conversation)."""
        out: list[dict[str, Any]] = []
        next_id = 0
        for request, calls, answer in [
            (self.request, self.calls, self.answer),
            *((f.request, f.calls, f.answer) for f in self.followups),
        ]:
            out.append({"role": "user", "content": request})
            next_id = _call_messages(out, calls, next_id)
            if answer is not None:
                out.append({"role": "assistant", "content": answer})
        return out


def _call_messages(out: list[dict[str, Any]], calls: list[ToolCall], first: int) -> int:
    """Append the messages of `calls` to `out`, their ids numbered from `first`; returns the
    next number."""
    i = first
    for turn in call_turns(calls):
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
                    "content": call.output if call.output is not None else f"error: {call.error}",
                }
            )
    return i
