"""The tool agent in the model's own format: chat messages with `tools`, native tool calls.

The text protocol of :mod:`selfgen.stages.tool_agent` ("Call: {json}" after worked examples) is
what a completion-only model such as the embedded default can follow. A chat model served with
tool support has a format of its own, learned in training and written by its chat template
(Hermes `<tool_call>` tags, Llama's `<|python_tag|>`, Mistral's `[TOOL_CALLS]`...). With
`tool_protocol = "native"` the agent asks it for calls in that format: each step sends the
conversation so far as chat messages with the tools, the backend renders them through the chat
template and returns the calls the server (or selfgen's Hermes parser) found. So the traces
look like what that model family writes, and a server that constrains decoding constrains the
arguments to the tool's schema.

The worked examples become earlier turns of the conversation (a user request, the assistant's
calls, the tool results, its answer), the request comes last. The first step asks for a call:
of the request's target tool by name where `target_tools = "constrain"` (`tool_choice` naming
it), else `"auto"`; an answer without a call fails the format check. After a result the model
calls again or answers; at the step limit `tool_choice` is `"none"`. Calls are then validated,
checked against the target, executed and verified exactly as text-protocol calls are (the same
:meth:`ToolAgent.run_calls` and :meth:`ToolAgent.check_answers`).

Backends: an OpenAI-compatible server passes `tools` and `tool_choice` on (tested with
`python -m llama_cpp.server --chat_format chatml-function-calling`); the embedded llama.cpp
renders the tools through the GGUF's chat template and reads Hermes-style calls from the text;
vLLM's offline `chat` renders the tools but takes no `tool_choice` (a call of another tool is
then caught by the target check).
"""

from __future__ import annotations

import json
from typing import Any

from selfgen.backends.base import GenerationRequest, SamplingParams
from selfgen.records import Stage, ToolCall, ToolSeed, Trace
from selfgen.stages import request_seed
from selfgen.stages.tool_agent import Generate, ToolAgent
from selfgen.tooling import ToolSpec


def parse_native_calls(
    raw: list[dict[str, Any]], errors: list[str], specs: dict[str, ToolSpec]
) -> tuple[list[ToolCall], str | None]:
    """One assistant turn's calls, as the backend found them, or the format failure. Calls
    after the first in the turn are parallel calls."""
    if errors:
        return [], f"unparsed_call: {errors[0]}"[:200]
    calls = []
    for n, item in enumerate(raw, start=1):
        where = f"call {n}: " if len(raw) > 1 else ""
        name, arguments = item.get("name"), item.get("arguments")
        if not isinstance(name, str) or not name:
            return [], f"{where}no_tool_name"
        if name not in specs:
            return [], f"{where}unknown_tool:{name[:40]}"
        if not isinstance(arguments, dict):
            return [], f"{where}arguments_not_an_object"
        calls.append(ToolCall(name, arguments, parallel=n > 1))
    keys = {json.dumps([c.name, c.arguments], sort_keys=True) for c in calls}
    if len(keys) < len(calls):
        return [], "duplicate_calls"
    return calls, None


def demo_messages(demos: list[ToolSeed]) -> list[dict[str, Any]]:
    """Worked examples as earlier turns of one conversation, each call with its own id."""
    out: list[dict[str, Any]] = []
    for k, seed in enumerate(demos):
        trace = Trace(
            request=seed.request, generation_index=-1, calls=list(seed.calls), answer=seed.answer
        )
        for m in trace.messages():
            m = dict(m)
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "id": f"example{k}_{c['id']}"} for c in m["tool_calls"]]
            if m["role"] == "tool":
                m["tool_call_id"] = f"example{k}_{m['tool_call_id']}"
            out.append(m)
    return out


def request_messages(messages: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Messages as servers take them: an assistant turn of calls has empty content rather
    than null (OpenAI takes either; llama_cpp.server refuses null)."""
    return tuple(
        {**m, "content": ""} if m["role"] == "assistant" and m.get("content") is None else m
        for m in messages
    )


class NativeToolAgent(ToolAgent):
    """Runs a round's traces through the model's own tool-calling format."""

    def tools(self) -> tuple[dict[str, Any], ...]:
        return tuple(spec.openai() for _, spec in sorted(self.specs.items()))

    def tool_choice(self, trace: Trace, step: int) -> str | dict[str, Any]:
        if step >= self.config.max_tool_steps:
            return "none"
        if step == 0 and self.config.target_tools == "constrain" and trace.target is not None:
            return {"type": "function", "function": {"name": trace.target}}
        return "auto"

    def run(
        self,
        traces: list[Trace],
        demos: dict[str, list[ToolSeed]],
        round_number: int,
        generate: Generate,
    ) -> None:
        c = self.config
        tools = self.tools()
        active = list(traces)
        for step in range(c.max_tool_steps + 1):
            if not active:
                break
            replies = generate(
                "tool_chat",
                [
                    GenerationRequest(
                        messages=request_messages(demo_messages(demos[t.kind]) + t.messages()),
                        tools=tools,
                        tool_choice=self.tool_choice(t, step),
                        params=SamplingParams(
                            temperature=0.0,
                            max_tokens=max(c.call_max_tokens, c.answer_max_tokens),
                            seed=request_seed(c.seed, round_number, f"chat{step}", j),
                        ),
                    )
                    for j, t in enumerate(active)
                ],
            )
            calling = []
            for t, (gen_index, comp) in zip(active, replies, strict=True):
                t.step_generation_indexes.append(gen_index)
                if comp.finish_reason == "error":
                    stage = Stage.SEMANTIC if t.calls else Stage.FORMAT
                    t.reject(stage, f"not_generated: {comp.extra.get('error', '')}"[:200])
                    continue
                raw = comp.extra.get("tool_calls") or []
                if not raw and not comp.extra.get("tool_call_errors"):
                    if not t.calls:
                        t.check(Stage.FORMAT, "no_call: answered without calling a tool")
                    else:
                        t.answer = comp.text.strip()
                    continue
                if t.calls and step >= c.max_tool_steps:
                    t.reject(Stage.SEMANTIC, "no_answer: still calling at the step limit")
                    continue
                calls, problem = parse_native_calls(
                    raw, comp.extra.get("tool_call_errors") or [], self.specs
                )
                if comp.finish_reason == "length" and problem is None:
                    problem = "cut_off"
                if problem is None and t.kind == "parallel" and not t.calls and len(calls) < 2:
                    problem = "not_parallel: one turn needs at least two calls"
                if self.run_calls(t, calls, problem):
                    calling.append(t)
            active = calling
