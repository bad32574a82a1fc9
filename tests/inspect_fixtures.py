"""Run stores for the inspector's tests and benchmark.

`fixture_run` runs the real loop (rules, ROUGE-L, classification, instances, the agent loop with
the real tools in the sandbox) against a scripted model, so every kind of fate is in the store
and the same rows come out every time. `large_store` writes a synthetic run of any size straight
into a store made by `RunStore.create`, the way the loop's commits would, but in seconds.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from conftest import ROOT, SEEDS

from selfgen.backends.base import get_backend
from selfgen.config import build_config
from selfgen.loop import Loop
from selfgen.sandbox import ToolSandbox
from selfgen.seeds import load_seed_tasks, load_tool_seeds
from selfgen.stages import request_seed
from selfgen.store import RunStore
from selfgen.tooling import tool_specs

# What the scripted model writes, by prompt. Instructions come four to a list: two lists a round.
INSTRUCTION_LISTS = [
    [
        "Classify the sentiment of the following movie review as positive or negative.",
        "Summarize the given news article in two sentences for a busy reader.",
        "Hi there",
        "Classify the sentiment of the following movie review as positive or negative please.",
    ],
    [
        "Draw a picture of a cat sitting on a windowsill at night.",
        "Suggest three names for a new coffee shop near the university campus.",
        "Decide whether the given email is spam or not spam.",
        "Explain the difference between weather and climate to a ten-year-old child.",
    ],
    [
        "Write a haiku about the first snow of winter in the mountains.",
        "List five healthy breakfast ideas that take under ten minutes to prepare.",
        "Translate the given English sentence into Spanish.",
        "Name the capital city of the country mentioned in the question.",
    ],
    [
        "Rewrite the paragraph below in plain language for a general audience.",
        "Go to the store and buy some milk for the family breakfast.",
        "Give an example of a renewable source of energy and describe how it works.",
        "Tell a short joke about computers that a child would understand.",
    ],
]
CLASSIFY = {
    "Classify the sentiment of the following movie review as positive or negative.": " Yes",
    "Decide whether the given email is spam or not spam.": " Yes",
    "Suggest three names for a new coffee shop near the university campus.": " Maybe",
}
INSTANCES = {
    "Classify the sentiment of the following movie review as positive or negative.": (
        " positive\nInput: I loved every minute of this film.\n"
        "Class label: negative\nInput: The plot was dull and the acting was worse.\n"
    ),
    "Summarize the given news article in two sentences for a busy reader.": (
        "Input: The city council approved a new park on Monday after months of debate.\n"
        "Output: The council approved a new park. The vote ended months of debate.\n"
    ),
    "Decide whether the given email is spam or not spam.": " spam\nInput: spam\n",
    "Explain the difference between weather and climate to a ten-year-old child.": (
        "Output: Weather is what the sky does today; climate is the usual weather of a place"
        " over many years.\n"
    ),
    "Write a haiku about the first snow of winter in the mountains.": (
        "Output: Silent peaks turn white, first snow settles on the pines, the valley holds"
        " its breath.\n"
    ),
}
DEFAULT_INSTANCE = "Input: Good morning, how are you?\nOutput: Buenos dias, como estas?\n"
TOOL_REQUESTS = [
    "Multiply 48 by 12 and add 7 to the result.",
    "How many days are there between 2024-01-01 and 2024-03-01?",
    "Convert five miles into kilometres for my running log.",
    "Hi",
]
CALLS = {
    TOOL_REQUESTS[0]: {"name": "calculator", "arguments": {"expression": "48 * 12 + 7"}},
    TOOL_REQUESTS[1]: {
        "name": "date_diff",
        "arguments": {"start": "2024-01-01", "end": "2024-03-01"},
    },
    TOOL_REQUESTS[2]: {"name": "distance", "arguments": {"miles": 5}},
}
ANSWERS = {
    TOOL_REQUESTS[0]: "48 times 12 plus 7 is 583.",
    TOOL_REQUESTS[1]: "There are about thirty days between them.",
}


def _numbered(items: list[str], prompt: str) -> str:
    first = int(re.search(r"(\d+)\.$", prompt).group(1))
    return "".join(f"{'' if i == 0 else f'{first + i}.'} {text}\n" for i, text in enumerate(items))


def scripted_model(run_seed: int):
    # Requests of a round may be answered in any order; each list is found by the request's
    # seed, which depends only on the run seed, the round and the prompt's position.
    lists = {
        request_seed(run_seed, 1 + i // 2, "instructions", i % 2): items
        for i, items in enumerate(INSTRUCTION_LISTS)
    }

    def reply(request) -> str:
        prompt = request.prompt
        if prompt.startswith("Come up with a series of tasks"):
            return _numbered(lists[request.params.seed], prompt).rstrip("\n")
        if prompt.startswith("An assistant can call these tools"):
            return _numbered(TOOL_REQUESTS, prompt).rstrip("\n")
        if prompt.startswith("Answer each request"):
            request_text = prompt.rsplit("Request: ", 1)[1].split("\n", 1)[0]
            if prompt.endswith("Call:"):
                return " " + json.dumps(CALLS[request_text])
            if prompt.endswith("Answer:"):
                return " " + ANSWERS[request_text]
            return "Answer:"
        task = prompt.rsplit("Task: ", 1)[1].split("\n", 1)[0]
        if prompt.startswith("Can the following task"):
            return CLASSIFY.get(task, " No")
        return INSTANCES.get(task, DEFAULT_INSTANCE)

    return reply


def fixture_run(out: Path, scripted) -> Path:
    """A finished run of 4 kept tasks and 1 verified trace, every other fate included, with
    fixed times so that nothing on screen depends on when it ran."""
    cfg = build_config(
        {},
        {
            "backend": "scripted",
            "prompts_per_round": 2,
            "num_tasks": 4,
            "num_traces": 1,
            "trace_prompts_per_round": 1,
            "target_tools": "off",  # the scripted model writes one list for all the tools
            "tools": str(ROOT / "tools"),
            "tool_seeds": str(ROOT / "seeds" / "tool_seed_tasks.jsonl"),
        },
    )
    scripted(scripted_model(cfg.seed))
    store = RunStore.create(out, cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    store.save_tools(tool_specs(cfg.tools), load_tool_seeds(cfg.tool_seeds))
    with ToolSandbox(cfg.tools) as sandbox:
        Loop(cfg, store, get_backend("scripted"), sandbox=sandbox).run()
    with store.db:
        store.db.execute("BEGIN")
        store.db.execute("UPDATE run SET created_at = '2025-01-01T00:00:00.000+00:00'")
        store.db.execute(
            "UPDATE rounds SET started_at = '2025-01-01T00:00:00.000+00:00',"
            " finished_at = '2025-01-01T00:01:00.000+00:00', elapsed_s = 60"
        )
        store.db.execute("UPDATE generations SET latency_s = 0.5")
    store.close()
    return out


WORDS = (
    "explain write list classify summarize describe compare translate find suggest the a of to"
    " and in for with given following text sentence story article email review question answer"
    " city river number date recipe poem letter product customer weather climate history code"
).split()
STAGES = (
    ("rules", "rejected", "too_short", 15),
    ("rouge", "rejected", "near_duplicate", 35),
    ("classify", "rejected", "unparseable_answer", 5),
    ("instances", "rejected", "no_valid_instance:empty_output", 10),
    ("instances", "rejected", "target_reached", 5),
    ("instances", "kept", None, 30),
)


def large_store(out: Path, candidates: int, per_round: int = 100, seed: int = 0) -> Path:
    """A synthetic run of `candidates` candidates (a third kept, with two instances each) and
    one tool trace per round, written in one transaction."""
    rng = random.Random(seed)
    store = RunStore.create(out, build_config({}, {}).to_dict(), [], {}, "test")
    weights = [s[3] for s in STAGES]
    db = store.db
    with db:
        db.execute("BEGIN")
        for number in range(1, candidates // per_round + 1):
            db.execute(
                "INSERT INTO rounds (id, started_at, finished_at, rng_state, num_candidates,"
                " num_kept, prompt_tokens, completion_tokens, elapsed_s, num_traces)"
                " VALUES (?, '', '', '[]', ?, 0, 0, 0, 1.0, 1)",
                (number, per_round),
            )
            gen = db.execute(
                "INSERT INTO generations (round_id, stage, prompt, params, response,"
                " finish_reason, prompt_tokens, completion_tokens, latency_s)"
                " VALUES (?, 'instructions', ?, '{}', ?, 'stop', 400, 200, 1.0)",
                (number, " ".join(rng.choices(WORDS, k=300)), " ".join(rng.choices(WORDS, k=150))),
            ).lastrowid
            for _ in range(per_round):
                stage, fate, reason, _w = rng.choices(STAGES, weights)[0]
                text = " ".join(rng.choices(WORDS, k=rng.randint(5, 25))).capitalize() + "."
                scored = stage != "rules"
                cid = db.execute(
                    "INSERT INTO candidates (round_id, generation_id, instruction, stage, fate,"
                    " reason, nearest, rouge_l, is_classification) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        number,
                        gen,
                        text,
                        stage,
                        fate,
                        reason,
                        " ".join(rng.choices(WORDS, k=12)) if scored else None,
                        (0.7 + 0.3 * rng.random() if stage == "rouge" else 0.7 * rng.random())
                        if scored
                        else None,
                        rng.random() < 0.3 if stage in ("instances", "classify") else None,
                    ),
                ).lastrowid
                if fate == "kept":
                    db.executemany(
                        "INSERT INTO instances (candidate_id, position, input, output)"
                        " VALUES (?, ?, ?, ?)",
                        [(cid, i, f"input {i} of {cid}", f"output {i} of {cid}") for i in (0, 1)],
                    )
            db.execute(
                "INSERT INTO traces (round_id, generation_id, request, stage, fate, reason,"
                " nearest, rouge_l, messages, checks, step_generation_ids)"
                " VALUES (?, ?, ?, 'verified', 'kept', NULL, NULL, 0.2, ?, ?, '[]')",
                (number, gen, f"What is {number} * 3?", _trace_messages(number), _checks()),
            )
    return out


def _trace_messages(number: int) -> str:
    call = {"name": "calculator", "arguments": json.dumps({"expression": f"{number} * 3"})}
    return json.dumps(
        [
            {"role": "user", "content": f"What is {number} * 3?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_0", "type": "function", "function": call}],
            },
            {
                "role": "tool",
                "tool_call_id": "call_0",
                "name": "calculator",
                "content": str(number * 3),
            },
            {"role": "assistant", "content": f"It is {number * 3}."},
        ]
    )


def _checks() -> str:
    return json.dumps(
        {k: {"ok": True, "reason": None} for k in ("format", "execution", "semantic")}
    )


# Quality scores for the fixture run, as `selfgen score` stores them: (kind, item id, scorer,
# value, detail). Task 1 has two scored instances (judge 4 and 5, ifd 0.62 and 0.80); the judge
# could not score task 8's instance; ifd never scored task 9's. Traces have toolformer scores.
FIXTURE_SCORES = [
    ("instance", 1, "judge", 4.0, {"answer": "4"}),
    ("instance", 2, "judge", 5.0, {"answer": "5"}),
    ("instance", 3, "judge", 3.0, {"answer": "3"}),
    ("instance", 4, "judge", None, {"error": "answer 'Great'"}),
    ("instance", 5, "judge", 2.0, {"answer": "2"}),
    ("instance", 1, "ifd", 0.62, {"conditioned_loss": 1.24, "direct_loss": 2.0, "tokens": 1}),
    ("instance", 2, "ifd", 0.8, {"conditioned_loss": 1.6, "direct_loss": 2.0, "tokens": 1}),
    ("instance", 3, "ifd", 0.45, {"conditioned_loss": 0.9, "direct_loss": 2.0, "tokens": 17}),
    ("instance", 4, "ifd", 1.08, {"conditioned_loss": 2.16, "direct_loss": 2.0, "tokens": 15}),
    ("trace", 1, "toolformer", 0.85, {"loss_with_results": 0.4, "helps": True}),
    ("trace", 2, "toolformer", -0.12, {"loss_with_results": 1.3, "helps": False}),
    ("trace", 3, "toolformer", None, {"error": "no call or no answer"}),
]
SCORE_MODEL = {"backend": "llamacpp", "model": "judge.gguf", "n_ctx": 2048}


def add_scores(store: RunStore, scores=FIXTURE_SCORES) -> None:
    """Store `scores` (kind, item id, scorer, value, detail) in the run, in one transaction."""
    with store.db:
        store.db.execute("BEGIN")
        store.db.executemany(
            "INSERT INTO scores (kind, item_id, scorer, value, detail, model, settings, scored_at)"
            " VALUES (?, ?, ?, ?, ?, ?, '{}', '2025-01-01T00:02:00.000+00:00')",
            [
                (kind, item_id, scorer, value, json.dumps(detail), json.dumps(SCORE_MODEL))
                for kind, item_id, scorer, value, detail in scores
            ],
        )


def score_large_store(store: RunStore, seed: int = 0) -> None:
    """Judge and ifd scores for every instance of a `large_store` run (one in twenty that the
    judge could not score) and a toolformer score for every trace."""
    rng = random.Random(seed)
    instances = [r[0] for r in store.db.execute("SELECT id FROM instances")]
    traces = [r[0] for r in store.db.execute("SELECT id FROM traces")]
    add_scores(
        store,
        [
            ("instance", i, "judge", None if rng.random() < 0.05 else rng.randint(1, 5), {})
            for i in instances
        ]
        + [("instance", i, "ifd", 0.3 + rng.random(), {}) for i in instances]
        + [("trace", t, "toolformer", rng.random() - 0.5, {}) for t in traces],
    )
