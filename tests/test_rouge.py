import random

import pytest
from conftest import SEEDS, shared_file
from rouge_score import rouge_scorer

from selfgen.filters.rouge import RougeIndex, cjk_tokenize, lcs_length, rouge_l_f, rouge_tokenize
from selfgen.seeds import load_seed_tasks


def _reference_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _reference_lcs(a, b)


def _texts():
    texts = [t.instruction for t in load_seed_tasks(SEEDS)]
    texts += ["", "!!!", "Hello, WORLD: café 42x", "a a a a b", "b a a a a"]
    return texts


def test_scores_equal_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = _texts()
    rng = random.Random(1)
    for _ in range(3000):
        a, b = rng.choice(texts), rng.choice(texts)
        expected = scorer.score(a, b)["rougeL"].fmeasure
        assert rouge_l_f(rouge_tokenize(b), rouge_tokenize(a)) == pytest.approx(expected, abs=1e-12)


def test_scores_equal_rouge_score_on_shared_corpus():
    lines = shared_file("short_texts_50k.txt").read_text().splitlines()[:500]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(2)
    for _ in range(2000):
        a, b = rng.sample(lines, 2)
        expected = scorer.score(a, b)["rougeL"].fmeasure
        assert abs(rouge_l_f(rouge_tokenize(b), rouge_tokenize(a)) - expected) <= 1e-12


def test_index_best_is_the_exhaustive_maximum():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = _texts()
    index = RougeIndex()
    for t in texts[:80]:
        index.add(t)
    for query in texts[80:]:
        score, nearest = index.best(query)
        exhaustive = max(scorer.score(t, query)["rougeL"].fmeasure for t in texts[:80])
        assert abs(score - exhaustive) <= 1e-12
        if nearest is not None:
            assert (
                abs(scorer.score(index.texts[nearest], query)["rougeL"].fmeasure - score) <= 1e-12
            )


def test_cjk_tokenizer_keeps_chinese_and_matches_rouge_on_ascii():
    assert cjk_tokenize("写一首诗, about Spring!") == ["写", "一", "首", "诗", "about", "spring"]
    assert rouge_tokenize("写一首诗") == []  # why the default tokenizer cannot judge Chinese
    for text in _texts():
        assert cjk_tokenize(text) == rouge_tokenize(text) or not text.isascii()
    index = RougeIndex(cjk_tokenize)
    index.add("写一首关于春天的诗")
    score, nearest = index.best("写一首关于秋天的诗")
    assert nearest == 0 and score == pytest.approx(8 / 9)
