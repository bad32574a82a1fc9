"""LoRA supervised fine-tuning with TRL's SFTTrainer on an `openai`-format export.

`prepare` does everything that can fail on the user's input (data file, model, chat template)
before the output folder is touched; `TuneJob.train` runs the trainer, writes checkpoints under
``OUT/checkpoints`` (resumable), the final adapter and ``selfgen_tune.json`` in ``OUT``, and with
``merge`` a full model with the adapter folded in under ``OUT/merged``. The same code runs on a
GPU, in bfloat16 where the GPU has it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfgen import __version__
from selfgen.tune import TuneError, write_json_atomic
from selfgen.tune.config import TuneConfig
from selfgen.tune.data import (
    ChatExample,
    load_chat_file,
    split_rows,
    template_messages,
    template_renders_tools,
    tokenize_example,
)
from selfgen.tune.models import (
    RECORD,
    ModelSource,
    best_dtype,
    fingerprint,
    load_model,
    load_tokenizer,
    resolve_model,
    use_threads,
    write_merged_record,
)

# (step, max_steps, logged dict or None), after each optimizer step and each log.
StepCallback = Callable[[int, int, "dict[str, Any] | None"], None]
CHECKPOINTS = "checkpoints"
MERGED = "merged"


@dataclass
class TuneJob:
    config: TuneConfig
    data_path: Path
    out_dir: Path
    source: ModelSource
    tokenizer: Any
    model: Any  # the PEFT model: the base with fresh LoRA weights
    base_fingerprint: str
    tools_rendering: str  # "chat template" or "fallback"
    train_rows: int
    valid_rows: int
    unverified_rows: int
    train_dataset: Any
    eval_dataset: Any = None
    # Tokens in the longest training row (what a batch's memory grows with).
    longest_row: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    def trainable_parameters(self) -> dict[str, Any]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def train(
        self,
        resume: bool = False,
        merge: bool = False,
        quiet: bool = False,
        on_step: StepCallback | None = None,
    ) -> dict[str, Any]:
        """Train, save the adapter (and the merged model), and return the run record.

        `quiet` silences the trainer's own progress bar and printed logs; `on_step(step,
        max_steps, logs)` is called after each optimizer step (logs None) and with each
        logged dict (loss, learning rate, ...), for a display of one's own."""
        checkpoint = last_checkpoint(self.out_dir) if resume else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Written first so that `--resume` finds the settings of an interrupted run.
        write_json_atomic(self.out_dir / RECORD, self._record([], {}, "training"))
        trainer = self._trainer(quiet)
        if on_step is not None:
            trainer.add_callback(_step_reporter(on_step))
        with warnings.catch_warnings():
            # PEFT looks for the base model's config.json beside a GGUF file at every save, to
            # see whether the vocabulary grew; there is none, and the vocabulary is unchanged.
            warnings.filterwarnings("ignore", message="Could not find a config file")
            result = trainer.train(resume_from_checkpoint=checkpoint)
            metrics = dict(result.metrics)
            if self.eval_dataset is not None:
                metrics.update(trainer.evaluate())
            trainer.save_model(str(self.out_dir))
        self.record = self._record(trainer.state.log_history, metrics, "done")
        write_json_atomic(self.out_dir / RECORD, self.record)
        if merge:
            self.merge()
        return self.record

    def merge(self) -> Path:
        """Fold the adapter into the base weights and save a plain model folder."""
        merged = self.model.merge_and_unload()
        folder = self.out_dir / MERGED
        merged.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        write_merged_record(folder, self.out_dir)
        return folder

    def _trainer(self, quiet: bool) -> Any:
        import torch
        from transformers import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        cfg = self.config
        evaluating = self.eval_dataset is not None
        args = SFTConfig(
            output_dir=str(self.out_dir / CHECKPOINTS),
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.max_length,
            seed=cfg.seed,
            data_seed=cfg.seed,
            logging_steps=cfg.logging_steps,
            save_steps=cfg.save_steps,
            save_total_limit=2,
            eval_strategy="steps" if evaluating else "no",
            eval_steps=cfg.save_steps if evaluating else None,
            # TRL defaults these two to True; bf16 only pays on a GPU, and checkpointing
            # activations is not worth its recomputation for models this size.
            bf16=best_dtype() == torch.bfloat16,
            gradient_checkpointing=False,
            report_to="none",
            disable_tqdm=quiet,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=self.model,
            args=args,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            processing_class=self.tokenizer,
        )
        if quiet:
            trainer.remove_callback(PrinterCallback)
        return trainer

    def _record(
        self, log_history: list[dict[str, Any]], metrics: dict[str, Any], status: str
    ) -> dict[str, Any]:
        return {
            "status": status,
            "selfgen_version": __version__,
            "base_model": self.source.spec,
            "base_fingerprint": self.base_fingerprint,
            "data": str(self.data_path),
            "train_rows": self.train_rows,
            "valid_rows": self.valid_rows,
            "unverified_rows_left_out": self.unverified_rows,
            "tools_rendering": self.tools_rendering,
            "config": self.config.to_dict(),
            "metrics": metrics,
            "train_loss": [
                {"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e
            ],
            "eval_loss": [
                {"step": e["step"], "loss": e["eval_loss"]} for e in log_history if "eval_loss" in e
            ],
        }


def _step_reporter(on_step: StepCallback) -> Any:
    """A TrainerCallback that hands each step and each logged dict to `on_step`."""
    from transformers import TrainerCallback

    class StepReporter(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # A step about to be logged is reported once, with its figures, by on_log.
            if not control.should_log:
                on_step(state.global_step, state.max_steps, None)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if logs:
                on_step(state.global_step, state.max_steps, dict(logs))

    return StepReporter()


def last_checkpoint(out_dir: Path) -> str:
    """The newest checkpoint of a run in `out_dir`, or a :class:`TuneError` for `--resume`."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = out_dir / CHECKPOINTS
    checkpoint = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if checkpoint is None:
        raise TuneError(f"--resume: no checkpoint in {folder}")
    return checkpoint


def stored_config(out_dir: Path) -> dict[str, Any]:
    """The settings of the run in `out_dir`, for `--resume`."""
    try:
        return json.loads((out_dir / RECORD).read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError):
        raise TuneError(f"--resume: {out_dir} holds no tuning run ({RECORD})") from None


def prepare(data_path: Path, out_dir: Path, config: TuneConfig, resume: bool = False) -> TuneJob:
    """Check the data, the model and the output folder, load the model and add LoRA weights."""
    if resume:
        last_checkpoint(out_dir)  # fail before the model is loaded
    elif (out_dir / RECORD).exists() or (out_dir / CHECKPOINTS).exists():
        raise TuneError(
            f"--out: {out_dir} already holds a tuning run (use --resume, or another --out)"
        )
    chat = load_chat_file(data_path)
    train_rows, valid_rows = chat.examples, []
    if config.valid_file:
        valid_rows = load_chat_file(config.valid_file).examples
    elif config.valid_split:
        train_rows, valid_rows = split_rows(chat.examples, config.valid_split, config.seed)
    source = resolve_model(config.base_model)
    use_threads(config.threads)
    tokenizer = load_tokenizer(source)
    native = template_renders_tools(tokenizer)
    train_dataset = _tokenized(tokenizer, train_rows, native, config.max_length)
    eval_dataset = (
        _tokenized(tokenizer, valid_rows, native, config.max_length) if valid_rows else None
    )
    model = load_model(source)
    base_fp = fingerprint(model)
    peft_model = _with_lora(model, config)
    return TuneJob(
        config=config,
        data_path=data_path,
        out_dir=out_dir,
        source=source,
        tokenizer=tokenizer,
        model=peft_model,
        base_fingerprint=base_fp,
        tools_rendering="chat template" if native else "fallback",
        train_rows=len(train_rows),
        valid_rows=len(valid_rows),
        unverified_rows=chat.unverified,
        train_dataset=train_dataset,
        longest_row=max((len(ids) for ids in train_dataset["input_ids"]), default=0),
        eval_dataset=eval_dataset,
    )


def _tokenized(
    tokenizer: Any, examples: list[ChatExample], native_tools: bool, max_length: int
) -> Any:
    """The rows as token ids and labels. The trainer cuts a row at `max_length` tokens; a row
    that would lose every trained token is refused (a tool-use row starts with the schemas of
    every tool, which can be more than a thousand tokens: it would train on nothing)."""
    from datasets import Dataset

    rows = []
    for example in examples:
        messages, tools = template_messages(example, native_tools)
        row = tokenize_example(tokenizer, messages, tools, example.where)
        first = next((i for i, label in enumerate(row["labels"]) if label != -100), None)
        if first is not None and first >= max_length:
            raise TuneError(
                f"{example.where}: the row's first trained token is token {first + 1}, beyond "
                f"--max-length {max_length}: raise --max-length to at least "
                f"{len(row['input_ids'])} (this row's length)"
            )
        rows.append(row)
    return Dataset.from_list(rows)


def _with_lora(model: Any, config: TuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(config.seed)  # the LoRA A matrices are drawn at random
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.peft_target_modules(),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TuneError(f"--target-modules: {exc}") from None
