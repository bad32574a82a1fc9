"""A fingerprint of a run store's data: what a refactor of the loop must leave unchanged.

Every table that holds what a run produced (generation calls with their prompts, sampling
settings and responses; candidates with their fates, reasons and nearest neighbours;
instances; traces; rounds with their RNG state; seeds and tools) is hashed row by row, in id
order. Times, latencies, versions and the model's path are left out: they differ between two
runs that produced the same data.

The recorded fingerprints are only comparable where llama.cpp computes the same numbers: the
same build flags on the same CPU features (`llama_print_system_info`). Elsewhere the test skips
and says so. To record them again, on purpose, run the tests with SELFGEN_RECORD_FINGERPRINTS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED = Path(__file__).resolve().parent / "data" / "fingerprints.json"

COLUMNS = {
    "seed_tasks": "seed_id, name, instruction, is_classification, instances",
    "run_tools": "name, spec",
    "tool_seeds": "seed_id, request, calls, answer",
    "rounds": "id, rng_state, num_candidates, num_kept, prompt_tokens, completion_tokens,"
    " num_traces",
    "generations": "id, round_id, stage, prompt, messages, params, constraint_spec, response,"
    " finish_reason, prompt_tokens, completion_tokens, error",
    "candidates": "id, round_id, generation_id, instruction, stage, fate, reason, nearest,"
    " rouge_l, is_classification, classify_generation_id, instance_generation_id",
    "instances": "id, candidate_id, position, input, output",
    "traces": "id, round_id, generation_id, request, stage, fate, reason, nearest, rouge_l,"
    " messages, checks, step_generation_ids",
}


def store_fingerprint(run_dir: Path) -> dict[str, str]:
    """One SHA-256 per table of the run's data, with this checkout's path written <root>."""
    db = sqlite3.connect(run_dir / "selfgen.db")
    try:
        out = {}
        for table, columns in COLUMNS.items():
            digest = hashlib.sha256()
            for row in db.execute(f"SELECT {columns} FROM {table} ORDER BY 1"):
                line = json.dumps([repr(v) if isinstance(v, float) else v for v in row])
                digest.update(line.replace(str(ROOT), "<root>").encode() + b"\n")
            out[table] = digest.hexdigest()
        return out
    finally:
        db.close()


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode().strip()


def check_fingerprint(run_dir: Path, name: str) -> None:
    """Assert that the run's data is the data recorded under `name` on this kind of CPU."""
    found = store_fingerprint(run_dir)
    recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    if os.environ.get("SELFGEN_RECORD_FINGERPRINTS") == "1":
        recorded.setdefault("system_info", system_info())
        assert recorded["system_info"] == system_info(), "recorded on another CPU"
        recorded.setdefault("runs", {})[name] = found
        RECORDED.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        return
    if recorded.get("system_info") != system_info():
        pytest.skip(
            "the fingerprints were recorded where llama.cpp reports "
            f"{recorded.get('system_info')!r}; this machine reports {system_info()!r}"
        )
    assert found == recorded["runs"][name]
