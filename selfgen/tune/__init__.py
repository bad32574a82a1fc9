"""Instruction tuning on the exported data, and the measurement that says whether it helped.

`selfgen tune` fine-tunes a LoRA adapter with TRL's SFTTrainer on an `openai`-format export;
`selfgen eval` scores a base model and a tuned one on held-out tasks with ROUGE-L, as the
Self-Instruct paper did. torch, transformers, TRL and PEFT are an optional extra
(``pip install 'selfgen[tune]'``): only the modules of this package import them, and only
inside the functions that need them, so ``import selfgen.tune`` stays light.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

from selfgen.io import DataFileError
from selfgen.io import write_json_atomic as write_json_atomic

# Import names of the `tune` extra, and the distribution that provides each.
EXTRA_MODULES = {
    "torch": "torch",
    "transformers": "transformers",
    "trl": "trl",
    "peft": "peft",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "datasets": "datasets",
}


class TuneError(ValueError):
    """A problem the user must fix (data file, model, adapter, flag); the message says where."""


class TuneDataError(TuneError, DataFileError):
    """A training or task file that cannot be used; the message names the file and line."""


def missing_extra() -> list[str]:
    """The packages of the `tune` extra that are not installed."""
    return [
        dist for module, dist in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None
    ]


def require_extra() -> None:
    """Raise :class:`TuneError` with the install command when the extra is incomplete."""
    missing = missing_extra()
    if missing:
        raise TuneError(
            f"tuning needs {', '.join(missing)}: pip install 'selfgen[tune]' "
            "(on a CPU-only machine install torch's CPU build first, e.g. pip install torch==2.13.0)"
        )


def quiet_libraries() -> None:
    """Keep the libraries' info chatter and data-set progress bars out of the display.

    Through their environment variables, read when they are imported, so that a command that
    fails on its input never pays for importing them.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # Deprecation notices about the libraries' own settings, and torch's note that there is no
    # GPU to pin memory for: nothing a user of selfgen can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    warnings.filterwarnings("ignore", message=".*pin_memory.*", category=UserWarning)
