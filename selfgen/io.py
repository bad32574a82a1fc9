"""Data files in and out: one JSONL reader and one atomic writer for every command.

Every JSONL file selfgen reads (seed tasks, tool seeds, training rows, evaluation tasks) goes
through :func:`read_jsonl`, so each reports a defect the same way: one sentence that starts
with ``file:line``. Every file selfgen writes for a person or another program goes through
:func:`atomic_write`, so a reader sees the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and, where there is one,
    the line. Callers subclass it so that their own type is what their callers catch."""


def type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {str: "string", list: "list", bool: "boolean", dict: "object", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else "value")


def line_of(where: str) -> int:
    """The line number of a ``file:line`` that :func:`read_jsonl` yielded."""
    return int(where.rpartition(":")[2])


def parse_json_line(line: str) -> Any:
    """One JSON value, or ValueError with the reason and column (without the place)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_jsonl(
    path: str | Path,
    *,
    what: str,
    holds: str = "rows",
    error: type[DataFileError] = DataFileError,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, row)`` for each JSON object of a JSONL file, `where` being ``file:line``.

    Blank lines are skipped. A missing or unreadable file, a line that is not UTF-8 or not
    valid JSON, a line that is not an object, and a file with no rows at all each raise
    `error` (a :class:`DataFileError`): ``<file>: no such <what>``, ``<file>:<line>: not valid
    JSON (<reason> at column <n>)``, ``<file>:1: the <what> holds no <holds>`` and so on.
    The file is read a line at a time; stopping early reads no further.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # bytes: a line that is not UTF-8 is reported with its number
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    rows = 0
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise error(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start + 1})") from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")  # a byte order mark some editors write
            if not text.strip():
                continue
            try:
                row = parse_json_line(text)
            except ValueError as exc:
                raise error(f"{where}: {exc}") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object, got {type_name(row)}")
            rows += 1
            yield where, row
    if not rows:
        raise error(f"{path}:1: the {what} holds no {holds}")


@contextmanager
def atomic_write(path: Path) -> Iterator[IO[str]]:
    """Open `path` for writing UTF-8 text, written exactly (no newline translation).

    The text goes to a temporary file in the same folder, which on success is flushed to disk
    and renamed over `path`; on any failure it is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: Path, items: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line to `path` (see :func:`atomic_write`); return the count."""
    count = 0
    with atomic_write(path) as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
