"""Reading seed task files in the Self-Instruct format.

One JSON object per line: ``id``, ``name``, ``instruction``, ``instances`` (a list of
``{"input", "output"}``) and ``is_classification``. The original 175-task Self-Instruct file
loads unchanged. Any defect stops with a :class:`SeedFileError` naming ``file:line``.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfgen.records import Instance, SeedTask


class SeedFileError(ValueError):
    """A seed file that cannot be used; the message names the file and line."""


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "name": str,
    "instruction": str,
    "instances": list,
    "is_classification": bool,
}


def _type_name(value: object) -> str:
    return {str: "string", list: "list", bool: "boolean", dict: "object"}.get(
        type(value), type(value).__name__
    )


def parse_seed_line(raw: str, where: str) -> SeedTask:
    """Parse one seed line; `where` is ``file:line`` for error messages."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SeedFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise SeedFileError(f"{where}: expected a JSON object, got {_type_name(obj)}")
    for key, expected in _FIELDS.items():
        if key not in obj:
            raise SeedFileError(f"{where}: missing field '{key}'")
        if not isinstance(obj[key], expected):
            want = _type_name(expected())  # type: ignore[operator]
            raise SeedFileError(
                f"{where}: field '{key}' must be a {want}, got {_type_name(obj[key])}"
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
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SeedFileError(f"{path}: no such seed file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedFileError(f"{path}: cannot read seed file ({exc})") from None
    tasks: list[SeedTask] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        task = parse_seed_line(raw, f"{path}:{lineno}")
        if task.id in seen:
            raise SeedFileError(
                f"{path}:{lineno}: duplicate id '{task.id}' (first on line {seen[task.id]})"
            )
        seen[task.id] = lineno
        tasks.append(task)
    if not tasks:
        raise SeedFileError(f"{path}:1: the seed file holds no tasks")
    return tasks
