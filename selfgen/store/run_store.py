"""The run store: one SQLite database per run, `<out>/selfgen.db`.

It holds the run's configuration, its seed tasks, and for every round the generation calls,
the candidates with their fate, the kept instances and the RNG state. A round is written in one
transaction, so a run killed at any instant resumes from its last whole round with nothing
lost and nothing doubled. Every read and write of the database is a method here (or of the
figures and the inspector's browser, which it hands out), so no other module writes SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfgen.records import (
    Candidate,
    Fate,
    Instance,
    SeedTask,
    SeedTurn,
    Stage,
    ToolCall,
    ToolSeed,
    Trace,
)
from selfgen.store import sql
from selfgen.store.browse import Inspector
from selfgen.store.disk import (
    LOW_SPACE_BYTES,
    DiskFullError,
    disk_full,
    free_bytes,
    is_disk_full,
)
from selfgen.store.figures import run_figures
from selfgen.store.lock import RunLock
from selfgen.store.provenance import ItemOrigin, run_row, task_origins, text_ids, trace_origins
from selfgen.store.schema import StoreError, migrate, now
from selfgen.tooling import ToolSpec

DB_NAME = "selfgen.db"
# The generation stage that writes the follow-ups of multi-turn traces (FollowUpStage.name).
FOLLOWUP_GENERATION = "tool_followup"
_FATES = (Fate.KEPT, Fate.REJECTED)


@dataclass
class GenerationRecord:
    stage: str
    params: dict[str, Any]
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    constraint: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RoundRecord:
    """Everything one round produced, written in one transaction by :meth:`RunStore.commit_round`.

    Candidates point at generations by their position in `generations`.
    """

    number: int
    started_at: str
    rng_state: tuple[Any, ...]  # random.Random.getstate()
    elapsed_s: float
    generations: list[GenerationRecord] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    # The scorers of the round's scores: {name: {"model": ..., "settings": ...}}.
    scorers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.generations)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)


@dataclass(frozen=True)
class RunTotals:
    """How far a run has come: sums over its committed rounds."""

    rounds: int
    kept: int
    traces: int
    candidates: int
    prompt_tokens: int
    completion_tokens: int
    rounds_without_kept: int
    elapsed_s: float


def _check_space(folder: Path) -> None:
    """Refuse to start writing on a disk that is already full: the first commit would fail only
    after a whole round of generation, and opening may even succeed there (SQLite reuses the
    space its WAL already holds)."""
    free = free_bytes(folder)
    if free is not None and free < LOW_SPACE_BYTES:
        raise DiskFullError(folder, free)


def _rng_to_json(state: tuple[Any, ...]) -> str:
    return json.dumps(state, default=list)


def _rng_from_json(text: str) -> tuple[Any, ...]:
    version, internal, gauss = json.loads(text)
    return (version, tuple(internal), gauss)


class RunStore:
    """An open run store. Use :meth:`create` for a new run and :meth:`open` for an existing one."""

    def __init__(self, db: sqlite3.Connection, path: Path, lock: RunLock | None = None) -> None:
        self.db = db
        self.path = path
        # Held by the store a run writes (see selfgen.store.lock); readers hold none.
        self.lock = lock

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT via `with db`).
        db = sqlite3.connect(path, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        return db

    @classmethod
    def create(
        cls,
        out_dir: str | Path,
        config: dict[str, Any],
        seeds: list[SeedTask],
        backend: dict[str, Any],
        version: str,
    ) -> RunStore:
        """Create `out_dir/selfgen.db` with the run's config and seeds, and open it as the
        run's writer (holding its lock, like ``open(out_dir, writer=True)``).

        The database is built under a temporary name and renamed into place, so a run killed
        while starting leaves either no store or a whole one. :class:`StoreLockedError` if
        another run is starting in the same folder, :class:`DiskFullError` (with nothing left
        behind) if the disk is full.
        """
        out = Path(out_dir)
        final = out / DB_NAME
        tmp = out / f".{DB_NAME}.tmp"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc, out):
                raise disk_full(out) from None
            raise
        lock = RunLock.acquire(out)
        try:
            _check_space(out)
            if final.exists():  # another run created it since this one looked
                raise StoreError(
                    f"{out}: another selfgen run has just started here; run again to resume it"
                )
            tmp.unlink(missing_ok=True)
            with closing(cls._connect(tmp)) as db:
                migrate(db)
                with db:
                    db.execute("BEGIN")
                    db.execute(
                        "INSERT INTO run VALUES (1, ?, ?, ?, ?)",
                        (now(), version, json.dumps(config), json.dumps(backend)),
                    )
                    db.executemany(
                        "INSERT INTO seed_tasks (seed_id, name, instruction, is_classification,"
                        " instances) VALUES (?, ?, ?, ?, ?)",
                        [
                            (
                                s.id,
                                s.name,
                                s.instruction,
                                int(s.is_classification),
                                json.dumps(
                                    [{"input": i.input, "output": i.output} for i in s.instances]
                                ),
                            )
                            for s in seeds
                        ],
                    )
            os.replace(tmp, final)
            return cls._open(final, lock)
        except (sqlite3.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            lock.release()
            if is_disk_full(exc, out):
                raise disk_full(out) from None
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            lock.release()
            raise

    @classmethod
    def open(cls, out_dir: str | Path, *, writer: bool = False) -> RunStore:
        """Open an existing run, applying pending migrations.

        A `writer` (a run that will add rounds) first takes the run's lock, so that a second
        writer is refused with :class:`StoreLockedError` naming the first; readers take no
        lock and can read while a run writes.
        """
        path = Path(out_dir) / DB_NAME
        if not path.is_file():
            raise StoreError(f"{out_dir}: no selfgen run here (no {DB_NAME})")
        if path.stat().st_size == 0:
            raise StoreError(f"{path}: the run store is empty (0 bytes)")
        lock = RunLock.acquire(path.parent) if writer else None
        try:
            if writer:
                _check_space(path.parent)
            return cls._open(path, lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def _open(cls, path: Path, lock: RunLock | None) -> RunStore:
        try:
            db = cls._connect(path)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            migrate(db)
            if db.execute("SELECT COUNT(*) FROM run").fetchone()[0] != 1:
                raise StoreError(f"{path}: the store has no run configuration")
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc, path.parent):
                raise disk_full(path.parent) from None
            raise StoreError(f"{path}: cannot read the run store ({exc})") from None
        return cls(db, path, lock)

    @staticmethod
    def exists(out_dir: str | Path) -> bool:
        return (Path(out_dir) / DB_NAME).is_file()

    def close(self) -> None:
        self.db.close()
        if self.lock is not None:
            self.lock.release()

    def config(self) -> dict[str, Any]:
        return json.loads(self.db.execute("SELECT config FROM run").fetchone()[0])

    def update_config(self, config: dict[str, Any]) -> None:
        """Store new stopping limits (the only settings a resumed run may change)."""
        with self._writing(), self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE run SET config = ?", (json.dumps(config),))

    def backend_info(self) -> dict[str, Any]:
        return json.loads(self.db.execute("SELECT backend FROM run").fetchone()[0])

    def seeds(self) -> list[SeedTask]:
        rows = self.db.execute("SELECT * FROM seed_tasks ORDER BY id").fetchall()
        return [
            SeedTask(
                id=r["seed_id"],
                name=r["name"],
                instruction=r["instruction"],
                is_classification=bool(r["is_classification"]),
                instances=tuple(Instance(**i) for i in json.loads(r["instances"])),
            )
            for r in rows
        ]

    def novelty_pool(self) -> list[str]:
        """Machine instructions that passed the ROUGE-L filter, in the order they passed it."""
        rows = self.db.execute(
            f"SELECT instruction FROM candidates WHERE {sql.PASSED_NOVELTY} ORDER BY id"
        )
        return [r[0] for r in rows]

    def kept_instructions(self) -> list[str]:
        rows = self.db.execute(f"SELECT instruction FROM candidates WHERE {sql.KEPT} ORDER BY id")
        return [r[0] for r in rows]

    def last_rng_state(self) -> tuple[Any, ...] | None:
        row = self.db.execute("SELECT rng_state FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
        return _rng_from_json(row[0]) if row else None

    def totals(self) -> RunTotals:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(num_kept), 0), COALESCE(SUM(num_traces), 0),"
            " COALESCE(SUM(num_candidates), 0), COALESCE(SUM(prompt_tokens), 0),"
            " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(elapsed_s), 0) FROM rounds"
        ).fetchone()
        streak = 0
        for (kept,) in self.db.execute("SELECT num_kept + num_traces FROM rounds ORDER BY id DESC"):
            if kept:
                break
            streak += 1
        return RunTotals(row[0], row[1], row[2], row[3], row[4], row[5], streak, row[6])

    def commit_round(self, rnd: RoundRecord) -> None:
        """Write a whole round, or nothing of it (:class:`DiskFullError` on a full disk)."""
        db = self.db
        with self._writing(), db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO rounds (id, started_at, finished_at, rng_state, num_candidates,"
                " num_kept, prompt_tokens, completion_tokens, elapsed_s, num_traces)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rnd.number,
                    rnd.started_at,
                    now(),
                    _rng_to_json(rnd.rng_state),
                    len(rnd.candidates),
                    sum(c.fate == Fate.KEPT for c in rnd.candidates),
                    rnd.prompt_tokens,
                    rnd.completion_tokens,
                    rnd.elapsed_s,
                    sum(t.fate == Fate.KEPT for t in rnd.traces),
                ),
            )
            gen_ids = []
            for g in rnd.generations:
                cur = db.execute(
                    "INSERT INTO generations (round_id, stage, prompt, messages, params,"
                    " constraint_spec, response, finish_reason, prompt_tokens, completion_tokens,"
                    " latency_s, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rnd.number,
                        g.stage,
                        g.prompt,
                        json.dumps(g.messages) if g.messages is not None else None,
                        json.dumps(g.params),
                        json.dumps(g.constraint) if g.constraint is not None else None,
                        g.response,
                        g.finish_reason,
                        g.prompt_tokens,
                        g.completion_tokens,
                        g.latency_s,
                        g.error,
                    ),
                )
                gen_ids.append(cur.lastrowid)

            def gen_id(index: int | None) -> int | None:
                return gen_ids[index] if index is not None else None

            self._insert_traces(rnd, gen_ids)
            for c in rnd.candidates:
                if c.fate not in _FATES:
                    raise ValueError(f"candidate {c.instruction!r} has no fate")
                cur = db.execute(
                    "INSERT INTO candidates (round_id, generation_id, instruction, stage, fate,"
                    " reason, nearest, rouge_l, is_classification, classify_generation_id,"
                    " instance_generation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rnd.number,
                        gen_ids[c.generation_index],
                        c.instruction,
                        c.stage,
                        c.fate,
                        c.reason,
                        c.nearest,
                        c.rouge_l,
                        None if c.is_classification is None else int(c.is_classification),
                        gen_id(c.classify_generation_index),
                        gen_id(c.instance_generation_index),
                    ),
                )
                if c.fate == Fate.KEPT:
                    for i, x in enumerate(c.instances):
                        row = db.execute(
                            "INSERT INTO instances (candidate_id, position, input, output)"
                            " VALUES (?, ?, ?, ?)",
                            (cur.lastrowid, i, x.input, x.output),
                        )
                        scores = c.scores[i] if c.scores else {}
                        self._insert_scores(rnd, "instance", row.lastrowid, scores)

    def _insert_traces(self, rnd: RoundRecord, gen_ids: list[int]) -> None:
        for t in rnd.traces:
            if t.fate not in _FATES:
                raise ValueError(f"trace {t.request!r} has no fate")
            row = self.db.execute(
                "INSERT INTO traces (round_id, generation_id, request, stage, fate, reason,"
                " nearest, rouge_l, messages, checks, step_generation_ids, kind)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rnd.number,
                    gen_ids[t.generation_index],
                    t.request,
                    t.stage,
                    t.fate,
                    t.reason,
                    t.nearest,
                    t.rouge_l,
                    json.dumps(t.messages()),
                    json.dumps({k: {"ok": ok, "reason": why} for k, (ok, why) in t.checks.items()}),
                    json.dumps([gen_ids[i] for i in t.step_generation_indexes]),
                    t.kind,
                ),
            )
            if t.fate == Fate.KEPT:
                self._insert_scores(rnd, "trace", row.lastrowid, t.scores)

    def _insert_scores(
        self,
        rnd: RoundRecord,
        kind: str,
        item_id: int,
        scores: dict[str, tuple[float | None, dict[str, Any]]],
    ) -> None:
        """Store an item's in-loop scores, with the model and settings of the scorers."""
        for name, (value, detail) in scores.items():
            meta = rnd.scorers[name]
            self.db.execute(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    item_id,
                    name,
                    value,
                    json.dumps(detail),
                    json.dumps(meta["model"]),
                    json.dumps(meta["settings"]),
                    now(),
                ),
            )

    def save_tools(
        self,
        specs: dict[str, ToolSpec],
        seeds: list[ToolSeed],
        sources: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        """Store the run's tool schemas and its tool seeds (with their executed outputs), and
        where each tool came from: (MCP server or '' for a tools folder, schema hash)."""
        with self._writing(), self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO tool_sources VALUES (?, ?, ?)",
                [
                    (name, server, digest)
                    for name, (server, digest) in sorted((sources or {}).items())
                ],
            )
            self.db.executemany(
                "INSERT INTO run_tools (name, spec, source_sha256) VALUES (?, ?, ?)",
                [
                    (name, json.dumps(spec.openai()), spec.source_sha256)
                    for name, spec in sorted(specs.items())
                ],
            )
            self.db.executemany(
                "INSERT INTO tool_seeds (seed_id, request, calls, answer, followups)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        s.id,
                        s.request,
                        json.dumps([c.to_dict() for c in s.calls]),
                        s.answer,
                        json.dumps([t.to_dict() for t in s.followups]) if s.followups else None,
                    )
                    for s in seeds
                ],
            )

    def tool_specs(self) -> dict[str, ToolSpec]:
        out = {}
        for name, spec, digest in self.db.execute(
            "SELECT name, spec, source_sha256 FROM run_tools ORDER BY name"
        ):
            fn = json.loads(spec)["function"]
            out[name] = ToolSpec(
                fn["name"], fn.get("description", ""), fn.get("parameters", {}), digest
            )
        return out

    def tool_sources(self) -> dict[str, tuple[str, str]]:
        """Each tool's (MCP server or '', schema hash), as recorded when the run started."""
        rows = self.db.execute("SELECT name, server, schema_hash FROM tool_sources ORDER BY name")
        return {r[0]: (r[1], r[2]) for r in rows}

    def tool_seeds(self) -> list[ToolSeed]:
        return [
            ToolSeed(
                r["seed_id"],
                r["request"],
                tuple(ToolCall(**c) for c in json.loads(r["calls"])),
                r["answer"],
                tuple(
                    SeedTurn(t["request"], tuple(ToolCall(**c) for c in t["calls"]), t["answer"])
                    for t in json.loads(r["followups"] or "[]")
                ),
            )
            for r in self.db.execute("SELECT * FROM tool_seeds ORDER BY id")
        ]

    def trace_pool(self) -> list[str]:
        """Requests that passed the ROUGE-L filter, in the order they passed it: each round's
        first requests, then its follow-ups (multi-turn traces) in the order they were
        written."""
        keyed: list[tuple[tuple[int, int, int], str]] = []
        for trace_id, round_id, request, stage, messages, steps in self.db.execute(
            "SELECT id, round_id, request, stage, CASE WHEN kind = 'multiturn' THEN messages END,"
            f" step_generation_ids FROM traces WHERE {sql.PASSED_NOVELTY} ORDER BY id"
        ):
            keyed.append(((round_id, 0, trace_id), request))
            if messages is None:
                continue
            texts = [m["content"] for m in json.loads(messages) if m["role"] == "user"][1:]
            if texts and stage == Stage.FOLLOWUP:
                texts.pop()  # the last one failed the rules or the novelty filter
            written = self._followup_generations(json.loads(steps))
            keyed += [((round_id, 1, g), t) for g, t in zip(written, texts, strict=False)]
        return [text for _, text in sorted(keyed)]

    def _followup_generations(self, steps: list[int]) -> list[int]:
        """The generation that wrote each follow-up of a trace, from its steps: a turn's tries
        come one after the other, and the last try of each turn is the one it kept."""
        if not steps:
            return []
        marks = ",".join("?" * len(steps))
        stages = dict(
            self.db.execute(f"SELECT id, stage FROM generations WHERE id IN ({marks})", steps)
        )
        out: list[int] = []
        previous = None
        for g in steps:
            is_followup = stages.get(g) == FOLLOWUP_GENERATION
            if is_followup and previous == FOLLOWUP_GENERATION:
                out[-1] = g
            elif is_followup:
                out.append(g)
            previous = stages.get(g)
        return out

    def verified_requests(self, kind: str | None = None) -> list[tuple[str, str]]:
        """The requests of the verified traces (of one kind, when given), in order, each with
        the tool of its first call."""
        where = f"{sql.KEPT} AND kind = ?" if kind is not None else sql.KEPT
        rows = self.db.execute(
            "SELECT request, json_extract(messages, '$[1].tool_calls[0].function.name')"
            f" FROM traces WHERE {where} ORDER BY id",
            () if kind is None else (kind,),
        )
        return [(request, tool or "") for request, tool in rows]

    def curate(
        self, kind: str, item_id: int, decision: str | None, *, note: str | None = None
    ) -> None:
        """Record a person's decision on a task or trace (`accepted`, `rejected`, or None to
        forget it). One short transaction: a run may be writing the store at the same time."""
        with self._writing(), self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if decision is None:
                self.db.execute(
                    "DELETE FROM curation WHERE kind = ? AND item_id = ?", (kind, item_id)
                )
            else:
                self.db.execute(
                    "INSERT INTO curation VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, item_id)"
                    " DO UPDATE SET decision = excluded.decision, note = excluded.note,"
                    " decided_at = excluded.decided_at",
                    (kind, item_id, decision, note or None, now()),
                )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write that fails for want of disk space raises :class:`DiskFullError` naming the
        run folder, not SQLite's "database or disk is full"; the transaction is rolled back,
        so nothing of the write is kept. Other errors pass unchanged."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            if is_disk_full(exc, self.path.parent):
                raise disk_full(self.path.parent) from None
            raise

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A store that breaks while open (truncated, a table dropped, locked for longer than
        the timeout) raises :class:`StoreError` naming the file, not an SQLite error."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot read the run store ({exc})") from None

    def kept_tasks(
        self, *, only_curated: bool = False
    ) -> Iterator[tuple[sqlite3.Row, list[Instance]]]:
        """Kept candidates in order, each with its instances. Tasks rejected by hand are left
        out; with `only_curated`, so is every task not accepted by hand."""
        with self._reading():
            for row in self.db.execute(
                "SELECT c.* FROM candidates c LEFT JOIN curation k"
                " ON k.kind = 'task' AND k.item_id = c.id"
                f" WHERE {sql.KEPT} AND {sql.curation_wanted(only_curated)} ORDER BY c.id"
            ):
                instances = [
                    Instance(input=r["input"], output=r["output"], id=r["id"])
                    for r in self.db.execute(
                        "SELECT id, input, output FROM instances WHERE candidate_id = ?"
                        " ORDER BY position",
                        (row["id"],),
                    )
                ]
                yield row, instances

    def trace_rows(
        self, *, include_failed: bool = False, only_curated: bool = False
    ) -> Iterator[StoredTrace]:
        """Traces that reached a tool, in order: the verified ones, and with `include_failed`
        those that failed a check. Never a surplus trace nor one rejected by hand; with
        `only_curated`, only those accepted by hand."""
        failed = "" if include_failed else f" AND {sql.KEPT}"
        with self._reading():
            for row in self.db.execute(
                "SELECT traces.id, messages, fate, stage, reason FROM traces LEFT JOIN curation k"
                " ON k.kind = 'trace' AND k.item_id = traces.id"
                f" WHERE {sql.PASSED_NOVELTY} AND NOT {sql.SURPLUS}"
                f" AND {sql.curation_wanted(only_curated)}{failed} ORDER BY traces.id"
            ):
                yield StoredTrace(
                    id=row["id"],
                    messages=json.loads(row["messages"]),
                    fate=Fate(row["fate"]),
                    stage=row["stage"],
                    reason=row["reason"],
                )

    def replayable_calls(self) -> Iterator[RecordedCall]:
        """Every tool call of every trace that reached a tool, with the output recorded for it
        (an error recorded as ``error: ...``), in the order they were made."""
        with self._reading():
            for trace_id, raw in self.db.execute(
                f"SELECT id, messages FROM traces WHERE {sql.PASSED_NOVELTY} ORDER BY id"
            ):
                messages = json.loads(raw)
                recorded = {
                    m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"
                }
                for m in messages:
                    for call in m.get("tool_calls") or []:
                        fn = call["function"]
                        yield RecordedCall(
                            trace_id=trace_id,
                            name=fn["name"],
                            arguments=json.loads(fn["arguments"]),
                            recorded=recorded.get(call["id"]),
                        )

    def scorable_instances(self) -> Iterator[tuple[int, str, str, str]]:
        """(instance id, instruction, input, output) of every instance of a kept task."""
        with self._reading():
            yield from self.db.execute(
                "SELECT i.id, c.instruction, i.input, i.output FROM instances i"
                f" JOIN candidates c ON c.id = i.candidate_id WHERE c.{sql.KEPT}"
                " ORDER BY i.id"
            )

    def scorable_traces(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(trace id, messages) of every trace that reached a tool."""
        with self._reading():
            for trace_id, raw in self.db.execute(
                f"SELECT id, messages FROM traces WHERE {sql.PASSED_NOVELTY} ORDER BY id"
            ):
                yield trace_id, json.loads(raw)

    def scored_ids(self, kind: str, scorer: str) -> set[int]:
        """The items of `kind` that `scorer` has scored already."""
        with self._reading():
            rows = self.db.execute(
                "SELECT item_id FROM scores WHERE kind = ? AND scorer = ?", (kind, scorer)
            )
            return {r[0] for r in rows}

    def save_scores(
        self,
        kind: str,
        scorer: str,
        scores: list[tuple[int, float | None, dict[str, Any]]],
        *,
        model: dict[str, Any],
        settings: dict[str, Any],
    ) -> None:
        """Store (item id, value, detail) scores of `scorer` in one transaction, replacing the
        item's earlier score by the same scorer."""
        with self._writing(), self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, item_id, scorer) DO UPDATE SET value = excluded.value,"
                " detail = excluded.detail, model = excluded.model,"
                " settings = excluded.settings, scored_at = excluded.scored_at",
                [
                    (
                        kind,
                        item_id,
                        scorer,
                        value,
                        json.dumps(detail),
                        json.dumps(model),
                        json.dumps(settings),
                        now(),
                    )
                    for item_id, value, detail in scores
                ],
            )

    def scores(self, kind: str) -> dict[str, dict[int, float | None]]:
        """Every score of items of `kind`: {scorer: {item id: value}}."""
        out: dict[str, dict[int, float | None]] = {}
        with self._reading():
            for scorer, item_id, value in self.db.execute(
                "SELECT scorer, item_id, value FROM scores WHERE kind = ?", (kind,)
            ):
                out.setdefault(scorer, {})[item_id] = value
        return out

    def figures(self) -> dict[str, Any]:
        """The run's figures (see selfgen.store.figures), or :class:`StoreError`."""
        with self._reading():
            return run_figures(self)

    def run_row(self) -> dict[str, Any]:
        """When and by which selfgen version the run was created, and its backend."""
        with self._reading():
            return run_row(self)

    def origins(self, kind: str) -> dict[int, ItemOrigin]:
        """Where each kept task (`kind` "task") or each trace that reached a tool ("trace")
        came from, by id (see selfgen.store.provenance)."""
        with self._reading():
            return task_origins(self) if kind == "task" else trace_origins(self)

    def text_ids(self) -> dict[str, str]:
        """The id of each text a prompt can show (see selfgen.store.provenance.text_ids)."""
        with self._reading():
            return text_ids(self)

    def inspector(self) -> Inspector:
        """Paged, filtered reads of the run's items for `selfgen inspect`."""
        return Inspector(self)


@dataclass(frozen=True)
class StoredTrace:
    """A trace as the store holds it: OpenAI chat messages and the loop's verdict."""

    id: int
    messages: list[dict[str, Any]]
    fate: Fate
    stage: str
    reason: str | None


@dataclass(frozen=True)
class RecordedCall:
    """One tool call of a stored trace and the output recorded for it (None if none was)."""

    trace_id: int
    name: str
    arguments: dict[str, Any]
    recorded: str | None
