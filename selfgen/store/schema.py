"""The run store's tables: numbered migrations, applied in order and recorded in
`schema_migrations`. A migration, once released, never changes: a run store written by an
older selfgen opens by applying the ones it has not seen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone


class StoreError(RuntimeError):
    """A store that is missing, corrupt or locked; the message is meant for the user."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # One statement at a time: executescript() would COMMIT the migration's transaction first.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_initial(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE run (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            created_at TEXT NOT NULL,
            selfgen_version TEXT NOT NULL,
            config TEXT NOT NULL,
            backend TEXT NOT NULL
        );
        CREATE TABLE seed_tasks (
            id INTEGER PRIMARY KEY,
            seed_id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            instruction TEXT NOT NULL,
            is_classification INTEGER NOT NULL,
            instances TEXT NOT NULL
        );
        CREATE TABLE rounds (
            id INTEGER PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            rng_state TEXT NOT NULL,
            num_candidates INTEGER NOT NULL,
            num_kept INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            elapsed_s REAL NOT NULL
        );
        CREATE TABLE generations (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            stage TEXT NOT NULL,
            prompt TEXT,
            messages TEXT,
            params TEXT NOT NULL,
            constraint_spec TEXT,
            response TEXT NOT NULL,
            finish_reason TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            latency_s REAL NOT NULL
        );
        CREATE INDEX generations_round ON generations(round_id);
        CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            generation_id INTEGER NOT NULL REFERENCES generations(id),
            instruction TEXT NOT NULL,
            stage TEXT NOT NULL,
            fate TEXT NOT NULL CHECK (fate IN ('kept', 'rejected')),
            reason TEXT,
            nearest TEXT,
            rouge_l REAL,
            is_classification INTEGER,
            classify_generation_id INTEGER REFERENCES generations(id),
            instance_generation_id INTEGER REFERENCES generations(id)
        );
        CREATE INDEX candidates_round ON candidates(round_id);
        CREATE INDEX candidates_fate ON candidates(fate, stage, reason);
        CREATE TABLE instances (
            id INTEGER PRIMARY KEY,
            candidate_id INTEGER NOT NULL REFERENCES candidates(id),
            position INTEGER NOT NULL,
            input TEXT NOT NULL,
            output TEXT NOT NULL,
            UNIQUE (candidate_id, position)
        );
        """,
    )


def m002_tool_traces(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        ALTER TABLE rounds ADD COLUMN num_traces INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE run_tools (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL
        );
        CREATE TABLE tool_seeds (
            id INTEGER PRIMARY KEY,
            seed_id TEXT NOT NULL UNIQUE,
            request TEXT NOT NULL,
            calls TEXT NOT NULL,
            answer TEXT NOT NULL
        );
        CREATE TABLE traces (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            generation_id INTEGER NOT NULL REFERENCES generations(id),
            request TEXT NOT NULL,
            stage TEXT NOT NULL,
            fate TEXT NOT NULL CHECK (fate IN ('kept', 'rejected')),
            reason TEXT,
            nearest TEXT,
            rouge_l REAL,
            messages TEXT NOT NULL,
            checks TEXT NOT NULL,
            step_generation_ids TEXT NOT NULL
        );
        CREATE INDEX traces_round ON traces(round_id);
        CREATE INDEX traces_fate ON traces(fate, stage, reason);
        """,
    )


def m003_curation(db: sqlite3.Connection) -> None:
    # Hand curation from `selfgen inspect`: one decision per item (task or trace), replaced when
    # the person changes their mind. The indexes serve the inspector's sorted, paged queries.
    _run_script(
        db,
        """
        CREATE TABLE curation (
            kind TEXT NOT NULL CHECK (kind IN ('task', 'trace')),
            item_id INTEGER NOT NULL,
            decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
            note TEXT,
            decided_at TEXT NOT NULL,
            PRIMARY KEY (kind, item_id)
        );
        CREATE INDEX candidates_rouge ON candidates(rouge_l);
        CREATE INDEX traces_rouge ON traces(rouge_l);
        """,
    )


def m004_generation_errors(db: sqlite3.Connection) -> None:
    # Why a generation call failed (the server refused it, or answered something that is not an
    # answer); NULL for calls that produced text.
    _run_script(db, "ALTER TABLE generations ADD COLUMN error TEXT;")


def m005_scores(db: sqlite3.Connection) -> None:
    # Quality scores: one per scored item (an instance of a kept task, or a trace) and scorer,
    # replaced when the item is scored again. `value` is NULL when the scorer could not score
    # the item (why is in `detail`); `model` is the scoring backend's description and
    # `settings` the scorer's, so two scores are only compared when they were made alike.
    _run_script(
        db,
        """
        CREATE TABLE scores (
            kind TEXT NOT NULL CHECK (kind IN ('instance', 'trace')),
            item_id INTEGER NOT NULL,
            scorer TEXT NOT NULL,
            value REAL,
            detail TEXT NOT NULL,
            model TEXT NOT NULL,
            settings TEXT NOT NULL,
            scored_at TEXT NOT NULL,
            PRIMARY KEY (kind, item_id, scorer)
        );
        CREATE INDEX scores_by_scorer ON scores(scorer, kind, value);
        """,
    )


def m006_trace_kinds(db: sqlite3.Connection) -> None:
    # The shape of a trace: "single" (one call a turn) or "parallel" (several calls in one
    # turn). Traces stored before it were all single.
    _run_script(db, "ALTER TABLE traces ADD COLUMN kind TEXT NOT NULL DEFAULT 'single';")


def m007_tool_sources(db: sqlite3.Connection) -> None:
    # Where each tool of the run came from: its MCP server ('' for a tools folder) and a hash
    # of its schema as the model was shown it, so that a replay can tell a changed tool.
    _run_script(
        db,
        """
        CREATE TABLE tool_sources (
            name TEXT PRIMARY KEY,
            server TEXT NOT NULL,
            schema_hash TEXT NOT NULL
        );
        """,
    )


def m008_tool_code(db: sqlite3.Connection) -> None:
    # The SHA-256 of the module file that declared each tool when the run started, so that an
    # export can say which code made its tool outputs. NULL in runs stored before this.
    _run_script(db, "ALTER TABLE run_tools ADD COLUMN source_sha256 TEXT;")


def m009_multiturn_seeds(db: sqlite3.Connection) -> None:
    # The follow-up turns of a multi-turn tool seed (a JSON list of {request, calls, answer});
    # NULL for the other seeds. A multi-turn trace needs no column of its own: its messages
    # hold the conversation, its checks the verdict of each turn.
    _run_script(db, "ALTER TABLE tool_seeds ADD COLUMN followups TEXT;")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_initial,
    m002_tool_traces,
    m003_curation,
    m004_generation_errors,
    m005_scores,
    m006_trace_kinds,
    m007_tool_sources,
    m008_tool_code,
    m009_multiturn_seeds,
]


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this database has not seen, each in its own transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT id FROM schema_migrations")}
    if done and max(done) > len(MIGRATIONS):
        raise StoreError("this run was written by a newer selfgen; upgrade selfgen to open it")
    for number, step in enumerate(MIGRATIONS, start=1):
        if number in done:
            continue
        with db:
            db.execute("BEGIN")
            step(db)
            db.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", (number, step.__name__, now())
            )
