"""Scoring in the loop (`selfgen run --score ifd,judge,toolformer`).

Every instance of each task that passed the instance filters is scored by each task scorer
(ifd, judge), and every trace that passed the semantic check by each trace scorer
(toolformer). With `--min-score` / `--max-score`, a task whose mean score over its instances
fails a condition, or a trace whose score does, is rejected here with the score and the
condition as its reason. Only then does it count towards the target, so `-n` and
`--num-traces` still count kept items exactly.

The scores are stored with the round (per instance and per trace, with the scorer's model and
settings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from selfgen.records import Candidate, Stage, Trace
from selfgen.scoring import Example, Scorer, TraceExample
from selfgen.scoring.select import ScoreCondition


class ScoreStage:
    name = "score"

    def __init__(
        self,
        scorers: Sequence[Scorer],
        conditions: Sequence[ScoreCondition],
        models: dict[str, dict],
    ) -> None:
        self.scorers = list(scorers)
        self.task_scorers = [s for s in scorers if s.kind == "task"]
        self.trace_scorers = [s for s in scorers if s.kind == "trace"]
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
        for scorer in self.task_scorers:
            for k, score in enumerate(scorer.score(examples)):
                per_instance[k][scorer.name] = (score.value, score.detail)
        passed, k = [], 0
        for cand in candidates:
            cand.scores = per_instance[k : k + len(cand.instances)]
            k += len(cand.instances)
            reason = self._failed(cand.scores)
            if reason:
                cand.reject(Stage.SCORE, reason)
            else:
                passed.append(cand)
        return passed

    def apply_traces(self, traces: list[Trace]) -> list[Trace]:
        """Score the answered traces; reject those failing a condition. Returns those that
        pass, in order."""
        if not self.trace_scorers:
            return traces
        examples = [TraceExample(tuple(t.messages())) for t in traces]
        for scorer in self.trace_scorers:
            for t, score in zip(traces, scorer.score(examples), strict=True):
                t.scores[scorer.name] = (score.value, score.detail)
        return [t for t in traces if t.check(Stage.SCORE, self._failed([t.scores]))]

    def _failed(self, scores: list[dict[str, tuple[float | None, dict]]]) -> str | None:
        """Why an item with these scores (one dict per instance, or one for a trace) fails a
        condition, or None. A condition on a scorer that did not score the item is skipped."""
        for cond in self.conditions:
            values = [s[cond.scorer][0] for s in scores if cond.scorer in s]
            usable = [v for v in values if v is not None and not math.isnan(v)]
            if not values:
                continue  # the other kind of scorer
            mean = sum(usable) / len(usable) if usable else None
            if not cond.holds(mean):
                shown = "unscored" if mean is None else f"{cond.scorer}={mean:.3g}"
                return f"{shown} (needs {cond})"
        return None
