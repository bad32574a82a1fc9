"""Greedy ROUGE-L de-duplication of the first N lines of a corpus: selfgen's index against
the two ways it is usually done, measured in the same run.

- baseline (a), "alpaca": rouge-score's LCS over a pre-tokenised pool, every candidate scored
  against the whole kept pool with `multiprocessing.Pool.map` over all cores (the approach of
  the Alpaca and Self-Instruct generation scripts);
- baseline (b), "naive": `RougeScorer.score` for every pair, in one process;
- selfgen: `RougeIndex.is_novel` as `selfgen dedupe` uses it (a first pass learns the token
  order, then one pass decides), in a fresh child process of its own.

Every method keeps a candidate when no kept text scores above the threshold. The table reports
seconds, pairs scored (LCS computed), pairs pruned (never scored), selfgen's peak memory (the
child process's peak resident set, interpreter included), the speed-up, and whether every
decision matched baseline (a).

    python benchmarks/rouge_dedupe.py --sizes 1000,5000 --big 50000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from selfgen.filters.rouge import RougeIndex  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "short_texts_50k.txt"


def alpaca_style(texts: list[str], threshold: float, pool: Pool) -> tuple[list[bool], int]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept_tokens: list[list[str]] = []
    decisions, pairs = [], 0
    for text in texts:
        tokens = scorer._tokenizer.tokenize(text)
        if kept_tokens:
            scores = pool.map(partial(rouge_scorer._score_lcs, tokens), kept_tokens, chunksize=256)
            pairs += len(kept_tokens)
            novel = max(s.fmeasure for s in scores) <= threshold
        else:
            novel = True
        decisions.append(novel)
        if novel:
            kept_tokens.append(tokens)
    return decisions, pairs


def naive(texts: list[str], threshold: float) -> tuple[list[bool], int]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[str] = []
    decisions, pairs = [], 0
    for text in texts:
        novel = True
        for other in kept:
            pairs += 1
            if scorer.score(other, text)["rougeL"].fmeasure > threshold:
                novel = False
                break
        decisions.append(novel)
        if novel:
            kept.append(text)
    return decisions, pairs


def selfgen_index(texts: list[str], threshold: float) -> tuple[list[bool], RougeIndex]:
    # As `selfgen dedupe` does it: a first pass learns the token order, then one pass decides.
    index = RougeIndex(prefix_threshold=threshold)
    index.learn_token_order(texts)
    decisions = []
    for text in texts:
        novel = index.is_novel(text, threshold)
        decisions.append(novel)
        if novel:
            index.add(text)
    return decisions, index


def _child(texts: list[str], threshold: float, queue) -> None:
    (decisions, index), seconds = timed(selfgen_index, texts, threshold)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((decisions, seconds, index.pairs_scored, peak_mb))


def selfgen_in_child(texts: list[str], threshold: float):
    """Run selfgen in a fresh process, so its peak memory is its own."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(texts, threshold, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument(
        "--sizes",
        default="1000,2000,5000",
        help="N values measured with every method (comma-separated)",
    )
    parser.add_argument(
        "--naive-max",
        type=int,
        default=2000,
        help="largest N for the single-process naive baseline",
    )
    parser.add_argument(
        "--big",
        type=int,
        default=50000,
        help="N measured with selfgen alone (baselines would take hours)",
    )
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"error: {args.corpus}: no such corpus (pass --corpus)")
    lines = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if line.strip()]

    table = Table(
        title=f"Greedy ROUGE-L de-duplication, threshold {args.threshold}, {os.cpu_count()} cores"
    )
    for col in (
        "N",
        "method",
        "seconds",
        "kept",
        "pairs scored",
        "pairs pruned",
        "peak MB",
        "speed-up vs (a)",
        "speed-up vs (b)",
        "decisions = (a)",
    ):
        table.add_column(col, justify="right" if col not in ("method",) else "left")

    sizes = [int(x) for x in args.sizes.split(",") if x]
    with Pool(os.cpu_count()) as pool:
        for n in sizes:
            texts = lines[:n]
            (a_dec, a_pairs), a_s = timed(alpaca_style, texts, args.threshold, pool)
            b_s = None
            if n <= args.naive_max:
                (b_dec, b_pairs), b_s = timed(naive, texts, args.threshold)
                table.add_row(
                    str(n),
                    "(b) naive",
                    f"{b_s:.2f}",
                    str(sum(b_dec)),
                    f"{b_pairs:,}",
                    "0",
                    "-",
                    "-",
                    "1.0x",
                    "yes" if b_dec == a_dec else "NO",
                )
            table.add_row(
                str(n),
                "(a) alpaca Pool.map",
                f"{a_s:.2f}",
                str(sum(a_dec)),
                f"{a_pairs:,}",
                "0",
                "-",
                "1.0x",
                "-",
                "-",
            )
            s_dec, s_s, scored, peak = selfgen_in_child(texts, args.threshold)
            table.add_row(
                str(n),
                "selfgen",
                f"{s_s:.3f}",
                str(sum(s_dec)),
                f"{scored:,}",
                f"{a_pairs - scored:,}",
                f"{peak:.0f}",
                f"{a_s / s_s:.0f}x",
                f"{b_s / s_s:.0f}x" if b_s else "-",
                "yes" if s_dec == a_dec else "NO",
            )
    if args.big:
        texts = lines[: args.big]
        s_dec, s_s, scored, peak = selfgen_in_child(texts, args.threshold)
        total_pairs = sum(_running_kept(s_dec))
        table.add_row(
            str(len(texts)),
            "selfgen",
            f"{s_s:.2f}",
            str(sum(s_dec)),
            f"{scored:,}",
            f"{total_pairs - scored:,}",
            f"{peak:.0f}",
            "-",
            "-",
            "not run",
        )
    Console(width=150).print(table)


def _running_kept(decisions: list[bool]):
    """For each candidate, how many kept texts it faced (the pairs a full scan would score)."""
    kept = 0
    for novel in decisions:
        yield kept
        kept += novel


if __name__ == "__main__":
    main()
