"""`--engine ray` with 2 llama.cpp workers (1 thread each) against one local llama.cpp process
(2 threads, what `selfgen run` uses on a 2-core machine), on the same requests.

The script runs, in this order, in one process:

- "loop round, local": `Loop.run_round` for `--rounds` rounds on the local backend, as
  `selfgen run` does; every request the loop makes is recorded;
- "loop round, ray": the same rounds, from the same seed, on `RayBackend` (a local Ray instance
  with 2 CPUs); the stored data must be identical. A round is a chain of dependent steps
  (instructions, then classification, then instances), so the workers are not always busy;
- "batch, local" / "batch, ray": every recorded request in one `generate` call, nothing else
  to do: the speed-up the workers give when the work is there (best of `--trials`, alternated);
- "driver overhead": the recorded requests of round 1 (and 50 copies of them, a round the size
  many GPUs need) through `RayBackend` over workers whose backend answers at once, handed out
  one request per task (as to llama.cpp) or in shares of the batch (as to vLLM). What remains
  is the engine's own cost per round: handing requests to workers, moving them and their
  answers, Ray's scheduling.

"Ratio" is completion tokens per second over the local baseline's on the same requests.

    python benchmarks/ray_engine.py --rounds 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from selfgen.backends.base import (  # noqa: E402
    Backend,
    Completion,
    GenerationRequest,
    get_backend,
    register_backend,
)
from selfgen.config import build_config  # noqa: E402
from selfgen.engines.ray import OBJECT_STORE_BYTES, RayBackend  # noqa: E402
from selfgen.loop import Loop  # noqa: E402
from selfgen.seeds import load_seed_tasks  # noqa: E402
from selfgen.store import RunStore  # noqa: E402


class Recording(Backend):
    """Passes requests to `inner` and keeps them, in the order the loop made them."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.requests: list[GenerationRequest] = []

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[Completion]]:
        self.requests.extend(requests)
        return self.inner.submit(requests)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [f.result() for f in self.submit(requests)]


class Instant(Backend):
    """Answers every request at once with an empty completion: only the engine's cost is left."""

    name = "instant"

    def __init__(self, **_: object) -> None:
        pass

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [Completion("", "stop", 0, 0) for _ in requests]


class InstantBatches(Instant):
    """The same, for a backend that batches (as vLLM does): workers take shares of a batch."""

    batches_natively = True


def register_instant() -> None:
    """Runs in every Ray worker process (a setup hook), so workers can build these backends."""
    register_backend("instant", Instant)
    register_backend("instant-batches", InstantBatches)


def engine_overhead(backend: str, requests: list[GenerationRequest], repeats: int) -> float:
    """Median seconds `RayBackend` takes over 2 workers whose backend answers at once."""
    engine = RayBackend(backend, {}, workers=2)
    try:
        engine.generate(requests)  # warm-up: the workers' first calls import modules
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine.generate(requests)
            times.append(time.perf_counter() - start)
    finally:
        engine.close()
    return sorted(times)[len(times) // 2]


def run_rounds(backend: Backend, rounds: int, folder: Path) -> tuple[float, list[tuple], int]:
    """Wall seconds of `rounds` loop rounds, the stored answers, and the first round's calls."""
    cfg = build_config({}, {"num_tasks": 1000, "seeds": str(ROOT / "seeds/seed_tasks.jsonl")})
    store = RunStore.create(
        folder, cfg.to_dict(), load_seed_tasks(cfg.seeds), backend.describe(), "bench"
    )
    loop = Loop(cfg, store, backend)
    start = time.perf_counter()
    for number in range(1, rounds + 1):
        loop.run_round(number, cfg.num_tasks)
    wall = time.perf_counter() - start
    answers = store.db.execute(
        "SELECT stage, response, completion_tokens FROM generations ORDER BY id"
    ).fetchall()
    first = store.db.execute("SELECT COUNT(*) FROM generations WHERE round_id = 1").fetchone()[0]
    store.close()
    return wall, answers, first


def timed_batch(backend: Backend, requests: list[GenerationRequest]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    out = backend.generate(requests)
    return time.perf_counter() - start, [c.text for c in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="loop rounds to measure")
    parser.add_argument("--trials", type=int, default=2, help="batch runs of each, best kept")
    parser.add_argument("--repeats", type=int, default=20, help="driver-overhead repetitions")
    args = parser.parse_args()
    console = Console()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"worker_process_setup_hook": register_instant},
    )
    options = {"n_ctx": 4096, "seed": 0}
    local = get_backend("llamacpp", n_threads=2, **options)
    workers = RayBackend("llamacpp", {**options, "n_threads": 1}, workers=2)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            recorder = Recording(local)
            local_wall, local_answers, first = run_rounds(recorder, args.rounds, Path(tmp) / "l")
            ray_wall, ray_answers, _ = run_rounds(workers, args.rounds, Path(tmp) / "r")
        requests = recorder.requests
        tokens = sum(a[2] for a in local_answers)
        rows.append(("loop rounds, local (1 × 2 threads)", local_wall, tokens, local_wall))
        rows.append(("loop rounds, ray (2 × 1 thread)", ray_wall, tokens, local_wall))
        same_loop = ray_answers == local_answers

        # Alternated, best of --trials: other processes on the machine slow both alike.
        local_batch = ray_batch = float("inf")
        for _ in range(args.trials):
            seconds, local_texts = timed_batch(local, requests)
            local_batch = min(local_batch, seconds)
            seconds, ray_texts = timed_batch(workers, requests)
            ray_batch = min(ray_batch, seconds)
        rows.append(("batch, local (1 × 2 threads)", local_batch, tokens, local_batch))
        rows.append(("batch, ray (2 × 1 thread)", ray_batch, tokens, local_batch))
        same_batch = ray_texts == local_texts
    finally:
        local.close()
        workers.close()

    round_one = requests[:first]  # the loop makes round 1's requests before round 2's
    big_round = round_one * 50  # a round of the size many GPUs need to stay busy
    try:
        overheads = [
            (
                "one request per task (llama.cpp)",
                len(round_one),
                engine_overhead("instant", round_one, args.repeats),
            ),
            (
                "one request per task (llama.cpp)",
                len(big_round),
                engine_overhead("instant", big_round, args.repeats),
            ),
            (
                "shares of the batch (vLLM)",
                len(big_round),
                engine_overhead("instant-batches", big_round, args.repeats),
            ),
        ]
    finally:
        ray.shutdown()

    table = Table(
        title=f"{args.rounds} round(s), {len(requests)} requests, {tokens} completion tokens"
    )
    for column in ("run", "wall s", "completion tok/s", "ratio"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, wall, toks, baseline in rows:
        table.add_row(name, f"{wall:.1f}", f"{toks / wall:.1f}", f"{baseline / wall:.2f}×")
    console.print(table)
    overhead_table = Table(title=f"driver overhead per round (median of {args.repeats})")
    for column in ("dispatch", "requests", "ms per round", "ms per request"):
        overhead_table.add_column(column, justify="left" if column == "dispatch" else "right")
    for name, count, seconds in overheads:
        overhead_table.add_row(
            name, str(count), f"{seconds * 1000:.1f}", f"{seconds * 1000 / count:.2f}"
        )
    console.print(overhead_table)
    console.print(f"same stored answers in the loop: {same_loop}; in the batch: {same_batch}")
    console.print(
        f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
