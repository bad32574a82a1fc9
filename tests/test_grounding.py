"""The grounding check: a trace's call arguments come from its request (or earlier results).

The ungrounded cases are calls the bundled model wrote in a real run, kept by the format,
execution and semantic checks."""

import json

import pytest
from conftest import ROOT, SEEDS
from inspect_fixtures import scripted_model

from selfgen.backends.base import get_backend
from selfgen.config import build_config
from selfgen.loop import Loop
from selfgen.records import ToolCall
from selfgen.sandbox import ToolSandbox
from selfgen.seeds import load_seed_tasks, load_tool_seeds
from selfgen.stages.grounding import grounding_problem, source_dates
from selfgen.store import RunStore
from selfgen.store.figures import tool_pass_rates
from selfgen.tooling import tool_specs

TOOL_SEEDS = ROOT / "seeds" / "tool_seed_tasks.jsonl"


@pytest.fixture(scope="module")
def specs():
    return tool_specs(str(ROOT / "tools"))


def problem(specs, request, *calls):
    return grounding_problem(request, [ToolCall(n, a, o) for n, a, o in calls], specs)


@pytest.mark.parametrize(
    ("request_text", "name", "arguments", "reason"),
    [
        (
            "What's the date 90 days before February 1, 2023?",
            "add_days",
            {"start": "2023-02-09", "days": 90},
            "add_days.start: the date 2023-02-09 is not in the request",
        ),
        (
            "I'm a 17-year-old boy and I can't do anything. What will happen to me tomorrow?",
            "calculator",
            {"expression": "17 * 100 + 1"},
            "calculator.expression: the number 100 is not in the request",
        ),
        (
            "How many people can you hold in your arms at one time?",
            "kb_search",
            {"query": "15"},
            "kb_search.query: the number 15 is not in the request",
        ),
        (
            "Can you tell me about a time when a ship sank because of a landslide?",
            "kb_search",
            {"query": "Gutenberg printing press"},
            "kb_search.query: no word of it is in the request",
        ),
        (
            "2025 年 12 月 3 日之后 4 天是什么日子？",
            "add_days",
            {"start": "2025-03-31", "days": 4},
            "add_days.start: the date 2025-03-31 is not in the request",
        ),
        (
            "I have 120 bottles of wine. How many liters are there?",
            "convert_units",
            {"value": 120, "from_unit": "l", "to_unit": "l"},
            "convert_units: from_unit and to_unit are the same ('l')",
        ),
        # The direction the request gives a number: before is back in time, after forward.
        (
            "What's the date 90 days before February 1, 2023?",
            "add_days",
            {"start": "2023-02-01", "days": 90},
            "add_days.days: the number 90 has the wrong sign (the request goes back in time)",
        ),
        (
            "What was the date two weeks ago, if today is 2026-03-02?",
            "add_days",
            {"start": "2026-03-02", "days": 14},
            "add_days.days: the number 14 has the wrong sign (the request goes back in time)",
        ),
        (
            "My visa starts on 2026-06-01. What's the date 3 business days after that?",
            "add_days",
            {"start": "2026-06-01", "days": -3},
            "add_days.days: the number -3 has the wrong sign (the request goes forward in time)",
        ),
        (
            "What is the highest price you can charge a product with your business?",
            "sql_query",
            {"query": "SELECT MAX(price) FROM products WHERE price > 100"},
            "sql_query.query: the number 100 is not in the request",
        ),
    ],
)
def test_made_up_arguments_are_rejected_with_the_argument_and_value(
    specs, request_text, name, arguments, reason
):
    assert problem(specs, request_text, (name, arguments, "x")) == f"ungrounded: {reason}"


@pytest.mark.parametrize(
    ("request_text", "name", "arguments"),
    [
        # Dates in any common spelling, and a date written without a year.
        ("What's the date 120 days after February 29, 2024?", "add_days",
         {"start": "2024-02-29", "days": 120}),
        ("What day of the week was 20 July 1969?", "weekday", {"day": "1969-07-20"}),
        ("Do the 4th of July and Christmas land on the same weekday in 2026?", "weekday",
         {"day": "2026-12-25"}),
        ("What weekday is July 4 this year?", "weekday", {"day": "2026-07-04"}),
        ("Invoice dated 03/21/2026: when is it 30 days overdue?", "add_days",
         {"start": "2026-03-21", "days": 30}),
        # Before is a negative count; weeks are days times 7; a percentage divides by 100.
        ("What's the date 90 days before 2023-02-01?", "add_days",
         {"start": "2023-02-01", "days": -90}),
        ("I borrowed a book on 2025-12-20 for three weeks. When must it go back?", "add_days",
         {"start": "2025-12-20", "days": 21}),
        ("What is 15% of 240?", "calculator", {"expression": "15 / 100 * 240"}),
        # A setting (k has a default) is not content; a query shares a word with the request.
        ("When did Gutenberg come up with his printing press?", "kb_search",
         {"query": "Gutenberg printing press", "k": 5}),
        ("How many orders did we get in October 2024?", "sql_query",
         {"query": "SELECT COUNT(*) FROM orders WHERE strftime('%m', day) = '10'"}),
        ("Convert 5 km to miles.", "convert_units",
         {"value": 5, "from_unit": "km", "to_unit": "mi"}),
        # A direction only counts with a unit of time; a number given both ways is not checked.
        ("Convert -40 degrees from Celsius to Fahrenheit.", "convert_units",
         {"value": -40, "from_unit": "C", "to_unit": "F"}),
        ("A week from now, on 2026-05-04, what day will it be?", "add_days",
         {"start": "2026-05-04", "days": 7}),
        ("Which is a weekday: 5 days before or 5 days after 2026-01-01?", "add_days",
         {"start": "2026-01-01", "days": 5}),
        # Chinese: dates with 年月日, digits next to characters, an English query.
        ("2023 年 12 月 28 日之后 30 天是哪一天？", "add_days", {"start": "2023-12-28", "days": 30}),
        ("2026年7月4日是星期几？", "weekday", {"day": "2026-07-04"}),
        ("我们一共有40笔订单吗？", "sql_query", {"query": "SELECT COUNT(*) FROM orders LIMIT 40"}),
        ("光在真空中的速度是多少？", "kb_search", {"query": "speed of light"}),
        ("我们四个人一共花了 268.8 元，每人付多少？", "calculator", {"expression": "268.8 / 4"}),
        ("360 的百分之十五是多少？", "calculator", {"expression": "360 * 15 / 100"}),
        ("2030 年的国庆节是星期几？", "weekday", {"day": "2030-10-01"}),
    ],
)  # fmt: skip
def test_arguments_taken_from_the_request_pass(specs, request_text, name, arguments):
    assert problem(specs, request_text, (name, arguments, "x")) is None


def test_a_later_call_may_use_an_earlier_result(specs):
    request = "How many days after joining did Jamal Carter place his first order?"
    first = ("sql_query", {"query": "SELECT joined FROM customers WHERE name = 'Jamal Carter'"},
             "joined\n2024-02-29")  # fmt: skip
    second = ("date_diff", {"start": "2024-02-29", "end": "2024-03-10"}, "10 days")
    assert problem(specs, request, first, second) == (
        "ungrounded: date_diff.end: the date 2024-03-10 is not in the request"
    )
    orders = ("sql_query", {"query": "SELECT MIN(day) FROM orders WHERE customer = 'Jamal Carter'"},
              "MIN(day)\n2024-03-10")  # fmt: skip
    assert problem(specs, request, first, orders, second) is None
    # A result is a source only for the turns after it.
    assert problem(specs, "Who joined last?", ("weekday", {"day": "2024-02-29"}, "2024-02-29"))


def test_dates_are_read_in_their_common_spellings():
    full, partial, years = source_dates(
        "From Feb 1st 2023 to 1 March 2023, then the 4th of July, new year's eve 2024, 12/25/2025"
    )
    assert full == {(2023, 2, 1), (2023, 3, 1), (2024, 12, 31), (2025, 12, 25)}
    assert partial == {(7, 4)}
    assert years == {2023, 2024, 2025}


def test_the_bundled_seeds_are_grounded(specs):
    """The human-written examples pass, but for three: arithmetic done before the call (0.9 for
    a 10% discount), a LIMIT 3 the question implies ("top customers"), and a search for the
    speed of light, a fact the request leaves unsaid."""
    from selfgen.sandbox import ToolSandbox

    failed = []
    with ToolSandbox(str(ROOT / "tools")) as sandbox:
        for seed in load_tool_seeds(TOOL_SEEDS):
            calls = []
            for call in seed.calls:
                result = sandbox.call(call.name, call.arguments)
                calls.append(ToolCall(call.name, call.arguments, result.output))
            if grounding_problem(seed.request, calls, specs):
                failed.append(seed.id)
    assert failed == ["tool_seed_21", "tool_seed_25", "tool_seed_36"]


def run_one_trace(run, scripted, request, arguments, answer, **settings):
    """The real loop, sandbox and store on a scripted model that asks `request`, calls
    add_days with `arguments` and answers `answer`; returns the run's store (open)."""
    cfg = build_config(
        {},
        {
            "tools": str(ROOT / "tools"),
            "tool_seeds": str(TOOL_SEEDS),
            "num_traces": 1,
            "backend": "scripted",
            "prompts_per_round": 2,
            "num_tasks": 1,
            "max_rounds": 1,
            "target_tools": "off",
            **settings,
        },
    )
    others = scripted_model(cfg.seed)
    call = json.dumps({"name": "add_days", "arguments": arguments})

    def reply(request_):
        prompt = request_.prompt
        if prompt.startswith("An assistant can call"):
            return f" {request}"
        if prompt.endswith(f"Request: {request}\nCall:"):
            return f" {call}"
        if prompt.endswith("Answer:"):
            return f" {answer}"
        if "Request: " + request in prompt:
            return " Answer:"
        return others(request_)

    scripted(reply)
    store = RunStore.create(run, cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    store.save_tools(tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds))
    with ToolSandbox(cfg.tools) as sandbox:
        Loop(cfg, store, get_backend("scripted"), sandbox=sandbox).run()
    return store


MADE_UP = "What's the date 90 days before February 1, 2023?"


def test_an_ungrounded_trace_is_rejected_at_grounding_in_the_loop(tmp_path, scripted):
    """Through the real loop and sandbox: the model's call runs and its answer repeats the
    result, but the date was made up, so the trace stops at `grounding`; with the check off it
    is kept."""
    for ground, expected in ((True, "grounding"), (False, "verified")):
        store = run_one_trace(
            tmp_path / f"run_{ground}",
            scripted,
            MADE_UP,
            {"start": "2023-02-09", "days": -90},
            "It is 2022-11-11.",
            ground_calls=ground,
        )
        fate, stage, reason, checks = store.db.execute(
            "SELECT fate, stage, reason, checks FROM traces WHERE request = ?", (MADE_UP,)
        ).fetchone()
        checks = json.loads(checks)
        assert stage == expected
        if ground:
            assert (fate, reason) == (
                "rejected",
                "ungrounded: add_days.start: the date 2023-02-09 is not in the request",
            )
            assert checks["execution"]["ok"] and not checks["grounding"]["ok"]
            assert "semantic" not in checks
            assert tool_pass_rates(store.db)[0]["grounding"] == 0
        else:
            assert fate == "kept" and "grounding" not in checks
            # A run without the check counts it as passed where the call ran.
            assert tool_pass_rates(store.db)[0]["grounding"] == 1
        store.close()


GROUNDED = "What's the date 90 days before 2023-02-01?"


def test_export_recheck_judges_stored_traces_by_todays_checks(tmp_path, scripted):
    """A trace verified by an earlier version (here: its stored call rewritten to +90 days, as
    kept before the sign rule) is left out by `export --recheck`, or marked with the reason
    under --include-failed; without --recheck it is exported as it was verified."""
    import subprocess

    from conftest import selfgen_cmd

    run = tmp_path / "run"
    store = run_one_trace(
        run,
        scripted,
        GROUNDED,
        {"start": "2023-02-01", "days": -90},
        "It is 2022-11-03, a Thursday.",
    )
    (messages,) = store.db.execute(
        "SELECT messages FROM traces WHERE request = ? AND fate = 'kept'", (GROUNDED,)
    ).fetchone()

    def export(*flags):
        out = tmp_path / "out.jsonl"
        done = subprocess.run(
            [*selfgen_cmd(), "export", str(run), "--only", "traces", "--out", str(out), *flags],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout, [json.loads(line) for line in out.read_text().splitlines()]

    # Verified today: --recheck keeps it.
    stdout, rows = export("--recheck")
    assert len(rows) == 1 and "0 verified traces" not in stdout
    # As an older version kept it: "90 days before" called with +90.
    with store.db:
        store.db.execute(
            "UPDATE traces SET messages = ? WHERE request = ?",
            (messages.replace('\\"days\\": -90', '\\"days\\": 90'), GROUNDED),
        )
    store.close()
    _, rows = export()
    assert [
        json.loads(r["messages"][1]["tool_calls"][0]["function"]["arguments"]) for r in rows
    ] == [{"start": "2023-02-01", "days": 90}]
    stdout, rows = export("--recheck")
    assert rows == []
    assert "--recheck: 1 verified traces fail today's checks, left out (grounding 1)" in stdout
    stdout, rows = export("--recheck", "--include-failed")
    marked = [r["selfgen"] for r in rows if r["messages"][0]["content"] == GROUNDED]
    assert marked == [
        {
            "verified": False,
            "stage": "grounding",
            "reason": "recheck: ungrounded: add_days.days: the number 90 has the wrong sign"
            " (the request goes back in time)",
        }
    ]
