"""Parallel calls: several independent calls in one assistant turn, each result with its own
tool_call_id; parsed, verified, stored, exported (OpenAI and ShareGPT) and rendered."""

import json
import re

import jsonschema
import pytest
from conftest import ROOT, SEEDS
from test_traces_end_to_end import TEMPLATE

from selfgen.backends.base import get_backend
from selfgen.config import ConfigError, build_config
from selfgen.export import export_run, sharegpt_turns
from selfgen.loop import Loop
from selfgen.records import ToolCall, Trace, call_turns
from selfgen.sandbox import ToolSandbox
from selfgen.seeds import ToolSeedError, load_seed_tasks, load_tool_seeds, parse_tool_seed
from selfgen.stages.tool_agent import (
    answer_problem,
    parallel_schema,
    parse_parallel_calls,
    render_agent_prompt,
)
from selfgen.store import RunStore
from selfgen.tooling import tool_specs

PARALLEL_SEEDS = ROOT / "seeds" / "tool_seed_tasks_parallel.jsonl"


@pytest.fixture(scope="module")
def specs():
    return tool_specs(ROOT / "tools")


def test_a_list_in_a_seed_is_one_turn_of_parallel_calls():
    seed = parse_tool_seed(
        {
            "id": "p",
            "request": "Weekdays of two dates?",
            "calls": [
                [
                    {"name": "weekday", "arguments": {"day": "2026-07-04"}},
                    {"name": "weekday", "arguments": {"day": "2026-12-25"}},
                ],
                {"name": "calculator", "arguments": {"expression": "1 + 1"}},
            ],
            "answer": "x",
        },
        "f.jsonl:1",
    )
    assert seed.parallel
    assert [len(t) for t in call_turns(seed.calls)] == [2, 1]
    with pytest.raises(ToolSeedError, match=r"f.jsonl:2: calls\[0\] lists parallel calls"):
        parse_tool_seed(
            {"id": "p", "request": "r", "calls": [[{"name": "a", "arguments": {}}]], "answer": ""},
            "f.jsonl:2",
        )
    with pytest.raises(ToolSeedError, match=r"calls\[0\]\[1\] needs a 'name'"):
        parse_tool_seed(
            {
                "id": "p",
                "request": "r",
                "calls": [[{"name": "a", "arguments": {}}, {"name": "b"}]],
                "answer": "",
            },
            "f.jsonl:3",
        )


def test_the_bundled_parallel_seeds_run_and_are_answered_by_their_results(specs):
    seeds = load_tool_seeds(PARALLEL_SEEDS)
    assert len(seeds) >= 10 and all(s.parallel for s in seeds)
    with ToolSandbox(ROOT / "tools") as sandbox:
        for seed in seeds:
            calls = []
            for call in seed.calls:
                jsonschema.validate(call.arguments, specs[call.name].parameters)
                result = sandbox.call(call.name, call.arguments)
                assert result.ok, (seed.id, result.error)
                calls.append(
                    ToolCall(call.name, call.arguments, result.output, None, call.parallel)
                )
            trace = Trace(request=seed.request, generation_index=0, kind="parallel", calls=calls)
            trace.answer = seed.answer
            # Each seed's answer uses every result of its parallel turn.
            assert answer_problem(trace) is None, seed.id


def test_parallel_calls_parse_and_fail_with_reasons(specs):
    text = json.dumps(
        [
            {"name": "weekday", "arguments": {"day": "2026-07-04"}},
            {"name": "calculator", "arguments": {"expression": "2 + 2"}},
        ]
    )
    calls, problem = parse_parallel_calls(text, "stop", specs)
    assert problem is None
    assert [(c.name, c.parallel) for c in calls] == [("weekday", False), ("calculator", True)]
    one = json.dumps([{"name": "weekday", "arguments": {"day": "2026-07-04"}}])
    twice = json.dumps([{"name": "weekday", "arguments": {"day": "2026-07-04"}}] * 2)
    unknown = json.dumps([{"name": "weekday", "arguments": {}}, {"name": "nope", "arguments": {}}])
    assert parse_parallel_calls(one, "stop", specs)[1].startswith("not_parallel")
    assert parse_parallel_calls(twice, "stop", specs)[1] == "duplicate_calls"
    assert parse_parallel_calls(unknown, "stop", specs)[1] == "call 2: unknown_tool:nope"
    assert parse_parallel_calls(text[:-5], "length", specs)[1] == "cut_off"
    assert parse_parallel_calls("[{", "stop", specs)[1] == "not_json"
    # The constraint: a list of two to three calls, each one tool's arguments.
    schema = parallel_schema(specs)
    jsonschema.validate(json.loads(text), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(one), schema)


def test_the_prompt_shows_parallel_calls_as_a_list_with_numbered_results(specs):
    seeds = load_tool_seeds(PARALLEL_SEEDS)[:1]
    seeds = [
        seeds[0].__class__(
            seeds[0].id,
            seeds[0].request,
            tuple(
                ToolCall(c.name, c.arguments, out, None, c.parallel)
                for c, out in zip(seeds[0].calls, ("Saturday", "Friday"), strict=True)
            ),
            seeds[0].answer,
        )
    ]
    calls = [
        ToolCall("weekday", {"day": "2025-05-01"}, "Thursday"),
        ToolCall("add_days", {"start": "2025-05-01", "days": 1}, None, "boom", parallel=True),
    ]
    prompt = render_agent_prompt("en", specs, seeds, "Two things?", calls)
    assert (
        "Request: What weekday are July 4 and December 25 in 2026?\n"
        'Call: [{"name": "weekday", "arguments": {"day": "2026-07-04"}}, {"name": "weekday",'
        ' "arguments": {"day": "2026-12-25"}}]\n'
        "Result 1: Saturday\nResult 2: Friday\n"
        "Answer: In 2026, July 4 is a Saturday and December 25 is a Friday.\n\n"
    ) in prompt
    assert prompt.endswith(
        "Request: Two things?\n"
        'Call: [{"name": "weekday", "arguments": {"day": "2025-05-01"}}, {"name": "add_days",'
        ' "arguments": {"start": "2025-05-01", "days": 1}}]\n'
        "Result 1: Thursday\nResult 2: error: boom\n"
    )


def test_parallel_messages_and_sharegpt_turns():
    trace = Trace(
        request="Weekdays?",
        generation_index=0,
        kind="parallel",
        calls=[
            ToolCall("weekday", {"day": "2026-07-04"}, "Saturday"),
            ToolCall("weekday", {"day": "2026-12-25"}, "Friday", parallel=True),
            ToolCall("calculator", {"expression": "1 + 1"}, "2"),
        ],
        answer="Saturday and Friday; 2.",
    )
    messages = trace.messages()
    assert [m["role"] for m in messages] == [
        "user", "assistant", "tool", "tool", "assistant", "tool", "assistant",
    ]  # fmt: skip
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_0", "call_1"]
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == [
        "call_0",
        "call_1",
        "call_2",
    ]
    turns = sharegpt_turns(messages)
    assert [t["from"] for t in turns] == [
        "human", "function_call", "observation", "function_call", "observation", "gpt",
    ]  # fmt: skip
    assert json.loads(turns[1]["value"]) == [
        {"name": "weekday", "arguments": {"day": "2026-07-04"}},
        {"name": "weekday", "arguments": {"day": "2026-12-25"}},
    ]
    assert json.loads(turns[2]["value"]) == ["Saturday", "Friday"]
    assert json.loads(turns[3]["value"]) == {
        "name": "calculator",
        "arguments": {"expression": "1 + 1"},
    }
    assert turns[4]["value"] == "2"


def test_unknown_trace_kinds_are_refused():
    with pytest.raises(ConfigError, match="trace_kinds"):
        build_config({}, {"trace_kinds": "single,serial"})
    with pytest.raises(ConfigError, match="names a kind twice"):
        build_config({}, {"trace_kinds": "parallel,parallel"})


# A scripted model for the control flow of a run with both kinds: it answers every request
# with calls the tools can run and answers that use the results.
SINGLE = {
    "Add up 1234 and 5678 for my invoice total, please.": {
        "name": "calculator",
        "arguments": {"expression": "1234 + 5678"},
    }
}
PARALLEL = {
    "Tell me which days of the week 2030-01-01 and 2031-01-01 fall on.": [
        {"name": "weekday", "arguments": {"day": "2030-01-01"}},
        {"name": "weekday", "arguments": {"day": "2031-01-01"}},
    ],
    "Multiply six by seven, and separately eight by nine.": [
        {"name": "calculator", "arguments": {"expression": "6 * 7"}},
        {"name": "calculator", "arguments": {"expression": "6 * 7"}},
    ],
}
ANSWERS = {
    "Add up 1234 and 5678 for my invoice total, please.": "The total is 6912.",
    "Tell me which days of the week 2030-01-01 and 2031-01-01 fall on.": "A Tuesday and a Wednesday.",
}


def _scripted_reply(request):
    prompt = request.prompt
    if prompt.startswith("Come up with a series of tasks"):
        return ""
    if prompt.startswith("An assistant can call these tools"):
        items = list(PARALLEL if "at the same time" in prompt else SINGLE)
        first = int(re.search(r"(\d+)\.$", prompt).group(1))
        return "".join(f"{'' if i == 0 else f'{first + i}.'} {t}\n" for i, t in enumerate(items))
    request_text = prompt.rsplit("Request: ", 1)[1].split("\n", 1)[0]
    if prompt.endswith("Call:"):
        return " " + json.dumps(PARALLEL.get(request_text) or SINGLE[request_text])
    if prompt.endswith("Answer:"):
        return " " + ANSWERS.get(request_text, "I do not know.")
    return "Answer:"


def test_a_run_with_single_and_parallel_traces(tmp_path, scripted):
    cfg = build_config(
        {},
        {
            "backend": "scripted",
            "prompts_per_round": 1,
            "num_tasks": 1,
            "num_traces": 2,
            "max_rounds": 1,
            "trace_prompts_per_round": 1,
            "target_tools": "off",  # the scripted model writes one list for all the tools
            "trace_kinds": "single,parallel",
            "tools": str(ROOT / "tools"),
        },
    )
    made = scripted(_scripted_reply)
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    seeds = [s for path in cfg.tool_seed_files().values() for s in load_tool_seeds(path)]
    with ToolSandbox(cfg.tools) as sandbox:
        executed = []
        for s in seeds:
            calls = tuple(
                ToolCall(
                    c.name, c.arguments, sandbox.call(c.name, c.arguments).output, None, c.parallel
                )
                for c in s.calls
            )
            executed.append(s.__class__(s.id, s.request, calls, s.answer))
        store.save_tools(tool_specs(cfg.tools), executed)
        Loop(cfg, store, get_backend("scripted"), sandbox=sandbox).run()
    rows = {
        r["request"]: r
        for r in store.db.execute("SELECT request, kind, fate, stage, reason, messages FROM traces")
    }
    assert rows["Add up 1234 and 5678 for my invoice total, please."]["kind"] == "single"
    single = rows["Add up 1234 and 5678 for my invoice total, please."]
    assert single["fate"] == "kept", single["reason"]
    weekdays = rows["Tell me which days of the week 2030-01-01 and 2031-01-01 fall on."]
    assert (weekdays["kind"], weekdays["fate"]) == ("parallel", "kept"), weekdays["reason"]
    assert (
        rows["Multiply six by seven, and separately eight by nine."]["reason"] == "duplicate_calls"
    )
    # The parallel call was constrained to a list of calls, the single one to one call.
    constraints = [
        r.constraint.json_schema
        for r in made[0].requests
        if r.constraint and r.constraint.json_schema
    ]
    assert {c.get("type") for c in constraints} == {"array", None}
    # Demonstrations of parallel calls are shown to parallel traces only.
    for r in made[0].requests:
        if r.prompt.startswith("Answer each request") and "Request: Add up" in r.prompt:
            assert "Result 1:" not in r.prompt

    out = tmp_path / "train.jsonl"
    export_run(store, "openai", out, only="traces")
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(exported) == 2
    _validate_and_render(exported)
    sharegpt = tmp_path / "sharegpt.jsonl"
    export_run(store, "sharegpt", sharegpt, only="traces")
    srows = [json.loads(line) for line in sharegpt.read_text().splitlines()]
    parallel = [r for r in srows if r["conversations"][0]["value"].startswith("Tell me which days")]
    assert [t["from"] for t in parallel[0]["conversations"]] == [
        "human", "function_call", "observation", "gpt",
    ]  # fmt: skip
    assert json.loads(parallel[0]["conversations"][2]["value"]) == ["Tuesday", "Wednesday"]
    from selfgen.store.figures import trace_kind_pass_rates

    by_kind = {k["kind"]: k for k in trace_kind_pass_rates(store.db)}
    assert (by_kind["parallel"]["traces"], by_kind["parallel"]["format"]) == (2, 1)
    assert (by_kind["parallel"]["verified"], by_kind["single"]["verified"]) == (1, 1)
    store.close()


def _validate_and_render(rows):
    """Every call validates against its tool's schema, every result answers its own call, and
    the conversation renders through a tool-capable chat template."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import render_jinja_template

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x)
    template = env.from_string(TEMPLATE)
    for row in rows:
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
        calls = [c for m in row["messages"] for c in m.get("tool_calls") or []]
        assert calls
        for call in calls:
            jsonschema.validate(
                json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]]
            )
        ids = [c["id"] for c in calls]
        assert len(set(ids)) == len(ids)
        assert [m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"] == ids
        rendered = template.render(messages=row["messages"], tools=row["tools"])
        assert rendered.count("<tool_call>") == len(calls)
        assert rendered.count("<tool_response>") == len(calls)
        chats, _ = render_jinja_template(
            conversations=[row["messages"]], tools=row["tools"], chat_template=TEMPLATE
        )
        assert chats[0].count("<tool_call>") == len(calls)


ZH_SEEDS = ROOT / "seeds" / "tool_seed_tasks_zh.jsonl"
ZH_PARALLEL_SEEDS = ROOT / "seeds" / "tool_seed_tasks_parallel_zh.jsonl"


def test_chinese_traces_take_the_chinese_tool_seeds():
    cfg = build_config(
        {}, {"language": "zh", "tools": "tools", "num_traces": 1, "trace_kinds": "single,parallel"}
    )
    assert cfg.tool_seed_files() == {
        "single": "seeds/tool_seed_tasks_zh.jsonl",
        "parallel": "seeds/tool_seed_tasks_parallel_zh.jsonl",
    }
    given = build_config({}, {"language": "zh", "tool_seeds": "mine.jsonl"})
    assert given.tool_seed_files() == {"single": "mine.jsonl"}
    assert build_config({}, {}).tool_seed_files() == {"single": "seeds/tool_seed_tasks.jsonl"}


@pytest.mark.parametrize("path", [ZH_SEEDS, ZH_PARALLEL_SEEDS])
def test_the_chinese_tool_seeds_run_and_their_answers_pass_the_chinese_check(specs, path):
    from selfgen.filters.rules import CJK_CHAR

    seeds = load_tool_seeds(path)
    assert len(seeds) >= 6
    with ToolSandbox(ROOT / "tools") as sandbox:
        for seed in seeds:
            assert CJK_CHAR.search(seed.request) and CJK_CHAR.search(seed.answer), seed.id
            calls = []
            for call in seed.calls:
                jsonschema.validate(call.arguments, specs[call.name].parameters)
                result = sandbox.call(call.name, call.arguments)
                assert result.ok, (seed.id, result.error)
                calls.append(
                    ToolCall(call.name, call.arguments, result.output, None, call.parallel)
                )
            if not calls:
                continue
            kind = "parallel" if seed.parallel else "single"
            trace = Trace(request=seed.request, generation_index=0, kind=kind, calls=calls)
            trace.answer = seed.answer
            assert answer_problem(trace, "zh") is None, seed.id


def test_the_chinese_semantic_check():
    from selfgen.stages.tool_agent import semantic_check

    assert semantic_check("Friday", "2008 年 8 月 8 日是星期五。", language="zh") is None
    assert semantic_check("Friday", "那天是周五。", language="zh") is None
    assert semantic_check("Friday", "2008 年 8 月 8 日是星期六。", language="zh") == (
        "answer_ignores_tool_output"
    )
    # A one-word output needs only that word, in English too (a weekday traces' answer).
    assert semantic_check("Friday", "It was a Friday.") is None
    assert semantic_check("Friday", "It was a Thursday.") == "answer_ignores_tool_output"
    assert semantic_check("HTTP 404: not found", "It means the page exists.") == (
        "answer_ignores_tool_numbers"
    )
    assert semantic_check("n\n40", "一共 40 笔订单。", language="zh") is None
    assert semantic_check("n\n40", "一共 41 笔订单。", language="zh") == (
        "answer_ignores_tool_numbers"
    )


def test_the_chinese_agent_and_request_prompts(specs):
    from selfgen.stages.tool_requests import render_request_prompt

    seed = load_tool_seeds(ZH_SEEDS)[8]
    seed = seed.__class__(
        seed.id, seed.request, (ToolCall("weekday", {"day": "2008-08-08"}, "Friday"),), seed.answer
    )
    prompt = render_agent_prompt("zh", {"weekday": specs["weekday"]}, [seed], "今天星期几？", [])
    assert prompt == (
        "回答每个请求。需要工具时，写出一个 JSON 调用，它的结果随后给出；需要多个互不依赖的调用"
        "时，把它们写成一个 JSON 列表，结果按顺序编号。然后用结果写出回答。\n\n工具：\n"
        + json.dumps(
            {
                "name": "weekday",
                "description": specs["weekday"].description,
                "parameters": specs["weekday"].parameters,
            }
        )
        + "\n\nRequest: 2008 年 8 月 8 日是星期几？\n"
        'Call: {"name": "weekday", "arguments": {"day": "2008-08-08"}}\n'
        "Result: Friday\nAnswer: 2008 年 8 月 8 日是星期五。\n\n"
        "Request: 今天星期几？\nCall:"
    )
    listing = render_request_prompt(
        "zh", {"weekday": specs["weekday"]}, ["甲？", "乙？"], "parallel"
    )
    assert listing == (
        "助手可以调用这些工具：\n- weekday: "
        + specs["weekday"].description
        + "\n\n请想出用户可能提出、并且需要同时对这些工具进行多次互不依赖的调用的请求：\n\n"
        "1. 甲？\n2. 乙？\n3."
    )


def test_an_answer_drawn_from_an_unrelated_document_is_rejected():
    from selfgen.stages.tool_agent import semantic_check

    with ToolSandbox(ROOT / "tools") as sandbox:

        def search(query):
            result = sandbox.call("kb_search", {"query": query})
            assert result.ok, result.error
            return result.output

        # The search returns its best matches whatever the question; here, about compound
        # interest. An answer quoting its numbers used to pass.
        request = "What is the sum of all integers from 1 to 50, inclusive?"
        output = search("sum of all integers from 1 to 50")
        assert "Compound Interest" in output and "1,000" in output
        answer = "1,000 / 1.05 * 100 = 1,110.25"
        assert semantic_check(output, answer) is None  # the numbers alone
        assert semantic_check(output, answer, request=request) == (
            "answer_from_an_unrelated_result"
        )
        # The document about the question answers it.
        request = "How many keys, white and black, are on a standard piano?"
        output = search("keys on a piano")
        answer = "A standard piano has 88 keys: 52 white and 36 black."
        assert semantic_check(output, answer, request=request) is None
    # Rows of a table are not sentences: the rule leaves query results alone.
    table = "name | price\nNoise-Cancelling Headphones | 199.0\nCeramic Teapot | 24.5"
    answer = "The dearest is the Noise-Cancelling Headphones, at 199.0."
    assert semantic_check(table, answer, request="What do we sell at the top price?") is None


def test_the_bundled_english_seeds_pass_the_semantic_check():
    with ToolSandbox(ROOT / "tools") as sandbox:
        for seed in load_tool_seeds(ROOT / "seeds" / "tool_seed_tasks.jsonl"):
            if not seed.calls:
                continue
            calls = [
                ToolCall(c.name, c.arguments, sandbox.call(c.name, c.arguments).output)
                for c in seed.calls
            ]
            trace = Trace(request=seed.request, generation_index=0, calls=calls)
            trace.answer = seed.answer
            assert answer_problem(trace) is None, seed.id


def test_a_trace_reads_back_from_its_messages():
    """`Trace.from_messages` inverts `messages()` (what `export --recheck` judges): parallel
    calls, outputs, follow-ups with and without calls."""
    from selfgen.records import FollowUp, ToolCall, Trace

    trace = Trace(
        request="What weekday are July 4 and December 25, 2026?",
        generation_index=0,
        kind="multiturn",
        calls=[
            ToolCall("weekday", {"day": "2026-07-04"}, "Saturday"),
            ToolCall("weekday", {"day": "2026-12-25"}, "Friday", parallel=True),
        ],
        answer="A Saturday and a Friday.",
        followups=[
            FollowUp(
                request="And 10 days after Christmas?",
                generation_index=1,
                calls=[ToolCall("add_days", {"start": "2026-12-25", "days": 10}, "2027-01-04")],
                answer="2027-01-04.",
            ),
            FollowUp(request="Thanks!", generation_index=2, answer="You're welcome."),
        ],
    )
    back = Trace.from_messages(trace.messages(), kind="multiturn")
    assert back.messages() == trace.messages()
    assert back.calls == trace.calls and back.followups[0].calls == trace.followups[0].calls
    assert [f.answer for f in back.followups] == ["2027-01-04.", "You're welcome."]
    with pytest.raises(ValueError, match="no user message"):
        Trace.from_messages([{"role": "assistant", "content": "hi"}])
