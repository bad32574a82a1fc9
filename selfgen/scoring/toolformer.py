"""Toolformer's filter for tool-use traces (Schick et al. 2023, section 2).

The loss of the final answer with the calls and their results in context (L+), against the
lower of its loss with no call at all and its loss with the calls but no results (L-). The
score is L- - L+: how much the calls' results help the model arrive at the answer. Toolformer
keeps a call when this is at least tau (they used 1.0, and 0.5 for some tools); here `tau`
decides `Score.detail["helps"]`, and `--min-score 'toolformer>=TAU'` keeps the traces that pass.

The context is the agent's own text format (Request / Call / Result / Answer), so a trace is
judged the way it was written. A trace with no call, or no answer, is not scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from selfgen.backends.base import Backend, LossRequest
from selfgen.scoring import (
    Score,
    Scorer,
    TraceExample,
    losses,
    mean_loss,
    needs_log_probabilities,
)


def _contexts(messages: Sequence[dict[str, Any]]) -> tuple[str, str, str, str] | None:
    """(with results, without calls, calls without results, answer), or None."""
    request = next((m["content"] for m in messages if m.get("role") == "user"), None)
    answer = next(
        (
            m["content"]
            for m in reversed(messages)
            if m.get("role") == "assistant" and m.get("content")
        ),
        None,
    )
    calls = [
        c["function"]
        for m in messages
        if m.get("role") == "assistant"
        for c in m.get("tool_calls") or []
    ]
    results = [m.get("content") or "" for m in messages if m.get("role") == "tool"]
    if request is None or answer is None or not calls:
        return None
    head = f"Request: {request}\n"
    with_results = head
    calls_only = head
    for i, fn in enumerate(calls):
        call = json.dumps({"name": fn["name"], "arguments": json.loads(fn["arguments"])})
        result = " ".join((results[i] if i < len(results) else "").split())
        with_results += f"Call: {call}\nResult: {result}\n"
        calls_only += f"Call: {call}\nResult:\n"
    return with_results + "Answer:", head + "Answer:", calls_only + "Answer:", " " + answer


class ToolformerScorer(Scorer):
    name = "toolformer"
    kind = "trace"
    higher_is_better = True

    def __init__(self, backend: Backend, tau: float = 0.5) -> None:
        super().__init__(backend)
        needs_log_probabilities(self.name, backend)
        self.tau = tau

    def settings(self) -> dict[str, Any]:
        return {"tau": self.tau, "context": "agent text format"}

    def score(self, examples: Sequence[TraceExample]) -> list[Score]:
        contexts = [_contexts(ex.messages) for ex in examples]
        requests = [
            LossRequest(prompt=prompt, continuation=ctx[3])
            for ctx in contexts
            if ctx is not None
            for prompt in ctx[:3]
        ]
        found = iter(losses(self.backend, requests))
        out = []
        for ctx in contexts:
            if ctx is None:
                out.append(Score(None, {"error": "no call or no answer"}))
                continue
            three = [next(found) for _ in range(3)]
            if errors := [a for a in three if isinstance(a, str)]:
                out.append(Score(None, {"error": errors[0]}))
                continue
            plus, none, no_result = (mean_loss(a.token_logprobs) for a in three)
            minus = min(none, no_result)
            value = minus - plus
            out.append(
                Score(
                    value,
                    {
                        "loss_with_results": round(plus, 6),
                        "loss_without_calls": round(none, 6),
                        "loss_calls_without_results": round(no_result, 6),
                        "helps": value >= self.tau,
                    },
                )
            )
        return out
