"""Settings declared once: the run's and the tune's flags, help, defaults, TOML loading and error
messages all come from the config dataclasses' fields."""

import dataclasses

import pytest
import typer.main
from typer.testing import CliRunner

from selfgen.cli import _stored_config, app
from selfgen.config import (
    FIELDS,
    ConfigError,
    RunConfig,
    build_config,
    flag_of,
    load_toml,
)
from selfgen.tune import TuneError
from selfgen.tune.config import TuneConfig, TuneConfigError, build_tune_config, load_tune_toml

# The flags `selfgen run` and `selfgen tune` have always had: a setting added with a flag shows
# up here, and one that loses its flag is caught.
RUN_FLAGS = {
    "--seeds", "--language", "--backend", "--model", "--ctx", "--threads", "--seed",
    "--base-url", "--api-model", "--concurrency", "--server-flavour", "--api-mode",
    "--tensor-parallel-size", "--gpu-memory-utilization", "--dtype", "--engine",
    "--ray-address", "--workers", "-n", "--num-tasks", "--max-rounds", "--token-budget",
    "--patience", "--prompts-per-round", "--seed-instructions", "--machine-instructions",
    "--temperature", "--top-p", "--rouge-threshold", "--novelty-workers", "--min-words", "--max-words",
    "--language-check", "--tools", "--tool-seeds", "--num-traces",
    "--trace-kinds", "--parallel-tool-seeds", "--multiturn-tool-seeds", "--mcp-config",
    "--tool-protocol",
    "--score", "--min-score", "--max-score", "--judge-backend", "--judge-model",
    "--judge-base-url", "--judge-api-model",
}  # fmt: skip
RUN_OWN_FLAGS = {
    "--out", "--config", "--api-key", "--resume", "--quiet", "-q", "--log-format", "--help",
}  # fmt: skip
TUNE_FLAGS = {
    "--base-model", "--epochs", "--max-steps", "--learning-rate", "--lora-r", "--lora-alpha",
    "--lora-dropout", "--target-modules", "--max-length", "--batch-size", "--grad-accum",
    "--seed", "--valid-split", "--valid-file", "--save-steps", "--logging-steps", "--threads",
}  # fmt: skip
TUNE_OWN_FLAGS = {
    "--out", "--config", "--resume", "--merge", "--quiet", "-q", "--log-format", "--help",
}  # fmt: skip


def command(name):
    return typer.main.get_command(app).commands[name]


def options(name):
    return {p.name: p for p in command(name).get_params(typer.Context(command(name)))}


def flags(name):
    return {
        flag for p in options(name).values() if p.param_type_name == "option" for flag in p.opts
    }


def test_run_has_the_same_flags_each_from_its_field():
    assert flags("run") == RUN_FLAGS | RUN_OWN_FLAGS
    params = options("run")
    for field in dataclasses.fields(RunConfig):
        flag = flag_of(field)
        if flag is None:  # TOML-only
            assert field.name not in params
            continue
        assert flag in params[field.name].opts
        assert params[field.name].help.startswith(field.metadata["help"])
    assert params["num_tasks"].opts == ["-n", "--num-tasks"]
    assert "list_length" not in params and "banned_prefixes" not in params


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("temperature", "[default: 0.7]"),
        ("num_tasks", "[default: 100]"),
        ("seeds", "[default: seeds/seed_tasks.jsonl]"),
        ("model", "[default: bundled SmolLM2-135M]"),  # default_text: None means something
        # Backend options left unset show the built-in backends' own defaults.
        ("n_ctx", "[default: 4096]"),
        ("concurrency", "[default: 8]"),
        ("gpu_memory_utilization", "[default: 0.9]"),
    ],
)
def test_run_help_shows_each_default_from_the_field(name, shown):
    assert options("run")[name].help.endswith(shown)


def test_run_help_text_lists_every_flag_with_its_default():
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for flag in RUN_FLAGS | RUN_OWN_FLAGS:
        assert flag in text
    assert "Instruction sampling temperature. [default: 0.7]" in text
    assert "--max-rounds <int> Stop after this many rounds. --token-budget" in text  # no default


def test_tune_has_the_same_flags_each_from_its_field():
    assert flags("tune") == TUNE_FLAGS | TUNE_OWN_FLAGS
    params = options("tune")
    assert params["lora_r"].help == "LoRA rank. [default: 16]"
    assert params["target_modules"].help.endswith("[default: all-linear]")
    assert params["threads"].help.endswith("[default: all cores]")


def test_toml_errors_name_the_file_and_the_setting(tmp_path):
    path = tmp_path / "run.toml"
    out = tmp_path / "run"
    for text, message in (
        ("num_tasks = 0\n", f"{path}: setting 'num_tasks': must be at least 1"),
        ('[run]\ntemperature = "hot"\n', f"{path}: setting 'temperature': must be a number"),
        ("patience = 2.5\n", f"{path}: setting 'patience': must be a whole number"),
        ("num_taks = 3\n", f"{path}: unknown setting(s): num_taks"),
        # A backend option the backend does not take, refused before anything loads.
        ('base_url = "http://127.0.0.1:1/v1"\n', f"{path}: setting 'base_url': not taken by"),
    ):
        path.write_text(text, encoding="utf-8")
        result = CliRunner().invoke(app, ["run", "--config", str(path), "--out", str(out)])
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: {message}")
        assert len(result.stderr.splitlines()) == 1
        assert not out.exists()


def test_flag_errors_name_the_flag_even_over_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("num_tasks = 5\n", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["run", "--config", str(path), "-n", "0", "--out", str(tmp_path / "run")]
    )
    assert (result.exit_code, result.stderr) == (2, "error: --num-tasks: must be at least 1\n")
    # A TOML-only setting that a flag made wrong is named as a setting.
    result = CliRunner().invoke(
        app, ["run", "--seed-instructions", "20", "--out", str(tmp_path / "run")]
    )
    assert result.stderr == (
        "error: setting 'list_length': must exceed the number of instructions shown in the prompt\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("temperature", 2.5, "must be in [0, 2]"),
        ("instance_temperature", -0.1, "must be in [0, 2]"),
        ("top_p", 0.0, "must be in (0, 1]"),
        ("presence_penalty", 2.5, "must be in [-2, 2]"),
        ("frequency_penalty", -3.0, "must be in [-2, 2]"),
        ("instance_presence_penalty", float("nan"), "must be in [-2, 2]"),
        ("max_tokens", 0, "must be at least 1"),
        ("call_max_tokens", 0, "must be at least 1"),
    ],
)
def test_sampling_values_outside_the_api_ranges_are_refused(setting, value, problem):
    # vLLM (and the OpenAI API) refuse them per request, after the model has loaded.
    with pytest.raises(ConfigError) as caught:
        build_config({}, {setting: value})
    assert (caught.value.field, caught.value.problem) == (setting, problem)
    build_config({}, {"temperature": 2.0, "top_p": 1.0, "presence_penalty": -2.0})


def test_an_out_of_range_temperature_stops_before_the_model_loads(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["run", "--backend", "vllm", "--model", "no/such-model", "--temperature", "3"]
        + ["--out", str(out)],
    )
    assert (result.exit_code, result.stderr) == (2, "error: --temperature: must be in [0, 2]\n")
    assert not out.exists()


def test_library_errors_name_the_setting_not_the_flag():
    with pytest.raises(ConfigError) as caught:
        build_config({}, {"rouge_threshold": 1.5})
    assert (caught.value.field, caught.value.problem) == ("rouge_threshold", "must be in [0, 1]")
    assert str(caught.value) == "setting 'rouge_threshold': must be in [0, 1]"


def test_tune_config_loads_through_the_shared_loader(tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text('target_modules = "q_proj"\n[tune]\nlora_r = 8\n', encoding="utf-8")
    assert load_tune_toml(path) == load_toml(path, TuneConfig, "tune")
    assert load_tune_toml(path) == {"target_modules": ["q_proj"], "lora_r": 8}
    path.write_text('lora_r = "eight"\n', encoding="utf-8")
    with pytest.raises(TuneConfigError) as caught:
        load_tune_toml(path)
    assert isinstance(caught.value, TuneError) and isinstance(caught.value, ConfigError)
    assert (caught.value.field, caught.value.source) == ("lora_r", path)
    assert str(caught.value) == f"{path}: setting 'lora_r': must be a whole number"
    with pytest.raises(TuneConfigError, match="setting 'lora_dropout': must be in"):
        build_tune_config({"lora_dropout": 1.0})


def test_resumable_settings_are_declared_on_their_fields():
    from selfgen.config import RESUMABLE

    assert RESUMABLE == {name for name, f in FIELDS.items() if f.metadata["resumable"]}
    assert {"num_tasks", "n_ctx", "workers"} <= RESUMABLE
    assert not {"seed", "temperature", "model"} & RESUMABLE


def test_every_backend_keeps_the_settings_a_run_had_before():
    # Backend options default to None in RunConfig (the backend's default); the backends'
    # own defaults are what RunConfig used to pass, so a run's data does not change.
    from selfgen.backends.base import check_options

    options = build_config({}, {}).backend_options()
    assert options == {"seed": 0}
    llamacpp = check_options("llamacpp", options)
    assert (llamacpp.n_ctx, llamacpp.n_threads, llamacpp.seed) == (4096, None, 0)
    vllm = check_options("vllm", {**options, "model": "m"})
    assert (vllm.n_ctx, vllm.tensor_parallel_size, vllm.gpu_memory_utilization, vllm.dtype) == (
        4096,
        1,
        0.9,
        "auto",
    )
    openai = check_options("openai", options)
    assert (openai.concurrency, openai.server_flavour, openai.api_mode) == (8, "auto", "auto")


def test_a_run_stored_with_every_backend_default_resumes_with_its_own():
    # Runs stored before backend options defaulted to None hold every backend's defaults.
    old = {
        **build_config({}, {}).to_dict(),
        "n_ctx": 4096,
        "concurrency": 8,
        "server_flavour": "auto",
        "api_mode": "auto",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
    }
    assert _stored_config(old).backend_options() == {"n_ctx": 4096, "seed": 0}
    served = _stored_config({**old, "backend": "openai", "base_url": "http://h/v1"})
    assert served.backend_options() == {
        "seed": 0,
        "base_url": "http://h/v1",
        "concurrency": 8,
        "server_flavour": "auto",
        "api_mode": "auto",
    }
