"""Greedy de-duplication at corpus scale: selfgen's exact ROUGE-L against MinHash LSH.

One run prints one table, every figure measured in that run:

- selfgen: `selfgen dedupe FILE --out OUT -q [--workers W]`, the command line as a user runs it,
  on the first N lines (N = each of --sizes), once for each of --workers (default `1,auto`: one
  process, then the command's default, all usable cores up to 4), in a child process: seconds,
  peak resident set summed over the command's processes, rows kept, processes used. Exact: its decisions are rouge-score's (the property tests prove it).
- MinHash LSH: `datasketch` (`MinHash.bulk` with --perms permutations over word shingles of
  --shingle words from rouge-score's tokens, `MinHashLSH` at Jaccard --lsh-threshold), the
  usual approximate way, greedy in the same order (a row is dropped when the LSH returns any
  kept row), in a child process of its own: seconds, peak resident set, rows kept.
- On the first --sample lines, where the exact answer is known (selfgen's decisions), LSH's
  precision and recall at finding the rows that exact greedy ROUGE-L drops.
- rouge-score's cost per pair (`RougeScorer.score` on random pairs of the corpus), so that
  every time also reads as pair-equivalents, comparable across machines.

    python benchmarks/rouge_scale.py --corpus ../shared/data/package_summaries_954k.txt \
        --sizes 100000,all

Needs `pip install -e '.[bench]'` (datasketch).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rouge_score import rouge_scorer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from selfgen.filters.rouge import RougeIndex, rouge_tokenize  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "package_summaries_954k.txt"


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants (from /proc), in MB."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total / 2**20


def selfgen_cli(
    path: Path, threshold: float, workers: str, workdir: Path
) -> tuple[float, float, int, int]:
    """`selfgen dedupe` in a child process: (seconds, peak RSS in MB summed over the command's
    processes, rows kept, processes it used). The sum is sampled every 0.2 s (so a spike
    shorter than that can be missed); it is never below the largest single process's peak."""
    out = workdir / "kept.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "selfgen", "dedupe", str(path), "--out", str(out)]
    cmd += ["--threshold", str(threshold), "-q"]
    if workers != "auto":
        cmd += ["--workers", workers]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    report = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"error: selfgen dedupe exited with {proc.returncode}")
    used = re.search(r"\((\d+) process", report)
    with open(out, encoding="utf-8") as f:
        kept = sum(1 for _ in f)
    return seconds, max(peak, usage.ru_maxrss / 1024), kept, int(used.group(1)) if used else 0


def shingles(text: str, size: int) -> list[bytes]:
    tokens = rouge_tokenize(text)
    if len(tokens) <= size:
        return [" ".join(tokens).encode()]
    return [" ".join(tokens[i : i + size]).encode() for i in range(len(tokens) - size + 1)]


def lsh_decisions(texts: list[str], threshold: float, perms: int, size: int) -> list[bool]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=perms)
    decisions = []
    chunk = 10_000
    for at in range(0, len(texts), chunk):
        batch = [shingles(t, size) for t in texts[at : at + chunk]]
        for offset, minhash in enumerate(MinHash.bulk(batch, num_perm=perms, seed=1)):
            novel = not lsh.query(minhash)
            decisions.append(novel)
            if novel:
                lsh.insert(at + offset, minhash, check_duplication=False)
    return decisions


def _lsh_child(path: str, n: int, threshold: float, perms: int, size: int, queue) -> None:
    texts = read_lines(Path(path), n)
    start = time.perf_counter()
    decisions = lsh_decisions(texts, threshold, perms, size)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((decisions, seconds, peak))


def lsh_in_child(path: Path, n: int, args) -> tuple[list[bool], float, float]:
    """MinHash LSH in a fresh process (reading its own input), so its peak memory is its own."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_lsh_child,
        args=(str(path), n, args.lsh_threshold, args.perms, args.shingle, queue),
    )
    proc.start()
    result = queue.get()
    proc.join()
    return result


def exact_decisions(texts: list[str], threshold: float) -> list[bool]:
    index = RougeIndex(prefix_threshold=threshold)
    index.learn_token_order(texts)
    decisions = []
    for text in texts:
        novel = index.is_novel(text, threshold)
        decisions.append(novel)
        if novel:
            index.add(text)
    return decisions


def seconds_per_pair(texts: list[str], pairs: int) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    sample = [(rng.choice(texts), rng.choice(texts)) for _ in range(pairs)]
    start = time.perf_counter()
    for a, b in sample:
        scorer.score(a, b)
    return (time.perf_counter() - start) / pairs


def read_lines(path: Path, n: int | None) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                texts.append(line)
                if n is not None and len(texts) == n:
                    break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--sizes", default="100000,all", help="first N lines, or all")
    parser.add_argument("--sample", type=int, default=20000, help="lines for precision/recall")
    parser.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L F threshold")
    parser.add_argument("--lsh-threshold", type=float, default=0.5, help="LSH Jaccard threshold")
    parser.add_argument("--perms", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--shingle", type=int, default=1, help="words per shingle")
    parser.add_argument("--pairs", type=int, default=20000, help="pairs timed with rouge-score")
    parser.add_argument(
        "--workers",
        default="1,auto",
        help="selfgen dedupe --workers values to run, comma-separated (auto: its default)",
    )
    args = parser.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"error: {args.corpus}: no such corpus (pass --corpus)")
    try:
        import datasketch  # noqa: F401
    except ImportError:
        sys.exit("error: the MinHash baseline needs datasketch: pip install -e '.[bench]'")

    texts = read_lines(args.corpus, None)
    per_pair = seconds_per_pair(texts[: args.sample], args.pairs)
    lsh_name = (
        f"MinHash LSH ({args.perms} perms, {args.shingle}-word shingles, "
        f"Jaccard {args.lsh_threshold})"
    )
    table = Table(
        title=f"Greedy de-duplication, ROUGE-L > {args.threshold}, {os.cpu_count()} cores; "
        f"rouge-score: {per_pair * 1e6:.1f} us a pair"
    )
    for col in (
        "N",
        "method",
        "seconds",
        "pair-equivalents",
        "peak MB",
        "kept",
        "precision",
        "recall",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")

    # Precision and recall where the exact answer is known.
    sample = texts[: args.sample]
    exact = exact_decisions(sample, args.threshold)
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.txt"
        sample_path.write_text("".join(t + "\n" for t in sample), encoding="utf-8")
        approx, _, _ = lsh_in_child(sample_path, len(sample), args)
    dropped = [not d for d in exact]
    flagged = [not d for d in approx]
    hits = sum(a and b for a, b in zip(dropped, flagged, strict=True))
    precision = hits / max(1, sum(flagged))
    recall = hits / max(1, sum(dropped))
    table.add_row(
        f"{len(sample):,}", "selfgen exact", "-", "-", "-", f"{sum(exact):,}", "1.000", "1.000"
    )
    table.add_row(
        f"{len(sample):,}",
        lsh_name,
        "-",
        "-",
        "-",
        f"{sum(approx):,}",
        f"{precision:.3f}",
        f"{recall:.3f}",
    )

    for size in args.sizes.split(","):
        n = len(texts) if size == "all" else min(int(size), len(texts))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "input.txt"
            path.write_text("".join(t + "\n" for t in texts[:n]), encoding="utf-8")
            for workers in args.workers.split(","):
                s_seconds, s_peak, s_kept, used = selfgen_cli(
                    path, args.threshold, workers.strip(), Path(tmp)
                )
                table.add_row(
                    f"{n:,}",
                    f"selfgen dedupe (CLI, --workers {workers.strip()}: {used} process"
                    + ("es)" if used > 1 else ")"),
                    f"{s_seconds:.1f}",
                    f"{s_seconds / per_pair:,.0f}",
                    f"{s_peak:.0f}",
                    f"{s_kept:,}",
                    "exact",
                    "exact",
                )
            l_dec, l_seconds, l_peak = lsh_in_child(path, n, args)
        table.add_row(
            f"{n:,}",
            lsh_name,
            f"{l_seconds:.1f}",
            f"{l_seconds / per_pair:,.0f}",
            f"{l_peak:.0f}",
            f"{sum(l_dec):,}",
            "-",
            "-",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
