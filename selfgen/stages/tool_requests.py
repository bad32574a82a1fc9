"""Tool requests: new user requests that need a tool, written by continuing a numbered list of
tool seed requests (and verified machine ones) under the list of tools. Each item becomes a
`Trace`, parsed, then judged by the rule and novelty filters like an instruction.
"""

from __future__ import annotations

from selfgen.config import RunConfig
from selfgen.filters.novelty import NoveltyFilter
from selfgen.prompts import load_prompt
from selfgen.records import ToolSeed, Trace
from selfgen.stages.instructions import NumberedListStage
from selfgen.tooling import ToolSpec


def render_request_prompt(language: str, specs: dict[str, ToolSpec], requests: list[str]) -> str:
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(requests, start=1))
    names = "\n".join(f"- {s.name}: {s.description}" for _, s in sorted(specs.items()))
    return load_prompt(language, "tool_requests").format(
        tools=names, numbered_requests=numbered, next_number=len(requests) + 1
    )


class ToolRequestStage(NumberedListStage[Trace]):
    """New tool-use requests from lists of seed and verified requests."""

    name = "tool_requests"

    def __init__(
        self,
        config: RunConfig,
        specs: dict[str, ToolSpec],
        tool_seeds: list[ToolSeed],
        novelty: NoveltyFilter,
    ) -> None:
        super().__init__(config, [s.request for s in tool_seeds if s.calls], novelty)
        self.specs = specs

    def render(self, shown: list[str]) -> str:
        return render_request_prompt(self.config.language, self.specs, shown)

    def make(self, text: str, generation_index: int) -> Trace:
        return Trace(request=text, generation_index=generation_index)

    def per_round(self) -> int:
        return self.config.trace_prompts_per_round
