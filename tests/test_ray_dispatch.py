"""RayBackend's dispatching on a real local Ray instance, with fake backends in the workers.

The fake answers at once (or after a short sleep), can fail, and can kill its own process in
the middle of a request, once, so that a dead worker is a deterministic event. The real model
on Ray is tested end to end in test_ray_engine.py.
"""

import os
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest
from conftest import ROOT, selfgen_cmd

from selfgen.backends.base import (
    Backend,
    BackendError,
    Completion,
    GenerationRequest,
    SamplingParams,
    register_backend,
)

ray = pytest.importorskip("ray")


class Echo(Backend):
    """Answers "prompt|seed|pid"; prompts starting with a command misbehave.

    "sleep:S" sleeps S seconds first; "fail" raises BackendError; "die-once" kills the worker
    process the first time any worker sees it (a marker file remembers), "die" every time.
    `load_s` makes starting slow: every start without a marker, or those after a death with one.
    """

    name = "echo"

    def __init__(
        self, marker: str = "", broken: bool = False, load_s: float = 0.0, **_: object
    ) -> None:
        if broken:
            raise BackendError("--model: no such GGUF file: /nowhere.gguf")
        if load_s and (not marker or os.path.exists(marker)):
            time.sleep(load_s)  # with a marker: only the workers started after a death
        self.marker = marker

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        out = []
        for r in requests:
            prompt = r.prompt or ""
            if prompt.startswith("sleep:"):
                time.sleep(float(prompt.split(":")[1]))
            if prompt == "fail":
                raise BackendError("the server refused the request")
            if prompt == "die" or (prompt == "die-once" and not os.path.exists(self.marker)):
                open(self.marker, "w").close()
                os._exit(1)
            out.append(Completion(f"{prompt}|{r.params.seed}|{os.getpid()}", "stop", 1, 1))
        return out


def register_echo() -> None:
    register_backend("echo", Echo)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    register_echo()  # the driver checks a backend's options before it starts the workers
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024**2,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": register_echo,
            # Workers import this module to find the hook.
            "env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), *sys.path])},
        },
    )
    yield
    ray.shutdown()


def requests(*prompts: str) -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt=p, params=SamplingParams(seed=i)) for i, p in enumerate(prompts)
    ]


def texts(completions: list[Completion]) -> list[str]:
    return [c.text.rsplit("|", 1)[0] for c in completions]


def make(tmp_path, notes=None, options=(), workers=2, **kwargs):
    from selfgen.engines.ray import RayBackend

    return RayBackend(
        "echo",
        {"marker": str(tmp_path / "died"), **dict(options)},
        workers=workers,
        notify=(notes.append if notes is not None else None),
        **kwargs,
    )


def test_answers_in_request_order_from_both_workers(tmp_path):
    backend = make(tmp_path)
    try:
        prompts = [f"sleep:{0.01 * (i % 4)}" for i in range(12)]
        out = backend.generate(requests(*prompts))
        assert texts(out) == [f"{p}|{i}" for i, p in enumerate(prompts)]
        assert len({c.text.rsplit("|", 1)[1] for c in out}) == 2
        assert backend.describe() == {"backend": "echo", "engine": "ray", "workers": 2}
        assert backend.generate([]) == []
    finally:
        backend.close()


def test_futures_resolve_as_each_answer_arrives(tmp_path):
    backend = make(tmp_path)
    try:
        slow, fast = backend.submit(requests("sleep:2", "quick"))
        assert fast.result(timeout=60).text.startswith("quick|1|")
        assert not slow.done()
        assert slow.result(timeout=60).text.startswith("sleep:2|0|")
    finally:
        backend.close()


def test_a_worker_dying_mid_request_is_replaced_and_its_request_answered_once(tmp_path):
    notes: list[str] = []
    backend = make(tmp_path, notes)
    try:
        prompts = ["a", "sleep:0.2", "die-once", "b", "c", "d"]
        out = backend.generate(requests(*prompts))
        assert texts(out) == [f"{p}|{i}" for i, p in enumerate(prompts)]
        assert backend.replacements == 1
        assert len(notes) == 1 and "a Ray worker died" in notes[0]
        # Once it has started, the new worker takes work like the other one.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            later = backend.generate(requests(*["sleep:0.2"] * 4))
            if len({c.text.rsplit("|", 1)[1] for c in later}) == 2:
                break
        else:
            pytest.fail("the new worker never answered")
    finally:
        backend.close()


def test_workers_that_keep_dying_stop_the_run_with_one_message(tmp_path):
    backend = make(tmp_path, [], max_replacements=1)
    try:
        with pytest.raises(BackendError, match="Ray workers keep dying"):
            # "sleep:3" is likely still running on the other worker when the engine gives up.
            backend.generate(requests("die", "sleep:3"))
        with pytest.raises(BackendError, match="Ray workers keep dying"):
            backend.generate(requests("a"))  # a broken engine answers nothing more
    finally:
        backend.close()


def test_a_backend_error_in_a_worker_reaches_the_loop_as_it_would_locally(tmp_path):
    backend = make(tmp_path)
    try:
        ok, bad = backend.submit(requests("a", "fail"))
        assert ok.result(timeout=60).text.startswith("a|0|")
        with pytest.raises(BackendError, match="the server refused the request"):
            bad.result(timeout=60)
    finally:
        backend.close()


def test_a_backend_that_cannot_start_is_reported_before_any_work():
    from selfgen.engines.ray import RayBackend

    with pytest.raises(BackendError, match=r"--model: no such GGUF file.*on a Ray worker"):
        RayBackend("echo", {"broken": True}, workers=1)


def test_workers_that_do_not_start_in_time_are_one_message():
    from selfgen.engines.ray import RayBackend

    with pytest.raises(
        BackendError, match=r"option 'workers': 1 echo worker\(s\) did not start within 1 s"
    ):
        RayBackend("echo", {"load_s": 60}, workers=1, start_timeout_s=1)


def test_a_replacement_that_does_not_start_stops_the_run(tmp_path):
    # The first worker starts at once; its replacement would take ten minutes. The timeout is
    # long enough for the first to start on a slow, busy machine, and far shorter than that.
    backend = make(tmp_path, [], workers=1, start_timeout_s=30, options={"load_s": 600})
    try:
        with pytest.raises(BackendError, match="no Ray worker is running"):
            backend.generate(requests("die"))
    finally:
        backend.close()


def test_more_workers_than_the_cluster_holds_is_refused():
    from selfgen.engines.ray import RayBackend

    with pytest.raises(BackendError, match=r"option 'workers': 3 echo worker\(s\) need 1 CPU each"):
        RayBackend("echo", {}, workers=3)


def test_closing_fails_what_is_unanswered(tmp_path):
    backend = make(tmp_path)
    # Answers that take far longer than closing can, on any machine: none of them arrives.
    futures = backend.submit(requests("sleep:60", "sleep:60", "sleep:60"))
    backend.close()
    for future in futures:
        with pytest.raises(BackendError, match="closed"):
            future.result(timeout=60)


def test_importing_selfgen_never_imports_ray():
    code = (
        "import sys, selfgen, selfgen.cli, selfgen.engines.ray, selfgen.config;"
        "from typer.testing import CliRunner;"
        "r = CliRunner().invoke(selfgen.cli.app, ['run', '--help']); assert r.exit_code == 0;"
        "print('ray' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_cli_refuses_a_bad_engine_and_leaves_nothing(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--out", str(out), "--engine", "spark"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --engine: must be 'local' or 'ray'"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--out", str(out), "--engine", "ray", "--workers", "64"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "error: --workers: 64 llamacpp worker(s) need 1 CPU each" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
