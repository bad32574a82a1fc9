"""Selecting data by score, and reading data sets to score: parsing and control flow."""

import json
import math
import re

import pytest

from selfgen.scoring import Example, TraceExample
from selfgen.scoring.apply import ScoreFileError, read_rows
from selfgen.scoring.select import ScoreCondition, Selection


def test_conditions_parse_and_hold():
    c = ScoreCondition.parse("judge>=4", minimum=True)
    assert (c.scorer, c.op, c.threshold) == ("judge", ">=", 4.0)
    assert c.holds(4.0) and c.holds(4.5) and not c.holds(3.9)
    assert not c.holds(None) and not c.holds(math.nan)  # unscored never passes
    m = ScoreCondition.parse(" ifd < 1 ", minimum=False)
    assert m.holds(0.99) and not m.holds(1.0)
    assert str(m) == "ifd<1"


@pytest.mark.parametrize(
    ("text", "minimum", "message"),
    [
        ("judge=4", True, "is not a condition such as"),
        ("judge<=4", True, "a minimum uses '>=' or '>'"),
        ("ifd>1", False, "a maximum uses '<=' or '<'"),
        ("judge>=four", True, "is not a condition"),
    ],
)
def test_bad_conditions_say_why(text, minimum, message):
    with pytest.raises(ValueError, match=message):
        ScoreCondition.parse(text, minimum=minimum)


def test_selection_applies_conditions_then_the_top_fraction():
    scores = {"judge": {1: 5.0, 2: 4.2, 3: 3.0, 4: None, 5: 4.8}, "ifd": {1: 0.5, 2: 1.2, 5: 0.7}}
    ids = [1, 2, 3, 4, 5]
    judge4 = ScoreCondition.parse("judge>=4", minimum=True)
    assert Selection((judge4,)).allowed(scores, ids) == {1, 2, 5}
    ifd1 = ScoreCondition.parse("ifd<1", minimum=False)
    assert Selection((judge4, ifd1)).allowed(scores, ids) == {1, 5}
    # The best half (rounded up) of what passed, by judge, higher first.
    assert Selection((judge4,), 0.5, "judge").allowed(scores, ids) == {1, 5}
    # Lower is better for ifd: the best third of the scored items is the lowest.
    assert Selection((), 0.34, "ifd", ascending=True).allowed(scores, ids) == {1, 5}
    # A condition on a scorer this kind of item has no scores for lets every item pass.
    toolformer = ScoreCondition.parse("toolformer>=0.5", minimum=True)
    assert Selection((toolformer,)).allowed(scores, ids) == set(ids)
    assert not Selection() and Selection((judge4,))


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_rows_of_every_export_format_become_examples(tmp_path):
    trace = [
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c0",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
    ]
    path = write(
        tmp_path / "mixed.jsonl",
        [
            {"id": "a1", "instruction": "Add the numbers.", "input": "2 3", "output": "5"},
            {
                "messages": [
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."},
                ]
            },
            {
                "conversations": [
                    {"from": "human", "value": "Hi?"},
                    {"from": "gpt", "value": "Hey."},
                ]
            },
            {"messages": trace},
            {
                "conversations": [
                    {"from": "human", "value": "What is 2+2?"},
                    {
                        "from": "function_call",
                        "value": '{"name": "calculator", "arguments": {"expression": "2+2"}}',
                    },
                    {"from": "observation", "value": "4"},
                    {"from": "gpt", "value": "It is 4."},
                ]
            },
        ],
    )
    rows = read_rows(path)
    assert rows[0].example == Example("Add the numbers.", "2 3", "5")
    assert rows[0].data["id"] == "a1"
    assert rows[1].example == Example("Hi?", "", "Hello.")
    assert rows[2].example == Example("Hi?", "", "Hey.")
    assert isinstance(rows[3].example, TraceExample)
    converted = rows[4].example
    assert isinstance(converted, TraceExample)
    assert [m["role"] for m in converted.messages] == ["user", "assistant", "tool", "assistant"]
    assert [r.where for r in rows] == [f"{path}:{n}" for n in range(1, 6)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"text": "neither format"}', "not an alpaca (instruction/input/output), openai"),
        ('{"instruction": "Do it.", "output": 5}', "field 'output' must be a string"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "needs a user turn and an assistant"),
        ('{"conversations": [{"from": "robot", "value": "x"}]}', "unknown conversation role"),
    ],
)
def test_a_bad_row_is_one_error_with_file_and_line(tmp_path, line, message):
    path = write(
        tmp_path / "bad.jsonl", [{"instruction": "Fine.", "input": "", "output": "Ok."}, line]
    )
    with pytest.raises(ScoreFileError, match=re.escape(message)) as info:
        read_rows(path)
    assert str(info.value).startswith(f"{path}:2: ")
