"""Tuning settings: defaults, then a TOML file (``--config``), then flags.

Declared and loaded as the run's settings are (:mod:`selfgen.config`): each field carries its
help and flag, and the same TOML loader, layered builder and resume check serve both. Kept
apart from the training code so the command line can validate a configuration before anything
heavy is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfgen.config import ConfigError, build, changed_settings, load_toml, setting
from selfgen.tune import TuneError


class TuneConfigError(ConfigError, TuneError):
    """A tuning setting the user must fix (a ConfigError, and a TuneError like every problem
    of `selfgen tune`)."""


@dataclass
class TuneConfig:
    base_model: str = setting("bundled", help="A model folder, a .gguf file or 'bundled'.")
    epochs: float = setting(3.0, resumable=True, help="Passes over the data.")
    max_steps: int | None = setting(
        None, resumable=True, help="Optimizer steps; wins over --epochs."
    )
    learning_rate: float = setting(2e-4, help="Peak learning rate.")
    lora_r: int = setting(16, help="LoRA rank.")
    lora_alpha: int = setting(32, help="LoRA alpha.")
    lora_dropout: float = setting(0.05, help="LoRA dropout.")
    # "all-linear" is PEFT's shorthand for every linear layer but the output head.
    target_modules: list[str] = setting(
        default_factory=lambda: ["all-linear"],
        help="Comma-separated module names, or all-linear.",
    )
    # A tool-use row with the fallback's tool schemas is about 1,400 tokens on SmolLM2.
    max_length: int = setting(2048, help="Tokens per example; longer ones are cut.")
    batch_size: int = setting(4, help="Examples per step.")
    grad_accum: int = setting(1, help="Gradient accumulation steps.")
    seed: int = setting(0, help="Seed.")
    valid_split: float = setting(0.0, help="Fraction of rows held out for a validation loss.")
    valid_file: str | None = setting(
        None, path=True, help="A validation file instead (e.g. export --split)."
    )
    save_steps: int = setting(100, resumable=True, help="Checkpoint (and validate) every N steps.")
    logging_steps: int = setting(10, resumable=True, help="Report the loss every N steps.")
    threads: int | None = setting(
        None, resumable=True, default_text="all cores", help="CPU threads for torch."
    )

    def validate(self) -> None:
        def need(cond: bool, field: str, problem: str) -> None:
            if not cond:
                raise TuneConfigError(problem, field=field)

        positive = ("lora_r", "lora_alpha", "max_length", "batch_size", "grad_accum")
        for name in (*positive, "save_steps", "logging_steps"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        need(self.threads is None or self.threads >= 1, "threads", "must be at least 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be at least 1")
        need(self.epochs > 0, "epochs", "must be above 0")
        need(self.learning_rate > 0, "learning_rate", "must be above 0")
        need(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        need(0.0 <= self.valid_split < 1.0, "valid_split", "must be in [0, 1)")
        need(
            not (self.valid_split and self.valid_file),
            "valid_file",
            "not with a valid_split too; give one of them",
        )
        need(
            bool(self.target_modules) and all(m.strip() for m in self.target_modules),
            "target_modules",
            "give module names such as q_proj,v_proj or all-linear",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def peft_target_modules(self) -> str | list[str]:
        return "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)


@contextmanager
def _tune_errors() -> Iterator[None]:
    try:
        yield
    except TuneConfigError:
        raise
    except ConfigError as exc:
        raise TuneConfigError(exc.problem, field=exc.field, source=exc.source) from None


def load_tune_toml(path: str | Path) -> dict[str, Any]:
    """Read a tune.toml: top-level keys are TuneConfig fields (an optional [tune] table too)."""
    with _tune_errors():
        return load_toml(path, TuneConfig, "tune")


def resume_conflicts(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Requested settings that differ from a stored run's and may not change on resume."""
    return [
        f"{name} is {stored.get(name)!r}, not {requested[name]!r}"
        for name in changed_settings(TuneConfig, stored, requested)
    ]


def build_tune_config(*layers: Mapping[str, Any]) -> TuneConfig:
    """Defaults, then each layer's non-None values in order; validated."""
    with _tune_errors():
        return build(TuneConfig, *layers)
