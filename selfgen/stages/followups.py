"""Follow-ups: the user's next message in a multi-turn trace ("And in Kelvin?", "How many
weeks is that?").

Once a multi-turn trace's turn is answered and verified, the model writes what the user says
next, continuing a few worked conversations (the multi-turn tool seeds) and then this one, shown
as the user and the assistant saw it (requests and answers; calls and results are the
assistant's business). The message is judged like a request: the rule filters (with a lower
minimum length, since a follow-up leans on what was said before) and ROUGE-L novelty against
the same pool as the requests, which it then joins. A message that fails is written again, with
another seed, up to FOLLOWUP_TRIES times; the last one that fails is kept in the trace, which
is rejected at `followup` with a reason naming the turn. One that passes goes to the tool
agent with the whole conversation in its prompt.
"""

from __future__ import annotations

import dataclasses
import random
import re

from selfgen.backends.base import Completion, GenerationRequest, SamplingParams
from selfgen.config import RunConfig
from selfgen.filters.novelty import NoveltyFilter
from selfgen.filters.rules import RuleFilter
from selfgen.prompts import load_prompt
from selfgen.records import FollowUp, Stage, ToolSeed, Trace
from selfgen.seeds import MAX_FOLLOWUPS
from selfgen.stages import request_seed, shared_prefix
from selfgen.tooling import ToolSpec

# A conversation has two to MAX_USER_TURNS user turns.
MAX_USER_TURNS = 1 + MAX_FOLLOWUPS
# Words a follow-up needs at least ("And in Kelvin?" has three), where a request needs the
# run's min_words.
FOLLOWUP_MIN_WORDS = 2
# Most tokens of a follow-up: one short line.
FOLLOWUP_MAX_TOKENS = 48
# Tries at writing a follow-up that passes the filters (the bundled model often copies the
# first request, which the novelty filter rejects) before the conversation is rejected.
FOLLOWUP_TRIES = 3
_SPEAKER = re.compile(r"^(?:user|human|follow-up)\s*:\s*", re.IGNORECASE)


def _conversation(turns: list[tuple[str, str]]) -> str:
    """The turns as the user and the assistant saw them; the user's later messages are marked
    "Follow-up:", so that the model, continuing one, writes a message that leans on the turns
    before it rather than a new first request (which the novelty filter would reject)."""
    return "".join(
        f"{'User' if n == 0 else 'Follow-up'}: {request}\nAssistant: {answer}\n"
        for n, (request, answer) in enumerate(turns)
    )


def render_followup_prompt(
    language: str, specs: dict[str, ToolSpec], demos: list[ToolSeed], trace: Trace
) -> str:
    """The worked conversations, each ending after a follow-up's answer, then the trace's
    conversation so far, ending with "Follow-up:" for the model to continue."""
    names = "\n".join(f"- {s.name}: {s.description}" for _, s in sorted(specs.items()))
    shown = "".join(
        _conversation([(t.request, t.answer) for t in seed.turns()]) + "\n" for seed in demos
    )
    turns = [(trace.request, trace.answer or "")]
    turns += [(f.request, f.answer or "") for f in trace.followups]
    return load_prompt(language, "tool_followup").format(
        tools=names, conversations=shown + _conversation(turns) + "Follow-up:"
    )


def parse_followup(text: str, finish_reason: str) -> tuple[str, str | None]:
    """The user's message from the model's line, and why it is unusable (or None)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    line = _SPEAKER.sub("", line).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    if finish_reason == "length":
        return line, "truncated"
    return line, None if line else "empty"


def followup_rules(config: RunConfig) -> RuleFilter:
    """The run's rule filters, with the shorter minimum length of a follow-up."""
    rules = config.rule_config()
    return RuleFilter(
        dataclasses.replace(rules, min_words=min(rules.min_words, FOLLOWUP_MIN_WORDS))
    )


class FollowUpStage:
    """Writes and judges the follow-ups of multi-turn traces."""

    name = "tool_followup"

    def __init__(
        self, config: RunConfig, specs: dict[str, ToolSpec], novelty: NoveltyFilter
    ) -> None:
        self.config = config
        self.specs = specs
        self.novelty = novelty
        self.rules = followup_rules(config)

    @staticmethod
    def user_turns(rng: random.Random, count: int) -> list[int]:
        """How many user turns each of `count` conversations will have (two to
        MAX_USER_TURNS, drawn from the run's RNG)."""
        return [rng.randint(2, MAX_USER_TURNS) for _ in range(count)]

    def request(
        self, trace: Trace, demos: list[ToolSeed], round_number: int, index: int, attempt: int = 0
    ) -> GenerationRequest:
        """The request for the trace's next user message, sampled like the request lists (each
        `attempt` with its own seed)."""
        c = self.config
        label = f"{self.name}{trace.turn + 1}" + (f".{attempt}" if attempt else "")
        prompt = render_followup_prompt(c.language, self.specs, demos, trace)
        return GenerationRequest(
            prompt=prompt,
            params=SamplingParams(
                temperature=c.temperature,
                top_p=c.top_p,
                max_tokens=FOLLOWUP_MAX_TOKENS,
                stop=("\n",),
                seed=request_seed(c.seed, round_number, label, index),
            ),
            shared_prefix=shared_prefix(prompt, f"User: {trace.request}\n"),
        )

    def apply(
        self, trace: Trace, completion: Completion, generation_index: int, last_try: bool = True
    ) -> bool | None:
        """Judge the follow-up the model wrote. True: it passed and is the trace's next turn.
        False: it failed on the `last_try`, and the trace is rejected with it. None: it failed
        and is dropped, to be written again."""
        trace.step_generation_indexes.append(generation_index)
        text, problem = parse_followup(completion.text, completion.finish_reason)
        if completion.finish_reason == "error":
            problem = f"followup_not_generated: {completion.extra.get('error', '')}"[:200]
        followup = FollowUp(request=text, generation_index=generation_index)
        trace.followups.append(followup)
        if problem is None and not self.novelty.judge(followup, self.rules):
            if followup.stage is Stage.RULES:
                problem = f"rules: {followup.reason}"
            else:
                problem = (
                    f"{followup.reason}: ROUGE-L {followup.rouge_l:.2f} to {followup.nearest!r}"
                )[:300]
        if problem is not None and not last_try:
            trace.followups.pop()
            return None
        return trace.check_turn(Stage.FOLLOWUP, problem)
