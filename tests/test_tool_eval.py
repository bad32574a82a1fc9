"""selfgen eval --tool-tasks: parsing the model's calls, the metrics, rendering tools exactly as
`tune` does, and the real path: the bundled model, base and tuned on a handful of verified
traces, its calls executed in the real sandbox.

The control-flow tests drive `ToolEval` with scripted model turns (a stand-in for the model,
nothing else); everything else is real: the tokenizer, the chat template, the sandbox and the
tools."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from conftest import ROOT, selfgen_cmd  # noqa: E402

from selfgen.records import ToolCall, ToolSeed  # noqa: E402
from selfgen.sandbox import ToolSandbox  # noqa: E402
from selfgen.tooling import tool_specs  # noqa: E402
from selfgen.tune.data import ChatExample, template_messages, tokenize_example  # noqa: E402
from selfgen.tune.tool_eval import (  # noqa: E402
    ToolEval,
    parse_calls,
    summarize,
    task_metrics,
)

TOOLS = ROOT / "tools"


def call_block(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@pytest.fixture(scope="module")
def tokenizer():
    from selfgen.tune.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("bundled"))


@pytest.fixture(scope="module")
def evaluator(tokenizer):
    with ToolSandbox(TOOLS) as sandbox:
        yield ToolEval(tokenizer, tool_specs(TOOLS), sandbox, max_steps=3)


# Parsing


def test_calls_are_parsed_from_tool_call_blocks():
    text = (
        "Let me compute.\n"
        + call_block("calculator", {"expression": "2+2"})
        + '\n<tool_call>\n{"name": "weekday", "arguments": "{\\"day\\": \\"2025-01-01\\"}"}'
    )
    first, second = parse_calls(text)
    assert (first.name, first.arguments, first.error) == ("calculator", {"expression": "2+2"}, None)
    # Arguments given as a JSON string, and a last block cut off before its closing tag.
    assert (second.name, second.arguments) == ("weekday", {"day": "2025-01-01"})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<tool_call>calculator(2+2)</tool_call>", "not JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "no tool name"),
        ('<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>', "arguments are not"),
    ],
)
def test_a_block_that_is_no_call_says_why(text, error):
    [call] = parse_calls(text)
    assert call.error.startswith(error) and call.arguments is None


def test_text_without_a_block_is_no_call():
    assert parse_calls("The answer is 4. I used no tool_call here.") == []


# The conversation and the metrics, with scripted model turns


def scripted(turns_by_request: dict[str, list[str]]):
    """A `generate` that answers each request's turns in order (read from the prompt)."""
    seen: dict[str, int] = {}

    def generate(prompts: list[str]) -> list[str]:
        out = []
        for prompt in prompts:
            request = next(r for r in turns_by_request if r in prompt)
            k = seen.get(request, 0)
            seen[request] = k + 1
            out.append(turns_by_request[request][k])
        return out

    return generate


def test_equivalent_calls_match_by_their_outputs_across_turns(evaluator):
    task = ToolSeed(
        "t1",
        "How many days from 2025-01-06 to 2025-06-30, in whole weeks?",
        (
            ToolCall("date_diff", {"start": "2025-01-06", "end": "2025-06-30"}),
            ToolCall("calculator", {"expression": "175 // 7"}),
        ),
        "25 weeks.",
    )
    generate = scripted(
        {
            task.request: [
                call_block("date_diff", {"start": "2025-01-06", "end": "2025-06-30"}),
                # Written differently from the gold call, with the same result.
                call_block("calculator", {"expression": "(175)//7"}),
                "That is 25 whole weeks.",
            ]
        }
    )
    [attempt] = evaluator.run([task], generate)
    assert len(attempt.turns) == 3 and attempt.answer == "That is 25 whole weeks."
    assert [c["output"] for c in attempt.calls] == ["175 days", "25"]
    metrics = task_metrics(task, attempt, evaluator.gold_outputs(task))
    assert metrics["right_tool"] and metrics["execution_match"]


def test_a_wrong_call_an_invalid_one_and_a_needless_one(evaluator):
    wrong = ToolSeed(
        "w", "What is 17 times 23?", (ToolCall("calculator", {"expression": "17*23"}),), "391"
    )
    invalid = ToolSeed(
        "i", "What weekday is 2025-12-25?", (ToolCall("weekday", {"day": "2025-12-25"}),), ""
    )
    needless = ToolSeed("n", "Say hello to my friend Ana.", (), "Hello, Ana!")
    generate = scripted(
        {
            wrong.request: [call_block("calculator", {"expression": "17+23"}), "It is 40."],
            invalid.request: [call_block("weekday", {"day": "December 25"}), "A Thursday."],
            needless.request: [call_block("kb_search", {"query": "Ana"}), "Hello, Ana!"],
        }
    )
    tasks = [wrong, invalid, needless]
    attempts = evaluator.run(tasks, generate)
    metrics = [
        task_metrics(t, a, evaluator.gold_outputs(t)) for t, a in zip(tasks, attempts, strict=True)
    ]
    assert metrics[0]["right_tool"] and not metrics[0]["execution_match"]
    assert attempts[1].calls[0]["schema_valid"] is False and not metrics[1]["execution_match"]
    assert metrics[2]["called"]  # a call where none was needed: not an abstention
    summary = summarize(tasks, metrics)
    assert summary["overall"] == {
        "tasks": 3,
        "need_call": 2,
        "call_rate": 1.0,
        "abstain_rate": 0.0,
        "parseable_rate": 1.0,
        "schema_valid_rate": 2 / 3,
        "right_tool_rate": 1.0,
        "execution_match": 0.0,
    }
    assert set(summary["per_tool"]) == {"calculator", "weekday", "none"}


# Rendering: eval asks exactly what tune trained on


def test_eval_renders_requests_and_results_as_tune_renders_the_training_row(evaluator, tokenizer):
    """The training text of a verified trace begins with eval's prompt for the first turn, and
    with eval's prompt for the answer once the call and its result are in the conversation."""
    messages = [
        {"role": "user", "content": "What is 17 * 23 + 4?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {
                        "name": "calculator",
                        "arguments": '{"expression": "17 * 23 + 4"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "395"},
        {"role": "assistant", "content": "17 * 23 + 4 = 395."},
    ]
    example = ChatExample(messages, evaluator.tools, "t:1")
    rendered, tools = template_messages(example, evaluator.native)
    tokens = tokenize_example(tokenizer, rendered, tools, example.where)
    training_text = tokenizer.decode(tokens["input_ids"])
    first = evaluator.render(messages[:1])
    after_result = evaluator.render(messages[:3])
    assert training_text.startswith(first) and training_text.startswith(after_result)
    # What follows each prompt in training is exactly what eval wants the model to write.
    assert training_text[len(first) :].startswith("<tool_call>\n")
    assert training_text[len(after_result) :].startswith("17 * 23 + 4 = 395.")


# Bad task files


def test_a_bad_tool_task_file_is_one_error_with_its_line(tmp_path, child_env):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"id": "a", "request": "Hi", "calls": [], "answer": "Hello"}\n{"id": "b"\n')
    proc = subprocess.run(
        [*selfgen_cmd(), "eval", "--tool-tasks", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: --tool-tasks: {bad}:2: ")
    assert "Traceback" not in proc.stderr


def test_a_task_calling_a_tool_that_does_not_exist_is_refused(tmp_path, child_env):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text(
        json.dumps(
            {"id": "a", "request": "Hi", "calls": [{"name": "nope", "arguments": {}}], "answer": ""}
        )
        + "\n"
    )
    proc = subprocess.run(
        [*selfgen_cmd(), "eval", "--tool-tasks", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=300,
    )
    assert proc.returncode == 2 and "tool task 'a': no tool named 'nope'" in proc.stderr


# The real path: the bundled model, base and tuned on a handful of verified traces


def verified_trace_rows(sandbox: ToolSandbox, tools: list[dict]) -> list[dict]:
    """The first 8 tool seeds that call only `tools`, as `selfgen export --format openai`
    writes verified traces: each call executed in the sandbox, its real output in the tool
    turn."""
    from dataclasses import replace

    from selfgen.records import Trace
    from selfgen.seeds import load_tool_seeds

    names = {tool["function"]["name"] for tool in tools}
    rows = []
    for seed in load_tool_seeds(ROOT / "seeds" / "tool_seed_tasks.jsonl"):
        if len(rows) == 8:
            break
        if not all(c.name in names for c in seed.calls):
            continue
        calls = [
            replace(c, output=sandbox.call(c.name, dict(c.arguments)).output) for c in seed.calls
        ]
        trace = Trace(request=seed.request, generation_index=0, calls=calls, answer=seed.answer)
        rows.append({"messages": trace.messages(), "tools": tools})
    assert len(rows) == 8
    return rows


SMALL_TASKS = ("tool_eval_1", "tool_eval_24", "tool_eval_29", "tool_eval_60")


@pytest.fixture(scope="module")
def small_tools(tmp_path_factory):
    """The calculator and the date tools alone (the tasks below call nothing else). Every row
    and prompt starts with the tools' schemas: with these four tools in place of all seven a row
    is about 760 tokens in place of 1,370, and on a 2-core machine the tune took 328 s in place
    of 657 s, the eval 94 s in place of 129 s. Tuned, the model called a tool in all three tasks
    that need one (the base in none), the right tool each time."""
    folder = tmp_path_factory.mktemp("small-tools")
    for name in ("calculator.py", "dates.py"):
        shutil.copy(TOOLS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tool_adapter(tmp_path_factory, tokenizer, small_tools):
    from selfgen.tune.config import build_tune_config
    from selfgen.tune.train import prepare

    folder = tmp_path_factory.mktemp("tool-tune")
    data = folder / "traces.jsonl"
    with ToolSandbox(small_tools) as sandbox:
        tools = ToolEval(tokenizer, tool_specs(small_tools), sandbox).tools
        rows = verified_trace_rows(sandbox, tools)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {
        "max_steps": 12,
        "batch_size": 2,
        "learning_rate": 2e-3,
        "logging_steps": 1,
        "save_steps": 100,
        # Both cores: nothing else runs beside it (1.7 times as fast as one thread on 2 cores).
        "threads": 2,
    }
    job = prepare(data, folder / "adapter", build_tune_config(settings))
    before = {n: p.detach().clone() for n, p in job.trainable_parameters().items()}
    job.train(quiet=True)
    moved = [n for n, p in job.trainable_parameters().items() if not p.detach().equal(before[n])]
    return folder / "adapter", len(before), len(moved)


@pytest.mark.slow
def test_a_tiny_tune_on_traces_changes_how_the_model_calls_tools(
    tool_adapter, small_tools, tmp_path, child_env
):
    adapter, parameters, moved = tool_adapter
    assert parameters and moved == parameters  # every LoRA weight was trained
    every = {
        json.loads(line)["id"]: line
        for line in (ROOT / "seeds" / "tool_eval_tasks.jsonl").read_text().splitlines()
    }
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(every[i] + "\n" for i in SMALL_TASKS))
    results_path = tmp_path / "results.json"
    proc = subprocess.run(
        [*selfgen_cmd(), "eval", "--tool-tasks", str(tasks), "--tools", str(small_tools)]
        + ["--adapter", str(adapter), "--compare", "--max-new-tokens", "64", "--threads", "2"]
        + ["--json", str(results_path), "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(results_path.read_text())
    assert results["tools_rendering"] == "fallback"
    assert [item["gold"] for item in results["items"]] == [
        ["calculator"],
        ["weekday"],
        ["weekday", "weekday"],
        [],
    ]
    for run in ("base", "tuned"):
        summary = results["models"][run]
        assert set(summary["per_tool"]) == {"calculator", "weekday", "none"}
        overall = summary["overall"]
        assert (overall["tasks"], overall["need_call"]) == (4, 3)
        rows = [item[run] for item in results["items"]]
        # The table is the items' own verdicts, counted.
        called = sum(r["called"] for r in rows[:3])
        assert overall["call_rate"] == called / 3
        assert overall["abstain_rate"] == (0.0 if rows[3]["called"] else 1.0)
        assert overall["execution_match"] == sum(r["execution_match"] for r in rows[:3]) / 3
        assert all(r["turns"] for r in rows)
    # Tuned on traces, the model writes calls in the trained format where the base did not.
    base_blocks = sum(r["base"]["call_blocks"] for r in results["items"])
    tuned_blocks = sum(r["tuned"]["call_blocks"] for r in results["items"])
    assert tuned_blocks > base_blocks
    assert results["models"]["tuned"]["overall"]["parseable_rate"] > 0
    assert "execution match" in proc.stdout and "change" in proc.stdout
