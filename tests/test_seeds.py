import json
import subprocess
from collections import Counter

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd, shared_file

from selfgen.filters.rules import RuleConfig, RuleFilter
from selfgen.seeds import SeedFileError, ToolSeedError, load_seed_tasks, load_tool_seeds


def test_project_seed_file_meets_the_brief():
    tasks = load_seed_tasks(SEEDS)
    assert len(tasks) >= 100
    assert sum(t.is_classification for t in tasks) / len(tasks) >= 0.15
    assert sum(any(i.input for i in t.instances) for t in tasks) / len(tasks) >= 0.30
    assert len({t.id for t in tasks}) == len(tasks)
    # Human seeds must pass the same rules as machine instructions, or the loop fights itself.
    rules = RuleFilter(RuleConfig())
    assert [t.instruction for t in tasks if rules.check(t.instruction)] == []
    first_words = Counter(t.instruction.split()[0] for t in tasks)
    assert first_words.most_common(1)[0][1] / len(tasks) < 0.15  # varied phrasing


def test_chinese_seed_file_loads():
    tasks = load_seed_tasks(ROOT / "seeds" / "seed_tasks_zh.jsonl")
    assert len(tasks) >= 20
    assert any(t.is_classification for t in tasks)


def test_original_self_instruct_seed_file_loads_unchanged():
    tasks = load_seed_tasks(shared_file("self_instruct_seed_tasks.jsonl"))
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26
    assert tasks[0].id == "seed_task_0"
    assert tasks[0].instances[0].input == ""


GOOD = {
    "id": "t1",
    "name": "n",
    "instruction": "Say hello to the user politely.",
    "instances": [{"input": "", "output": "Hello!"}],
    "is_classification": False,
}


def _line(**changes):
    obj = {**GOOD, **changes}
    for key, value in changes.items():
        if value is ...:
            del obj[key]
    return json.dumps(obj)


BAD_FILES = [
    ([_line(), '{"id": "t2", "name": '], ":2: not valid JSON"),
    ([_line(), _line(id="t2", instruction=...)], ":2: missing field 'instruction'"),
    (
        [_line(is_classification="no")],
        ":1: field 'is_classification' must be a boolean, got string",
    ),
    (
        [_line(instances={"input": "", "output": ""})],
        ":1: field 'instances' must be a list, got object",
    ),
    ([_line(instances=[{"input": "", "output": 3}])], ":1: instances[0].output must be a string"),
    ([_line(), _line()], ":2: duplicate id 't1'"),
    (["[1, 2]"], ":1: expected a JSON object, got list"),
    ([""], ":1: the seed file holds no tasks"),
]


@pytest.mark.parametrize("lines,message", BAD_FILES)
def test_bad_seed_file_is_one_clear_error(tmp_path, lines, message):
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SeedFileError) as err:
        load_seed_tasks(path)
    assert str(err.value) == f"{path}{message}" or str(err.value).startswith(f"{path}{message}")


@pytest.mark.parametrize("lines,message", BAD_FILES)
def test_bad_seed_file_on_the_command_line(tmp_path, child_env, lines, message):
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--seeds", str(path), "--out", str(out), "-n", "2"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"{path}{message}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_seed_file(tmp_path, child_env):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--seeds", str(tmp_path / "nope.jsonl"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "nope.jsonl: no such seed file" in proc.stderr
    assert not out.exists()


TOOL_SEED = {
    "id": "s1",
    "request": "What is 2 + 2?",
    "calls": [{"name": "calculator", "arguments": {"expression": "2 + 2"}}],
    "answer": "4",
}


@pytest.mark.parametrize(
    "lines,message",
    [
        ([json.dumps(TOOL_SEED), json.dumps(TOOL_SEED)], ":2: duplicate id 's1' (first on line 1)"),
        (['{"id": '], ":1: not valid JSON"),
        ([json.dumps({**TOOL_SEED, "calls": {}})], ":1: field 'calls' is missing or not a list"),
        ([json.dumps({**TOOL_SEED, "calls": [{"name": "x"}]})], ":1: calls[0] needs a 'name'"),
        (["", " "], ":1: the tool seed file holds no examples"),
    ],
)
def test_bad_tool_seed_file_is_one_clear_error(tmp_path, lines, message):
    path = tmp_path / "tool_seeds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ToolSeedError) as err:
        load_tool_seeds(path)
    assert str(err.value).startswith(f"{path}{message}")
