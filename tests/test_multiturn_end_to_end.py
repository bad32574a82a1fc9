"""A real run of multi-turn traces on the embedded default: the model writes the follow-ups,
each is filtered and run turn by turn, and the conversations are stored and exported.

Five rounds: the bundled model rarely gets a whole conversation through (see the README's
figures), but within them conversations pass their first turn, get follow-ups, and have those
filtered and checked."""

import json
import os
import sqlite3
import subprocess

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd
from fingerprint import check_fingerprint
from test_trace_kinds import _validate_and_render

pytestmark = pytest.mark.slow

MAX_ROUNDS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiturn") / "run"
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    proc = subprocess.run(
        [
            *selfgen_cmd(),
            "run",
            "--seeds",
            str(SEEDS),
            "--tools",
            "tools",
            "--trace-kinds",
            "multiturn",
            "--num-traces",
            "2",
            "-n",
            "1",
            "--seed",
            "1",
            "--max-rounds",
            str(MAX_ROUNDS),
            "--out",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _traces(run_dir):
    """The traces that reached a tool, each with its user messages and the stages of the
    generations of its steps."""
    db = sqlite3.connect(run_dir / "selfgen.db")
    db.row_factory = sqlite3.Row
    stages = dict(db.execute("SELECT id, stage FROM generations").fetchall())
    out = []
    for r in db.execute(
        "SELECT kind, fate, stage, reason, messages, checks, step_generation_ids FROM traces"
        " WHERE stage NOT IN ('parse', 'rules', 'rouge')"
    ):
        messages = json.loads(r["messages"])
        out.append(
            {
                **dict(r),
                "users": [m["content"] for m in messages if m["role"] == "user"],
                "checks": json.loads(r["checks"]),
                "steps": [stages[g] for g in json.loads(r["step_generation_ids"])],
            }
        )
    return out


def test_conversations_that_pass_a_turn_go_on_with_a_follow_up(run_dir):
    traces = _traces(run_dir)
    assert traces and {t["kind"] for t in traces} == {"multiturn"}
    # A conversation that passed its first turn was given a follow-up, written one to three
    # times. Its checks then speak of its last turn: `semantic` is the last turn's verdict, and
    # a follow-up's own checks are named `turn N ...`.
    followed = [t for t in traces if len(t["users"]) > 1]
    assert followed, f"no conversation of {len(traces)} passed its first turn"
    for t in traces:
        followups = len(t["users"]) - 1
        assert followups <= t["steps"].count("tool_followup") <= 3 * followups
        if t["checks"].get("semantic", {}).get("ok"):  # passed every turn it had
            assert followups >= 1, t
    # Some follow-up passed the filters and was run by the agent, turn 2 checked on its own.
    assert any("turn 2 semantic" in t["checks"] or "turn 2 format" in t["checks"] for t in traces)


def test_a_conversation_is_kept_whole_or_rejected_at_a_named_turn(run_dir):
    for t in _traces(run_dir):
        if t["fate"] == "kept" or t["reason"] == "target_reached":
            assert 2 <= len(t["users"]) <= 4
            assert all(c["ok"] for c in t["checks"].values()), t["checks"]
        elif len(t["users"]) > 1:
            assert t["reason"].startswith(f"turn {len(t['users'])}: "), t
            n = len(t["users"])
            assert not t["checks"][f"turn {n} {t['stage']}"]["ok"]
            assert not t["checks"][t["stage"]]["ok"]
        else:
            assert not t["reason"].startswith("turn "), t


def test_the_data_of_a_seed_fixed_multiturn_run_is_the_recorded_data(run_dir):
    check_fingerprint(run_dir, "multiturn")


def test_the_conversations_export_validate_and_render(run_dir, tmp_path, child_env):
    out = tmp_path / "traces.jsonl"
    sharegpt = tmp_path / "sharegpt.jsonl"
    for fmt, path in (("openai", out), ("sharegpt", sharegpt)):
        subprocess.run(
            [
                *selfgen_cmd(),
                "export",
                str(run_dir),
                "--format",
                fmt,
                "--out",
                str(path),
                "--include-failed",
            ],
            check=True,
            cwd=ROOT,
            env=child_env,
            timeout=300,
        )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with_calls = [r for r in rows if any(m.get("tool_calls") for m in r["messages"])]
    multi = [r for r in with_calls if sum(m["role"] == "user" for m in r["messages"]) > 1]
    assert multi
    _validate_and_render(with_calls)
    conversations = [
        json.loads(line)["conversations"] for line in sharegpt.read_text().splitlines()
    ]
    assert sum([t["from"] for t in c].count("human") > 1 for c in conversations) == len(multi)
    for c in conversations:
        for i, turn in enumerate(c):
            assert turn["from"] in (
                ("human", "observation") if i % 2 == 0 else ("gpt", "function_call")
            )
