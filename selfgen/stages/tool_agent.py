"""The tool agent: runs each trace's calls and answer, and verifies the trace.

Step by step for all active traces of a round at once: the model writes a call (constrained to
the tools' schemas where the backend can), selfgen validates its arguments and executes it in
the sandbox (a separate process with a timeout and a memory limit), the result goes back into
the prompt, and the model chooses between another call and the answer (forced to answer at the
step limit). Each trace is then verified stage by stage (after APIGen): format (the call
parses, names a known tool, and its arguments validate), target (a request written for one tool
is first answered with a call of that tool; see `selfgen.stages.tool_requests`), execution (the tool ran without error within its
limits) and semantic (the final answer uses the tool's output).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfgen.backends.base import Completion, Constraint, GenerationRequest, SamplingParams
from selfgen.config import RunConfig
from selfgen.prompts import load_prompt
from selfgen.records import TARGET_REACHED, Fate, Stage, ToolCall, ToolSeed, Trace
from selfgen.stages import request_seed, shared_prefix
from selfgen.tooling import ToolSpec, validate_arguments

if TYPE_CHECKING:
    from selfgen.sandbox import ToolSandbox

# Runs a batch of one kind of agent request (its generation stage label, the requests) and
# returns, for each, the index of the recorded generation call and the completion.
Generate = Callable[[str, list[GenerationRequest]], list[tuple[int, Completion]]]


def _grammar_friendly(schema: Any) -> Any:
    """A schema that constrains decoding as tightly as the tool's own: llama.cpp's grammar
    ignores minimum/maximum, so small integer ranges become an enum (a model wrote k: 1000
    for a 1..5 argument otherwise). Larger ranges stay, and validation still catches them."""
    if isinstance(schema, dict):
        out = {k: _grammar_friendly(v) for k, v in schema.items()}
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if schema.get("type") == "integer" and isinstance(lo, int) and isinstance(hi, int):
            if hi - lo <= 64:
                return {"enum": list(range(lo, hi + 1))}
        return out
    if isinstance(schema, list):
        return [_grammar_friendly(x) for x in schema]
    return schema


def call_schema(specs: dict[str, ToolSpec]) -> dict[str, Any]:
    """JSON schema of one call: {"name": <a tool>, "arguments": <that tool's arguments>}."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": _grammar_friendly(spec.parameters),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, spec in sorted(specs.items())
        ]
    }


def tool_list(specs: dict[str, ToolSpec]) -> str:
    return "\n".join(
        json.dumps({"name": s.name, "description": s.description, "parameters": s.parameters})
        for _, s in sorted(specs.items())
    )


def _demo(seed: ToolSeed) -> str:
    lines = [f"Request: {seed.request}"]
    for call in seed.calls:
        lines.append("Call: " + json.dumps({"name": call.name, "arguments": call.arguments}))
        lines.append(f"Result: {_one_line(call.output or '')}")
    lines.append(f"Answer: {_one_line(seed.answer)}")
    return "\n".join(lines) + "\n\n"


RESULT_CHARS = 400  # of a tool result shown in a prompt; the trace keeps all of it


def _one_line(text: str) -> str:
    text = re.sub(r"\s*\n\s*", " | ", text.strip())
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + " ..."


def render_agent_prompt(
    language: str,
    specs: dict[str, ToolSpec],
    demos: list[ToolSeed],
    request: str,
    steps: list[ToolCall],
) -> str:
    """The prompt for the next step: ends with "Call:" after the request, or with "Result: ..."
    after each executed call (the model then writes "Call:" again or "Answer:")."""
    text = load_prompt(language, "tool_agent").format(
        tools=tool_list(specs), demos="".join(_demo(d) for d in demos), request=request
    )
    for i, call in enumerate(steps):
        text += ("Call: " if i else " ") + json.dumps(
            {"name": call.name, "arguments": call.arguments}
        )
        text += f"\nResult: {_one_line(call.output if call.output is not None else 'error: ' + (call.error or ''))}\n"
    return text


def pick_demos(rng: random.Random, seeds: list[ToolSeed], count: int) -> list[ToolSeed]:
    with_calls = [s for s in seeds if s.calls]
    return rng.sample(with_calls, min(count, len(with_calls)))


def parse_call(
    text: str, finish_reason: str, specs: dict[str, ToolSpec]
) -> tuple[ToolCall | None, str | None]:
    """A call from the model's JSON, or None and the format failure."""
    if finish_reason == "length":
        return None, "cut_off"  # a call cut by max_tokens is never a success
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None, "not_json"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, "no_tool_name"
    if obj["name"] not in specs:
        return None, f"unknown_tool:{obj['name'][:40]}"
    arguments = obj.get("arguments")
    if not isinstance(arguments, dict):
        return None, "arguments_not_an_object"
    return ToolCall(obj["name"], arguments), None


_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z0-9]+")


def _numbers(text: str) -> set[str]:
    out = set()
    for raw in _NUMBER.findall(text):
        value = raw.replace(",", "")
        out.add(value)
        if "." in value:
            try:
                out.add(f"{float(value):g}")
            except ValueError:
                pass
    return out


def semantic_check(output: str, answer: str) -> str | None:
    """Why the final answer does not use the tool's output, or None when it does.

    The rule: an answer must repeat a number (or date) of the output when the output has one,
    and otherwise share at least two content words with it. A model judge can be layered on
    top where a capable backend is configured.
    """
    if not answer.strip():
        return "empty_answer"
    numbers = _numbers(output)
    if numbers:
        return None if numbers & _numbers(answer) else "answer_ignores_tool_numbers"
    out_words = {w for w in _WORD.findall(output.lower()) if len(w) > 3}
    ans_words = {w for w in _WORD.findall(answer.lower()) if len(w) > 3}
    return None if len(out_words & ans_words) >= 2 else "answer_ignores_tool_output"


class ToolAgent:
    """Runs and verifies the traces of a round."""

    def __init__(
        self,
        config: RunConfig,
        specs: dict[str, ToolSpec],
        tool_seeds: list[ToolSeed],
        sandbox: ToolSandbox,
    ) -> None:
        self.config = config
        self.specs = specs
        self.tool_seeds = tool_seeds
        self.sandbox = sandbox
        self.schema = call_schema(specs)
        self.target_schemas = {name: call_schema({name: spec}) for name, spec in specs.items()}

    def round_demos(self, rng: random.Random) -> list[ToolSeed]:
        """The worked examples shown in every agent prompt of a round."""
        return pick_demos(rng, self.tool_seeds, self.config.trace_demos)

    def run(
        self, traces: list[Trace], demos: list[ToolSeed], round_number: int, generate: Generate
    ) -> None:
        """Take every trace through its calls to an answer, or reject it where it fails."""
        c = self.config
        active = list(traces)
        for step in range(c.max_tool_steps + 1):
            if not active:
                break
            if step > 0:
                active = self._next_steps(active, demos, round_number, step, generate)
                if not active:
                    break
            calls = generate(
                "tool_call",
                [
                    self._request(
                        demos,
                        t,
                        "Call:",
                        SamplingParams(
                            temperature=0.0,
                            max_tokens=c.call_max_tokens,
                            stop=("\n",),
                            seed=request_seed(c.seed, round_number, f"call{step}", j),
                        ),
                        self._call_constraint(t),
                    )
                    for j, t in enumerate(active)
                ],
            )
            active = [
                t
                for t, (gen_index, comp) in zip(active, calls, strict=True)
                if self._call(t, gen_index, comp)
            ]

    def _call_constraint(self, trace: Trace) -> Constraint | None:
        """The grammar of the trace's next call: any tool's, or only its target tool's for the
        first call of a targeted request (`target_tools = "constrain"`)."""
        c = self.config
        if not c.constrain_calls:
            return None
        if c.target_tools == "constrain" and trace.target is not None and not trace.calls:
            return Constraint(json_schema=self.target_schemas[trace.target])
        return Constraint(json_schema=self.schema)

    def _next_steps(
        self,
        active: list[Trace],
        demos: list[ToolSeed],
        round_number: int,
        step: int,
        generate: Generate,
    ) -> list[Trace]:
        """After a result: another call, or the answer (forced at the step limit). Answers the
        traces that chose to answer; returns those that call again."""
        choices = ("Answer:",) if step >= self.config.max_tool_steps else ("Call:", "Answer:")
        nexts = generate(
            "tool_next",
            [
                self._request(
                    demos,
                    t,
                    "",
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=4,
                        seed=request_seed(self.config.seed, round_number, f"next{step}", j),
                    ),
                    Constraint(choices=choices),
                )
                for j, t in enumerate(active)
            ],
        )
        answering, calling = [], []
        for t, (gen_index, comp) in zip(active, nexts, strict=True):
            t.step_generation_indexes.append(gen_index)
            if comp.finish_reason == "error":
                t.reject(Stage.SEMANTIC, f"no_next_step: {comp.extra.get('error', '')}"[:200])
            elif comp.text.strip().startswith("Call"):
                calling.append(t)
            else:
                answering.append(t)
        self._answer(answering, demos, round_number, step, generate)
        return calling

    def _call(self, trace: Trace, gen_index: int, comp: Completion) -> bool:
        """Parse, validate and execute the call the model wrote; False when the trace failed."""
        trace.step_generation_indexes.append(gen_index)
        call, problem = parse_call(comp.text, comp.finish_reason, self.specs)
        if comp.finish_reason == "error":
            problem = f"call_not_generated: {comp.extra.get('error', '')}"[:200]
        if call is not None:
            problem = validate_arguments(self.specs[call.name], call.arguments)
            problem = f"invalid_arguments: {problem}" if problem else None
        if not trace.check(Stage.FORMAT, problem):
            return False
        assert call is not None
        if trace.target is not None and not trace.calls:
            if call.name != trace.target:
                # Kept in the trace (not run), so that stats count it under the tool it named.
                trace.calls.append(ToolCall(call.name, call.arguments, None, "not run"))
            off = f"off_target: written for {trace.target}, called {call.name}"
            if not trace.check(Stage.TARGET, None if call.name == trace.target else off):
                return False
        result = self.sandbox.call(call.name, call.arguments)
        trace.calls.append(
            ToolCall(
                call.name,
                call.arguments,
                result.output if result.ok else None,
                None if result.ok else result.error,
            )
        )
        return trace.check(Stage.EXECUTION, None if result.ok else f"tool_failed: {result.error}")

    def _answer(
        self,
        traces: list[Trace],
        demos: list[ToolSeed],
        round_number: int,
        step: int,
        generate: Generate,
    ) -> None:
        c = self.config
        answers = generate(
            "tool_answer",
            [
                self._request(
                    demos,
                    t,
                    "Answer:",
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=c.answer_max_tokens,
                        stop=("\n\n", "\nRequest:", "\nCall:"),
                        seed=request_seed(c.seed, round_number, f"answer{step}", j),
                    ),
                )
                for j, t in enumerate(traces)
            ],
        )
        for t, (gen_index, comp) in zip(traces, answers, strict=True):
            t.step_generation_indexes.append(gen_index)
            if comp.finish_reason == "error":
                t.reject(
                    Stage.SEMANTIC, f"answer_not_generated: {comp.extra.get('error', '')}"[:200]
                )
                continue
            # The answer is its first non-empty line (the model may open with a line break).
            lines = [line.strip() for line in comp.text.splitlines() if line.strip()]
            t.answer = lines[0] if lines else ""

    def _request(
        self,
        demos: list[ToolSeed],
        trace: Trace,
        closing: str,
        params: SamplingParams,
        constraint: Constraint | None = None,
    ) -> GenerationRequest:
        prompt = render_agent_prompt(
            self.config.language, self.specs, demos, trace.request, trace.calls
        )
        # render_agent_prompt ends with "Call:" before the first call and with "Result: ...\n"
        # after each; `closing` is what the model is asked to continue from.
        if trace.calls:
            prompt += closing
        # Tools and demonstrations are the same for every trace of the round: a shared prefix.
        return GenerationRequest(
            prompt=prompt,
            params=params,
            constraint=constraint,
            shared_prefix=shared_prefix(prompt, f"Request: {trace.request}"),
        )

    def check_answers(self, traces: list[Trace]) -> list[Trace]:
        """The semantic check of every answered trace; returns those that pass, in order."""
        passed = []
        for t in traces:
            if t.fate is Fate.REJECTED or t.answer is None:
                if t.fate is not Fate.REJECTED:
                    t.reject(Stage.SEMANTIC, "no_answer")
                continue
            if t.check(Stage.SEMANTIC, semantic_check(t.calls[-1].output or "", t.answer)):
                passed.append(t)
        return passed

    @staticmethod
    def keep(traces: list[Trace], still_needed: int) -> list[Trace]:
        """Keep the traces that passed every check, up to `still_needed` (the rest are
        surplus). Returns the traces kept."""
        kept = []
        for t in traces:
            if len(kept) >= still_needed:
                t.reject(Stage.VERIFIED, TARGET_REACHED)
                continue
            t.keep(Stage.VERIFIED)
            kept.append(t)
        return kept
