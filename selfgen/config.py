"""Run configuration: defaults (the paper's values), then a TOML file, then flags.

Every setting is declared once, as a field of :class:`RunConfig` made with :func:`setting`: its
default, its help, its flag (or none: a TOML-only setting), whether it may change when a run is
resumed and whether it is a backend option. The command line derives its options, their help
and the defaults it shows from these fields, as TRL's ``HfArgumentParser`` does from
``metadata={"help": ...}``.

A run stores its configuration. Resuming a run reuses it; a setting that shapes the data may
not change on resume, while the stopping limits and machine settings (``resumable``) may.

The TOML loader (:func:`load_toml`), the layered builder (:func:`build`) and the resume check
(:func:`changed_settings`) take the configuration class, so `selfgen tune` uses them too.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from selfgen.filters.rules import RuleConfig
    from selfgen.scoring.select import ScoreCondition


class ConfigError(ValueError):
    """A configuration the user must fix.

    The error speaks of the value: `field` names the setting and `source` the file it was read
    from, when known. The command line names the flag instead when the value came from one.
    """

    def __init__(
        self, problem: str, *, field: str | None = None, source: str | Path | None = None
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.field = field
        self.source = source

    def __str__(self) -> str:
        parts = [str(self.source)] if self.source is not None else []
        if self.field is not None:
            parts.append(f"setting '{self.field}'")
        return ": ".join([*parts, self.problem])


def setting(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    short: str | None = None,
    toml_only: bool = False,
    default_text: str | None = None,
    path: bool = False,
    resumable: bool = False,
    backend_option: bool = False,
) -> Any:
    """A configuration field: a dataclasses.field whose metadata says how it is set.

    `flag` defaults to the name with dashes (`num_tasks`: `--num-tasks`); `short` adds a
    one-letter form; `toml_only` gives the setting no flag. `default_text` is shown in the
    help instead of the default (for a None that means something). A `path` flag takes a path,
    stored as text. A `resumable` setting may change when a run is resumed. A `backend_option`
    is handed to the backend under the same name, when it is set (not None).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "short": short,
        "toml_only": toml_only,
        "default_text": default_text,
        "path": path,
        "resumable": resumable,
        "backend_option": backend_option,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag_of(field: dataclasses.Field[Any]) -> str | None:
    """The long flag of a setting (`--num-tasks`), or None for a TOML-only one."""
    if field.metadata.get("toml_only", True):
        return None
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def default_of(field: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one where it has a factory)."""
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None if field.default is MISSING else field.default


# The shapes of tool-use trace a run can generate (trace_kinds).
TRACE_KINDS = ("single", "parallel", "multiturn")


@dataclass
class RunConfig:
    # Where and with what.
    seeds: str = setting(
        "seeds/seed_tasks.jsonl", path=True, help="Seed tasks, JSONL in the Self-Instruct format."
    )
    language: str = setting("en", help="en or zh.")
    backend: str = setting("llamacpp", help="Backend name (see `selfgen backends`).")
    # Backend options: None leaves the backend's own default (see `selfgen backends`).
    model: str | None = setting(
        None,
        backend_option=True,
        default_text="bundled SmolLM2-135M",
        help="Model for the backend (a .gguf for llamacpp, a Hugging Face id or folder for vllm).",
    )
    n_ctx: int | None = setting(
        None, flag="--ctx", backend_option=True, resumable=True, help="Context size."
    )
    n_threads: int | None = setting(
        None,
        flag="--threads",
        backend_option=True,
        resumable=True,
        default_text="all cores",
        help="CPU threads for llama.cpp.",
    )
    seed: int = setting(0, backend_option=True, help="Run seed.")
    # OpenAI-compatible servers (the API key is never part of the configuration). Where
    # requests run never changes an answer: each carries its own seed (and a server moved to
    # another address serves the same model).
    base_url: str | None = setting(
        None,
        backend_option=True,
        resumable=True,
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.",
    )
    api_model: str | None = setting(
        None,
        backend_option=True,
        default_text="the first listed",
        help="Model name on the server.",
    )
    concurrency: int | None = setting(
        None, backend_option=True, resumable=True, help="Requests in flight to a server."
    )
    server_flavour: str | None = setting(
        None,
        backend_option=True,
        help="How the server takes constraints: auto, llamacpp, vllm, openai, none.",
    )
    api_mode: str | None = setting(None, backend_option=True, help="auto, completions or chat.")
    # The in-process vllm backend: --model is a Hugging Face id or folder, --ctx its max length.
    tensor_parallel_size: int | None = setting(
        None,
        backend_option=True,
        resumable=True,
        help="vllm: GPUs per model (tensor parallel).",
    )
    gpu_memory_utilization: float | None = setting(
        None, backend_option=True, resumable=True, help="vllm: share of GPU memory to use."
    )
    dtype: str | None = setting(
        None, backend_option=True, help="vllm: auto, bfloat16, float16 or float32."
    )
    # Where generation runs: this process, or workers on a Ray cluster (each with the backend).
    engine: str = setting("local", resumable=True, help="local, or ray: generation on Ray workers.")
    ray_address: str | None = setting(
        None,
        resumable=True,
        default_text="start a local Ray",
        help="Ray cluster (auto, HOST:6379).",
    )
    workers: int | None = setting(
        None,
        resumable=True,
        default_text="as many as fit",
        help="Ray workers, each with its own backend.",
    )

    # Stopping: -n counts kept tasks (tasks with at least one instance).
    num_tasks: int = setting(100, short="-n", resumable=True, help="Stop at this many kept tasks.")
    max_rounds: int | None = setting(None, resumable=True, help="Stop after this many rounds.")
    token_budget: int | None = setting(
        None, resumable=True, help="Stop after this many tokens in all."
    )
    patience: int = setting(
        20, resumable=True, help="Stop after this many rounds in a row keep nothing."
    )

    # Instruction generation (Self-Instruct: 6 human + 2 machine instructions, list of 16).
    prompts_per_round: int = setting(4, help="Instruction-generation prompts per round.")
    seed_instructions: int = setting(6, help="Human seed instructions per prompt.")
    machine_instructions: int = setting(2, help="Machine instructions per prompt.")
    list_length: int = setting(
        16, toml_only=True, help="Length of the numbered task list a prompt asks to continue."
    )
    temperature: float = setting(0.7, help="Instruction sampling temperature.")
    top_p: float = setting(0.5, help="Instruction sampling top-p.")
    max_tokens: int = setting(
        1024, toml_only=True, help="Most tokens of an instruction-generation answer."
    )
    presence_penalty: float = setting(
        2.0, toml_only=True, help="Presence penalty of instruction sampling."
    )
    frequency_penalty: float = setting(
        0.0, toml_only=True, help="Frequency penalty of instruction sampling."
    )

    # Filters.
    rouge_threshold: float = setting(
        0.7, help="Reject when ROUGE-L F against the pool exceeds this."
    )
    novelty_workers: int = setting(
        1,
        resumable=True,
        help="Processes for the ROUGE-L check (same decisions; pays for pools of 100K texts and"
        " more, where the backend leaves cores free).",
    )
    tokenizer: str | None = setting(
        None, toml_only=True, default_text="by language", help="ROUGE-L tokens: rouge or cjk."
    )
    min_words: int = setting(4, help="Fewest words in an instruction.")
    max_words: int = setting(150, help="Most words in an instruction.")
    blacklist: list[str] | None = setting(
        None,
        toml_only=True,
        default_text="by language",
        help="Words that reject an instruction that contains one.",
    )
    banned_prefixes: list[str] = setting(
        default_factory=lambda: ["Write a program"],
        toml_only=True,
        help="Beginnings that reject an instruction.",
    )
    language_check: str | None = setting(
        None, default_text="by --language", help="ascii_start, cjk or none."
    )

    # Classification identification and instance generation (greedy, as in the paper).
    classify_demos: int = setting(
        12, toml_only=True, help="Seed tasks shown when asking whether a task is classification."
    )
    constrain_classify: bool = setting(
        True, toml_only=True, help="Constrain the classification answer to its choices."
    )
    instance_demos: int = setting(
        3, toml_only=True, help="Seed tasks shown when asking for a task's instances."
    )
    max_instances: int = setting(5, toml_only=True, help="Most instances kept per task.")
    instance_temperature: float = setting(
        0.0, toml_only=True, help="Instance sampling temperature."
    )
    instance_max_tokens: int = setting(
        350, toml_only=True, help="Most tokens of an instance-generation answer."
    )
    instance_presence_penalty: float = setting(
        1.5, toml_only=True, help="Presence penalty of instance sampling."
    )

    # Tool-use traces (off unless --tools and --num-traces are given).
    tools: str | None = setting(
        None, path=True, help="Folder of langchain-core tool modules (e.g. tools/)."
    )
    tool_seeds: str | None = setting(
        None,
        path=True,
        default_text="seeds/tool_seed_tasks.jsonl (_zh.jsonl for zh)",
        help="Worked tool-use examples.",
    )
    mcp_config: str | None = setting(
        None,
        path=True,
        help="An mcpServers JSON file (stdio and streamable HTTP servers): use their tools too.",
    )
    trace_kinds: str = setting(
        "single",
        help="Kinds of trace, comma-separated: single (one call a turn), parallel (several"
        " independent calls in one turn), multiturn (the user follows up: two to four user"
        " turns).",
    )
    parallel_tool_seeds: str | None = setting(
        None,
        path=True,
        default_text="seeds/tool_seed_tasks_parallel.jsonl (_parallel_zh.jsonl for zh)",
        help="Worked examples of parallel calls (trace kind parallel).",
    )
    multiturn_tool_seeds: str | None = setting(
        None,
        path=True,
        default_text="seeds/tool_seed_tasks_multiturn.jsonl (_multiturn_zh.jsonl for zh)",
        help="Worked multi-turn conversations with tools (trace kind multiturn).",
    )
    num_traces: int = setting(
        0, resumable=True, help="Also stop only when this many traces are verified."
    )
    trace_prompts_per_round: int = setting(
        2, toml_only=True, help="Tool-request generation prompts per round."
    )
    target_tools: str = setting(
        "constrain",
        toml_only=True,
        help="Write each tool request for one named tool: 'constrain' (its first call is"
        " constrained to that tool where calls are constrained), 'check' (the model chooses"
        " among all the tools and a trace that calls another first is rejected) or 'off'"
        " (one list under all the tools).",
    )
    tool_protocol: str = setting(
        "text",
        help="How the model is asked for tool calls: 'text' (worked examples and 'Call: {json}',"
        " for completion models such as the embedded default) or 'native' (chat messages with"
        " the tools, calls in the model's own format, for chat models served with tool support).",
    )
    ground_calls: bool = setting(
        True,
        toml_only=True,
        help="Reject a trace whose call arguments (dates, numbers, words) are not in its request"
        " or an earlier result.",
    )
    trace_demos: int = setting(4, toml_only=True, help="Worked tool-use examples shown per trace.")
    max_tool_steps: int = setting(3, toml_only=True, help="Most tool calls in a trace.")
    constrain_calls: bool = setting(
        True, toml_only=True, help="Constrain tool calls to the tools' argument schemas."
    )
    call_max_tokens: int = setting(160, toml_only=True, help="Most tokens of a tool call.")
    answer_max_tokens: int = setting(
        100, toml_only=True, help="Most tokens of a trace's final answer."
    )
    tool_timeout_s: float = setting(
        5.0, toml_only=True, resumable=True, help="Seconds before a tool call is killed."
    )
    tool_memory_mb: int = setting(
        512, toml_only=True, resumable=True, help="Memory a tool call may allocate, MiB."
    )

    # Quality scores inside the loop (off unless --score is given).
    score: str | None = setting(
        None, help="Score kept tasks in the loop with these scorers, e.g. ifd,judge."
    )
    min_score: str | None = setting(
        None, help="Reject a task whose mean score fails this, e.g. 'judge>=4' (comma-separated)."
    )
    max_score: str | None = setting(
        None, help="Reject a task whose mean score fails this, e.g. 'ifd<1' (comma-separated)."
    )
    judge_backend: str | None = setting(
        None, help="Backend of the judge scorer.", default_text="the run's backend"
    )
    judge_model: str | None = setting(None, help="Model of the judge scorer's backend.")
    judge_base_url: str | None = setting(
        None, resumable=True, help="Server of the judge scorer's openai backend."
    )
    judge_api_model: str | None = setting(None, help="Model name on the judge's server.")

    def score_conditions(self) -> list[ScoreCondition]:
        """The --min-score and --max-score conditions (ValueError when one does not parse)."""
        from selfgen.scoring.select import ScoreCondition

        out = []
        for text, minimum in ((self.min_score, True), (self.max_score, False)):
            for part in (text or "").split(","):
                if part.strip():
                    out.append(ScoreCondition.parse(part, minimum=minimum))
        return out

    def trace_kind_list(self) -> list[str]:
        """The kinds of trace to generate, in the order given."""
        return [k.strip() for k in self.trace_kinds.split(",") if k.strip()]

    def tool_seed_files(self) -> dict[str, str]:
        """The tool seed file of each kind of trace (by language where not given)."""
        suffix = "_zh" if self.language == "zh" else ""
        out = {}
        # A multi-turn trace's first turn is made as a single trace is, from its seeds.
        if {"single", "multiturn"} & set(self.trace_kind_list()):
            out["single"] = self.tool_seeds or f"seeds/tool_seed_tasks{suffix}.jsonl"
        if "parallel" in self.trace_kind_list():
            out["parallel"] = (
                self.parallel_tool_seeds or f"seeds/tool_seed_tasks_parallel{suffix}.jsonl"
            )
        if "multiturn" in self.trace_kind_list():
            out["multiturn"] = (
                self.multiturn_tool_seeds or f"seeds/tool_seed_tasks_multiturn{suffix}.jsonl"
            )
        return out

    def scorer_names(self) -> list[str]:
        return [n.strip() for n in (self.score or "").split(",") if n.strip()]

    def rule_config(self) -> RuleConfig:
        # Imported here: the command line reads this module to build its options.
        from selfgen.filters.rules import BLACKLIST_EN, BLACKLIST_ZH, RuleConfig

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

    def backend_options(self) -> dict[str, Any]:
        """The backend options that are set: the others are left to the backend's defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata["backend_option"] and getattr(self, f.name) is not None
        }

    def validate(self) -> None:
        def need(cond: bool, field: str, problem: str) -> None:
            if not cond:
                raise ConfigError(problem, field=field)

        need(self.language in ("en", "zh"), "language", "must be 'en' or 'zh'")
        need(
            self.tool_protocol in ("text", "native"),
            "tool_protocol",
            f"must be 'text' or 'native', not '{self.tool_protocol}'",
        )
        need(
            self.target_tools in ("constrain", "check", "off"),
            "target_tools",
            "must be 'constrain', 'check' or 'off'",
        )
        need(self.engine in ("local", "ray"), "engine", "must be 'local' or 'ray'")
        need(self.workers is None or self.workers >= 1, "workers", "must be at least 1")
        need(self.num_tasks >= 1, "num_tasks", "must be at least 1")
        need(
            self.tensor_parallel_size is None or self.tensor_parallel_size >= 1,
            "tensor_parallel_size",
            "must be at least 1",
        )
        need(
            self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
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
        # The OpenAI API's ranges, which vLLM enforces too: outside them every request of the
        # stage would fail, and only once the model is loaded.
        for name in ("temperature", "instance_temperature"):
            need(0.0 <= getattr(self, name) <= 2.0, name, "must be in [0, 2]")
        need(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        for name in ("presence_penalty", "frequency_penalty", "instance_presence_penalty"):
            need(-2.0 <= getattr(self, name) <= 2.0, name, "must be in [-2, 2]")
        for name in ("max_tokens", "instance_max_tokens", "call_max_tokens", "answer_max_tokens"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        need(0.0 <= self.rouge_threshold <= 1.0, "rouge_threshold", "must be in [0, 1]")
        need(self.novelty_workers >= 1, "novelty_workers", "must be at least 1")
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
        need(
            self.num_traces == 0 or self.tools is not None or self.mcp_config is not None,
            "num_traces",
            "needs a folder of tools (the tools setting) or MCP servers (mcp_config)",
        )
        need(self.max_tool_steps >= 1, "max_tool_steps", "must be at least 1")
        from selfgen.scoring.select import ScoreCondition

        for name, minimum in (("min_score", True), ("max_score", False)):
            for part in (getattr(self, name) or "").split(","):
                try:
                    if part.strip():
                        ScoreCondition.parse(part, minimum=minimum)
                except ValueError as exc:
                    raise ConfigError(str(exc), field=name) from None
        conditions = self.score_conditions()
        unscored = sorted({c.scorer for c in conditions} - set(self.scorer_names()))
        need(
            not unscored, "score", f"must include {', '.join(unscored)} (a score condition uses it)"
        )
        kinds = self.trace_kind_list()
        unknown_kinds = sorted(set(kinds) - set(TRACE_KINDS))
        need(
            bool(kinds) and not unknown_kinds,
            "trace_kinds",
            f"must be one or more of {', '.join(TRACE_KINDS)}, comma-separated",
        )
        need(len(set(kinds)) == len(kinds), "trace_kinds", "names a kind twice")
        need(
            not (self.language == "zh" and "multiturn" in kinds),
            "trace_kinds",
            "multiturn has no Chinese prompts yet (use single or parallel with --language zh)",
        )
        need(
            not (self.tool_protocol == "native" and "multiturn" in kinds),
            "trace_kinds",
            "multiturn is written in the text protocol only (use --tool-protocol text)",
        )


class Config(Protocol):
    """A configuration dataclass made of :func:`setting` fields, with a `validate` method."""

    __dataclass_fields__: typing.ClassVar[dict[str, dataclasses.Field[Any]]]

    def validate(self) -> None: ...


C = TypeVar("C", bound=Config)


def fields_of(config_class: type[Config]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(config_class)}


FIELDS = fields_of(RunConfig)

# Settings that may differ when a run is resumed: when to stop, and how to run the machine.
RESUMABLE = {name for name, f in FIELDS.items() if f.metadata["resumable"]}


@functools.cache
def _types(config_class: type[Config]) -> dict[str, Any]:
    """Each setting's type with None taken out (`int | None` is int), and whether it may be
    None."""
    out = {}
    for name, hint in typing.get_type_hints(config_class).items():
        optional = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            hint = args[0] if len(args) == 1 else Any
        out[name] = (hint, optional)
    return out


def setting_type(config_class: type[Config], name: str) -> Any:
    """The type of a setting's values, None left out: `int | None` gives int."""
    return _types(config_class)[name][0]


def type_problem(config_class: type[Config], name: str, value: Any) -> str | None:
    """What is wrong with `value`'s type for the setting `name` (None when it fits)."""
    hint, optional = _types(config_class)[name]
    if value is None:
        return None if optional else "must be set"
    if hint is bool and not isinstance(value, bool):
        return "must be true or false"
    if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        return "must be a whole number"
    if hint is float and (not isinstance(value, int | float) or isinstance(value, bool)):
        return "must be a number"
    if hint is str and not isinstance(value, str):
        return "must be text"
    if typing.get_origin(hint) is list and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return "must be a list of strings"
    return None


def load_toml(path: str | Path, config_class: type[Config], table: str) -> dict[str, Any]:
    """Read a TOML file of settings: top-level keys are fields of `config_class`, and so are
    the keys of an optional `[table]`. Unknown settings and values of the wrong type are
    errors naming the file and the setting. Text where a list is expected is a list of one."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML ({exc})", source=path) from None
    if isinstance(data.get(table), dict):
        data = {**{k: v for k, v in data.items() if k != table}, **data[table]}
    unknown = sorted(set(data) - set(fields_of(config_class)))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}", source=path)
    for name, value in data.items():
        if isinstance(value, str) and typing.get_origin(setting_type(config_class, name)) is list:
            data[name] = value = [value]
        if problem := type_problem(config_class, name, value):
            raise ConfigError(problem, field=name, source=path)
    return data


def build(config_class: type[C], *layers: Mapping[str, Any]) -> C:
    """The defaults, then each layer's non-None values in order; type-checked and validated."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    fields = fields_of(config_class)
    for name, value in values.items():
        if name not in fields:
            raise ConfigError("unknown setting", field=name)
        if problem := type_problem(config_class, name, value):
            raise ConfigError(problem, field=name)
    config = config_class(**values)
    config.validate()
    return config


def changed_settings(
    config_class: type[Config], stored: Mapping[str, Any], requested: Mapping[str, Any]
) -> list[str]:
    """The settings in `requested` (non-None) that differ from `stored` and may not change
    when a run is resumed."""
    fields = fields_of(config_class)
    return [
        name
        for name, value in requested.items()
        if value is not None
        and not fields[name].metadata["resumable"]
        and stored.get(name) != value
    ]


def build_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> RunConfig:
    """Defaults, then `base`, then the non-None `overrides`; validated."""
    return build(RunConfig, base, overrides)


def conflicts(stored: RunConfig, requested: Mapping[str, Any]) -> list[str]:
    """Settings in `requested` (non-None) that differ from a stored run's and may not, each
    as `--flag value (this run has value)`."""
    values = stored.to_dict()
    return [
        f"{flag_of(FIELDS[name]) or name} {requested[name]!r} (this run has {values[name]!r})"
        for name in changed_settings(RunConfig, values, requested)
    ]
