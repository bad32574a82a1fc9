"""Instruction-Following Difficulty (Li et al. 2023, "From Quantity to Quality").

IFD = loss(output | instruction, input) / loss(output): the mean token loss of the output as the
assistant's reply to the instruction and input (a user turn in the model's chat template), over
its mean loss as a reply to no user turn at all (the template's generation prompt alone; Li et
al. score the output with no context, and keeping the chat formatting on both sides makes the
ratio measure the instruction alone, and lets a completions server compute it too). Below 1 the instruction helps the model predict the output; near or above 1
it does not, a sign that the pair is incoherent. Superfiltering (Li et al. 2024) shows that a
small model's IFD ranks data much like a large one's, which is what makes it usable with the
embedded 135M model.

Li et al. keep the examples of *highest* IFD below 1 for tuning (hard but coherent). For telling
a good response from a poor one to the same instruction, lower is better: the better response
is the one the instruction explains. selfgen reports the number and lets `--min-score` /
`--max-score` choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfgen.backends.base import Backend, LossRequest
from selfgen.scoring import Example, Score, Scorer, losses, mean_loss, needs_log_probabilities


class IFDScorer(Scorer):
    name = "ifd"
    kind = "task"
    higher_is_better = False

    def __init__(self, backend: Backend, max_output_chars: int = 2000) -> None:
        super().__init__(backend)
        needs_log_probabilities(self.name, backend)
        # Long outputs cost time and may not fit the context; the first part carries the signal.
        self.max_output_chars = max_output_chars

    def settings(self) -> dict[str, Any]:
        return {
            "max_output_chars": self.max_output_chars,
            "context": "chat template: user turn / no user turn",
        }

    def score(self, examples: Sequence[Example]) -> list[Score]:
        requests = []
        for ex in examples:
            output = ex.output[: self.max_output_chars]
            requests.append(
                LossRequest(
                    continuation=output,
                    messages=({"role": "user", "content": ex.user_message()},),
                )
            )
            # The direct loss: the same reply with no user turn before it, so that the chat
            # formatting is the same on both sides and only the instruction differs.
            requests.append(LossRequest(continuation=output, messages=()))
        found = losses(self.backend, requests)
        out = []
        for i in range(len(examples)):
            given, alone = found[2 * i], found[2 * i + 1]
            if isinstance(given, str) or isinstance(alone, str):
                out.append(Score(None, {"error": given if isinstance(given, str) else alone}))
                continue
            conditioned = mean_loss(given.token_logprobs)
            direct = mean_loss(alone.token_logprobs)
            if not given.token_logprobs or direct <= 0:
                out.append(Score(None, {"error": "empty output"}))
                continue
            out.append(
                Score(
                    conditioned / direct,
                    {
                        "conditioned_loss": round(conditioned, 6),
                        "direct_loss": round(direct, 6),
                        "tokens": len(given.token_logprobs),
                    },
                )
            )
        return out
