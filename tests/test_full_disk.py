"""A full disk: the run ends with one message that says so (where, what is saved, how to go on),
the store stays whole, and a resume after space is freed reaches its target.

The disk is a small tmpfs mounted for the test and filled by a file; where this process may not
mount one (not root, no CAP_SYS_ADMIN) those tests are skipped. SQLite's own "database or disk
is full" (SQLITE_FULL) is also reached without a mount, through `PRAGMA max_page_count`: the
same error a full disk gives, from the same write.
"""

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess

import pytest
from conftest import ROOT, SEEDS, Lines, selfgen_cmd
from test_end_to_end import check_whole, rounds_in

from selfgen.config import build_config
from selfgen.records import Candidate, Fate, Instance, Stage
from selfgen.seeds import load_seed_tasks
from selfgen.store import DiskFullError, GenerationRecord, RoundRecord, RunStore


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs here: no mount command")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk):
    """Write a file until the disk has no byte left; return it (delete it to free the space)."""
    path = disk / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                chunk //= 2
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return path


def a_round(number, text_size=20_000):
    """A round of one kept task with a long generation, as the loop would commit it."""
    rnd = RoundRecord(number, "", random.Random(number).getstate(), 1.0)
    rnd.generations.append(
        GenerationRecord("instructions", {}, "x" * text_size, "stop", 5, 5, 0.1, prompt="p")
    )
    cand = Candidate(instruction=f"Write task number {number} in full", generation_index=0)
    cand.instances = [Instance("in", "out")]
    cand.keep(Stage.INSTANCES)
    assert cand.fate is Fate.KEPT
    rnd.candidates.append(cand)
    return rnd


def new_store(out):
    cfg = build_config({}, {"num_tasks": 3})
    return RunStore.create(out, cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")


def integrity(out):
    db = sqlite3.connect(out / "selfgen.db")
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0], db.execute(
            "SELECT COUNT(*) FROM rounds"
        ).fetchone()[0]
    finally:
        db.close()


def test_sqlite_full_in_a_commit_writes_nothing_of_the_round(tmp_path):
    store = new_store(tmp_path / "run")
    store.commit_round(a_round(1))
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(DiskFullError) as full:
        store.commit_round(a_round(2, text_size=200_000))
    # The run's disk has room: the message says what SQLite said, and where else to look.
    assert str(full.value).startswith(
        f"the disk is full: SQLite could not write {tmp_path / 'run'} ("
    )
    assert "temporary directory" in str(full.value)
    assert store.totals().rounds == 1
    store.db.execute(f"PRAGMA max_page_count = {pages * 100}")
    store.commit_round(a_round(2, text_size=200_000))  # the same round, whole, once
    assert store.totals().rounds == 2 and store.totals().kept == 2
    store.close()
    assert integrity(tmp_path / "run") == ("ok", 2)


def test_a_disk_full_in_a_commit_and_at_start(small_disk):
    out = small_disk / "run"
    store = new_store(out)
    store.commit_round(a_round(1))
    filler = fill(small_disk)
    with pytest.raises(DiskFullError) as full:
        store.commit_round(a_round(2))
    assert str(full.value) == f"the disk of {out} is full (no space left on {small_disk})"
    store.close()
    assert integrity(out) == ("ok", 1)
    # A writer refuses to start on the full disk (before a round of generation is spent).
    with pytest.raises(DiskFullError):
        RunStore.open(out, writer=True)
    filler.unlink()
    store = RunStore.open(out, writer=True)
    store.commit_round(a_round(2))
    assert store.totals().rounds == 2
    store.close()


def selfgen(args, child_env):
    return subprocess.run(
        [*selfgen_cmd(), *args],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=1200,  # only stops a hung run
    )


def test_commands_on_a_full_disk_say_so(small_disk, child_env):
    out = small_disk / "run"
    new_store(out).close()  # closed whole: no WAL index left, which reading must make again
    filler = fill(small_disk)
    stats = selfgen(["stats", str(out)], child_env)
    assert (stats.returncode, stats.stderr) == (
        1,
        f"error: the disk of {out} is full (no space left on {small_disk})\n",
    )
    resumed = selfgen(["run", "--out", str(out), "--resume"], child_env)
    assert (resumed.returncode, resumed.stderr) == (
        1,
        f"error: the disk of {out} is full (no space left on {small_disk}); finished rounds are"
        f" saved in {out / 'selfgen.db'}; free some space, then resume with"
        f" `selfgen run --out {out} --resume`\n",
    )
    new = small_disk / "new"
    started = selfgen(["run", "--seeds", str(SEEDS), "--out", str(new), "-n", "1"], child_env)
    assert started.returncode == 1
    assert started.stderr.splitlines()[-1] == (
        f"error: the disk of {new} is full (no space left on {small_disk}); no run store was"
        " written; free some space and run again"
    )
    assert not (new / "selfgen.db").exists()
    filler.unlink()
    assert integrity(out) == ("ok", 0)


# Seed 4 with one prompt a round keeps 2 tasks in round 1 and reaches 3 in round 2.
RUN = ["--seeds", str(SEEDS), "-n", "3", "--seed", "4", "--prompts-per-round", "1"]


@pytest.mark.slow
def test_a_disk_that_fills_between_two_rounds(small_disk, child_env):
    out = small_disk / "run"
    run = subprocess.Popen(
        [*selfgen_cmd(), "run", "--out", str(out), *RUN, "--log-format", "json"],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = Lines(run.stderr)
    log.wait_for(lambda line: line.startswith('{"event": "round"'))
    # Stopped between its rounds while the disk fills; round 2's commit meets the full disk.
    run.send_signal(signal.SIGSTOP)
    try:
        assert rounds_in(out) == 1
        filler = fill(small_disk)
    finally:
        run.send_signal(signal.SIGCONT)
    assert run.wait(timeout=1200) == 1
    lines = log.all()
    assert lines[-1] == (
        f"error: the disk of {out} is full (no space left on {small_disk}); finished rounds are"
        f" saved in {out / 'selfgen.db'}; free some space, then resume with"
        f" `selfgen run --out {out} --resume`"
    )
    assert all(line.startswith("{") for line in lines[:-1])  # no traceback
    assert [json.loads(line)["event"] for line in lines[:-1]].count("round") == 1
    assert integrity(out) == ("ok", 1)
    filler.unlink()
    resumed = selfgen(["run", "--out", str(out), "--resume", "-q"], child_env)
    assert resumed.returncode == 0, resumed.stderr
    check_whole(out, 3)
