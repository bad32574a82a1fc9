"""The queries behind `selfgen inspect`: one page of items at a time, never the whole run.

An item is a candidate instruction (kind `task`) or a tool-use trace (kind `trace`). Every
view of the table is one query with filters, a sort order and LIMIT/OFFSET; a 100,000-candidate
store costs the inspector a page of rows in memory, whatever the user does. The details of an
item (instances, nearest neighbour, raw generations, trace messages, every score with what it
was computed from) are read when it is opened.

Quality scores (the `scores` table) belong to instances and traces. A task's score by a scorer
is the mean of its instances' scores that are not NULL (NULL: the scorer could not score it);
a trace's is its own.

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
SCORE_SORT = "score:"  # sort keys "score:<scorer>" sort by that scorer's scores
# The score of an item by the scorer bound to `?`: correlated subqueries, each a lookup in the
# instances' (candidate_id, position) index or the primary key of `scores`, so a sort by a score
# costs a few index probes per row. Written as a join of instances and scores, SQLite may take
# the (scorer, kind, value) index instead and read every score of the scorer for every row.
_SCORE = {
    "task": (
        "(SELECT AVG((SELECT s.value FROM scores s WHERE s.kind = 'instance'"
        " AND s.item_id = i.id AND s.scorer = ?)) FROM instances i WHERE i.candidate_id = x.id)"
    ),
    "trace": (
        "(SELECT s.value FROM scores s WHERE s.kind = 'trace' AND s.item_id = x.id"
        " AND s.scorer = ?)"
    ),
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


def score_sort(scorer: str) -> str:
    """The sort key of `Inspector.page` that sorts by `scorer`'s scores."""
    return SCORE_SORT + scorer


@dataclass(frozen=True)
class Item:
    """One row of the table. `score` is the ROUGE-L similarity to the nearest neighbour;
    `scores` the quality scores, {scorer: value}: a task's the mean of its instances', None
    where the scorer could not score it, no key for a scorer that never saw the item."""

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
    scores: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredScore:
    """One scorer's score of one instance or trace. `value` is None when the scorer could not
    score it (why is in `detail["error"]`); `detail` is what the value was computed from and
    `model` the scoring backend's description."""

    value: float | None
    detail: dict[str, Any]
    model: dict[str, Any]


@dataclass
class Detail:
    """Everything about one item, for the detail view."""

    item: Item
    nearest: str | None
    note: str | None
    instances: list[tuple[str, str]] = field(default_factory=list)
    # {scorer: score} of each instance, in the order of `instances`.
    instance_scores: list[dict[str, StoredScore]] = field(default_factory=list)
    # (stage, prompt, response) of every model call that made the item, in order.
    generations: list[tuple[str, str, str]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, StoredScore] = field(default_factory=dict)  # a trace's


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

    def scorers(self) -> list[str]:
        """The scorers that have scored something in the run, by name."""
        # SELECT DISTINCT would read the whole (scorer, kind, value) index on every reload of
        # the table; stepping from one name to the next in it is a seek per scorer.
        rows = self.db.execute(
            "WITH RECURSIVE names(scorer) AS (SELECT MIN(scorer) FROM scores"
            " UNION ALL SELECT (SELECT MIN(scorer) FROM scores WHERE scorer > names.scorer)"
            " FROM names WHERE scorer IS NOT NULL)"
            " SELECT scorer FROM names WHERE scorer IS NOT NULL"
        )
        return [r[0] for r in rows]

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

        `sort` is a key of SORTS or `score_sort(scorer)`; by a score, the items it has no
        score for come last in either direction.

        Two steps: the page's (kind, id) in order, computing only the sort key of the rows
        it passes over; then the columns of those rows alone."""
        arms, params = [], []
        for kind in KINDS:
            where = self._where(kind, filters)
            if where is not None:
                key, key_params = _sort_key(sort, kind)
                arms.append(
                    f"SELECT '{kind}' AS kind, x.id AS id, {key} AS key"
                    f" FROM {_TABLE[kind]} x WHERE {where[0]}"
                )
                params += [*key_params, *where[1]]
        if not arms:
            return []
        direction = "DESC" if descending else "ASC"
        collate = " COLLATE NOCASE" if sort == "text" else ""
        unscored = " NULLS LAST" if sort.startswith(SCORE_SORT) else ""
        order = f"key{collate} {direction}{unscored}, kind {direction}, id {direction}"
        keys = self.db.execute(
            f"{' UNION ALL '.join(arms)} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        rows: dict[tuple[str, int], Item] = {}
        for kind in KINDS:
            ids = [item_id for k, item_id, _ in keys if k == kind]
            if ids:
                rows.update(((kind, item.id), item) for item in self._items(kind, ids))
        return [rows[(kind, item_id)] for kind, item_id, _ in keys]

    def _items(self, kind: str, ids: list[int]) -> list[Item]:
        """The items of `kind` with these ids, with their scores, in no particular order."""
        marks = ",".join("?" * len(ids))
        if kind == "task":
            # CROSS JOIN keeps SQLite's loops in this order: the page's instances, then their
            # scores by primary key. Left free, it may scan every instance score in the run.
            score_rows = self.db.execute(
                "SELECT i.candidate_id, s.scorer, AVG(s.value) FROM instances i"
                " CROSS JOIN scores s ON s.kind = 'instance' AND s.item_id = i.id"
                f" WHERE i.candidate_id IN ({marks}) GROUP BY i.candidate_id, s.scorer"
                " ORDER BY s.scorer",
                ids,
            )
        else:
            score_rows = self.db.execute(
                "SELECT item_id, scorer, value FROM scores"
                f" WHERE kind = 'trace' AND item_id IN ({marks}) ORDER BY scorer",
                ids,
            )
        scores: dict[int, dict[str, float | None]] = {}
        for item_id, scorer, value in score_rows:
            scores.setdefault(item_id, {})[scorer] = value
        return [
            _item(row, scores.get(row["id"], {}))
            for row in self.db.execute(f"{_columns(kind)} WHERE x.id IN ({marks})", ids)
        ]

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
        items = self._items(kind, [item_id])
        return items[0] if items else None

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
            instances = self.db.execute(
                "SELECT id, input, output FROM instances WHERE candidate_id = ? ORDER BY position",
                (item_id,),
            ).fetchall()
            detail.instances = [(r["input"], r["output"]) for r in instances]
            detail.instance_scores = [self._scores("instance", r["id"]) for r in instances]
            generation_ids = [
                row["generation_id"],
                row["classify_generation_id"],
                row["instance_generation_id"],
            ]
        else:
            detail.messages = json.loads(row["messages"])
            detail.checks = json.loads(row["checks"])
            detail.scores = self._scores("trace", item_id)
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

    def _scores(self, kind: str, item_id: int) -> dict[str, StoredScore]:
        rows = self.db.execute(
            "SELECT scorer, value, detail, model FROM scores WHERE kind = ? AND item_id = ?"
            " ORDER BY scorer",
            (kind, item_id),
        )
        return {
            r["scorer"]: StoredScore(r["value"], json.loads(r["detail"]), json.loads(r["model"]))
            for r in rows
        }

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


def _sort_key(sort: str, kind: str) -> tuple[str, list[str]]:
    """The SQL of a sort key for items of `kind`, and its parameters."""
    if sort.startswith(SCORE_SORT):
        return _SCORE[kind], [sort[len(SCORE_SORT) :]]
    return SORTS[sort][kind], []


def _item(row: sqlite3.Row, scores: dict[str, float | None]) -> Item:
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
        scores=scores,
    )
