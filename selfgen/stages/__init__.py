"""The stages of the loop, one module each.

A stage owns one step of the loop: its prompt (rendered from `selfgen/prompts`), its sampling
settings (read from the run's config), the requests it sends, and the parsing and filtering of
the answers into records. A stage never calls the model and never touches the store: it turns
records into `GenerationRequest`s and `Completion`s into verdicts on records, so it can be
tested alone. `selfgen.loop` schedules the requests of every stage and commits the records.

    instructions   prompts of seed + machine instructions  ->  Candidate (parse, rules, rouge)
    classify       a candidate                             ->  is it a classification task?
    instances      a classified candidate                  ->  its instances; kept or rejected
    tool_requests  prompts of tool seed requests           ->  Trace (parse, rules, rouge)
    tool_agent     a trace                                 ->  calls, results, answer; verified
    followups      a verified turn of a multi-turn trace   ->  the user's next message (rules,
                                                               rouge), then tool_agent again

Every request carries a seed that depends only on the run seed, the round, the stage and the
request's position in it (:func:`request_seed`), so a run resumed after a kill generates what
an uninterrupted one would.
"""

from __future__ import annotations

import hashlib


def request_seed(run_seed: int, round_number: int, stage: str, index: int) -> int:
    """A 31-bit seed for one request that depends on nothing but its coordinates."""
    digest = hashlib.sha256(f"{run_seed}/{round_number}/{stage}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shared_prefix(prompt: str, marker: str) -> int:
    """Length of the few-shot part of a prompt: everything before its last `marker` (the task
    or request being asked about), which many requests of a round share."""
    return prompt.rindex(marker)
