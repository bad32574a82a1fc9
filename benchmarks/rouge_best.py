"""The loop's nearest-neighbour search (`RougeIndex.best`) on a large pool.

    python benchmarks/rouge_best.py [--corpus ../shared/data/package_summaries_954k.txt]

Indexes every line but a random 2,000 (seed 1) the way the loop's novelty filter does (prefix
lists at 0.7, token order learned from the pool) and times `best` on the 2,000 held out: the
build time, the mean milliseconds a query, how many have a neighbour above 0.7, and peak RSS.
`--answers FILE` writes every answer (score and nearest line), one a line, to compare two
versions of the index run back to back.
"""

import argparse
import json
import random
import resource
import time

from selfgen.filters.rouge import TOKENIZERS, RougeIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/package_summaries_954k.txt")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--answers", help="write each query's (score, nearest) here")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    held = set(random.Random(1).sample(range(len(lines)), args.queries))
    pool = [line for i, line in enumerate(lines) if i not in held]
    queries = [lines[i] for i in sorted(held)]
    start = time.perf_counter()
    index = RougeIndex(TOKENIZERS["rouge"], prefix_threshold=0.7)
    index.learn_token_order(pool)
    for text in pool:
        index.add(text)
    built = time.perf_counter()
    answers = [index.best(q) for q in queries]
    done = time.perf_counter()
    scores = [score for score, _ in answers]
    if args.answers:
        with open(args.answers, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(answer) + "\n" for answer in answers)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"pool {len(pool):,}: built in {built - start:.0f} s; best on {len(queries):,} held-out"
        f" queries: {(done - built) / len(queries) * 1000:.2f} ms each; above 0.7:"
        f" {sum(s > 0.7 for s in scores)}; peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
