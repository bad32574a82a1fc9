"""`selfgen export --format hf`: a Hugging Face dataset folder that `datasets.load_dataset(DIR)`
loads as it is: Parquet files for the train and validation splits under `data/`, and a
`README.md` dataset card generated from the run store with huggingface_hub's card tooling
(`DatasetCardData` writes the YAML front matter: license, language, task categories, size
category and the `configs` that map the splits to their files).

Rows are chat `messages` as in the `openai` format. A table has one schema for all its rows,
so a trace's `tools` are one JSON string (a list of tool schemas as a struct column would give
every tool the parameters of all the others) and every message has every key.

The folder is built beside the target and renamed into place, so a reader sees the old export
or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from selfgen import __version__
from selfgen.export import ExportError, export_rows
from selfgen.provenance import model_info
from selfgen.scoring.select import Selection
from selfgen.store import RunStore

DEFAULT_SPLIT = 0.1
TEMPLATE = Path(__file__).parent / "templates" / "dataset_card.md"
SPLIT_FILES = {
    "train": "data/train-00000-of-00001.parquet",
    "validation": "data/validation-00000-of-00001.parquet",
}


def size_category(rows: int) -> str:
    """The Hub's size category of a data set of `rows` rows."""
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if rows < limit:
            return name
    return "n>1T" if rows > 10**12 else "10M<n<100M"


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    tools = row.get("tools")
    out = {"messages": row["messages"], "tools": json.dumps(tools) if tools else None}
    for key in ("selfgen", "metadata"):
        if key in row:
            out[key] = _no_empty_dicts(row[key])
    return out


def _no_empty_dicts(value: Any) -> Any:
    # Parquet cannot store a struct without fields; an empty mapping (no scorer) becomes null.
    if isinstance(value, dict):
        return {k: _no_empty_dicts(v) for k, v in value.items()} or None
    if isinstance(value, list):
        return [_no_empty_dicts(v) for v in value]
    return value


def export_hf(
    store: RunStore,
    out: Path,
    *,
    name: str,
    license: str = "unknown",
    include_seeds: bool = False,
    split: float | None = None,
    split_seed: int = 0,
    include_failed: bool = False,
    only_curated: bool = False,
    selection: Selection | None = None,
    only: str | None = None,
    with_metadata: bool = False,
    recheck: Counter[str] | None = None,
) -> dict[str, int]:
    """Write the dataset folder `out` (see the module's docstring); returns rows per split.
    `split` is the fraction of tasks for validation (DEFAULT_SPLIT when None). An existing
    `out` is replaced only if it is empty or an earlier export of this kind."""
    try:
        import huggingface_hub  # noqa: F401  (the card, below)
        import jinja2  # noqa: F401  (huggingface_hub renders the card with it)
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ExportError(f"--format hf needs {exc.name}: pip install 'selfgen[hf]'") from None
    _check_target(out)
    fraction = DEFAULT_SPLIT if split is None else split
    train_rows, valid_rows = export_rows(
        store,
        "openai",
        include_seeds=include_seeds,
        split=fraction,
        split_seed=split_seed,
        include_failed=include_failed,
        only_curated=only_curated,
        selection=selection,
        only=only,
        with_metadata=with_metadata,
        recheck=recheck,
    )
    assert valid_rows is not None
    train = [_table_row(r) for r in train_rows]
    valid = [_table_row(r) for r in valid_rows]
    if not train and not valid:
        raise ExportError("there are no rows to export (nothing kept, or all left out)")
    # One schema for both splits, inferred from all rows, so that they load as one data set.
    table = pa.Table.from_pylist(train + valid)
    splits = {"train": table.slice(0, len(train)), "validation": table.slice(len(train))}
    options = {
        "include_seeds": include_seeds,
        "split": fraction,
        "split_seed": split_seed,
        "include_failed": include_failed,
        "only_curated": only_curated,
        "selection": selection,
        "only": only,
        "with_metadata": with_metadata,
    }
    card = dataset_card(
        store,
        name=name,
        license=license,
        splits={k: v.num_rows for k, v in splits.items()},
        rows=train + valid,
        options=options,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for split_name, part in splits.items():
            path = tmp / SPLIT_FILES[split_name]
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, path)
        card.save(tmp / "README.md")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {f"{out}/{SPLIT_FILES[k]}": v.num_rows for k, v in splits.items()}


def _is_our_export(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return names <= {"README.md", "data"} and (folder / "data").is_dir()


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; --format hf writes a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_our_export(out):
        raise ExportError(
            f"{out} is a folder with other files in it; give an empty or new folder"
            " (or an earlier `--format hf` export, which is replaced)"
        )


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`, moving an earlier export aside first."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "export")
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "export", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


# Settings shown on the card, in this order, when the run has them.
CARD_SETTINGS = (
    "num_tasks",
    "num_traces",
    "seed",
    "language",
    "prompts_per_round",
    "seed_instructions",
    "machine_instructions",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "rouge_threshold",
    "min_words",
    "max_words",
    "blacklist",
    "banned_prefixes",
    "language_check",
    "max_instances",
    "score",
    "min_score",
    "max_score",
)


def dataset_card(
    store: RunStore,
    *,
    name: str,
    license: str,
    splits: dict[str, int],
    rows: list[dict[str, Any]],
    options: dict[str, Any],
) -> Any:
    """The dataset card (a huggingface_hub `DatasetCard`) of an export of `store`."""
    from huggingface_hub import DatasetCard, DatasetCardData

    config = store.config()
    run = store.run_row()
    figures = store.figures()
    specs = store.tool_specs()
    model = model_info(config, run["backend"])
    traces = sum(1 for r in rows if r["tools"])
    language = config.get("language") or "en"
    tags = ["self-instruct", "synthetic", "selfgen"] + (["tool-use"] if traces else [])
    data = DatasetCardData(
        language=[language],
        license=license,
        task_categories=["text-generation"],
        size_categories=[size_category(len(rows))],
        pretty_name=name,
        tags=tags,
        configs=[
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": SPLIT_FILES[split]}
                    for split in ("train", "validation")
                ],
            }
        ],
    )
    funnel = [
        (
            stage,
            count,
            ", ".join(
                f"{reason or 'none'} ({n})"
                for reason, n in list(figures["reasons"].get(stage, {}).items())[:3]
            )
            or "",
        )
        for stage, count in figures["funnel"]["rejected"].items()
    ]
    settings = [
        (key, json.dumps(config[key], ensure_ascii=False))
        for key in CARD_SETTINGS
        if config.get(key) not in (None, [], "")
    ]
    sel = options["selection"]
    export_bits = [
        f"validation fraction {options['split']} of tasks (split seed {options['split_seed']})",
        "seed tasks included" if options["include_seeds"] else "seed tasks left out",
        "only tasks and traces accepted by hand" if options["only_curated"] else "",
        "failed traces included, marked" if options["include_failed"] else "",
        f"selected by score ({_describe(sel)})" if sel else "",
        f"only {options['only']}" if options["only"] else "",
    ]
    model_line = f"`{model['name'] or 'an unnamed model'}` on the `{model['backend']}` backend"
    if model["sha256"]:
        model_line += f" (file SHA-256 `{model['sha256']}`, taken at export)"
    tool_rows = [
        {
            **t,
            "tool": t["tool"] or "(no call parsed)",
            "pass_rate": f"{t['pass_rate']:.0%}",
            "sha": f"`{specs[t['tool']].source_sha256}`"
            if t["tool"] in specs and specs[t["tool"]].source_sha256
            else "not recorded",
        }
        for t in figures["tools"]
    ]
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATE),
        pretty_name=name,
        splits=splits,
        traces=traces,
        trace_rows=traces,
        task_rows=len(rows) - traces,
        seed_rows=_seed_rows(store, options),
        failed=any(r.get("selfgen") for r in rows),
        with_metadata=options["with_metadata"],
        model_line=model_line,
        seeds=len(store.seeds()),
        seed_file=config.get("seeds"),
        tool_seeds=len(store.tool_seeds()),
        tool_seed_file=config.get("tool_seeds"),
        created_at=run["created_at"],
        run_version=run["selfgen_version"],
        export_version=__version__,
        export_line="; ".join(b for b in export_bits if b) + ".",
        settings=settings,
        candidates=figures["candidates"],
        rounds=figures["rounds"],
        kept_tasks_run=figures["kept"],
        candidates_per_kept=_fmt(figures["candidates_per_kept"]),
        funnel=funnel,
        surplus=figures["funnel"]["surplus"],
        classification_share=f"{figures['classification_share']:.0%}",
        scores=[
            {
                **s,
                "mean": _fmt(s["mean"]),
                "quartiles": ", ".join(_fmt(q) for q in s["quartiles"]) or "n/a",
            }
            for s in figures["scores"]
        ],
        tools=tool_rows,
        limits=known_limits(model, figures, bool(traces)),
    )


def _seed_rows(store: RunStore, options: dict[str, Any]) -> int:
    if not options["include_seeds"]:
        return 0
    tasks = sum(len(s.instances) for s in store.seeds()) if options["only"] != "traces" else 0
    traces = len(store.tool_seeds()) if options["only"] != "tasks" else 0
    return tasks + traces


# The bundled model's file name (selfgen.backends.llamacpp.BUNDLED_GGUF_NAME starts so).
SMALL_MODELS = ("smollm2-135m",)


def known_limits(model: dict[str, Any], figures: dict[str, Any], traces: bool) -> list[str]:
    """What a user of the data should know it does not promise."""
    limits = [
        "Everything here was written by a language model and checked by rules, not by people"
        " (except the items marked by hand in `selfgen inspect`): the filters check form"
        " (length, keywords, language, ROUGE-L novelty, instance consistency), not whether an"
        " answer is right.",
        "ROUGE-L novelty removes near-copies of words, not paraphrases: tasks may still repeat"
        " each other's meaning.",
    ]
    name = (model.get("name") or "").lower()
    if any(small in name for small in SMALL_MODELS):
        limits.append(
            "The model is SmolLM2-135M-Instruct, a very small model: many instructions are vague"
            " and many outputs are wrong or off-topic. Use this data to try the pipeline, or"
            " score and select it, rather than to train a model as it is."
        )
    if traces:
        limits.append(
            "Tool calls were executed for real and their outputs are genuine, but the semantic"
            " check of a trace is rule-based (the answer repeats a number or date of the tool"
            " output, or shares words with it): a verified trace can still answer the request"
            " wrongly."
        )
    if not figures["scores"]:
        limits.append("No quality scores were computed for this run (`selfgen score`).")
    return limits


def _describe(selection: Selection) -> str:
    parts = [str(c) for c in selection.conditions]
    if selection.top_fraction is not None:
        parts.append(f"best {selection.top_fraction:g} by {selection.rank_by}")
    return ", ".join(parts)
