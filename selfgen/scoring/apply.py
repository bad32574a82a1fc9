"""Scoring what exists: the kept data of a run store, or any JSONL data set.

`score_run` scores the instances of a run's kept tasks (task scorers) or its traces (trace
scorers) and stores each batch as it is done, so a scoring killed half way keeps what it
finished and a second `selfgen score RUN` goes on with the rest. `score_file` scores the rows of
an alpaca, openai or sharegpt JSONL file and writes every row back, its own fields untouched,
with a `scores` object added; nothing is written when a row cannot be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfgen.io import DataFileError, read_jsonl, write_jsonl_atomic
from selfgen.scoring import Example, Scorer, TraceExample
from selfgen.store import RunStore

BATCH = 16  # examples scored, then stored, at a time
KIND = {"task": "instance", "trace": "trace"}  # what a scorer of each kind scores in a run

Progress = Callable[[str, int, int], None]  # (scorer, done, total)


class ScoreFileError(DataFileError):
    """A data set that cannot be scored; the message names the file and line."""


def score_run(
    store: RunStore,
    scorers: Sequence[Scorer],
    *,
    model: dict[str, Any],
    rescore: bool = False,
    on_progress: Progress | None = None,
) -> dict[str, int]:
    """Score the run's items with each scorer; returns how many each scored now. Items a
    scorer has scored before are skipped unless `rescore`."""
    done: dict[str, int] = {}
    for scorer in scorers:
        kind = KIND[scorer.kind]
        skip = set() if rescore else store.scored_ids(kind, scorer.name)
        if scorer.kind == "task":
            items: list[tuple[int, Any]] = [
                (item_id, Example(instruction, inp, out))
                for item_id, instruction, inp, out in store.scorable_instances()
                if item_id not in skip
            ]
        else:
            items = [
                (item_id, TraceExample(tuple(messages)))
                for item_id, messages in store.scorable_traces()
                if item_id not in skip
            ]
        done[scorer.name] = 0
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            scores = scorer.score([example for _, example in batch])
            store.save_scores(
                kind,
                scorer.name,
                [
                    (item_id, s.value, s.detail)
                    for (item_id, _), s in zip(batch, scores, strict=True)
                ],
                model=model,
                settings=scorer.settings(),
            )
            done[scorer.name] += len(batch)
            if on_progress is not None:
                on_progress(scorer.name, done[scorer.name], len(items))
    return done


@dataclass(frozen=True)
class Row:
    where: str
    data: dict[str, Any]
    example: Example | TraceExample


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise ScoreFileError(f"{where}: field '{field}' must be a string")
    return value


def example_of(row: dict[str, Any], where: str) -> Example | TraceExample:
    """The example a row holds, in whichever of the three export formats it is written."""
    if "instruction" in row:  # alpaca
        return Example(
            _text(row["instruction"], where, "instruction"),
            _text(row.get("input", ""), where, "input"),
            _text(row.get("output"), where, "output"),
        )
    if "messages" in row or "conversations" in row:
        messages = row.get("messages")
        if messages is None:
            messages = _openai_messages(row["conversations"], where)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ScoreFileError(f"{where}: 'messages' must be a list of objects")
        if any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
            return TraceExample(tuple(messages))
        user = [m.get("content") for m in messages if m.get("role") == "user"]
        reply = [m.get("content") for m in messages if m.get("role") == "assistant"]
        if not user or not reply:
            raise ScoreFileError(f"{where}: needs a user turn and an assistant reply")
        return Example(_text(user[0], where, "user content"), "", _text(reply[0], where, "reply"))
    raise ScoreFileError(
        f"{where}: not an alpaca (instruction/input/output), openai (messages) or sharegpt "
        "(conversations) row"
    )


_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _openai_messages(turns: Any, where: str) -> list[dict[str, Any]]:
    """ShareGPT turns as OpenAI messages (function_call and observation turns included)."""
    if not isinstance(turns, list):
        raise ScoreFileError(f"{where}: 'conversations' must be a list")
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ScoreFileError(f"{where}: each conversation turn needs 'from' and 'value'")
        who, value = turn.get("from"), turn["value"]
        if who == "function_call":
            try:
                call = json.loads(value)
                name, arguments = call["name"], call.get("arguments", {})
            except (ValueError, KeyError, TypeError):
                raise ScoreFileError(f"{where}: a function_call turn is not a JSON call") from None
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{len(messages)}",
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)},
                        }
                    ],
                }
            )
        elif who == "observation":
            messages.append({"role": "tool", "content": value})
        elif who in _SHAREGPT_ROLES:
            messages.append({"role": _SHAREGPT_ROLES[who], "content": value})
        else:
            raise ScoreFileError(f"{where}: unknown conversation role {who!r}")
    return messages


def read_rows(path: Path) -> list[Row]:
    """Every row of the file with its example; any defect raises before anything is scored."""
    return [
        Row(where, row, example_of(row, where))
        for where, row in read_jsonl(path, what="data file", error=ScoreFileError)
    ]


def score_file(
    path: Path,
    out: Path,
    scorers: Sequence[Scorer],
    *,
    on_progress: Progress | None = None,
) -> int:
    """Score every row of `path` and write them to `out` with their scores; returns the count.

    Each row gets `"scores": {scorer: value}` (null where a scorer could not score it or does
    not score its kind), merged into a `scores` object the row may already have."""
    rows = read_rows(path)
    values: list[dict[str, float | None]] = [{} for _ in rows]
    for scorer in scorers:
        wanted = [
            i
            for i, row in enumerate(rows)
            if isinstance(row.example, TraceExample) == (scorer.kind == "trace")
        ]
        for i in range(len(rows)):
            values[i][scorer.name] = None
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start : start + BATCH]
            for i, score in zip(batch, scorer.score([rows[i].example for i in batch]), strict=True):
                values[i][scorer.name] = score.value
            if on_progress is not None:
                on_progress(scorer.name, min(start + BATCH, len(wanted)), len(wanted))

    def scored() -> Iterator[dict[str, Any]]:
        for row, row_scores in zip(rows, values, strict=True):
            existing = row.data.get("scores")
            merged = {**existing, **row_scores} if isinstance(existing, dict) else row_scores
            yield {**row.data, "scores": merged}

    return write_jsonl_atomic(out, scored())
