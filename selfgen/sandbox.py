"""Running tools in a separate process with a wall-clock timeout and a memory limit.

Tool arguments come from a model, so tools never run in selfgen's own process. A worker
process (`python -m selfgen.sandbox FOLDER MEMORY_MB`) loads the tools once, then answers one
JSON request per line. A call that runs past the timeout gets its worker killed; a worker that
dies or runs out of memory is replaced. Either way the call becomes a failed result with its
reason, never a hung or crashed run.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_OUTPUT = 4000  # characters of tool output kept


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: str = ""
    error: str = ""
    seconds: float = 0.0


class ToolSandbox:
    """Calls tools of `folder` in a worker process; one call at a time."""

    def __init__(self, folder: str | Path, timeout_s: float = 5.0, memory_mb: int = 512) -> None:
        self.folder = str(Path(folder).resolve())
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "selfgen.sandbox", self.folder, str(self.memory_mb)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
            ready = self._read_line(self._proc, timeout=120.0)
            if not ready or json.loads(ready).get("ready") is not True:
                self._kill()
                raise RuntimeError(f"the tool sandbox could not load {self.folder}")
        return self._proc

    @staticmethod
    def _read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
        """One line of the worker's answer; "" when it closed its output, None on timeout."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        return proc.stdout.readline()

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        proc = self._start()
        assert proc.stdin is not None
        started = time.perf_counter()
        try:
            proc.stdin.write(json.dumps({"name": name, "arguments": arguments}) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self._kill()
            return ToolResult(False, error="the tool process died", seconds=0.0)
        line = self._read_line(proc, self.timeout_s)
        seconds = time.perf_counter() - started
        if line is None:
            self._kill()
            return ToolResult(False, error=f"timed out after {self.timeout_s:g} s", seconds=seconds)
        if not line:
            # The worker closed its output: it is exiting (it may not have been reaped yet).
            try:
                code = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            self._kill()
            return ToolResult(
                False, error=f"the tool process crashed (exit code {code})", seconds=seconds
            )
        answer = json.loads(line)
        if answer.get("restart"):
            self._kill()  # a worker that ran out of memory is not trusted again
        if answer["ok"]:
            return ToolResult(True, output=answer["output"], seconds=seconds)
        return ToolResult(False, error=answer["error"], seconds=seconds)

    def close(self) -> None:
        self._kill()

    def __enter__(self) -> ToolSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(folder: str, memory_mb: int) -> None:
    from selfgen.tooling import load_tool_objects

    tools = load_tool_objects(folder)
    # The limit covers what a call allocates beyond the loaded tools.
    if os.path.exists("/proc/self/status"):
        limit = _vm_size_bytes() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        tool = tools.get(request["name"])
        try:
            if tool is None:
                raise LookupError(f"unknown tool '{request['name']}'")
            output = str(tool.invoke(request["arguments"]))
            answer: dict[str, Any] = {"ok": True, "output": output[:MAX_OUTPUT]}
        except MemoryError:
            answer = {
                "ok": False,
                "error": f"memory limit ({memory_mb} MiB) exceeded",
                "restart": True,
            }
        except RecursionError:
            answer = {"ok": False, "error": "recursion too deep", "restart": True}
        except Exception as exc:  # the tool's own failure is the call's result
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:MAX_OUTPUT]}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
