"""`selfgen inspect`: read, understand and curate a run in the terminal.

Screens: the item table (one page of the store at a time, with filters, search and sorting),
an item's detail (instances, nearest neighbour, raw generations, trace messages and checks,
quality scores),
the run's statistics (the same figures as `selfgen stats`) and the keys. Every read goes
through the store's Inspector (selfgen.store.browse). Marks made by hand are written to the store at once, each in a
short transaction, so the inspector can stay open on a run that is still being written: it
reloads the page whenever another process commits to the store.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from typing import Any

from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    Collapsible,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Select,
    Static,
    Tree,
)

from selfgen.display import stats_tables
from selfgen.scoring import scorer_class
from selfgen.store import RunStore
from selfgen.store.browse import (
    KINDS,
    PAGE_SIZE,
    SCORE_SORT,
    STATUSES,
    Detail,
    Filters,
    Inspector,
    Item,
    StoredScore,
    score_sort,
)
from selfgen.terminal import printable

STATUS_STYLE = {
    "kept": "green",
    "rejected": "red",
    "surplus": "yellow",
    "curated-accepted": "bold green",
    "curated-rejected": "bold red",
}
# (header, sort key) of the table's columns; the column keys are the sort keys. The item
# column sorts by round (the order the loop wrote them), the instruction comes last to take
# the width that is left. A run with quality scores has a column per scorer after ROUGE-L.
COLUMNS = (
    ("item", "round"),
    ("status", "status"),
    ("ROUGE-L", "score"),
    ("clf", "clf"),
    ("n", "n"),
    ("stage: reason", "stage"),
    ("instruction / request", "text"),
)
SCORES_AFTER = 3  # the score columns come after this many columns
TEXT_CHARS = 150  # of an instruction shown in its table cell; the detail view shows it all
REASON_CHARS = 34
REFRESH_SECONDS = 2.0
KEYS = (
    ("up / down", "move; past the end of a page, load the next one"),
    ("[  ]  {  }", "previous / next / first / last page"),
    ("enter", "open the item: instances, nearest neighbour, raw generations, trace"),
    ("/", "search the instructions and requests (enter: apply, escape: close)"),
    ("f / x", "filters (kind, status, stage, reason, classification) / clear them"),
    ("o / O", "sort by the next column / reverse the order (or click a header)"),
    ("a / r", "accept / reject by hand, written to the store at once"),
    ("A / R", "accept / reject with a note"),
    ("u", "forget the mark made by hand"),
    ("s", "statistics of the run"),
    ("f5", "reload now (the table also reloads when the run writes the store)"),
    ("escape", "back"),
    ("?", "these keys"),
    ("q", "quit"),
)


def _text(text: str, style: str = "") -> Text:
    """Stored text as shown: the model's words may hold escape sequences, which would act on
    the terminal and shift the borders around them; they show escaped instead."""
    return Text(printable(text), style=style)


def _line(text: str, limit: int) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _columns(scorers: list[str]) -> list[tuple[str, str]]:
    """The table's (header, sort key) columns for a run scored by `scorers`."""
    scores = [(scorer, score_sort(scorer)) for scorer in scorers]
    return [*COLUMNS[:SCORES_AFTER], *scores, *COLUMNS[SCORES_AFTER:]]


def _score(value: float | None) -> Text:
    return Text("n/a", style="dim") if value is None else Text(f"{value:.2f}")


def _cells(item: Item, scorers: list[str]) -> list[Text]:
    values = (
        f"{item.kind} {item.id}",
        item.status,
        "" if item.score is None else f"{item.score:.2f}",
        {None: "", True: "yes", False: "no"}[item.clf],
        str(item.n),
        _line(f"{item.stage}: {item.reason}" if item.reason else item.stage, REASON_CHARS),
        _line(item.text, TEXT_CHARS),
    )
    cells = [_text(v) for v in values]
    cells[1].stylize(STATUS_STYLE[item.status])
    # A scorer that never saw the item leaves its cell empty; "n/a": it could not score it.
    scores = [_score(item.scores[s]) if s in item.scores else Text("") for s in scorers]
    return [*cells[:SCORES_AFTER], *scores, *cells[SCORES_AFTER:]]


@functools.cache
def higher_is_better(scorer: str) -> bool | None:
    """Whether `scorer`'s higher scores are the better ones; None for a scorer that is not
    installed here (a plug-in of the machine that scored the run) or cannot be loaded."""
    try:
        return bool(scorer_class(scorer).higher_is_better)
    except Exception:  # ScorerError, or a plug-in that fails to import: still show its scores
        return None


def _store_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """A store that fails while open (deleted, truncated, corrupted) ends the app with one
    message, which `selfgen inspect` prints, instead of a traceback."""

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            self.app.fail(f"cannot read the run store ({exc})")
            return None

    return guarded


class ItemTable(DataTable):
    """The item table: moving past its first or last row asks for the neighbouring page."""

    class Edge(Message):
        def __init__(self, step: int) -> None:
            super().__init__()
            self.step = step

    def action_cursor_down(self) -> None:
        if self.row_count and self.cursor_row >= self.row_count - 1:
            self.post_message(self.Edge(1))
        else:
            super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.row_count and self.cursor_row == 0:
            self.post_message(self.Edge(-1))
        else:
            super().action_cursor_up()


class TableScreen(Screen):
    """The run's items, one page at a time."""

    BINDINGS = [
        Binding("slash", "search", "Search"),
        Binding("f", "filters", "Filter"),
        Binding("x", "clear_filters", "Clear", show=False),
        Binding("o", "sort", "Sort"),
        Binding("O", "reverse", "Reverse", show=False),
        Binding("a", "curate('accepted')", "Accept"),
        Binding("r", "curate('rejected')", "Reject"),
        Binding("A", "curate_with_note('accepted')", "Accept+note", show=False),
        Binding("R", "curate_with_note('rejected')", "Reject+note", show=False),
        Binding("u", "forget", "Unmark", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", show=False),
        Binding("left_square_bracket", "page(-1)", "Previous page", show=False),
        Binding("left_curly_bracket", "first_page", "First page", show=False),
        Binding("right_curly_bracket", "last_page", "Last page", show=False),
        Binding("f5", "reload", "Reload", show=False),
        Binding("escape", "close_search", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filters = Filters()
        self.sort = "round"
        self.descending = False
        self.start = 0
        self.total = 0
        self.items: list[Item] = []
        self.version = -1
        self.scorers: list[str] | None = None  # None until the columns are made

    @property
    def inspector(self) -> Inspector:
        return self.app.inspector

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="where")
        # The columns are made by the first load, when the run's scorers are known.
        yield ItemTable(id="items", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="search instructions and requests", id="search")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#search").display = False
        self.reload()
        self.set_interval(REFRESH_SECONDS, self.poll_store)

    @_store_errors
    def poll_store(self) -> None:
        """Reload when another connection (a running loop) has committed since the last load."""
        try:
            if self.inspector.data_version() != self.version:
                self._load(keep_cursor=True)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            # A writer holds the store for a moment: look again at the next tick.

    @_store_errors
    def reload(self, keep_cursor: bool = False, cursor: int | None = None) -> None:
        self._load(keep_cursor, cursor)

    def _load(self, keep_cursor: bool = False, cursor: int | None = None) -> None:
        self.version = self.inspector.data_version()
        self.total = self.inspector.count(self.filters)
        if self.start >= self.total:
            self.start = max(0, (self.total - 1) // PAGE_SIZE * PAGE_SIZE)
        self.items = self.inspector.page(
            self.filters, sort=self.sort, descending=self.descending, offset=self.start
        )
        table = self.query_one(ItemTable)
        row = table.cursor_row if keep_cursor else (cursor or 0)
        scorers = self.inspector.scorers()
        if scorers != self.scorers:  # the first load, or a scoring has written the store since
            self.scorers = scorers
            table.clear(columns=True)
            for label, key in _columns(scorers):
                table.add_column(label, key=key)
        table.clear()
        for item in self.items:
            table.add_row(*_cells(item, scorers), key=f"{item.kind}:{item.id}")
        if self.items:
            table.move_cursor(row=min(max(row, 0), len(self.items) - 1))
        self._describe()

    def _describe(self) -> None:
        arrow = "↓" if self.descending else "↑"
        sort = self.sort.removeprefix(SCORE_SORT)
        where = f"sorted by {sort} {arrow} · {self.filters.describe()}"
        if self.items:
            shown = f"{self.start + 1:,}–{self.start + len(self.items):,} of {self.total:,}"
        elif self.filters == Filters():
            shown = "no candidates yet: the run has not finished a round"
        else:
            shown = "nothing matches"
        self.query_one("#where", Static).update(Text(f"{shown} · {where}"))

    def current(self) -> Item | None:
        table = self.query_one(ItemTable)
        return self.items[table.cursor_row] if self.items else None

    def on_item_table_edge(self, message: ItemTable.Edge) -> None:
        before = self.start
        self.action_page(message.step)
        if self.start != before:
            self.query_one(ItemTable).move_cursor(
                row=0 if message.step > 0 else len(self.items) - 1
            )

    def action_page(self, step: int) -> None:
        start = self.start + step * PAGE_SIZE
        if 0 <= start < self.total:
            self.start = start
            self.reload()

    def action_first_page(self) -> None:
        self.start = 0
        self.reload()

    def action_last_page(self) -> None:
        self.start = max(0, (self.total - 1) // PAGE_SIZE * PAGE_SIZE)
        self.reload()

    def action_reload(self) -> None:
        self.reload(keep_cursor=True)

    def _set_view(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self.start = 0
        self.reload()

    def action_sort(self) -> None:
        keys = [key for _, key in _columns(self.scorers or [])]
        position = keys.index(self.sort) if self.sort in keys else -1
        self._set_view(sort=keys[(position + 1) % len(keys)])

    def action_reverse(self) -> None:
        self._set_view(descending=not self.descending)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key == self.sort:
            self._set_view(descending=not self.descending)
        elif key.startswith(SCORE_SORT):  # the best first
            self._set_view(
                sort=key, descending=higher_is_better(key[len(SCORE_SORT) :]) is not False
            )
        else:
            self._set_view(sort=key, descending=False)

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.value = self.filters.search
        search.display = True
        search.focus()

    def action_close_search(self) -> None:
        search = self.query_one("#search", Input)
        if search.display:
            search.display = False
            self.query_one(ItemTable).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.query_one(ItemTable).focus()
        self._set_view(filters=_replace(self.filters, search=event.value.strip()))

    def action_filters(self) -> None:
        def apply(filters: Filters | None) -> None:
            if filters is not None:
                self._set_view(filters=filters)

        self.app.push_screen(FilterScreen(self.filters, self.inspector), apply)

    def action_clear_filters(self) -> None:
        self._set_view(filters=Filters())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        item = self.current()
        if item is not None:
            self.app.open_detail(item)

    def _marked(self, item: Item | None) -> None:
        """Show an item's new status in its row and move on to the next row."""
        if item is None:
            return
        table = self.query_one(ItemTable)
        row = table.cursor_row
        self.items[row] = item
        table.update_cell(f"{item.kind}:{item.id}", "status", _cells(item, [])[1])
        if row < len(self.items) - 1:
            table.move_cursor(row=row + 1)

    def action_curate(self, decision: str) -> None:
        item = self.current()
        if item is not None:
            self._marked(self.app.curate(item, decision))

    def action_curate_with_note(self, decision: str) -> None:
        item = self.current()
        if item is not None:
            self.app.ask_note(item, decision, self._marked)

    def action_forget(self) -> None:
        item = self.current()
        if item is not None:
            self._marked(self.app.curate(item, None))


def _replace(filters: Filters, **changes: Any) -> Filters:
    return Filters(**{**filters.__dict__, **changes})


class DetailScreen(Screen):
    """Everything about one item."""

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("a", "curate('accepted')", "Accept"),
        Binding("r", "curate('rejected')", "Reject"),
        Binding("A", "curate_with_note('accepted')", "Accept+note", show=False),
        Binding("R", "curate_with_note('rejected')", "Reject+note", show=False),
        Binding("u", "forget", "Unmark", show=False),
    ]

    def __init__(self, detail: Detail) -> None:
        super().__init__()
        self.detail = detail

    def compose(self) -> ComposeResult:
        d = self.detail
        item = d.item
        yield Header()
        with VerticalScroll(id="detail"):
            yield Static(self._summary(), id="summary")
            with Horizontal(classes="pair"):
                yield Static(
                    Panel(
                        _text(item.text), title="instruction" if item.kind == "task" else "request"
                    )
                )
                yield Static(self._nearest())
            if item.kind == "task":
                yield Static(self._instances(), id="instances")
            else:
                yield Label("Messages")
                yield self._messages_tree()
                yield Static(self._checks())
            if d.scores or any(d.instance_scores):
                yield Static(self._scores(), id="scores")
            for stage, prompt, response in d.generations:
                yield Static(Panel(_text(response), title=f"raw generation · {stage}"))
                with Collapsible(title=f"prompt of the {stage} generation", collapsed=True):
                    yield Static(_text(prompt))
        yield Footer()

    def _summary(self) -> Text:
        d = self.detail
        item = d.item
        text = Text(f"{item.kind} {item.id} · round {item.round} · ")
        text.append(item.status, style=STATUS_STYLE[item.status])
        text.append(f" · stage {item.stage}")
        if item.reason:
            text.append(f" · reason {printable(item.reason)}")
        if item.clf is not None:
            text.append(f" · classification: {'yes' if item.clf else 'no'}")
        if item.scores:
            text.append("\nscores")
            if item.kind == "task":
                text.append(" (mean over the instances)")
            for scorer, value in item.scores.items():
                text.append(f" · {printable(scorer)} ")
                text.append(_score(value))
        if d.note:
            text.append(f"\nnote: {printable(d.note)}")
        return text

    def _nearest(self) -> Panel:
        d = self.detail
        score = "-" if d.item.score is None else f"{d.item.score:.2f}"
        body = _text(d.nearest) if d.nearest else Text("(none: not compared)", style="dim")
        return Panel(body, title=f"nearest neighbour · ROUGE-L {score}")

    def _instances(self) -> Table | Text:
        if not self.detail.instances:
            return Text("No instances stored: only kept tasks keep theirs.", style="dim")
        table = Table(title="Instances", title_justify="left", expand=True)
        table.add_column("input", ratio=1)
        table.add_column("output", ratio=1)
        scorers = sorted({name for scores in self.detail.instance_scores for name in scores})
        for scorer in scorers:
            table.add_column(_text(scorer), justify="right")
        for (inp, out), scores in zip(
            self.detail.instances, self.detail.instance_scores, strict=True
        ):
            values = [_score(scores[s].value) if s in scores else Text("") for s in scorers]
            table.add_row(_text(inp), _text(out), *values)
        return table

    def _scores(self) -> Table:
        """Every score of the item with what it was computed from: a trace's own, or each
        instance's (numbered as in the instances table)."""
        d = self.detail
        table = Table(title="Scores", title_justify="left", expand=True)
        if d.item.kind == "task":
            table.add_column("instance", justify="right")
        for column in ("scorer", "score", "computed from", "model"):
            table.add_column(column, ratio=1 if column == "computed from" else None)
        if d.item.kind == "task":
            rows = [
                ([str(number)], name, score)
                for number, scores in enumerate(d.instance_scores, start=1)
                for name, score in scores.items()
            ]
        else:
            rows = [([], name, score) for name, score in d.scores.items()]
        for first, name, score in rows:
            better = higher_is_better(name)
            scorer = _text(name)
            if better is not None:
                scorer.append(f" ({'higher' if better else 'lower'} is better)", style="dim")
            value = _score(score.value)
            table.add_row(*first, scorer, value, _computed_from(score), _model(score))
        return table

    def _messages_tree(self) -> Tree:
        tree: Tree[None] = Tree(Text(f"trace {self.detail.item.id}"), id="messages")
        for m in self.detail.messages:
            if m["role"] == "user":
                tree.root.add_leaf(_text(f"user: {m['content']}"))
            elif m.get("tool_calls"):
                for call in m["tool_calls"]:
                    fn = call["function"]
                    node = tree.root.add(_text(f"call {fn['name']}"), expand=True)
                    for key, value in json.loads(fn["arguments"]).items():
                        node.add_leaf(_text(f"{key} = {json.dumps(value)}"))
            elif m["role"] == "tool":
                tree.root.add_leaf(_text(f"{m.get('name', 'tool')} returned: {m['content']}"))
            else:
                tree.root.add_leaf(_text(f"answer: {m['content']}"))
        tree.root.expand()
        tree.show_root = True
        return tree

    def _checks(self) -> Table | Text:
        if not self.detail.checks:
            return Text("Never verified: cut before the agent loop.", style="dim")
        table = Table(title="Verification", title_justify="left")
        for column in ("check", "result", "reason"):
            table.add_column(column)
        for name, check in self.detail.checks.items():
            ok = Text("pass", style="green") if check["ok"] else Text("fail", style="red")
            table.add_row(_text(name), ok, _text(check["reason"] or ""))
        return table

    def _marked(self, item: Item | None) -> None:
        if item is not None:
            self.detail = self.app.inspector.detail(item.kind, item.id) or self.detail
            self.query_one("#summary", Static).update(self._summary())

    def action_curate(self, decision: str) -> None:
        self._marked(self.app.curate(self.detail.item, decision))

    def action_curate_with_note(self, decision: str) -> None:
        self.app.ask_note(self.detail.item, decision, self._marked)

    def action_forget(self) -> None:
        self._marked(self.app.curate(self.detail.item, None))


def _computed_from(score: StoredScore) -> Text:
    if score.value is None and "error" in score.detail:
        return _text(f"could not score: {score.detail['error']}", style="dim")
    return _text(", ".join(f"{key}: {json.dumps(value)}" for key, value in score.detail.items()))


def _model(score: StoredScore) -> Text:
    parts = [str(score.model[key]) for key in ("backend", "model") if key in score.model]
    return _text(" · ".join(parts) if parts else json.dumps(score.model))


class StatsScreen(Screen):
    """The run's statistics: the figures of `selfgen stats`."""

    BINDINGS = [Binding("escape,backspace", "app.pop_screen", "Back")]

    def __init__(self, figures: dict[str, Any]) -> None:
        super().__init__()
        self.figures = figures

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(), Grid(id="stats"):
            for table in stats_tables(self.figures):
                yield Static(table)
        yield Footer()


class KeysScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(title="Keys", title_justify="left", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        yield Vertical(Static(table), id="keys")


class FilterScreen(ModalScreen[Filters | None]):
    """Choose what the table shows. Enter on a choice opens it; Apply or Clear to finish."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, filters: Filters, inspector: Inspector) -> None:
        super().__init__()
        self.filters = filters
        self.inspector = inspector

    def compose(self) -> ComposeResult:
        f = self.filters
        clf = None if f.classification is None else ("yes" if f.classification else "no")
        choices = (
            ("kind", KINDS, f.kind),
            ("status", STATUSES, f.status),
            ("stage", self.inspector.values("stage"), f.stage),
            ("reason", self.inspector.values("reason"), f.reason),
            ("classification", ("yes", "no"), clf),
        )
        with Grid(id="filters"):
            for name, values, value in choices:
                yield Label(name)
                yield Select(
                    [(printable(v), v) for v in values],
                    prompt="any",
                    value=Select.NULL if value is None else value,
                    id=name,
                )
            with Horizontal(id="filter-buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Clear", id="clear")

    def _value(self, name: str) -> str | None:
        value = self.query_one(f"#{name}", Select).value
        return None if value is Select.NULL else str(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "clear":
            self.dismiss(_replace(Filters(), search=self.filters.search))
            return
        clf = self._value("classification")
        self.dismiss(
            _replace(
                self.filters,
                kind=self._value("kind"),
                status=self._value("status"),
                stage=self._value("stage"),
                reason=self._value("reason"),
                classification=None if clf is None else clf == "yes",
            )
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


class NoteScreen(ModalScreen[str | None]):
    """A note to go with a decision by hand; escape cancels the decision."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, item: Item, decision: str) -> None:
        super().__init__()
        self.title_text = f"{decision[:-2]} {item.kind} {item.id} with a note (enter to save)"

    def compose(self) -> ComposeResult:
        with Vertical(id="note"):
            yield Label(Text(self.title_text))
            yield Input(placeholder="why", id="note-text")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class InspectApp(App[None]):
    """The inspector over an open run store."""

    TITLE = "selfgen inspect"
    CSS = """
    #where { height: 1; padding: 0 1; background: $boost; }
    #items { height: 1fr; }
    #search { dock: bottom; margin-bottom: 1; }
    #detail { padding: 0 1; }
    #summary { margin: 1 0; }
    .pair { height: auto; }
    .pair > Static { width: 1fr; }
    #messages { height: auto; margin: 1 0; }
    #stats { grid-size: 2; grid-rows: auto; grid-gutter: 1 2; height: auto; padding: 0 1; }
    KeysScreen, FilterScreen, NoteScreen { align: center middle; }
    #keys { width: 90; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    #filters {
        grid-size: 2; grid-columns: 16 40; grid-rows: 3; width: 62; height: auto;
        border: round $accent; padding: 1 2; background: $panel;
    }
    #filters Label { padding: 1 0; }
    #filter-buttons { column-span: 2; height: 3; align-horizontal: center; }
    #filter-buttons Button { margin: 0 2; }
    #note { width: 70; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("s", "stats", "Stats"),
        Binding("question_mark", "keys", "Keys"),
    ]

    def __init__(self, store: RunStore, run_name: str) -> None:
        super().__init__()
        self.inspector = store.inspector()
        self.sub_title = run_name
        self.error: str | None = None

    def on_mount(self) -> None:
        self.push_screen(TableScreen())

    def fail(self, message: str) -> None:
        self.error = message
        self.exit(return_code=1)

    @_store_errors
    def open_detail(self, item: Item) -> None:
        detail = self.inspector.detail(item.kind, item.id)
        if detail is not None:
            self.push_screen(DetailScreen(detail))

    @_store_errors
    def action_stats(self) -> None:
        if not isinstance(self.screen, StatsScreen):
            # Read here, under the guard, so a store that breaks shows one message.
            self.push_screen(StatsScreen(self.inspector.figures()))

    def action_keys(self) -> None:
        if not isinstance(self.screen, KeysScreen):
            self.push_screen(KeysScreen())

    def curate(self, item: Item, decision: str | None, note: str | None = None) -> Item | None:
        """Write a decision by hand to the store and say what it means for export."""
        try:
            updated = self.inspector.curate(item, decision, note)
        except sqlite3.DatabaseError as exc:  # e.g. locked by a long write elsewhere
            self.notify(f"not saved: {exc}", severity="error")
            return None
        what = f"{item.kind} {item.id}"
        if decision is None:
            self.notify(f"{what}: mark removed ({updated.status})")
        elif decision == "accepted" and item.fate != "kept":
            self.notify(f"{what}: accepted, but export leaves out what the loop rejected")
        else:
            self.notify(f"{what}: {decision}")
        return updated

    def ask_note(self, item: Item, decision: str, then: Callable[[Item | None], None]) -> None:
        def save(note: str | None) -> None:
            if note is not None:
                then(self.curate(item, decision, note.strip()))

        self.push_screen(NoteScreen(item, decision), save)
