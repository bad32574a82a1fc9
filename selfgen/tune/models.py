"""Finding and loading a base model, and checking that an adapter belongs to it.

A model is named by a Hugging Face model folder, a ``.gguf`` file, or ``bundled`` (the
SmolLM2-135M GGUF that the default llama.cpp backend runs). transformers reads a GGUF through the
``gguf`` package and de-quantises it to full precision; the tokenizer and chat template come from
the same file. Nothing is downloaded: a name that is not on disk is an error.

An adapter folder written by `selfgen tune` holds ``selfgen_tune.json`` with its base model and
a fingerprint of the base weights (a hash of the input embeddings, rounded to bfloat16 so a
model loaded in bf16 on a GPU and in fp32 on a CPU agree). Loading an adapter onto a model with
another fingerprint is refused, instead of quietly producing nonsense or a shape error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfgen.tune import TuneError

RECORD = "selfgen_tune.json"
# Written into a merged model folder: which adapter was folded into it.
MERGED_RECORD = "selfgen_merged.json"


@dataclass(frozen=True)
class ModelSource:
    spec: str  # as the user wrote it
    folder: Path
    gguf_file: str | None = None

    def pretrained_args(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return str(self.folder), kwargs


def resolve_model(spec: str, flag: str = "--base-model") -> ModelSource:
    """Where the model named by `spec` lives, or a :class:`TuneError` naming the flag."""
    if spec == "bundled":
        from selfgen.backends.llamacpp import bundled_model_path

        path = Path(bundled_model_path())
        return ModelSource(spec, path.parent, path.name)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, path.resolve().parent, path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(spec, path.resolve())
    if path.is_dir():
        raise TuneError(f"{flag}: {spec} is a folder without config.json (not a model folder)")
    if path.exists():
        raise TuneError(f"{flag}: {spec} is neither a .gguf file nor a model folder")
    raise TuneError(
        f"{flag}: no such model: {spec} (give a model folder, a .gguf file or 'bundled')"
    )


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    name, kwargs = source.pretrained_args()
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if not tokenizer.chat_template:
        raise TuneError(f"{source.spec}: the model has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def use_threads(threads: int | None) -> None:
    """Limit torch's CPU threads. On a machine whose cores other work also uses, torch's
    OpenMP threads wait on each other at every operation: one thread can be many times faster."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def best_dtype() -> Any:
    """bfloat16 on a GPU that has it, float32 otherwise (CPU training in bf16 is slow)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(source: ModelSource) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    name, kwargs = source.pretrained_args()
    if source.gguf_file:
        kwargs.update(_dequantize_gguf())
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=best_dtype(), **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneError(f"{source.spec}: cannot load the model ({exc})") from None
    if getattr(model, "hf_quantizer", None) is not None and source.gguf_file:
        # Every weight is unpacked; what is left of the GGUF quantizer only stops
        # the Trainer from training and the model from being saved.
        model.hf_quantizer.remove_quantization_config(model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model


def save_hf_folder(source: ModelSource, folder: Path) -> Path:
    """Write the model of `source` (a GGUF such as the bundled one) to `folder` as a Hugging
    Face model folder with dense weights, which vLLM loads; returns `folder`.

    The weights are de-quantised and the GGUF quantizer removed (`load_model`): transformers
    refuses to save a model that still carries it ("QuantizationMethod.GGUF ... is not
    serializable")."""
    from transformers import AutoTokenizer

    name, kwargs = source.pretrained_args()
    folder.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(name, **kwargs).save_pretrained(folder)
    load_model(source).save_pretrained(folder)
    return folder


def _dequantize_gguf() -> dict[str, Any]:
    """Ask for plain dense weights: LoRA needs ordinary linear layers to attach to.

    transformers 5 can keep GGUF weights packed behind its own kernels; older versions always
    unpack them and have no `GgufConfig`.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def fingerprint(model: Any) -> str:
    """A short hash of the base model's input embeddings (see the module docstring)."""
    return _hash_weights(model.get_input_embeddings().weight)


def _hash_weights(weights: Any) -> str:
    import hashlib

    import torch

    weights = weights.detach().to("cpu", torch.bfloat16)
    return hashlib.sha256(weights.view(torch.int16).numpy().tobytes()).hexdigest()[:16]


def fingerprint_files(source: ModelSource) -> str | None:
    """The fingerprint of a model folder read from its safetensors files without loading the
    model (vLLM loads it itself); None when the embeddings are not found there."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.gguf_file:
        return None
    config = AutoConfig.from_pretrained(str(source.folder), local_files_only=True)
    with torch.device("meta"):  # the parameter names, without allocating the weights
        skeleton = AutoModelForCausalLM.from_config(config)
    embeddings = skeleton.get_input_embeddings().weight
    name = next(n for n, p in skeleton.named_parameters() if p is embeddings)
    for file in sorted(source.folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            if name in tensors.keys():
                return _hash_weights(tensors.get_tensor(name))
    return None


def check_adapter_base(adapter_dir: Path, actual: str, model_spec: str) -> None:
    """Refuse an adapter whose recorded base fingerprint is not `actual`."""
    record = read_record(adapter_dir)
    expected = record.get("base_fingerprint")
    if expected and expected != actual:
        raise TuneError(
            f"--adapter: {adapter_dir} was tuned on another base model "
            f"({record.get('base_model')}), not on {model_spec}"
        )


def read_record(adapter_dir: Path) -> dict[str, Any]:
    """The `selfgen_tune.json` of an adapter folder, or a :class:`TuneError` for `--adapter`."""
    if not adapter_dir.is_dir():
        raise TuneError(f"--adapter: no such folder: {adapter_dir}")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TuneError(f"--adapter: {adapter_dir} holds no adapter (adapter_config.json)")
    try:
        return json.loads((adapter_dir / RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # a PEFT adapter made elsewhere: no fingerprint to check
    except (OSError, json.JSONDecodeError) as exc:
        raise TuneError(f"--adapter: cannot read {adapter_dir / RECORD} ({exc})") from None


def attach_adapter(model: Any, adapter_dir: Path, model_spec: str) -> Any:
    """The base `model` with the adapter of `adapter_dir` loaded on it, ready to generate."""
    from peft import PeftModel

    check_adapter_base(adapter_dir, fingerprint(model), model_spec)
    try:
        tuned = PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"--adapter: {adapter_dir} does not fit {model_spec} ({first})") from None
    tuned.eval()
    return tuned


def adapter_hash(adapter_dir: Path) -> str | None:
    """A short hash of an adapter's weights file (None when it has none we know)."""
    import hashlib

    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        path = adapter_dir / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()[:16]
    return None


def write_merged_record(folder: Path, adapter_dir: Path) -> None:
    """Mark a merged model folder with the adapter folded into it."""
    record = {"adapter": str(adapter_dir.resolve()), "adapter_hash": adapter_hash(adapter_dir)}
    (folder / MERGED_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def refuse_merged_adapter(source: ModelSource, adapter_dir: Path) -> None:
    """Refuse to apply an adapter to a model it was already merged into: the adapter's change
    would count twice, and the numbers would describe neither model."""
    try:
        record = json.loads((source.folder / MERGED_RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return  # not a model selfgen merged
    same_folder = Path(record.get("adapter", "")) == adapter_dir.resolve()
    same_weights = record.get("adapter_hash") and record["adapter_hash"] == adapter_hash(
        adapter_dir
    )
    if same_folder or same_weights:
        raise TuneError(
            f"--adapter: {adapter_dir} is already merged into {source.spec}; evaluate "
            f"--model {source.spec} alone, or the base model with --adapter {adapter_dir}"
        )
