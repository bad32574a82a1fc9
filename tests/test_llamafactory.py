"""LLaMA-Factory reads selfgen's `--format sharegpt` exports as selfgen means them, checked with
LLaMA-Factory 0.9.5's own data pipeline (`get_dataset` of its `sft` stage, `qwen` template):
every row survives its converter, the tools reach the prompt, and the loss is taken on the
assistant's answers and calls and on nothing else (not on requests, not on tool results).

LLaMA-Factory's pins clash with selfgen's `tune` extra, so it lives in an environment of its own
(`scripts/llamafactory_env.sh`), where `llamafactory_check.py` runs. Skipped where that
environment is absent (`LLAMAFACTORY_VENV`, default `.venv-llamafactory`).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SEEDS
from test_export_datasets import fixture_dir, run_dir  # noqa: F401 (fixtures)
from test_multiturn import _with_outputs

from selfgen.config import build_config
from selfgen.export import export_run
from selfgen.sandbox import ToolSandbox
from selfgen.seeds import load_seed_tasks, load_tool_seeds
from selfgen.store import RunStore
from selfgen.tooling import tool_specs

VENV = Path(os.environ.get("LLAMAFACTORY_VENV", ROOT / ".venv-llamafactory"))
pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "python").exists(),
    reason=f"no LLaMA-Factory environment at {VENV} (scripts/llamafactory_env.sh)",
)

TOOL_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The bundled model's tokenizer and config as a Hugging Face folder (LLaMA-Factory loads
    the tokenizer by folder; the GGUF's own chat template is replaced by its `qwen` one)."""
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoTokenizer

    from selfgen.tune.models import resolve_model

    folder = tmp_path_factory.mktemp("tokenizer")
    name, kwargs = resolve_model("bundled").pretrained_args()
    AutoTokenizer.from_pretrained(name, **kwargs).save_pretrained(folder)
    AutoConfig.from_pretrained(name, **kwargs).save_pretrained(folder)
    return folder


def seeds_of_every_kind(path: Path) -> RunStore:
    """A store holding the bundled tool seeds of each kind of trace (single, parallel,
    multi-turn) with the outputs their calls gave, as a run stores them."""
    cfg = build_config(
        {},
        {
            "backend": "scripted",
            "trace_kinds": "single,parallel,multiturn",
            "tools": str(ROOT / "tools"),
        },
    )
    store = RunStore.create(path, cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    seeds = [s for file in cfg.tool_seed_files().values() for s in load_tool_seeds(file)]
    with ToolSandbox(cfg.tools) as sandbox:
        store.save_tools(tool_specs(cfg.tools), [_with_outputs(sandbox, s) for s in seeds])
    return store


def read_by_llamafactory(data_dir: Path, name: str, tokenizer_dir: Path, tmp_path: Path):
    out = tmp_path / f"{name}.llamafactory.json"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(VENV / "bin" / "python"), str(ROOT / "tests" / "llamafactory_check.py")]
        + [str(data_dir), name, str(tokenizer_dir), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def calls_of(turn: dict) -> list[dict]:
    value = json.loads(turn["value"])
    return value if isinstance(value, list) else [value]


def check_row(row: dict, got: dict) -> None:
    """What LLaMA-Factory made of one exported row is what the row says."""
    text, trained = got["text"], got["trained"]
    turns = row["conversations"]
    # Every turn is in the prompt, in order.
    at = 0
    for turn in turns:
        if turn["from"] == "function_call":
            continue  # re-written in the template's own call format, checked below
        found = text.find(turn["value"], at)
        assert found >= 0, (turn, text)
        at = found + len(turn["value"])
    # The tools reach the prompt.
    tools = json.loads(row.get("tools") or "[]")
    shown = re.search(r"<tools>\n(.*?)\n</tools>", text, re.DOTALL)
    if tools:
        listed = [json.loads(line)["function"]["name"] for line in shown.group(1).splitlines()]
        assert listed == [t["name"] for t in tools]
    else:
        assert shown is None
    # The loss covers the calls, as calls ...
    wanted = [c for t in turns if t["from"] == "function_call" for c in calls_of(t)]
    assert [json.loads(c) for c in TOOL_CALL.findall(trained)] == wanted
    # ... and the answers, in order ...
    rest = TOOL_CALL.sub("", trained)
    for answer in [t["value"] for t in turns if t["from"] == "gpt"]:
        assert answer in rest, (answer, rest)
        before, _, rest = rest.partition(answer)
        assert not before.replace("<|im_end|>", "").strip(), before
    # ... and nothing else: no request, no tool result.
    assert not rest.replace("<|im_end|>", "").strip(), rest


def test_llamafactory_reads_every_kind_of_row(run_dir, tokenizer_dir, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    # A run's tasks and its verified trace, with the seeds; and the tool seeds of every kind.
    store = RunStore.open(run_dir)
    export_run(store, "sharegpt", data / "run.jsonl", include_seeds=True)
    store.close()
    store = seeds_of_every_kind(tmp_path / "seeds-run")
    export_run(store, "sharegpt", data / "seeds.jsonl", include_seeds=True)
    store.close()
    # Both exports wrote their entries into the one dataset_info.json.
    assert set(json.loads((data / "dataset_info.json").read_text())) == {"run", "seeds"}

    rows = {}
    for name in ("run", "seeds"):
        exported = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()]
        got = read_by_llamafactory(data, name, tokenizer_dir, tmp_path)
        # No row is dropped by LLaMA-Factory's converter, and none changes places.
        assert len(got) == len(exported)
        for row, made in zip(exported, got, strict=True):
            check_row(row, made)
        rows[name] = exported

    # Every kind of row was among them.
    def turns(row, tag):
        return [t for t in row["conversations"] if t["from"] == tag]

    every = rows["run"] + rows["seeds"]
    assert any("tools" not in r for r in every)  # an instruction task
    assert any("tools" in r and not turns(r, "function_call") for r in every)  # no tool needed
    assert any(len(calls_of(t)) > 1 for r in every for t in turns(r, "function_call"))
    assert any(len(turns(r, "human")) > 1 and turns(r, "function_call") for r in every)
    assert any(len(turns(r, "function_call")) > 1 for r in every)  # one call after another
