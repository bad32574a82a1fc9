"""Every pruning path of the index against an exhaustive scan: prefix lists with positional
and length filtering, the rarest-first posting search of `best` (with and without its first
best taken from the prefix lists), the numpy and the plain Python bounds,
learned and first-seen token orders; on Latin and CJK text, and on texts longer than 300
tokens. Greedy de-duplication is checked the same way, decision by decision, on one process
and split between worker processes."""

import itertools
import math
import random

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from selfgen.filters.greedy import GreedyDedupe, ParallelGreedyDedupe
from selfgen.filters.rouge import (
    _REACH_MAX,
    _SLACK,
    RougeIndex,
    TokenIds,
    _need,
    _reach,
    cjk_tokenize,
    rouge_l_f,
    rouge_tokenize,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)

LATIN = ["the", "a", "cat", "Cat", "dog", "sat", "on", "mat", "x1", "42", "don't", "C++"]
CJK = ["写", "一", "首", "诗", "春", "天", "的", "秋", "poem", "spring"]


def latin_text(min_size=0, max_size=14):
    return st.lists(st.sampled_from(LATIN), min_size=min_size, max_size=max_size).map(" ".join)


TEXT = st.one_of(
    latin_text(),
    latin_text(301, 340),  # long: masks and prefixes past 300 tokens
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=300, max_size=330).map(" ".join),
    st.text(max_size=30),
)
CJK_TEXT = st.one_of(
    st.lists(st.sampled_from(CJK), max_size=16).map("".join),
    st.lists(st.sampled_from(CJK), min_size=301, max_size=330).map("".join),
)


def variants(texts: list[str], rng: random.Random) -> list[str]:
    """Near-duplicates of `texts` (a word dropped, swapped or added), so that pools hold
    scores on both sides of every threshold, ties included."""
    out = []
    for text in texts:
        words = text.split() if " " in text else list(text)
        joiner = " " if " " in text else ""
        if words:
            w = list(words)
            del w[rng.randrange(len(w))]
            out.append(joiner.join(w))
            w = list(words)
            w[rng.randrange(len(w))] = rng.choice(LATIN + CJK)
            out.append(joiner.join(w))
        out.append(joiner.join([*words, rng.choice(LATIN + CJK)]))
    return out


def exhaustive(pool, query, tokenizer):
    # rouge_l_f equals rouge-score pair by pair (test_rouge_properties proves it), and is fast
    # enough for texts of 300 tokens and more.
    return [rouge_l_f(tokenizer(query), tokenizer(text)) for text in pool]


def check_index(
    pool,
    queries,
    tokenizer,
    prefix,
    learn_order,
    vector_min,
    seeding=(32, 16),
    seed_from_prefixes=True,
    *,
    thresholds,
):
    # `prefix`: None, or the thresholds of the prefix lists, the highest first.
    levels = () if prefix is None else prefix if isinstance(prefix, tuple) else (prefix,)
    index = RougeIndex(
        tokenizer, prefix_threshold=levels[0] if levels else None, best_levels=levels[1:]
    )
    index.vector_min = vector_min
    index.seed_after, index.seed_texts = seeding
    index.seed_from_prefixes = seed_from_prefixes
    if learn_order:
        index.learn_token_order(pool)
    for text in pool:
        index.add(text)
    for query in queries:
        scores = exhaustive(pool, query, tokenizer)
        best = max(scores, default=0.0)
        score, nearest = index.best(query)
        assert abs(score - best) <= 1e-12
        assert nearest == (scores.index(best) if best > 0 else None)  # ties: earliest text
        for threshold in thresholds:
            assert index.is_novel(query, threshold) == (best <= threshold)
            above, which = index.nearest_above(query, threshold)
            if best > threshold:
                assert (above, which) == (best, scores.index(best))
            else:
                assert which is None


PATHS = st.tuples(
    # prefix lists at this threshold (or these, for `best`), or none
    st.sampled_from([None, 0.0, 0.5, 0.7, (0.7, 0.5, 0.4), (0.5, 0.2)]),
    st.booleans(),  # token order learned from the pool, or first-seen
    st.sampled_from([0, 10**9]),  # bounds always in numpy, or always in Python
    # a postings search scores early before every longer list (1 or 3 texts), or never
    st.sampled_from([(0, 1), (0, 3), (32, 16), (10**9, 16)]),
    # `best` below the prefix threshold starts from the best of the prefix candidates, or not
    st.booleans(),
)


@SETTINGS
@given(st.lists(TEXT, min_size=1, max_size=12), st.randoms(use_true_random=False), PATHS)
def test_every_path_equals_an_exhaustive_scan(base, rng, path):
    pool = base + variants(base, rng)
    rng.shuffle(pool)
    queries = [*variants(base[:3], rng), *base[:2]]
    check_index(pool, queries, rouge_tokenize, *path, thresholds=[0.3, 0.45, 0.5, 0.7, 0.9])


@SETTINGS
@given(st.lists(CJK_TEXT, min_size=1, max_size=10), st.randoms(use_true_random=False), PATHS)
def test_every_path_equals_an_exhaustive_scan_on_cjk(base, rng, path):
    pool = base + variants(base, rng)
    rng.shuffle(pool)
    queries = [*variants(base[:3], rng), *base[:2]]
    check_index(pool, queries, cjk_tokenize, *path, thresholds=[0.3, 0.45, 0.5, 0.7, 0.9])


def test_the_float_tie_at_the_threshold():
    # An LCS of 7 between 8 and 12 tokens: F is 0.7 in real numbers and 0.7000000000000001 as
    # a float, so rouge-score (and the index, on every path) rejects it at 0.7.
    pool = [" ".join(f"w{i}" for i in range(12))]
    query = " ".join([*(f"w{i}" for i in range(7)), "v0"])
    assert SCORER.score(pool[0], query)["rougeL"].fmeasure > 0.7
    for prefix in (None, 0.7, (0.7, 0.5)):
        for vector_min in (0, 10**9):
            for seed in (True, False):
                check_index(
                    pool,
                    [query],
                    rouge_tokenize,
                    prefix,
                    True,
                    vector_min,
                    (32, 16),
                    seed,
                    thresholds=[0.7],
                )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.one_of(latin_text(1, 10), CJK_TEXT), min_size=1, max_size=15),
    st.randoms(use_true_random=False),
    st.sampled_from([0.5, 0.7]),
    st.sampled_from([0, 10**9]),
)
def test_greedy_dedupe_equals_an_exhaustive_scan(base, rng, threshold, vector_min):
    texts = base + variants(base, rng)
    rng.shuffle(texts)
    # As `selfgen dedupe` runs it: token order learned first, prefix lists at the threshold.
    index = RougeIndex(cjk_tokenize, prefix_threshold=threshold)
    index.vector_min = vector_min
    index.learn_token_order(texts)
    kept: list[list[str]] = []
    for text in texts:
        tokens = cjk_tokenize(text)
        novel = all(rouge_l_f(tokens, k) <= threshold for k in kept)
        assert index.is_novel(text, threshold) == novel
        if novel:
            index.add(text)
            kept.append(tokens)


def greedy_reference(texts, tokenizer, threshold, against=0):
    """Greedy de-duplication by exhaustive scan: None for a kept text, else (score, kept row)
    of the nearest kept row above the threshold (ties to the earliest)."""
    kept: list[list[str]] = [tokenizer(t) for t in texts[:against]]
    decisions = []
    for text in texts[against:]:
        tokens = tokenizer(text)
        scores = [rouge_l_f(tokens, k) for k in kept]
        best = max(scores, default=0.0)
        if best > threshold:
            decisions.append((best, scores.index(best)))
        else:
            decisions.append(None)
            kept.append(tokens)
    return decisions


def run_engine(engine, ids, offsets, against, batch):
    decisions: list = []
    with engine:
        engine.keep(ids, offsets, 0, against)
        pending = 0
        for start in range(against, len(offsets) - 1, batch):
            if pending == engine.depth:
                decisions += engine.collect()
                pending -= 1
            engine.submit(ids, offsets, start, min(start + batch, len(offsets) - 1))
            pending += 1
        for _ in range(pending):
            decisions += engine.collect()
    return decisions


def check_greedy(texts, tokenizer, threshold, against, batch, vector_min):
    """One process and 2 and 3 worker processes (forked, for speed here; `selfgen dedupe`
    spawns them, as its tests check) give the exhaustive greedy decisions: the same rows kept
    and, asked for the nearest, the same nearest kept row and score."""
    corpus = TokenIds(tokenizer)
    for text in texts:
        corpus.feed(text)
    ids, offsets = corpus.finish()
    expected = greedy_reference(texts, tokenizer, threshold, against)
    saved = RougeIndex.vector_min
    RougeIndex.vector_min = vector_min  # forked workers inherit it
    try:
        for nearest in (True, False):
            engines = [GreedyDedupe(threshold, nearest=nearest)] + [
                ParallelGreedyDedupe(threshold, w, nearest=nearest, start_method="fork")
                for w in (2, 3)
            ]
            for engine in engines:
                got = run_engine(engine, ids, offsets, against, batch)
                if nearest:
                    assert got == expected
                else:
                    assert [d is None for d in got] == [d is None for d in expected]
    finally:
        RougeIndex.vector_min = saved


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(st.one_of(latin_text(1, 10), latin_text(301, 320), CJK_TEXT), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
    st.sampled_from([0.5, 0.7]),
    st.integers(1, 5),  # rows per batch: small, so that batches and shares interact
    st.integers(0, 4),  # rows kept beforehand (an --against file)
    st.sampled_from([0, 10**9]),
)
def test_greedy_on_one_and_on_several_processes_equals_an_exhaustive_scan(
    base, rng, threshold, batch, against, vector_min
):
    # Near-duplicates land in the same batch and in other batches, in every worker's share.
    texts = base + variants(base, rng) + variants(base, rng)
    rng.shuffle(texts)
    check_greedy(texts, cjk_tokenize, threshold, min(against, len(texts)), batch, vector_min)


def test_greedy_on_several_processes_with_the_float_tie():
    # 0.7000000000000001 > 0.7: rejected by rouge-score, and on every number of processes,
    # whether the tied row is in a worker, in the previous batch or in the same one.
    head = " ".join(f"w{i}" for i in range(12))
    tie = " ".join([*(f"w{i}" for i in range(7)), "v0"])
    assert SCORER.score(head, tie)["rougeL"].fmeasure > 0.7
    texts = [head, "other words entirely", "more unrelated text here", tie, tie + " v1", head]
    assert greedy_reference(texts, rouge_tokenize, 0.7)[3] is not None
    for batch in (1, 2, 3, 4, 6):
        check_greedy(texts, rouge_tokenize, 0.7, 0, batch, 48)


def test_an_index_without_postings_refuses_what_it_cannot_answer():
    index = RougeIndex(prefix_threshold=0.7, postings=False)
    index.add_ids([0, 1, 2])
    assert index.search_ids([0, 1, 2], 0.7) == (1.0, 0)
    with pytest.raises(ValueError, match="prefix lists only"):
        index.search_ids([0, 1, 2], 0.5)


def test_a_tie_below_the_prefix_threshold_goes_to_the_earliest_text():
    # Texts 2 and 3 both score 4/11: the later one is the best the prefix lists find, which
    # is where the postings search starts from, and the earlier one must still win the tie.
    pool = ["i", "a", "e d c c c e", "c c a f c b", "a f b", "e f a a c a"]
    query = "c b e e h"
    tied = [SCORER.score(pool[k], query)["rougeL"].fmeasure for k in (2, 3)]
    assert tied[0] == tied[1] == max(SCORER.score(t, query)["rougeL"].fmeasure for t in pool)
    for vector_min in (0, 10**9):
        for seed in (True, False):
            check_index(
                pool,
                [query],
                rouge_tokenize,
                0.7,
                True,
                vector_min,
                (32, 16),
                seed,
                thresholds=[0.3, 0.7],
            )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.lists(st.sampled_from("abcdefg"), max_size=6).map(" ".join), max_size=30),
    st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6).map(" ".join),
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]),
    st.sampled_from([0, 10**9]),
)
def test_prefix_candidates_hold_every_text_above_the_threshold(pool, query, threshold, vector_min):
    # Short texts over a few tokens: many where one shared key is enough (alpha 1: texts of
    # one or two tokens) next to many where two are needed, on both paths.
    index = RougeIndex(prefix_threshold=threshold)
    index.vector_min = vector_min
    for text in pool:
        index.add(text)
    scores = exhaustive(pool, query, rouge_tokenize)
    # At the index's threshold, and above it (the reach stored with each prefix key is the
    # index's: looser than a higher threshold needs).
    for asked in (threshold, min(1.0, threshold + 0.15)):
        found = index._prefix_candidates(index._query(query), asked)
        above = {i for i, score in enumerate(scores) if score > asked}
        assert above <= set(np.asarray(found).tolist())
    # At a text's own score, as `best` asks a lower level once it has a best above that level:
    # the texts that tie with it too (the earliest of them wins).
    for asked in {score for score in scores if score >= threshold and score > 0}:
        found = index._prefix_candidates(index._query(query), asked)
        at_least = {i for i, score in enumerate(scores) if score >= asked}
        assert at_least <= set(np.asarray(found).tolist())


def test_the_reach_of_a_prefix_key_is_the_longest_query_it_serves():
    # Straight from the definition: the key at position j of a text of n keys is in the text's
    # prefix for a query of m tokens while j <= n - max(1, floor(t(m + n)/2)).
    for threshold in (0.3, 0.5, 0.7, 0.75, 0.9, 1.0):
        for n in range(1, 60):
            size = min(n, n - math.floor(_need(threshold, n)) + 1)
            for j in range(size):
                reach = _reach(threshold, n, j)
                serves = [
                    j <= n - max(1, math.floor(threshold * (m + n) / 2 - _SLACK))
                    for m in range(1, reach + 5)
                ]
                assert serves == [m <= reach for m in range(1, reach + 5)], (threshold, n, j)
    assert _reach(0.0, 10, 3) == _REACH_MAX  # every query: the cap


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.one_of(latin_text(0, 12), st.text(max_size=20)), max_size=40), st.integers(1, 5))
def test_token_ids_number_tokens_commonest_first(texts, chunk):
    # By the number of texts holding a token, commonest first, ties by first appearance; the
    # document frequencies counted a few texts at a time.
    corpus = TokenIds(rouge_tokenize)
    corpus.df_chunk = chunk
    for text in texts:
        corpus.feed(text)
    ids, offsets = corpus.finish()
    tokens = [rouge_tokenize(text) for text in texts]
    first_seen = list(dict.fromkeys(t for row in tokens for t in row))
    df = {t: sum(t in row for row in tokens) for t in first_seen}
    number = {t: i for i, t in enumerate(sorted(first_seen, key=lambda t: -df[t]))}
    assert ids.tolist() == [number[t] for row in tokens for t in row]
    assert offsets.tolist() == [0, *itertools.accumulate(len(row) for row in tokens)]


def test_the_loops_novelty_filter_records_the_exact_nearest_neighbour():
    # The loop's filter keeps prefix lists at its threshold and at lower levels for `best`:
    # each record's nearest neighbour and score are those of a scan of the whole pool, which
    # grows by every record that passes.
    from selfgen.config import build_config
    from selfgen.filters.novelty import BEST_LEVELS, NoveltyFilter
    from selfgen.filters.rules import RuleFilter
    from selfgen.records import Candidate, Fate, Stage
    from selfgen.seeds import load_seed_tasks

    cfg = build_config({}, {})
    instructions = [t.instruction for t in load_seed_tasks(ROOT / "seeds" / "seed_tasks.jsonl")]
    rng = random.Random(7)
    pool, asked = instructions[::2], instructions[1::2]
    asked += variants(pool[:40], rng)
    rng.shuffle(asked)
    novelty = NoveltyFilter(RuleFilter(cfg.rule_config()), rouge_tokenize, 0.7, pool)
    assert [level.threshold for level in novelty.index._levels] == [0.7, *BEST_LEVELS]
    pooled = [rouge_tokenize(t) for t in pool]
    bands = set()
    for text in asked:
        record = Candidate(instruction=text, generation_index=0)
        novel = novelty.judge(record)
        if record.stage == Stage.RULES:
            continue
        tokens = rouge_tokenize(text)
        scores = [rouge_l_f(tokens, p) for p in pooled]
        best = max(scores)
        assert record.rouge_l == best
        assert record.nearest == (pool[scores.index(best)] if best > 0 else None)
        assert novel == (best <= 0.7) and (record.fate == Fate.REJECTED) == (not novel)
        bands.add(next(t for t in (0.7, *BEST_LEVELS, 0.0) if best > t or t == 0.0))
        if novel:
            pool.append(text)
            pooled.append(tokens)
    assert bands == {0.7, *BEST_LEVELS, 0.0}  # every level answered some, and the postings


@pytest.mark.parametrize(
    ("prefix", "levels"), [(None, (0.5,)), (0.7, (0.7,)), (0.7, (0.8,)), (0.7, (0.0,))]
)
def test_best_levels_lie_below_the_prefix_threshold(prefix, levels):
    with pytest.raises(ValueError, match="best_levels must lie between 0 and the prefix"):
        RougeIndex(prefix_threshold=prefix, best_levels=levels)


def exhaustive_best_batches(
    tokenize, pool: list[str], batches: list[list[str]], add_at_most: float | None
) -> list[tuple[float, int | None]]:
    """`best_batch` by brute force: every text against every text of the pool before it."""
    pooled = [tokenize(t) for t in pool]
    answers = []
    for batch in batches:
        added = []
        for text in batch:
            tokens = tokenize(text)
            scores = [rouge_l_f(tokens, p) for p in pooled]
            best = max(scores, default=0.0)
            answers.append((best, scores.index(best)) if best > 0 else (0.0, None))
            if add_at_most is not None and best <= add_at_most:
                added.append(tokens)
                pooled.append(tokens)
    return answers


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    st.lists(st.one_of(latin_text(1, 10), latin_text(301, 320), CJK_TEXT), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
    st.sampled_from([0.5, 0.7, None]),  # texts added at or below this; None: none added
    st.integers(1, 5),  # texts a batch
    st.integers(0, 4),  # texts in the pool beforehand
)
def test_best_batch_on_one_and_on_several_processes_equals_an_exhaustive_scan(
    base, rng, add_at_most, size, pooled
):
    from selfgen.filters.parallel import ParallelRougeIndex

    # Near-duplicates land in the same batch and in other batches, in every worker's slice.
    texts = base + variants(base, rng) + variants(base, rng)
    rng.shuffle(texts)
    pool, rest = texts[:pooled], texts[pooled:]
    batches = [rest[i : i + size] for i in range(0, len(rest), size)]
    expected = exhaustive_best_batches(cjk_tokenize, pool, batches, add_at_most)
    one = RougeIndex(cjk_tokenize, prefix_threshold=0.7, best_levels=(0.5, 0.3))
    one.learn_token_order(pool)
    for text in pool:
        one.add(text)
    assert [a for b in batches for a in one.best_batch(b, add_at_most)] == expected
    for workers in (2, 3):
        with ParallelRougeIndex(
            cjk_tokenize, 0.7, (0.5, 0.3), workers=workers, pool=pool, start_method="fork"
        ) as several:
            assert [a for b in batches for a in several.best_batch(b, add_at_most)] == expected
            assert several.texts == one.texts


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_workers_end_when_their_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        "from selfgen.filters.parallel import ParallelRougeIndex\n"
        "if __name__ == '__main__':\n"
        "    index = ParallelRougeIndex(pool=['a b c d', 'e f g h'], workers=2)\n"
        "    index.best_batch(['a b c x'] * 20, add_at_most=0.7)\n"
        "    print(*(p.pid for p in index._procs), flush=True)\n"
        "    sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(_running(pid) for pid in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 120  # only stops a hung test
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def test_the_plan_cache_starts_over_when_full():
    # `best` asks each level at the best score found so far, so the thresholds of the plans
    # have no end in a long run: the cache is bounded, and the answers do not depend on it.
    rng = random.Random(3)
    words = [f"w{i}" for i in range(40)]
    pool = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(80)]
    queries = [" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(30)]
    small, whole = (RougeIndex(prefix_threshold=0.7, best_levels=(0.5, 0.4, 0.3)) for _ in "ab")
    small.plans_kept = 3
    for text in pool:
        small.add(text)
        whole.add(text)
    for query in queries:
        scores = exhaustive(pool, query, rouge_tokenize)
        assert small.best(query) == whole.best(query) == (max(scores), scores.index(max(scores)))
        assert len(small._plans) <= 3
    assert len(whole._plans) > 3  # the small cache did start over
