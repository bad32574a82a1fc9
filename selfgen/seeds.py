"""Reading the human-written seeds: seed tasks in the Self-Instruct format, and tool seeds.

A seed task file holds one JSON object a line: ``id``, ``name``, ``instruction``,
``instances`` (a list of ``{"input", "output"}``) and ``is_classification``. The original
175-task Self-Instruct file loads unchanged. A tool seed file holds ``{"id", "request",
"calls": [{"name", "arguments"}], "answer"}`` lines; a list of calls in place of one call is
a turn of parallel calls; a multi-turn example adds ``"followups": [{"request", "calls",
"answer"}]``, the user's next one to three messages, each with the calls and the answer of its
turn (``"calls": []`` for a turn answered without a tool). Both are read by selfgen.io's JSONL
reader; any defect stops with a :class:`SeedFileError` or :class:`ToolSeedError` naming
``file:line``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfgen.io import DataFileError, line_of, read_jsonl, type_name
from selfgen.records import Instance, SeedTask, SeedTurn, ToolCall, ToolSeed


class SeedFileError(DataFileError):
    """A seed file that cannot be used; the message names the file and line."""


class ToolSeedError(DataFileError):
    """A tool seed file that cannot be used; the message names the file and line."""


_FIELDS: dict[str, type] = {
    "id": str,
    "name": str,
    "instruction": str,
    "instances": list,
    "is_classification": bool,
}


def parse_seed_task(obj: dict[str, Any], where: str) -> SeedTask:
    """Check one seed task read from a file; `where` is ``file:line`` for error messages."""
    for key, expected in _FIELDS.items():
        if key not in obj:
            raise SeedFileError(f"{where}: missing field '{key}'")
        if not isinstance(obj[key], expected):
            raise SeedFileError(
                f"{where}: field '{key}' must be a {type_name(expected())}, "
                f"got {type_name(obj[key])}"
            )
    if not obj["instruction"].strip():
        raise SeedFileError(f"{where}: field 'instruction' is empty")
    if not obj["instances"]:
        raise SeedFileError(f"{where}: field 'instances' is an empty list")
    instances = []
    for i, inst in enumerate(obj["instances"]):
        if not isinstance(inst, dict):
            raise SeedFileError(f"{where}: instances[{i}] must be an object")
        for key in ("input", "output"):
            if not isinstance(inst.get(key), str):
                raise SeedFileError(f"{where}: instances[{i}].{key} must be a string")
        instances.append(Instance(input=inst["input"], output=inst["output"]))
    return SeedTask(
        id=obj["id"],
        name=obj["name"],
        instruction=obj["instruction"].strip(),
        instances=tuple(instances),
        is_classification=obj["is_classification"],
    )


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Load every task of a seed file, or raise :class:`SeedFileError`."""
    tasks: list[SeedTask] = []
    first: dict[str, str] = {}
    for where, obj in read_jsonl(path, what="seed file", holds="tasks", error=SeedFileError):
        task = parse_seed_task(obj, where)
        _unique(task.id, where, first, SeedFileError)
        tasks.append(task)
    return tasks


# Most follow-ups of a multi-turn example: conversations have two to four user turns.
MAX_FOLLOWUPS = 3


def parse_tool_seed(obj: dict[str, Any], where: str) -> ToolSeed:
    """Check one tool seed read from a file; its calls are not run here."""
    for key, kind in (("id", str), ("request", str), ("calls", list), ("answer", str)):
        if not isinstance(obj.get(key), kind):
            raise ToolSeedError(f"{where}: field '{key}' is missing or not a {type_name(kind())}")
    calls = _parse_calls(obj["calls"], where, "calls")
    followups = []
    if "followups" in obj:
        items = obj["followups"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_FOLLOWUPS:
            raise ToolSeedError(
                f"{where}: field 'followups' must be a list of 1 to {MAX_FOLLOWUPS} turns"
            )
        for n, turn in enumerate(items):
            at = f"followups[{n}]"
            if not isinstance(turn, dict):
                raise ToolSeedError(f"{where}: {at} must be an object")
            for key, kind in (("request", str), ("calls", list), ("answer", str)):
                if not isinstance(turn.get(key), kind):
                    raise ToolSeedError(
                        f"{where}: {at}.{key} is missing or not a {type_name(kind())}"
                    )
            followups.append(
                SeedTurn(
                    turn["request"].strip(),
                    tuple(_parse_calls(turn["calls"], where, f"{at}.calls")),
                    turn["answer"],
                )
            )
    return ToolSeed(
        obj["id"], obj["request"].strip(), tuple(calls), obj["answer"], tuple(followups)
    )


def _parse_calls(items: list[Any], where: str, field: str) -> list[ToolCall]:
    """The calls of one user turn (a list of calls is one turn of parallel calls)."""
    calls = []
    for i, item in enumerate(items):
        # A list of calls is one turn of parallel calls.
        group = item if isinstance(item, list) else [item]
        if isinstance(item, list) and len(item) < 2:
            raise ToolSeedError(f"{where}: {field}[{i}] lists parallel calls: give at least two")
        for k, call in enumerate(group):
            if not (
                isinstance(call, dict)
                and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments"), dict)
            ):
                at = f"{field}[{i}][{k}]" if isinstance(item, list) else f"{field}[{i}]"
                raise ToolSeedError(f"{where}: {at} needs a 'name' and an 'arguments' object")
            calls.append(ToolCall(call["name"], call["arguments"], parallel=k > 0))
    return calls


def load_tool_seeds(path: str | Path) -> list[ToolSeed]:
    """Load every example of a tool seed file, or raise :class:`ToolSeedError`."""
    seeds: list[ToolSeed] = []
    first: dict[str, str] = {}
    for where, obj in read_jsonl(
        path, what="tool seed file", holds="examples", error=ToolSeedError
    ):
        seed = parse_tool_seed(obj, where)
        _unique(seed.id, where, first, ToolSeedError)
        seeds.append(seed)
    return seeds


def _unique(seed_id: str, where: str, first: dict[str, str], error: type[DataFileError]) -> None:
    """Refuse an id seen before (the run store keys seeds by id); `first` maps id to where."""
    if seed_id in first:
        raise error(f"{where}: duplicate id '{seed_id}' (first on line {line_of(first[seed_id])})")
    first[seed_id] = where
