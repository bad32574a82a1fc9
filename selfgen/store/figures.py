"""Figures about a run, computed from its store: the funnel, reasons, tokens and speed, and
what the kept data looks like (scores, lengths, leading verbs, tool pass rates, curation).

Everything is an SQL aggregate, so the figures of a 100,000-candidate run cost one pass over
the store and no Python list of its rows. `selfgen stats` and the statistics view of
`selfgen inspect` both show this dictionary (through `RunStore.figures`).
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any

from selfgen.records import TARGET_REACHED, TASK_STAGES, TRACE_CHECKS, Fate, Stage
from selfgen.store import sql

if TYPE_CHECKING:
    from selfgen.store.run_store import RunStore


def run_figures(store: RunStore) -> dict[str, Any]:
    """The figures of `store`; SQLite errors of a broken store propagate."""
    db = store.db
    config = store.config()
    totals = store.totals()
    # The funnel is reported in the order tasks pass the stages.
    rejected_by_stage = {str(stage): 0 for stage in TASK_STAGES}
    reasons: dict[str, dict[str, int]] = {}
    surplus = 0
    for row in db.execute(
        f"SELECT stage, reason, COUNT(*) FROM candidates WHERE fate = '{Fate.REJECTED}'"
        " GROUP BY stage, reason ORDER BY stage, COUNT(*) DESC"
    ):
        stage, reason, count = row[0], row[1] or "", row[2]
        if reason == TARGET_REACHED:
            surplus += count  # passed every filter after the target was met: not a rejection
            continue
        rejected_by_stage[stage] = rejected_by_stage.get(stage, 0) + count
        reasons.setdefault(stage, {})[reason] = count
    kept = totals.kept
    instances = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    clf = db.execute(
        f"SELECT COUNT(*) FROM candidates WHERE {sql.KEPT} AND is_classification = 1"
    ).fetchone()[0]
    per_stage = {
        r[0]: {"calls": r[1], "prompt_tokens": r[2], "completion_tokens": r[3], "seconds": r[4]}
        for r in db.execute(
            "SELECT stage, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_s)"
            " FROM generations GROUP BY stage"
        )
    }
    gen_seconds = sum(s["seconds"] or 0.0 for s in per_stage.values())
    completion = totals.completion_tokens
    return {
        "target": config.get("num_tasks"),
        "rounds": totals.rounds,
        "candidates": totals.candidates,
        "kept": kept,
        "instances": instances,
        "classification_share": clf / kept if kept else 0.0,
        "candidates_per_kept": (totals.candidates - surplus) / kept if kept else None,
        "funnel": {
            "candidates": totals.candidates,
            "rejected": rejected_by_stage,
            "surplus": surplus,
            "kept": kept,
        },
        "reasons": reasons,
        "tokens": {
            "prompt": totals.prompt_tokens,
            "completion": completion,
            "total": totals.prompt_tokens + completion,
        },
        "elapsed_s": totals.elapsed_s,
        "completion_tokens_per_s": completion / gen_seconds if gen_seconds else None,
        "stages": per_stage,
        **distributions(db),
    }


# Word-count buckets of kept instructions (the paper keeps 3 < words <= 150).
WORD_BUCKETS = ((1, 5), (6, 10), (11, 15), (16, 20), (21, 30), (31, 50), (51, None))
TOP_VERBS = 10
_WORD = re.compile(r"\w+")


def _words(text: str) -> int:
    return len(text.split())


def _leading_word(text: str) -> str:
    match = _WORD.search(text.lower())
    return match.group(0) if match else ""


def distributions(db: sqlite3.Connection) -> dict[str, Any]:
    """Histograms and shares of the run, each one SQL aggregate."""
    db.create_function("selfgen_words", 1, _words, deterministic=True)
    db.create_function("selfgen_leading_word", 1, _leading_word, deterministic=True)
    # ROUGE-L of every candidate that reached the novelty filter, in tenths (1.0 goes in the last).
    scores = dict(
        db.execute(
            "SELECT MIN(CAST(rouge_l * 10 AS INTEGER), 9) AS b, COUNT(*) FROM candidates"
            " WHERE rouge_l IS NOT NULL GROUP BY b"
        ).fetchall()
    )
    lengths = db.execute(
        f"SELECT selfgen_words(instruction) AS w, COUNT(*) FROM candidates WHERE {sql.KEPT}"
        " GROUP BY w"
    ).fetchall()
    verbs = db.execute(
        "SELECT selfgen_leading_word(instruction) AS v, COUNT(*) FROM candidates"
        f" WHERE {sql.KEPT} GROUP BY v ORDER BY COUNT(*) DESC, v LIMIT ?",
        (TOP_VERBS,),
    ).fetchall()
    clf = dict(
        db.execute(
            f"SELECT is_classification, COUNT(*) FROM candidates WHERE {sql.KEPT}"
            " GROUP BY is_classification"
        ).fetchall()
    )
    curation = {"accepted": 0, "rejected": 0}
    curation.update(db.execute("SELECT decision, COUNT(*) FROM curation GROUP BY decision"))
    return {
        "rouge_histogram": [
            {"from": b / 10, "to": (b + 1) / 10, "count": scores.get(b, 0)} for b in range(10)
        ],
        "instruction_words": [
            {
                "from": lo,
                "to": hi,
                "count": sum(n for w, n in lengths if w >= lo and (hi is None or w <= hi)),
            }
            for lo, hi in WORD_BUCKETS
        ],
        "leading_verbs": [{"verb": v, "count": n} for v, n in verbs],
        "classification": {"yes": clf.get(1, 0), "no": clf.get(0, 0)},
        "tools": tool_pass_rates(db),
        "trace_kinds": trace_kind_pass_rates(db),
        "curation": curation,
        "scores": score_distributions(db),
    }


def _ok(check: str) -> str:
    """SQL: whether a trace passed a check (NULL where it never reached it). A trace whose
    request named no tool has no `target` check: it counts as passed where its call was
    well-formed (nothing to disagree with). A run without the grounding check counts it as
    passed where the call ran."""
    fallback = {
        Stage.TARGET: "json_extract(checks, '$.format.ok'), ",
        Stage.GROUNDING: "json_extract(checks, '$.execution.ok'), ",
    }.get(Stage(check), "")
    return f"COALESCE(json_extract(checks, '$.{check}.ok'), {fallback}NULL)"


def _passed(check: str) -> str:
    """SQL: how many traces passed a check."""
    return f"SUM(COALESCE({_ok(check)}, 0))"


def tool_pass_rates(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """For each tool, the traces whose first call named it and how many passed each check
    (`format`, `target`, `execution`, `grounding`, `semantic`); `pass_rate` is the share that passed them
    all.

    Traces cut at parsing, rules or novelty never reached a tool and are not counted; a trace
    whose first call did not parse is listed under the tool name ''."""

    passed = "".join(f", {_passed(check)}" for check in TRACE_CHECKS)
    rows = db.execute(
        "SELECT COALESCE(json_extract(messages, '$[1].tool_calls[0].function.name'), '') AS tool,"
        f" COUNT(*){passed} FROM traces WHERE {sql.PASSED_NOVELTY}"
        " GROUP BY tool ORDER BY COUNT(*) DESC, tool"
    )
    return [
        {
            "tool": tool,
            "traces": n,
            **{str(check): count for check, count in zip(TRACE_CHECKS, counts, strict=True)},
            "pass_rate": counts[-1] / n,
        }
        for tool, n, *counts in rows
    ]


def trace_kind_pass_rates(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """For each kind of trace (single, parallel, multiturn), the traces that reached a tool,
    how many passed each check, how many were kept (`verified`), and the share that passed
    them all. A multi-turn trace passes a check when each of its turns got through it (see
    `Trace.check_turn`), and `followup` counts those that got follow-ups and whose follow-ups
    all passed the rule and novelty filters (None for the other kinds)."""
    ok = [f"COALESCE({_ok(check)}, 0)" for check in TRACE_CHECKS]
    followup = f"json_extract(checks, '$.{Stage.FOLLOWUP}.ok')"
    passed = "".join(f", SUM({x})" for x in ok)
    every = " AND ".join([*ok, f"COALESCE({followup}, 1)"])
    rows = db.execute(
        f"SELECT kind, COUNT(*){passed}, SUM(COALESCE({followup}, 0)), SUM({every}),"
        f" SUM({sql.KEPT})"
        f" FROM traces WHERE {sql.PASSED_NOVELTY} GROUP BY kind ORDER BY kind"
    )
    return [
        {
            "kind": kind,
            "traces": n,
            **{str(check): count for check, count in zip(TRACE_CHECKS, counts, strict=True)},
            "followup": followups if kind == "multiturn" else None,
            "verified": kept,
            "pass_rate": every / n,
        }
        for kind, n, *counts, followups, every, kept in rows
    ]


SCORE_BINS = 10


def score_distributions(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """For each scorer and kind of item: how many were scored, how many could not be, the
    mean, the quartiles and a histogram of ten equal bins between the lowest and highest."""
    out = []
    groups = db.execute(
        "SELECT scorer, kind, COUNT(value), COUNT(*) - COUNT(value), AVG(value), MIN(value),"
        " MAX(value) FROM scores GROUP BY scorer, kind ORDER BY scorer, kind"
    ).fetchall()
    for scorer, kind, n, unscored, mean, low, high in groups:
        values = [
            r[0]
            for r in db.execute(
                "SELECT value FROM scores WHERE scorer = ? AND kind = ? AND value IS NOT NULL"
                " ORDER BY value",
                (scorer, kind),
            )
        ]
        width = (high - low) / SCORE_BINS if n and high > low else 1.0
        counts = [0] * SCORE_BINS
        for v in values:
            counts[min(int((v - low) / width), SCORE_BINS - 1) if n and high > low else 0] += 1
        out.append(
            {
                "scorer": scorer,
                "kind": kind,
                "scored": n,
                "unscored": unscored,
                "mean": mean,
                "quartiles": [values[(len(values) - 1) * q // 4] for q in (1, 2, 3)]
                if values
                else [],
                "histogram": [
                    {"from": low + i * width, "to": low + (i + 1) * width, "count": c}
                    for i, c in enumerate(counts)
                ]
                if values
                else [],
            }
        )
    return out
