"""Targeted tool requests: each request list is written for one tool, and a trace whose first
call uses another tool is rejected at `target` (the request and the call disagree)."""

import json
import random
import re

import pytest
from conftest import ROOT, SEEDS
from inspect_fixtures import scripted_model

from selfgen.backends.base import get_backend
from selfgen.config import ConfigError, build_config
from selfgen.filters.novelty import NoveltyFilter
from selfgen.filters.rouge import TOKENIZERS
from selfgen.filters.rules import RuleFilter
from selfgen.loop import Loop
from selfgen.records import ToolCall, Trace
from selfgen.sandbox import ToolSandbox
from selfgen.seeds import load_seed_tasks, load_tool_seeds
from selfgen.stages.tool_agent import ToolAgent
from selfgen.stages.tool_requests import ToolRequestStage
from selfgen.store import RunStore
from selfgen.store.figures import tool_pass_rates
from selfgen.tooling import tool_specs

TOOL_SEEDS = ROOT / "seeds" / "tool_seed_tasks.jsonl"


def config(**settings):
    return build_config(
        {},
        {
            "tools": str(ROOT / "tools"),
            "tool_seeds": str(TOOL_SEEDS),
            "num_traces": 1,
            **settings,
        },
    )


def novelty(cfg):
    tokenizer = TOKENIZERS[cfg.tokenizer_name()]
    return NoveltyFilter(RuleFilter(cfg.rule_config()), tokenizer, cfg.rouge_threshold, [])


def test_each_list_names_one_tool_and_shows_only_its_requests():
    cfg = config(trace_prompts_per_round=7)
    specs, seeds = tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds)
    stage = ToolRequestStage(cfg, specs, seeds, novelty(cfg))
    pool = [("Work out 1234 * 5678 for my invoice.", "calculator")]
    prompts = stage.prompts(random.Random(0), pool)
    # Every tool that opens a seed's calls gets one list a round (7 lists, 7 such tools).
    assert sorted(p.target for p in prompts) == sorted(stage.seeds_by_tool) == sorted(specs)
    for p in prompts:
        tool_lines = [line for line in p.text.splitlines() if line.startswith("- ")]
        assert tool_lines == [f"- {p.target}: {specs[p.target].description}".splitlines()[0]]
        shown = re.findall(r"^\d+\. (.+)$", p.text, re.MULTILINE)
        allowed = set(stage.seeds_by_tool[p.target])
        allowed |= {request for request, tool in pool if tool == p.target}
        assert shown and set(shown) <= allowed
        assert p.text.endswith(f"{len(shown) + 1}.")
    calculator = next(p for p in prompts if p.target == "calculator")
    assert "Work out 1234 * 5678 for my invoice." in calculator.text


def test_untargeted_lists_show_every_tool():
    cfg = config(target_tools="off")
    specs, seeds = tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds)
    [prompt] = ToolRequestStage(cfg, specs, seeds, novelty(cfg)).prompts(random.Random(0), [])[:1]
    assert prompt.target is None
    assert sum(line.startswith("- ") for line in prompt.text.splitlines()) == len(specs)


ON_TARGET = "Multiply 48 by 12 and add 7 to the result."
OFF_TARGET = "How many days are there between 2024-01-01 and 2024-03-01?"


def test_a_call_of_another_tool_is_rejected_at_target(tmp_path, scripted):
    """Through the real loop, rules, ROUGE-L and sandbox: the calculator's list yields a request
    answered with the calculator (kept) and one answered with date_diff (rejected at
    `target`, its call kept unrun so that stats count it under date_diff)."""
    cfg = config(
        backend="scripted",
        prompts_per_round=2,
        num_tasks=1,
        trace_prompts_per_round=7,
        max_rounds=1,
        target_tools="check",
    )
    others = scripted_model(cfg.seed)

    def reply(request):
        prompt = request.prompt
        if prompt.startswith("An assistant can call this tool"):
            first = int(prompt.rsplit("\n", 1)[1].rstrip("."))
            if "- calculator:" not in prompt:
                return " Thanks"  # too short: the rules reject it
            return f" {ON_TARGET}\n{first + 1}. {OFF_TARGET}"
        return others(request)

    scripted(reply)
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    store.save_tools(tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds))
    with ToolSandbox(cfg.tools) as sandbox:
        Loop(cfg, store, get_backend("scripted"), sandbox=sandbox).run()
    rows = {
        request: (fate, stage, reason, json.loads(checks), json.loads(messages))
        for request, fate, stage, reason, checks, messages in store.db.execute(
            "SELECT request, fate, stage, reason, checks, messages FROM traces"
        )
    }
    fate, stage, _, checks, _ = rows[ON_TARGET]
    assert (fate, stage) == ("kept", "verified")
    assert checks["target"] == {"ok": True, "reason": None}
    fate, stage, reason, checks, messages = rows[OFF_TARGET]
    assert (fate, stage, reason) == (
        "rejected",
        "target",
        "off_target: written for calculator, called date_diff",
    )
    assert checks["format"]["ok"] and not checks["target"]["ok"] and "execution" not in checks
    assert messages[1]["tool_calls"][0]["function"]["name"] == "date_diff"
    assert messages[2]["content"] == "error: not run"
    rates = {r["tool"]: r for r in tool_pass_rates(store.db)}
    assert (rates["calculator"]["target"], rates["calculator"]["semantic"]) == (1, 1)
    assert (rates["date_diff"]["format"], rates["date_diff"]["target"]) == (1, 0)
    # A resumed run lists the verified request under its tool.
    assert store.verified_requests() == [(ON_TARGET, "calculator")]
    store.close()


def test_constrain_allows_only_the_target_tool_in_the_first_call():
    cfg = config()
    assert cfg.target_tools == "constrain"
    specs, seeds = tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds)
    agent = ToolAgent(cfg, specs, seeds, sandbox=None)
    trace = Trace(request="What weekday is 2024-07-04?", generation_index=0, target="weekday")
    first = agent._call_constraint(trace).json_schema
    assert [s["properties"]["name"]["const"] for s in first["anyOf"]] == ["weekday"]
    trace.calls.append(ToolCall("weekday", {"day": "2024-07-04"}, "Thursday", None))
    later = agent._call_constraint(trace).json_schema
    assert len(later["anyOf"]) == len(specs)  # later calls may use any tool
    untargeted = Trace(request="What is 2 + 2?", generation_index=0)
    assert len(agent._call_constraint(untargeted).json_schema["anyOf"]) == len(specs)


def test_an_unknown_target_mode_is_one_error():
    with pytest.raises(ConfigError, match="target_tools"):
        config(target_tools="sometimes")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_targeted_list_has_a_prompt_in_each_language(language):
    from selfgen.stages.tool_requests import render_request_prompt

    specs = tool_specs(str(ROOT / "tools"))
    text = render_request_prompt(language, specs, ["一", "二"], target="weekday")
    assert "- weekday:" in text and "- calculator:" not in text and text.endswith("3.")
