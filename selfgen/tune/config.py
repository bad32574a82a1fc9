"""Tuning settings: defaults, then a TOML file (``--config``), then flags.

Kept apart from the training code so the command line can validate a configuration before
anything heavy is imported.
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

from selfgen.tune import TuneError


@dataclass
class TuneConfig:
    base_model: str = "bundled"
    epochs: float = 3.0
    max_steps: int | None = None  # when set, wins over epochs
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "all-linear" is PEFT's shorthand for every linear layer but the output head.
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    max_length: int = 1024
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 0
    valid_split: float = 0.0  # fraction of rows held out for the validation loss
    valid_file: str | None = None  # or a validation file, e.g. from `selfgen export --split`
    save_steps: int = 100
    logging_steps: int = 10
    threads: int | None = None  # CPU threads for torch [default: torch's choice, all cores]

    def validate(self) -> None:
        positive = ("lora_r", "lora_alpha", "max_length", "batch_size", "grad_accum")
        for name in (*positive, "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise TuneError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise TuneError("--threads: must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise TuneError("--max-steps: must be at least 1")
        if self.epochs <= 0:
            raise TuneError("--epochs: must be above 0")
        if self.learning_rate <= 0:
            raise TuneError("--learning-rate: must be above 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TuneError("--lora-dropout: must be in [0, 1)")
        if not 0.0 <= self.valid_split < 1.0:
            raise TuneError("--valid-split: must be in [0, 1)")
        if self.valid_split and self.valid_file:
            raise TuneError("--valid-split and --valid-file: give one of them")
        if not self.target_modules or not all(m.strip() for m in self.target_modules):
            raise TuneError(
                "--target-modules: give module names such as q_proj,v_proj or all-linear"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def peft_target_modules(self) -> str | list[str]:
        return "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)


FIELDS = {f.name: f for f in dataclasses.fields(TuneConfig)}
NUMBERS = {name for name, f in FIELDS.items() if isinstance(f.default, int | float)} | {
    "max_steps",
    "threads",
}


def load_tune_toml(path: str | Path) -> dict[str, Any]:
    """Read a tune.toml: top-level keys are TuneConfig fields (an optional [tune] table too)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneError(f"--config: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TuneError(f"{path}: invalid TOML ({exc})") from None
    if isinstance(data.get("tune"), dict):
        data = {**{k: v for k, v in data.items() if k != "tune"}, **data["tune"]}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise TuneError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    if isinstance(data.get("target_modules"), str):
        data["target_modules"] = [data["target_modules"]]
    return data


# Settings that may change when a run is resumed: how long it trains, how often it reports,
# and the machine's threads.
RESUMABLE = {"epochs", "max_steps", "save_steps", "logging_steps", "threads"}


def resume_conflicts(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Requested settings that differ from a stored run's and may not change on resume."""
    return [
        f"{name} is {stored.get(name)!r}, not {value!r}"
        for name, value in requested.items()
        if value is not None and name not in RESUMABLE and stored.get(name) != value
    ]


def build_tune_config(*layers: dict[str, Any]) -> TuneConfig:
    """Defaults, then each layer's non-None values in order; validated."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    for name, value in values.items():
        if name in NUMBERS and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise TuneError(f"setting '{name}' must be a number")
        if name == "target_modules" and not (
            isinstance(value, list) and all(isinstance(m, str) for m in value)
        ):
            raise TuneError("setting 'target_modules' must be a list of module names")
    config = TuneConfig(**values)
    config.validate()
    return config
