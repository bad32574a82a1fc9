"""Multi-turn traces: the user follows up, each turn generated, filtered, run and verified like
the first request, and the whole conversation stored, exported (OpenAI and ShareGPT) and
rendered."""

import io
import json
import re

import jsonschema
import pytest
from conftest import ROOT, SEEDS
from rich.console import Console
from test_trace_kinds import _validate_and_render

from selfgen.backends.base import Completion, get_backend
from selfgen.config import ConfigError, build_config
from selfgen.display import print_stats
from selfgen.export import export_run, sharegpt_turns
from selfgen.filters.novelty import NoveltyFilter
from selfgen.filters.rouge import TOKENIZERS
from selfgen.filters.rules import RuleFilter
from selfgen.loop import Loop
from selfgen.records import FollowUp, SeedTurn, Stage, ToolCall, ToolSeed, Trace
from selfgen.sandbox import ToolSandbox
from selfgen.seeds import ToolSeedError, load_seed_tasks, load_tool_seeds, parse_tool_seed
from selfgen.stages.followups import FollowUpStage, parse_followup, render_followup_prompt
from selfgen.stages.tool_agent import (
    answer_problem,
    render_conversation_prompt,
    seeds_of_kind,
    turn_grounding_problem,
)
from selfgen.store import RunStore
from selfgen.store.figures import trace_kind_pass_rates
from selfgen.store.run_store import FOLLOWUP_GENERATION
from selfgen.tooling import tool_specs

MULTITURN_SEEDS = ROOT / "seeds" / "tool_seed_tasks_multiturn.jsonl"


@pytest.fixture(scope="module")
def specs():
    return tool_specs(ROOT / "tools")


def _executed(sandbox, seed):
    """The seed as a trace at each of its turns in turn, its calls run."""
    trace = Trace(request=seed.request, generation_index=0, kind="multiturn")
    for n, turn in enumerate(seed.turns(), start=1):
        if n > 1:
            trace.followups.append(FollowUp(request=turn.request, generation_index=0))
        for call in turn.calls:
            result = sandbox.call(call.name, call.arguments)
            assert result.ok, (seed.id, result.error)
            trace.turn_calls.append(ToolCall(call.name, call.arguments, result.output))
        trace.set_answer(turn.answer)
        yield trace


def _with_outputs(sandbox, seed):
    """The seed with the outputs of its calls, as a run stores it."""

    def run(calls):
        return tuple(
            ToolCall(
                c.name, c.arguments, sandbox.call(c.name, c.arguments).output, None, c.parallel
            )
            for c in calls
        )

    return ToolSeed(
        seed.id,
        seed.request,
        run(seed.calls),
        seed.answer,
        tuple(SeedTurn(t.request, run(t.calls), t.answer) for t in seed.followups),
    )


def test_the_bundled_multiturn_seeds_pass_every_check_of_every_turn(specs):
    seeds = load_tool_seeds(MULTITURN_SEEDS)
    assert len(seeds) >= 8 and all(s.kind == "multiturn" for s in seeds)
    assert all(2 <= len(s.turns()) <= 4 for s in seeds)
    # Every bundled tool is shown, and some follow-ups are answered without a call.
    assert {c.name for s in seeds for t in s.turns() for c in t.calls} == set(specs)
    assert any(not t.calls for s in seeds for t in s.followups)
    rules = RuleFilter(build_config({}, {}).rule_config())
    with ToolSandbox(ROOT / "tools") as sandbox:
        for seed in seeds:
            for trace in _executed(sandbox, seed):
                where = (seed.id, trace.turn)
                for call in trace.turn_calls:
                    jsonschema.validate(call.arguments, specs[call.name].parameters)
                assert turn_grounding_problem(trace, specs) is None, where
                assert answer_problem(trace) is None, where
                if trace.turn == 1:
                    assert rules.check(trace.request) is None, where


def test_followups_in_a_seed_parse_with_errors_naming_the_turn():
    seed = parse_tool_seed(
        {
            "id": "m",
            "request": "What is 2 + 2?",
            "calls": [{"name": "calculator", "arguments": {"expression": "2 + 2"}}],
            "answer": "4.",
            "followups": [
                {"request": " And times 3? ", "calls": [], "answer": "12."},
            ],
        },
        "f.jsonl:1",
    )
    assert seed.kind == "multiturn"
    assert [t.request for t in seed.turns()] == ["What is 2 + 2?", "And times 3?"]
    base = {"id": "m", "request": "r", "calls": [], "answer": "a"}
    with pytest.raises(ToolSeedError, match=r"f.jsonl:2: field 'followups' must be a list of 1"):
        parse_tool_seed({**base, "followups": []}, "f.jsonl:2")
    with pytest.raises(ToolSeedError, match=r"f.jsonl:3: followups\[0\].answer is missing"):
        parse_tool_seed({**base, "followups": [{"request": "r", "calls": []}]}, "f.jsonl:3")
    with pytest.raises(ToolSeedError, match=r"followups\[1\].calls\[0\] needs a 'name'"):
        parse_tool_seed(
            {
                **base,
                "followups": [
                    {"request": "r", "calls": [], "answer": "a"},
                    {"request": "r", "calls": [{"arguments": {}}], "answer": "a"},
                ],
            },
            "f.jsonl:4",
        )
    too_many = [{"request": "r", "calls": [], "answer": "a"}] * 4
    with pytest.raises(ToolSeedError, match="1 to 3 turns"):
        parse_tool_seed({**base, "followups": too_many}, "f.jsonl:5")


def test_multiturn_seeds_are_their_own_kind():
    cfg = build_config({}, {"tools": "tools", "num_traces": 1, "trace_kinds": "multiturn"})
    # The first turn is made as a single trace's: from the single seeds.
    assert cfg.tool_seed_files() == {
        "single": "seeds/tool_seed_tasks.jsonl",
        "multiturn": "seeds/tool_seed_tasks_multiturn.jsonl",
    }
    seeds = load_tool_seeds(MULTITURN_SEEDS) + load_tool_seeds(ROOT / "seeds/tool_seed_tasks.jsonl")
    assert {s.kind for s in seeds_of_kind(seeds, "multiturn")} == {"multiturn"}
    assert not [s for s in seeds_of_kind(seeds, "single") if s.followups]
    with pytest.raises(ConfigError, match="multiturn has no Chinese prompts yet"):
        build_config({}, {"language": "zh", "trace_kinds": "single,multiturn"})


def test_a_multiturn_trace_starts_as_a_targeted_single_request(specs):
    import random

    from selfgen.stages.tool_requests import ToolRequestStage

    cfg = build_config(
        {},
        {
            "tools": "tools",
            "num_traces": 1,
            "trace_kinds": "multiturn",
            "trace_prompts_per_round": 7,
        },
    )
    novelty = NoveltyFilter(
        RuleFilter(cfg.rule_config()), TOKENIZERS[cfg.tokenizer_name()], cfg.rouge_threshold, []
    )
    single = seeds_of_kind(load_tool_seeds(ROOT / "seeds/tool_seed_tasks.jsonl"), "single")
    stage = ToolRequestStage(cfg, specs, single, novelty, "multiturn")
    prompts = stage.prompts(random.Random(0), [])
    # One list for each tool, as for single traces; the trace is made for the list's tool.
    assert sorted(p.target for p in prompts) == sorted(specs)
    assert all(p.text.startswith("An assistant can call this tool:") for p in prompts)
    trace = stage.make("Multiply 48 by 12.", 0, prompts[0])
    assert (trace.kind, trace.target) == ("multiturn", prompts[0].target)
    assert stage.name == "tool_requests_multiturn"


def test_parse_followup():
    assert parse_followup(" And in Kelvin?\n", "stop") == ("And in Kelvin?", None)
    assert parse_followup(' User: "What about 2027?"', "stop") == ("What about 2027?", None)
    assert parse_followup(" Follow-up: And 2028?", "stop") == ("And 2028?", None)
    assert parse_followup("   ", "stop") == ("", "empty")
    assert parse_followup(" And in Kel", "length") == ("And in Kel", "truncated")


def _multiturn_trace():
    trace = Trace(
        request="What is 25 degrees Celsius in Fahrenheit?",
        generation_index=0,
        kind="multiturn",
        calls=[ToolCall("convert_units", {"value": 25, "from_unit": "C", "to_unit": "F"}, "77 F")],
        answer="25 degrees Celsius is 77 degrees Fahrenheit.",
    )
    trace.followups.append(
        FollowUp(
            request="And in Kelvin?",
            generation_index=1,
            calls=[
                ToolCall(
                    "convert_units", {"value": 25, "from_unit": "C", "to_unit": "K"}, "298.15 K"
                )
            ],
            answer="That is 298.15 Kelvin.",
        )
    )
    trace.followups.append(
        FollowUp(request="Which is the bigger number?", generation_index=2, answer="298.15.")
    )
    return trace


def test_the_conversation_prompt_shows_the_earlier_turns_in_full(specs):
    seed = load_tool_seeds(MULTITURN_SEEDS)[0]
    seed = seed.__class__(
        seed.id,
        seed.request,
        (ToolCall(seed.calls[0].name, seed.calls[0].arguments, "77 F"),),
        seed.answer,
        (
            seed.followups[0].__class__(
                seed.followups[0].request,
                (
                    ToolCall(
                        seed.followups[0].calls[0].name,
                        seed.followups[0].calls[0].arguments,
                        "298.15 K",
                    ),
                ),
                seed.followups[0].answer,
            ),
        ),
    )
    one = {"convert_units": specs["convert_units"]}
    trace = _multiturn_trace()
    trace.followups[-1].answer = None
    prompt = render_conversation_prompt("en", one, [seed], trace)
    demo = (
        "Request: What is 25 degrees Celsius in Fahrenheit?\n"
        'Call: {"name": "convert_units", "arguments": {"value": 25, "from_unit": "C",'
        ' "to_unit": "F"}}\n'
        "Result: 77 F\n"
        "Answer: 25 degrees Celsius is 77 degrees Fahrenheit.\n"
        "Request: And in Kelvin?\n"
        'Call: {"name": "convert_units", "arguments": {"value": 25, "from_unit": "C",'
        ' "to_unit": "K"}}\n'
        "Result: 298.15 K\n"
        "Answer: 25 degrees Celsius is 298.15 Kelvin.\n\n"
    )
    assert prompt.startswith(
        "Answer each request. To use a tool, write a JSON call; its result follows. Then write"
        " the answer using the result. A request can follow up on the conversation before it:"
        " answer it with a new call, or directly when the earlier results already answer it."
        "\n\nTools:\n"
    )
    # The demonstration, then the conversation so far, ending with the follow-up's line (the
    # model chooses "Call:" or "Answer:").
    assert prompt.endswith(
        demo + "Request: What is 25 degrees Celsius in Fahrenheit?\n"
        'Call: {"name": "convert_units", "arguments": {"value": 25, "from_unit": "C",'
        ' "to_unit": "F"}}\n'
        "Result: 77 F\n"
        "Answer: 25 degrees Celsius is 77 degrees Fahrenheit.\n"
        "Request: And in Kelvin?\n"
        'Call: {"name": "convert_units", "arguments": {"value": 25, "from_unit": "C",'
        ' "to_unit": "K"}}\n'
        "Result: 298.15 K\n"
        "Answer: That is 298.15 Kelvin.\n"
        "Request: Which is the bigger number?\n"
    )


def test_the_followup_prompt(specs):
    seed = load_tool_seeds(MULTITURN_SEEDS)[0]
    trace = _multiturn_trace()
    trace.followups.pop()
    prompt = render_followup_prompt("en", {"calculator": specs["calculator"]}, [seed], trace)
    assert prompt == (
        "A user talks with an assistant that can call these tools:\n"
        f"- calculator: {specs['calculator'].description}\n\n"
        "In each conversation, the user's follow-up builds on the assistant's last answer: a"
        " short message that only makes sense after what was said before, asking the same"
        " question for another value, a next step with the result, or a detail of it.\n\n"
        "User: What is 25 degrees Celsius in Fahrenheit?\n"
        "Assistant: 25 degrees Celsius is 77 degrees Fahrenheit.\n"
        "Follow-up: And in Kelvin?\n"
        "Assistant: 25 degrees Celsius is 298.15 Kelvin.\n\n"
        "User: What is 25 degrees Celsius in Fahrenheit?\n"
        "Assistant: 25 degrees Celsius is 77 degrees Fahrenheit.\n"
        "Follow-up: And in Kelvin?\n"
        "Assistant: That is 298.15 Kelvin.\n"
        "Follow-up:"
    )


def test_a_followup_is_judged_like_a_request(specs):
    cfg = build_config({}, {"tools": "tools", "num_traces": 1, "trace_kinds": "multiturn"})
    pool = ["How many weeks is that?"]
    novelty = NoveltyFilter(
        RuleFilter(cfg.rule_config()), TOKENIZERS[cfg.tokenizer_name()], cfg.rouge_threshold, pool
    )
    stage = FollowUpStage(cfg, specs, novelty)

    def judged(text, finish="stop"):
        trace = _multiturn_trace()
        del trace.followups[1:]
        ok = stage.apply(trace, Completion(text, finish, 1, 1), 7)
        return ok, trace

    ok, trace = judged(" And in Rankine?")  # three words: enough for a follow-up
    assert ok and trace.turn == 3 and trace.step_generation_indexes == [7]
    assert trace.checks["turn 3 followup"] == (True, None)
    assert novelty.index.texts[-1] == "And in Rankine?"
    ok, trace = judged(" How many weeks is that?")
    assert not ok and (trace.stage, trace.fate) == (Stage.FOLLOWUP, "rejected")
    assert trace.reason == "turn 3: near_duplicate: ROUGE-L 1.00 to 'How many weeks is that?'"
    assert trace.checks["followup"] == (False, trace.reason)
    assert judged(" Kelvin?")[1].reason == "turn 3: rules: too_short"
    # Before the last try, a follow-up that fails is dropped, to be written again.
    trace = _multiturn_trace()
    del trace.followups[1:]
    assert stage.apply(trace, Completion(" Kelvin?", "stop", 1, 1), 8, last_try=False) is None
    assert (trace.turn, trace.fate, trace.step_generation_indexes) == (2, "pending", [8])
    assert judged(" And in", "length")[1].reason == "turn 3: truncated"
    assert judged("boom", "error")[1].reason == "turn 3: followup_not_generated: "


def test_multiturn_messages_and_sharegpt_turns():
    trace = _multiturn_trace()
    messages = trace.messages()
    assert [m["role"] for m in messages] == [
        "user", "assistant", "tool", "assistant",
        "user", "assistant", "tool", "assistant",
        "user", "assistant",
    ]  # fmt: skip
    # Call ids go on through the conversation.
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == ["call_0", "call_1"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "What is 25 degrees Celsius in Fahrenheit?",
        "And in Kelvin?",
        "Which is the bigger number?",
    ]
    turns = sharegpt_turns(messages)
    # LLaMA-Factory's alternation: human or observation at odd positions, gpt or function_call
    # at even ones.
    assert [t["from"] for t in turns] == [
        "human", "function_call", "observation", "gpt",
        "human", "function_call", "observation", "gpt",
        "human", "gpt",
    ]  # fmt: skip
    for i, t in enumerate(turns):
        assert t["from"] in (("human", "observation") if i % 2 == 0 else ("gpt", "function_call"))


def test_a_turn_is_checked_on_its_own_and_failures_name_it(specs):
    trace = _multiturn_trace()
    # The last turn has no call: its answer is checked against the earlier results.
    assert answer_problem(trace) is None
    trace.followups[-1].answer = "The first one."
    assert answer_problem(trace) == "answer_ignores_tool_numbers (answered without a call)"
    trace.followups[-1].answer = "That is 298.15 kelvin!"
    assert answer_problem(trace) == "repeats_the_answer_of_turn_2"
    # A follow-up's call is grounded in the conversation: the earlier request and results.
    trace.followups[-1].calls.append(
        ToolCall("calculator", {"expression": "298.15 - 77"}, "221.15")
    )
    assert turn_grounding_problem(trace, specs) is None
    trace.followups[-1].calls[0] = ToolCall("calculator", {"expression": "298.15 - 78"}, "x")
    assert turn_grounding_problem(trace, specs) == (
        "ungrounded: calculator.expression: the number 78 is not in the request"
    )
    # Checks: per turn, and the trace's own entry says whether every turn got through it.
    for stage in (Stage.FORMAT, Stage.EXECUTION, Stage.SEMANTIC):
        trace.check(stage, None)  # the first turn's
    assert trace.check_turn(Stage.FORMAT, None)
    assert trace.checks["format"] == (True, None) and trace.checks["turn 3 format"] == (True, None)
    assert not trace.check_turn(Stage.EXECUTION, "tool_failed: boom")
    assert (trace.stage, trace.reason) == (Stage.EXECUTION, "turn 3: tool_failed: boom")
    assert trace.checks["execution"] == (False, "turn 3: tool_failed: boom")
    # The first turn passed the semantic check, the conversation did not get through it.
    assert "semantic" not in trace.checks and trace.checks["format"] == (True, None)


# A scripted model for a run of multi-turn traces. Each conversation is a list of turns:
# (user message, the call the model makes or None to answer directly, the answer).
CONVERSATIONS = {
    "kept": [
        (
            "My oven needs 40 degrees Celsius; what is that in Fahrenheit?",
            {"name": "convert_units", "arguments": {"value": 40, "from_unit": "C", "to_unit": "F"}},
            "40 degrees Celsius is 104 degrees Fahrenheit.",
        ),
        (
            "What would it be in Kelvin?",
            {"name": "convert_units", "arguments": {"value": 40, "from_unit": "C", "to_unit": "K"}},
            "40 degrees Celsius is 313.15 Kelvin.",
        ),
        (
            "Is that above the boiling point of water?",
            None,
            "No: 313.15 Kelvin is below 373.15 Kelvin, where water boils.",
        ),
        (
            "Then what is 313.15 minus 273.15?",
            {"name": "calculator", "arguments": {"expression": "313.15 - 273.15"}},
            "313.15 minus 273.15 is 40.",
        ),
    ],
    "format": [
        (
            "Multiply 123 by 456 for the tile order.",
            {"name": "calculator", "arguments": {"expression": "123 * 456"}},
            "123 times 456 is 56088.",
        ),
        ("Now divide that by 12, please.", "not a call", "?"),
    ],
    "novelty": [
        (
            "How many days are there between 2024-01-01 and 2024-03-01?",
            {"name": "date_diff", "arguments": {"start": "2024-01-01", "end": "2024-03-01"}},
            "There are 60 days between them.",
        ),
        ("How many weeks is that?", None, "?"),  # a bundled seed's follow-up, word for word
    ],
    "grounding": [
        (
            "What weekday was 1999-12-31, the night of the millennium party?",
            {"name": "weekday", "arguments": {"day": "1999-12-31"}},
            "It was a Friday.",
        ),
        (
            "And the day after that one?",
            {"name": "weekday", "arguments": {"day": "2000-01-01"}},
            "?",
        ),
    ],
    "repeat": [
        (
            "Convert 5 kilograms to pounds for the luggage check.",
            {
                "name": "convert_units",
                "arguments": {"value": 5, "from_unit": "kg", "to_unit": "lb"},
            },
            "5 kilograms is 11.0231 pounds.",
        ),
        (
            "What about 7 kilograms?",
            {
                "name": "convert_units",
                "arguments": {"value": 7, "from_unit": "kg", "to_unit": "lb"},
            },
            "5 kilograms is 11.0231 pounds.",
        ),
    ],
}
# A single trace of the same run (kinds single,multiturn).
SINGLE = [
    (
        "Add up 1234 and 5678 for my invoice total, please.",
        {"name": "calculator", "arguments": {"expression": "1234 + 5678"}},
        "The total is 6912.",
    )
]
TURNS = {
    turn[0]: (turns, i)
    for turns in [*CONVERSATIONS.values(), SINGLE]
    for i, turn in enumerate(turns)
}


def _scripted_reply(request):
    prompt = request.prompt
    if prompt.startswith("Come up with a series of tasks"):
        return ""
    if prompt.startswith("An assistant can call these tools"):
        listed = CONVERSATIONS.values() if "open a conversation" in prompt else [SINGLE]
        first = int(re.search(r"(\d+)\.$", prompt).group(1))
        return "".join(
            f"{'' if i == 0 else f'{first + i}.'} {turns[0][0]}\n" for i, turns in enumerate(listed)
        )
    if prompt.startswith("A user talks with an assistant"):
        last = re.findall(r"^(?:User|Follow-up): (.*)$", prompt, re.MULTILINE)[-1]
        turns, i = TURNS[last]
        return " " + turns[i + 1][0]
    current = prompt.rsplit("Request: ", 1)[1]
    turns, i = TURNS[current.split("\n", 1)[0]]
    _, call, answer = turns[i]
    if prompt.endswith("Call:"):
        return " " + (call if isinstance(call, str) else json.dumps(call))
    if prompt.endswith("Answer:"):
        return " " + answer
    # The choice after a result, or at a follow-up: call once, then answer.
    return "Answer:" if call is None or "Result:" in current else "Call:"


def test_a_run_of_single_and_multiturn_traces(tmp_path, scripted):
    cfg = build_config(
        {},
        {
            "backend": "scripted",
            "prompts_per_round": 1,
            "num_tasks": 1,
            "num_traces": 3,
            "max_rounds": 1,
            "trace_prompts_per_round": 1,
            "trace_kinds": "single,multiturn",
            "target_tools": "off",  # the scripted model writes one list for all the tools
            "tools": str(ROOT / "tools"),
        },
    )
    made = scripted(_scripted_reply)
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    seeds = [s for path in cfg.tool_seed_files().values() for s in load_tool_seeds(path)]
    with ToolSandbox(cfg.tools) as sandbox:
        store.save_tools(tool_specs(cfg.tools), [_with_outputs(sandbox, s) for s in seeds])
        # The store keeps the follow-ups of the seeds, with their outputs.
        multiturn = [s for s in store.tool_seeds() if s.followups]
        assert multiturn[0].followups[0].calls[0].output == "298.15 K"
        Loop(cfg, store, get_backend("scripted"), sandbox=sandbox).run()
    rows = {
        r["request"]: r
        for r in store.db.execute(
            "SELECT request, kind, fate, stage, reason, messages, checks, step_generation_ids"
            " FROM traces"
        )
    }
    by_name = {name: rows[turns[0][0]] for name, turns in CONVERSATIONS.items()}
    assert {r["kind"] for r in by_name.values()} == {"multiturn"}
    single = rows[SINGLE[0][0]]
    assert (single["kind"], single["fate"]) == ("single", "kept"), single["reason"]
    assert [m["role"] for m in json.loads(single["messages"])].count("user") == 1
    kept = by_name["kept"]
    assert kept["fate"] == "kept", kept["reason"]
    users = [m["content"] for m in json.loads(kept["messages"]) if m["role"] == "user"]
    assert 2 <= len(users) <= 4
    assert users == [turn[0] for turn in CONVERSATIONS["kept"][: len(users)]]
    checks = json.loads(kept["checks"])
    assert all(c["ok"] for c in checks.values())
    assert checks["turn 2 format"]["ok"] and checks["followup"]["ok"]
    assert {
        (r["fate"], r["stage"], r["reason"]) for name, r in by_name.items() if name != "kept"
    } == {
        ("rejected", "format", "turn 2: not_json"),
        (
            "rejected",
            "followup",
            "turn 2: near_duplicate: ROUGE-L 1.00 to 'How many weeks is that?'",
        ),
        (
            "rejected",
            "grounding",
            "turn 2: ungrounded: weekday.day: the date 2000-01-01 is not in the request",
        ),
        ("rejected", "semantic", "turn 2: repeats_the_answer_of_turn_1"),
    }
    # A follow-up the filters reject is written three times (each with its own seed) before
    # the conversation is rejected; one that passes, once.
    stages = dict(store.db.execute("SELECT id, stage FROM generations").fetchall())
    tries = {}
    for name in ("novelty", "kept"):
        steps = [stages[g] for g in json.loads(by_name[name]["step_generation_ids"])]
        tries[name] = steps.count("tool_followup")
    assert tries["novelty"] == 3
    users = [m for m in json.loads(kept["messages"]) if m["role"] == "user"]
    assert tries["kept"] == len(users) - 1
    assert FollowUpStage.name == FOLLOWUP_GENERATION
    # The rejected turn stays in the stored conversation.
    failed = json.loads(by_name["format"]["messages"])
    assert failed[-1] == {"role": "user", "content": "Now divide that by 12, please."}
    # A follow-up turn's first step is a choice between a call and the answer; the follow-up
    # itself is sampled like a request list.
    requests = made[0].requests
    # A first turn (of a single or a multi-turn trace) is shown single traces' examples; a
    # follow-up turn, the worked conversations and the conversation so far.
    for r in requests:
        if not r.prompt.startswith("Answer each request."):
            continue
        turns, i = TURNS[r.prompt.rsplit("Request: ", 1)[1].split("\n", 1)[0]]
        follow_up_prompt = "follow up on the conversation" in r.prompt
        assert follow_up_prompt == (i > 0)
        shows_followups = any(
            f"Request: {t.request}\n" in r.prompt for seed in seeds for t in seed.followups
        )
        assert shows_followups == (i > 0)
        if i > 0:
            assert f"Request: {turns[0][0]}\nCall: " in r.prompt
    followup_requests = [r for r in requests if r.prompt.startswith("A user talks")]
    assert followup_requests and all(r.params.stop == ("\n",) for r in followup_requests)
    assert any(
        r.constraint
        and r.constraint.choices == ("Call:", "Answer:")
        and r.prompt.endswith("Request: What would it be in Kelvin?\n")
        for r in requests
    )
    by_kind = {k["kind"]: k for k in trace_kind_pass_rates(store.db)}
    mt = by_kind["multiturn"]
    assert (mt["traces"], mt["verified"], mt["followup"]) == (5, 1, 4)
    # A conversation gets through a check when every turn did: the one that failed its second
    # turn's format got through no check after it, the one whose follow-up the filters
    # rejected got through them all.
    assert (mt["format"], mt["execution"], mt["grounding"], mt["semantic"]) == (4, 4, 3, 2)
    assert mt["pass_rate"] == 1 / 5
    shown = io.StringIO()
    print_stats(Console(file=shown, width=200, color_system=None), store.figures())
    table = shown.getvalue().split("Tool-use traces by kind", 1)[1]
    assert "follow-ups ok" in table
    # traces, format ok, execution ok, semantic ok, follow-ups ok, verified
    assert re.search(r"multiturn\W+5\W+4\W+4\W+2\W+4\W+1\W", table), table

    out = tmp_path / "train.jsonl"
    export_run(store, "openai", out, only="traces")
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["messages"]) > 4 for r in exported] == [False, True]  # single, multiturn
    _validate_and_render(exported)
    sharegpt = tmp_path / "sharegpt.jsonl"
    export_run(store, "sharegpt", sharegpt, only="traces", include_seeds=True)
    srows = [json.loads(line) for line in sharegpt.read_text().splitlines()]
    assert len(srows) == len(seeds) + 2
    conversations = [t["conversations"] for t in srows]
    # The multi-turn seeds and the verified conversation.
    assert sum(1 for c in conversations if [t["from"] for t in c].count("human") > 1) == 12
    for row in conversations:
        tags = [t["from"] for t in row]
        for i, tag in enumerate(tags):
            assert tag in (("human", "observation") if i % 2 == 0 else ("gpt", "function_call"))
    store.close()

    # Resumed, the novelty pool holds the follow-ups that passed, in the order they joined it.
    store = RunStore.open(tmp_path / "run")
    pool = store.trace_pool()
    assert pool[:6] == [SINGLE[0][0]] + [turns[0][0] for turns in CONVERSATIONS.values()]
    assert "How many weeks is that?" not in pool
    assert pool[6:10] == [
        "What would it be in Kelvin?",
        "Now divide that by 12, please.",
        "And the day after that one?",
        "What about 7 kilograms?",
    ]
    store.close()
