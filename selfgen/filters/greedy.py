"""Greedy ROUGE-L de-duplication of texts given as token ids, on one process or several.

Greedy: rows are taken in order; a row is rejected when some row kept before it scores strictly
above the threshold, and kept otherwise. Kept rows are numbered 0, 1, ... in the order they are
kept (rows kept unconditionally, such as an `--against` file, first).

:class:`GreedyDedupe` decides on one process with one :class:`RougeIndex`.
:class:`ParallelGreedyDedupe` gives every worker process an index of all the kept rows (in the
same token numbering, so kept row g is text g of every index) and splits the rows to decide: each
batch is cut into one contiguous slice per worker, and a worker answers only its slice. The
parent then walks the batch in order and checks the rows their worker did not reject against
the rows that the workers do not hold yet (those kept in the previous batch and earlier in this
one), in two small indexes of its own. A row's answer therefore covers every row kept before it,
exactly once, and the decisions are those of one process: the same rows kept, and with `nearest`
the same nearest row and score (ties to the earliest kept row). Two batches may be out at once,
so the workers answer batch k + 1 while the parent walks batch k; the rows kept in batch k reach
the workers with the next batch submitted. Every worker adds every kept row (a small part of the
work), so the costly part, each row's search, is done once, by one worker.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from multiprocessing.connection import Connection

import numpy as np

from selfgen.filters.rouge import RougeIndex, _Query

# A decision: None for a kept row, else (score, kept row) of a kept row above the threshold:
# the nearest one with `nearest`, otherwise the first found.
Decision = tuple[float, int] | None


def _queries(ids: np.ndarray, offsets: np.ndarray) -> list[_Query]:
    flat, ends = ids.tolist(), offsets.tolist()
    return [_Query(flat[a:b]) for a, b in zip(ends, ends[1:], strict=False)]


def _slices(rows: int, workers: int) -> list[tuple[int, int]]:
    """Rows 0..rows - 1 cut into `workers` contiguous slices (start, stop), as even as can be."""
    cuts = [rows * w // workers for w in range(workers + 1)]
    return list(zip(cuts, cuts[1:], strict=False))


def _rows(ids: np.ndarray, offsets: np.ndarray, start: int, stop: int):
    """Rows start..stop of a corpus as (ids, offsets from 0)."""
    lo = int(offsets[start])
    return ids[lo : int(offsets[stop])], offsets[start : stop + 1] - lo


def end_workers(conns: list[Connection], procs: list) -> None:
    """Tell each worker to stop (None), wait a little, then terminate any still running."""
    for conn in conns:
        try:
            conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join()
    for conn in conns:
        conn.close()


class GreedyDedupe:
    """One process. :meth:`submit` a batch of rows, :meth:`collect` its decisions."""

    depth = 1  # batches submitted and not yet collected, at most

    def __init__(self, threshold: float, *, nearest: bool = False) -> None:
        self.threshold = threshold
        self.nearest = nearest
        self.kept = 0
        self._index = RougeIndex(prefix_threshold=threshold, postings=False)
        self._pending: deque[list[_Query]] = deque()

    def keep(self, ids: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> None:
        """Rows start..stop of (ids, offsets) count as kept, without a decision."""
        for query in _queries(*_rows(ids, offsets, start, stop)):
            self._index._add(query)
            self.kept += 1

    def submit(self, ids: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> None:
        if len(self._pending) >= self.depth:
            raise RuntimeError("collect the decisions of a batch before submitting more")
        self._pending.append(_queries(*_rows(ids, offsets, start, stop)))

    def collect(self) -> list[Decision]:
        """Decisions for the oldest batch submitted, row by row."""
        index, threshold, first_hit = self._index, self.threshold, not self.nearest
        decisions: list[Decision] = []
        for query in self._pending.popleft():
            score, doc = index._search_query(query, threshold, first_hit)
            if doc is None:
                index._add(query)
                self.kept += 1
                decisions.append(None)
            else:
                decisions.append((score, doc))
        return decisions

    def close(self) -> None:
        pass

    def __enter__(self) -> GreedyDedupe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(conn: Connection, threshold: float) -> None:
    """A worker: every kept row in one index; answers its slice of each batch until told to
    stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    index = RougeIndex(prefix_threshold=threshold, postings=False)
    # The batches whose kept rows are not in yet: their rows, and the queries already built.
    recent: dict[int, tuple[np.ndarray, np.ndarray, dict[int, _Query]]] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        if message[0] == "keep":
            for query in _queries(message[1], message[2]):
                index._add(query)
            continue
        _, seq, adds, ids, offsets, lo, hi, first_hit = message
        for earlier, kept in adds:
            rows, ends, built = recent.pop(earlier)
            for i in kept.tolist():
                query = built.get(i)
                if query is None:
                    query = _Query(rows[ends[i] : ends[i + 1]].tolist())
                index._add(query)
        built = dict(enumerate(_queries(*_rows(ids, offsets, lo, hi)), start=lo))
        recent[seq] = (ids, offsets, built)
        scores = np.zeros(hi - lo, dtype=np.float64)
        docs = np.full(hi - lo, -1, dtype=np.int64)
        for i in range(lo, hi):
            score, doc = index._search_query(built[i], threshold, first_hit)
            if doc is not None:
                scores[i - lo], docs[i - lo] = score, doc
        conn.send((scores, docs))


class ParallelGreedyDedupe:
    """`workers` processes; see the module docstring. Same interface as :class:`GreedyDedupe`;
    up to :attr:`depth` batches may be submitted before the first is collected."""

    depth = 2

    def __init__(
        self,
        threshold: float,
        workers: int,
        *,
        nearest: bool = False,
        start_method: str = "spawn",
    ) -> None:
        if workers < 2:
            raise ValueError("ParallelGreedyDedupe needs at least 2 workers")
        self.threshold = threshold
        self.nearest = nearest
        self.workers = workers
        self.kept = 0
        self._sent = 0  # kept rows 0.._sent - 1 are in the workers (or on their way)
        self._seq = 0
        # Submitted batches, oldest first: (number, rows, kept rows the workers held for it).
        self._pending: deque[tuple[int, tuple[np.ndarray, np.ndarray], int]] = deque()
        # Batches collected whose kept rows the workers have not been sent: (number, the rows
        # kept in it); and the parent's indexes of the rows kept in recent batches.
        self._unsent: list[tuple[int, list[int]]] = []
        self._locals: deque[tuple[int, RougeIndex]] = deque()  # (first kept row, its index)
        context = multiprocessing.get_context(start_method)
        self._conns: list[Connection] = []
        self._procs = []
        try:
            for _ in range(workers):
                parent, child = context.Pipe()
                proc = context.Process(target=_serve, args=(child, threshold), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def keep(self, ids: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> None:
        """Rows start..stop count as kept, without a decision; only before any :meth:`submit`."""
        if self._seq:
            raise RuntimeError("rows to keep come before the first batch")
        flat, ends = _rows(ids, offsets, start, stop)
        for conn in self._conns:
            conn.send(("keep", flat, ends))
        self.kept += stop - start
        self._sent = self.kept

    def submit(self, ids: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> None:
        if len(self._pending) >= self.depth:
            raise RuntimeError("collect the decisions of a batch before submitting more")
        batch_ids, batch_offsets = _rows(ids, offsets, start, stop)
        first_hit = not self.nearest
        cuts = _slices(stop - start, self.workers)
        adds = [(seq, np.array(kept, dtype=np.int64)) for seq, kept in self._unsent]
        for w, conn in enumerate(self._conns):
            conn.send(("batch", self._seq, adds, batch_ids, batch_offsets, *cuts[w], first_hit))
        self._unsent = []
        self._sent = self.kept
        self._pending.append((self._seq, (batch_ids, batch_offsets), self._sent))
        self._seq += 1
        # The parent's indexes of rows that every pending batch's workers hold are done with.
        held = self._pending[0][2]
        while self._locals and self._locals[0][0] < held:
            self._locals.popleft()

    def collect(self) -> list[Decision]:
        """Decisions for the oldest batch submitted, row by row."""
        try:
            replies = [conn.recv() for conn in self._conns]
        except (EOFError, OSError):
            raise RuntimeError("a de-duplication worker process ended unexpectedly") from None
        seq, (batch_ids, batch_offsets), held = self._pending.popleft()
        flat, ends = batch_ids.tolist(), batch_offsets.tolist()
        threshold, first_hit = self.threshold, not self.nearest
        # Each row's answer from the worker whose slice holds it, for kept rows 0..held - 1.
        scores = np.concatenate([reply[0] for reply in replies]).tolist()
        docs = np.concatenate([reply[1] for reply in replies]).tolist()
        # Kept rows 0..held - 1 are the workers'; the parent's indexes hold the others, whole
        # batches each, the one for this batch last.
        current = RougeIndex(prefix_threshold=threshold, postings=False)
        parts = [(base, index) for base, index in self._locals if base >= held]
        parts.append((self.kept, current))
        kept_here: list[int] = []
        decisions: list[Decision] = []
        for i in range(len(ends) - 1):
            found: Decision = None if docs[i] < 0 else (scores[i], docs[i])
            if found is not None and first_hit:
                decisions.append(found)
                continue
            query = _Query(flat[ends[i] : ends[i + 1]])
            # Parts in the order of their kept rows: an earlier kept row wins a tie, so a
            # later part must score higher.
            for base, index in parts:
                if found is not None and first_hit:
                    break
                score, doc = index._search_query(query, threshold, first_hit)
                if doc is not None and (found is None or score > found[0]):
                    found = (score, base + doc)
            if found is None:
                kept_here.append(i)
                current._add(query)
                self.kept += 1
            decisions.append(found)
        if len(current):
            self._locals.append((parts[-1][0], current))
        self._unsent.append((seq, kept_here))
        return decisions

    def close(self) -> None:
        end_workers(self._conns, self._procs)
        self._conns, self._procs = [], []

    def __enter__(self) -> ParallelGreedyDedupe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
