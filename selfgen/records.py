"""Plain records that flow through the loop and into the run store."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instance:
    """One input/output example of a task. `input` may be empty."""

    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    """A human-written task in the Self-Instruct seed format."""

    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool


@dataclass
class Candidate:
    """A machine-generated instruction on its way through the filters.

    `stage` is the last stage it reached and `fate` is `kept`, `rejected` or `pending`;
    a rejected candidate carries the stage's `reason`.
    """

    instruction: str
    generation_index: int
    stage: str = "generated"
    fate: str = "pending"
    reason: str | None = None
    nearest: str | None = None
    rouge_l: float | None = None
    is_classification: bool | None = None
    classify_generation_index: int | None = None
    instance_generation_index: int | None = None
    instances: list[Instance] = field(default_factory=list)

    def reject(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.fate = "rejected"
        self.reason = reason
