"""Reading an `openai`-format export and turning each row into token ids and labels.

Rows are ``{"messages": [...], "tools": [...]}`` as `selfgen export --format openai` writes them
(``tools`` and assistant ``tool_calls`` only for tool-use traces). Every defect is reported with
``file:line`` before any model is loaded.

The loss covers the assistant turns only. TRL's ``assistant_only_loss`` needs a chat template with
``{% generation %}`` markers, which SmolLM2's (and most models') lacks and TRL has no patched copy
of, so the labels are built here for any template: each assistant turn is the text between the
conversation rendered up to the turn's generation prompt and the conversation rendered through
the turn, and a token is trained when its characters fall in such a span (the end-of-turn token
included, so the model learns to stop). SFTTrainer takes the ready ``input_ids``/``labels``.

Tools are rendered by the model's chat template when it renders tool schemas, calls and
results; otherwise by the fallback below, in the Hermes style that many tool-calling models use:
the schemas go in the system turn, calls become ``<tool_call>`` JSON in the assistant turn, and
results come back in a user turn inside ``<tool_response>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfgen.io import read_jsonl
from selfgen.tune import TuneDataError, TuneError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant", "tool")

FALLBACK_TOOL_PROMPT = (
    "You can call these tools. To call one, write only\n"
    "<tool_call>\n"
    '{{"name": "TOOL NAME", "arguments": {{...}}}}\n'
    "</tool_call>\n"
    "and its result comes back inside <tool_response></tool_response>.\n"
    "<tools>\n"
    "{schemas}\n"
    "</tools>"
)


@dataclass(frozen=True)
class ChatExample:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    where: str  # file:line, for messages about this row


@dataclass(frozen=True)
class ChatFile:
    examples: list[ChatExample]
    unverified: int  # rows marked "selfgen": {"verified": false}, left out


def load_chat_file(path: str | Path) -> ChatFile:
    """Read and check every row of an `openai`-format JSONL file, or raise :class:`TuneError`."""
    examples, unverified = [], 0
    for where, row in read_jsonl(path, what="data file", holds="usable rows", error=TuneDataError):
        _check_row(row, where)
        if row.get("selfgen", {}).get("verified") is False:
            unverified += 1
            continue
        examples.append(ChatExample(row["messages"], row.get("tools"), where))
    if not examples:
        raise TuneDataError(f"{path}:1: the data file holds no usable rows")
    return ChatFile(examples, unverified)


def _check_row(row: dict[str, Any], where: str) -> None:
    if "messages" not in row:
        hint = ""
        if "instruction" in row or "conversations" in row:
            hint = " (this looks like the alpaca or sharegpt format: export with --format openai)"
        raise TuneDataError(f"{where}: missing field 'messages'{hint}")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise TuneDataError(f"{where}: 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        _check_message(message, f"{where}: messages[{i}]")
    if not any(m["role"] == "assistant" for m in messages):
        raise TuneDataError(f"{where}: no assistant message to learn from")
    if messages[0]["role"] not in ("system", "user"):
        raise TuneDataError(f"{where}: the conversation must start with a system or user message")
    tools = row.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and t["function"].get("name")
            for t in tools
        ):
            raise TuneDataError(
                f"{where}: 'tools' must be a list of {{'type': 'function', 'function': ...}}"
            )


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise TuneDataError(f"{where}: must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        raise TuneDataError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    content = message.get("content")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or not calls:
            raise TuneDataError(
                f"{where}: 'tool_calls' must be a non-empty list on an assistant message"
            )
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise TuneDataError(f"{where}: tool_calls[{j}] needs function.name")
            _arguments(fn.get("arguments"), f"{where}: tool_calls[{j}]")
    if not isinstance(content, str) and not (content is None and calls):
        raise TuneDataError(f"{where}: 'content' must be a string")


def _arguments(value: Any, where: str) -> dict[str, Any]:
    """Call arguments as an object (the export writes them as a JSON string, as OpenAI does)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TuneDataError(f"{where}: function.arguments is not valid JSON") from None
    if not isinstance(value, dict):
        raise TuneDataError(f"{where}: function.arguments must be a JSON object")
    return value


def split_rows(
    examples: list[ChatExample], fraction: float, seed: int
) -> tuple[list[ChatExample], list[ChatExample]]:
    """Hold out a seeded `fraction` of the rows (at least one) for the validation loss."""
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(examples) * fraction))])
    if len(held) >= len(examples):
        raise TuneError("--valid-split: leaves no rows to train on")
    return (
        [e for i, e in enumerate(examples) if i not in held],
        [e for i, e in enumerate(examples) if i in held],
    )


def template_renders_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template shows tool schemas, calls and results."""
    sentinels = ("schema_f3a1", "call_b7c2", "argument_9d4e", "result_5e6f")
    tools = [{"type": "function", "function": {"name": sentinels[0], "parameters": {}}}]
    calls = [
        {"type": "function", "function": {"name": sentinels[1], "arguments": {"x": sentinels[2]}}}
    ]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "name": sentinels[1], "content": sentinels[3]},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception:  # a template that cannot render tools fails in its own way
        return False
    return all(s in text for s in sentinels)


def template_messages(
    example: ChatExample, native_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and tools) to give the chat template for one row."""
    if native_tools:
        messages = []
        for m in example.messages:
            if m.get("tool_calls"):
                calls = [_call_with_object(c, example.where) for c in m["tool_calls"]]
                m = {**m, "content": m.get("content") or "", "tool_calls": calls}
            messages.append(m)
        return messages, example.tools
    return fallback_messages(example), None


def _call_with_object(call: dict[str, Any], where: str) -> dict[str, Any]:
    fn = call["function"]
    return {**call, "function": {**fn, "arguments": _arguments(fn["arguments"], where)}}


def fallback_messages(example: ChatExample) -> list[dict[str, Any]]:
    """Tools as plain text for a template without tool support (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    for m in example.messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                "<tool_call>\n"
                + json.dumps(
                    {
                        "name": c["function"]["name"],
                        "arguments": _arguments(c["function"]["arguments"], example.where),
                    },
                    ensure_ascii=False,
                )
                + "\n</tool_call>"
                for c in m["tool_calls"]
            ]
            text = "\n".join(([m["content"]] if m.get("content") else []) + calls)
            messages.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            content = f"<tool_response>\n{m['content']}\n</tool_response>"
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": m["role"], "content": m["content"]})
    if example.tools:
        schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in example.tools)
        prompt = FALLBACK_TOOL_PROMPT.format(schemas=schemas)
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    where: str,
) -> dict[str, list[int]]:
    """Token ids of the whole conversation, and labels that keep only the assistant turns."""
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:i], tools=tools, tokenize=False, add_generation_prompt=True
        )
        through = tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False)
        if not (
            full.startswith(before) and full.startswith(through) and len(through) > len(before)
        ):
            raise TuneError(
                f"{where}: the model's chat template renders a conversation differently from its "
                "beginning, so the assistant turns cannot be told apart for the loss"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= lo < end for start, end in spans) else -100
        for token, (lo, _hi) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]
    return {"input_ids": list(encoded["input_ids"]), "labels": labels}
