"""`selfgen inspect`: the paged queries, the real Textual app driven headless by a Pilot, the
curation marks and what export makes of them, and the errors of a store that cannot be read."""

import asyncio
import io
import json
import shutil
import sqlite3
import subprocess
import tracemalloc

import pytest
from conftest import ROOT, ScriptedBackend, selfgen_cmd
from inspect_fixtures import SCORE_MODEL, add_scores, fixture_run, large_store, score_large_store
from rich.console import Console
from textual.widgets import Input, Select, Static

from selfgen.backends.base import register_backend
from selfgen.export import export_run
from selfgen.stats import run_stats
from selfgen.store import DB_NAME, RoundRecord, RunStore, m001_initial, m002_tool_traces
from selfgen.store.browse import PAGE_SIZE, SORTS, Filters, Inspector, StoredScore, score_sort
from selfgen.tui.app import DetailScreen, FilterScreen, InspectApp, ItemTable, StatsScreen

SIZE = (130, 36)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    def scripted(reply):
        register_backend("scripted", lambda **_: ScriptedBackend(reply))

    return fixture_run(tmp_path_factory.mktemp("inspect") / "run", scripted)


@pytest.fixture
def run_dir(fixture_dir, tmp_path):
    """A fresh copy of the fixture run, so that marks made by one test stay there."""
    return shutil.copytree(fixture_dir, tmp_path / "run")


@pytest.fixture
def store(run_dir):
    store = RunStore.open(run_dir)
    yield store
    store.close()


def keys(table):
    return [row.value for row in table.rows]


def drive(app, scenario):
    """Run the app headless at a fixed size and play `scenario(app, pilot)` on it."""

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


# The queries, without the TUI.


def test_counts_and_filters(store):
    q = Inspector(store)
    assert q.count(Filters()) == 20
    assert q.count(Filters(kind="trace")) == 4
    assert q.count(Filters(status="surplus")) == 6
    assert q.count(Filters(status="kept")) == 5  # 4 tasks and 1 verified trace
    assert q.count(Filters(stage="rules")) == 4
    assert q.count(Filters(reason="too_short")) == 2
    assert q.count(Filters(classification=True)) == 2
    assert q.count(Filters(classification=True, kind="trace")) == 0
    assert q.count(Filters(search="CLASSIFY the")) == 2
    assert q.count(Filters(search="100%")) == 0  # % is a character, not a wildcard
    assert [i.id for i in q.page(Filters(kind="trace", status="rejected"))] == [2, 3, 4]
    assert q.values("stage")[:3] == ["classify", "format", "instances"]


@pytest.mark.parametrize("sort", sorted(SORTS))
@pytest.mark.parametrize("descending", [False, True])
def test_pages_cover_every_item_once_in_order(store, sort, descending):
    q = Inspector(store)
    view = {"sort": sort, "descending": descending}
    whole = q.page(Filters(), **view, offset=0, limit=100)
    paged = [
        i for start in range(0, 20, 6) for i in q.page(Filters(), **view, offset=start, limit=6)
    ]
    assert paged == whole
    assert len({(i.kind, i.id) for i in paged}) == 20
    if sort == "score":
        scores = [i.score for i in whole if i.score is not None]
        assert scores == sorted(scores, reverse=descending)


def test_detail_of_a_task_and_a_trace(store):
    q = Inspector(store)
    task = q.detail("task", 1)
    assert task.instances == [
        ("I loved every minute of this film.", "positive"),
        ("The plot was dull and the acting was worse.", "negative"),
    ]
    assert task.nearest and task.item.score == pytest.approx(2 / 3)
    assert [g[0] for g in task.generations] == ["instructions", "classify", "instances"]
    trace = q.detail("trace", 1)
    assert [m["role"] for m in trace.messages] == ["user", "assistant", "tool", "assistant"]
    assert trace.messages[2]["content"] == "583"  # the calculator really ran
    assert all(check["ok"] for check in trace.checks.values())
    assert [g[0] for g in trace.generations] == [
        "tool_requests",
        "tool_call",
        "tool_next",
        "tool_answer",
    ]


def test_stats_distributions(store):
    s = run_stats(store)
    scored = store.db.execute("SELECT COUNT(*) FROM candidates WHERE rouge_l IS NOT NULL")
    assert sum(b["count"] for b in s["rouge_histogram"]) == scored.fetchone()[0]
    assert s["rouge_histogram"][9]["count"] == 1  # the near duplicate, 0.96
    assert sum(b["count"] for b in s["instruction_words"]) == s["kept"] == 4
    assert {v["verb"] for v in s["leading_verbs"]} == {"classify", "summarize", "explain", "write"}
    assert s["classification"] == {"yes": 1, "no": 3}
    assert [(t["tool"], t["traces"], t["semantic"]) for t in s["tools"]] == [
        ("", 1, 0),  # the call to an unknown tool never named a real one
        ("calculator", 1, 1),
        ("date_diff", 1, 0),
    ]
    assert s["curation"] == {"accepted": 0, "rejected": 0}


def test_stats_command_prints_the_distributions(run_dir, child_env):
    proc = subprocess.run(
        [*selfgen_cmd(), "stats", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["tools"][1]["pass_rate"] == 1.0
    proc = subprocess.run(
        [*selfgen_cmd(), "stats", str(run_dir)],
        capture_output=True,
        text=True,
        env={**child_env, "COLUMNS": "120"},
        cwd=ROOT,
        timeout=120,
    )
    for title in ("ROUGE-L to the nearest neighbour", "Most frequent leading words", "by tool"):
        assert title in proc.stdout


# The app, driven by a Pilot.


def test_navigate_open_details_and_come_back(store):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        table = app.screen.query_one(ItemTable)
        assert table.row_count == 20
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        assert app.screen.detail.item.id == 1 and len(app.screen.detail.instances) == 2
        await pilot.press("escape")
        for _ in range(8):
            await pilot.press("down")
        await pilot.press("enter")
        assert (app.screen.detail.item.kind, app.screen.detail.item.id) == ("trace", 1)
        tree = app.screen.query_one("#messages")
        labels = [str(node.label) for node in tree.root.children]
        assert labels == [
            "user: Multiply 48 by 12 and add 7 to the result.",
            "call calculator",
            "calculator returned: 583",
            "answer: 48 times 12 plus 7 is 583.",
        ]
        await pilot.press("escape", "s")
        assert isinstance(app.screen, StatsScreen)
        await pilot.press("escape", "q")

    drive(app, scenario)
    assert app.error is None


def test_sort_by_key_and_by_header(store):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        screen = app.screen
        await pilot.press("o")
        assert screen.sort == "status"
        await pilot.press("o", "O")  # score, highest first
        assert (screen.sort, screen.descending) == ("score", True)
        assert keys(screen.query_one(ItemTable))[0] == "task:4"
        table = screen.query_one(ItemTable)
        text_x = sum(c.get_render_width(table) for c in table.ordered_columns[:-1]) + 2
        await pilot.click(ItemTable, offset=(text_x, 0))  # the "instruction / request" header
        assert screen.sort == "text"
        assert keys(table)[:2] == ["task:4", "task:1"]  # "Classify the ... negative[ .]"

    drive(app, scenario)


def test_filters_and_search(store):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        screen = app.screen
        await pilot.press("f")
        assert isinstance(app.screen, FilterScreen)
        # The kind choice has focus: open it, take "trace" (below "any" and "task").
        await pilot.press("enter", "down", "down", "enter")
        assert app.screen.query_one("#kind", Select).value == "trace"
        await pilot.click("#apply")
        assert screen.filters == Filters(kind="trace")
        assert keys(screen.query_one(ItemTable)) == ["trace:1", "trace:2", "trace:3", "trace:4"]

        await pilot.press("slash")
        assert screen.query_one("#search", Input).has_focus
        await pilot.press(*"days", "enter")
        assert keys(screen.query_one(ItemTable)) == ["trace:2"]
        assert "search: 'days'" in str(screen.query_one("#where").render())

        await pilot.press("x")  # clears every filter, the search too
        assert screen.query_one(ItemTable).row_count == 20

    drive(app, scenario)


def test_curation_is_written_at_once_and_honoured_by_export(run_dir, store, child_env):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        await pilot.press("a")  # task 1, then the cursor moves to task 2
        await pilot.press("R", *"too vague", "enter")  # reject task 2 with a note
        # Another connection sees both marks while the app is still open.
        other = sqlite3.connect(run_dir / DB_NAME)
        marks = other.execute("SELECT kind, item_id, decision, note FROM curation ORDER BY item_id")
        assert marks.fetchall() == [
            ("task", 1, "accepted", None),
            ("task", 2, "rejected", "too vague"),
        ]
        other.close()
        table = app.screen.query_one(ItemTable)
        assert str(table.get_cell("task:2", "status")) == "curated-rejected"
        await pilot.press("up", "up", "enter", "u", "a")  # in the detail view of task 1
        assert app.screen.detail.item.status == "curated-accepted"
        await pilot.press("escape", "down", "down", "down", "down", "down", "down", "down")
        await pilot.press("a")  # task 8
        await pilot.press("f5")
        statuses = [str(table.get_cell(k, "status")) for k in ("task:1", "task:2", "task:8")]
        assert statuses == ["curated-accepted", "curated-rejected", "curated-accepted"]

    drive(app, scenario)

    def exported(*flags):
        out = run_dir / "out.jsonl"
        proc = subprocess.run(
            [*selfgen_cmd(), "export", str(run_dir), "--format", "alpaca", "--out", str(out)]
            + list(flags),
            capture_output=True,
            text=True,
            env=child_env,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return {json.loads(line)["instruction"] for line in out.read_text().splitlines()}

    kept = {row["instruction"] for row, _ in store.kept_tasks()}
    rejected = store.db.execute("SELECT instruction FROM candidates WHERE id = 2").fetchone()[0]
    assert len(kept) == 3 and rejected not in kept
    assert exported() == kept
    assert exported("--only-curated") == {
        r[0] for r in store.db.execute("SELECT instruction FROM candidates WHERE id IN (1, 8)")
    }


def test_curated_traces_in_export(run_dir, store, tmp_path):
    q = Inspector(store)
    trace = q.item("trace", 1)
    out = tmp_path / "t.jsonl"
    assert export_run(store, "openai", out)[str(out)] == 5 + 1  # 5 instances, 1 trace
    q.curate(trace, "rejected")
    assert export_run(store, "openai", out)[str(out)] == 5
    q.curate(trace, "accepted")
    assert export_run(store, "openai", out, only_curated=True)[str(out)] == 1


def test_reloads_when_a_run_writes_the_store(run_dir, store):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        screen = app.screen
        writer = RunStore.open(run_dir)
        from selfgen.records import Candidate
        from selfgen.store import GenerationRecord

        cand = Candidate("Describe a sunrise over the sea in three sentences.", 0)
        cand.reject("rules", "too_long")
        writer.commit_round(
            RoundRecord(
                3,
                "",
                [3, [0] * 625, None],
                0.0,
                [GenerationRecord("instructions", {}, "x", "stop", 1, 1, 0.0, prompt="p")],
                [cand],
            )
        )
        writer.close()
        screen.poll_store()  # what the app's timer calls every two seconds
        await pilot.pause()
        assert screen.query_one(ItemTable).row_count == 21

    drive(app, scenario)


def test_an_empty_run_says_so(tmp_path):
    store = RunStore.create(tmp_path / "run", {}, [], {}, "test")
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        await pilot.press("enter", "a", "s")  # nothing to open or mark; statistics still work
        assert isinstance(app.screen, StatsScreen)
        await pilot.press("escape")
        where = str(app.screen.query_one("#where").render())
        assert where.startswith("no candidates yet")

    drive(app, scenario)
    store.close()


def test_a_100k_candidate_store_pages_in_bounded_memory(tmp_path):
    large_store(tmp_path / "big", 100_000)
    store = RunStore.open(tmp_path / "big")
    app = InspectApp(store, "big")

    async def scenario(app, pilot):
        screen = app.screen
        assert screen.total == 101_000  # and one trace per 100 candidates
        tracemalloc.start()
        await pilot.press(*["right_square_bracket"] * 5, "right_curly_bracket")
        await pilot.press("o", "o", "O", "down", "enter", "escape")  # by score, deepest first
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        table = screen.query_one(ItemTable)
        assert table.row_count == len(screen.items) <= PAGE_SIZE
        # Loading every row into Python would take well over 100 MB; a page takes a few.
        assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"

    drive(app, scenario)
    store.close()


# Quality scores: the columns, their sorting and the detail view.


@pytest.fixture
def scored(store):
    """The fixture run with the quality scores of inspect_fixtures.FIXTURE_SCORES."""
    add_scores(store)
    return store


def shown(static: Static, width: int = 126) -> str:
    """The text a Static widget shows, as plain lines."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(static.content)
    return console.file.getvalue()


def test_items_carry_their_scores(scored):
    q = Inspector(scored)
    assert q.scorers() == ["ifd", "judge", "toolformer"]
    assert q.item("task", 1).scores == {
        "ifd": pytest.approx(0.71),  # the mean of its two instances
        "judge": 4.5,
    }
    assert q.item("task", 8).scores == {"ifd": 1.08, "judge": None}  # the judge could not
    assert q.item("task", 9).scores == {"judge": 2.0}  # ifd never scored it
    assert q.item("task", 3).scores == {}  # rejected: no instances, no scores
    assert q.item("trace", 1).scores == {"toolformer": 0.85}
    assert q.item("trace", 3).scores == {"toolformer": None}
    page = {(i.kind, i.id): i.scores for i in q.page(Filters())}
    assert page[("task", 1)] == q.item("task", 1).scores
    assert page[("trace", 2)] == {"toolformer": -0.12}


def test_an_unscored_run_has_no_scorers(store):
    q = Inspector(store)
    assert q.scorers() == []
    assert all(i.scores == {} for i in q.page(Filters()))


def test_detail_holds_every_score_with_what_it_came_from(scored):
    q = Inspector(scored)
    task = q.detail("task", 1)
    assert task.instance_scores == [
        {
            "ifd": StoredScore(
                0.62, {"conditioned_loss": 1.24, "direct_loss": 2.0, "tokens": 1}, SCORE_MODEL
            ),
            "judge": StoredScore(4.0, {"answer": "4"}, SCORE_MODEL),
        },
        {
            "ifd": StoredScore(
                0.8, {"conditioned_loss": 1.6, "direct_loss": 2.0, "tokens": 1}, SCORE_MODEL
            ),
            "judge": StoredScore(5.0, {"answer": "5"}, SCORE_MODEL),
        },
    ]
    assert task.scores == {}
    assert q.detail("task", 8).instance_scores[0]["judge"].detail == {"error": "answer 'Great'"}
    assert q.detail("task", 3).instance_scores == []
    trace = q.detail("trace", 1)
    assert trace.scores == {
        "toolformer": StoredScore(0.85, {"loss_with_results": 0.4, "helps": True}, SCORE_MODEL)
    }
    assert trace.instance_scores == []


@pytest.mark.parametrize("scorer", ["judge", "ifd", "toolformer"])
@pytest.mark.parametrize("descending", [False, True])
def test_sorting_by_a_score_pages_every_item_once_unscored_last(scored, scorer, descending):
    q = Inspector(scored)
    view = {"sort": score_sort(scorer), "descending": descending}
    whole = q.page(Filters(), **view, offset=0, limit=100)
    paged = [
        i for start in range(0, 20, 6) for i in q.page(Filters(), **view, offset=start, limit=6)
    ]
    assert paged == whole
    assert len({(i.kind, i.id) for i in paged}) == 20
    values = [i.scores.get(scorer) for i in whole]
    scored_values = [v for v in values if v is not None]
    assert scored_values == sorted(scored_values, reverse=descending)
    assert values[: len(scored_values)] == scored_values  # then those without a score


def test_sorting_by_the_judge(scored):
    q = Inspector(scored)
    judge = score_sort("judge")

    def order(**view):
        return [f"{i.kind}:{i.id}" for i in q.page(Filters(), sort=judge, **view)]

    assert order(descending=True)[:4] == ["task:1", "task:2", "task:9", "trace:4"]
    assert order()[:4] == ["task:9", "task:2", "task:1", "task:3"]
    # Filters still apply; task 8, which the judge could not score, sorts with the unscored.
    kept = [i.id for i in q.page(Filters(status="kept", kind="task"), sort=judge)]
    assert kept == [9, 2, 1, 8]


def test_score_columns_appear_and_sort(scored):
    app = InspectApp(scored, "run")

    async def scenario(app, pilot):
        screen = app.screen
        table = screen.query_one(ItemTable)
        labels = [str(c.label) for c in table.ordered_columns]
        assert labels == [
            "item",
            "status",
            "ROUGE-L",
            "ifd",
            "judge",
            "toolformer",
            "clf",
            "n",
            "stage: reason",
            "instruction / request",
        ]
        judge, ifd = score_sort("judge"), score_sort("ifd")
        assert str(table.get_cell("task:1", judge)) == "4.50"
        assert str(table.get_cell("task:8", judge)) == "n/a"  # could not be scored
        assert str(table.get_cell("task:9", ifd)) == ""  # never scored

        def header_x(key):
            columns = table.ordered_columns
            index = [c.key.value for c in columns].index(key)
            return sum(c.get_render_width(table) for c in columns[:index]) + 2

        # A score's header sorts the best first: the judge's highest, ifd's lowest.
        await pilot.click(ItemTable, offset=(header_x(judge), 0))
        assert (screen.sort, screen.descending) == (judge, True)
        assert keys(table)[:4] == ["task:1", "task:2", "task:9", "trace:4"]
        assert "sorted by judge ↓" in str(screen.query_one("#where").render())
        await pilot.click(ItemTable, offset=(header_x(judge), 0))  # again: the other way
        assert (screen.sort, screen.descending) == (judge, False)
        assert keys(table)[:4] == ["task:9", "task:2", "task:1", "task:3"]
        await pilot.click(ItemTable, offset=(header_x(ifd), 0))
        assert (screen.sort, screen.descending) == (ifd, False)
        assert keys(table)[:4] == ["task:2", "task:1", "task:8", "task:3"]
        await pilot.press("O")
        assert keys(table)[:4] == ["task:8", "task:1", "task:2", "trace:4"]
        # The sort key steps through the score columns too, keeping the direction.
        await pilot.press("o")
        assert (screen.sort, screen.descending) == (judge, True)
        await pilot.press("o", "o")
        assert screen.sort == "clf"

    drive(app, scenario)


def test_detail_shows_the_scores(scored):
    app = InspectApp(scored, "run")

    async def scenario(app, pilot):
        await pilot.press("enter")  # task 1
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        summary = str(screen.query_one("#summary", Static).render())
        assert "scores (mean over the instances) · ifd 0.71 · judge 4.50" in summary
        instances = shown(screen.query_one("#instances", Static))
        assert "judge" in instances and "4.00" in instances and "5.00" in instances
        scores = shown(screen.query_one("#scores", Static)).splitlines()
        assert any(
            "judge (higher is better)" in line
            and "4.00" in line
            and 'answer: "4"' in line
            and "llamacpp · judge.gguf" in line
            for line in scores
        ), scores
        assert any("ifd (lower is better)" in line and "0.80" in line for line in scores)
        await pilot.press("escape")
        app.open_detail(app.inspector.item("task", 8))
        await pilot.pause()
        assert "could not score: answer 'Great'" in shown(app.screen.query_one("#scores", Static))
        await pilot.press("escape")
        app.open_detail(app.inspector.item("trace", 1))
        await pilot.pause()
        scores = shown(app.screen.query_one("#scores", Static))
        assert "toolformer (higher is better)" in scores and "0.85" in scores
        assert "helps: true" in scores
        assert "toolformer" in str(app.screen.query_one("#summary", Static).render())

    drive(app, scenario)


def test_an_unscored_item_and_run_show_no_scores(store):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        table = app.screen.query_one(ItemTable)
        assert [c.key.value for c in table.ordered_columns] == [
            "round",
            "status",
            "score",
            "clf",
            "n",
            "stage",
            "text",
        ]
        await pilot.press("enter")
        assert not app.screen.query("#scores")
        assert "scores" not in str(app.screen.query_one("#summary", Static).render())

    drive(app, scenario)


def test_score_columns_appear_when_a_scoring_writes_the_store(run_dir, store):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        screen = app.screen
        table = screen.query_one(ItemTable)
        assert len(table.columns) == 7
        writer = RunStore.open(run_dir)
        writer.save_scores("instance", "judge", [(1, 4.0, {}), (2, 2.0, {})], model={}, settings={})
        writer.close()
        screen.poll_store()
        await pilot.pause()
        assert len(table.columns) == 8
        assert str(table.get_cell("task:1", score_sort("judge"))) == "3.00"

    drive(app, scenario)


def test_a_scored_100k_candidate_store_sorts_by_a_score_in_bounded_memory(tmp_path):
    large_store(tmp_path / "big", 100_000)
    store = RunStore.open(tmp_path / "big")
    score_large_store(store)
    app = InspectApp(store, "big")

    async def scenario(app, pilot):
        screen = app.screen
        tracemalloc.start()
        await pilot.press("o", "o", "o", "O")  # the first score column, ifd, highest first
        await pilot.press(*["right_square_bracket"] * 3, "down", "enter", "escape")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (screen.sort, screen.descending) == (score_sort("ifd"), True)
        values = [i.scores["ifd"] for i in screen.items]
        assert len(values) == PAGE_SIZE and values == sorted(values, reverse=True)
        assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"
        await pilot.press("right_curly_bracket")  # the last page: what ifd never scored
        assert all("ifd" not in i.scores for i in screen.items)

    drive(app, scenario)
    store.close()


# Stores that cannot be read: one message, no traceback.


@pytest.mark.parametrize(
    "table, key",
    [("instances", "f5"), ("traces", "s")],  # while the table reloads; while the stats are read
)
def test_a_store_that_breaks_while_open_ends_the_app_with_a_message(run_dir, store, table, key):
    app = InspectApp(store, "run")

    async def scenario(app, pilot):
        other = sqlite3.connect(run_dir / DB_NAME)
        other.execute(f"DROP TABLE {table}")
        other.commit()
        other.close()
        await pilot.press(key)

    drive(app, scenario)
    assert app.error == f"cannot read the run store (no such table: {table})"
    assert app.return_code == 1


def test_a_store_locked_for_a_moment_is_read_at_the_next_tick(store):
    app = InspectApp(store, "run")
    real = app.inspector.data_version
    calls = []

    def locked_once():
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real() + 1  # as if a round had been committed meanwhile

    async def scenario(app, pilot):
        app.inspector.data_version = locked_once
        app.screen.poll_store()
        assert app.error is None
        app.screen.poll_store()
        await pilot.pause()
        assert app.screen.version == real() + 1  # reloaded
        assert len(app.screen.query_one(ItemTable).rows) == 20

    drive(app, scenario)
    assert app.error is None and len(calls) >= 2


def test_stats_of_a_broken_store_is_one_message(run_dir, child_env):
    db = sqlite3.connect(run_dir / DB_NAME)
    db.execute("DROP TABLE traces")
    db.commit()
    db.close()
    proc = subprocess.run(
        [*selfgen_cmd(), "stats", str(run_dir)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (
        1,
        f"error: {run_dir / DB_NAME}: cannot read the run store (no such table: traces)\n",
    )


def inspect_cli(run_dir, child_env, timeout=60):
    return subprocess.run(
        [*selfgen_cmd(), "inspect", str(run_dir)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_missing_empty_and_corrupt_stores(tmp_path, child_env):
    proc = inspect_cli(tmp_path, child_env)
    assert (proc.returncode, proc.stderr) == (
        1,
        f"error: {tmp_path}: no selfgen run here (no selfgen.db)\n",
    )
    db = tmp_path / DB_NAME
    db.touch()
    proc = inspect_cli(tmp_path, child_env)
    assert (proc.returncode, proc.stderr) == (1, f"error: {db}: the run store is empty (0 bytes)\n")
    db.write_bytes(b"not a database at all" * 100)
    proc = inspect_cli(tmp_path, child_env)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {db}: cannot read the run store (file is not a database)\n")


def test_locked_store(run_dir, child_env):
    # A store from before the curation migration must be written to open; another program
    # holds the write lock for longer than selfgen waits (10 s).
    db = sqlite3.connect(run_dir / DB_NAME, isolation_level=None)
    db.execute("DELETE FROM schema_migrations WHERE id = 3")
    db.execute("DROP TABLE curation")
    db.execute("BEGIN IMMEDIATE")
    proc = inspect_cli(run_dir, child_env)
    db.execute("ROLLBACK")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: {run_dir / DB_NAME}: cannot read the run store (database is locked)\n"
    )


def test_needs_a_terminal(run_dir, child_env):
    proc = inspect_cli(run_dir, child_env)
    assert proc.returncode == 2
    assert "needs a terminal" in proc.stderr and "Traceback" not in proc.stderr


def test_a_store_from_before_curation_is_migrated(tmp_path):
    path = tmp_path / DB_NAME
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    for number, step in enumerate((m001_initial, m002_tool_traces), start=1):
        step(db)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, '')", (number, step.__name__))
    db.execute("INSERT INTO run VALUES (1, '', 'old', '{}', '{}')")
    db.close()
    store = RunStore.open(tmp_path)
    names = [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY id")]
    assert names == [
        "m001_initial",
        "m002_tool_traces",
        "m003_curation",
        "m004_generation_errors",
        "m005_scores",
        "m006_trace_kinds",
        "m007_tool_sources",
        "m008_tool_code",
        "m009_multiturn_seeds",
    ]
    assert Inspector(store).count(Filters(status="curated-accepted")) == 0
    store.close()


def test_replay_of_the_stored_tool_calls(run_dir, store, child_env):
    calls = list(store.replayable_calls())
    # The four traces that reached a tool; the calculator's call is replayed with its output.
    assert {c.trace_id for c in calls} <= {1, 2, 3, 4}
    assert any(c.name == "calculator" and c.recorded == "583" for c in calls)
    proc = subprocess.run(
        [*selfgen_cmd(), "traces", "replay", str(run_dir)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=120,
    )
    assert f"replayed {len(calls)} tool calls" in proc.stdout, proc.stderr


def test_model_text_shows_escaped_not_acting_on_the_terminal(store):
    # An ANSI colour, an OSC window title and a carriage return inside the model's text, in
    # every place the table and the detail view show it.
    evil = "\x1b[31mred\x1b[0m\x1b]0;pwned\x07\rback"
    with store.db:
        store.db.execute("BEGIN")
        store.db.execute(
            "UPDATE candidates SET instruction = ? || instruction, nearest = ? WHERE id = 1",
            (evil, evil),
        )
        store.db.execute("UPDATE instances SET output = ? WHERE candidate_id = 1", (evil,))
        store.db.execute(
            "UPDATE generations SET response = ? WHERE id ="
            " (SELECT generation_id FROM candidates WHERE id = 1)",
            (evil,),
        )
    shown = "\\x1b[31mred\\x1b[0m\\x1b]0;pwned\\x07\\rback"
    app = InspectApp(store, "run")
    screens = []

    async def scenario(app, pilot):
        screens.append(app.export_screenshot())
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        screens.append(app.export_screenshot())
        await pilot.press("escape", "q")

    drive(app, scenario)
    table, detail = screens
    for screen in screens:
        assert "\x1b" not in screen and "\x07" not in screen and "\r" not in screen
    assert "\\x1b[31mred" in table
    # The instruction, its nearest neighbour, an instance and the raw generation.
    assert detail.count(shown[:20]) >= 4


def test_replay_shows_a_tool_name_with_escapes_escaped(run_dir, child_env):
    # The tool's name in a trace is the model's text: an escape sequence there is shown, not
    # obeyed (the outputs are shown by repr(), which escapes them already).
    db = sqlite3.connect(run_dir / DB_NAME, isolation_level=None)
    messages = json.loads(db.execute("SELECT messages FROM traces WHERE id = 1").fetchone()[0])
    call = next(m for m in messages if m.get("tool_calls"))["tool_calls"][0]
    call["function"]["name"] = "calc\x1b]0;pwned\x07ulator"
    db.execute("UPDATE traces SET messages = ? WHERE id = 1", (json.dumps(messages),))
    db.close()
    proc = subprocess.run(
        [*selfgen_cmd(), "traces", "replay", str(run_dir)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1  # the renamed tool does not exist: its call differs
    assert "trace 1: calc\\x1b]0;pwned\\x07ulator gave " in proc.stdout
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
