"""Step 6: tool-use traces. Prompts, parsing and verification; no tool is run here.

A trace is a user request, the assistant's tool call(s) with their real outputs, and the final
answer. The agent loop that runs it lives in selfgen.loop; this module renders its prompts,
parses what the model wrote, and verifies the result stage by stage (after APIGen):
format (the call parses, names a known tool, and its arguments validate), execution (the tool
ran without error within its limits) and semantic (the final answer uses the tool's output).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from selfgen.prompts import load_prompt
from selfgen.records import ToolCall, ToolSeed


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


def call_schema(specs: dict[str, Any]) -> dict[str, Any]:
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


def tool_list(specs: dict[str, Any]) -> str:
    return "\n".join(
        json.dumps({"name": s.name, "description": s.description, "parameters": s.parameters})
        for _, s in sorted(specs.items())
    )


def render_request_prompt(language: str, specs: dict[str, Any], requests: list[str]) -> str:
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(requests, start=1))
    names = "\n".join(f"- {s.name}: {s.description}" for _, s in sorted(specs.items()))
    return load_prompt(language, "tool_requests").format(
        tools=names, numbered_requests=numbered, next_number=len(requests) + 1
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
    specs: dict[str, Any],
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
    text: str, finish_reason: str, specs: dict[str, Any]
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
