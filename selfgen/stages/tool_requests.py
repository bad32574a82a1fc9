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


def render_request_prompt(
    language: str, specs: dict[str, ToolSpec], requests: list[str], kind: str = "single"
) -> str:
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(requests, start=1))
    names = "\n".join(f"- {s.name}: {s.description}" for _, s in sorted(specs.items()))
    name = "tool_requests" if kind == "single" else f"tool_requests_{kind}"
    return load_prompt(language, name).format(
        tools=names, numbered_requests=numbered, next_number=len(requests) + 1
    )


class ToolRequestStage(NumberedListStage[Trace]):
    """New tool-use requests of one kind (single or parallel calls) from lists of seed and
    verified requests of that kind."""

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

    def render(self, shown: list[str]) -> str:
        return render_request_prompt(self.config.language, self.specs, shown, self.kind)

    def make(self, text: str, generation_index: int) -> Trace:
        return Trace(request=text, generation_index=generation_index, kind=self.kind)

    def per_round(self) -> int:
        return self.config.trace_prompts_per_round
