"""`selfgen dedupe`: greedy ROUGE-L de-duplication of any instruction data set.

Rows are read one at a time; a row is kept when no kept row (or row of an `--against` file)
scores above the threshold, and then joins the index. Memory is bounded by the index, not the
input. Kept rows are written exactly as they were read; rejected and malformed rows go, with the
reason, to the optional rejected file. Outputs are written to temporary files and renamed at the
end, so an interrupted or failed run leaves no partial output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from selfgen.filters.rouge import TOKENIZERS, RougeIndex
from selfgen.io import atomic_write, parse_json_line


class DedupeError(ValueError):
    """Bad input or options. The message names the file and line, or, with `param` set, the
    parameter of :func:`dedupe` whose value is wrong (the CLI names its flag instead)."""

    def __init__(self, problem: str, *, param: str | None = None) -> None:
        super().__init__(f"{param}: {problem}" if param else problem)
        self.problem = problem
        self.param = param


# A step into a parsed row: a key, a list index, or a (key, value) selector.
Step = str | int | tuple[str, str]
_STEP = re.compile(r"([^.\[\]]+)|\[([^\]=]+)=([^\]]*)\]|\[(\d+)\]")


def parse_field_path(path: str) -> list[Step]:
    """``messages[role=user].content`` -> ["messages", ("role", "user"), "content"].

    Steps are keys, list indexes (``messages.0`` or ``messages[0]``) or selectors
    (``[key=value]``: the first element of a list whose `key` equals `value`).
    """
    steps: list[Step] = []
    pos = 0
    text = path.strip()
    while pos < len(text):
        if text[pos] == ".":
            pos += 1
            continue
        m = _STEP.match(text, pos)
        if not m:
            raise DedupeError(f"cannot read '{path}' at position {pos + 1}", param="field_path")
        key, sel_key, sel_value, index = m.groups()
        if key is not None:
            steps.append(int(key) if key.isdigit() else key)
        elif index is not None:
            steps.append(int(index))
        else:
            steps.append((sel_key, sel_value))
        pos = m.end()
    if not steps:
        raise DedupeError("empty field path", param="field_path")
    return steps


def extract(obj: Any, steps: list[Step]) -> str:
    """Follow `steps` into a parsed JSON row; raise KeyError with a reason when they fail."""
    cur = obj
    for step in steps:
        if isinstance(step, tuple):
            key, value = step
            if not isinstance(cur, list):
                raise KeyError(f"[{key}={value}] needs a list")
            match = next((x for x in cur if isinstance(x, dict) and str(x.get(key)) == value), None)
            if match is None:
                raise KeyError(f"no element with {key}={value}")
            cur = match
        elif isinstance(step, int):
            if not isinstance(cur, list) or step >= len(cur):
                raise KeyError(f"no element {step}")
            cur = cur[step]
        else:
            if not isinstance(cur, dict) or step not in cur:
                raise KeyError(f"no field '{step}'")
            cur = cur[step]
    if not isinstance(cur, str):
        raise KeyError(f"the field is a {type(cur).__name__}, not a string")
    return cur


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in ("jsonl", "text"):
            raise DedupeError(f"'{fmt}' is not one of auto, jsonl, text", param="fmt")
        return fmt
    return "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "text"


@dataclass
class Row:
    line: int
    raw: str  # the line as read, with its line ending
    text: str | None  # the text compared; None for a malformed row
    error: str | None = None
    obj: Any = None


def read_rows(path: Path, fmt: str, field_path: str) -> Iterator[Row]:
    """Rows of a JSONL or text file; blank lines are skipped, malformed rows carry `error`."""
    steps = parse_field_path(field_path) if fmt == "jsonl" else []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, raw in enumerate(f, start=1):
            body = raw.rstrip("\r\n")
            if not body.strip():
                continue
            if fmt == "text":
                yield Row(lineno, raw, body)
                continue
            try:
                obj = parse_json_line(body)
            except ValueError as exc:
                yield Row(lineno, raw, None, str(exc))
                continue
            try:
                yield Row(lineno, raw, extract(obj, steps), obj=obj)
            except KeyError as exc:
                yield Row(lineno, raw, None, f"field '{field_path}': {exc.args[0]}", obj=obj)


@dataclass
class DedupeSummary:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    malformed: int = 0
    against: int = 0
    malformed_lines: list[str] = field(default_factory=list)


def dedupe(
    inputs: Path,
    out: Path,
    *,
    field_path: str = "instruction",
    threshold: float = 0.7,
    against: list[Path] | None = None,
    rejected: Path | None = None,
    fmt: str = "auto",
    tokenizer: str = "rouge",
    strict: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_malformed: Callable[[str], None] | None = None,
) -> DedupeSummary:
    """Greedy de-duplication of `inputs` into `out`; see the module docstring."""
    if not 0.0 <= threshold <= 1.0:
        raise DedupeError("must be in [0, 1]", param="threshold")
    if tokenizer not in TOKENIZERS:
        raise DedupeError(f"'{tokenizer}' is not one of {', '.join(TOKENIZERS)}", param="tokenizer")
    for path in [inputs, *(against or [])]:
        if not path.is_file():
            raise DedupeError(f"{path}: no such file")
    parse_field_path(field_path)  # a bad path fails before any file is opened
    index = RougeIndex(TOKENIZERS[tokenizer], prefix_threshold=threshold)
    # A first pass counts token frequencies (memory: the vocabulary) so that the index reads
    # the rarest tokens first; decisions do not depend on it, speed does.
    index.learn_token_order(
        row.text
        for path in [*(against or []), inputs]
        for row in read_rows(path, detect_format(path, fmt), field_path)
        if row.text is not None
    )
    # Where each indexed text came from, for the rejected file: (file, line).
    origin: list[tuple[str, int]] = []
    summary = DedupeSummary()

    def malformed(path: Path, row: Row) -> None:
        message = f"{path}:{row.line}: {row.error}"
        summary.malformed += 1
        if strict:
            raise DedupeError(message)
        if on_malformed:
            on_malformed(message)

    for path in against or []:
        for row in read_rows(path, detect_format(path, fmt), field_path):
            if row.text is None:
                malformed(path, row)
                continue
            index.add(row.text)
            origin.append((str(path), row.line))
            summary.against += 1

    # Both outputs are renamed into place only when every row was read; a failure (or --strict)
    # removes both temporary files.
    with ExitStack() as outputs:
        kept_out: IO[str] = outputs.enter_context(atomic_write(out))
        rejected_out = outputs.enter_context(atomic_write(rejected)) if rejected else None
        for row in read_rows(inputs, detect_format(inputs, fmt), field_path):
            summary.read += 1
            if on_progress:
                on_progress(len(row.raw.encode("utf-8")))
            if row.text is None:
                malformed(inputs, row)
                if rejected_out:
                    rejected_out.write(
                        json.dumps(
                            {
                                "line": row.line,
                                "reason": "malformed",
                                "error": row.error,
                                "raw": row.raw.rstrip("\r\n"),
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                continue
            if rejected_out:
                score, nearest = index.nearest_above(row.text, threshold)
                novel = nearest is None
            else:
                # Only the decision is needed: the first kept row above the threshold settles it.
                novel = index.is_novel(row.text, threshold)
            if novel:
                kept_out.write(row.raw if row.raw.endswith("\n") else row.raw + "\n")
                index.add(row.text)
                origin.append((str(inputs), row.line))
                summary.kept += 1
                continue
            summary.rejected += 1
            if rejected_out:
                source, source_line = origin[nearest]
                rejected_out.write(
                    json.dumps(
                        {
                            "line": row.line,
                            "reason": "near_duplicate",
                            "score": score,
                            "text": row.text,
                            "nearest": index.texts[nearest],
                            "nearest_source": f"{source}:{source_line}",
                            "row": row.obj if row.obj is not None else row.text,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return summary
