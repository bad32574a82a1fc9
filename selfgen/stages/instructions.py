"""Step 1: prompt the model with a numbered list of instructions and parse its continuation."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from selfgen.prompts import load_prompt

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
