from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from selfgen.backends.base import Backend, Completion, GenerationRequest, register_backend

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not available (../shared is absent)")
    return path


class ScriptedBackend(Backend):
    """A fake model for unit tests of control flow: `reply(request)` gives each completion,
    as text or (text, finish reason); ("message", "error") is a call that failed, as a
    backend reports one."""

    name = "scripted"

    def __init__(self, reply: Callable[[GenerationRequest], str | tuple[str, str]]) -> None:
        self.reply = reply
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        out = []
        for r in requests:
            self.requests.append(r)
            answer = self.reply(r)
            text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
            if finish == "error":
                out.append(Completion("", "error", 10, 0, extra={"error": text}))
                continue
            out.append(Completion(text, finish, prompt_tokens=10, completion_tokens=5))
        return out


@pytest.fixture
def scripted():
    """Register a scripted backend under the name `scripted` (the same registry users use)."""
    made: list[ScriptedBackend] = []

    def install(reply):
        def factory(**_):
            backend = ScriptedBackend(reply)
            made.append(backend)
            return backend

        register_backend("scripted", factory)
        return made

    return install


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """The bundled GGUF as a Hugging Face model folder, for vLLM (converted with transformers,
    which needs the `tune` extra: gguf and accelerate). SELFGEN_HF_MODEL names a folder already
    converted so (scripts/gpu_check.sh converts it once for the tests and the benchmark)."""
    from selfgen.tune.models import resolve_model, save_hf_folder

    if given := os.environ.get("SELFGEN_HF_MODEL"):
        return Path(given)
    return save_hf_folder(resolve_model("bundled"), tmp_path_factory.mktemp("smollm2-hf"))


def selfgen_cmd() -> list[str]:
    """Run the real console entry point in a child process, as a user would."""
    return [sys.executable, "-m", "selfgen"]


@pytest.fixture
def child_env():
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Lines:
    """The lines a child process writes to a pipe, gathered by a thread as they come, so that a
    test can wait for a line (a state it sees) instead of for some time."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._added = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            with self._added:
                self.lines.append(line.rstrip("\n"))
                self._added.notify_all()
        with self._added:
            self.closed = True
            self._added.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], seconds: float = 1200) -> str:
        """The first line that satisfies `predicate`, once written; `seconds` only stops a
        hung test."""
        deadline = time.monotonic() + seconds
        with self._added:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                assert not self.closed, "the process ended first:\n" + "\n".join(self.lines)
                left = deadline - time.monotonic()
                assert left > 0, f"no such line in {seconds} s:\n" + "\n".join(self.lines)
                self._added.wait(left)

    def all(self) -> list[str]:
        """Every line, once the pipe is closed (the process ended)."""
        self._thread.join()
        return self.lines
