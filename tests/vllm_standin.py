"""A scripted stand-in for the parts of vLLM that selfgen calls, for unit tests of control flow.

It is a fake: it knows vLLM's API only as far as selfgen's code uses it, and it behaves like
vLLM only where a test says so (a whole batch refused when one prompt is too long, as vLLM does).
It never proves that selfgen fits vLLM; tests/test_vllm_contract.py does that, with vLLM itself.

`install(monkeypatch)` puts the modules in `sys.modules` for one test and returns them.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class VLLMClientError(Exception):
    pass


class VLLMValidationError(VLLMClientError):
    pass


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class StructuredOutputsParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class CharTokenizer:
    """One token per character; the BOS (1) added to text prompts, as Llama-style ones do."""

    bos_token_id = 1

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, tools=None):
        assert tokenize is False and add_generation_prompt is True
        head = f"<tools>{len(tools)}</tools>" if tools else ""
        return head + "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@dataclass
class Output:
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[Output]


@dataclass
class Call:
    kind: str  # "generate" or "chat"
    inputs: list[Any]
    params: Any
    kwargs: dict[str, Any]


@dataclass
class LLM:
    """`reply(input) -> (text, finish_reason)`; `limit` is the context vLLM enforces (it may
    differ from what selfgen counts, to test the fallback); `fail` raises from the next call."""

    reply: Callable[[Any], tuple[str, str | None]] = lambda _: ("ok", "stop")
    max_model_len: int = 64
    limit: int | None = None
    fail: BaseException | None = None
    calls: list[Call] = field(default_factory=list)
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)

    @property
    def model_config(self) -> Any:
        return types.SimpleNamespace(max_model_len=self.max_model_len)

    def get_tokenizer(self) -> CharTokenizer:
        return self.tokenizer

    def generate(self, prompts, params, *, use_tqdm=True, **kwargs):
        ids = [
            self.tokenizer.encode(
                p, kwargs.get("tokenization_kwargs", {}).get("add_special_tokens", True)
            )
            for p in prompts
        ]
        return self._answer("generate", prompts, ids, params, kwargs)

    def chat(self, conversations, params, use_tqdm=True, tools=None, **kwargs):
        ids = [
            self.tokenizer.encode(
                self.tokenizer.apply_chat_template(c, False, True, tools=tools), False
            )
            for c in conversations
        ]
        return self._answer("chat", conversations, ids, params, {"tools": tools, **kwargs})

    def _answer(self, kind, inputs, ids, params, kwargs):
        self.calls.append(Call(kind, list(inputs), params, kwargs))
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        limit = self.limit or self.max_model_len
        for tokens in ids:  # vLLM checks every prompt before it runs any
            if len(tokens) >= limit:
                raise VLLMValidationError(
                    f"This model's maximum context length is {limit} tokens. However, your"
                    f" prompt contains at least {len(tokens)} input tokens"
                )
        out = []
        for item, tokens in zip(inputs, ids, strict=True):
            text, finish = self.reply(item)
            out.append(RequestOutput(tokens, [Output(text, [0] * len(text), finish)]))
        return out


def install(monkeypatch, *, platform_unspecified: bool = False) -> types.ModuleType:
    """Make `import vllm` (and the submodules selfgen imports) find the stand-in."""
    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    vllm.SamplingParams = SamplingParams
    modules = {
        "vllm": vllm,
        "vllm.sampling_params": types.ModuleType("vllm.sampling_params"),
        "vllm.exceptions": types.ModuleType("vllm.exceptions"),
        "vllm.inputs": types.ModuleType("vllm.inputs"),
        "vllm.lora": types.ModuleType("vllm.lora"),
        "vllm.lora.request": types.ModuleType("vllm.lora.request"),
        "vllm.platforms": types.ModuleType("vllm.platforms"),
    }
    modules["vllm.sampling_params"].StructuredOutputsParams = StructuredOutputsParams
    modules["vllm.exceptions"].VLLMClientError = VLLMClientError
    modules["vllm.exceptions"].VLLMValidationError = VLLMValidationError
    modules["vllm.inputs"].TokensPrompt = dict
    modules["vllm.lora.request"].LoRARequest = LoRARequest
    modules["vllm.platforms"].current_platform = types.SimpleNamespace(
        is_unspecified=lambda: platform_unspecified
    )
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return vllm
