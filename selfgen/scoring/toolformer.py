"""Toolformer's filter for tool-use traces (Schick et al. 2023, section 2).

The loss of the final answer with the calls and their results in context (L+), against the
lower of its loss with no call at all and its loss with the calls but no results (L-). The
score is L- - L+: how much the calls' results help the model arrive at the answer. Toolformer
keeps a call when this is at least tau (they used 1.0, and 0.5 for some tools); here `tau`
decides `Score.detail["helps"]`, and `--min-score 'toolformer>=TAU'` keeps the traces that pass.

The context is the agent's own text format (Request / Call / Result / Answer), so a trace is
judged the way it was written. A trace with no call, or no answer, is not scored. A multi-turn
trace is scored on each turn answered after calls, with the earlier turns in the context, and
gets the score of its weakest turn.
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


def _user_turns(messages: Sequence[dict[str, Any]]) -> list[tuple[str, list, list, str | None]]:
    """(request, calls, results, answer) of each user turn of a trace."""
    turns: list[tuple[str, list, list, str | None]] = []
    for m in messages:
        role = m.get("role")
        if role == "user":
            turns.append((m["content"], [], [], None))
        elif not turns:
            continue
        elif role == "assistant" and m.get("tool_calls"):
            turns[-1][1].extend(c["function"] for c in m["tool_calls"])
        elif role == "tool":
            turns[-1][2].append(m.get("content") or "")
        elif role == "assistant" and m.get("content"):
            turns[-1] = (*turns[-1][:3], m["content"])
    return turns


Contexts = tuple[str, str, str, str]


def _contexts(messages: Sequence[dict[str, Any]]) -> list[tuple[int, Contexts]]:
    """For each user turn answered after calls, its number and (with results, without calls,
    calls without results, answer). A multi-turn trace's earlier turns come first in each
    context, in full."""
    out = []
    history = ""
    for n, (request, calls, results, answer) in enumerate(_user_turns(messages), start=1):
        head = f"{history}Request: {request}\n"
        with_results = head
        calls_only = head
        for i, fn in enumerate(calls):
            call = json.dumps({"name": fn["name"], "arguments": json.loads(fn["arguments"])})
            result = " ".join((results[i] if i < len(results) else "").split())
            with_results += f"Call: {call}\nResult: {result}\n"
            calls_only += f"Call: {call}\nResult:\n"
        if calls and answer is not None:
            prompts = (with_results + "Answer:", head + "Answer:", calls_only + "Answer:")
            out.append((n, (*prompts, " " + answer)))
        history = f"{with_results}Answer: {answer or ''}\n"
    return out


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
        """One score per trace: L- - L+ of its answer, or for a multi-turn trace that of its
        weakest turn answered after calls (`detail["turn"]` says which)."""
        contexts = [_contexts(ex.messages) for ex in examples]
        requests = [
            LossRequest(prompt=prompt, continuation=ctx[3])
            for turns in contexts
            for _, ctx in turns
            for prompt in ctx[:3]
        ]
        found = iter(losses(self.backend, requests))
        out = []
        for example, turns in zip(examples, contexts, strict=True):
            if not turns:
                out.append(Score(None, {"error": "no call or no answer"}))
                continue
            scored = [(n, self._turn_score([next(found) for _ in range(3)])) for n, _ in turns]
            if failed := [s for _, s in scored if s.value is None]:
                out.append(failed[0])
                continue
            n, weakest = min(scored, key=lambda x: x[1].value or 0.0)
            if len(_user_turns(example.messages)) > 1:
                weakest = Score(weakest.value, {**weakest.detail, "turn": n})
            out.append(weakest)
        return out

    def _turn_score(self, three: list[Any]) -> Score:
        if errors := [a for a in three if isinstance(a, str)]:
            return Score(None, {"error": errors[0]})
        plus, none, no_result = (mean_loss(a.token_logprobs) for a in three)
        minus = min(none, no_result)
        value = minus - plus
        return Score(
            value,
            {
                "loss_with_results": round(plus, 6),
                "loss_without_calls": round(none, 6),
                "loss_calls_without_results": round(no_result, 6),
                "helps": value >= self.tau,
            },
        )
