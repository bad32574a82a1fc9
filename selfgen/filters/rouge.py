"""ROUGE-L novelty: tokenizers and an exact index of the growing pool.

Scores equal `rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(...)["rougeL"].fmeasure`
(no stemmer): same tokens, same LCS, same floating-point formula.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Tokenizer = Callable[[str], list[str]]

_ROUGE_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ROUGE_VALID = re.compile(r"^[a-z0-9]+$")

# CJK Unified Ideographs (and extension A, compatibility ideographs), Hiragana, Katakana, Hangul.
_CJK_CHARS = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
)
_CJK_TOKEN = re.compile(f"[{_CJK_CHARS}]|[a-z0-9]+")
CJK_CHAR = re.compile(f"[{_CJK_CHARS}]")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming: lower-case ASCII letters and digits.

    It drops every non-ASCII character, so two Chinese sentences always score 0.
    """
    text = _ROUGE_NON_ALNUM.sub(" ", text.lower())
    return [t for t in text.split() if _ROUGE_VALID.match(t)]


def cjk_tokenize(text: str) -> list[str]:
    """Each CJK character is a token; elsewhere the same tokens as :func:`rouge_tokenize`."""
    return _CJK_TOKEN.findall(text.lower())


TOKENIZERS: dict[str, Tokenizer] = {"rouge": rouge_tokenize, "cjk": cjk_tokenize}


def lcs_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004).

    Bit i of `v` is 0 where the LCS row has grown at position i of `a`; Python integers give
    a machine word as long as `a`.
    """
    if not a or not b:
        return 0
    masks: dict[object, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_f(candidate: Sequence[object], reference: Sequence[object]) -> float:
    """ROUGE-L F-measure of two token sequences, with rouge-score's arithmetic."""
    if not candidate or not reference:
        return 0.0
    lcs = lcs_length(reference, candidate)
    precision = lcs / len(candidate)
    recall = lcs / len(reference)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


class RougeIndex:
    """The texts a candidate must differ from, with their tokens computed once."""

    def __init__(self, tokenizer: Tokenizer = rouge_tokenize) -> None:
        self.tokenizer = tokenizer
        self.texts: list[str] = []
        self._tokens: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> int:
        self.texts.append(text)
        self._tokens.append(self.tokenizer(text))
        return len(self.texts) - 1

    def best(self, text: str) -> tuple[float, int | None]:
        """The highest ROUGE-L F of `text` against the index, and the index of that text."""
        tokens = self.tokenizer(text)
        best_score, best_id = 0.0, None
        n = len(tokens)
        for i, ref in enumerate(self._tokens):
            m = len(ref)
            if n == 0 or m == 0:
                continue
            # F can never exceed 2*min/(m+n); skip pairs that could not beat the best so far.
            if best_id is not None and 2 * min(m, n) / (m + n) <= best_score:
                continue
            score = rouge_l_f(tokens, ref)
            if best_id is None or score > best_score:
                best_score, best_id = score, i
        return best_score, best_id
