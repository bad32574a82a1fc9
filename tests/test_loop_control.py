"""Control flow of the loop and the store, with a scripted model (the real model runs in
test_end_to_end.py)."""

import itertools
import sqlite3

import pytest
from conftest import SEEDS

from selfgen.backends.base import get_backend
from selfgen.config import RunConfig, build_config, conflicts
from selfgen.filters.parallel import ParallelRougeIndex
from selfgen.loop import Loop
from selfgen.seeds import load_seed_tasks
from selfgen.store import RunStore

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def fresh_instructions():
    """Instructions that never overlap each other (distinct word pairs)."""
    for a, b in itertools.permutations(WORDS, 2):
        yield f"Explain {a}{b} and {b}{a} with {a}{a}{b} details"


def model(instances_reply="\nInput: some input\nOutput: some output\n"):
    source = fresh_instructions()

    def reply(request):
        prompt = request.prompt
        if prompt.startswith("Come up with a series of tasks"):
            first = next(source)
            return f" {first}\n10. {next(source)}\n11. short\n12. {first}"
        if prompt.startswith("Can the following task"):
            return " No"
        return instances_reply

    return reply


def start(tmp_path, scripted, reply, **overrides):
    made = scripted(reply)
    cfg = build_config({}, {"backend": "scripted", "prompts_per_round": 2, **overrides})
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    backend = get_backend("scripted")
    return cfg, store, backend, made


def test_reaches_the_exact_target_and_records_every_fate(tmp_path, scripted):
    cfg, store, backend, _ = start(tmp_path, scripted, model(), num_tasks=5)
    result = Loop(cfg, store, backend).run()
    assert result.stop_reason == "reached the target of 5 kept tasks"
    assert result.totals.kept == 5
    rows = store.db.execute("SELECT stage, fate, reason FROM candidates").fetchall()
    reasons = {(r["stage"], r["reason"]) for r in rows if r["fate"] == "rejected"}
    assert ("rules", "too_short") in reasons
    assert ("rouge", "near_duplicate") in reasons  # item 12 repeats item 9
    assert ("instances", "target_reached") in reasons  # round 2 needs 1 of its 4 survivors
    # Every candidate that reached the ROUGE stage has its nearest neighbour and score.
    missing = store.db.execute(
        "SELECT COUNT(*) FROM candidates WHERE stage NOT IN ('parse', 'rules')"
        " AND (rouge_l IS NULL OR (rouge_l > 0 AND nearest IS NULL))"
    ).fetchone()[0]
    assert missing == 0
    assert store.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 5


def test_novelty_workers_give_the_decisions_of_one_process(tmp_path, scripted):
    # Each completion's items are judged as a batch on two worker processes: the near-duplicate
    # inside a completion (item 12 repeats item 9) and every score and nearest text must be
    # what one process decides, item by item.
    runs = {}
    for workers in (1, 2):
        cfg, store, backend, _ = start(
            tmp_path / str(workers), scripted, model(), num_tasks=6, novelty_workers=workers
        )
        loop = Loop(cfg, store, backend)
        assert isinstance(loop.instructions.novelty.index, ParallelRougeIndex) == (workers == 2)
        loop.run()
        runs[workers] = store.db.execute(
            "SELECT instruction, stage, fate, reason, rouge_l, nearest FROM candidates ORDER BY id"
        ).fetchall()
    assert [tuple(r) for r in runs[2]] == [tuple(r) for r in runs[1]]
    assert ("rouge", "near_duplicate") in {(r["stage"], r["reason"]) for r in runs[2]}
    assert sum(r["fate"] == "kept" for r in runs[2]) == 6


def test_patience_stops_a_run_that_keeps_nothing(tmp_path, scripted):
    cfg, store, backend, _ = start(
        tmp_path,
        scripted,
        model(instances_reply="\nInput: same\nOutput: same\n"),
        num_tasks=5,
        patience=3,
    )
    result = Loop(cfg, store, backend).run()
    assert result.stop_reason == "no task kept in the last 3 rounds (--patience)"
    assert result.totals.rounds == 3
    reasons = {r[0] for r in store.db.execute("SELECT reason FROM candidates")}
    assert "no_valid_instance:input_equals_output" in reasons


def test_round_and_token_budgets(tmp_path, scripted):
    cfg, store, backend, _ = start(tmp_path, scripted, model(), num_tasks=100, max_rounds=2)
    assert Loop(cfg, store, backend).run().stop_reason == "reached --max-rounds 2"
    cfg, store, backend, _ = start(tmp_path / "b", scripted, model(), num_tasks=100, token_budget=1)
    result = Loop(cfg, store, backend).run()
    assert result.stop_reason.startswith("spent the token budget")
    assert result.totals.rounds == 1


def test_failed_round_commit_leaves_nothing(tmp_path, scripted, monkeypatch):
    cfg, store, backend, _ = start(tmp_path, scripted, model(), num_tasks=100, max_rounds=1)
    Loop(cfg, store, backend).run()
    before = [
        store.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("rounds", "generations", "candidates", "instances")
    ]

    real_execute = store.db.execute
    calls = itertools.count()

    def failing_execute(sql, *args):
        if sql.startswith("INSERT INTO candidates") and next(calls) == 3:
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return real_execute(sql, *args)

    loop = Loop(build_config(cfg.to_dict(), {"max_rounds": 2}), store, backend)
    monkeypatch.setattr(store, "db", _Proxy(store.db, failing_execute))
    with pytest.raises(sqlite3.OperationalError):
        loop.run()
    monkeypatch.undo()
    after = [
        store.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("rounds", "generations", "candidates", "instances")
    ]
    assert after == before


class _Proxy:
    """A connection whose execute can fail on purpose; everything else is the real one."""

    def __init__(self, db, execute):
        self._db, self.execute = db, execute

    def __getattr__(self, name):
        return getattr(self._db, name)

    def __enter__(self):
        return self._db.__enter__()

    def __exit__(self, *exc):
        return self._db.__exit__(*exc)


def test_resume_continues_to_a_larger_target_without_duplicates(tmp_path, scripted):
    cfg, store, backend, _ = start(tmp_path, scripted, model(), num_tasks=3)
    Loop(cfg, store, backend).run()
    store.close()
    store = RunStore.open(tmp_path / "run")
    cfg2 = build_config(store.config(), {"num_tasks": 6})
    result = Loop(cfg2, store, get_backend("scripted")).run()
    assert result.totals.kept == 6
    kept = store.kept_instructions()
    assert len(kept) == len(set(kept)) == 6


def test_conflicting_settings_are_named():
    stored = RunConfig(seed=1)
    assert conflicts(stored, {"seed": 2, "num_tasks": 50}) == ["--seed 2 (this run has 1)"]
    assert conflicts(stored, {"seed": 1, "patience": 3}) == []


def test_migrations_are_recorded_once(tmp_path, scripted):
    _, store, _, _ = start(tmp_path, scripted, model())
    store.close()
    store = RunStore.open(tmp_path / "run")
    rows = store.db.execute("SELECT id, name FROM schema_migrations").fetchall()
    assert [tuple(r) for r in rows] == [
        (1, "m001_initial"),
        (2, "m002_tool_traces"),
        (3, "m003_curation"),
        (4, "m004_generation_errors"),
        (5, "m005_scores"),
        (6, "m006_trace_kinds"),
        (7, "m007_tool_sources"),
        (8, "m008_tool_code"),
        (9, "m009_multiturn_seeds"),
    ]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
