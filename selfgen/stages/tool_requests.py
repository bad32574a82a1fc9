"""Tool requests: new user requests that need a tool, written by continuing a numbered list of
tool seed requests (and verified machine ones) under the list of tools. Each item becomes a
`Trace`, parsed, then judged by the rule and novelty filters like an instruction.
"""

from __future__ import annotations

import random

from selfgen.backends.base import Completion, GenerationRequest
from selfgen.config import RunConfig
from selfgen.filters.novelty import NoveltyFilter
from selfgen.prompts import load_prompt
from selfgen.records import ToolSeed, Trace
from selfgen.stages import request_seed
from selfgen.stages.instructions import (
    ListPrompt,
    choose_prompt_instructions,
    list_records,
    list_request,
)
from selfgen.tooling import ToolSpec


def render_request_prompt(language: str, specs: dict[str, ToolSpec], requests: list[str]) -> str:
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(requests, start=1))
    names = "\n".join(f"- {s.name}: {s.description}" for _, s in sorted(specs.items()))
    return load_prompt(language, "tool_requests").format(
        tools=names, numbered_requests=numbered, next_number=len(requests) + 1
    )


class ToolRequestStage:
    """New tool-use requests from lists of seed and verified requests."""

    name = "tool_requests"

    def __init__(
        self,
        config: RunConfig,
        specs: dict[str, ToolSpec],
        tool_seeds: list[ToolSeed],
        novelty: NoveltyFilter,
    ) -> None:
        self.config = config
        self.specs = specs
        self.seed_requests = [s.request for s in tool_seeds if s.calls]
        self.novelty = novelty

    def prompts(self, rng: random.Random, verified: list[str]) -> list[ListPrompt]:
        """The round's prompts; each draws its requests from `rng`."""
        c = self.config
        out = []
        for _ in range(c.trace_prompts_per_round):
            shown = choose_prompt_instructions(
                rng, self.seed_requests, verified, c.seed_instructions, c.machine_instructions
            )
            out.append(
                ListPrompt(render_request_prompt(c.language, self.specs, shown), len(shown) + 1)
            )
        return out

    def request(self, prompt: ListPrompt, round_number: int, index: int) -> GenerationRequest:
        seed = request_seed(self.config.seed, round_number, self.name, index)
        return list_request(self.config, prompt, seed)

    def apply(
        self, prompt: ListPrompt, completion: Completion, generation_index: int
    ) -> list[Trace]:
        """The traces of one continuation; the survivors are still pending."""
        return list_records(
            completion,
            prompt,
            list_length=self.config.list_length,
            make=lambda text: Trace(request=text, generation_index=generation_index),
            novelty=self.novelty,
        )
