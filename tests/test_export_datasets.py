"""Exports that people load as they are: provenance metadata on every row, a Hugging Face
dataset folder with its card (loaded by the real `datasets` library), and LLaMA-Factory's
`dataset_info.json` beside a `sharegpt` export."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, ScriptedBackend, selfgen_cmd
from inspect_fixtures import fixture_run

from selfgen.backends.base import register_backend
from selfgen.export import export_run
from selfgen.hf_export import export_hf
from selfgen.provenance import listed_texts
from selfgen.store import RunStore

METADATA_KEYS = {
    "run_id",
    "kind",
    "id",
    "instance_id",
    "round",
    "origin",
    "prompt_examples",
    "nearest",
    "scores",
    "curation",
    "model",
    "sampling",
    "selfgen_version",
    "tools",
}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """The inspector's fixture run (4 kept tasks, 1 verified trace), with judge scores on its
    instances and one task accepted by hand."""

    def scripted(reply):
        register_backend("scripted", lambda **_: ScriptedBackend(reply))

    run = fixture_run(tmp_path_factory.mktemp("datasets") / "run", scripted)
    store = RunStore.open(run)
    ids = [item_id for item_id, *_ in store.scorable_instances()]
    store.save_scores(
        "instance",
        "judge",
        [(i, 1.0 + n, {}) for n, i in enumerate(ids[:3])],
        model={"backend": "test"},
        settings={},
    )
    first_task = next(store.kept_tasks())[0]["id"]
    store.curate("task", first_task, "accepted")
    store.close()
    return run


@pytest.fixture
def run_dir(fixture_dir, tmp_path):
    return shutil.copytree(fixture_dir, tmp_path / "run")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli(args, child_env):
    return subprocess.run(
        [*selfgen_cmd(), *args],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=600,
    )


def test_metadata_says_where_each_row_came_from(run_dir, tmp_path):
    store = RunStore.open(run_dir)
    out = tmp_path / "rows.jsonl"
    export_run(store, "openai", out, include_seeds=True, with_metadata=True)
    rows = read_jsonl(out)
    plain = tmp_path / "plain.jsonl"
    export_run(store, "openai", plain, include_seeds=True)
    # The flag only adds the metadata; without it rows are as trainers expect them.
    assert [{k: v for k, v in r.items() if k != "metadata"} for r in rows] == read_jsonl(plain)
    assert all("metadata" not in r for r in read_jsonl(plain))
    metas = [r["metadata"] for r in rows]
    assert all(set(m) == METADATA_KEYS for m in metas)
    assert len({m["run_id"] for m in metas}) == 1

    db = store.db
    texts = {
        f"seed:{r[0]}": r[1] for r in db.execute("SELECT seed_id, instruction FROM seed_tasks")
    }
    texts |= {f"task:{r[0]}": r[1] for r in db.execute("SELECT id, instruction FROM candidates")}
    texts |= {
        f"tool_seed:{r[0]}": r[1] for r in db.execute("SELECT seed_id, request FROM tool_seeds")
    }
    texts |= {f"trace:{r[0]}": r[1] for r in db.execute("SELECT id, request FROM traces")}
    config = store.config()

    seeds = [m for m in metas if m["origin"] == "seed"]
    assert seeds and all(m["id"] in texts and m["round"] is None for m in seeds)

    tasks = [(r, m) for r, m in zip(rows, metas, strict=True) if m["kind"] == "task"]
    machine = [(r, m) for r, m in tasks if m["origin"] == "machine"]
    assert len({m["id"] for _, m in machine}) == 4  # the four kept tasks
    for row, m in machine:
        cid = int(m["id"].split(":")[1])
        stored = db.execute(
            "SELECT c.instruction, c.round_id, c.nearest, c.rouge_l, g.prompt FROM candidates c"
            " JOIN generations g ON g.id = c.generation_id WHERE c.id = ?",
            (cid,),
        ).fetchone()
        instance = db.execute(
            "SELECT candidate_id, output FROM instances WHERE id = ?", (m["instance_id"],)
        ).fetchone()
        assert tuple(instance) == (cid, row["messages"][1]["content"])
        assert row["messages"][0]["content"].startswith(stored[0])
        assert m["round"] == stored[1]
        assert m["nearest"]["text"] == stored[2] and m["nearest"]["rouge_l"] == stored[3]
        assert texts[m["nearest"]["id"]] == stored[2]
        # Every example the prompt showed is named, in the prompt's order.
        shown = listed_texts(stored[4])
        assert len(shown) == config["seed_instructions"] + config["machine_instructions"]
        assert [texts[i] for i in m["prompt_examples"]] == shown
        sampling = m["sampling"]["instructions"]
        assert sampling["temperature"] == config["temperature"] and sampling["seed"] is not None
        assert m["sampling"]["instances"] is not None
        assert m["model"]["backend"] == "scripted"
        assert m["selfgen_version"]["run"] == "test"
    # Round 2's prompts showed machine instructions kept in round 1.
    assert any(i.startswith("task:") for _, m in machine for i in m["prompt_examples"])
    judged = [m["scores"]["judge"] for _, m in machine]
    assert sorted(v for v in judged if v is not None) == [1.0, 2.0, 3.0]
    assert {m["curation"] for _, m in machine} == {"accepted", None}

    tool_seeds = [m for m in metas if m["kind"] == "trace" and m["origin"] == "seed"]
    assert tool_seeds and all(m["id"].startswith("tool_seed:") for m in tool_seeds)
    [trace] = [m for m in metas if m["kind"] == "trace" and m["origin"] == "machine"]
    assert trace["prompt_examples"] and all(
        i.startswith(("tool_seed:", "trace:")) for i in trace["prompt_examples"]
    )
    calculator = hashlib.sha256((ROOT / "tools" / "calculator.py").read_bytes()).hexdigest()
    assert trace["tools"] == [{"name": "calculator", "source_sha256": calculator}]
    assert trace["sampling"]["tool_requests"] is not None
    assert trace["sampling"]["tool_agent"] is not None
    assert trace["sampling"]["instructions"] is None
    # Every row names the same scorers and the same stages, whatever it is: a reader that
    # takes the schema from the first rows, or re-parses fields whose keys differ from row to
    # row (as `datasets` does, losing digits), reads every row alike.
    assert all(set(m["scores"]) == {"judge"} for m in metas)
    assert len({tuple(m["sampling"]) for m in metas}) == 1
    store.close()


def load_with_datasets(paths, tmp_path):
    """What the real `datasets` library loads from each path (see load_with_datasets.py)."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "load_with_datasets.py"), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def no_nulls(value):
    """A row without null values: a table gives every row every key, null where absent."""
    if isinstance(value, dict):
        kept = {k: no_nulls(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [no_nulls(v) for v in value]
    return value


def assert_close(got, want):
    """`got == want`, floats to 1e-9 of each other."""
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (got, want)
        for key in want:
            assert_close(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)
    else:
        assert got == want


def test_hf_folder_and_every_jsonl_format_load_with_datasets(run_dir, tmp_path, child_env):
    from huggingface_hub import DatasetCard

    hf = tmp_path / "hf"
    proc = cli(
        ["export", str(run_dir), "--format", "hf", "--out", str(hf)]
        + ["--include-seeds", "--with-metadata", "--split", "0.5", "--license", "apache-2.0"],
        child_env,
    )
    assert proc.returncode == 0, proc.stderr
    train_file = hf / "data" / "train-00000-of-00001.parquet"
    valid_file = hf / "data" / "validation-00000-of-00001.parquet"
    lines = proc.stdout.strip().splitlines()
    counts = {line.rsplit(" to ", 1)[1]: int(line.split()[1]) for line in lines}
    assert set(counts) == {str(train_file), str(valid_file)}
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "data"]

    jsonl = {}
    for fmt in ("alpaca", "openai", "sharegpt"):
        for meta in (False, True):
            path = tmp_path / f"{fmt}{'-meta' if meta else ''}.jsonl"
            store = RunStore.open(run_dir)
            export_run(store, fmt, path, include_seeds=True, with_metadata=meta)
            store.close()
            jsonl[str(path)] = read_jsonl(path)
    loaded = load_with_datasets([hf, *jsonl], tmp_path)

    splits = loaded[str(hf)]
    assert set(splits) == {"train", "validation"}
    assert {k: len(v) for k, v in splits.items()} == {
        "train": counts[str(train_file)],
        "validation": counts[str(valid_file)],
    }
    assert counts[str(valid_file)] > 0
    # The folder holds the openai export's rows, tools as a JSON string.
    openai = jsonl[str(tmp_path / "openai-meta.jsonl")]
    hf_rows = splits["train"] + splits["validation"]
    for row in hf_rows:
        row["tools"] = json.loads(row["tools"]) if row["tools"] else None
    key = lambda r: json.dumps(no_nulls(r), sort_keys=True)  # noqa: E731
    assert sorted(map(key, hf_rows)) == sorted(map(key, openai))
    # The tool seeds come with --include-seeds, as trace rows; then the one verified trace.
    seeds = [r for r in hf_rows if r["tools"] and r["metadata"]["origin"] == "seed"]
    store = RunStore.open(run_dir)
    assert {r["metadata"]["id"] for r in seeds} == {f"tool_seed:{s.id}" for s in store.tool_seeds()}
    store.close()
    [trace] = [r for r in hf_rows if r["tools"] and r["metadata"]["origin"] == "machine"]
    assert [t["function"]["name"] for t in trace["tools"]][:2] == ["add_days", "calculator"]
    assert trace["messages"][1]["tool_calls"][0]["function"]["name"] == "calculator"
    # No task has instances in both splits.
    ids = {s: {r["metadata"]["id"] for r in rows} for s, rows in splits.items()}
    assert not ids["train"] & ids["validation"]

    for path, rows in jsonl.items():
        got = [no_nulls(r) for r in loaded[path]["train"]]
        if "openai" in path:
            # A message's keys differ from turn to turn, so `datasets` re-parses these files
            # through pandas' JSON reader, which rounds floats in their last digits.
            assert len(got) == len(rows)
            for a, b in zip(got, rows, strict=True):
                assert_close(a, no_nulls(b))
        else:
            assert got == [no_nulls(r) for r in rows]

    card = DatasetCard.load(hf / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["language"] == ["en"]
    assert data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"]
    assert "tool-use" in data["tags"]
    assert data["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-00000-of-00001.parquet"},
        {"split": "validation", "path": "data/validation-00000-of-00001.parquet"},
    ]
    text = card.text
    for heading in ("## How it was made", "### The funnel", "### Tools", "## Known limits"):
        assert heading in text
    assert "16 candidate instructions in 2 rounds; 4 kept" in text
    assert "| rules | 3 |" in text
    assert "| judge | instance | 3 |" in text
    calculator = hashlib.sha256((ROOT / "tools" / "calculator.py").read_bytes()).hexdigest()
    assert f"| `calculator` | 1 | 1 | 1 | 1 | 100% | `{calculator}` |" in text


def test_hf_export_refuses_a_folder_it_did_not_write(run_dir, tmp_path, child_env):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    proc = cli(["export", str(run_dir), "--format", "hf", "--out", str(busy)], child_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: --out: {busy} is a folder with other files in it")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".busy")] == []

    # An earlier export is replaced whole.
    store = RunStore.open(run_dir)
    out = tmp_path / "hf"
    first = export_hf(store, out, name="run", include_seeds=True)
    second = export_hf(store, out, name="run")
    assert sum(first.values()) > sum(second.values())
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")] == []
    store.close()


# LLaMA-Factory's sharegpt reader (src/llamafactory/data/converter.py, SharegptDatasetConverter):
# turn i must carry a user or observation tag when i is even, an assistant or function tag when
# odd, and a conversation (after an optional system turn) has an even number of turns.
ODD_EVEN = ({"human", "observation"}, {"gpt", "function_call"})


def test_sharegpt_writes_llamafactory_dataset_info(run_dir, tmp_path):
    store = RunStore.open(run_dir)
    info_path = tmp_path / "dataset_info.json"
    info_path.write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    out = tmp_path / "selfgen.jsonl"
    export_run(store, "sharegpt", out, split=0.5, with_metadata=True)
    info = json.loads(info_path.read_text())
    assert set(info) == {"alpaca_en_demo", "selfgen", "selfgen.valid"}
    entry = info["selfgen"]
    assert entry == {
        "file_name": "selfgen.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "observation_tag": "observation",
            "function_tag": "function_call",
            "system_tag": "system",
        },
    }
    assert info["selfgen.valid"]["file_name"] == "selfgen.valid.jsonl"
    rows = read_jsonl(out) + read_jsonl(tmp_path / "selfgen.valid.jsonl")
    tags = {t["from"] for r in rows for t in r["conversations"]}
    turn_tags = ("user_tag", "assistant_tag", "observation_tag", "function_tag")
    assert tags == {entry["tags"][t] for t in turn_tags}
    for row in rows:
        turns = row[entry["columns"]["messages"]]
        assert len(turns) % 2 == 0
        assert all(t["from"] in ODD_EVEN[i % 2] for i, t in enumerate(turns))
    [trace] = [r for r in rows if "tools" in r]
    tools = json.loads(trace[entry["columns"]["tools"]])
    assert {t["name"] for t in tools} >= {"calculator", "date_diff"}
    call = json.loads(trace["conversations"][1]["value"])
    assert call == {"name": "calculator", "arguments": {"expression": "48 * 12 + 7"}}

    # An unreadable dataset_info.json stops the export before anything is written.
    info_path.write_text("{not json")
    again = tmp_path / "again.jsonl"
    with pytest.raises(ValueError, match="dataset_info.json exists and is not a readable JSON"):
        export_run(store, "sharegpt", again)
    assert not again.exists() and info_path.read_text() == "{not json"
    store.close()
