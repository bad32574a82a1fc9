import subprocess
import sys

from conftest import ROOT, selfgen_cmd

from selfgen import __version__


def run(args, env, **kw):
    return subprocess.run(
        [*selfgen_cmd(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        **kw,
    )


def test_version(child_env):
    proc = run(["--version"], child_env)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"selfgen {__version__}"


def test_help_imports_nothing_heavy():
    # `selfgen --help` must answer at once: no model runtime, no loop, no live display.
    code = (
        "import sys; from selfgen.cli import app; from typer.testing import CliRunner;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('llama_cpp', 'rouge_score', 'sqlite3', 'selfgen.loop', 'rich.live')"
        " if m in sys.modules]; print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_importing_selfgen_never_imports_the_optional_runtimes():
    # Every module, the optional extras' own included (they import their runtimes inside the
    # functions that need them); the TUI module is Textual's and `python -m selfgen` runs the
    # command line, so both are left out.
    code = (
        "import importlib, pkgutil, sys, selfgen;"
        "names = [m.name for m in pkgutil.walk_packages(selfgen.__path__, 'selfgen.')"
        " if m.name not in ('selfgen.tui.app', 'selfgen.__main__')];"
        "[importlib.import_module(n) for n in names];"
        "print([m for m in ('torch', 'transformers', 'trl', 'peft', 'vllm', 'ray', 'textual')"
        " if m in sys.modules], len(names))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy, count = proc.stdout.split("] ")
    assert heavy == "[" and int(count) > 30


def test_backends_are_listed_with_what_they_need(child_env):
    proc = run(["backends"], child_env)
    assert proc.returncode == 0, proc.stderr
    for name, needs in (
        ("llamacpp", "SmolLM2-135M GGUF"),
        ("openai", "python -m llama_cpp.server"),
        ("vllm", "selfgen[vllm]"),
    ):
        assert name in proc.stdout and needs in proc.stdout


def test_commands_are_listed(child_env):
    proc = run(["--help"], child_env)
    for command in ("run", "export", "stats"):
        assert command in proc.stdout


def test_stats_and_export_on_a_missing_run(tmp_path, child_env):
    for args in (
        ["stats", str(tmp_path)],
        ["export", str(tmp_path), "--out", str(tmp_path / "x.jsonl")],
    ):
        proc = run(args, child_env)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"error: {tmp_path}: no selfgen run here (no selfgen.db)"
        assert not (tmp_path / "x.jsonl").exists()


def test_bad_config_file(tmp_path, child_env):
    cfg = tmp_path / "run.toml"
    cfg.write_text("num_taks = 3\n")
    proc = run(["run", "--config", str(cfg), "--out", str(tmp_path / "r")], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {cfg}: unknown setting(s): num_taks"
    assert not (tmp_path / "r").exists()


def test_bad_flag_value(tmp_path, child_env):
    proc = run(["run", "--rouge-threshold", "1.5", "--out", str(tmp_path / "r")], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --rouge-threshold: must be in [0, 1]"
    assert not (tmp_path / "r").exists()


def test_missing_model_file(tmp_path, child_env):
    proc = run(
        ["run", "--model", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "r")], child_env
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: --model: no such GGUF file: {tmp_path / 'none.gguf'}"
    assert not (tmp_path / "r").exists()


def test_resume_with_nothing_to_resume_is_refused(tmp_path, child_env):
    # A mistyped run folder must not become a new 100-task run.
    missing = tmp_path / "runs" / "typo"
    proc = run(["run", "--out", str(missing), "--resume"], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --resume: there is no run to resume in {missing} (no selfgen.db); "
        "leave out --resume to start a new run there"
    ]
    assert not (tmp_path / "runs").exists()
    proc = run(["run", "--resume"], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --resume: give the run folder to resume with --out"


def test_score_settings_are_checked_before_anything_runs(tmp_path, child_env):
    out = tmp_path / "r"
    cases = [
        (
            ["--score", "ifd", "--min-score", "ifd<=3"],
            "error: --min-score: 'ifd<=3': a minimum uses '>=' or '>'",
        ),
        (
            ["--min-score", "judge>=4"],
            "error: --score: must include judge (a score condition uses it)",
        ),
        (["--score", "nope"], "error: --score: unknown scorer 'nope'"),
    ]
    for flags, message in cases:
        proc = run(["run", "--out", str(out), *flags], child_env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
        assert "Traceback" not in proc.stderr
        assert not out.exists()
