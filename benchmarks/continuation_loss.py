"""What `continuation_loss` costs on the embedded llama.cpp backend, against the obvious
alternative: a model loaded with `logits_all=True`, whose `eval` keeps every position's logits.

Rows, each on the bundled SmolLM2 GGUF with the same threads and context size:

- "loss, backend": `LlamaCppBackend.continuation_loss` on a ~100-token context and a
  ~50-token continuation; it asks llama.cpp for the logits of the continuation's positions only,
  on the context generation uses;
- "loss, logits_all (baseline)": the same ids evaluated by `Llama(logits_all=True).eval` and the
  log-probabilities read from its `scores`;
- "generate, logits_all=False" / "generate, logits_all=True": greedy generation of 32 tokens
  after the same context, which is what building the backend's context with `logits_all`
  would cost every request of a run.

The two loss rows must agree to within float rounding (the script says so when they do not).
"Memory" is the scores array `logits_all` keeps (n_ctx x vocabulary x 4 bytes); the backend
keeps none, and llama.cpp's output buffer grows to at most 64 positions x vocabulary x 4 bytes.
Times are per request, the median of `--repeat` rounds (each round runs every row once), in
wall and CPU seconds; they depend on the machine, and on a shared one CPU seconds with one
thread are the steadier comparison.

    python benchmarks/continuation_loss.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from selfgen.backends.base import LossRequest, get_backend  # noqa: E402
from selfgen.backends.llamacpp import OUTPUTS_PER_DECODE, bundled_model_path  # noqa: E402

CONTEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in"
    " Germany and France built two-wheeled machines that riders pushed along with their feet."
    " Pedals attached to the front wheel arrived in the 1860s, and the high-wheeled ordinary"
    " followed, fast but dangerous. The safety bicycle of the 1880s, with two wheels of equal"
    " size and a chain driving the rear one, is the design most people still ride today."
)
CONTINUATION = (
    " Pneumatic tyres, invented soon after, made the ride far more comfortable, and within a"
    " decade cycling had become a craze across Europe and North America, changing how people"
    " travelled to work. Clubs, races and road maps for cyclists soon followed."
)


def median_times(fns: list, repeat: int) -> list[tuple[float, float]]:
    """The median wall and CPU seconds of each of `fns`, run in turns so that a busy machine
    slows all alike. CPU seconds (all threads) are the steadier measure on a shared machine."""
    times: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, seen in zip(fns, times, strict=True):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            seen.append((time.perf_counter() - wall, time.process_time() - cpu))
    return [
        (statistics.median(w for w, _ in seen), statistics.median(c for _, c in seen))
        for seen in times
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    from llama_cpp import Llama

    backend = get_backend("llamacpp", n_ctx=args.ctx, n_threads=args.threads)
    request = LossRequest(CONTINUATION, prompt=CONTEXT)
    model = Llama(
        str(bundled_model_path()),
        n_ctx=args.ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        verbose=False,
    )
    context = model.tokenize(CONTEXT.encode(), add_bos=True, special=True)
    continuation = model.tokenize(CONTINUATION.encode(), add_bos=False, special=True)
    ids = context + continuation
    vocab = model.n_vocab()

    def baseline() -> list[float]:
        model.reset()
        model.eval(ids[:-1])
        logprobs = Llama.logits_to_logprobs(model.scores[len(context) - 1 : len(ids) - 1])
        return [float(logprobs[i, t]) for i, t in enumerate(continuation)]

    [ours] = backend.continuation_loss([request])
    theirs = baseline()
    worst = max(abs(a - b) for a, b in zip(ours.token_logprobs, theirs, strict=True))

    def generate(llm) -> None:
        llm.reset()
        llm.create_completion(context, max_tokens=32, temperature=0.0)

    plain = backend._llm  # the backend's own context: logits_all=False
    kept = args.ctx * vocab * 4
    seconds = median_times(
        [
            lambda: backend.continuation_loss([request]),
            baseline,
            lambda: generate(plain),
            lambda: generate(model),
        ],
        args.repeat,
    )
    names = [
        "loss, backend",
        "loss, logits_all (baseline)",
        "generate, logits_all=False",
        "generate, logits_all=True",
    ]
    rows = list(zip(names, seconds, [0, kept, 0, kept], strict=True))
    table = Table(
        title=f"{len(context)} context + {len(continuation)} continuation tokens,"
        f" {args.threads} thread(s), n_ctx {args.ctx}"
    )
    for column in ("", "wall s / request", "CPU s / request", "CPU vs baseline", "memory kept"):
        table.add_column(column, justify="right" if column else "left")
    for name, (wall, cpu), memory in rows:
        base = rows[1][1][1] if name.startswith("loss") else rows[2][1][1]
        table.add_row(
            name, f"{wall:.3f}", f"{cpu:.3f}", f"{cpu / base:.2f}x", f"{memory / 2**20:.0f} MiB"
        )
    Console(width=120).print(table)
    print(
        f"mean loss {ours.mean_loss:.4f} nats over {ours.tokens} tokens; largest difference from"
        f" the baseline {worst:.2e} nats; output buffer at most"
        f" {OUTPUTS_PER_DECODE * vocab * 4 / 2**20:.0f} MiB"
    )
    if worst > 1e-3 or not np.isfinite(worst):
        print("the two loss rows disagree", file=sys.stderr)
        sys.exit(1)
    backend.close()


if __name__ == "__main__":
    main()
