"""Parsing of real SmolLM2-135M output, captured from selfgen runs on the embedded backend
(tests/data/smollm2_outputs.jsonl: one generation per line, with its finish reason)."""

import json
import re
from pathlib import Path

import pytest

from selfgen.records import Instance
from selfgen.stages import classify
from selfgen.stages.instances import filter_instances, parse_input_first, parse_output_first
from selfgen.stages.instructions import parse_continuation

CAPTURED = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "smollm2_outputs.jsonl").read_text().splitlines()
]
INSTRUCTIONS = [r for r in CAPTURED if r["stage"] == "instructions"]
INSTANCES = [r for r in CAPTURED if r["stage"] == "instances"]


def find(fragment):
    return next(r for r in CAPTURED if fragment in r["response"])


def test_capture_covers_cut_off_and_rambling_output():
    assert len(INSTRUCTIONS) >= 30 and len(INSTANCES) >= 60
    assert sum(r["finish_reason"] == "length" for r in INSTRUCTIONS) >= 5
    assert sum(r["finish_reason"] == "length" for r in INSTANCES) >= 5
    assert any(r["language"] == "zh" for r in INSTRUCTIONS)
    assert sum(r.get("kind") == "output_first" for r in INSTANCES) >= 10


def test_output_first_label_without_input():
    # SmolLM2 often writes a label and then a stray "Output:" instead of "Input:".
    record = find(" High\nOutput:")
    assert parse_output_first(record["response"], record["finish_reason"], 5) == [
        Instance("", "High")
    ]


@pytest.mark.parametrize("record", INSTRUCTIONS, ids=lambda r: r["response"][:30])
def test_every_captured_continuation_parses_to_clean_items(record):
    items = parse_continuation(record["response"], 9, record["finish_reason"], 16)
    assert items, "the first item always exists: the prompt opened it"
    assert [i.number for i in items] == list(range(9, 9 + len(items)))
    for item in items:
        assert "\n" not in item.text and item.text == item.text.strip()
        assert not re.match(r"^\d+\s*[.)]", item.text)
    truncated = [i for i in items if i.reason == "truncated"]
    if record["finish_reason"] == "length":
        assert truncated == [items[-1]]
    else:
        assert truncated == []


def test_cut_off_continuation_drops_the_last_item():
    record = find("What's the last digit of 2057?")
    assert record["finish_reason"] == "length"
    items = parse_continuation(record["response"], 9, "length", 16)
    assert [(i.text, i.reason) for i in items] == [
        ("What's the last digit of 2057?", None),
        ("Explain what this Python code does in one or two sentences.", None),
        ("How many people are there on a team with 48? 12", "truncated"),
    ]


def test_code_block_inside_an_item_is_one_item():
    record = find("In Python, what is the difference between a list and a tuple?")
    items = parse_continuation(record["response"], 9, record["finish_reason"], 16)
    assert items[0].text == "In Python, what is the difference between a list and a tuple?"
    assert items[1].text.startswith("What does this code do: ```python def find_max(lst):")
    assert items[1].reason == "truncated"


def test_continuation_that_restarts_numbering_stops_the_list():
    items = parse_continuation(
        " Tell me a fact.\n10. Name a river.\n1. Tell me a fact.", 9, "stop", 16
    )
    assert [i.text for i in items] == ["Tell me a fact.", "Name a river."]


def test_empty_items_are_marked():
    items = parse_continuation("\n10.\n11. Name three rivers in Asia.", 9, "stop", 16)
    assert [(i.text, i.reason) for i in items] == [
        ("", "empty"),
        ("", "empty"),
        ("Name three rivers in Asia.", None),
    ]


@pytest.mark.parametrize("record", INSTANCES, ids=lambda r: r["response"][:30])
def test_every_captured_instance_text_parses_to_clean_fields(record):
    parse = parse_output_first if record["kind"] == "output_first" else parse_input_first
    for inst in parse(record["response"], record["finish_reason"], 5):
        for text in (inst.input, inst.output):
            assert text == text.strip()
            assert not re.search(r"^(Input|Output|Class label|Task)\s*:", text, re.MULTILINE)


def test_repeated_output_lines_keep_the_first_answer_even_when_cut_off():
    record = find("Output: 2019\nOutput: 2019")
    assert record["finish_reason"] == "length"
    assert parse_input_first(record["response"], "length", 5) == [Instance("", "2019")]


def test_output_cut_mid_sentence_is_dropped():
    record = find("Input: The family wants to prepare a dinner for 10 people")
    assert parse_input_first(record["response"], "length", 5) == []


def test_doubled_label_gives_an_empty_output_that_the_filter_rejects():
    record = find("Input: 10^3 + 256\nOutput: Output:")
    parsed = parse_input_first(record["response"], record["finish_reason"], 5)
    assert parsed == [Instance("10^3 + 256", "")]
    verdict = filter_instances(parsed, [])
    assert verdict.task_reason == "no_valid_instance:empty_output"


def test_output_first_pairs():
    text = " Positive\nInput: I love it\nClass label: Negative\nInput: It broke on day one."
    assert parse_output_first(text, "stop", 5) == [
        Instance("I love it", "Positive"),
        Instance("It broke on day one.", "Negative"),
    ]
    assert parse_output_first(text, "length", 5) == [Instance("I love it", "Positive")]


def test_instance_filters():
    verdict = filter_instances(
        [
            Instance("a", "a"),
            Instance("b", "x:"),
            Instance("c", "y"),
            Instance("c", "y"),
            Instance("", ""),
        ],
        [],
    )
    assert verdict.kept == [Instance("c", "y")]
    assert [r for _, r in verdict.dropped] == [
        "input_equals_output",
        "output_ends_with_colon",
        "duplicate",
        "empty_output",
    ]
    assert verdict.task_reason is None
    conflict = filter_instances([Instance("q", "yes"), Instance("q", "no")], [])
    assert conflict.task_reason == "conflicting_outputs"


@pytest.mark.parametrize(
    "text,answer", [(" Yes", True), (" No", False), ("yes.", True), (" Maybe", None), ("", None)]
)
def test_classification_answers(text, answer):
    assert classify.parse_answer(text) is answer
