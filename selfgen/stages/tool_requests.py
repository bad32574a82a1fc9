"""Tool requests: new user requests that need a tool, written by continuing a numbered list of
tool seed requests (and verified machine ones) under the list of tools. Each item becomes a
`Trace`, parsed, then judged by the rule and novelty filters like an instruction.

With the `target_tools` setting on (the default), each list is for one tool: it names that
tool alone and shows the requests whose first call uses it, so every request is written for a
known tool. The tool agent then makes that tool the first call (`constrain`: the grammar allows
no other), or lets the model, shown all the tools, choose and rejects the trace at `target`
when it calls another tool first (`check`: two independent choices must agree, which leaves out
requests another tool, or none, could answer, at the price of far fewer traces from a small
model).
"""

from __future__ import annotations

import random

from selfgen.config import RunConfig
from selfgen.filters.novelty import NoveltyFilter
from selfgen.prompts import load_prompt
from selfgen.records import ToolSeed, Trace
from selfgen.stages.instructions import ListPrompt, NumberedListStage, choose_prompt_instructions
from selfgen.tooling import ToolSpec

# A verified request and the tool of its first call: the pool the lists draw machine examples
# from.
Verified = tuple[str, str]


def render_request_prompt(
    language: str,
    specs: dict[str, ToolSpec],
    requests: list[str],
    kind: str = "single",
    target: str | None = None,
) -> str:
    """The numbered list of `requests` of one kind under the tools (or under `target` alone)."""
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(requests, start=1))
    shown = [specs[target]] if target else [s for _, s in sorted(specs.items())]
    names = "\n".join(f"- {s.name}: {s.description}" for s in shown)
    if target:
        template = "tool_requests_for_tool"
    else:
        template = "tool_requests" if kind == "single" else f"tool_requests_{kind}"
    return load_prompt(language, template).format(
        tools=names, numbered_requests=numbered, next_number=len(requests) + 1
    )


class ToolRequestStage(NumberedListStage[Trace]):
    """New tool-use requests of one kind (single, parallel or multiturn) from lists of seed
    and verified requests of that kind (a multi-turn trace's seeds are the single ones)."""

    def __init__(
        self,
        config: RunConfig,
        specs: dict[str, ToolSpec],
        tool_seeds: list[ToolSeed],
        novelty: NoveltyFilter,
        kind: str = "single",
    ) -> None:
        super().__init__(config, [s.request for s in tool_seeds if s.calls], novelty)
        self.specs = specs
        self.kind = kind
        # The generation stage's label (and part of each request's seed).
        self.name = "tool_requests" if kind == "single" else f"tool_requests_{kind}"
        # The seed requests of each tool that opens a seed's calls (only those tools can be a
        # list's target: the list needs examples).
        self.seeds_by_tool: dict[str, list[str]] = {}
        for s in tool_seeds:
            if s.calls and s.calls[0].name in specs:
                self.seeds_by_tool.setdefault(s.calls[0].name, []).append(s.request)

    def prompts(self, rng: random.Random, pool: list[Verified]) -> list[ListPrompt]:
        """The round's lists. Targeted (requests of single and multi-turn traces, whose first
        turn makes one call at a time), they take the tools in turn from a random one, so that
        over the rounds every tool gets as many lists."""
        c = self.config
        if c.target_tools == "off" or self.kind == "parallel" or not self.seeds_by_tool:
            return super().prompts(rng, [request for request, _ in pool])
        tools = sorted(self.seeds_by_tool)
        start = rng.randrange(len(tools))
        out = []
        for j in range(self.per_round()):
            tool = tools[(start + j) % len(tools)]
            shown = choose_prompt_instructions(
                rng,
                self.seeds_by_tool[tool],
                [request for request, name in pool if name == tool],
                c.seed_instructions,
                c.machine_instructions,
            )
            text = render_request_prompt(c.language, self.specs, shown, target=tool)
            out.append(ListPrompt(text, len(shown) + 1, tool))
        return out

    def render(self, shown: list[str]) -> str:
        return render_request_prompt(self.config.language, self.specs, shown, self.kind)

    def make(self, text: str, generation_index: int, prompt: ListPrompt) -> Trace:
        return Trace(
            request=text, generation_index=generation_index, kind=self.kind, target=prompt.target
        )

    def per_round(self) -> int:
        return self.config.trace_prompts_per_round
