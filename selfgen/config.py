"""Run configuration: defaults (the paper's values), then a TOML file, then flags.

A run stores its configuration. Resuming a run reuses it; a setting that shapes the data may
not change on resume (see :data:`RESUMABLE`), while the stopping limits and machine settings may.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from selfgen.filters.rules import BLACKLIST_EN, BLACKLIST_ZH, RuleConfig


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the file or the flag."""


@dataclass
class RunConfig:
    # Where and with what.
    seeds: str = "seeds/seed_tasks.jsonl"
    language: str = "en"
    backend: str = "llamacpp"
    model: str | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    seed: int = 0
    # OpenAI-compatible servers (the API key is never part of the configuration).
    base_url: str | None = None
    api_model: str | None = None
    concurrency: int = 8
    server_flavour: str = "auto"
    api_mode: str = "auto"
    # The in-process vllm backend: --model is a Hugging Face id or folder, --ctx its max length.
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    # Where generation runs: this process, or workers on a Ray cluster (each with the backend).
    engine: str = "local"
    ray_address: str | None = None  # None starts a local Ray instance
    workers: int | None = None  # None: as many as the cluster has room for

    # Stopping: -n counts kept tasks (tasks with at least one instance).
    num_tasks: int = 100
    max_rounds: int | None = None
    token_budget: int | None = None
    patience: int = 20

    # Instruction generation (Self-Instruct: 6 human + 2 machine instructions, list of 16).
    prompts_per_round: int = 4
    seed_instructions: int = 6
    machine_instructions: int = 2
    list_length: int = 16
    temperature: float = 0.7
    top_p: float = 0.5
    max_tokens: int = 1024
    presence_penalty: float = 2.0
    frequency_penalty: float = 0.0

    # Filters.
    rouge_threshold: float = 0.7
    tokenizer: str | None = None  # "rouge" or "cjk"; None picks by language
    min_words: int = 4
    max_words: int = 150
    blacklist: list[str] | None = None  # None picks by language
    banned_prefixes: list[str] = field(default_factory=lambda: ["Write a program"])
    language_check: str | None = None  # "ascii_start", "cjk" or "none"; None picks by language

    # Classification identification and instance generation (greedy, as in the paper).
    classify_demos: int = 12
    constrain_classify: bool = True
    instance_demos: int = 3
    max_instances: int = 5
    instance_temperature: float = 0.0
    instance_max_tokens: int = 350
    instance_presence_penalty: float = 1.5

    # Tool-use traces (off unless --tools and --num-traces are given).
    tools: str | None = None
    tool_seeds: str = "seeds/tool_seed_tasks.jsonl"
    num_traces: int = 0
    trace_prompts_per_round: int = 2
    trace_demos: int = 4
    max_tool_steps: int = 3
    constrain_calls: bool = True
    call_max_tokens: int = 160
    answer_max_tokens: int = 100
    tool_timeout_s: float = 5.0
    tool_memory_mb: int = 512

    def rule_config(self) -> RuleConfig:
        zh = self.language == "zh"
        return RuleConfig(
            min_words=self.min_words,
            max_words=self.max_words,
            blacklist=list(
                self.blacklist
                if self.blacklist is not None
                else (BLACKLIST_ZH if zh else BLACKLIST_EN)
            ),
            banned_prefixes=list(self.banned_prefixes),
            language_check=self.language_check or ("cjk" if zh else "ascii_start"),
        )

    def tokenizer_name(self) -> str:
        return self.tokenizer or ("cjk" if self.language == "zh" else "rouge")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def need(cond: bool, flag: str, what: str) -> None:
            if not cond:
                raise ConfigError(f"--{flag.replace('_', '-')}: {what}")

        need(self.language in ("en", "zh"), "language", "must be 'en' or 'zh'")
        need(self.engine in ("local", "ray"), "engine", "must be 'local' or 'ray'")
        need(
            self.workers is None or (isinstance(self.workers, int) and self.workers >= 1),
            "workers",
            "must be a whole number, at least 1",
        )
        need(self.num_tasks >= 1, "num_tasks", "must be at least 1")
        need(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be at least 1")
        need(
            0 < self.gpu_memory_utilization <= 1,
            "gpu_memory_utilization",
            "must be above 0 and at most 1",
        )
        need(self.prompts_per_round >= 1, "prompts_per_round", "must be at least 1")
        need(self.seed_instructions >= 1, "seed_instructions", "must be at least 1")
        need(self.machine_instructions >= 0, "machine_instructions", "must be 0 or more")
        need(
            self.list_length > self.seed_instructions + self.machine_instructions,
            "list_length",
            "must exceed the number of instructions shown in the prompt",
        )
        need(0.0 <= self.rouge_threshold <= 1.0, "rouge_threshold", "must be in [0, 1]")
        need(self.tokenizer_name() in ("rouge", "cjk"), "tokenizer", "must be 'rouge' or 'cjk'")
        need(
            (self.language_check or "ascii_start") in ("ascii_start", "cjk", "none"),
            "language_check",
            "must be 'ascii_start', 'cjk' or 'none'",
        )
        need(0 < self.min_words <= self.max_words, "min_words", "must be in [1, max_words]")
        need(self.patience >= 1, "patience", "must be at least 1")
        need(self.max_instances >= 1, "max_instances", "must be at least 1")
        need(self.num_traces >= 0, "num_traces", "must be 0 or more")
        need(self.num_traces == 0 or self.tools is not None, "num_traces", "needs --tools DIR")
        need(self.max_tool_steps >= 1, "max_tool_steps", "must be at least 1")
        need(
            self.num_traces == 0 or self.language == "en",
            "num_traces",
            "tool-use traces have English prompts only; use --language en",
        )


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}

# Settings that may differ when a run is resumed: when to stop, and how to run the machine.
RESUMABLE = {
    "num_tasks",
    "num_traces",
    "max_rounds",
    "token_budget",
    "patience",
    "n_threads",
    "n_ctx",
    "tool_timeout_s",
    "tool_memory_mb",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "concurrency",
    # Where requests run never changes an answer: each carries its own seed (and a server moved
    # to another address serves the same model).
    "base_url",
    "engine",
    "ray_address",
    "workers",
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a run.toml: top-level keys are RunConfig fields; an optional [run] table too."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    if isinstance(data.get("run"), dict):
        data = {**{k: v for k, v in data.items() if k != "run"}, **data["run"]}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return data


def build_config(base: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """Defaults, then `base`, then the non-None `overrides`; validated."""
    values = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        config = RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration ({exc})") from None
    for name, value in values.items():
        default = FIELDS[name].default
        if default is not None and default is not dataclasses.MISSING and value is not None:
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ConfigError(f"setting '{name}' must be true or false")
            if isinstance(default, int | float) and not isinstance(value, int | float):
                raise ConfigError(f"setting '{name}' must be a number")
    config.validate()
    return config


def conflicts(stored: RunConfig, requested: dict[str, Any]) -> list[str]:
    """Settings in `requested` (non-None) that differ from a stored run's and may not."""
    out = []
    for name, value in requested.items():
        if value is None or name in RESUMABLE:
            continue
        if getattr(stored, name) != value:
            out.append(
                f"--{name.replace('_', '-')} {value!r} (this run has {getattr(stored, name)!r})"
            )
    return out
