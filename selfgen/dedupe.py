"""`selfgen dedupe`: greedy ROUGE-L de-duplication of any instruction data set.

Rows are read in order; a row is kept when no kept row (or row of an `--against` file) scores
above the threshold, and then joins the index. A first pass tokenises every row once; the
second decides, in batches, on one process or several (the same decisions either way). Memory
is bounded by the index and the token ids, not the input text. Kept rows are written exactly as they were read; rejected and malformed rows go, with the
reason, to the optional rejected file. Outputs are written to temporary files and renamed at the
end, so an interrupted or failed run leaves no partial output.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from selfgen.filters.greedy import Decision, GreedyDedupe, ParallelGreedyDedupe
from selfgen.filters.rouge import TOKENIZERS, TokenIds
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
    workers: int = 1
    malformed_lines: list[str] = field(default_factory=list)


# The most worker processes `workers=None` picks, and the fewest rows worth starting them for:
# every worker adds every kept row and the parent checks the rows of the last two batches, so
# on 2 cores two processes took as long as one at 300,000 rows and 0.9 of the time at 954,357
# (benchmarks/rouge_scale.py; README).
MAX_AUTO_WORKERS = 4
PARALLEL_MIN_ROWS = 500_000


def default_workers() -> int:
    """The CPU cores this process may use, at most :data:`MAX_AUTO_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores))


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
    workers: int | None = 1,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
    on_malformed: Callable[[str], None] | None = None,
) -> DedupeSummary:
    """Greedy de-duplication of `inputs` into `out`; see the module docstring.

    `workers` processes split the rows to check (:mod:`selfgen.filters.greedy`; the decisions are
    those of one process); None picks :func:`default_workers`, or one process for inputs of
    fewer than :data:`PARALLEL_MIN_ROWS` rows.
    """
    if not 0.0 <= threshold <= 1.0:
        raise DedupeError("must be in [0, 1]", param="threshold")
    if tokenizer not in TOKENIZERS:
        raise DedupeError(f"'{tokenizer}' is not one of {', '.join(TOKENIZERS)}", param="tokenizer")
    if workers is not None and not 1 <= workers <= 256:
        raise DedupeError(
            f"{workers} is not a number of processes from 1 to 256 (0: the usable cores)",
            param="workers",
        )
    if batch_size < 1:
        raise DedupeError("must be at least 1", param="batch_size")
    for path in [inputs, *(against or [])]:
        if not path.is_file():
            raise DedupeError(f"{path}: no such file")
    parse_field_path(field_path)  # a bad path fails before any file is opened
    # A first pass tokenises every text once, as token ids numbered by how many texts hold
    # them (memory: the ids), so that the index reads the rarest tokens first; decisions do not
    # depend on the numbering, speed does.
    corpus = TokenIds(TOKENIZERS[tokenizer])
    for path in [*(against or []), inputs]:
        for row in read_rows(path, detect_format(path, fmt), field_path):
            if row.text is not None:
                corpus.feed(row.text)
    ids, offsets = corpus.finish()
    if workers is None:
        workers = default_workers() if len(corpus) >= PARALLEL_MIN_ROWS else 1
    summary = DedupeSummary(workers=workers)
    # For the rejected file, each kept row's text and where it came from: (file, line).
    kept_texts: list[str] = []
    origin: list[tuple[str, int]] = []

    def malformed(path: Path, row: Row) -> None:
        message = f"{path}:{row.line}: {row.error}"
        summary.malformed += 1
        if strict:
            raise DedupeError(message)
        if on_malformed:
            on_malformed(message)

    # Both outputs are renamed into place only when every row was read; a failure (or --strict)
    # removes both temporary files.
    with ExitStack() as stack:
        engine: GreedyDedupe | ParallelGreedyDedupe
        if workers == 1:
            engine = GreedyDedupe(threshold, nearest=rejected is not None)
        else:
            engine = ParallelGreedyDedupe(threshold, workers, nearest=rejected is not None)
        stack.enter_context(engine)
        row_number = 0  # rows with a text, in the order of the first pass
        for path in against or []:
            for row in read_rows(path, detect_format(path, fmt), field_path):
                if row.text is None:
                    malformed(path, row)
                    continue
                row_number += 1
                if rejected:
                    kept_texts.append(row.text)
                    origin.append((str(path), row.line))
        engine.keep(ids, offsets, 0, row_number)
        summary.against = row_number

        kept_out: IO[str] = stack.enter_context(atomic_write(out))
        rejected_out = stack.enter_context(atomic_write(rejected)) if rejected else None

        def write(rows: list[Row], decisions: list[Decision]) -> None:
            found = iter(decisions)
            for row in rows:
                if row.text is None:
                    if rejected_out:
                        record = {
                            "line": row.line,
                            "reason": "malformed",
                            "error": row.error,
                            "raw": row.raw.rstrip("\r\n"),
                        }
                        rejected_out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    continue
                decision = next(found)
                if decision is None:
                    kept_out.write(row.raw if row.raw.endswith("\n") else row.raw + "\n")
                    summary.kept += 1
                    if rejected_out:
                        kept_texts.append(row.text)
                        origin.append((str(inputs), row.line))
                    continue
                summary.rejected += 1
                if rejected_out:
                    score, nearest = decision
                    source, source_line = origin[nearest]
                    record = {
                        "line": row.line,
                        "reason": "near_duplicate",
                        "score": score,
                        "text": row.text,
                        "nearest": kept_texts[nearest],
                        "nearest_source": f"{source}:{source_line}",
                        "row": row.obj if row.obj is not None else row.text,
                    }
                    rejected_out.write(json.dumps(record, ensure_ascii=False) + "\n")

        # Rows go to the engine in batches; up to `engine.depth` batches are out at once, so
        # the next batch is read while worker processes decide the last.
        pending: deque[list[Row]] = deque()
        batch: list[Row] = []
        batch_start = row_number

        def submit() -> None:
            nonlocal batch, batch_start
            if len(pending) >= engine.depth:
                write(pending.popleft(), engine.collect())
            engine.submit(ids, offsets, batch_start, row_number)
            pending.append(batch)
            batch, batch_start = [], row_number

        for row in read_rows(inputs, detect_format(inputs, fmt), field_path):
            summary.read += 1
            if on_progress:
                on_progress(len(row.raw.encode("utf-8")))
            batch.append(row)
            if row.text is None:
                malformed(inputs, row)
                continue
            row_number += 1
            if row_number - batch_start >= batch_size:
                submit()
        if batch:
            submit()
        while pending:
            write(pending.popleft(), engine.collect())
    return summary
