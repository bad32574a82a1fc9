"""Figures about a run, computed from its store: the funnel, reasons, tokens and speed."""

from __future__ import annotations

from typing import Any

from selfgen.store import RunStore

# The order candidates pass the stages in; the funnel is reported in this order.
STAGES = ("parse", "rules", "rouge", "classify", "instances")
# The reason of tasks that passed every filter in the round that met the target.
SURPLUS = "target_reached"


def run_stats(store: RunStore) -> dict[str, Any]:
    db = store.db
    config = store.config()
    progress = store.progress()
    rejected_by_stage = {stage: 0 for stage in STAGES}
    reasons: dict[str, dict[str, int]] = {}
    surplus = 0
    for row in db.execute(
        "SELECT stage, reason, COUNT(*) FROM candidates WHERE fate = 'rejected'"
        " GROUP BY stage, reason ORDER BY stage, COUNT(*) DESC"
    ):
        stage, reason, count = row[0], row[1] or "", row[2]
        if reason == SURPLUS:
            surplus += count  # passed every filter after the target was met: not a rejection
            continue
        rejected_by_stage[stage] = rejected_by_stage.get(stage, 0) + count
        reasons.setdefault(stage, {})[reason] = count
    kept = progress.kept
    instances = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    clf = db.execute(
        "SELECT COUNT(*) FROM candidates WHERE fate = 'kept' AND is_classification = 1"
    ).fetchone()[0]
    per_stage = {
        r[0]: {"calls": r[1], "prompt_tokens": r[2], "completion_tokens": r[3], "seconds": r[4]}
        for r in db.execute(
            "SELECT stage, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_s)"
            " FROM generations GROUP BY stage"
        )
    }
    gen_seconds = sum(s["seconds"] or 0.0 for s in per_stage.values())
    completion = progress.completion_tokens
    return {
        "target": config.get("num_tasks"),
        "rounds": progress.rounds,
        "candidates": progress.candidates,
        "kept": kept,
        "instances": instances,
        "classification_share": clf / kept if kept else 0.0,
        "candidates_per_kept": (progress.candidates - surplus) / kept if kept else None,
        "funnel": {
            "candidates": progress.candidates,
            "rejected": rejected_by_stage,
            "surplus": surplus,
            "kept": kept,
        },
        "reasons": reasons,
        "tokens": {
            "prompt": progress.prompt_tokens,
            "completion": completion,
            "total": progress.prompt_tokens + completion,
        },
        "elapsed_s": progress.elapsed_s,
        "completion_tokens_per_s": completion / gen_seconds if gen_seconds else None,
        "stages": per_stage,
    }
