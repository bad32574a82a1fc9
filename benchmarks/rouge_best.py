"""The loop's nearest-neighbour search (`RougeIndex.best`) on a large pool.

    python benchmarks/rouge_best.py [--corpus ../shared/data/package_summaries_954k.txt]

Indexes every line but a random 2,000 (seed 1) the way the loop's novelty filter does (token
order learned from the pool, prefix lists at 0.7 and at the filter's lower `best` levels) and
times `best` on the 2,000 held out. Each configuration of prefix lists runs in a process of its
own, one after the other, so that its peak RSS is its own; the first is the baseline (prefix
lists at 0.7 only, the index before `best_levels`) and every other must give the same answers.
It prints a table: build time, mean milliseconds a query (and by the score of the answer), the
ratio to the baseline, and peak RSS. `--answers FILE` also writes the baseline's answers.
`--join T` asks as the loop does: each held-out line whose best is at most T joins the pool
before the next is asked (in a batch, before the batch's later lines), in every configuration.
"""

import argparse
import json
import multiprocessing
import random
import resource
import time

from selfgen.filters.novelty import BEST_LEVELS

BANDS = [(0.7, 1.0), (0.5, 0.7), (0.4, 0.5), (0.0, 0.4)]


def split(corpus: str, queries: int) -> tuple[list[str], list[str]]:
    """The corpus's lines as (pool, held-out queries): `queries` lines drawn with seed 1."""
    with open(corpus, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    held = set(random.Random(1).sample(range(len(lines)), queries))
    pool = [line for i, line in enumerate(lines) if i not in held]
    return pool, [lines[i] for i in sorted(held)]


def measure(
    corpus: str, queries: int, levels: tuple[float, ...], join: float | None = None
) -> dict:
    from selfgen.filters.rouge import TOKENIZERS, RougeIndex

    pool, asked = split(corpus, queries)
    start = time.perf_counter()
    index = RougeIndex(TOKENIZERS["rouge"], prefix_threshold=levels[0], best_levels=levels[1:])
    index.learn_token_order(pool)
    for text in pool:
        index.add(text)
    built = time.perf_counter() - start
    answers, seconds = [], []
    for query in asked:
        t = time.perf_counter()
        answers.append(index.best_batch([query], add_at_most=join)[0])
        seconds.append(time.perf_counter() - t)
    return {
        "pool": len(pool),
        "built_s": built,
        "answers": answers,
        "seconds": seconds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_parallel(
    corpus: str,
    queries: int,
    levels: tuple[float, ...],
    workers: int,
    batches: list[int],
    join: float | None = None,
) -> list[dict]:
    """As `measure`, on a ParallelRougeIndex of `workers` processes, asked `batch` queries at a
    time, for each batch size. A query's time is its batch's, shared equally. With `join`, each
    batch size starts from an index of the pool alone."""
    from selfgen.filters.parallel import ParallelRougeIndex
    from selfgen.filters.rouge import TOKENIZERS

    pool, asked = split(corpus, queries)

    def build() -> tuple[ParallelRougeIndex, float]:
        start = time.perf_counter()
        index = ParallelRougeIndex(
            TOKENIZERS["rouge"], levels[0], levels[1:], workers=workers, pool=pool
        )
        # The workers build their indexes as the pool arrives: wait until they are done.
        index.best_batch(["warm up"] * workers)
        return index, time.perf_counter() - start

    results = []
    rss_mb = 0.0
    index, built = build()
    for i, batch in enumerate(batches):
        if join is not None and i:
            index.close()  # the last batch size's lines joined it
            index, built = build()
        answers, seconds = [], []
        for first in range(0, len(asked), batch):
            part = asked[first : first + batch]
            t = time.perf_counter()
            answers.extend(index.best_batch(part, add_at_most=join))
            seconds.extend([(time.perf_counter() - t) / len(part)] * len(part))
        results.append({"pool": len(pool), "built_s": built, "answers": answers})
        results[-1]["seconds"] = seconds
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for proc in index._procs:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
                line = next(line for line in status if line.startswith("VmHWM:"))
            peak += int(line.split()[1]) / 1024
        rss_mb = max(rss_mb, peak)
    index.close()
    for result in results:
        result["rss_mb"] = rss_mb
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/package_summaries_954k.txt")
    parser.add_argument("--queries", type=int, default=2000)
    loops = ",".join(map(str, (0.7, *BEST_LEVELS)))
    parser.add_argument(
        "--levels",
        default=f"0.7;{loops}",
        help="configurations to compare, ';' between them, the baseline first"
        f" (default: 0.7 alone, then the loop's novelty filter, {loops})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="then the last configuration on this many processes, as --novelty-workers runs"
        " it (0: not measured)",
    )
    parser.add_argument(
        "--batch",
        default="8,64",
        help="queries a batch, with --workers, comma-separated (default: 8, the most one of the"
        " loop's completions gives, and 64)",
    )
    parser.add_argument("--answers", help="write the baseline's (score, nearest), one a line")
    parser.add_argument(
        "--join",
        type=float,
        help="each held-out line whose best is at most this joins the pool, as in the loop"
        " (e.g. 0.7; default: none joins)",
    )
    args = parser.parse_args()
    configs = [tuple(float(t) for t in c.split(",")) for c in args.levels.split(";")]
    spawn = multiprocessing.get_context("spawn")
    results = []
    labels = [", ".join(map(str, levels)) for levels in configs]
    for levels in configs:
        with spawn.Pool(1) as pool:
            results.append(pool.apply(measure, (args.corpus, args.queries, levels, args.join)))
    if args.workers > 1:
        # In this process (a pool's process may not start processes of its own), which has
        # held nothing large so far.
        batches = [int(b) for b in args.batch.split(",")]
        job = (args.corpus, args.queries, configs[-1], args.workers, batches, args.join)
        results.extend(measure_parallel(*job))
        last = labels[-1]
        labels.extend(f"{last} on {args.workers} processes, batches of {b}" for b in batches)
    base = results[0]
    if args.answers:
        with open(args.answers, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(answer) + "\n" for answer in base["answers"])
    scores = [score for score, _ in base["answers"]]
    counts = [sum(lo < s <= hi for s in scores) for lo, hi in BANDS]
    print(f"pool {base['pool']:,}, {len(scores):,} held-out queries; their best scores:")
    print(", ".join(f"({lo}, {hi}]: {n}" for (lo, hi), n in zip(BANDS, counts, strict=True)))
    bands = " | ".join(f"ms, best in ({lo}, {hi}]" for lo, hi in BANDS)
    print(f"\n| prefix lists at | build s | ms a query | vs baseline | {bands} | peak RSS MB |")
    print("|---|---:|---:|---:|" + "---:|" * len(BANDS) + "---:|")
    base_ms = sum(base["seconds"]) / len(scores) * 1000
    for label, r in zip(labels, results, strict=True):
        if r["answers"] != base["answers"]:
            raise SystemExit(f"prefix lists at {label}: answers differ from the baseline's")
        ms = sum(r["seconds"]) / len(scores) * 1000
        by_band = []
        for lo, hi in BANDS:
            times = [t for t, s in zip(r["seconds"], scores, strict=True) if lo < s <= hi]
            by_band.append(f"{sum(times) / max(1, len(times)) * 1000:.2f}")
        print(
            f"| {label} | {r['built_s']:.0f} | {ms:.2f} |"
            f" {ms / base_ms:.2f} | {' | '.join(by_band)} | {r['rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
