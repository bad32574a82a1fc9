"""The `metadata` object that `selfgen export --with-metadata` adds to each row: where the row
came from, read from the run store.

Every row's metadata has the same keys, whatever its kind, so that a table of rows (Parquet, a
`datasets` table) has one schema: a key that does not apply to a row is null or empty.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from selfgen import __version__
from selfgen.records import Instance
from selfgen.store import RunStore
from selfgen.store.provenance import SAMPLING_STAGES, ItemOrigin, text_key

# A numbered item of a list prompt ("3. Write a poem about ..."); the prompt's last line, the
# number the model continues from, has no text and is no item.
_LISTED = re.compile(r"^\d+\. (\S.*)$", re.MULTILINE)


def listed_texts(prompt: str | None) -> list[str]:
    """The texts a numbered-list prompt showed, in order."""
    return [m.group(1) for m in _LISTED.finditer(prompt or "")]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_info(config: dict[str, Any], backend: dict[str, Any]) -> dict[str, Any]:
    """The generating model: backend, name, and for a model file its path and SHA-256 (of the
    file found there now, at export time)."""
    kind = config.get("backend") or backend.get("backend")
    name = backend.get("model") or config.get("api_model") or config.get("model")
    path: Path | None = None
    if kind == "llamacpp":
        if config.get("model"):
            path = Path(config["model"])
        else:
            from selfgen.backends.base import BackendError
            from selfgen.backends.llamacpp import bundled_model_path

            try:
                path = bundled_model_path()
            except BackendError:
                path = None
    elif config.get("model") and Path(config["model"]).is_file():
        path = Path(config["model"])
    digest = file_sha256(path) if path is not None and path.is_file() else None
    return {
        "backend": kind,
        "name": name or (path.name if path else None),
        "path": str(path) if path else None,
        "sha256": digest,
    }


def _by_item(scores: dict[str, dict[int, float | None]]) -> dict[int, dict[str, float | None]]:
    """{scorer: {item: value}} as {item: {scorer: value}}, every scorer named for every item."""
    out: dict[int, dict[str, float | None]] = {}
    names = sorted(scores)
    for name in names:
        for item_id in scores[name]:
            out.setdefault(item_id, {})
    for item_id, row in out.items():
        for name in names:
            row[name] = scores[name].get(item_id)
    return out


class Provenance:
    """The metadata of a run's rows, read once from the store."""

    def __init__(self, store: RunStore) -> None:
        run = store.run_row()
        config = store.config()
        # Stable for the life of the run (resuming changes the stored limits, not these).
        self.run_id = hashlib.sha256(
            json.dumps([run["created_at"], run["selfgen_version"], run["backend"]]).encode()
        ).hexdigest()[:16]
        self.model = model_info(config, run["backend"])
        self.versions = {"run": run["selfgen_version"], "export": __version__}
        self.tasks = store.origins("task")
        self.traces = store.origins("trace")
        self.ids = store.text_ids()
        self.instance_scores = _by_item(store.scores("instance"))
        self.trace_scores = _by_item(store.scores("trace"))
        # Every row names every scorer of the run (null where it did not score that row), and
        # every stage's sampling (null where the stage made no call for it): a reader that takes
        # the schema from the first rows, or that re-parses fields whose keys differ from row
        # to row (as `datasets` does), then reads every row the same way.
        self.scorers = sorted({*store.scores("instance"), *store.scores("trace")})
        self.tool_sources = {n: s.source_sha256 for n, s in store.tool_specs().items()}

    def _base(self, **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "run_id": self.run_id,
            "kind": None,
            "id": None,
            "instance_id": None,
            "round": None,
            "origin": None,
            "prompt_examples": [],
            "nearest": None,
            "scores": self._scores({}),
            "curation": None,
            "model": self.model,
            "sampling": dict.fromkeys(SAMPLING_STAGES),
            "selfgen_version": self.versions,
            "tools": [],
        }
        row.update(fields)
        return row

    def _origin_fields(self, origin: ItemOrigin) -> dict[str, Any]:
        nearest = None
        if origin.nearest is not None:
            nearest = {
                "id": self.ids.get(text_key(origin.nearest)),
                "text": origin.nearest,
                "rouge_l": origin.rouge_l,
            }
        return {
            "round": origin.round,
            "origin": "machine",
            "prompt_examples": [self.ids.get(text_key(t)) for t in listed_texts(origin.prompt)],
            "nearest": nearest,
            "curation": origin.curation,
            "sampling": {stage: origin.sampling.get(stage) for stage in SAMPLING_STAGES},
        }

    def _scores(self, values: dict[str, float | None]) -> dict[str, float | None] | None:
        """Each scorer's value for a row; null when the run has no scores at all (an empty
        object is a struct without fields to Arrow)."""
        return {name: values.get(name) for name in self.scorers} or None

    def seed(self, seed_id: str) -> dict[str, Any]:
        return self._base(kind="task", id=f"seed:{seed_id}", origin="seed")

    def seed_trace(self, seed_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return self._base(
            kind="trace",
            id=f"tool_seed:{seed_id}",
            origin="seed",
            tools=self._tools(messages),
        )

    def _tools(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        called = sorted(
            {call["function"]["name"] for m in messages for call in (m.get("tool_calls") or [])}
        )
        return [{"name": n, "source_sha256": self.tool_sources.get(n)} for n in called]

    def task(self, task_id: int, instance: Instance) -> dict[str, Any]:
        fields = self._origin_fields(self.tasks[task_id])
        scores = self.instance_scores.get(instance.id, {}) if instance.id is not None else {}
        return self._base(
            kind="task",
            id=f"task:{task_id}",
            instance_id=instance.id,
            scores=self._scores(scores),
            **fields,
        )

    def trace(self, trace_id: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
        fields = self._origin_fields(self.traces[trace_id])
        scores = self.trace_scores.get(trace_id, {})
        return self._base(
            kind="trace",
            id=f"trace:{trace_id}",
            scores=self._scores(scores),
            tools=self._tools(messages),
            **fields,
        )
