"""Exact ROUGE-L nearest neighbours of batches of texts, on several processes.

:class:`ParallelRougeIndex` answers as one :class:`RougeIndex` taking the texts one by one:
the same best score and nearest text (ties to the earliest), and the same texts added. Every
worker process holds an index of the whole pool, in the token ids the parent gives (so text g is
text g of every worker), and answers a contiguous slice of each batch against the pool as it
stood before the batch. The parent then walks the batch in order and scores each text against
the texts added earlier in the same batch (a handful, each pair exactly), and sends the texts
added to every worker with the next message. A search, the costly part, is done once, by one
worker; every worker adds every text (a small part of the work). With two workers on two cores,
a batch takes about half the time of one process (benchmarks/rouge_best.py), for an index's
memory in each worker.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import Counter
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Connection, wait

from selfgen.filters.greedy import end_workers
from selfgen.filters.rouge import (
    _SLACK,
    RougeIndex,
    Tokenizer,
    number_by_frequency,
    rouge_l_f,
    rouge_tokenize,
)

# Texts of the initial pool sent to the workers in one message.
_CHUNK = 20_000
# Queries handed to a worker at a time, at most.
_STEP = 4


def _serve(conn: Connection, prefix_threshold: float, best_levels: tuple[float, ...]) -> None:
    """A worker: adds the texts it is sent, answers `best` for the ones it is asked about."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    index = RougeIndex(prefix_threshold=prefix_threshold, best_levels=best_levels)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        kind, rows = message
        if kind == "add":
            for ids in rows:
                index.add_ids(ids)
        else:
            answers = [index.best_ids(ids) for ids in rows]
            try:
                conn.send(answers)
            except (BrokenPipeError, OSError):  # the parent is gone
                return


class ParallelRougeIndex:
    """The growing pool of :class:`RougeIndex` (texts, :meth:`best`, :meth:`add`,
    :meth:`best_batch`) on `workers` processes; see the module docstring. Tokens are numbered
    by how many texts of `pool` hold them (:meth:`RougeIndex.learn_token_order`), later ones
    as they come. :meth:`close` (or a `with` block) ends the workers."""

    def __init__(
        self,
        tokenizer: Tokenizer = rouge_tokenize,
        prefix_threshold: float = 0.7,
        best_levels: Sequence[float] = (),
        *,
        workers: int = 2,
        pool: Iterable[str] = (),
        start_method: str = "spawn",
    ) -> None:
        if workers < 2:
            raise ValueError("ParallelRougeIndex needs at least 2 workers")
        # Checks the thresholds as the workers' indexes will, before any process starts.
        RougeIndex(tokenizer, prefix_threshold, best_levels=best_levels)
        self.tokenizer = tokenizer
        self.workers = workers
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        pool = list(pool)
        tokenized = [tokenizer(text) for text in pool]
        number_by_frequency(tokenized, self._vocab)
        context = multiprocessing.get_context(start_method)
        self._conns: list[Connection] = []
        self._procs = []
        args = (prefix_threshold, tuple(best_levels))
        try:
            for _ in range(workers):
                parent, child = context.Pipe()
                proc = context.Process(target=_serve, args=(child, *args), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for first in range(0, len(pool), _CHUNK):
                rows = [self._new_ids(t) for t in tokenized[first : first + _CHUNK]]
                self._send(("add", rows))
            self.texts.extend(pool)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.texts)

    def _new_ids(self, tokens: list[str]) -> list[int]:
        vocab = self._vocab
        return [vocab.setdefault(t, len(vocab)) for t in tokens]

    def _send(self, message: object, conns: Sequence[Connection] | None = None) -> None:
        try:
            for conn in self._conns if conns is None else conns:
                conn.send(message)
        except (BrokenPipeError, OSError):
            raise RuntimeError("a ROUGE-L worker process ended unexpectedly") from None

    def add(self, text: str) -> int:
        """Add `text` to the pool; returns its position in :attr:`texts`."""
        self._send(("add", [self._new_ids(self.tokenizer(text))]))
        self.texts.append(text)
        return len(self.texts) - 1

    def best(self, text: str) -> tuple[float, int | None]:
        """As :meth:`RougeIndex.best`."""
        return self.best_batch([text])[0]

    def best_batch(
        self, texts: Sequence[str], add_at_most: float | None = None
    ) -> list[tuple[float, int | None]]:
        """As :meth:`RougeIndex.best_batch`: the best of each text in turn, against the pool
        and, with `add_at_most`, the texts of the batch added before it (a text is added when
        its best is at most that)."""
        if not texts:
            return []
        tokenized = [self.tokenizer(text) for text in texts]
        vocab = self._vocab
        queries = [[vocab.get(t, -1) for t in tokens] for tokens in tokenized]
        answers = self._ask(queries)
        if add_at_most is None:
            return answers
        # This batch's texts added so far (tokens, position), and for each token the ones
        # holding it, with how many times: a text's multiset overlap with them bounds its
        # score, so that the LCS is computed only where it can win.
        added: list[tuple[list[str], int]] = []
        holding: dict[str, list[tuple[int, int]]] = {}
        for i, tokens in enumerate(tokenized):
            score, doc = answers[i]
            counts = Counter(tokens)
            overlap: dict[int, int] = {}
            for token, count in counts.items():
                for k, times in holding.get(token, ()):
                    overlap[k] = overlap.get(k, 0) + min(count, times)
            # In the order they were added: a later text must score higher to win a tie, as
            # each comes after every text of the pool and the ones added before it.
            for k in sorted(overlap):
                other, position = added[k]
                if 2 * overlap[k] / (len(tokens) + len(other)) + _SLACK <= score:
                    continue  # cannot score higher
                other_score = rouge_l_f(tokens, other)
                if other_score > score:
                    score, doc = other_score, position
            answers[i] = (score, doc)
            if score <= add_at_most:
                for token, count in counts.items():
                    holding.setdefault(token, []).append((len(added), count))
                added.append((tokens, len(self.texts)))
                self.texts.append(texts[i])
        if added:
            self._send(("add", [self._new_ids(tokens) for tokens, _ in added]))
        return answers

    def _ask(self, queries: list[list[int]]) -> list[tuple[float, int | None]]:
        """`best` of each query against the pool: a few queries at a time to whichever worker
        is free, fewer as the batch nears its end, so that the workers finish together."""
        answers: list[tuple[float, int | None]] = [(0.0, None)] * len(queries)
        busy: dict[Connection, tuple[int, int]] = {}  # a worker -> the queries it has
        given = 0

        def give(conn: Connection) -> None:
            nonlocal given
            if given < len(queries):
                step = max(1, min(_STEP, (len(queries) - given) // (2 * self.workers)))
                self._send(("best", queries[given : given + step]), [conn])
                busy[conn] = (given, given + step)
                given += step

        for conn in self._conns:
            give(conn)
        try:
            while busy:
                for conn in wait(list(busy)):
                    first, end = busy.pop(conn)
                    answers[first:end] = conn.recv()
                    give(conn)
        except (EOFError, OSError):
            raise RuntimeError("a ROUGE-L worker process ended unexpectedly") from None
        return answers

    def close(self) -> None:
        end_workers(self._conns, self._procs)
        self._conns, self._procs = [], []

    def __enter__(self) -> ParallelRougeIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
