"""Does a quality scorer tell a good response from a poor one? Measured on data nobody tuned on.

The Self-Instruct paper's 252 user-oriented tasks, each answered by two released models
(`../shared/data/self_instruct_predictions/`): text-davinci-001 (instruction-tuned) and vanilla
davinci (the same size without instruction tuning; the paper's raters judged most of its
responses unacceptable). For every scorer, the pairwise accuracy is the share of tasks where it
prefers text-davinci-001's response (a tie counts half, a task it could not score counts as a
tie), with a 95% bootstrap interval over tasks (2,000 resamples, seed 0). A random scorer gets
50%. Seconds per item are wall time on this machine for both responses' scoring divided by the
number of responses: machine-dependent, compare them with each other, not across machines.

    python benchmarks/scorer_agreement.py                       # ifd and judge, bundled model
    python benchmarks/scorer_agreement.py --limit 60 --scorers ifd
    python benchmarks/scorer_agreement.py --model other.gguf    # any GGUF through llama.cpp
    python benchmarks/scorer_agreement.py --backend openai --base-url http://127.0.0.1:8000/v1
    python benchmarks/scorer_agreement.py --equal-length --scorers ifd   # length taken away

Length alone separates the two sets (davinci's responses run on for thousands of characters,
text-davinci-001's are a few sentences), so "the shorter wins" would score 100% here. With
`--equal-length` each task's two responses are cut to the same number of words (the shorter
one's), and a scorer must tell them apart by what the words say.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from selfgen.backends.base import get_backend  # noqa: E402
from selfgen.scoring import Example, get_scorer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct_predictions"
GOOD, POOR = "text-davinci-001_predictions.jsonl", "davinci_predictions.jsonl"


def load(path: Path) -> list[Example]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [Example(r["instruction"], r["input"] or "", r["response"].strip()) for r in rows]


def equal_words(a: str, b: str) -> tuple[str, str]:
    """`a` and `b` cut to the same number of words: as many as the shorter has."""
    n = min(len(a.split()), len(b.split()))

    def cut(text: str) -> str:
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        return text[: ends[n - 1]] if n else ""

    return cut(a), cut(b)


def pairwise(good: list[float | None], poor: list[float | None], higher: bool) -> list[float]:
    """Per task: 1 when the good response scores better, 0 when worse, 0.5 for a tie."""
    out = []
    for g, p in zip(good, poor, strict=True):
        if g is None or p is None or g == p:
            out.append(0.5)
        else:
            out.append(1.0 if (g > p) == higher else 0.0)
    return out


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def summary(
    name: str,
    model: str,
    settings: dict,
    seconds: float,
    good: list[float | None],
    poor: list[float | None],
    higher: bool,
) -> dict:
    wins = pairwise(good, poor, higher)
    low, high = bootstrap(wins)
    return {
        "scorer": name,
        "settings": settings,
        "model": model,
        "tasks": len(wins),
        "unscored": sum(g is None or p is None for g, p in zip(good, poor, strict=True)),
        "pairwise_accuracy": sum(wins) / len(wins),
        "ci95": [low, high],
        "seconds_per_item": seconds,
        "good": good,
        "poor": poor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorers", default="ifd,judge")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--model", default=None)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument(
        "--max-output-chars",
        type=int,
        default=None,
        help="ifd: score only the first N characters of each response (faster on a CPU)",
    )
    parser.add_argument(
        "--equal-length",
        action="store_true",
        help="cut each task's two responses to the same number of words (length taken away)",
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (args.data / GOOD).is_file():
        sys.exit(f"{args.data}: the released predictions are not there (../shared is absent)")
    good, poor = load(args.data / GOOD), load(args.data / POOR)
    if args.limit:
        good, poor = good[: args.limit], poor[: args.limit]
    if args.equal_length:
        pairs = [equal_words(g.output, p.output) for g, p in zip(good, poor, strict=True)]
        good = [
            Example(g.instruction, g.input, cut) for g, (cut, _) in zip(good, pairs, strict=True)
        ]
        poor = [
            Example(p.instruction, p.input, cut) for p, (_, cut) in zip(poor, pairs, strict=True)
        ]
    options = {
        k: v
        for k, v in (
            ("model", args.model),
            ("base_url", args.base_url),
            ("n_threads", args.threads),
        )
        if v
    }
    backend = get_backend(args.backend, **options)
    model = args.model or args.base_url or "bundled SmolLM2-135M-Instruct"
    results = [
        summary(
            "length (longer wins)",
            model="none",
            settings={},
            seconds=0.0,
            good=[len(e.output) for e in good],
            poor=[len(e.output) for e in poor],
            higher=True,
        )
    ]
    for name in args.scorers.split(","):
        extra = (
            {"max_output_chars": args.max_output_chars}
            if name == "ifd" and args.max_output_chars
            else {}
        )
        scorer = get_scorer(name, backend, **extra)
        started = time.perf_counter()
        good_scores, poor_scores = [], []
        for start in range(0, len(good), 21):  # in slices, to show progress on stderr
            good_scores += scorer.score(good[start : start + 21])
            poor_scores += scorer.score(poor[start : start + 21])
            print(f"{name}: {len(good_scores)}/{len(good)} tasks", file=sys.stderr, flush=True)
        seconds = (time.perf_counter() - started) / (len(good) + len(poor))
        settings = scorer.settings()
        results.append(
            summary(
                name,
                model,
                settings,
                seconds,
                [s.value for s in good_scores],
                [s.value for s in poor_scores],
                scorer.higher_is_better,
            )
        )
        if name == "ifd":
            # The two losses IFD divides, each read as a scorer of its own. They come from the
            # same evaluation, so they cost nothing more; they were not chosen on this data.
            for label, derive, higher in (
                ("ifd: conditioned loss alone", lambda d: d["conditioned_loss"], False),
                ("ifd: loss reduction", lambda d: d["direct_loss"] - d["conditioned_loss"], True),
            ):

                def values(scores, derive=derive):
                    return [derive(s.detail) if s.value is not None else None for s in scores]

                results.append(
                    summary(
                        label,
                        model,
                        settings,
                        seconds,
                        values(good_scores),
                        values(poor_scores),
                        higher,
                    )
                )
    backend.close()
    cut = ", each pair cut to equal words" if args.equal_length else ""
    table = Table(title=f"Scorer agreement with known quality: {len(good)} tasks{cut}, {model}")
    for column in ("scorer", "prefers the tuned response", "95% interval", "unscored", "s/item"):
        table.add_column(column, justify="left" if column == "scorer" else "right")
    for r in results:
        table.add_row(
            f"{r['scorer']} ({r['settings'].get('mode', '')})".replace(" ()", ""),
            f"{r['pairwise_accuracy']:.1%}",
            f"{r['ci95'][0]:.1%} - {r['ci95'][1]:.1%}",
            str(r["unscored"]),
            f"{r['seconds_per_item']:.2f}",
        )
    Console().print(table)
    Console().print("baseline: a scorer that cannot tell them apart gets 50.0%", highlight=False)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
