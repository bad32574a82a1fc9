"""Reading tool seed files: worked tool-use examples (a request, its calls, the answer)."""

from __future__ import annotations

import json
from pathlib import Path

from selfgen.records import ToolCall, ToolSeed


class ToolSeedError(ValueError):
    """A tool seed file that cannot be used; the message names the file and line."""


def load_tool_seeds(path: str | Path) -> list[ToolSeed]:
    """Read `{"id", "request", "calls": [{"name", "arguments"}], "answer"}` lines."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ToolSeedError(f"{path}: no such tool seed file") from None
    seeds = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ToolSeedError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ToolSeedError(f"{where}: expected a JSON object")
        for key, kind in (("id", str), ("request", str), ("calls", list), ("answer", str)):
            if not isinstance(obj.get(key), kind):
                raise ToolSeedError(f"{where}: field '{key}' is missing or not a {kind.__name__}")
        calls = []
        for i, call in enumerate(obj["calls"]):
            if not (
                isinstance(call, dict)
                and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments"), dict)
            ):
                raise ToolSeedError(f"{where}: calls[{i}] needs a 'name' and an 'arguments' object")
            calls.append(ToolCall(call["name"], call["arguments"]))
        seeds.append(ToolSeed(obj["id"], obj["request"].strip(), tuple(calls), obj["answer"]))
    if not seeds:
        raise ToolSeedError(f"{path}:1: the tool seed file holds no examples")
    return seeds
