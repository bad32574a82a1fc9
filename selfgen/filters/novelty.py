"""The filters every generated instruction or request passes before it joins the pool: the
rule filters, then ROUGE-L novelty against the pool (seeds and everything that passed before).

A record that passes joins the pool at once, so a near-duplicate later in the same list or
round is caught too. Every record that reaches the novelty check gets its nearest neighbour
and their ROUGE-L F, kept or not.
"""

from __future__ import annotations

from collections.abc import Iterable

from selfgen.filters.rouge import RougeIndex, Tokenizer
from selfgen.filters.rules import RuleFilter
from selfgen.records import Record, Stage

NEAR_DUPLICATE = "near_duplicate"
# Thresholds of the extra prefix lists that `best` reads before the posting lists.
BEST_LEVELS = (0.5, 0.4, 0.3)


class NoveltyFilter:
    def __init__(
        self, rules: RuleFilter, tokenizer: Tokenizer, threshold: float, pool: Iterable[str]
    ) -> None:
        self.rules = rules
        self.threshold = threshold
        pool = list(pool)
        # Prefix lists at the threshold answer near-duplicates from a few short lists, and a
        # token order learned from the pool reads the rarest tokens first; scores and nearest
        # neighbours are the same as without either. Every record asks for its nearest
        # neighbour, most of them below the threshold: prefix lists at lower levels find those
        # (benchmarks/rouge_best.py: 2.2 times faster at 952K texts, for twice the memory).
        self.index = RougeIndex(
            tokenizer,
            prefix_threshold=threshold,
            best_levels=[t for t in BEST_LEVELS if t < threshold],
        )
        self.index.learn_token_order(pool)
        for text in pool:
            self.index.add(text)

    def judge(self, record: Record, rules: RuleFilter | None = None) -> bool:
        """Pass `record` through the rules (`rules` in place of the filter's own, for text held
        to other rules) and the novelty check; True when it is novel (it then joins the pool),
        else it is rejected with the stage and reason."""
        if reason := (rules or self.rules).check(record.text):
            record.reject(Stage.RULES, reason)
            return False
        score, nearest = self.index.best(record.text)
        record.rouge_l = score
        # No nearest neighbour when no text of the pool shares a single token with it.
        record.nearest = self.index.texts[nearest] if nearest is not None else None
        if score > self.threshold:
            record.reject(Stage.ROUGE, NEAR_DUPLICATE)
            return False
        self.index.add(record.text)
        record.stage = Stage.ROUGE
        return True
