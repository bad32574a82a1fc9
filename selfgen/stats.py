"""The figures of a run, as `selfgen stats` prints them; the queries live in
selfgen.store.figures, behind :meth:`RunStore.figures`."""

from __future__ import annotations

from typing import Any

from selfgen.store import RunStore


def run_stats(store: RunStore) -> dict[str, Any]:
    """The run's funnel, reasons, tokens and distributions; :class:`StoreError` if unreadable."""
    return store.figures()
