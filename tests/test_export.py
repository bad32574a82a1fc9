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
