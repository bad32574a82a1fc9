"""The scorers on the bundled model through llama.cpp: they tell good data from bad on pairs
built for it, and `selfgen score` / `selfgen run --score` work end to end."""

import json
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd
from test_loop_control import model

from selfgen.backends.base import get_backend
from selfgen.config import build_config
from selfgen.loop import Loop
from selfgen.sandbox import ToolSandbox
from selfgen.scoring import Example, TraceExample, get_scorer
from selfgen.seeds import load_seed_tasks
from selfgen.store import RunStore

# Each instruction with its right output; every other output is a wrong answer to it.
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("List three primary colours.", "Red, blue and yellow."),
    (
        "Write a haiku about the sea.",
        "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide breathes and sleeps.",
    ),
]


@pytest.fixture(scope="module")
def llama():
    backend = get_backend("llamacpp", n_ctx=2048)
    yield backend
    backend.close()


def test_ifd_prefers_the_output_that_answers_its_instruction(llama):
    ifd = get_scorer("ifd", llama)
    right = ifd.score([Example(q, "", a) for q, a in PAIRS])
    wins = []
    for shift in (1, 2):
        wrong = ifd.score(
            [Example(q, "", PAIRS[(i + shift) % len(PAIRS)][1]) for i, (q, _) in enumerate(PAIRS)]
        )
        # Lower is better: the instruction explains the output.
        wins.append([good.value < bad.value for good, bad in zip(right, wrong, strict=True)])
    # The three factual pairs are right every time. The haiku is not always: a short unrelated
    # sentence can be likelier after "Write a haiku" than a real haiku is (a known weakness of
    # IFD on open-ended outputs, and the reason the benchmark measures it on real data).
    assert all(w[:3] == [True, True, True] for w in wins)
    assert sum(map(sum, wins)) >= 7
    assert all(0 < s.value < 1 for s in right)
    # Deterministic: the same examples give the same numbers.
    again = ifd.score([Example(q, "", a) for q, a in PAIRS])
    assert [s.value for s in again] == [s.value for s in right]


def test_the_judge_answers_a_digit_by_constrained_choice(llama):
    judge = get_scorer("judge", llama, mode="choice")
    examples = [Example(q, "", a) for q, a in PAIRS]
    first = judge.score(examples)
    assert all(s.value in (1.0, 2.0, 3.0, 4.0, 5.0) for s in first)
    assert [s.value for s in judge.score(examples)] == [s.value for s in first]
    weighted = get_scorer("judge", llama).score(examples[:1])[0]
    assert 1.0 <= weighted.value <= 5.0 and sum(weighted.detail["probabilities"]) == pytest.approx(
        1
    )


def trace(result: str) -> TraceExample:
    return TraceExample(
        (
            {"role": "user", "content": "What is 17 times 23, plus 4?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {
                            "name": "calculator",
                            "arguments": json.dumps({"expression": "17 * 23 + 4"}),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": result},
            {"role": "assistant", "content": "17 times 23, plus 4, is 395."},
        )
    )


def test_toolformer_credits_the_real_tool_result_over_a_wrong_one(llama):
    with ToolSandbox(ROOT / "tools", timeout_s=30) as box:
        result = box.call("calculator", {"expression": "17 * 23 + 4"})
    assert result.ok and result.output.strip() == "395"
    real, wrong = get_scorer("toolformer", llama).score([trace(result.output), trace("12")])
    assert real.value > wrong.value
    assert real.detail["loss_with_results"] < wrong.detail["loss_with_results"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score_cli(args, env, timeout=600):
    return subprocess.run(
        [*selfgen_cmd(), "score", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def test_score_a_data_set_in_each_format(tmp_path, child_env):
    q, a = PAIRS[0]
    rows = [
        {"id": "alpaca-1", "instruction": q, "input": "", "output": a},
        {
            "id": "openai-1",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        },
        {
            "id": "sharegpt-1",
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
        },
        {"id": "trace-1", "messages": list(trace("395").messages)},
    ]
    src = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    proc = score_cli(
        [str(src), "--scorer", "ifd,toolformer", "--out", str(out), "--log-format", "json"],
        child_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote 4 scored rows to {out}"
    # Its log: a "done" event for each scorer, with what it scored.
    done = [json.loads(line) for line in proc.stderr.splitlines() if '"event": "done"' in line]
    assert {(e["task"], e["done"], e["total"]) for e in done} == {
        ("ifd", 3, 3),
        ("toolformer", 1, 1),
    }
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == [r["id"] for r in rows]  # the rows' own fields kept
    ifds = [r["scores"]["ifd"] for r in scored[:3]]
    assert ifds[0] == pytest.approx(ifds[1]) == pytest.approx(ifds[2])  # one example, 3 formats
    assert scored[3]["scores"]["ifd"] is None and scored[3]["scores"]["toolformer"] is not None
    assert all(r["scores"]["toolformer"] is None for r in scored[:3])


def test_a_bad_data_set_is_one_error_and_nothing_is_written(tmp_path, child_env):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"instruction": "Hi", "input": "", "output": "Hello"}) + "\n{oops\n")
    out = tmp_path / "scored.jsonl"
    proc = score_cli([str(src), "--scorer", "ifd", "--out", str(out)], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {src}:2: not valid JSON (Expecting property name enclosed in double quotes"
        " at column 2)"
    ]
    assert not out.exists()
    proc = score_cli([str(src), "--scorer", "nope", "--out", str(out)], child_env)
    assert proc.returncode == 2 and not out.exists()


@pytest.fixture
def run_dir(tmp_path, scripted):
    """A finished run of 20 tasks (40 instances) made with a scripted model."""
    scripted(model(instances_reply="\nInput: 2 + 2\nOutput: 4\nExample 2\nOutput: five\n"))
    cfg = build_config({}, {"backend": "scripted", "prompts_per_round": 2, "num_tasks": 20})
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    Loop(cfg, store, get_backend("scripted")).run()
    store.close()
    return tmp_path / "run"


def scores_in(run_dir):
    db = sqlite3.connect(run_dir / "selfgen.db")
    try:
        return dict(db.execute("SELECT item_id, value FROM scores WHERE scorer = 'ifd'"))
    finally:
        db.close()


@pytest.mark.slow  # three scoring processes of the bundled model
def test_scoring_a_run_killed_half_way_goes_on_where_it_stopped(run_dir, tmp_path, child_env):
    whole = tmp_path / "whole"
    subprocess.run(["cp", "-r", str(run_dir), str(whole)], check=True)
    proc = score_cli([str(whole), "--scorer", "ifd", "-q"], child_env)
    assert proc.returncode == 0, proc.stderr
    expected = scores_in(whole)
    assert len(expected) == 40

    run = subprocess.Popen(
        [*selfgen_cmd(), "score", str(run_dir), "--scorer", "ifd", "-q"],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600  # only stops a scoring that never stores a batch
    while run.poll() is None and not scores_in(run_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert 0 < len(scores_in(run_dir)) < 40  # some batches stored, not all
    proc = score_cli([str(run_dir), "--scorer", "ifd", "-q"], child_env)
    assert proc.returncode == 0, proc.stderr
    assert scores_in(run_dir) == expected  # the same scores, each once
    stats = json.loads(
        subprocess.run(
            [*selfgen_cmd(), "stats", str(run_dir), "--json"],
            capture_output=True,
            text=True,
            env=child_env,
            cwd=ROOT,
            timeout=120,
        ).stdout
    )
    [ifd] = stats["scores"]
    assert (ifd["scorer"], ifd["kind"], ifd["scored"]) == ("ifd", "instance", 40)


@pytest.mark.slow  # a run of the bundled model
def test_run_scores_in_the_loop_and_rejects_by_score(tmp_path, child_env):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--seeds", str(SEEDS), "--out", str(out), "-n", "3"]
        + [
            "--seed",
            "2",
            "--prompts-per-round",
            "2",
            "--score",
            "ifd",
            "--max-score",
            "ifd<0.8",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = sqlite3.connect(out / "selfgen.db")
    kept_instances = db.execute(
        "SELECT COUNT(*) FROM instances i JOIN candidates c ON c.id = i.candidate_id"
        " WHERE c.fate = 'kept'"
    ).fetchone()[0]
    scored = db.execute(
        "SELECT COUNT(*), MAX(value) FROM scores WHERE scorer = 'ifd' AND kind = 'instance'"
    ).fetchone()
    assert scored[0] == kept_instances > 0
    # A kept task's mean IFD passed the condition; a rejected one says why.
    for (mean,) in db.execute(
        "SELECT AVG(s.value) FROM scores s JOIN instances i ON i.id = s.item_id"
        " GROUP BY i.candidate_id"
    ):
        assert mean < 0.8
    for (reason,) in db.execute(
        "SELECT reason FROM candidates WHERE stage = 'score' AND reason != 'target_reached'"
    ):
        assert reason.startswith("ifd=") and reason.endswith("(needs ifd<0.8)")
    assert db.execute("SELECT COUNT(*) FROM candidates WHERE fate = 'kept'").fetchone()[0] == 3


@pytest.mark.parametrize("threshold", [-100, 100])
def test_traces_are_scored_in_the_loop_and_rejected_by_score(tmp_path, scripted, llama, threshold):
    """The run's traces come from a scripted model (fast); toolformer scores them with the
    bundled model. Every trace that passes the semantic check is scored; with a condition no
    trace can meet, each is rejected at stage `score`; with one every trace meets, the kept
    trace's score is stored with the scorer's settings."""
    from inspect_fixtures import scripted_model

    from selfgen.scoring.select import ScoreCondition
    from selfgen.seeds import load_tool_seeds
    from selfgen.stages.score import ScoreStage
    from selfgen.tooling import tool_specs

    cfg = build_config(
        {},
        {
            "backend": "scripted",
            "prompts_per_round": 2,
            "num_tasks": 1,
            "num_traces": 1,
            "trace_prompts_per_round": 1,
            "target_tools": "off",  # the scripted model writes one list for all the tools
            "max_rounds": 1,
            "tools": str(ROOT / "tools"),
            "tool_seeds": str(ROOT / "seeds" / "tool_seed_tasks.jsonl"),
        },
    )
    scripted(scripted_model(cfg.seed))
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    store.save_tools(tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds))
    condition = ScoreCondition.parse(f"toolformer>={threshold}", minimum=True)
    scoring = ScoreStage([get_scorer("toolformer", llama)], [condition], {"toolformer": "bundled"})
    with ToolSandbox(cfg.tools) as sandbox:
        Loop(cfg, store, get_backend("scripted"), sandbox=sandbox, scoring=scoring).run()
    db = store.db
    answered = db.execute(
        "SELECT fate, stage, reason, checks FROM traces WHERE stage IN ('score', 'verified')"
    ).fetchall()
    assert answered, "no trace passed the semantic check"
    stored = db.execute(
        "SELECT t.fate, s.value, s.settings FROM scores s JOIN traces t ON t.id = s.item_id"
        " WHERE s.kind = 'trace' AND s.scorer = 'toolformer'"
    ).fetchall()
    if threshold < 0:
        assert [fate for fate, *_ in answered].count("kept") == 1
        [(fate, value, settings)] = stored  # the kept trace's, with how it was made
        assert fate == "kept" and value > threshold and json.loads(settings)["tau"] == 0.5
    else:
        assert stored == []  # a rejected trace's score is in its reason
        for fate, stage, reason, checks in answered:
            assert (fate, stage) == ("rejected", "score")
            assert reason.startswith("toolformer=") and reason.endswith("(needs toolformer>=100)")
            assert json.loads(checks)["semantic"]["ok"] and not json.loads(checks)["score"]["ok"]
    store.close()
