"""ROUGE-L novelty: tokenizers and an exact index of the growing pool.

Scores equal `rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(...)["rougeL"].fmeasure`
(no stemmer): same tokens, same LCS, same floating-point formula.
"""

from __future__ import annotations

import bisect
import math
import re
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

Tokenizer = Callable[[str], list[str]]

_ROUGE_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# CJK Unified Ideographs (and extension A, compatibility ideographs), Hiragana, Katakana, Hangul.
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_TOKEN = re.compile(f"[{_CJK_CHARS}]|[a-z0-9]+")
CJK_CHAR = re.compile(f"[{_CJK_CHARS}]")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming: lower-case ASCII letters and digits.

    It drops every non-ASCII character, so two Chinese sentences always score 0.
    """
    # rouge-score then keeps the tokens matching ^[a-z0-9]+$: after this substitution, all are.
    return _ROUGE_NON_ALNUM.sub(" ", text.lower()).split()


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


def number_by_frequency(token_lists: Iterable[list[str]], vocab: dict[str, int]) -> None:
    """Number the tokens of `token_lists` in `vocab` by how many of the lists hold them,
    commonest lowest, after the tokens `vocab` already numbers."""
    df: Counter[str] = Counter()
    for tokens in token_lists:
        df.update(set(tokens))
    for token, _ in df.most_common():
        vocab.setdefault(token, len(vocab))


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
# A prefix posting is ((_REACH_MAX - reach) << 32) | doc, reach the longest query whose prefix
# filter this key of the doc's prefix still takes part in (see _reach; capped: a larger reach
# only loosens the filter): a query of m tokens takes the postings below
# (_REACH_MAX - m + 1) << 32, one comparison.
_REACH_BITS = 16
_REACH_MAX = (1 << _REACH_BITS) - 1
_DOC_BITS = 32
_DOC_MASK = (1 << _DOC_BITS) - 1
# Where a posting's doc lies among the two 32-bit halves of its 64 bits.
_DOC_HALF = 0 if sys.byteorder == "little" else 1


def _need(threshold: float, length: int) -> float:
    """F > threshold needs an LCS (and so an overlap) above this, for a text of `length` tokens
    against a text of any length: L <= n and 2L/(m+n) > t give L > t*m/(2-t)."""
    return max(0.0, (threshold - _SLACK) * length / (2 - threshold + _SLACK))


def _reach(threshold: float, n: int, j: int) -> int:
    """The longest query (in tokens) for which the key at position j of a text of n keys is in
    that text's prefix for the query (see RougeIndex._prefix_candidates): the largest m with
    floor(threshold * (m + n) / 2) <= n - j, computed exactly as the query computes it, and
    capped at _REACH_MAX (the filter then keeps the key for any query)."""
    if threshold <= 0:
        return _REACH_MAX

    def fits(m: int) -> bool:
        return math.floor(threshold * (m + n) / 2 - _SLACK) <= n - j

    m = max(0, math.ceil(2 * (n - j + 1) / threshold) - n)
    while m > 0 and not fits(m):
        m -= 1
    while m < _REACH_MAX and fits(m + 1):
        m += 1
    return m


class _PrefixPlan:
    """What a query of m tokens (`known` of them indexed) reads of the prefix lists at a
    threshold: its prefix keys, and for each the lengths of the texts to read."""

    __slots__ = ("threshold", "m", "shortest", "longest", "pairs")

    def __init__(self, threshold: float, m: int, known: int) -> None:
        self.threshold, self.m = threshold, m
        # F > t needs min(m, n) > t(m+n)/2, so n > t*m/(2-t): shorter texts are never read.
        self.shortest = math.floor(_need(threshold, m))
        size = min(known, known - self.shortest + 1)
        # The key at position i is in the query's prefix for texts of n keys while
        # gap(n) <= known - i: the longest such n for each i (gap grows with n).
        self.longest: list[int] = []
        for i in range(size):
            left = known - i
            # n < 2(left + 1)/t - m, give or take the slack and rounding: start above it.
            n = int(2 * (left + 1) / threshold) - m + 2 if threshold > 0 else 1 << 30
            while n > 0 and self.gap(n) > left:
                n -= 1
            self.longest.append(n)
        # Whether texts of every length must share two prefix keys with the query.
        self.pairs = self.shared(1) == 2

    def gap(self, n: int) -> int:
        """alpha - k + 1 for texts of n keys, k the keys they must share in the prefixes (two,
        or one where alpha is 1): the query's prefix for them is its first known - gap + 1
        keys, and theirs their first n - gap + 1."""
        return max(1, math.floor(self.threshold * (self.m + n) / 2 - _SLACK))

    def shared(self, n: int) -> int:
        """Keys a text of n keys must share with the query in their prefixes."""
        return 2 if math.floor(self.threshold * (self.m + n) / 2 - _SLACK) >= 1 else 1


def _without(docs: list[int] | np.ndarray, seen: list[int] | np.ndarray) -> list[int] | np.ndarray:
    """The texts of `docs` not in `seen`, both ascending."""
    if not len(seen) or not len(docs):
        return docs
    if isinstance(docs, list):
        gone = set(seen.tolist() if isinstance(seen, np.ndarray) else seen)
        return [doc for doc in docs if doc not in gone]
    seen = np.asarray(seen, dtype=docs.dtype)
    at = np.minimum(np.searchsorted(seen, docs), len(seen) - 1)
    return docs[seen[at] != docs]


class _PrefixLists:
    """Prefix lists at one threshold: occurrence key -> the lengths of the texts holding it in
    their prefix, sorted, and for each length a list of postings ((_REACH_MAX - reach) << 32)
    | doc (see _reach), in the order added. A text of n keys is listed under its first
    n - floor(need) + 1 keys."""

    __slots__ = ("threshold", "lists", "_ranks")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lists: dict[int, tuple[array, list[array]]] = {}
        # text length -> (_REACH_MAX - reach) << 32 for each position of the prefix
        self._ranks: dict[int, list[int]] = {}

    def add(self, doc: int, n: int, order: list[int]) -> None:
        """List text `doc` of n tokens, its occurrence keys in the global `order`."""
        # The reach of each position of the prefix of a text of n keys, which is two keys
        # past the prefix filter's one (see RougeIndex._prefix_candidates).
        ranks = self._ranks.get(n)
        if ranks is None:
            threshold = self.threshold
            size = min(n, n - math.floor(_need(threshold, n)) + 1)
            ranks = self._ranks[n] = [
                (_REACH_MAX - _reach(threshold, n, j)) << _DOC_BITS for j in range(size)
            ]
        prefix = self.lists
        for key, rank in zip(order, ranks, strict=False):  # the prefix
            entry = rank | doc
            lists = prefix.get(key)
            if lists is None:
                prefix[key] = (array("i", (n,)), [array("q", (entry,))])
                continue
            lengths = lists[0]
            at = bisect.bisect_left(lengths, n)
            if at < len(lengths) and lengths[at] == n:
                lists[1][at].append(entry)
            else:
                lengths.insert(at, n)
                lists[1].insert(at, array("q", (entry,)))


class _Query:
    """A text as the index sees it: token ids (-1 for tokens it has never indexed) and the
    occurrence keys of the known ones in the global order."""

    __slots__ = ("ids", "order", "sorted_keys", "key_set", "_masks")

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        # Higher token id first, then occurrence number: with ids numbered commonest first
        # (or by first appearance), the rarest tokens lead.
        distinct = set(ids)
        distinct.discard(-1)
        if len(distinct) == len(ids):  # every token known, and once (most texts)
            self.order = [t << _OCCURRENCE_BITS for t in sorted(distinct, reverse=True)]
        else:
            counts: dict[int, int] = {}
            for t in ids:
                if t >= 0:
                    counts[t] = counts.get(t, 0) + 1
            order: list[int] = []
            for t in sorted(counts, reverse=True):
                base = t << _OCCURRENCE_BITS
                order.extend(range(base, base + counts[t]))
            self.order = order
        self.sorted_keys: np.ndarray | None = None
        self.key_set: set[int] | None = None
        self._masks: dict[int, int] | None = None

    def keys_array(self) -> np.ndarray:
        if self.sorted_keys is None:
            self.sorted_keys = np.array(sorted(self.order), dtype=np.int64)
        return self.sorted_keys

    def keys(self) -> set[int]:
        if self.key_set is None:
            self.key_set = set(self.order)
        return self.key_set

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
      occurrence of token t) are kept in flat arrays, so the bounds of many candidates are a few
      numpy operations, not a Python loop (few candidates take a plain Python path instead);
    - the multiset overlap bounds the LCS, so F <= 2 * overlap / (m + n) without any LCS, and
      the LCS (bit-parallel, :func:`lcs_length`) is computed only for candidates whose bound can
      still win, in decreasing order of bound, stopping as soon as no later one can;
    - :meth:`best` reads the posting lists of the query's tokens rarest first and stops reading
      as soon as a text sharing none of the tokens left could not reach the best score found
      (a text overlapping the query on at most R positions scores at most 2R/(m+R)), starting
      from the best of the prefix lists' candidates when there is none above their threshold;
    - with `prefix_threshold`, each text is also indexed by its prefix only (prefix filtering,
      as in set-similarity joins): under one fixed token order, two texts whose overlap reaches
      what threshold t requires must share a token among the first `len - floor(need)` of each,
      and two tokens among a prefix one token longer (see :meth:`_prefix_candidates`). The
      prefix lists of a token are kept by text length, so a query reads only the lengths that
      the threshold leaves possible at each position of its prefix (positional filtering, after
      PPJoin); each entry carries its reach, the longest query for which that token is still
      in the text's prefix, so the text's side of the same filter is one comparison. The order
      puts later-seen tokens first, which in practice is rarest first; :meth:`learn_token_order`
      makes it exact. Queries with a threshold >= `prefix_threshold` read those lists only;
    - with `best_levels`, prefix lists at lower thresholds too: :meth:`best` reads them
      highest first, each from the best found so far, and stops at the first level that
      finds a text above its own threshold (the lists hold every text above it), before the
      posting lists.
    """

    # Candidate sets at least this large are bounded with numpy, smaller ones in Python (the
    # answers are the same; the tests run both paths).
    vector_min = 48
    # A postings search scores the `seed_texts` likeliest texts found so far before reading a
    # list longer than `seed_after` plus the texts found, to learn a best score that stops it
    # from reading the longest lists (the answers are the same whatever these are).
    seed_after = 32
    seed_texts = 16
    # `best` below a level's threshold goes on from the best text its prefix lists found (else
    # each level is scored above its own threshold only, and the postings search from none).
    seed_from_prefixes = True
    # Query plans kept (by threshold and query length) before the cache starts over.
    plans_kept = 10_000

    def __init__(
        self,
        tokenizer: Tokenizer = rouge_tokenize,
        prefix_threshold: float | None = None,
        *,
        postings: bool = True,
        best_levels: Sequence[float] = (),
    ) -> None:
        """`postings=False` (with a `prefix_threshold`) keeps the prefix lists only: less memory
        and faster adds, for an index asked only at thresholds >= `prefix_threshold`.
        `best_levels`, thresholds below `prefix_threshold`, keeps prefix lists at each of them
        too: :meth:`best` tries them highest first before it reads the posting lists, and a
        search at a threshold reads the highest lists at or below it. Faster `best` for texts
        whose nearest neighbour is below `prefix_threshold`, for more memory."""
        if not postings and prefix_threshold is None:
            raise ValueError("an index without postings needs a prefix_threshold")
        if best_levels and (
            prefix_threshold is None or not all(0 < t < prefix_threshold for t in best_levels)
        ):
            raise ValueError("best_levels must lie between 0 and the prefix_threshold")
        self.tokenizer = tokenizer
        self.prefix_threshold = prefix_threshold
        self.keeps_postings = postings
        # Prefix lists, highest threshold first.
        self._levels = [
            _PrefixLists(t) for t in sorted({prefix_threshold, *best_levels} - {None}, reverse=True)
        ]
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._tokens = array("i")  # every text's token ids, one text after the other
        self._keys = array("q")  # their occurrence keys, in the same places
        self._starts = array("q")  # where each text starts in both
        self._lengths = array("i")
        # occurrence key -> the texts holding it, in ascending order (texts are only added)
        self._postings: dict[int, array] = {}
        self._plans: dict[tuple[float, int, int], _PrefixPlan] = {}
        # Scratch: how many of a query's keys each text holds, one byte a text (less memory
        # traffic) for queries of fewer than 256 keys, else four.
        self._hits = np.zeros(0, dtype=np.uint8)
        self._hits_wide = np.zeros(0, dtype=np.int32)
        self._last: tuple[str, _Query] | None = None  # the last query, reused by `add`
        self.pairs_scored = 0  # LCS computations, for benchmarks
        self.pairs_bounded = 0  # candidates whose bound was computed

    def __len__(self) -> int:
        return len(self._lengths)

    def learn_token_order(self, texts: Iterable[str]) -> None:
        """Number tokens by how many of `texts` hold them, commonest lowest, before any text is
        added. Prefix filtering then reads the rarest tokens first (it takes higher ids first);
        without this, ids follow first appearance, a rougher guess at rarity. Scores and
        decisions are the same either way."""
        if len(self._lengths):
            raise ValueError("learn_token_order must come before the first add")
        number_by_frequency((self.tokenizer(text) for text in texts), self._vocab)

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
        self.texts.append(text)
        return self._add(query)

    def add_ids(self, ids: Sequence[int]) -> int:
        """Index a text given as token ids (non-negative, as :class:`TokenIds` numbers them);
        returns its position. An index takes either texts or ids, not both: ids have no
        text in :attr:`texts`."""
        return self._add(_Query(list(ids)))

    def search_ids(
        self, ids: Sequence[int], threshold: float, first_hit: bool = False
    ) -> tuple[float, int | None]:
        """:meth:`nearest_above` (or, with `first_hit`, the first text found above the
        threshold, as :meth:`is_novel` decides) for a text given as token ids."""
        return self._search_query(_Query(list(ids)), threshold, first_hit)

    def _add(self, query: _Query) -> int:
        doc = len(self._lengths)
        if self.keeps_postings:
            postings = self._postings
            for key in query.order:
                docs = postings.get(key)
                if docs is None:
                    postings[key] = array("i", (doc,))
                else:
                    docs.append(doc)
        n = len(query.ids)
        if n:
            for level in self._levels:
                level.add(doc, n, query.order)
        self._starts.append(len(self._tokens))
        self._lengths.append(n)
        self._tokens.extend(query.ids)
        self._keys.extend(query.order)
        return doc

    def best(self, text: str) -> tuple[float, int | None]:
        """The highest ROUGE-L F of `text` against the index, and which text has it.

        Ties go to the earliest text. (0.0, None) when no indexed text shares a token.
        """
        return self._best_query(self._query(text))

    def best_ids(self, ids: Sequence[int]) -> tuple[float, int | None]:
        """:meth:`best` for a text given as token ids (-1 for a token the index never saw)."""
        return self._best_query(_Query(list(ids)))

    def best_batch(
        self, texts: Sequence[str], add_at_most: float | None = None
    ) -> list[tuple[float, int | None]]:
        """:meth:`best` of each text in turn; with `add_at_most`, each text whose best is at
        most that joins the index at once, so later texts are judged against it too."""
        answers = []
        for text in texts:
            found = self.best(text)
            if add_at_most is not None and found[0] <= add_at_most:
                self.add(text)
            answers.append(found)
        return answers

    def _best_query(self, query: _Query) -> tuple[float, int | None]:
        if not query.order or not len(self._lengths):
            return 0.0, None
        best: tuple[float, int | None] = (0.0, None)
        done: list[int] | np.ndarray = []  # texts scored or ruled out by an earlier level
        for level in self._levels:
            # Every text above a level's threshold is among its candidates, so a best above
            # the threshold, among them and the best so far, is the best of all. Only texts
            # that reach the best so far matter: above a best higher than the level, fewer
            # keys of the query are read, of fewer lengths.
            threshold = max(level.threshold, best[0])
            candidates = self._prefix_candidates(query, threshold, level)
            if not self.seed_from_prefixes:
                found = self._score(query, candidates, level.threshold, 0.0, None, False)
                if found[1] is not None:
                    return found
                continue
            # Below it, the best of these texts (the ones sharing the query's rarest keys) is
            # a first best for the next level, or the postings search, which reads less. A
            # text an earlier level saw either was scored or could not reach the best then,
            # which has only grown since: it is not looked at again.
            fresh = _without(candidates, done)
            best = self._score(query, fresh, 0.0, *best, False)
            if best[1] is not None and best[0] > level.threshold:
                return best
            done = candidates
        found = self._search_postings(query, 0.0, False, best)
        return found if found[1] is not None else (0.0, None)

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
        return self._search_query(self._query(text), threshold, first_hit)

    def _search_query(
        self, query: _Query, threshold: float | None, first_hit: bool
    ) -> tuple[float, int | None]:
        if not query.order or not len(self._lengths):
            return 0.0, None
        if threshold is not None:
            # The highest prefix lists at or below the threshold hold every text above it.
            for level in self._levels:
                if threshold >= level.threshold:
                    found = self._prefix_candidates(query, threshold, level)
                    return self._score(query, found, threshold, 0.0, None, first_hit)
        found = self._search_postings(query, threshold or 0.0, first_hit)
        return found if found[1] is not None else (0.0, None)

    def _prefix_candidates(
        self, query: _Query, threshold: float, level: _PrefixLists | None = None
    ) -> list[int] | np.ndarray:
        """The texts, ascending, that the prefix lists leave possible above `threshold`.

        Under one global order of the keys, two texts of m and n keys that share at least
        `alpha` of them share at least two among the first m - alpha + 2 keys of one and the
        first n - alpha + 2 of the other (the first two shared keys: at least alpha - 2 shared
        ones come after them in each). So a text found in only one of the query's lists is
        not a candidate, where alpha >= 2; most texts that a list of a fairly common key brings
        up are found once. Texts are indexed by their first n - alpha + 2 keys for the
        smallest alpha any query can need (prefix filtering with two keys, after Wang, Li and
        Feng's k-prefix filter). `level`: the lists to read, at a threshold <= `threshold`
        (the highest by default)."""
        m, order = len(query.ids), query.order
        plan = self._plans.get((threshold, m, len(order)))
        if plan is None:
            if len(self._plans) >= self.plans_kept:  # `best` asks at the scores it finds
                self._plans.clear()
            plan = self._plans[threshold, m, len(order)] = _PrefixPlan(threshold, m, len(order))
        prefix, shortest = (level or self._levels[0]).lists, plan.shortest
        parts: list[array] = []
        for key, longest in zip(order, plan.longest, strict=False):  # the prefix
            lists = prefix.get(key)
            if lists is not None:
                lengths = lists[0]
                lo = bisect.bisect_left(lengths, shortest)
                hi = bisect.bisect_right(lengths, longest)
                if lo < hi:
                    parts.extend(lists[1][lo:hi])
        if not parts:
            return []
        # A key of a text's prefix counts while the query is no longer than the key's reach:
        # the postings below `limit`.
        limit = (_REACH_MAX - min(m, _REACH_MAX) + 1) << _DOC_BITS
        joined = b"".join(parts)
        if len(joined) < 8 * self.vector_min:
            seen: dict[int, int] = {}
            for postings in parts:
                for e in postings:
                    if e < limit:
                        doc = e & _DOC_MASK
                        seen[doc] = seen.get(doc, 0) + 1
            if plan.pairs:
                return sorted(doc for doc, count in seen.items() if count >= 2)
            lengths_of = self._lengths
            return sorted(
                doc for doc, count in seen.items() if count >= plan.shared(lengths_of[doc])
            )
        entries = np.frombuffer(joined, dtype=np.int64)
        # Their docs (the low 32 bits), sorted.
        docs = np.compress(entries < limit, entries.view(np.int32)[_DOC_HALF::2])
        docs.sort()
        if plan.pairs:  # the texts found at least twice
            twice = docs[1:][docs[1:] == docs[:-1]]
            return twice[np.concatenate(([True], twice[1:] != twice[:-1]))] if len(twice) else twice
        docs, counts = np.unique(docs, return_counts=True)
        n = np.frombuffer(self._lengths, dtype=np.int32)[docs]
        return docs[counts >= np.where(np.floor(threshold * (m + n) / 2 - _SLACK) >= 1, 2, 1)]

    def _counts(self, keys: int) -> np.ndarray:
        """The scratch counts for a query of `keys` occurrence keys (zero between queries)."""
        if keys < 256:
            if len(self._hits) < len(self._lengths):
                self._hits = np.zeros(2 * len(self._lengths), dtype=np.uint8)
            return self._hits
        if len(self._hits_wide) < len(self._lengths):
            self._hits_wide = np.zeros(2 * len(self._lengths), dtype=np.int32)
        return self._hits_wide

    def _search_postings(
        self,
        query: _Query,
        floor: float,
        first_hit: bool,
        best: tuple[float, int | None] = (0.0, None),
    ) -> tuple[float, int | None]:
        """Read the posting lists of the query's occurrence keys, rarest first, counting in
        :attr:`_hits` how many of them each text is in (ScanCount). A text in none of the lists
        not yet read overlaps on at most R positions, R the number of those lists, so it scores
        at most 2R/(m+R): reading stops as soon as that cannot beat the best found. Before each
        longer list, the texts found that look best so far (most keys for their length) are
        scored, so that the best is known early; at the end every text found is bounded by its
        exact overlap, its count plus the unread lists that hold it (a binary search in each:
        a list is in ascending order), and scored if it can still win. `best` is a score and
        text already found (from the prefix lists), to beat or tie with an earlier text."""
        if not self.keeps_postings:
            raise ValueError(
                "this index keeps prefix lists only: ask at a threshold >= its prefix_threshold"
            )
        m = len(query.ids)
        postings = self._postings
        empty = array("i")
        lists = sorted((postings.get(key, empty) for key in query.order), key=len)
        hits = self._counts(len(lists))
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        touched: list[np.ndarray] = []
        found = 0  # texts in `touched`
        tried = 0  # texts found when the best-looking ones were last scored
        read = len(lists)
        try:
            for i, docs in enumerate(lists):
                unread = len(lists) - i
                if found > tried and len(docs) > self.seed_after + found:
                    # Before a longer list: score the likeliest texts found so far.
                    every = np.concatenate(touched)
                    if len(every) > self.seed_texts:
                        likely = hits[every] / (m + lengths[every])
                        top = np.argpartition(-likely, self.seed_texts)[: self.seed_texts]
                        every = every[top]
                    every.sort()
                    best = self._score(query, every.tolist(), floor, *best, first_hit)
                    tried = found
                    if first_hit and best[1] is not None:
                        return best
                bound = 2 * unread / (m + unread)
                if bound + _SLACK <= floor or bound + _SLACK < best[0]:
                    read = i
                    break
                if not docs:
                    continue
                listed = np.frombuffer(docs, dtype=np.int32)
                counted = hits[listed]  # one read and one write of the counts (a list
                hits[listed] = counted + 1  # holds a text once)
                new = listed[counted == 0]
                touched.append(new)
                found += len(new)
            if found:
                every = np.concatenate(touched)
                best = self._score_found(query, every, lists[read:], floor, *best, first_hit)
        finally:
            for docs in touched:
                hits[docs] = 0
        return best

    def _score_found(
        self,
        query: _Query,
        docs: np.ndarray,
        unread: list[array],
        floor: float,
        best_score: float,
        best_doc: int | None,
        first_hit: bool,
    ) -> tuple[float, int | None]:
        """Score `docs`, texts whose keys among the lists read are counted in :attr:`_hits`,
        with `unread` the query's lists not read yet."""
        m = len(query.ids)
        self.pairs_bounded += len(docs)
        target = max(floor, best_score)
        # Whatever its length, a text needs an overlap above _need(target, m) to score above
        # the target; the unread lists add at most one each.
        overlap = self._counts(len(query.order))[docs].astype(np.int64)
        keep = overlap > math.floor(_need(target, m)) - len(unread)
        if not keep.all():
            docs, overlap = docs[keep], overlap[keep]
        n = np.frombuffer(self._lengths, dtype=np.int32)[docs].astype(np.int64)
        required = target * (m + n) / 2 - _SLACK
        # Look each text up in the unread lists one after the other, keeping only those that
        # the lists left could still lift over the target.
        for left in range(len(unread), -1, -1):
            keep = np.minimum(overlap + left, n) > required
            if not keep.all():
                docs, n, overlap, required = docs[keep], n[keep], overlap[keep], required[keep]
            if not left or not len(docs):
                break
            listed = np.frombuffer(unread[len(unread) - left], dtype=np.int32)
            if not len(listed):
                continue
            at = np.minimum(np.searchsorted(listed, docs), len(listed) - 1)
            overlap += listed[at] == docs
        if not len(docs):
            return best_score, best_doc
        neg_bound = -2 * overlap / (m + n)
        by_bound = np.lexsort((docs, neg_bound))
        ranked = zip(
            neg_bound[by_bound].tolist(),
            docs[by_bound].tolist(),
            n[by_bound].tolist(),
            strict=True,
        )
        return self._best_of(query, ranked, floor, best_score, best_doc, first_hit)

    def _score(
        self,
        query: _Query,
        docs: Sequence[int] | np.ndarray,
        floor: float,
        best_score: float,
        best_doc: int | None,
        first_hit: bool,
    ) -> tuple[float, int | None]:
        """Bound `docs` by their exact multiset overlap with the query, then compute the LCS of
        those that can still beat (or tie) the best so far and score above `floor`."""
        if not len(docs):
            return best_score, best_doc
        m = len(query.ids)
        target = max(floor, best_score)
        ranked: list[tuple[float, int, int]]  # (-bound, doc, length), best bound first
        if len(docs) < self.vector_min:
            lengths, starts, all_keys = self._lengths, self._starts, self._keys
            qkeys = query.keys()
            ranked = []
            for doc in docs if isinstance(docs, list) else docs.tolist():
                n = lengths[doc]
                required = target * (m + n) / 2 - _SLACK
                if (n if n < m else m) <= required:
                    continue
                start = starts[doc]
                overlap = len(qkeys.intersection(all_keys[start : start + n]))
                if overlap > required:
                    ranked.append((-2 * overlap / (m + n), doc, n))
            self.pairs_bounded += len(docs)
            ranked.sort()
        else:
            ranked = self._bound_vector(query, np.asarray(docs), target)
        if not ranked:
            return best_score, best_doc
        return self._best_of(query, ranked, floor, best_score, best_doc, first_hit)

    def _best_of(
        self,
        query: _Query,
        ranked: Iterable[tuple[float, int, int]],
        floor: float,
        best_score: float,
        best_doc: int | None,
        first_hit: bool,
    ) -> tuple[float, int | None]:
        """Compute the LCS of `ranked` texts, (-bound, text, length) best bound first, until
        no later one can beat (or tie) the best; returns the best, scoring above `floor`."""
        m = len(query.ids)
        masks = query.masks()
        full = (1 << m) - 1
        tokens, starts = self._tokens, self._starts
        for neg_bound, doc, n in ranked:
            if -neg_bound + _SLACK < best_score:
                break  # no later candidate can beat (or tie) the best
            v = full
            start = starts[doc]
            for token in tokens[start : start + n]:
                u = v & masks.get(token, 0)
                v = ((v + u) | (v - u)) & full
            lcs = m - v.bit_count()
            self.pairs_scored += 1
            score = _f_measure(lcs, m, n)
            if score > floor and (
                best_doc is None or score > best_score or (score == best_score and doc < best_doc)
            ):
                best_score, best_doc = score, doc
                if first_hit:
                    break
        return best_score, best_doc

    def _bound_vector(
        self, query: _Query, docs: np.ndarray, target: float
    ) -> list[tuple[float, int, int]]:
        """The numpy twin of the Python bound in :meth:`_score`."""
        m = len(query.ids)
        self.pairs_bounded += len(docs)
        n = np.frombuffer(self._lengths, dtype=np.int32)[docs].astype(np.int64)
        required = target * (m + n) / 2 - _SLACK
        keep = np.minimum(n, m) > required
        docs, n, required = docs[keep], n[keep], required[keep]
        if not len(docs):
            return []
        # Multiset overlap: how many of each text's occurrence keys the query holds.
        starts = np.frombuffer(self._starts, dtype=np.int64)[docs]
        ends = np.cumsum(n)
        at = np.arange(int(ends[-1])) + np.repeat(starts - (ends - n), n)
        keys = np.frombuffer(self._keys, dtype=np.int64)[at]
        qkeys = query.keys_array()
        found = np.searchsorted(qkeys, keys)
        np.minimum(found, len(qkeys) - 1, out=found)
        hits = np.concatenate(([0], np.cumsum(qkeys[found] == keys)))
        overlap = hits[ends] - hits[ends - n]
        keep = overlap > required
        if not keep.any():
            return []
        docs, n = docs[keep], n[keep]
        neg_bound = -2 * overlap[keep] / (m + n)
        by_bound = np.lexsort((docs, neg_bound))
        return list(
            zip(
                neg_bound[by_bound].tolist(),
                docs[by_bound].tolist(),
                n[by_bound].tolist(),
                strict=True,
            )
        )


class TokenIds:
    """A corpus as token ids, tokenised once: :meth:`feed` each text, then :meth:`finish`.

    Tokens are numbered by how many texts hold them, commonest lowest, ties by first appearance
    (the order :meth:`RougeIndex.learn_token_order` learns, but for ties), so an index fed these
    ids with :meth:`RougeIndex.add_ids` reads the rarest tokens first.
    """

    # Texts whose document frequencies :meth:`finish` counts at once (bounds its memory).
    df_chunk = 1 << 18

    def __init__(self, tokenizer: Tokenizer = rouge_tokenize) -> None:
        self.tokenizer = tokenizer
        self._vocab: dict[str, int] = {}  # token -> first-appearance number
        self._flat = array("i")
        self._ends = array("q", (0,))

    def __len__(self) -> int:
        return len(self._ends) - 1

    def feed(self, text: str) -> None:
        tokens = self.tokenizer(text)
        vocab = self._vocab
        ids = list(map(vocab.get, tokens))
        if None in ids:  # new tokens: numbered in order of first appearance
            ids = [vocab.setdefault(t, len(vocab)) for t in tokens]
        self._flat.extend(ids)
        self._ends.append(len(self._flat))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, offsets): text i is ``ids[offsets[i]:offsets[i + 1]]`` (int32, int64)."""
        size = len(self._vocab)
        flat = np.frombuffer(self._flat, dtype=np.int32)
        ends = np.frombuffer(self._ends, dtype=np.int64).copy()
        # Document frequency: each (text, token) pair counted once, a chunk of texts at a time.
        df = np.zeros(size, dtype=np.int64)
        for first in range(0, len(ends) - 1, self.df_chunk):
            last = min(first + self.df_chunk, len(ends) - 1)
            lo, hi = int(ends[first]), int(ends[last])
            if lo == hi:
                continue
            text = np.repeat(
                np.arange(first, last, dtype=np.int64), np.diff(ends[first : last + 1])
            )
            pairs = text * size + flat[lo:hi]
            pairs.sort()  # then each pair once (a sort: np.unique is many times slower here)
            first_of = np.empty(len(pairs), dtype=bool)
            first_of[0] = True
            np.not_equal(pairs[1:], pairs[:-1], out=first_of[1:])
            df += np.bincount(pairs[first_of] % size, minlength=size)
        # Commonest first; ties keep the order of first appearance (a stable sort).
        order = np.argsort(-df, kind="stable")
        renumber = np.empty(size, dtype=np.int32)
        renumber[order] = np.arange(size, dtype=np.int32)
        ids = renumber[flat] if len(flat) else np.zeros(0, dtype=np.int32)
        return ids, ends
