"""Export kept tasks as JSONL for fine-tuning: one row per instance.

Formats: `alpaca` (instruction/input/output), `openai` (chat `messages`) and `sharegpt`
(`conversations` with human/gpt turns, and LLaMA-Factory's `dataset_info.json` beside it).
Files are written to a temporary name and renamed, so a reader never sees half a file. With
`with_metadata`, each row gets a `metadata` object saying where it came from
(selfgen.provenance). The Hugging Face dataset folder is written by selfgen.hf_export.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from selfgen.io import write_json_atomic, write_jsonl_atomic
from selfgen.provenance import Provenance
from selfgen.records import Fate, Instance, Trace
from selfgen.scoring.select import Selection
from selfgen.store import RunStore


class ExportError(ValueError):
    """An export that cannot be made as asked; `scorer` names the score it is about."""

    def __init__(self, problem: str, *, scorer: str | None = None) -> None:
        super().__init__(problem)
        self.scorer = scorer


FORMATS = ("alpaca", "openai", "sharegpt")


@dataclass(frozen=True)
class ExportTask:
    instruction: str
    instances: list[Instance]
    source: str  # "machine" or "seed"
    id: int | str | None = None  # the candidate's id; a seed's own id


def user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def to_row(fmt: str, instruction: str, inst: Instance) -> dict[str, Any]:
    if fmt == "alpaca":
        return {"instruction": instruction, "input": inst.input, "output": inst.output}
    if fmt == "openai":
        return {
            "messages": [
                {"role": "user", "content": user_message(instruction, inst.input)},
                {"role": "assistant", "content": inst.output},
            ]
        }
    if fmt == "sharegpt":
        return {
            "conversations": [
                {"from": "human", "value": user_message(instruction, inst.input)},
                {"from": "gpt", "value": inst.output},
            ]
        }
    raise ValueError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def collect_tasks(
    store: RunStore, *, include_seeds: bool = False, only_curated: bool = False
) -> list[ExportTask]:
    tasks = []
    if include_seeds:
        tasks += [ExportTask(s.instruction, list(s.instances), "seed", s.id) for s in store.seeds()]
    tasks += [
        ExportTask(row["instruction"], inst, "machine", row["id"])
        for row, inst in store.kept_tasks(only_curated=only_curated)
    ]
    return tasks


def split_tasks(
    tasks: list[ExportTask], fraction: float, seed: int
) -> tuple[list[ExportTask], list[ExportTask]]:
    """Split by task, not by instance, so no task has instances on both sides."""
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    n_valid = round(len(tasks) * fraction)
    valid = set(order[:n_valid])
    return (
        [t for i, t in enumerate(tasks) if i not in valid],
        [t for i, t in enumerate(tasks) if i in valid],
    )


def rows(
    fmt: str, tasks: Iterable[ExportTask], meta: Provenance | None = None
) -> Iterator[dict[str, Any]]:
    for task in tasks:
        for inst in task.instances:
            row = to_row(fmt, task.instruction, inst)
            if meta is not None:
                if task.source == "seed":
                    row["metadata"] = meta.seed(str(task.id))
                else:
                    assert isinstance(task.id, int)
                    row["metadata"] = meta.task(task.id, inst)
            yield row


def trace_rows(
    fmt: str,
    store: RunStore,
    *,
    include_failed: bool = False,
    only_curated: bool = False,
    allowed: set[int] | None = None,
    meta: Provenance | None = None,
    include_seeds: bool = False,
    recheck: Counter[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Tool-use traces as chat rows with their tools. Alpaca has no place for tool calls, so
    traces are not exported in that format. Only verified traces, unless `include_failed`:
    those rows carry `"selfgen": {"verified": false, "stage", "reason"}`. Traces rejected by
    hand never; with `only_curated`, only those accepted by hand. With `include_seeds`, the
    run's tool seeds come first, with the outputs their calls gave when the run started (a
    seed that needs no tool is a row that answers with the tools offered and none called).

    With `recheck` (a counter), each verified trace is judged again by today's grounding and
    semantic checks (:func:`recheck_problem`): one that fails them is left out (marked as
    failed, with `include_failed`) and counted under its stage in `recheck`."""
    if fmt == "alpaca":
        return
    tool_specs = store.tool_specs()
    specs = [spec.openai() for spec in tool_specs.values()]
    config = store.config()

    def chat_row(messages: list[dict[str, Any]]) -> dict[str, Any]:
        if fmt == "openai":
            return {"messages": messages, "tools": specs}
        return {
            "conversations": sharegpt_turns(messages),
            "tools": json.dumps([s["function"] for s in specs], ensure_ascii=False),
        }

    if include_seeds:
        for seed in store.tool_seeds():
            messages = Trace.from_seed(seed).messages()
            row = chat_row(messages)
            if meta is not None:
                row["metadata"] = meta.seed_trace(seed.id, messages)
            yield row
    for trace in store.trace_rows(include_failed=include_failed, only_curated=only_curated):
        if allowed is not None and trace.id not in allowed:
            continue
        row = chat_row(trace.messages)
        fate, stage, reason = trace.fate, trace.stage, trace.reason
        if recheck is not None and fate == Fate.KEPT:
            from selfgen.stages.tool_agent import recheck_problem

            problem = recheck_problem(
                Trace.from_messages(trace.messages),
                tool_specs,
                language=config.get("language", "en"),
                ground=config.get("ground_calls", True),
            )
            if problem is not None:
                recheck[str(problem[0])] += 1
                if not include_failed:
                    continue
                fate, stage, reason = Fate.REJECTED, str(problem[0]), f"recheck: {problem[1]}"
        if fate != Fate.KEPT:
            row["selfgen"] = {"verified": False, "stage": stage, "reason": reason}
        if meta is not None:
            row["metadata"] = meta.trace(trace.id, trace.messages)
        yield row


def sharegpt_turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages as ShareGPT turns the way LLaMA-Factory reads tool use:
    human, function_call (a JSON string of name and arguments), observation, gpt.

    Parallel calls (one assistant message with several tool_calls) are one function_call turn
    holding a JSON list of the calls, followed by one observation turn holding a JSON list of
    their results in the same order: LLaMA-Factory reads a list of calls as parallel calls,
    and its turns must alternate, so the results cannot be separate observation turns."""
    turns = []
    results_of_parallel = 0  # tool messages still to gather into one observation
    for m in messages:
        if m["role"] == "tool" and results_of_parallel:
            gathered = json.loads(turns[-1]["value"]) + [m["content"]]
            turns[-1]["value"] = json.dumps(gathered, ensure_ascii=False)
            results_of_parallel -= 1
        elif m["role"] == "user":
            turns.append({"from": "human", "value": m["content"]})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                for c in m["tool_calls"]
            ]
            value = calls[0] if len(calls) == 1 else calls
            turns.append({"from": "function_call", "value": json.dumps(value, ensure_ascii=False)})
            if len(calls) > 1:
                turns.append({"from": "observation", "value": "[]"})
                results_of_parallel = len(calls)
        elif m["role"] == "tool":
            turns.append({"from": "observation", "value": m["content"]})
        elif m["role"] == "assistant":
            turns.append({"from": "gpt", "value": m["content"] or ""})
    return turns


def validation_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.valid{out.suffix or '.jsonl'}")


def export_run(
    store: RunStore,
    fmt: str,
    out: Path,
    *,
    include_seeds: bool = False,
    split: float | None = None,
    split_seed: int = 0,
    include_failed: bool = False,
    only_curated: bool = False,
    selection: Selection | None = None,
    only: str | None = None,
    with_metadata: bool = False,
    recheck: Counter[str] | None = None,
) -> dict[str, int]:
    """Write the export; with `split`, a validation file beside `out`. Returns row counts.
    Verified tool traces follow the tasks (in the training file when splitting). Items rejected
    by hand in `selfgen inspect` are left out; `only_curated` keeps only those accepted by hand;
    a `selection` keeps the machine-made instances and traces whose scores it allows; `only`
    ("tasks" or "traces") writes one kind alone; `with_metadata` adds each row's provenance;
    `recheck` judges verified traces again by today's checks (see :func:`trace_rows`).
    A `sharegpt` export also writes LLaMA-Factory's `dataset_info.json` beside `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    info = None
    if fmt == "sharegpt":
        # Read (and refused, if unreadable) before any file is written.
        info = read_dataset_info(dataset_info_path(out))
    train, valid = export_rows(
        store,
        fmt,
        include_seeds=include_seeds,
        split=split,
        split_seed=split_seed,
        include_failed=include_failed,
        only_curated=only_curated,
        selection=selection,
        only=only,
        with_metadata=with_metadata,
        recheck=recheck,
    )
    counts = {str(out): write_jsonl_atomic(out, train)}
    files = [out]
    if valid is not None:
        vpath = validation_path(out)
        counts[str(vpath)] = write_jsonl_atomic(vpath, valid)
        files.append(vpath)
    if info is not None:
        write_dataset_info(dataset_info_path(out), info, files)
    return counts


def export_rows(
    store: RunStore,
    fmt: str,
    *,
    include_seeds: bool = False,
    split: float | None = None,
    split_seed: int = 0,
    include_failed: bool = False,
    only_curated: bool = False,
    selection: Selection | None = None,
    only: str | None = None,
    with_metadata: bool = False,
    recheck: Counter[str] | None = None,
) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]] | None]:
    """The rows of an export (see :func:`export_run`): the training rows, and with `split` the
    validation rows (else None)."""
    if only not in (None, "tasks", "traces"):
        raise ValueError(f"only: 'tasks' or 'traces', not '{only}'")
    tasks = collect_tasks(store, include_seeds=include_seeds, only_curated=only_curated)
    if only == "traces":
        tasks = []
    allowed_traces = None
    if selection:
        tasks, allowed_traces = _select(store, tasks, selection)
    meta = Provenance(store) if with_metadata else None
    traces = trace_rows(
        fmt,
        store,
        include_failed=include_failed,
        only_curated=only_curated,
        allowed=allowed_traces,
        meta=meta,
        include_seeds=include_seeds,
        recheck=recheck,
    )
    if only == "tasks":
        traces = iter(())
    if split is None:
        return chain(rows(fmt, tasks, meta), traces), None
    train, valid = split_tasks(tasks, split, split_seed)
    return chain(rows(fmt, train, meta), traces), rows(fmt, valid, meta)


DATASET_INFO = "dataset_info.json"


def dataset_info_path(out: Path) -> Path:
    return out.parent / DATASET_INFO


def read_dataset_info(path: Path) -> dict[str, Any]:
    """The entries of an existing `dataset_info.json` (kept when ours are added), or none."""
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} exists and is not a readable JSON file ({exc})") from None
    if not isinstance(info, dict):
        raise ExportError(f"{path} exists and is not a JSON object (LLaMA-Factory's format)")
    return info


def llamafactory_entry(file_name: str) -> dict[str, Any]:
    """LLaMA-Factory's description of a `sharegpt` export file: its columns (the turns and
    the tools string) and the tag of each kind of turn, as its data parser reads them."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "observation_tag": "observation",
            "function_tag": "function_call",
            "system_tag": "system",
        },
    }


def write_dataset_info(path: Path, info: dict[str, Any], files: list[Path]) -> None:
    """Add (or replace) one entry per file, named after the file, to LLaMA-Factory's
    `dataset_info.json` beside them; other entries are kept."""
    info = dict(info)
    for file in files:
        info[file.stem] = llamafactory_entry(file.name)
    write_json_atomic(path, info)


def _select(
    store: RunStore, tasks: list[ExportTask], selection: Selection
) -> tuple[list[ExportTask], set[int]]:
    """The tasks with only the instances the selection allows (seeds untouched, tasks left
    with none dropped), and the ids of the traces it allows."""
    instance_scores, trace_scores = store.scores("instance"), store.scores("trace")
    for name in sorted(selection.scorers()):
        if name not in instance_scores and name not in trace_scores:
            raise ExportError(f"the run has no '{name}' scores (score it first)", scorer=name)
    ids = [i.id for t in tasks for i in t.instances if i.id is not None]
    allowed = selection.allowed(instance_scores, ids)
    kept = []
    for task in tasks:
        instances = [i for i in task.instances if i.id is None or i.id in allowed]
        if instances:
            kept.append(ExportTask(task.instruction, instances, task.source))
    trace_ids = [t.id for t in store.trace_rows(include_failed=True)]
    return kept, selection.allowed(trace_scores, trace_ids)
