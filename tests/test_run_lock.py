"""One writer per run store: a second writer is refused naming the first, readers go on, and a
lock left by a killed process blocks nothing. The store's lock alone first (real SQLite, real
processes), then two real `selfgen run`s of the bundled model on one store."""

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, SEEDS, Lines, selfgen_cmd
from test_end_to_end import check_whole, rounds_in

from selfgen.config import build_config
from selfgen.seeds import load_seed_tasks
from selfgen.store import LOCK_NAME, RunStore, StoreError, StoreLockedError


def new_store(out):
    cfg = build_config({}, {"num_tasks": 3})
    return RunStore.create(out, cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")


def test_a_second_writer_is_refused_and_readers_go_on(tmp_path):
    out = tmp_path / "run"
    writer = new_store(out)  # a new store is opened as its run's writer
    recorded = json.loads((out / LOCK_NAME).read_text())
    with pytest.raises(StoreLockedError) as refused:
        RunStore.open(out, writer=True)
    assert str(refused.value) == (
        f"{out}: another selfgen run is writing this run store (pid {recorded['pid']} on"
        f" {socket.gethostname()}, started {recorded['started']}); wait for it to end or stop"
        " it, then run again"
    )
    reader = RunStore.open(out)
    assert reader.figures()["rounds"] == 0
    reader.close()
    writer.close()
    RunStore.open(out, writer=True).close()  # closing the writer let go of the lock


def test_a_run_starting_in_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    writer = new_store(out)
    with pytest.raises(StoreLockedError):
        new_store(out)
    writer.close()
    # Both saw no store and loaded their models; the first has created it since.
    with pytest.raises(StoreError, match="another selfgen run has just started here"):
        new_store(out)
    assert RunStore.open(out).totals().rounds == 0  # the first one's store, untouched


HOLDER = textwrap.dedent(
    """
    import sys, time
    from selfgen.store import RunStore
    store = RunStore.open(sys.argv[1], writer=True)
    print("holding", flush=True)
    time.sleep(3600)
    """
)


def test_a_lock_left_by_a_killed_process_is_taken_over_at_once(tmp_path):
    out = tmp_path / "run"
    new_store(out).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    Lines(holder.stdout).wait_for(lambda line: line == "holding", seconds=120)
    with pytest.raises(StoreLockedError, match=f"pid {holder.pid} on"):
        RunStore.open(out, writer=True)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind
    store = RunStore.open(out, writer=True)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] != holder.pid
    store.close()


# The real thing. With one prompt a round, round 1 writes a couple of candidates, so a run to
# 3 tasks is between its rounds once round 1 is committed. How many round 1 keeps depends on
# what the model writes, and that depends on the CPU (llama.cpp's arithmetic): 2 on one
# machine, 1 on another. The tests read it from the run instead of assuming it.
RUN = ["--seeds", str(SEEDS), "-n", "3", "--seed", "4", "--prompts-per-round", "1"]
ROUND_DONE = re.compile(r"round (\d+) done: kept (\d+)/3, ")


def kept_after(line):
    """The round number and the tasks kept so far, from a plain `round N done:` line."""
    match = ROUND_DONE.match(line)
    assert match, line
    return int(match[1]), int(match[2])


def start_run(out, child_env, *flags):
    return subprocess.Popen(
        [*selfgen_cmd(), "run", "--out", str(out), *flags],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def selfgen(args, child_env):
    return subprocess.run(
        [*selfgen_cmd(), *args],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=1200,  # only stops a hung run (one round took 10 min here under load)
    )


@pytest.mark.slow
def test_a_second_run_is_refused_while_the_first_writes(tmp_path, child_env):
    out = tmp_path / "run"
    first = start_run(out, child_env, *RUN, "--log-format", "json")
    log = Lines(first.stderr)
    round_1 = json.loads(log.wait_for(lambda line: line.startswith('{"event": "round"')))
    # Stopped between its rounds, the first run is alive and holds the lock for as long as
    # the test needs, whatever the speed of this machine.
    first.send_signal(signal.SIGSTOP)
    try:
        assert rounds_in(out) == 1
        assert round_1["round"] == 1
        kept_1 = round_1["kept"]
        assert kept_1 < 3, "round 1 reached the target: this test needs a run between rounds"
        second = selfgen(["run", "--out", str(out), "-n", "5"], child_env)
        assert second.returncode == 1
        [line] = second.stderr.splitlines()
        assert line.startswith(
            f"error: {out}: another selfgen run is writing this run store"
            f" (pid {first.pid} on {socket.gethostname()}, started "
        )
        # It wrote nothing: not even the new target it was given.
        db = sqlite3.connect(out / "selfgen.db")
        assert json.loads(db.execute("SELECT config FROM run").fetchone()[0])["num_tasks"] == 3
        db.close()
        # Readers work while the run holds the store.
        stats = selfgen(["stats", str(out), "--json"], child_env)
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["kept"] == kept_1
        exported = selfgen(["export", str(out), "--out", str(tmp_path / "x.jsonl")], child_env)
        assert exported.returncode == 0, exported.stderr
        assert len((tmp_path / "x.jsonl").read_text().splitlines()) >= kept_1
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=1200) == 0, "\n".join(log.all())
    check_whole(out, 3)
    # Its log, one JSON event a line: the start, the rounds, the rejections, the stop.
    events = [json.loads(line) for line in log.all()]
    assert events[0]["event"] == "start" and events[0]["resumed"] is False
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == list(range(1, len(rounds) + 1))
    assert rounds[0]["kept"] == kept_1 and rounds[-1]["kept"] == 3
    assert all(e["target"] == 3 for e in rounds)
    assert all(a["kept"] <= b["kept"] for a, b in zip(rounds, rounds[1:], strict=False))
    assert rounds_in(out) == len(rounds)
    assert events[-1] == {
        **events[-1],
        "event": "stopped",
        "reason": "reached the target of 3 kept tasks",
        "kept": 3,
    }
    for event in events:
        if event["event"] == "rejected":
            assert event["stage"] and event["reason"] and event["kind"] == "task"


@pytest.mark.slow
def test_a_run_killed_holding_the_lock_does_not_block_the_next(tmp_path, child_env):
    out = tmp_path / "run"
    first = start_run(out, child_env, *RUN)  # stderr is a pipe: plain lines
    log = Lines(first.stderr)
    done = log.wait_for(lambda line: line.startswith("round 1 done:"))
    _, kept_1 = kept_after(done)
    assert kept_1 < 3, "round 1 reached the target: this test needs a run between rounds"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    resumed = selfgen(["run", "--out", str(out), "--resume"], child_env)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stderr.splitlines()
    assert lines[0] == f"resuming the run in {out}: {kept_1} of 3 tasks kept in 1 rounds so far"
    # The resumed run goes on from round 2 and stops at the round that reaches the target.
    done = [kept_after(line) for line in lines if " done: " in line]
    assert [n for n, _ in done] == list(range(2, len(done) + 2))
    assert [k for _, k in done][-1] == 3 and all(k < 3 for _, k in done[:-1])
    check_whole(out, 3)
    assert rounds_in(out) == len(done) + 1
