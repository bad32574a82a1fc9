"""Rich rendering for the command line: the live progress of a run and the statistics tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from selfgen.store import Progress as StoreProgress


class LoopProgress:
    """A live display fed by the loop's events: kept/target, candidates, acceptance, tokens/s, ETA."""

    def __init__(
        self, console: Console, start: StoreProgress, target: int, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.kept = start.kept
        self.candidates = start.candidates
        self.target = target
        self.tokens = 0
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]kept[/] {task.completed:.0f}/{task.total:.0f}"),
            BarColumn(),
            TextColumn("{task.fields[candidates]} candidates"),
            TextColumn("{task.fields[rate]} accepted"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task(
            "run",
            total=target,
            completed=self.kept,
            candidates=self.candidates,
            rate=self._rate(),
            tps="-",
        )

    def _rate(self) -> str:
        return f"{self.kept / self.candidates:.0%}" if self.candidates else "-"

    def __enter__(self) -> LoopProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "generated":
            self.tokens += data["completion_tokens"]
        elif kind == "round":
            self.kept += data["kept"]
            self.candidates += data["candidates"]
        elapsed = time.perf_counter() - self.started
        self.progress.update(
            self.task,
            completed=min(self.kept, self.target),
            candidates=self.candidates,
            rate=self._rate(),
            tps=f"{self.tokens / elapsed:.0f}" if elapsed > 0 else "-",
        )


def _bar(value: int, largest: int, width: int = 30) -> str:
    return "█" * max(1 if value else 0, round(width * value / largest)) if largest else ""


def print_stats(console: Console, s: dict[str, Any]) -> None:
    """The funnel, the rejection reasons and the totals of a run, as Rich tables."""
    funnel = Table(title="Funnel", title_justify="left")
    funnel.add_column("step")
    funnel.add_column("count", justify="right")
    funnel.add_column("")
    total = s["funnel"]["candidates"]
    funnel.add_row("candidates", str(total), _bar(total, total))
    for stage, count in s["funnel"]["rejected"].items():
        funnel.add_row(f"rejected by {stage}", str(count), _bar(count, total))
    if s["funnel"]["surplus"]:
        surplus = s["funnel"]["surplus"]
        funnel.add_row("surplus (target reached)", str(surplus), _bar(surplus, total))
    funnel.add_row("[bold]kept[/]", f"[bold]{s['kept']}[/]", _bar(s["kept"], total))
    console.print(funnel)

    if s["reasons"]:
        reasons = Table(title="Rejection reasons", title_justify="left")
        reasons.add_column("stage")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        for stage, by_reason in s["reasons"].items():
            for reason, count in by_reason.items():
                reasons.add_row(stage, reason, str(count))
        console.print(reasons)

    totals = Table(title="Totals", title_justify="left", show_header=False)
    totals.add_column("what")
    totals.add_column("value", justify="right")
    per_kept = s["candidates_per_kept"]
    tps = s["completion_tokens_per_s"]
    for what, value in [
        ("kept tasks / target", f"{s['kept']} / {s['target']}"),
        ("instances", str(s["instances"])),
        ("classification share", f"{s['classification_share']:.0%}"),
        ("rounds", str(s["rounds"])),
        ("candidates per kept task", f"{per_kept:.1f}" if per_kept else "-"),
        ("tokens (prompt + completion)", f"{s['tokens']['prompt']} + {s['tokens']['completion']}"),
        ("completion tokens/s", f"{tps:.1f}" if tps else "-"),
        ("generation time", f"{s['elapsed_s']:.1f} s"),
    ]:
        totals.add_row(what, value)
    console.print(totals)
