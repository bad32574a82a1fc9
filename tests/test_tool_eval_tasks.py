"""Checks on the held-out tool evaluation set, seeds/tool_eval_tasks.jsonl.

The file scores tool use: which tool a model calls first, whether it chains calls, and whether
it leaves tools alone when none is needed. It is only a fair measure if it covers every tool,
holds enough multi-call and no-call requests, has gold calls that the tools' schemas accept,
and is not a paraphrase of the tool seeds the generator learns from (a near copy would reward
memorising seeds). These tests are fast: no model and no tool is run here.
"""

from collections import Counter

import pytest
from conftest import ROOT
from rouge_score import rouge_scorer

from selfgen.seeds import load_tool_seeds
from selfgen.tooling import tool_specs, validate_arguments

EVAL_FILE = ROOT / "seeds" / "tool_eval_tasks.jsonl"
SEED_FILE = ROOT / "seeds" / "tool_seed_tasks.jsonl"
MAX_ROUGE_L = 0.7  # the same bar Self-Instruct uses to call two instructions near-duplicates


@pytest.fixture(scope="module")
def tasks():
    return load_tool_seeds(EVAL_FILE)


@pytest.fixture(scope="module")
def specs():
    return tool_specs(ROOT / "tools")


def test_enough_tasks_with_every_kind_of_request(tasks, specs):
    assert len(tasks) >= 60
    first_tools = Counter(t.calls[0].name for t in tasks if t.calls)
    assert set(specs) <= set(first_tools), f"never the first call: {set(specs) - set(first_tools)}"
    assert sum(len(t.calls) >= 2 for t in tasks) >= 8  # multi-call
    assert sum(not t.calls for t in tasks) >= 8  # no tool needed


def test_gold_calls_validate_against_the_tool_schemas(tasks, specs):
    for task in tasks:
        for call in task.calls:
            assert call.name in specs, (task.id, call.name)
            assert validate_arguments(specs[call.name], call.arguments) is None, (task.id, call)


def test_no_request_is_close_to_a_tool_seed(tasks):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    seeds = [s.request for s in load_tool_seeds(SEED_FILE)]
    too_close = [
        (task.id, seed)
        for task in tasks
        for seed in seeds
        if scorer.score(seed, task.request)["rougeL"].fmeasure >= MAX_ROUGE_L
    ]
    assert too_close == []
