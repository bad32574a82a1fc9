"""`selfgen inspect` on a large run store: time to open, time per page, peak memory, against
the usual way to show a table in Textual, measured in the same run.

- baseline, "all rows": one query for every candidate and trace, every row added to one
  DataTable (which then scrolls by itself);
- selfgen: the inspector as `selfgen inspect` runs it: a page of rows per query
  (LIMIT/OFFSET on indexed columns), the next page loaded when the cursor leaves this one.

Each method runs headless (`App.run_test`) in a fresh child process on the same synthetic
store, built through `RunStore.create` plus SQL inserts (tests/inspect_fixtures.py). The table
reports the seconds until the first screen is drawn, the mean seconds of a page move (ten
`pagedown` keys for the baseline; ten `]` keys, which load a page, for selfgen), the mean
seconds of a sort by ROUGE-L, and the child's peak resident set (interpreter, Textual and
SQLite's cache included).

    python benchmarks/inspect_large_store.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PAGE_MOVES = 10
SIZE = (130, 36)


def _all_rows_app(store):
    """The baseline: every item in one DataTable."""
    from textual.app import App
    from textual.widgets import DataTable

    from selfgen.store.browse import KINDS, _columns, _item
    from selfgen.tui.app import COLUMNS, _cells

    class AllRows(App):
        def compose(self):
            table = DataTable(cursor_type="row")
            for label, key in COLUMNS:
                table.add_column(label, key=key)
            yield table

        def on_mount(self):
            table = self.query_one(DataTable)
            for kind in KINDS:
                table.add_rows(_cells(_item(row)) for row in store.db.execute(_columns(kind)))
            table.focus()

        def action_sort_score(self):
            table = self.query_one(DataTable)
            table.sort("score", key=lambda cell: float(str(cell) or -1), reverse=True)

    return AllRows()


def child(method: str, store_dir: str) -> None:
    """Run one method and print its figures as JSON."""
    from selfgen.store import RunStore
    from selfgen.tui.app import InspectApp

    store = RunStore.open(store_dir)
    started = time.perf_counter()
    if method == "selfgen":
        app = InspectApp(store, "bench")
        page_key = "right_square_bracket"

        def sort_by_score() -> None:
            app.screen._set_view(sort="score", descending=True)
    else:
        app = _all_rows_app(store)
        page_key = "pagedown"

        def sort_by_score() -> None:
            app.action_sort_score()

    figures: dict[str, float] = {}

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            figures["open_s"] = time.perf_counter() - started
            t = time.perf_counter()
            for _ in range(PAGE_MOVES):
                await pilot.press(page_key)
            figures["page_s"] = (time.perf_counter() - t) / PAGE_MOVES
            t = time.perf_counter()
            sort_by_score()
            await pilot.pause()
            figures["sort_s"] = time.perf_counter() - t

    asyncio.run(run())
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def measure(method: str, store_dir: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, "--store", str(store_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="candidates per store, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store)
        return
    from inspect_fixtures import large_store

    table = Table(title="selfgen inspect on a large store (headless, one child process each)")
    for column in ("candidates", "method", "open s", "page move s", "sort s", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "method" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            store_dir = Path(tmp) / f"run{size}"
            large_store(store_dir, size)
            for method in ("all rows", "selfgen"):
                f = measure(method, store_dir)
                table.add_row(
                    f"{size:,}",
                    method,
                    f"{f['open_s']:.2f}",
                    f"{f['page_s']:.3f}",
                    f"{f['sort_s']:.2f}",
                    f"{f['peak_rss_mib']:.0f}",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
