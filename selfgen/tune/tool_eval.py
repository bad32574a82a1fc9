"""Tool use, measured: does a model call the right tool, with arguments that run, and get the
results a person's calls would get?

`selfgen eval --tool-tasks FILE` reads requests in the tool seed format (``request``, the gold
``calls`` with ``name`` and ``arguments``, ``calls: []`` where no tool is needed). Each request
goes to the model (the base, the tuned one, or both) as a user turn with the tools, rendered
exactly as `selfgen tune` renders a training row (`selfgen.tune.data.template_messages`: the
chat template's own tool format, or the Hermes-style fallback). The model answers greedily and
*unconstrained*: what is measured is what it learned, not what a grammar forces. Calls are read
from ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (the fallback's format,
which Hermes-style templates share), validated against the tool's schema and executed in the
sandbox; their results go back as tool turns and the model goes on, up to `max_steps` turns.

What is counted, per task (and so per tool: a task belongs to the tool of its first gold call,
or to "none"):

- called: the model wrote at least one ``<tool_call>`` block; *call rate* is its share among
  the tasks that need a call, *abstain rate* the share of the others where it wrote none;
- parseable: each block holds a JSON object with a name and an arguments object;
- schema-valid: each parseable call names a tool and its arguments validate;
- right tool: the set of tools the model called is the set the gold calls use;
- execution match: the model's calls, executed, give the same outputs as the gold calls
  (the same multiset of outputs): ``17*23+4`` and ``(17*23)+4`` are the same call, and two SQL
  statements that select the same rows are the same query.

Rates over calls (parseable, schema-valid) count calls; the others count tasks.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfgen.io import DataFileError
from selfgen.records import ToolSeed
from selfgen.seeds import load_tool_seeds
from selfgen.tune import TuneDataError, TuneError
from selfgen.tune.data import ChatExample, template_messages, template_renders_tools

if TYPE_CHECKING:
    from selfgen.sandbox import ToolSandbox
    from selfgen.tooling import ToolSpec

Progress = Callable[[int, int], None]  # (model turns done, an estimate of all)
Generate = Callable[[list[str]], list[str]]  # chat-formatted prompts -> greedy answers

NO_TOOL = "none"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


def load_tool_tasks(path: str | Path, limit: int | None = None) -> list[ToolSeed]:
    """The first `limit` tasks of a tool task file, or a :class:`TuneDataError` (file:line)."""
    try:
        tasks = load_tool_seeds(path)
    except DataFileError as exc:
        raise TuneDataError(str(exc)) from None
    return tasks[:limit] if limit else tasks


@dataclass(frozen=True)
class ParsedCall:
    """One ``<tool_call>`` block the model wrote: its name and arguments, or why it is not a
    call (`error`)."""

    text: str
    name: str | None = None
    arguments: dict[str, Any] | None = None
    error: str | None = None


def parse_calls(text: str) -> list[ParsedCall]:
    """Every ``<tool_call>`` block of a model's turn, parsed (an unclosed last block counts: the
    model may have run out of tokens inside it)."""
    out = []
    for match in _BLOCK.finditer(text):
        body = match.group(1).strip()
        try:
            obj, _end = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            out.append(ParsedCall(body, error="not JSON"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            out.append(ParsedCall(body, error="no tool name"))
            continue
        arguments = obj.get("arguments", obj.get("parameters"))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            out.append(ParsedCall(body, name=obj["name"], error="arguments are not an object"))
            continue
        out.append(ParsedCall(body, name=obj["name"], arguments=arguments))
    return out


def text_before_calls(text: str) -> str:
    """A turn's text without its tool-call blocks: the answer, when the model made no call."""
    return _BLOCK.sub("", text).strip()


@dataclass
class Attempt:
    """One model's work on one task: its turns, its calls and what they gave."""

    turns: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # parsed, checked, executed
    answer: str | None = None

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def outputs(self) -> Counter[str]:
        return Counter(_normal(c["output"]) for c in self.calls if c.get("output") is not None)


def _normal(output: str) -> str:
    return " ".join(output.split())


class ToolEval:
    """Runs tool tasks against one model's `generate`, executing the calls in `sandbox`."""

    def __init__(
        self,
        tokenizer: Any,
        specs: dict[str, ToolSpec],
        sandbox: ToolSandbox,
        *,
        max_steps: int = 4,
    ) -> None:
        self.tokenizer = tokenizer
        self.specs = specs
        self.sandbox = sandbox
        self.max_steps = max_steps
        # The tools in the order `selfgen export` writes them (sorted by name), as in training.
        self.tools = [specs[name].openai() for name in sorted(specs)]
        self.native = template_renders_tools(tokenizer)

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for the model's next turn, rendered as `selfgen tune` renders rows."""
        example = ChatExample(messages, self.tools, where="tool task")
        rendered, tools = template_messages(example, self.native)
        return self.tokenizer.apply_chat_template(
            rendered, tools=tools, tokenize=False, add_generation_prompt=True
        )

    def gold_outputs(self, task: ToolSeed) -> Counter[str]:
        """The outputs of the task's gold calls, executed in the sandbox."""
        out: Counter[str] = Counter()
        for call in task.calls:
            result = self.sandbox.call(call.name, dict(call.arguments))
            if not result.ok:
                raise TuneError(
                    f"tool task '{task.id}': its gold call {call.name} fails ({result.error})"
                )
            out[_normal(result.output)] += 1
        return out

    def run(
        self, tasks: list[ToolSeed], generate: Generate, progress: Progress | None = None
    ) -> list[Attempt]:
        """Every task answered by `generate`, turn by turn, the unfinished ones in one batch."""
        attempts = [Attempt() for _ in tasks]
        conversations = [[{"role": "user", "content": t.request}] for t in tasks]
        active = list(range(len(tasks)))
        done, estimate = 0, len(tasks) * 2
        for step in range(self.max_steps):
            if not active:
                break
            answers = generate([self.render(conversations[i]) for i in active])
            still = []
            for i, text in zip(active, answers, strict=True):
                attempts[i].turns.append(text)
                if self._step(attempts[i], conversations[i], text, call_id=f"call_{step}"):
                    still.append(i)
            done += len(active)
            estimate = max(estimate, done + len(still))
            if progress:
                progress(done, estimate)
            active = still
        return attempts

    def _step(
        self, attempt: Attempt, messages: list[dict[str, Any]], text: str, call_id: str
    ) -> bool:
        """Take one model turn: execute its calls and add them to the conversation. Returns
        whether the model goes on (it made a call that parsed)."""
        parsed = parse_calls(text)
        if not parsed:
            attempt.answer = text_before_calls(text)
            return False
        usable = []
        for k, call in enumerate(parsed):
            record: dict[str, Any] = {"text": call.text, "parseable": call.error is None}
            if call.error is None:
                record.update(name=call.name, arguments=call.arguments)
                problem = self._schema_problem(call)
                record["schema_valid"] = problem is None
                if problem is None:
                    result = self.sandbox.call(call.name, call.arguments)
                    record["output" if result.ok else "error"] = (
                        result.output if result.ok else result.error
                    )
                else:
                    record["error"] = problem
                usable.append((f"{call_id}_{k}", call, record))
            else:
                record["error"] = call.error
            attempt.calls.append(record)
        if not usable:
            return False
        messages.append(
            {
                "role": "assistant",
                "content": text_before_calls(text),
                "tool_calls": [
                    {
                        "id": cid,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                    for cid, call, _ in usable
                ],
            }
        )
        for cid, call, record in usable:
            content = record.get("output")
            if content is None:
                content = f"error: {record.get('error')}"
            messages.append(
                {"role": "tool", "tool_call_id": cid, "name": call.name, "content": content}
            )
        return True

    def _schema_problem(self, call: ParsedCall) -> str | None:
        from selfgen.tooling import validate_arguments

        spec = self.specs.get(call.name or "")
        if spec is None:
            return f"no tool named '{call.name}'"
        return validate_arguments(spec, call.arguments)


def task_metrics(task: ToolSeed, attempt: Attempt, gold: Counter[str]) -> dict[str, Any]:
    """What one attempt at one task scores (see the module docstring)."""
    needs = bool(task.calls)
    parseable = [c for c in attempt.calls if c["parseable"]]
    out: dict[str, Any] = {
        "needs_call": needs,
        "called": attempt.called,
        "calls": len(attempt.calls),
        "parseable_calls": len(parseable),
        "schema_valid_calls": sum(bool(c.get("schema_valid")) for c in parseable),
    }
    if needs:
        out["right_tool"] = {c["name"] for c in parseable} == {c.name for c in task.calls}
        out["execution_match"] = attempt.outputs() == gold and all(
            "output" in c for c in attempt.calls
        )
    return out


def summarize(tasks: list[ToolSeed], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates overall and per tool (the tool of a task's first gold call, or "none")."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task, m in zip(tasks, metrics, strict=True):
        groups[task.calls[0].name if task.calls else NO_TOOL].append(m)
    return {
        "overall": _rates(metrics),
        "per_tool": {name: _rates(ms) for name, ms in sorted(groups.items())},
    }


def _rates(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    need = [m for m in metrics if m["needs_call"]]
    free = [m for m in metrics if not m["needs_call"]]
    calls = sum(m["calls"] for m in metrics)
    parseable = sum(m["parseable_calls"] for m in metrics)

    def share(part: float, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "tasks": len(metrics),
        "need_call": len(need),
        "call_rate": share(sum(m["called"] for m in need), len(need)),
        "abstain_rate": share(sum(not m["called"] for m in free), len(free)),
        "parseable_rate": share(parseable, calls),
        "schema_valid_rate": share(sum(m["schema_valid_calls"] for m in metrics), parseable),
        "right_tool_rate": share(sum(m["right_tool"] for m in need), len(need)),
        "execution_match": share(sum(m["execution_match"] for m in need), len(need)),
    }


def evaluate_tools(
    tasks_path: Path,
    tools_dir: Path,
    *,
    model_spec: str | None = None,
    adapter: Path | None = None,
    compare: bool = False,
    limit: int | None = None,
    max_steps: int = 4,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the tool tasks on the base model, the tuned one, or both (`compare`)."""
    from contextlib import nullcontext

    from selfgen.sandbox import ToolSandbox
    from selfgen.tooling import ToolError, tool_specs
    from selfgen.tune.evaluate import generate_batch
    from selfgen.tune.models import (
        attach_adapter,
        load_model,
        load_tokenizer,
        read_record,
        refuse_merged_adapter,
        resolve_model,
        use_threads,
    )

    if compare and adapter is None:
        raise TuneError("compare needs an adapter (the tuned model to compare with the base)")
    tasks = load_tool_tasks(tasks_path, limit)
    try:
        specs = tool_specs(tools_dir)
    except ToolError as exc:
        raise TuneError(f"--tools: {exc}") from None
    for task in tasks:
        for call in task.calls:
            if call.name not in specs:
                raise TuneError(
                    f"tool task '{task.id}': no tool named '{call.name}' in {tools_dir}"
                )
    if model_spec is None:
        model_spec = (read_record(adapter) if adapter else {}).get("base_model", "bundled")
    source = resolve_model(model_spec, flag="--model")
    if adapter is not None:
        read_record(adapter)  # a missing or empty adapter folder fails before the model loads
        refuse_merged_adapter(source, adapter)
    use_threads(threads)
    tokenizer = load_tokenizer(source)
    model = load_model(source)
    model.eval()
    if adapter is not None:
        model = attach_adapter(model, adapter, source.spec)
    runs = (["base"] if adapter is None or compare else []) + (["tuned"] if adapter else [])
    results: dict[str, Any] = {
        "tool_tasks": str(tasks_path),
        "tools": str(tools_dir),
        "model": model_spec,
        "adapter": str(adapter) if adapter else None,
        "limit": limit,
        "max_steps": max_steps,
        "max_new_tokens": max_new_tokens,
        "generator": "transformers, greedy, unconstrained",
        "models": {},
        "items": [
            {"id": t.id, "request": t.request, "gold": [c.name for c in t.calls]} for t in tasks
        ],
    }
    with ToolSandbox(tools_dir) as sandbox:
        evaluator = ToolEval(tokenizer, specs, sandbox, max_steps=max_steps)
        results["tools_rendering"] = "chat template" if evaluator.native else "fallback"
        gold = [evaluator.gold_outputs(t) for t in tasks]
        for number, run in enumerate(runs):

            def generate(prompts: list[str]) -> list[str]:
                out: list[str] = []
                for start in range(0, len(prompts), batch_size):
                    batch = prompts[start : start + batch_size]
                    out += generate_batch(model, tokenizer, batch, max_new_tokens=max_new_tokens)
                return out

            def report(done: int, estimate: int, number: int = number) -> None:
                if progress:
                    progress(number * estimate + done, len(runs) * estimate)

            with model.disable_adapter() if run == "base" and adapter else nullcontext():
                attempts = evaluator.run(tasks, generate, report)
            metrics = [task_metrics(t, a, g) for t, a, g in zip(tasks, attempts, gold, strict=True)]
            results["models"][run] = summarize(tasks, metrics)
            for row, attempt, m in zip(results["items"], attempts, metrics, strict=True):
                row[run] = {
                    "turns": attempt.turns,
                    "calls": attempt.calls,
                    "answer": attempt.answer,
                    **m,
                }
    return results
