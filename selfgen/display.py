"""Rich rendering for the command line: the live progress of a run and the statistics tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from selfgen.store import RunTotals
from selfgen.terminal import printable


class LoopDisplay:
    """A live display fed by the loop's events: kept/target, candidates, acceptance, tokens/s, ETA."""

    def __init__(
        self, console: Console, start: RunTotals, target: int, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.kept = start.kept
        self.candidates = start.candidates
        self.target = target
        self.tokens = 0
        self.started = time.perf_counter()
        self.bar = Progress(
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
        self.task = self.bar.add_task(
            "run",
            total=target,
            completed=self.kept,
            candidates=self.candidates,
            rate=self._rate(),
            tps="-",
        )

    def _rate(self) -> str:
        return f"{self.kept / self.candidates:.0%}" if self.candidates else "-"

    def __enter__(self) -> LoopDisplay:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "generated":
            self.tokens += data["completion_tokens"]
        elif kind == "round":
            self.kept += data["kept"]
            self.candidates += data["candidates"]
        elapsed = time.perf_counter() - self.started
        self.bar.update(
            self.task,
            completed=min(self.kept, self.target),
            candidates=self.candidates,
            rate=self._rate(),
            tps=f"{self.tokens / elapsed:.0f}" if elapsed > 0 else "-",
        )


def _shown(text: str) -> Text:
    """Stored text (the model's words, a reason) as a cell: control characters escaped, and
    never read as Rich markup (a leading word such as "[red]" is shown as it is)."""
    return Text(printable(text))


def _bar(value: int, largest: int, width: int = 30) -> str:
    return "█" * max(1 if value else 0, round(width * value / largest)) if largest else ""


def print_stats(console: Console, s: dict[str, Any]) -> None:
    """The funnel, the rejection reasons, the totals and the distributions of a run."""
    for table in stats_tables(s):
        console.print(table)


def stats_tables(s: dict[str, Any]) -> list[Table]:
    """The figures of `selfgen.stats.run_stats` as Rich tables (also shown by `selfgen inspect`)."""
    tables = []
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
    tables.append(funnel)

    if s["reasons"]:
        reasons = Table(title="Rejection reasons", title_justify="left")
        reasons.add_column("stage")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        for stage, by_reason in s["reasons"].items():
            for reason, count in by_reason.items():
                reasons.add_row(_shown(stage), _shown(reason), str(count))
        tables.append(reasons)

    totals = Table(title="Totals", title_justify="left", show_header=False)
    totals.add_column("what")
    totals.add_column("value", justify="right")
    per_kept = s["candidates_per_kept"]
    tps = s["completion_tokens_per_s"]
    for what, value in [
        ("kept tasks / target", f"{s['kept']} / {s['target']}"),
        ("instances", str(s["instances"])),
        ("classification share", f"{s['classification_share']:.0%}"),
        ("classification / other", f"{s['classification']['yes']} / {s['classification']['no']}"),
        (
            "accepted / rejected by hand",
            f"{s['curation']['accepted']} / {s['curation']['rejected']}",
        ),
        ("rounds", str(s["rounds"])),
        ("candidates per kept task", f"{per_kept:.1f}" if per_kept else "-"),
        ("tokens (prompt + completion)", f"{s['tokens']['prompt']} + {s['tokens']['completion']}"),
        ("completion tokens/s", f"{tps:.1f}" if tps else "-"),
        ("generation time", f"{s['elapsed_s']:.1f} s"),
    ]:
        totals.add_row(what, value)
    tables.append(totals)
    tables += _distribution_tables(s)
    return tables


def _histogram(title: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("")
    largest = max((n for _, n in rows), default=0)
    for label, n in rows:
        table.add_row(_shown(label), str(n), _bar(n, largest))
    return table


def _distribution_tables(s: dict[str, Any]) -> list[Table]:
    tables = [
        _histogram(
            "ROUGE-L to the nearest neighbour (candidates that reached the novelty filter)",
            [(f"{b['from']:.1f}-{b['to']:.1f}", b["count"]) for b in s["rouge_histogram"]],
        ),
        _histogram(
            "Instruction length in words (kept tasks)",
            [
                (f"{b['from']}-{b['to']}" if b["to"] else f"{b['from']}+", b["count"])
                for b in s["instruction_words"]
            ],
        ),
        _histogram(
            "Most frequent leading words (kept tasks)",
            [(v["verb"] or "(none)", v["count"]) for v in s["leading_verbs"]],
        ),
    ]
    if s["tools"]:
        tools = Table(title="Tool-use traces by tool (first call)", title_justify="left")
        for column in (
            "tool",
            "traces",
            "format ok",
            "target ok",
            "execution ok",
            "grounded ok",
            "semantic ok",
            "pass rate",
        ):
            tools.add_column(column, justify="left" if column == "tool" else "right")
        for t in s["tools"]:
            tools.add_row(
                _shown(t["tool"] or "(no valid call)"),
                str(t["traces"]),
                str(t["format"]),
                str(t["target"]),
                str(t["execution"]),
                str(t["grounding"]),
                str(t["semantic"]),
                f"{t['pass_rate']:.0%}",
            )
        tables.append(tools)
    kinds = s.get("trace_kinds", [])
    if any(k["kind"] != "single" for k in kinds):
        # A multi-turn trace passes a check when each of its turns got through it.
        followups = any(k.get("followup") is not None for k in kinds)
        by_kind = Table(title="Tool-use traces by kind", title_justify="left")
        columns = ["kind", "traces", "format ok", "execution ok", "semantic ok"]
        columns += ["follow-ups ok"] if followups else []
        for column in [*columns, "verified"]:
            by_kind.add_column(column, justify="left" if column == "kind" else "right")
        for k in kinds:
            cells = [k["kind"], str(k["traces"]), str(k["format"]), str(k["execution"])]
            cells.append(str(k["semantic"]))
            if followups:
                cells.append("-" if k.get("followup") is None else str(k["followup"]))
            by_kind.add_row(*cells, str(k["verified"]))
        tables.append(by_kind)
    for d in s.get("scores", []):
        q = ", ".join(f"{v:.3g}" for v in d["quartiles"]) or "-"
        title = (
            f"Score {d['scorer']} ({d['kind']}s): {d['scored']} scored, {d['unscored']} could not"
            f" be; mean {d['mean']:.3g}, quartiles {q}"
            if d["scored"]
            else f"Score {d['scorer']} ({d['kind']}s): none could be scored"
        )
        tables.append(
            _histogram(
                title, [(f"{b['from']:.3g}-{b['to']:.3g}", b["count"]) for b in d["histogram"]]
            )
        )
    return tables
