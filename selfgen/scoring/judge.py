"""A model grades each example from 1 to 5, with the Self-Instruct paper's three questions as
the rubric (`selfgen/prompts/en/judge.txt`): is the instruction a valid task, is the input
appropriate, is the output a correct and acceptable response.

Where the backend gives log-probabilities, the score is the probability-weighted mean over the
five score digits (as G-Eval, Deita and AlpaGasus-style judges do): a judge torn between 4 and 5
says 4.5, and ties between examples are rare. Otherwise the judge answers greedily, constrained
to one of the five digits, and the score is that digit.

The judge runs on whatever backend it is given, so a strong model can grade what a cheap one
generated (`--judge-backend`, `--judge-model`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from selfgen.backends.base import (
    Backend,
    Constraint,
    GenerationRequest,
    LossRequest,
    SamplingParams,
)
from selfgen.prompts import load_prompt
from selfgen.scoring import Example, Score, Scorer, losses

DIGITS = ("1", "2", "3", "4", "5")
MAX_FIELD_CHARS = 1500  # of the instruction, input and output shown to the judge


def _clip(text: str) -> str:
    text = text.strip() or "(empty)"
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + " [...]"


def render_prompt(example: Example) -> str:
    return load_prompt("en", "judge").format(
        instruction=_clip(example.instruction),
        input=_clip(example.input),
        output=_clip(example.output),
    )


class JudgeScorer(Scorer):
    name = "judge"
    kind = "task"
    higher_is_better = True

    def __init__(self, backend: Backend, mode: str = "auto") -> None:
        super().__init__(backend)
        if mode not in ("auto", "logprobs", "choice"):
            raise ValueError(f"mode must be auto, logprobs or choice, not {mode!r}")
        if mode == "auto":
            mode = "logprobs" if getattr(backend, "supports_continuation_loss", False) else "choice"
        self.mode = mode

    def settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "rubric": "self-instruct three questions, 1-5"}

    def score(self, examples: Sequence[Example]) -> list[Score]:
        messages = [({"role": "user", "content": render_prompt(ex)},) for ex in examples]
        if self.mode == "logprobs":
            return self._weighted(messages)
        return self._choice(messages)

    def _weighted(self, messages: list[tuple[dict[str, Any], ...]]) -> list[Score]:
        requests = [LossRequest(continuation=d, messages=m) for m in messages for d in DIGITS]
        found = losses(self.backend, requests)
        out = []
        for i in range(len(messages)):
            answers = found[i * len(DIGITS) : (i + 1) * len(DIGITS)]
            if errors := [a for a in answers if isinstance(a, str)]:
                out.append(Score(None, {"error": errors[0]}))
                continue
            # The log-probability of each digit's first token as the reply's first token.
            logps = [a.token_logprobs[0] if a.token_logprobs else -math.inf for a in answers]
            top = max(logps)
            weights = [math.exp(lp - top) for lp in logps]
            total = sum(weights)
            probs = [w / total for w in weights]
            value = sum((k + 1) * p for k, p in enumerate(probs))
            mass = sum(math.exp(lp) for lp in logps)  # how much the judge meant to give a digit
            out.append(
                Score(
                    value, {"probabilities": [round(p, 4) for p in probs], "mass": round(mass, 4)}
                )
            )
        return out

    def _choice(self, messages: list[tuple[dict[str, Any], ...]]) -> list[Score]:
        requests = [
            GenerationRequest(
                messages=m,
                params=SamplingParams(temperature=0.0, max_tokens=2, seed=0),
                constraint=Constraint(choices=DIGITS),
            )
            for m in messages
        ]
        out = []
        for comp in self.backend.generate(requests):
            digit = comp.text.strip()[:1]
            if comp.finish_reason == "error" or digit not in DIGITS:
                out.append(
                    Score(None, {"error": comp.extra.get("error") or f"answer {comp.text!r}"})
                )
            else:
                out.append(Score(float(digit), {"answer": digit}))
        return out
