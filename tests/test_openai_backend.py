"""The `openai` backend against a real OpenAI-compatible server on 127.0.0.1:
`python -m llama_cpp.server` running the bundled GGUF."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd

from selfgen.backends.base import (
    BackendError,
    Constraint,
    GenerationRequest,
    SamplingParams,
    get_backend,
)
from selfgen.backends.llamacpp import bundled_model_path

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(url, proc):
    """Wait until the server answers; the bound only stops a server that never will."""
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=5)
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("llama_cpp.server did not start")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    url = f"http://127.0.0.1:{port}/v1"
    wait_for(url, proc)
    yield url
    proc.kill()
    proc.wait()


class Proxy(http.server.ThreadingHTTPServer):
    """Forwards to the server, except where `fault(n, path)` returns an answer of its own
    (status, content type, body) for the n-th POST."""

    def __init__(self, target, fault):
        self.target, self.fault, self.count, self.lock = target, fault, 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def flaky(n, path):
    """Every third completion an HTTP 500; every fifth HTML sent as JSON; every seventh plain
    text; every eleventh JSON of the wrong shape."""
    if n % 3 == 0:
        return 500, "application/json", b""
    if n % 5 == 0:
        return 200, "application/json", b"<html>not json</html>"
    if n % 7 == 0:
        return 200, "text/plain", b"upstream busy"
    if n % 11 == 0:
        return 200, "application/json", b'{"choices": []}'
    return None


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status, content_type, data):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, body=None):
        req = urllib.request.Request(
            self.server.target + self.path.removeprefix("/v1"),
            data=body,
            method=self.command,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            data = resp.read()
        self._answer(200, "application/json", data)

    def do_GET(self):
        self._forward()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.count += 1
            n = self.server.count
        answer = self.server.fault(n, self.path)
        if answer is not None:
            self._answer(*answer)
        else:
            self._forward(body)


def selfgen_run(url, out, env, *args, timeout=900):
    """`selfgen run --backend openai --base-url URL --out OUT ARGS...`, its output captured."""
    return subprocess.run(
        [*selfgen_cmd(), "run", "--backend", "openai", "--base-url", url, "--out", str(out)]
        + list(args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def test_full_run_against_the_server(server, tmp_path, child_env):
    out = tmp_path / "run"
    proc = selfgen_run(
        server,
        out,
        child_env,
        "--seeds",
        str(SEEDS),
        "-n",
        "5",
        "--seed",
        "1",
        "--api-key",
        "secret-123",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reached the target of 5 kept tasks" in proc.stdout
    # The key is never stored.
    assert b"secret-123" not in (out / "selfgen.db").read_bytes()
    stats = json.loads(
        subprocess.run(
            [*selfgen_cmd(), "stats", str(out), "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=child_env,
        ).stdout
    )
    assert stats["kept"] == 5 and stats["tokens"]["completion"] > 0


def test_constraints_through_the_server(server):
    backend = get_backend("openai", base_url=server, concurrency=3)
    assert backend.flavour == "llamacpp" and backend.mode == "completions"
    schema = {
        "type": "object",
        "properties": {"n": {"enum": [1, 2, 3]}},
        "required": ["n"],
        "additionalProperties": False,
    }
    prompts = ["Once upon a time", "The capital of France is", "List three colours:"]
    outs = backend.generate(
        [
            GenerationRequest(
                prompt=p,
                params=SamplingParams(temperature=0, max_tokens=8),
                constraint=Constraint(choices=(" Yes", " No")),
            )
            for p in prompts
        ]
        + [
            GenerationRequest(
                prompt=p,
                params=SamplingParams(temperature=0, max_tokens=20),
                constraint=Constraint(json_schema=schema),
            )
            for p in prompts
        ]
    )
    assert all(o.text in (" Yes", " No") for o in outs[:3])
    assert all(json.loads(o.text)["n"] in (1, 2, 3) for o in outs[3:])
    assert all(o.prompt_tokens > 0 and o.completion_tokens > 0 for o in outs)


def test_server_not_running_is_one_clear_error(tmp_path, child_env):
    out = tmp_path / "run"
    proc = selfgen_run(f"http://127.0.0.1:{free_port()}/v1", out, child_env, "-n", "2", timeout=300)
    assert proc.returncode == 1
    assert "cannot reach an OpenAI-compatible server" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_errors_and_garbage_are_retried_or_recorded(server, tmp_path, child_env):
    out = tmp_path / "run"
    with Proxy(server, flaky) as url:
        proc = selfgen_run(
            url, out, child_env, "--seeds", str(SEEDS), "-n", "3", "--seed", "2", "-q"
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import sqlite3

    db = sqlite3.connect(out / "selfgen.db")
    assert db.execute("SELECT COUNT(*) FROM candidates WHERE fate = 'kept'").fetchone()[0] == 3
    # Garbage answers are recorded as failed generation calls, not lost, each with its cause.
    errors = [
        r[0] for r in db.execute("SELECT error FROM generations WHERE finish_reason = 'error'")
    ]
    assert len(errors) >= 3
    assert any("JSON" in e or "Expecting value" in e for e in errors)
    assert any(e.startswith(("TypeError", "AttributeError")) for e in errors)  # plain text
    assert any(e.startswith("IndexError") for e in errors)  # no choices


def test_a_chat_only_server_is_sent_chat_requests(server):
    def no_completions(n, path):
        if path.endswith("/v1/completions"):
            return 404, "application/json", b'{"error": {"message": "Not Found"}}'
        return None

    with Proxy(server, no_completions) as url:
        backend = get_backend("openai", base_url=url)
        assert backend.mode == "completions"
        params = SamplingParams(temperature=0, max_tokens=12, seed=1)
        outs = backend.generate(
            [GenerationRequest(prompt="Name a colour.", params=params) for _ in range(3)]
        )
        backend.shutdown()
    assert backend.mode == "chat"
    assert all(o.finish_reason != "error" and o.text.strip() for o in outs)


def test_a_refused_key_stops_the_run_with_one_message(server, tmp_path, child_env):
    def unauthorized(n, path):
        return 401, "application/json", b'{"error": {"message": "Incorrect API key"}}'

    out = tmp_path / "run"
    with Proxy(server, unauthorized) as url:
        proc = selfgen_run(url, out, child_env, "--seeds", str(SEEDS), "-n", "2", "-q", timeout=300)
    assert proc.returncode == 1
    assert "answered 401: check --api-key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_backend_and_missing_key():
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        get_backend("nope")
    env = dict(os.environ)
    os.environ.pop("OPENAI_API_KEY", None)
    try:
        with pytest.raises(BackendError, match="no API key"):
            get_backend("openai", base_url="https://example.invalid/v1")
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_server_killed_mid_run_then_restarted_resumes_to_the_target(tmp_path, child_env):
    import sqlite3

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server_proc = start_server(port)
    wait_for(url, server_proc)
    out = tmp_path / "run"
    args = [
        *selfgen_cmd(),
        "run",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--seeds",
        str(SEEDS),
        "--out",
        str(out),
        "-n",
        "8",
        "--seed",
        "3",
        "--prompts-per-round",
        "1",
        "-q",
    ]
    run = subprocess.Popen(
        args, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Kill the server as soon as the first round is committed: the run (more than one round,
    # with this seed) fails at its next request, however fast the machine.
    deadline = time.monotonic() + 600
    while run.poll() is None and time.monotonic() < deadline:
        if (out / "selfgen.db").exists():
            db = sqlite3.connect(out / "selfgen.db")
            rounds = db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
            db.close()
            if rounds >= 1:
                break
        time.sleep(0.02)
    server_proc.kill()
    server_proc.wait()
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 1, stderr
    assert "finished rounds are saved; resume with" in stderr and "Traceback" not in stderr

    server_proc = start_server(port)
    try:
        wait_for(url, server_proc)
        proc = subprocess.run(
            [*selfgen_cmd(), "run", "--out", str(out), "--resume", "-q"],
            cwd=ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        server_proc.kill()
        server_proc.wait()
    db = sqlite3.connect(out / "selfgen.db")
    kept = [r[0] for r in db.execute("SELECT instruction FROM candidates WHERE fate = 'kept'")]
    assert len(kept) == len(set(kept)) == 8
