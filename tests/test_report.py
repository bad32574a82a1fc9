"""`selfgen report`: the page is opened in a real headless Chromium (Debian's `chromium`
package, driven by Playwright), which must load it without a console error or a network
request and draw every chart."""

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, ScriptedBackend, selfgen_cmd
from inspect_fixtures import fixture_run

from selfgen.backends.base import register_backend
from selfgen.report import CHARTS, verb_noun, verb_noun_counts
from selfgen.store import RunStore


def chromium() -> str:
    """Debian's Chromium, or a skip that says how to get it."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    def scripted(reply):
        register_backend("scripted", lambda **_: ScriptedBackend(reply))

    run = fixture_run(tmp_path_factory.mktemp("report") / "run", scripted)
    store = RunStore.open(run)
    ids = [item_id for item_id, *_ in store.scorable_instances()]
    store.save_scores(
        "instance",
        "ifd",
        [(i, 0.5 + 0.1 * n, {}) for n, i in enumerate(ids)],
        model={},
        settings={},
    )
    store.close()
    return run


def test_verb_and_noun_by_rule():
    assert verb_noun("Write a short poem about the sea.") == ("write", "poem")
    assert verb_noun("Classify the following sentence as positive or negative.") == (
        "classify",
        "sentence",
    )
    assert verb_noun("What is the capital of France?") == ("what", "capital")
    assert verb_noun("Go") == ("go", None)
    assert verb_noun("1234 ...") == ("", None)
    counts = verb_noun_counts(["Write a poem.", "Write an essay.", "Write a poem today.", "Hi"])
    assert counts == {"write": {"poem": 2, "essay": 1}, "hi": {"(none)": 1}}


def open_in_chromium(page_path: Path, screenshot: Path) -> dict:
    """Load the page from disk in headless Chromium; what it drew and every complaint."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "request",
                lambda r: None if r.url.startswith("file:") else problems.append(f"fetch {r.url}"),
            )
            page.goto(page_path.as_uri(), wait_until="load", timeout=300_000)
            charts = page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('section.chart')].map(
                    s => [s.dataset.chart, {
                        empty: s.dataset.empty === 'true',
                        svg: s.querySelectorAll('.js-plotly-plot .main-svg').length,
                        marks: s.querySelectorAll(
                            '.js-plotly-plot .point, .js-plotly-plot .slice').length,
                        text: s.innerText}]))"""
            )
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"charts": charts, "problems": problems}


def test_report_opens_in_chromium_with_every_chart(run_dir, tmp_path, child_env):
    out = tmp_path / "report.html"
    proc = subprocess.run(
        [*selfgen_cmd(), "report", str(run_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}"
    page = out.read_text()
    # Self-contained: plotly.js inline, nothing loaded from elsewhere.
    assert "<script src" not in page and "cdn" not in page.lower().split("<script>", 1)[0]
    shot = tmp_path / "report.png"
    seen = open_in_chromium(out, shot)
    assert seen["problems"] == []
    charts = seen["charts"]
    assert list(charts) == [chart_id for chart_id, _ in CHARTS]
    for chart_id, chart in charts.items():
        assert not chart["empty"], chart_id  # the fixture run has data for every chart
        assert chart["svg"] >= 1 and chart["marks"] >= 1, (chart_id, chart)
    assert "calculator" in charts["tools"]["text"]
    assert "ifd (instance)" in charts["scores"]["text"]
    # The screenshot is a real picture of the whole page (PNG header, taller than a screen).
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1200 and height > 2000


def test_a_run_without_traces_or_scores_says_so(tmp_path, scripted):
    from test_loop_control import model

    from selfgen.backends.base import get_backend
    from selfgen.config import build_config
    from selfgen.loop import Loop
    from selfgen.report import render_report
    from selfgen.seeds import load_seed_tasks

    scripted(model(instances_reply="\nInput: 2 + 2\nOutput: 4\n"))
    cfg = build_config({}, {"backend": "scripted", "prompts_per_round": 2, "num_tasks": 3})
    seeds = load_seed_tasks(ROOT / "seeds" / "seed_tasks.jsonl")
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), seeds, {}, "test")
    Loop(cfg, store, get_backend("scripted")).run()
    page = render_report(store, "plain run")
    store.close()
    assert 'data-chart="tools" data-empty="true"' in page
    assert "The run made no tool-use traces." in page
    assert "The run has no quality scores (selfgen score)." in page
    assert 'data-chart="funnel" data-empty="false"' in page


def test_report_of_a_missing_run_is_one_error(tmp_path, child_env):
    proc = subprocess.run(
        [*selfgen_cmd(), "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert not (tmp_path / "r.html").exists()


def test_a_finished_run_prints_the_next_commands(tmp_path, scripted):
    from test_loop_control import model
    from typer.testing import CliRunner

    from selfgen.cli import app, next_commands

    scripted(model())
    out = tmp_path / "my run"
    result = CliRunner().invoke(
        app, ["run", "--backend", "scripted", "-n", "2", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["run", "--backend", "scripted", "-n", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    quoted = f"'{out}'"
    assert result.stdout.splitlines()[-4:] == [
        "next:",
        f"  selfgen inspect {quoted}",
        f"  selfgen export {quoted} --format openai --out '{out / 'train.jsonl'}'",
        f"  selfgen report {quoted} --out '{out / 'report.html'}'",
    ]
    assert next_commands(tmp_path / "plain") == [
        f"selfgen inspect {tmp_path / 'plain'}",
        f"selfgen export {tmp_path / 'plain'} --format openai"
        f" --out {tmp_path / 'plain' / 'train.jsonl'}",
        f"selfgen report {tmp_path / 'plain'} --out {tmp_path / 'plain' / 'report.html'}",
    ]
