"""How much of a run's wall time the model sits idle because of the loop, and how the loop's
token throughput compares with the backend's own on the same requests.

For each backend (the embedded llama.cpp default, the `openai` backend against a local
`python -m llama_cpp.server` running the same GGUF, and, on a machine with a CUDA GPU, the
in-process `vllm` backend on a Hugging Face model folder given with --model) the script runs, in
this order:

- "loop (pipelined)": `Loop.run()` as `selfgen run` does it, with the next requests queued
  while the loop parses and filters earlier answers;
- "loop (stage by stage)": the same run with a backend whose `submit` answers at once in the
  loop's own thread, which is how a loop without pipelining behaves (every stage waits for
  the model, the model waits for every stage);
- "direct": the baseline, every request the pipelined run made, sent again to the backend in
  one `generate` call with nothing else to do.

Every run uses the same seed, so the loop runs make the same requests and get the same answers
(the script says so when the completion token counts disagree). "Model idle" is the share of wall time
with no request in flight (in flight: from the moment the backend starts a request to its
answer, as the backend measures it). "Ratio" is the run's completion tokens per second of wall
time over the direct baseline's.

    python benchmarks/loop_overhead.py -n 10
    python benchmarks/loop_overhead.py --backends vllm --model FOLDER -n 10   # scripts/gpu_check.sh
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from selfgen.backends.base import Backend, Completion, GenerationRequest, get_backend  # noqa: E402
from selfgen.backends.llamacpp import bundled_model_path  # noqa: E402
from selfgen.config import build_config  # noqa: E402
from selfgen.loop import Loop  # noqa: E402
from selfgen.seeds import load_seed_tasks  # noqa: E402
from selfgen.store import RunStore  # noqa: E402

IDLE_TARGET = 0.05  # the pipelined loop leaves the model idle at most this share of wall time
RATIO_TARGET = 0.9  # and keeps at least this share of the backend's own throughput


class Metered(Backend):
    """Passes requests to `inner` and records when each one was in flight."""

    def __init__(self, inner: Backend, pipelined: bool = True) -> None:
        self.inner = inner
        self.pipelined = pipelined
        self.name = inner.name
        self.requests: list[GenerationRequest] = []
        self.intervals: list[tuple[float, float]] = []
        self.completion_tokens = 0
        self._lock = threading.Lock()

    def _done(self, future: Future[Completion]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        comp = future.result()
        end = time.perf_counter()
        with self._lock:
            self.intervals.append((end - comp.latency_s, end))
            self.completion_tokens += comp.completion_tokens

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[Completion]]:
        self.requests.extend(requests)
        if self.pipelined:
            futures = self.inner.submit(requests)
            for future in futures:
                future.add_done_callback(self._done)
            return futures
        # Stage by stage: answer now, in the caller's thread, so the loop cannot work while the
        # model does; the model is busy for the whole call.
        start = time.perf_counter()
        completions = self.inner.generate(requests)
        with self._lock:
            self.intervals.append((start, time.perf_counter()))
            self.completion_tokens += sum(c.completion_tokens for c in completions)
        futures = []
        for comp in completions:
            future: Future[Completion] = Future()
            future.set_result(comp)
            futures.append(future)
        return futures

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [f.result() for f in self.submit(requests)]

    def busy_s(self) -> float:
        """Length of the union of the in-flight intervals."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.intervals):
            if b > end:
                total += b - max(a, end)
                end = b
        return total


def loop_run(backend: Backend, seeds_path: Path, n: int, seed: int, pipelined: bool) -> dict:
    metered = Metered(backend, pipelined)
    with tempfile.TemporaryDirectory() as out:
        config = build_config({}, {"num_tasks": n, "seed": seed, "backend": backend.name})
        store = RunStore.create(
            Path(out), config.to_dict(), load_seed_tasks(seeds_path), backend.describe(), "bench"
        )
        started = time.perf_counter()
        result = Loop(config, store, metered).run()
        wall = time.perf_counter() - started
        store.close()
    return {
        "wall": wall,
        "busy": metered.busy_s(),
        "tokens": metered.completion_tokens,
        "requests": metered.requests,
        "kept": result.totals.kept,
    }


def direct_run(backend: Backend, requests: list[GenerationRequest]) -> dict:
    metered = Metered(backend)
    started = time.perf_counter()
    metered.generate(requests)
    wall = time.perf_counter() - started
    return {"wall": wall, "busy": metered.busy_s(), "tokens": metered.completion_tokens}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(n_threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path())]
        + ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
        + ["--n_threads", str(n_threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="kept tasks per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=Path, default=ROOT / "seeds" / "seed_tasks.jsonl")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (both backends)")
    parser.add_argument("--concurrency", type=int, default=4, help="openai backend requests")
    parser.add_argument("--backends", default="llamacpp,openai", help="llamacpp, openai, vllm")
    parser.add_argument("--model", help="vllm: a Hugging Face model folder")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.5, help="vllm: share of GPU memory"
    )
    args = parser.parse_args()
    if "vllm" in args.backends.split(",") and not args.model:
        parser.error("--backends vllm needs --model (a Hugging Face model folder)")

    console = Console(width=120)
    table = Table(title=f"Loop overhead: -n {args.n}, seed {args.seed}")
    for col in ("backend", "run", "wall s", "model busy s", "model idle", "compl. tokens"):
        table.add_column(col, justify="left" if col in ("backend", "run") else "right")
    table.add_column("tokens/s", justify="right")
    table.add_column("ratio vs direct", justify="right")

    verdicts = []
    for name in args.backends.split(","):
        server = None
        if name == "llamacpp":
            backend = get_backend("llamacpp", n_ctx=4096, n_threads=args.threads, seed=args.seed)
        elif name == "vllm":
            backend = get_backend(
                "vllm",
                model=args.model,
                n_ctx=4096,
                gpu_memory_utilization=args.gpu_memory_utilization,
                seed=args.seed,
            )
        else:
            server, url = start_server(args.threads)
            backend = get_backend(
                "openai", base_url=url, concurrency=args.concurrency, seed=args.seed
            )
        try:
            console.print(f"[bold]{name}[/]: pipelined loop, stage-by-stage loop, direct")
            piped = loop_run(backend, args.seeds, args.n, args.seed, pipelined=True)
            staged = loop_run(backend, args.seeds, args.n, args.seed, pipelined=False)
            direct = direct_run(backend, piped["requests"])
        finally:
            backend.close()
            if server is not None:
                server.kill()
                server.wait()
        base_rate = direct["tokens"] / direct["wall"]
        for label, r in (
            ("loop (pipelined)", piped),
            ("loop (stage by stage)", staged),
            ("direct (baseline)", direct),
        ):
            rate = r["tokens"] / r["wall"]
            table.add_row(
                name,
                label,
                f"{r['wall']:.1f}",
                f"{r['busy']:.1f}",
                f"{1 - r['busy'] / r['wall']:.1%}",
                str(r["tokens"]),
                f"{rate:.1f}",
                f"{rate / base_rate:.2f}",
            )
        console.print(
            f"  {len(piped['requests'])} requests; kept {piped['kept']} (pipelined)"
            f" and {staged['kept']} (stage by stage)"
        )
        if piped["tokens"] != staged["tokens"] or piped["tokens"] != direct["tokens"]:
            console.print(
                f"  [red]the runs disagree[/]: {piped['tokens']}, {staged['tokens']} and"
                f" {direct['tokens']} completion tokens (the same requests should give the same)"
            )
        idle = 1 - piped["busy"] / piped["wall"]
        ratio = (piped["tokens"] / piped["wall"]) / base_rate
        verdicts.append(
            f"{name}: model idle {idle:.1%} (target at most {IDLE_TARGET:.0%}:"
            f" {'met' if idle <= IDLE_TARGET else 'missed'}), throughput ratio {ratio:.2f}"
            f" (target at least {RATIO_TARGET}: {'met' if ratio >= RATIO_TARGET else 'missed'})"
        )
    console.print(table)
    for line in verdicts:
        console.print(line)


if __name__ == "__main__":
    main()
