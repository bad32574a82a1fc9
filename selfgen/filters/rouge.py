"""ROUGE-L novelty: tokenizers and an exact index of the growing pool.

Scores equal `rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(...)["rougeL"].fmeasure`
(no stemmer): same tokens, same LCS, same floating-point formula.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

Tokenizer = Callable[[str], list[str]]

_ROUGE_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ROUGE_VALID = re.compile(r"^[a-z0-9]+$")

# CJK Unified Ideographs (and extension A, compatibility ideographs), Hiragana, Katakana, Hangul.
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
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


def _f_measure(lcs: int, len_candidate: int, len_reference: int) -> float:
    """rouge-score's F-measure, operation for operation, so the floats are identical."""
    precision = lcs / len_candidate
    recall = lcs / len_reference
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def rouge_l_f(candidate: Sequence[object], reference: Sequence[object]) -> float:
    """ROUGE-L F-measure of two token sequences, with rouge-score's arithmetic."""
    if not candidate or not reference:
        return 0.0
    return _f_measure(lcs_length(reference, candidate), len(candidate), len(reference))


# The bounds are real-number arguments, while scores are floats computed as rouge-score does
# (14/20 scores 0.7000000000000001, above a 0.7 threshold). Every pruning test leaves this much
# room, so rounding can only make it prune less, never wrongly.
_SLACK = 1e-9


def _need(threshold: float, length: int) -> float:
    """F > threshold needs an LCS (and so an overlap) above this, for a text of `length` tokens
    against a text of any length: L <= n and 2L/(m+n) > t give L > t*m/(2-t)."""
    return max(0.0, (threshold - _SLACK) * length / (2 - threshold + _SLACK))


def _prefix(counts: dict[int, int], length: int, known: int, threshold: float) -> list[int]:
    """Keys of the first `known - floor(need)` token occurrences of a text, in the global order
    (higher token id first, then occurrence number). An occurrence is keyed id*1024 + k."""
    size = known - math.floor(_need(threshold, length))
    keys: list[int] = []
    for t in sorted(counts, reverse=True):
        for k in range(min(counts[t], 1024)):
            if len(keys) >= size:
                return keys
            keys.append(t * 1024 + k)
    return keys


class RougeIndex:
    """An exact ROUGE-L index over a growing set of texts.

    Scores equal rouge-score's; the work is in not computing most of them:

    - tokens become integer ids once, and every text is kept with its token counts;
    - an inverted index finds the texts that share a token with the query, and the size of the
      multiset intersection bounds the LCS, so F <= 2 * overlap / (m + n) without any LCS;
    - for a threshold t, F > t needs an overlap above t * m / (2 - t) tokens, so only texts that
      contain one of the query's rarest tokens can pass (a pigeonhole argument), and only those
      posting lists are read;
    - candidates are scored in decreasing order of their bound, so the scan stops as soon as the
      next bound cannot beat the best score found;
    - the LCS itself is bit-parallel (:func:`lcs_length`), its masks built once per query;
    - with `prefix_threshold`, each text is also indexed by its prefix only (prefix filtering,
      as in set-similarity joins): under one fixed token order, two texts whose overlap reaches
      what threshold t requires must share a token among the first `len - floor(need)` of each.
      The order puts later-seen tokens first, which in practice is rarest first. Queries with
      a threshold >= `prefix_threshold` read those short posting lists only.
    """

    def __init__(
        self, tokenizer: Tokenizer = rouge_tokenize, prefix_threshold: float | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.prefix_threshold = prefix_threshold
        self._prefix_postings: dict[int, list[int]] = {}
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._seqs: list[list[int]] = []
        self._lengths: list[int] = []
        self._counts: list[dict[int, int]] = []
        self._postings: dict[int, list[int]] = {}
        self.pairs_scored = 0  # LCS computations, for benchmarks
        self.pairs_bounded = 0  # candidates whose bound was computed

    def __len__(self) -> int:
        return len(self.texts)

    def learn_token_order(self, texts: Iterable[str]) -> None:
        """Number tokens by how many of `texts` hold them, commonest lowest, before any text is
        added. Prefix filtering then reads the rarest tokens first (it takes higher ids first);
        without this, ids follow first appearance, a rougher guess at rarity. Scores and
        decisions are the same either way."""
        if self.texts:
            raise ValueError("learn_token_order must come before the first add")
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(self.tokenizer(text)))
        for token, _ in df.most_common():
            self._vocab.setdefault(token, len(self._vocab))

    def _ids(self, text: str, grow: bool) -> list[int]:
        vocab = self._vocab
        if grow:
            return [vocab.setdefault(t, len(vocab)) for t in self.tokenizer(text)]
        # A token never seen cannot match; -1 keeps its place in the sequence.
        return [vocab.get(t, -1) for t in self.tokenizer(text)]

    def add(self, text: str) -> int:
        """Index `text`; returns its position in :attr:`texts`."""
        ids = self._ids(text, grow=True)
        doc = len(self.texts)
        counts: dict[int, int] = {}
        for t in ids:
            counts[t] = counts.get(t, 0) + 1
        for t in counts:
            self._postings.setdefault(t, []).append(doc)
        if self.prefix_threshold is not None:
            for key in _prefix(counts, len(ids), len(ids), self.prefix_threshold):
                self._prefix_postings.setdefault(key, []).append(doc)
        self.texts.append(text)
        self._seqs.append(ids)
        self._lengths.append(len(ids))
        self._counts.append(counts)
        return doc

    def best(self, text: str) -> tuple[float, int | None]:
        """The highest ROUGE-L F of `text` against the index, and which text has it.

        Ties go to the earliest text. (0.0, None) when no indexed text shares a token.
        """
        return self._search(text, threshold=None, first_hit=False)

    def nearest_above(self, text: str, threshold: float) -> tuple[float, int | None]:
        """The best score and text among those scoring strictly above `threshold`, or
        (0.0, None) when there is none. Reads only what can beat the threshold."""
        return self._search(text, threshold=threshold, first_hit=False)

    def is_novel(self, text: str, threshold: float) -> bool:
        """True when no indexed text scores strictly above `threshold`; stops at the first."""
        return self._search(text, threshold=threshold, first_hit=True)[1] is None

    def _search(
        self, text: str, threshold: float | None, first_hit: bool
    ) -> tuple[float, int | None]:
        query = self._ids(text, grow=False)
        m = len(query)
        if m == 0 or not self.texts:
            return 0.0, None
        q_counts: dict[int, int] = {}
        for t in query:
            if t >= 0:
                q_counts[t] = q_counts.get(t, 0) + 1
        postings = self._postings
        seen: set[int] = set()
        if (
            threshold is not None
            and self.prefix_threshold is not None
            and (threshold >= self.prefix_threshold)
        ):
            for key in _prefix(q_counts, m, sum(q_counts.values()), threshold):
                docs = self._prefix_postings.get(key)
                if docs:
                    seen.update(docs)
        elif threshold is not None:
            # F > t needs an overlap L > need = t*m/(2-t). A text that shares none of the
            # probed token types overlaps the query on at most known - covered positions
            # (tokens never indexed match nothing), so covering known - floor(need) positions
            # leaves out only texts that cannot pass. Rarest types first: shortest lists.
            known = sum(q_counts.values())
            must_cover = known - math.floor(_need(threshold, m))
            covered = 0
            for t in sorted(q_counts, key=lambda t: len(postings[t])):
                if covered >= must_cover:
                    break
                seen.update(postings[t])
                covered += q_counts[t]
        else:
            for t in q_counts:
                seen.update(postings[t])
        lengths, counts = self._lengths, self._counts
        floor = threshold if threshold is not None else 0.0
        known = sum(q_counts.values())
        q_items = sorted(q_counts.items(), reverse=True)  # rarest first (see _prefix)
        bounded = []
        for doc in seen:
            n = lengths[doc]
            total = m + n
            # The bound needs an overlap above floor * (m + n) / 2; stop counting as soon as
            # the query positions left cannot bring it there. Length alone rules out most.
            required = floor * total / 2 - _SLACK
            if (n if n < m else m) <= required:
                continue
            dc = counts[doc]
            overlap, remaining = 0, known
            for t, c in q_items:
                remaining -= c
                d = dc.get(t)
                if d:
                    overlap += c if c < d else d
                elif overlap + remaining <= required:
                    break
            if overlap > required:
                bounded.append((-2 * overlap / total, doc))
        self.pairs_bounded += len(seen)
        if not bounded:
            return 0.0, None
        bounded.sort()
        masks: dict[int, int] = {}
        for i, t in enumerate(query):
            masks[t] = masks.get(t, 0) | (1 << i)
        full = (1 << m) - 1
        best_score, best_doc = 0.0, None
        seqs = self._seqs
        for neg_bound, doc in bounded:
            if -neg_bound + _SLACK < best_score:
                break  # no later candidate can beat (or tie) the best
            v = full
            for token in seqs[doc]:
                u = v & masks.get(token, 0)
                v = ((v + u) | (v - u)) & full
            lcs = m - v.bit_count()
            self.pairs_scored += 1
            score = _f_measure(lcs, m, lengths[doc])
            if score > floor and (
                best_doc is None or score > best_score or (score == best_score and doc < best_doc)
            ):
                best_score, best_doc = score, doc
                if first_hit:
                    break
        if best_doc is None:
            return 0.0, None
        return best_score, best_doc
