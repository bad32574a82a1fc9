"""The filters every generated instruction or request passes before it joins the pool: the
rule filters, then ROUGE-L novelty against the pool (seeds and everything that passed before).

A record that passes joins the pool at once, so a near-duplicate later in the same list or
round is caught too. Every record that reaches the novelty check gets its nearest neighbour
and their ROUGE-L F, kept or not.
"""

from __future__ import annotations

from collections.abc import Iterable

from selfgen.filters.parallel import ParallelRougeIndex
from selfgen.filters.rouge import RougeIndex, Tokenizer
from selfgen.filters.rules import RuleFilter
from selfgen.records import Record, Stage

NEAR_DUPLICATE = "near_duplicate"
# Thresholds of the extra prefix lists that `best` reads before the posting lists.
BEST_LEVELS = (0.5, 0.4, 0.3)


class NoveltyFilter:
    def __init__(
        self,
        rules: RuleFilter,
        tokenizer: Tokenizer,
        threshold: float,
        pool: Iterable[str],
        workers: int = 1,
    ) -> None:
        """`workers` > 1 runs the index on that many processes (:class:`ParallelRougeIndex`:
        the same decisions, about 1/workers of the time for a batch on a large pool); then
        :meth:`close` ends them."""
        self.rules = rules
        self.threshold = threshold
        pool = list(pool)
        # Prefix lists at the threshold answer near-duplicates from a few short lists, and a
        # token order learned from the pool reads the rarest tokens first; scores and nearest
        # neighbours are the same as without either. Every record asks for its nearest
        # neighbour, most of them below the threshold: prefix lists at lower levels find those
        # (benchmarks/rouge_best.py: 2.2 times faster at 952K texts, for twice the memory).
        levels = [t for t in BEST_LEVELS if t < threshold]
        self.index: RougeIndex | ParallelRougeIndex
        if workers > 1:
            self.index = ParallelRougeIndex(
                tokenizer, threshold, levels, workers=workers, pool=pool
            )
        else:
            self.index = RougeIndex(tokenizer, prefix_threshold=threshold, best_levels=levels)
            self.index.learn_token_order(pool)
            for text in pool:
                self.index.add(text)

    def judge(self, record: Record, rules: RuleFilter | None = None) -> bool:
        """Pass `record` through the rules (`rules` in place of the filter's own, for text held
        to other rules) and the novelty check; True when it is novel (it then joins the pool),
        else it is rejected with the stage and reason."""
        return self.judge_batch([record], rules)[0]

    def judge_batch(self, records: list[Record], rules: RuleFilter | None = None) -> list[bool]:
        """:meth:`judge` each record in order, each against the pool and the records of the
        batch that joined it before (the same verdicts as one at a time; a batch lets several
        processes share the work)."""
        rules = rules or self.rules
        novel = [False] * len(records)
        checked = []  # the places of the records that passed the rules
        for i, record in enumerate(records):
            if reason := rules.check(record.text):
                record.reject(Stage.RULES, reason)
            else:
                checked.append(i)
        texts = [records[i].text for i in checked]
        answers = self.index.best_batch(texts, add_at_most=self.threshold)
        for i, (score, nearest) in zip(checked, answers, strict=True):
            record = records[i]
            record.rouge_l = score
            # No nearest neighbour when no text of the pool shares a single token with it.
            record.nearest = self.index.texts[nearest] if nearest is not None else None
            if score > self.threshold:
                record.reject(Stage.ROUGE, NEAR_DUPLICATE)
            else:
                record.stage = Stage.ROUGE  # it joined the pool
                novel[i] = True
        return novel

    def close(self) -> None:
        """End the index's worker processes, if it has any."""
        if isinstance(self.index, ParallelRougeIndex):
            self.index.close()
