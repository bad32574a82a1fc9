"""Every pruning path of the index against an exhaustive scan: prefix lists with positional
and length filtering, the rarest-first posting search of `best`, the numpy and the plain Python
bounds, learned and first-seen token orders; on Latin and CJK text, and on texts longer than
300 tokens. Greedy de-duplication is checked the same way, decision by decision."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from selfgen.filters.rouge import RougeIndex, cjk_tokenize, rouge_l_f, rouge_tokenize

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


def check_index(pool, queries, tokenizer, prefix, learn_order, vector_min, thresholds):
    index = RougeIndex(tokenizer, prefix_threshold=prefix)
    index.vector_min = vector_min
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
    st.sampled_from([None, 0.0, 0.5, 0.7]),  # prefix lists at this threshold, or none
    st.booleans(),  # token order learned from the pool, or first-seen
    st.sampled_from([0, 10**9]),  # bounds always in numpy, or always in Python
)


@SETTINGS
@given(st.lists(TEXT, min_size=1, max_size=12), st.randoms(use_true_random=False), PATHS)
def test_every_path_equals_an_exhaustive_scan(base, rng, path):
    pool = base + variants(base, rng)
    rng.shuffle(pool)
    queries = [*variants(base[:3], rng), *base[:2]]
    check_index(pool, queries, rouge_tokenize, *path, thresholds=[0.5, 0.7, 0.9])


@SETTINGS
@given(st.lists(CJK_TEXT, min_size=1, max_size=10), st.randoms(use_true_random=False), PATHS)
def test_every_path_equals_an_exhaustive_scan_on_cjk(base, rng, path):
    pool = base + variants(base, rng)
    rng.shuffle(pool)
    queries = [*variants(base[:3], rng), *base[:2]]
    check_index(pool, queries, cjk_tokenize, *path, thresholds=[0.5, 0.7, 0.9])


def test_the_float_tie_at_the_threshold():
    # An LCS of 7 between 8 and 12 tokens: F is 0.7 in real numbers and 0.7000000000000001 as
    # a float, so rouge-score (and the index, on every path) rejects it at 0.7.
    pool = [" ".join(f"w{i}" for i in range(12))]
    query = " ".join([*(f"w{i}" for i in range(7)), "v0"])
    assert SCORER.score(pool[0], query)["rougeL"].fmeasure > 0.7
    for prefix in (None, 0.7):
        for vector_min in (0, 10**9):
            check_index(pool, [query], rouge_tokenize, prefix, True, vector_min, [0.7])


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
