"""Property tests: the index's scores are rouge-score's, on random and adversarial texts."""

from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenize

from selfgen.filters.rouge import RougeIndex, cjk_tokenize, rouge_l_f, rouge_tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

WORDS = st.sampled_from(
    [
        "the",
        "a",
        "cat",
        "Cat",
        "dog",
        "sat",
        "on",
        "mat",
        "x1",
        "42",
        "é",
        "naïve",
        "...",
        "!!",
        "-",
        "don't",
        "C++",
        "写",
        "诗",
        "春天",
        "ünïcode",
    ]
)
TEXT = st.one_of(
    st.text(max_size=60),  # anything, including empty and whitespace-only
    st.lists(WORDS, max_size=40).map(" ".join),  # few distinct tokens: many repeats and ties
    st.lists(st.sampled_from(["a", "b"]), min_size=50, max_size=300).map(" ".join),  # long
    st.text(alphabet=".,;:!?-()[]\"' ", max_size=30),  # punctuation only
)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


def reference(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


@SETTINGS
@given(st.one_of(TEXT, st.text(alphabet=st.characters(codec="utf-8"), max_size=60)))
def test_the_default_tokens_are_rouge_scores(text):
    assert rouge_tokenize(text) == tokenize.tokenize(text, None)


@SETTINGS
@given(TEXT, TEXT)
def test_pair_scores_equal_rouge_score(a, b):
    assert abs(rouge_l_f(rouge_tokenize(b), rouge_tokenize(a)) - reference(a, b)) <= 1e-12


@SETTINGS
@given(
    st.lists(TEXT, min_size=1, max_size=25),
    TEXT,
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]),
    st.sampled_from([None, 0.0, 0.5, 0.7]),
    st.booleans(),
)
def test_index_answers_equal_an_exhaustive_scan(pool, query, threshold, prefix, learn_order):
    # Every way of pruning: plain, prefix-filtered (used when threshold >= prefix), with the
    # token order learned from the pool or left to first appearance.
    index = RougeIndex(prefix_threshold=prefix)
    if learn_order:
        index.learn_token_order(pool)
    for text in pool:
        index.add(text)
    scores = [reference(text, query) for text in pool]
    best = max(scores)
    score, nearest = index.best(query)
    assert abs(score - best) <= 1e-12
    if best > 0:
        assert nearest == scores.index(best)  # ties go to the earliest text
    assert index.is_novel(query, threshold) == (best <= threshold)
    above, which = index.nearest_above(query, threshold)
    if best > threshold:
        assert above == best and which == scores.index(best)
    else:
        assert which is None


@SETTINGS
@given(
    st.lists(
        st.sampled_from(["写", "一", "首", "诗", "春", "天", "的", "spring", "Poem"]), max_size=30
    ).map("".join),
    st.lists(st.sampled_from(["写", "诗", "春", "秋", "的", "poem", " "]), max_size=30).map(
        "".join
    ),
)
def test_cjk_tokenizer_scores_chinese_pairs(a, b):
    index = RougeIndex(cjk_tokenize)
    index.add(a)
    score, _ = index.best(b)
    assert abs(score - rouge_l_f(cjk_tokenize(b), cjk_tokenize(a))) <= 1e-12
    if a.isascii() and b.isascii():
        assert abs(score - reference(a, b)) <= 1e-12
