"""Scoring in the loop (`selfgen run --score ifd,judge`): every instance of each task that
passed the instance filters is scored by each task scorer, and with `--min-score` /
`--max-score` a task whose mean score over its instances fails a condition is rejected here,
with the score and the condition as its reason. Only then does the task count towards the
target, so `-n` still counts kept tasks exactly.

The scores are stored with the round (per instance, with the scorer's model and settings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from selfgen.records import Candidate, Stage
from selfgen.scoring import Example, Scorer
from selfgen.scoring.select import ScoreCondition


class ScoreStage:
    name = "score"

    def __init__(
        self,
        scorers: Sequence[Scorer],
        conditions: Sequence[ScoreCondition],
        models: dict[str, dict],
    ) -> None:
        self.scorers = [s for s in scorers if s.kind == "task"]
        self.conditions = list(conditions)
        # What stored scores say made them: the scoring backend's description and settings.
        self.meta = {
            s.name: {"model": models[s.name], "settings": s.settings()} for s in self.scorers
        }

    def close(self, keep_open: object) -> None:
        """Close the scorers' backends, all but `keep_open` (the run's own, closed by the run)."""
        closed = {id(keep_open)}
        for scorer in self.scorers:
            if id(scorer.backend) not in closed:
                closed.add(id(scorer.backend))
                scorer.backend.close()

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        """Score the candidates' instances; reject those failing a condition. Returns those
        that pass, in order."""
        examples = [
            Example(c.instruction, i.input, i.output) for c in candidates for i in c.instances
        ]
        per_instance: list[dict[str, tuple[float | None, dict]]] = [{} for _ in examples]
        for scorer in self.scorers:
            for k, score in enumerate(scorer.score(examples)):
                per_instance[k][scorer.name] = (score.value, score.detail)
        passed, k = [], 0
        for cand in candidates:
            cand.scores = per_instance[k : k + len(cand.instances)]
            k += len(cand.instances)
            reason = self._failed(cand)
            if reason:
                cand.reject(Stage.SCORE, reason)
            else:
                passed.append(cand)
        return passed

    def _failed(self, cand: Candidate) -> str | None:
        for cond in self.conditions:
            values = [s[cond.scorer][0] for s in cand.scores if cond.scorer in s]
            usable = [v for v in values if v is not None and not math.isnan(v)]
            if not values:
                continue  # not a task scorer
            mean = sum(usable) / len(usable) if usable else None
            if not cond.holds(mean):
                shown = "unscored" if mean is None else f"{cond.scorer}={mean:.3g}"
                return f"{shown} (needs {cond})"
        return None
