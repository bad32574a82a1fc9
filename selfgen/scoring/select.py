"""Choosing data by its scores: `--min-score 'judge>=4'`, `--max-score 'ifd<1'` and
`--top-fraction F` (the best F of the items by one scorer).

A condition applies to the items its scorer scores (instances of tasks for `ifd` and `judge`,
traces for `toolformer`); items of the other kind pass. An item that the scorer has not scored,
or could not score, fails the condition: selecting by a score keeps only what was judged.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(>=|<=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")

# {scorer: {item id: value or None}} for one kind of item.
ScoreTable = Mapping[str, Mapping[int, float | None]]


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


@dataclass(frozen=True)
class ScoreCondition:
    scorer: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str, *, minimum: bool) -> ScoreCondition:
        """'judge>=4' (a minimum: >= or >) or 'ifd<1' (a maximum: <= or <)."""
        match = _CONDITION.match(text)
        if match is None:
            raise ValueError(f"'{text}' is not a condition such as 'judge>=4' or 'ifd<1'")
        scorer, op, number = match.groups()
        if minimum != (op in (">=", ">")):
            want = "'>=' or '>'" if minimum else "'<=' or '<'"
            raise ValueError(f"'{text}': a {'minimum' if minimum else 'maximum'} uses {want}")
        return cls(scorer, op, float(number))

    def holds(self, value: float | None) -> bool:
        return _usable(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.scorer}{self.op}{self.threshold:g}"


@dataclass(frozen=True)
class Selection:
    """Conditions and an optional top fraction by `rank_by` (higher better unless `ascending`)."""

    conditions: tuple[ScoreCondition, ...] = ()
    top_fraction: float | None = None
    rank_by: str | None = None
    ascending: bool = False

    def __bool__(self) -> bool:
        return bool(self.conditions) or self.top_fraction is not None

    def scorers(self) -> set[str]:
        names = {c.scorer for c in self.conditions}
        if self.rank_by:
            names.add(self.rank_by)
        return names

    def allowed(self, scores: ScoreTable, ids: list[int]) -> set[int]:
        """Which of the items `ids` of one kind pass, given that kind's scores."""
        keep = set(ids)
        for cond in self.conditions:
            if cond.scorer in scores:
                table = scores[cond.scorer]
                keep = {i for i in keep if cond.holds(table.get(i))}
        if self.top_fraction is not None and self.rank_by in scores:
            table = scores[self.rank_by]
            ranked = sorted(
                (i for i in keep if _usable(table.get(i))),
                key=lambda i: (table[i] if self.ascending else -table[i], i),  # type: ignore[operator]
            )
            keep = set(ranked[: math.ceil(len(ranked) * self.top_fraction)])
        return keep
