"""ROUGE-L novelty: tokenizers and an exact index of the growing pool.

Scores equal `rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(...)["rougeL"].fmeasure`
(no stemmer): same tokens, same LCS, same floating-point formula.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

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

# An occurrence of a token is keyed (id << 32) | k for its k-th occurrence in a text, so that
# multiset intersections are set intersections of keys.
_OCCURRENCE_BITS = 32
# A prefix posting is (doc << 16) | position of the key in the doc's prefix (capped: a smaller
# position only loosens the positional bound).
_POSITION_BITS = 16
_POSITION_MAX = (1 << _POSITION_BITS) - 1


def _need(threshold: float, length: int) -> float:
    """F > threshold needs an LCS (and so an overlap) above this, for a text of `length` tokens
    against a text of any length: L <= n and 2L/(m+n) > t give L > t*m/(2-t)."""
    return max(0.0, (threshold - _SLACK) * length / (2 - threshold + _SLACK))


class _Column:
    """A growing numpy array (amortised appends), so bound computations index it directly."""

    def __init__(self, dtype: type) -> None:
        self.data = np.zeros(1024, dtype=dtype)
        self.size = 0

    def extend(self, values: Sequence[int]) -> None:
        end = self.size + len(values)
        if end > len(self.data):
            grown = np.zeros(max(end, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end


class _Query:
    """A text as the index sees it: token ids (-1 for tokens it has never indexed), counts of
    the known ones, and their occurrence keys in the global order."""

    __slots__ = ("ids", "counts", "order", "sorted_keys", "_masks")

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        counts: dict[int, int] = {}
        for t in ids:
            if t >= 0:
                counts[t] = counts.get(t, 0) + 1
        self.counts = counts
        # Higher token id first, then occurrence number: with ids numbered commonest first
        # (or by first appearance), the rarest tokens lead.
        order: list[int] = []
        for t in sorted(counts, reverse=True):
            base = t << _OCCURRENCE_BITS
            order.extend(range(base, base + counts[t]))
        self.order = order
        self.sorted_keys: np.ndarray | None = None
        self._masks: dict[int, int] | None = None

    def keys_array(self) -> np.ndarray:
        if self.sorted_keys is None:
            self.sorted_keys = np.array(sorted(self.order), dtype=np.int64)
        return self.sorted_keys

    def masks(self) -> dict[int, int]:
        """Bit-parallel LCS masks of the query (see :func:`lcs_length`), built once."""
        if self._masks is None:
            masks: dict[int, int] = {}
            for i, t in enumerate(self.ids):
                masks[t] = masks.get(t, 0) | (1 << i)
            self._masks = masks
        return self._masks


class RougeIndex:
    """An exact ROUGE-L index over a growing set of texts.

    Scores equal rouge-score's; the work is in not computing most of them:

    - tokens become integer ids once; every text's token ids and occurrence keys (the k-th
      occurrence of token t) are kept in flat numpy arrays, so bounds for hundreds of candidates
      are a few vector operations, not a Python loop;
    - the multiset overlap bounds the LCS, so F <= 2 * overlap / (m + n) without any LCS, and
      the LCS (bit-parallel, :func:`lcs_length`) is computed only for candidates whose bound can
      still win, in decreasing order of bound, stopping as soon as no later one can;
    - :meth:`best` reads the posting lists of the query's tokens rarest first and stops reading
      as soon as a text sharing none of the tokens left could not reach the best score found
      (a text overlapping the query on at most R positions scores at most 2R/(m+R));
    - with `prefix_threshold`, each text is also indexed by its prefix only (prefix filtering,
      as in set-similarity joins): under one fixed token order, two texts whose overlap reaches
      what threshold t requires must share a token among the first `len - floor(need)` of each,
      and their first shared token, at positions i and j, bounds the overlap by
      min(m - i, n - j) (positional filtering, after PPJoin). The order puts later-seen tokens
      first, which in practice is rarest first; :meth:`learn_token_order` makes it exact.
      Queries with a threshold >= `prefix_threshold` read those short posting lists only.
    """

    def __init__(
        self, tokenizer: Tokenizer = rouge_tokenize, prefix_threshold: float | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.prefix_threshold = prefix_threshold
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._tokens = _Column(np.int32)  # every text's token ids, one text after the other
        self._keys = _Column(np.int64)  # their occurrence keys, in the same places
        self._starts = _Column(np.int64)  # where each text starts in both
        self._lengths = _Column(np.int32)
        self._postings: dict[int, array] = {}  # token id -> texts holding it
        self._prefix_postings: dict[int, array] = {}  # occurrence key -> (doc, position)
        self._seen = np.zeros(0, dtype=bool)  # scratch: texts already gathered by a query
        self._last: tuple[str, _Query] | None = None  # the last query, reused by `add`
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

    def _query(self, text: str) -> _Query:
        vocab = self._vocab
        # A token never seen cannot match; -1 keeps its place in the sequence.
        query = _Query([vocab.get(t, -1) for t in self.tokenizer(text)])
        if len(query.order) == len(query.ids):
            self._last = (text, query)
        return query

    def add(self, text: str) -> int:
        """Index `text`; returns its position in :attr:`texts`."""
        last = self._last
        if last is not None and last[0] == text:
            query = last[1]  # every token known: the ids cannot have changed since
        else:
            vocab = self._vocab
            query = _Query([vocab.setdefault(t, len(vocab)) for t in self.tokenizer(text)])
        self._last = None
        doc = len(self.texts)
        postings = self._postings
        for t in query.counts:
            docs = postings.get(t)
            if docs is None:
                postings[t] = array("i", (doc,))
            else:
                docs.append(doc)
        n = len(query.ids)
        if self.prefix_threshold is not None:
            prefix_postings = self._prefix_postings
            size = n - math.floor(_need(self.prefix_threshold, n))
            for j, key in enumerate(query.order[:size]):
                entry = (doc << _POSITION_BITS) | min(j, _POSITION_MAX)
                entries = prefix_postings.get(key)
                if entries is None:
                    prefix_postings[key] = array("q", (entry,))
                else:
                    entries.append(entry)
        self._starts.extend((self._tokens.size,))
        self._lengths.extend((n,))
        self._tokens.extend(query.ids)
        self._keys.extend(query.order)
        self.texts.append(text)
        return doc

    def best(self, text: str) -> tuple[float, int | None]:
        """The highest ROUGE-L F of `text` against the index, and which text has it.

        Ties go to the earliest text. (0.0, None) when no indexed text shares a token.
        """
        if self.prefix_threshold is not None:
            # Above the prefix threshold the best is found from the short prefix lists.
            found = self._search(text, threshold=self.prefix_threshold, first_hit=False)
            if found[1] is not None:
                return found
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
        query = self._query(text)
        if not query.order or not self.texts:
            return 0.0, None
        if (
            threshold is not None
            and self.prefix_threshold is not None
            and threshold >= self.prefix_threshold
        ):
            return self._search_prefixes(query, threshold, first_hit)
        return self._search_postings(query, threshold or 0.0, first_hit)

    def _search_prefixes(
        self, query: _Query, threshold: float, first_hit: bool
    ) -> tuple[float, int | None]:
        m, order = len(query.ids), query.order
        known = len(order)
        size = known - math.floor(_need(threshold, m))
        parts, positions = [], []
        prefix_postings = self._prefix_postings
        for i in range(min(size, known)):
            entries = prefix_postings.get(order[i])
            if entries:
                parts.append(entries)
                positions.append(i)
        if not parts:
            return 0.0, None
        lens = [len(p) for p in parts]
        entries = np.concatenate([np.frombuffer(p, dtype=np.int64) for p in parts])
        docs, first = np.unique(entries >> _POSITION_BITS, return_index=True)
        self.pairs_bounded += len(docs)
        # The first shared key in the global order (the first entry of a doc, as the query's
        # keys were probed in that order) is at position i of the query and j of the doc;
        # every other shared key comes after both, so overlap <= min(known - i, n - j).
        i = np.repeat(np.array(positions, dtype=np.int64), lens)[first]
        j = entries[first] & _POSITION_MAX
        n = self._lengths.data[docs]
        required = threshold * (m + n) / 2 - _SLACK
        keep = np.minimum(known - i, n - j) > required
        return self._score(query, docs[keep], threshold, 0.0, None, first_hit)

    def _search_postings(
        self, query: _Query, floor: float, first_hit: bool
    ) -> tuple[float, int | None]:
        m, counts = len(query.ids), query.counts
        known = len(query.order)
        postings = self._postings
        empty = array("i")
        lists = sorted(((postings.get(t, empty), c) for t, c in counts.items()), key=_size)
        if len(self._seen) < len(self.texts):
            self._seen = np.zeros(2 * len(self.texts), dtype=bool)
        seen = self._seen
        gathered: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        total = 0
        best_score, best_doc = 0.0, None
        remaining = known  # query positions not covered by the lists read so far
        try:
            for docs, c in lists:
                # A text outside the lists read overlaps on at most `remaining` positions.
                bound = 2 * remaining / (m + remaining)
                if bound + _SLACK <= floor or bound + _SLACK < best_score:
                    break
                if pending and len(docs) > 32 + total:
                    # Score what is gathered before reading a longer list: the best score
                    # found may make it unnecessary.
                    best_score, best_doc = self._score(
                        query, np.concatenate(pending), floor, best_score, best_doc, first_hit
                    )
                    pending = []
                    if first_hit and best_doc is not None:
                        break
                    if bound + _SLACK < best_score:
                        break
                remaining -= c
                if not docs:
                    continue
                new = np.frombuffer(docs, dtype=np.int32)
                new = new[~seen[new]]
                seen[new] = True
                gathered.append(new)
                pending.append(new)
                total += len(new)
            if pending and not (first_hit and best_doc is not None):
                best_score, best_doc = self._score(
                    query, np.concatenate(pending), floor, best_score, best_doc, first_hit
                )
        finally:
            for docs in gathered:
                seen[docs] = False
        return (best_score, best_doc) if best_doc is not None else (0.0, None)

    def _score(
        self,
        query: _Query,
        docs: np.ndarray,
        floor: float,
        best_score: float,
        best_doc: int | None,
        first_hit: bool,
    ) -> tuple[float, int | None]:
        """Bound `docs` by their exact overlap with the query, then compute the LCS of those
        that can still beat (or tie) the best so far and score above `floor`."""
        if not len(docs):
            return best_score, best_doc
        m = len(query.ids)
        target = max(floor, best_score)
        n = self._lengths.data[docs].astype(np.int64)
        required = target * (m + n) / 2 - _SLACK
        keep = np.minimum(n, m) > required
        docs, n, required = docs[keep], n[keep], required[keep]
        self.pairs_bounded += len(docs)
        if not len(docs):
            return best_score, best_doc
        # Multiset overlap: how many of each text's occurrence keys the query holds.
        starts = self._starts.data[docs]
        ends = np.cumsum(n)
        at = np.arange(int(ends[-1])) + np.repeat(starts - (ends - n), n)
        keys = self._keys.data[at]
        qkeys = query.keys_array()
        found = np.searchsorted(qkeys, keys)
        np.minimum(found, len(qkeys) - 1, out=found)
        hits = np.concatenate(([0], np.cumsum(qkeys[found] == keys)))
        overlap = hits[ends] - hits[ends - n]
        keep = overlap > required
        if not keep.any():
            return best_score, best_doc
        docs, n = docs[keep], n[keep]
        bound = 2 * overlap[keep] / (m + n)
        by_bound = np.lexsort((docs, -bound))
        masks = query.masks()
        full = (1 << m) - 1
        tokens, all_starts = self._tokens.data, self._starts.data
        for b, doc, length in zip(
            bound[by_bound].tolist(),
            docs[by_bound].tolist(),
            n[by_bound].tolist(),
            strict=True,
        ):
            if b + _SLACK < best_score:
                break  # no later candidate can beat (or tie) the best
            start = int(all_starts[doc])
            v = full
            for token in tokens[start : start + length].tolist():
                u = v & masks.get(token, 0)
                v = ((v + u) | (v - u)) & full
            lcs = m - v.bit_count()
            self.pairs_scored += 1
            score = _f_measure(lcs, m, length)
            if score > floor and (
                best_doc is None or score > best_score or (score == best_score and doc < best_doc)
            ):
                best_score, best_doc = score, doc
                if first_hit:
                    break
        return best_score, best_doc


def _size(item: tuple[array, int]) -> int:
    return len(item[0])
