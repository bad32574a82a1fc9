"""Where each exported item came from, read from the run store: its round, the prompt that made
it, the sampling settings of every call behind it, its nearest neighbour and the mark made by
hand; and the ids of every text that a prompt may have shown (seeds and the novelty pools), so
that an export can name the examples of each prompt.

`selfgen export --with-metadata` turns these into each row's `metadata` (selfgen.export).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selfgen.store import sql

if TYPE_CHECKING:
    from selfgen.store.run_store import RunStore

_WS = re.compile(r"\s+")


def text_key(text: str) -> str:
    """A text as a prompt lists it: whitespace runs made one space, stripped."""
    return _WS.sub(" ", text).strip()


# The generation calls behind a row, by stage: a task's, then a trace's.
SAMPLING_STAGES = ("instructions", "classify", "instances", "tool_requests", "tool_agent")


@dataclass(frozen=True)
class ItemOrigin:
    """One kept task (a candidate) or trace, as the run made it. `sampling` holds the sampling
    settings of each generation call behind it, by stage; `prompt` is the prompt of the
    numbered list the item was read from."""

    id: int
    round: int
    nearest: str | None
    rouge_l: float | None
    curation: str | None
    prompt: str | None
    sampling: dict[str, dict[str, Any] | None]


def _params(raw: str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw is not None else None


def task_origins(store: RunStore) -> dict[int, ItemOrigin]:
    """Every kept task by candidate id."""
    rows = store.db.execute(
        "SELECT c.id, c.round_id, c.nearest, c.rouge_l, k.decision, g.prompt, g.params,"
        " gc.params, gi.params FROM candidates c JOIN generations g ON g.id = c.generation_id"
        " LEFT JOIN generations gc ON gc.id = c.classify_generation_id"
        " LEFT JOIN generations gi ON gi.id = c.instance_generation_id"
        " LEFT JOIN curation k ON k.kind = 'task' AND k.item_id = c.id"
        f" WHERE c.{sql.KEPT} ORDER BY c.id"
    )
    return {
        r[0]: ItemOrigin(
            id=r[0],
            round=r[1],
            nearest=r[2],
            rouge_l=r[3],
            curation=r[4],
            prompt=r[5],
            sampling={
                "instructions": _params(r[6]),
                "classify": _params(r[7]),
                "instances": _params(r[8]),
            },
        )
        for r in rows
    }


def trace_origins(store: RunStore) -> dict[int, ItemOrigin]:
    """Every trace that reached a tool, by trace id. `sampling` has the request's list call
    (`tool_requests`) and the agent's first step (`tool_agent`; every step is sampled alike)."""
    out = {}
    for r in store.db.execute(
        "SELECT t.id, t.round_id, t.nearest, t.rouge_l, k.decision, g.prompt, g.params,"
        " t.step_generation_ids FROM traces t JOIN generations g ON g.id = t.generation_id"
        " LEFT JOIN curation k ON k.kind = 'trace' AND k.item_id = t.id"
        f" WHERE t.{sql.PASSED_NOVELTY} ORDER BY t.id"
    ):
        steps = json.loads(r[7])
        step = None
        if steps:
            found = store.db.execute(
                "SELECT params FROM generations WHERE id = ?", (steps[0],)
            ).fetchone()
            step = _params(found[0]) if found else None
        out[r[0]] = ItemOrigin(
            id=r[0],
            round=r[1],
            nearest=r[2],
            rouge_l=r[3],
            curation=r[4],
            prompt=r[5],
            sampling={"tool_requests": _params(r[6]), "tool_agent": step},
        )
    return out


def text_ids(store: RunStore) -> dict[str, str]:
    """The id of every text a list prompt can show, by :func:`text_key`: `seed:<id>` for a
    seed task, `task:<id>` for a machine instruction that passed the novelty filter,
    `tool_seed:<id>` and `trace:<id>` likewise for tool requests. The novelty filter lets no
    two of these be alike, so a text names one item (the first, were it ever not so)."""
    ids: dict[str, str] = {}
    queries = (
        ("seed", "SELECT seed_id, instruction FROM seed_tasks ORDER BY id"),
        ("task", f"SELECT id, instruction FROM candidates WHERE {sql.PASSED_NOVELTY} ORDER BY id"),
        ("tool_seed", "SELECT seed_id, request FROM tool_seeds ORDER BY id"),
        ("trace", f"SELECT id, request FROM traces WHERE {sql.PASSED_NOVELTY} ORDER BY id"),
    )
    for prefix, query in queries:
        for item_id, text in store.db.execute(query):
            ids.setdefault(text_key(text), f"{prefix}:{item_id}")
    return ids


def run_row(store: RunStore) -> dict[str, Any]:
    """The run's own row: when and by which selfgen it was created, and its backend."""
    created_at, version, backend = store.db.execute(
        "SELECT created_at, selfgen_version, backend FROM run"
    ).fetchone()
    return {"created_at": created_at, "selfgen_version": version, "backend": json.loads(backend)}
