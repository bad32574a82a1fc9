"""`selfgen run --engine ray`: generation on a local Ray instance with llama.cpp workers.

Both Ray runs are compared with a local run of the same seed, table by table: where a request
runs must not change a stored answer, not even when a worker is killed in the middle of one.
"""

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, selfgen_cmd

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

# Ray prints the actor's class and method in its process title while the method runs.
RUNNING_GENERATE = "ray::GenerationWorker.generate"


@pytest.fixture(scope="module")
def ray_env():
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def run_args(out: Path, *extra: str) -> list[str]:
    return [*selfgen_cmd(), "run", "--out", str(out), "-n", "5", "-q", *extra]


RAY = ("--engine", "ray", "--workers", "2", "--threads", "1")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, ray_env):
    out = tmp_path_factory.mktemp("local") / "run"
    proc = subprocess.run(
        run_args(out), env=ray_env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def stored_data(out: Path) -> dict[str, list[tuple]]:
    """Everything a run decided, without timings."""
    db = sqlite3.connect(out / "selfgen.db")
    try:
        return {
            "generations": db.execute(
                "SELECT round_id, stage, prompt, messages, params, constraint_spec, response,"
                " finish_reason, prompt_tokens, completion_tokens FROM generations ORDER BY id"
            ).fetchall(),
            "candidates": db.execute(
                "SELECT round_id, generation_id, instruction, stage, fate, reason, nearest,"
                " rouge_l, is_classification, classify_generation_id, instance_generation_id"
                " FROM candidates ORDER BY id"
            ).fetchall(),
            "instances": db.execute(
                "SELECT candidate_id, position, input, output FROM instances ORDER BY id"
            ).fetchall(),
            "rounds": db.execute("SELECT id, rng_state FROM rounds ORDER BY id").fetchall(),
        }
    finally:
        db.close()


def assert_same_run(ray_out: Path, local_out: Path) -> None:
    data, expected = stored_data(ray_out), stored_data(local_out)
    kept = [c[2] for c in data["candidates"] if c[4] == "kept"]
    assert len(kept) == 5 and len(set(kept)) == 5
    for table in expected:
        assert data[table] == expected[table], table


def export(out: Path, env: dict) -> str:
    target = out.parent / f"{out.name}.jsonl"
    subprocess.run(
        [*selfgen_cmd(), "export", str(out), "--format", "openai", "--out", str(target)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return target.read_text()


def test_ray_run_reaches_target_with_the_local_data(tmp_path, local_run, ray_env):
    out = tmp_path / "ray"
    proc = subprocess.run(
        run_args(out, *RAY), env=ray_env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(out, local_run)
    assert export(out, ray_env) == export(local_run, ray_env)


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below `root`."""
    parents, cmdlines = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdlines[pid].decode(errors="replace")
                frontier.append(pid)
    return found


def kill_a_worker_mid_request(proc: subprocess.Popen) -> int:
    """SIGKILL the first worker process seen answering a request; return its pid."""
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        for pid, cmdline in descendants(proc.pid).items():
            if cmdline.startswith(RUNNING_GENERATE):
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.05)
    pytest.fail("no Ray worker was seen answering a request")


def test_worker_killed_mid_request_run_completes_without_duplicates(tmp_path, local_run, ray_env):
    out = tmp_path / "ray-kill"
    with subprocess.Popen(
        run_args(out, *RAY),
        env=ray_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            killed = kill_a_worker_mid_request(proc)
            _, stderr = proc.communicate(timeout=900)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert not Path(f"/proc/{killed}").exists()
    assert "a Ray worker died" in stderr
    # The killed worker's request ran again elsewhere and was stored once: the same calls,
    # candidates and instances as the local run, none doubled.
    assert_same_run(out, local_run)
