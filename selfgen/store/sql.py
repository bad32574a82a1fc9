"""SQL conditions that more than one query needs, each written once and built from the words of
selfgen.records, so that a stage or reason renamed there cannot leave a query behind.

They name columns without a table, for queries over one table of items (`candidates` or
`traces`, which share `stage`, `fate` and `reason`) joined at most to tables without those
columns.
"""

from __future__ import annotations

from selfgen.records import BEFORE_NOVELTY, TARGET_REACHED, Fate


def _quoted(*words: str) -> str:
    return ", ".join(f"'{w}'" for w in words)


KEPT = f"fate = '{Fate.KEPT}'"
# An item that reached the novelty filter and passed it, whatever became of it afterwards:
# the novelty pool, and the traces whose tools were called.
PASSED_NOVELTY = f"stage NOT IN ({_quoted(*BEFORE_NOVELTY)})"
# An item that passed every filter after the run's target was met: neither kept nor rejected
# in the figures, and never exported.
SURPLUS = f"(fate = '{Fate.REJECTED}' AND reason = '{TARGET_REACHED}')"


def curation_wanted(only_curated: bool) -> str:
    """The condition on `k.decision` (curation joined as `k`) for what export takes: never an
    item rejected by hand; with `only_curated`, only the items accepted by hand."""
    return "k.decision = 'accepted'" if only_curated else "k.decision IS NOT 'rejected'"
