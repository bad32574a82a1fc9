import json
import subprocess

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd
from test_loop_control import model

from selfgen.backends.base import get_backend
from selfgen.config import build_config
from selfgen.export import export_run, validation_path
from selfgen.loop import Loop
from selfgen.seeds import load_seed_tasks
from selfgen.store import RunStore


@pytest.fixture
def run_dir(tmp_path, scripted):
    scripted(model(instances_reply="\nInput: 2 + 2\nOutput: 4\nExample 2\nOutput: five\n"))
    cfg = build_config({}, {"backend": "scripted", "prompts_per_round": 2, "num_tasks": 6})
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    Loop(cfg, store, get_backend("scripted")).run()
    store.close()
    return tmp_path / "run"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_format_parses_line_by_line(run_dir, child_env):
    for fmt in ("alpaca", "openai", "sharegpt"):
        out = run_dir / f"{fmt}.jsonl"
        proc = subprocess.run(
            [*selfgen_cmd(), "export", str(run_dir), "--format", fmt, "--out", str(out)],
            capture_output=True,
            text=True,
            env=child_env,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"wrote 12 rows to {out}"
        rows = read_jsonl(out)
        assert len(rows) == 12  # 6 tasks x 2 instances
        for row in rows:
            if fmt == "alpaca":
                assert set(row) == {"instruction", "input", "output"}
            elif fmt == "openai":
                assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
                assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
            else:
                assert [t["from"] for t in row["conversations"]] == ["human", "gpt"]
    alpaca = read_jsonl(run_dir / "alpaca.jsonl")
    assert {(r["input"], r["output"]) for r in alpaca} == {("2 + 2", "4"), ("", "five")}
    openai = read_jsonl(run_dir / "openai.jsonl")
    assert openai[0]["messages"][0]["content"] == alpaca[0]["instruction"] + "\n\n2 + 2"


def test_split_by_task_and_seeds(run_dir):
    store = RunStore.open(run_dir)
    out = run_dir / "train.jsonl"
    counts = export_run(store, "alpaca", out, include_seeds=True, split=0.25, split_seed=3)
    n_seeds = len(load_seed_tasks(SEEDS))
    train, valid = read_jsonl(out), read_jsonl(validation_path(out))
    assert counts == {str(out): len(train), str(validation_path(out)): len(valid)}
    assert len(train) + len(valid) == n_seeds + 12
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in valid}
    again = run_dir / "again.jsonl"
    export_run(store, "alpaca", again, include_seeds=True, split=0.25, split_seed=3)
    assert read_jsonl(again) == train  # the split is reproducible


def test_failed_export_leaves_no_partial_file(run_dir, monkeypatch):
    store = RunStore.open(run_dir)
    out = run_dir / "x.jsonl"
    out.write_text("previous contents\n")
    import selfgen.export as export

    def broken(fmt, instruction, inst):
        raise RuntimeError("boom")

    monkeypatch.setattr(export, "to_row", broken)
    with pytest.raises(RuntimeError):
        export_run(store, "alpaca", out)
    assert out.read_text() == "previous contents\n"
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".x.jsonl")] == []


def scored(run_dir, values):
    """Give the run's instances `judge` scores from `values`, in instance order."""
    store = RunStore.open(run_dir)
    ids = [item_id for item_id, *_ in store.scorable_instances()]
    store.save_scores(
        "instance",
        "judge",
        [(i, v, {}) for i, v in zip(ids, values, strict=False)],
        model={"backend": "test"},
        settings={},
    )
    return store, ids


def test_export_selects_rows_by_score(run_dir, tmp_path, child_env):
    from selfgen.export import ExportError
    from selfgen.scoring.select import ScoreCondition, Selection

    store, ids = scored(run_dir, [5.0, 1.0, 4.5, None, 4.0, 2.0])
    assert len(ids) == 12  # two instances a task; the last six have no score
    judge4 = Selection((ScoreCondition.parse("judge>=4", minimum=True),))
    counts = export_run(store, "alpaca", tmp_path / "a.jsonl", selection=judge4)
    assert counts[str(tmp_path / "a.jsonl")] == 3  # 5.0, 4.5, 4.0: unscored rows never pass
    best = Selection((), 0.5, "judge")
    export_run(store, "alpaca", tmp_path / "b.jsonl", selection=best)
    rows = read_jsonl(tmp_path / "b.jsonl")
    assert len(rows) == 3  # the best half of the five scored instances, rounded up
    with pytest.raises(ExportError, match="the run has no 'ifd' scores"):
        export_run(
            store,
            "alpaca",
            tmp_path / "c.jsonl",
            selection=Selection((ScoreCondition.parse("ifd<1", minimum=False),)),
        )
    assert not (tmp_path / "c.jsonl").exists()
    # Seeds always pass; the flags say the same from the command line.
    store.close()
    proc = subprocess.run(
        [
            *selfgen_cmd(),
            "export",
            str(run_dir),
            "--format",
            "alpaca",
            "--out",
            str(tmp_path / "d.jsonl"),
        ]
        + ["--min-score", "judge>=4.5", "--include-seeds"],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seeds = sum(len(t.instances) for t in load_seed_tasks(SEEDS))
    assert proc.stdout.strip() == f"wrote {seeds + 2} rows to {tmp_path / 'd.jsonl'}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-score", "judge<=4"], "error: --min-score: 'judge<=4': a minimum uses '>=' or '>'"),
        (
            ["--top-fraction", "0.5"],
            "error: --top-fraction: give the scorer to rank by with --rank-by",
        ),
        (["--top-fraction", "0.5", "--rank-by", "nope"], "error: --rank-by: unknown scorer 'nope'"),
        (
            ["--max-score", "ifd<1"],
            "error: --max-score: the run has no 'ifd' scores",
        ),
    ],
)
def test_bad_score_flags_are_one_error(run_dir, tmp_path, child_env, flags, message):
    out = tmp_path / "x.jsonl"
    proc = subprocess.run(
        [*selfgen_cmd(), "export", str(run_dir), "--out", str(out), *flags],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_only_tasks_or_only_traces(tmp_path, scripted):
    from inspect_fixtures import fixture_run

    from selfgen.store import RunStore

    run = fixture_run(tmp_path / "run", scripted)
    store = RunStore.open(run)
    try:
        counts = {}
        for only in (None, "tasks", "traces"):
            out = tmp_path / f"{only}.jsonl"
            [counts[only]] = export_run(store, "openai", out, only=only).values()
            rows = read_jsonl(out)
            with_tools = [r for r in rows if "tools" in r]
            if only == "traces":
                assert rows and rows == with_tools
            if only == "tasks":
                assert rows and not with_tools
    finally:
        store.close()
    assert counts[None] == counts["tasks"] + counts["traces"]
