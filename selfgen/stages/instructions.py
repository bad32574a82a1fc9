"""Instruction generation: a numbered list of seed and machine instructions, continued by the
model (Self-Instruct: 6 human + 2 machine instructions, the list going on to 16). Each item of
the continuation becomes a `Candidate`, parsed, then judged by the rule and novelty filters.

The numbered-list request and its parsing serve the tool requests stage too.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from selfgen.backends.base import Completion, GenerationRequest, SamplingParams
from selfgen.config import RunConfig
from selfgen.filters.novelty import NoveltyFilter
from selfgen.prompts import load_prompt
from selfgen.records import Candidate, Record, SeedTask, Stage
from selfgen.stages import request_seed

_WS = re.compile(r"\s+")
_NUMBERED = re.compile(r"^[ \t]*(\d+)[ \t]*[.)][ \t]*", re.MULTILINE)


def stop_strings(list_length: int) -> tuple[str, ...]:
    """Stop at a blank line or when the list reaches its last number.

    The paper also stops at a bare "16." anywhere; that cuts an item that mentions the number
    in its text, and the backend strips the stop string, so the cut could not be detected.
    Only a number at the start of a line counts here.
    """
    return ("\n\n", f"\n{list_length}")


def choose_prompt_instructions(
    rng: random.Random,
    seed_instructions: list[str],
    machine_instructions: list[str],
    num_seed: int,
    num_machine: int,
) -> list[str]:
    """`num_machine` instructions from the kept pool (fewer while it is small) topped up with
    human seeds to `num_seed + num_machine`, shuffled."""
    machine = rng.sample(machine_instructions, min(num_machine, len(machine_instructions)))
    want_seed = min(num_seed + num_machine - len(machine), len(seed_instructions))
    chosen = machine + rng.sample(seed_instructions, want_seed)
    rng.shuffle(chosen)
    return chosen


def render_prompt(language: str, instructions: list[str]) -> str:
    numbered = "\n".join(
        f"{i}. {_WS.sub(' ', text).strip()}" for i, text in enumerate(instructions, start=1)
    )
    return load_prompt(language, "instructions").format(
        numbered_instructions=numbered, next_number=len(instructions) + 1
    )


@dataclass(frozen=True)
class ParsedItem:
    """One list item of the continuation; `reason` says why it is unusable, else None."""

    number: int
    text: str
    reason: str | None = None


def parse_continuation(
    text: str, next_number: int, finish_reason: str, list_length: int
) -> list[ParsedItem]:
    """Split the model's continuation of the numbered list into instructions.

    The prompt ends with ``"<next_number>."``, so the continuation starts inside that item.
    Numbering must go on in sequence; anything after a break in the sequence is ignored (the
    model has stopped writing the list). When the model was cut off by `max_tokens`, the last
    item is incomplete and is marked ``truncated``.
    """
    full = f"{next_number}.{text}"
    marks = list(_NUMBERED.finditer(full))
    items: list[ParsedItem] = []
    runs_to_end = True  # does the last parsed item reach the end of the text?
    for i, mark in enumerate(marks):
        number = int(mark.group(1))
        if number != next_number + len(items) or number >= list_length:
            runs_to_end = False
            break
        end = marks[i + 1].start() if i + 1 < len(marks) else len(full)
        body = _WS.sub(" ", full[mark.end() : end]).strip()
        items.append(ParsedItem(number, body, None if body else "empty"))
    if finish_reason == "length" and items and runs_to_end:
        last = items[-1]
        items[-1] = ParsedItem(last.number, last.text, "truncated")
    return items


@dataclass(frozen=True)
class ListPrompt:
    """A numbered list for the model to continue; the prompt ends with `next_number`. `target`
    is what the list asks for, where a stage asks for one thing per prompt (a tool)."""

    text: str
    next_number: int
    target: str | None = None


R = TypeVar("R", bound=Record)


class NumberedListStage(Generic[R]):
    """A stage whose model continues a numbered list of examples (seed ones, topped up with
    machine ones from the pool) and whose records are the new items, judged by the rule and
    novelty filters. A subclass says what the list shows and what record an item makes."""

    name: str

    def __init__(self, config: RunConfig, seed_texts: list[str], novelty: NoveltyFilter) -> None:
        self.config = config
        self.seed_texts = seed_texts
        self.novelty = novelty

    def render(self, shown: list[str]) -> str:
        """The prompt showing `shown` as a numbered list, ending with the next number."""
        raise NotImplementedError

    def make(self, text: str, generation_index: int, prompt: ListPrompt) -> R:
        raise NotImplementedError

    def per_round(self) -> int:
        raise NotImplementedError

    def prompts(self, rng: random.Random, pool: list[str]) -> list[ListPrompt]:
        """The round's prompts; each draws its examples from `rng` (machine ones from `pool`)."""
        c = self.config
        out = []
        for _ in range(self.per_round()):
            shown = choose_prompt_instructions(
                rng, self.seed_texts, pool, c.seed_instructions, c.machine_instructions
            )
            out.append(ListPrompt(self.render(shown), len(shown) + 1))
        return out

    def request(self, prompt: ListPrompt, round_number: int, index: int) -> GenerationRequest:
        """The request continuing `prompt`, with the list sampling settings of the config."""
        c = self.config
        return GenerationRequest(
            prompt=prompt.text,
            params=SamplingParams(
                temperature=c.temperature,
                top_p=c.top_p,
                max_tokens=c.max_tokens,
                stop=stop_strings(c.list_length),
                presence_penalty=c.presence_penalty,
                frequency_penalty=c.frequency_penalty,
                seed=request_seed(c.seed, round_number, self.name, index),
            ),
        )

    def apply(self, prompt: ListPrompt, completion: Completion, generation_index: int) -> list[R]:
        """One record per item of the continuation, in order, each judged: parse failures are
        rejected at `parse`, the others by the rule and novelty filters. The survivors are
        those still pending."""
        return self.apply_many([(prompt, completion, generation_index)])[0]

    def apply_many(self, answered: list[tuple[ListPrompt, Completion, int]]) -> list[list[R]]:
        """:meth:`apply` to several completions in order, their items judged as one batch
        (the same verdicts; a batch lets the novelty filter's workers share the work)."""
        out: list[list[R]] = []
        parsed = []
        for prompt, completion, generation_index in answered:
            records = []
            for item in parse_continuation(
                completion.text,
                prompt.next_number,
                completion.finish_reason,
                self.config.list_length,
            ):
                record = self.make(item.text, generation_index, prompt)
                records.append(record)
                if item.reason:
                    record.reject(Stage.PARSE, item.reason)
                else:
                    parsed.append(record)
            out.append(records)
        # In order, each against the pool and the items before it that joined it.
        self.novelty.judge_batch(parsed)
        return out


class InstructionStage(NumberedListStage[Candidate]):
    """New instructions from lists of seed and kept machine instructions."""

    name = "instructions"

    def __init__(self, config: RunConfig, seeds: list[SeedTask], novelty: NoveltyFilter) -> None:
        super().__init__(config, [s.instruction for s in seeds], novelty)

    def render(self, shown: list[str]) -> str:
        return render_prompt(self.config.language, shown)

    def make(self, text: str, generation_index: int, prompt: ListPrompt) -> Candidate:
        return Candidate(instruction=text, generation_index=generation_index)

    def per_round(self) -> int:
        return self.config.prompts_per_round
