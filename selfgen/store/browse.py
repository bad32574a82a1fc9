"""The queries behind `selfgen inspect`: one page of items at a time, never the whole run.

An item is a candidate instruction (kind `task`) or a tool-use trace (kind `trace`). Every
view of the table is one query with filters, a sort order and LIMIT/OFFSET; a 100,000-candidate
store costs the inspector a page of rows in memory, whatever the user does. The details of an
item (instances, nearest neighbour, raw generations, trace messages) are read when it is opened.

Nothing here imports Textual, so the queries are tested on their own and the TUI only shows
what they return. SQLite errors propagate: the TUI decides what a broken or locked store means.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selfgen.store import sql
from selfgen.store.figures import run_figures

if TYPE_CHECKING:
    from selfgen.store.run_store import RunStore

KINDS = ("task", "trace")
STATUSES = ("kept", "rejected", "surplus", "curated-accepted", "curated-rejected")
PAGE_SIZE = 100  # rows in the table at a time: the widget, not SQL, is the cost of a page


def _status(kind: str) -> str:
    """The status of an item `x` of `kind`: a decision by hand wins over the loop's fate.

    The curation table is small, so its ids are looked up as lists (no join per row), and the
    candidate's own columns come from the covering index on (fate, stage, reason)."""
    curated = f"SELECT item_id FROM curation WHERE kind = '{kind}' AND decision"
    return (
        f"CASE WHEN x.id IN ({curated} = 'accepted') THEN 'curated-accepted'"
        f" WHEN x.id IN ({curated} = 'rejected') THEN 'curated-rejected'"
        f" WHEN {sql.KEPT} THEN 'kept'"
        f" WHEN {sql.SURPLUS} THEN 'surplus' ELSE 'rejected' END"
    )


_TABLE = {"task": "candidates", "trace": "traces"}
_TEXT = {"task": "x.instruction", "trace": "x.request"}
# Instances of a task; tool calls of a trace.
_COUNT = {
    "task": "(SELECT COUNT(*) FROM instances i WHERE i.candidate_id = x.id)",
    "trace": (
        "(SELECT COUNT(*) FROM json_each(x.messages) m"
        " WHERE json_extract(m.value, '$.role') = 'tool')"
    ),
}
# The sort keys of the table's columns, by kind. Ties are broken by kind and id, so pages
# never overlap. Only the key is computed for the rows a page skips; "round" and "score" are
# read from indexes.
SORTS: dict[str, dict[str, str]] = {
    "round": {"task": "x.round_id", "trace": "x.round_id"},
    "status": {"task": _status("task"), "trace": _status("trace")},
    "stage": {
        "task": "x.stage || ':' || COALESCE(x.reason, '')",
        "trace": "x.stage || ':' || COALESCE(x.reason, '')",
    },
    "score": {"task": "x.rouge_l", "trace": "x.rouge_l"},
    "clf": {"task": "x.is_classification", "trace": "NULL"},
    "n": _COUNT,
    "text": _TEXT,
}
_COLUMNS = (
    "SELECT '{kind}' AS kind, x.id AS id, x.round_id AS round, {text} AS text, x.stage AS stage,"
    " x.fate AS fate, x.reason AS reason, x.rouge_l AS score, {clf} AS clf, {status} AS status,"
    " {n} AS n"
    " FROM {table} x"
)


def _columns(kind: str) -> str:
    return _COLUMNS.format(
        kind=kind,
        text=_TEXT[kind],
        clf=SORTS["clf"][kind],
        status=_status(kind),
        n=_COUNT[kind],
        table=_TABLE[kind],
    )


@dataclass(frozen=True)
class Filters:
    """What the table shows. None means any; `search` is a case-insensitive substring."""

    kind: str | None = None
    status: str | None = None
    stage: str | None = None
    reason: str | None = None
    classification: bool | None = None
    search: str = ""

    def describe(self) -> str:
        parts = [
            f"{name}: {value}"
            for name, value in (
                ("kind", self.kind),
                ("status", self.status),
                ("stage", self.stage),
                ("reason", self.reason),
                (
                    "classification",
                    None
                    if self.classification is None
                    else ("yes" if self.classification else "no"),
                ),
            )
            if value is not None
        ]
        if self.search:
            parts.append(f"search: {self.search!r}")
        return ", ".join(parts) or "no filter"


@dataclass(frozen=True)
class Item:
    """One row of the table."""

    kind: str
    id: int
    round: int
    text: str
    stage: str
    fate: str  # the loop's verdict, whatever a person decided since
    reason: str | None
    score: float | None
    clf: bool | None
    status: str
    n: int


@dataclass
class Detail:
    """Everything about one item, for the detail view."""

    item: Item
    nearest: str | None
    note: str | None
    instances: list[tuple[str, str]] = field(default_factory=list)
    # (stage, prompt, response) of every model call that made the item, in order.
    generations: list[tuple[str, str, str]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Inspector:
    """Paged, filtered, sorted reads of a run store, and the curation writes."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.db: sqlite3.Connection = store.db

    def _where(self, kind: str, filters: Filters) -> tuple[str, list[str | int]] | None:
        """The WHERE clause selecting the items of `kind` that match, or None if none can."""
        if filters.kind not in (None, kind):
            return None
        if kind == "trace" and filters.classification is not None:
            return None  # a trace is not a task and has no classification
        where: list[str] = ["1"]
        args: list[str | int] = []
        if filters.status is not None:
            where.append(f"{_status(kind)} = ?")
            args.append(filters.status)
        for column in ("stage", "reason"):
            value = getattr(filters, column)
            if value is not None:
                where.append(f"x.{column} = ?")
                args.append(value)
        if filters.classification is not None:
            where.append("x.is_classification = ?")
            args.append(int(filters.classification))
        if filters.search:
            where.append(f"{_TEXT[kind]} LIKE ? ESCAPE '\\'")
            args.append(_like(filters.search))
        return " AND ".join(where), args

    def count(self, filters: Filters) -> int:
        total = 0
        for kind in KINDS:
            where = self._where(kind, filters)
            if where is not None:
                sql = f"SELECT COUNT(*) FROM {_TABLE[kind]} x WHERE {where[0]}"
                total += self.db.execute(sql, where[1]).fetchone()[0]
        return total

    def page(
        self,
        filters: Filters,
        *,
        sort: str = "round",
        descending: bool = False,
        offset: int = 0,
        limit: int = PAGE_SIZE,
    ) -> list[Item]:
        """Up to `limit` items from position `offset` of the sorted, filtered list.

        Two steps: the page's (kind, id) in order, computing only the sort key of the rows
        it passes over; then the columns of those rows alone."""
        arms, params = [], []
        for kind in KINDS:
            where = self._where(kind, filters)
            if where is not None:
                arms.append(
                    f"SELECT '{kind}' AS kind, x.id AS id, {SORTS[sort][kind]} AS key"
                    f" FROM {_TABLE[kind]} x WHERE {where[0]}"
                )
                params += where[1]
        if not arms:
            return []
        direction = "DESC" if descending else "ASC"
        collate = " COLLATE NOCASE" if sort == "text" else ""
        order = f"key{collate} {direction}, kind {direction}, id {direction}"
        keys = self.db.execute(
            f"{' UNION ALL '.join(arms)} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        rows: dict[tuple[str, int], Item] = {}
        for kind in KINDS:
            ids = [item_id for k, item_id, _ in keys if k == kind]
            if ids:
                marks = ",".join("?" * len(ids))
                for row in self.db.execute(f"{_columns(kind)} WHERE x.id IN ({marks})", ids):
                    rows[(kind, row["id"])] = _item(row)
        return [rows[(kind, item_id)] for kind, item_id, _ in keys]

    def values(self, column: str) -> list[str]:
        """The distinct values of `stage` or `reason` in the run, for the filter choices."""
        if column not in ("stage", "reason"):
            raise ValueError(column)
        rows = self.db.execute(
            f"SELECT {column} FROM candidates WHERE {column} IS NOT NULL"
            f" UNION SELECT {column} FROM traces WHERE {column} IS NOT NULL ORDER BY 1"
        )
        return [r[0] for r in rows]

    def item(self, kind: str, item_id: int) -> Item | None:
        row = self.db.execute(f"{_columns(kind)} WHERE x.id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def detail(self, kind: str, item_id: int) -> Detail | None:
        item = self.item(kind, item_id)
        if item is None:
            return None
        row = self.db.execute(
            f"SELECT x.*, k.note FROM {_TABLE[kind]} x LEFT JOIN curation k"
            " ON k.kind = ? AND k.item_id = x.id WHERE x.id = ?",
            (kind, item_id),
        ).fetchone()
        detail = Detail(item=item, nearest=row["nearest"], note=row["note"])
        if kind == "task":
            detail.instances = [
                (r[0], r[1])
                for r in self.db.execute(
                    "SELECT input, output FROM instances WHERE candidate_id = ? ORDER BY position",
                    (item_id,),
                )
            ]
            generation_ids = [
                row["generation_id"],
                row["classify_generation_id"],
                row["instance_generation_id"],
            ]
        else:
            detail.messages = json.loads(row["messages"])
            detail.checks = json.loads(row["checks"])
            generation_ids = [row["generation_id"], *json.loads(row["step_generation_ids"])]
        for gen_id in generation_ids:
            if gen_id is None:
                continue
            gen = self.db.execute(
                "SELECT stage, COALESCE(prompt, messages, ''),"
                " CASE WHEN error IS NULL THEN response ELSE '[failed] ' || error END"
                " FROM generations WHERE id = ?",
                (gen_id,),
            ).fetchone()
            detail.generations.append((gen[0], gen[1], gen[2]))
        return detail

    def curate(self, item: Item, decision: str | None, note: str | None = None) -> Item:
        """Record a decision by hand (None forgets it) and return the item as it now is."""
        self.store.curate(item.kind, item.id, decision, note=note)
        updated = self.item(item.kind, item.id)
        assert updated is not None
        return updated

    def figures(self) -> dict[str, Any]:
        """The figures of `selfgen stats`, for the statistics view."""
        return run_figures(self.store)

    def data_version(self) -> int:
        """Changes whenever another connection (a running loop) commits to the store."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]


def _item(row: sqlite3.Row) -> Item:
    return Item(
        kind=row["kind"],
        id=row["id"],
        round=row["round"],
        text=row["text"],
        stage=row["stage"],
        fate=row["fate"],
        reason=row["reason"],
        score=row["score"],
        clf=None if row["clf"] is None else bool(row["clf"]),
        status=row["status"],
        n=row["n"],
    )
