"""Scoring a base model and a tuned one on held-out tasks, as the Self-Instruct paper did.

Task files are JSONL with ``instruction`` and ``instances`` (``[{"input", "output"}]``): the
Self-Instruct seed format and the paper's 252 user-oriented tasks both read as they are. A
task's category is its ``motivation_app`` (the 252 set), else its ``category``, else ``all``.

Each instance is asked as one user message (instruction and input joined as `selfgen export`
joins them) through the model's chat template, answered greedily, and scored by ROUGE-L F
against the reference output with rouge-score (with stemming, as Super-NaturalInstructions'
evaluation scores). Scores are averaged per category and overall.

Generation runs batched in transformers; on a GPU with vLLM installed, vLLM generates instead
(`_generate_vllm`, for model folders: vLLM does not read every GGUF).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfgen.export import user_message
from selfgen.io import line_of, read_jsonl
from selfgen.tune import TuneDataError, TuneError
from selfgen.tune.models import (
    ModelSource,
    attach_adapter,
    check_adapter_base,
    fingerprint,
    fingerprint_files,
    load_model,
    load_tokenizer,
    read_record,
    refuse_merged_adapter,
    resolve_model,
    use_threads,
)

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Progress = Callable[[int, int], None]  # (answers done, answers in all)


@dataclass(frozen=True)
class EvalItem:
    task_id: str
    category: str
    instance: int
    prompt: str  # the user message
    reference: str


def load_eval_items(path: str | Path, limit: int | None = None) -> list[EvalItem]:
    """The instances of the first `limit` tasks of a task file, or a :class:`TuneDataError`."""
    items: list[EvalItem] = []
    tasks = read_jsonl(path, what="task file", holds="tasks", error=TuneDataError)
    for number, (where, task) in enumerate(tasks):
        if limit is not None and number >= limit:
            break
        items += _task_items(task, where)
    return items


def _task_items(task: dict[str, Any], where: str) -> list[EvalItem]:
    instruction = task.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise TuneDataError(f"{where}: 'instruction' must be a non-empty string")
    instances = task.get("instances")
    if not isinstance(instances, list) or not instances:
        raise TuneDataError(f"{where}: 'instances' must be a non-empty list")
    category = task.get("motivation_app") or task.get("category") or "all"
    task_id = str(task.get("id", f"line_{line_of(where)}"))
    items = []
    for i, inst in enumerate(instances):
        if not (
            isinstance(inst, dict)
            and isinstance(inst.get("input"), str)
            and isinstance(inst.get("output"), str)
        ):
            raise TuneDataError(f"{where}: instances[{i}] must have string 'input' and 'output'")
        prompt = user_message(instruction.strip(), inst["input"])
        items.append(EvalItem(task_id, str(category), i, prompt, inst["output"]))
    return items


@lru_cache(maxsize=1)
def _scorer() -> RougeScorer:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def summarize(items: list[EvalItem], scores: list[float]) -> dict[str, Any]:
    """Mean ROUGE-L per category (sorted by name) and overall, with instance counts."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for item, score in zip(items, scores, strict=True):
        by_category[item.category].append(score)
    return {
        "overall": {"n": len(scores), "rouge_l": sum(scores) / len(scores)},
        "categories": {
            name: {"n": len(values), "rouge_l": sum(values) / len(values)}
            for name, values in sorted(by_category.items())
        },
    }


def evaluate(
    tasks: Path,
    *,
    model_spec: str | None = None,
    adapter: Path | None = None,
    compare: bool = False,
    limit: int | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Generate and score answers; with `compare`, for the base model and the adapted one.

    `model_spec` None means the base model the adapter was tuned from (else the bundled one)."""
    if compare and adapter is None:
        raise TuneError("compare needs an adapter (the tuned model to compare with the base)")
    items = load_eval_items(tasks, limit)
    if model_spec is None:
        record = read_record(adapter) if adapter else {}
        model_spec = record.get("base_model", "bundled")
    source = resolve_model(model_spec, flag="--model")
    use_threads(threads)
    if adapter is not None:
        read_record(adapter)  # a missing or empty adapter folder fails before the model loads
        refuse_merged_adapter(source, adapter)
    tokenizer = load_tokenizer(source)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": item.prompt}], tokenize=False, add_generation_prompt=True
        )
        for item in items
    ]
    runs = (["base"] if adapter is None or compare else []) + (["tuned"] if adapter else [])
    total = len(prompts) * len(runs)
    if _vllm_usable(source):
        if adapter is not None:
            # vLLM loads the base itself, so its fingerprint is read from the files (or, where
            # the embeddings are not found there, from the model loaded on the CPU).
            actual = fingerprint_files(source) or fingerprint(load_model(source))
            check_adapter_base(adapter, actual, model_spec)
        answers = _generate_vllm(
            source,
            adapter,
            prompts=prompts,
            runs=runs,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        generator = "vllm"
    else:
        answers = _generate_transformers(
            source,
            tokenizer,
            adapter,
            prompts=prompts,
            runs=runs,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            total=total,
        )
        generator = "transformers"
    results: dict[str, Any] = {
        "tasks": str(tasks),
        "model": model_spec,
        "adapter": str(adapter) if adapter else None,
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "generator": generator,
        "models": {},
        "items": [
            {
                "task_id": i.task_id,
                "category": i.category,
                "instance": i.instance,
                "reference": i.reference,
            }
            for i in items
        ],
    }
    for run in runs:
        scores = [rouge_l(a, i.reference) for a, i in zip(answers[run], items, strict=True)]
        results["models"][run] = summarize(items, scores)
        for row, answer, score in zip(results["items"], answers[run], scores, strict=True):
            row[run] = answer
            row[f"{run}_rouge_l"] = score
    return results


def _generate_transformers(
    source: ModelSource,
    tokenizer: PreTrainedTokenizerBase,
    adapter: Path | None,
    *,
    prompts: list[str],
    runs: list[str],
    max_new_tokens: int,
    batch_size: int,
    progress: Progress | None,
    total: int,
) -> dict[str, list[str]]:
    from contextlib import nullcontext

    model = load_model(source)
    model.eval()
    if adapter is not None:
        # Attached first, so a wrong adapter is refused before any answer is generated;
        # the base answers are generated with the adapter switched off.
        model = attach_adapter(model, adapter, source.spec)
    answers: dict[str, list[str]] = {}
    done = 0
    for run in runs:
        answers[run] = []
        with model.disable_adapter() if run == "base" and adapter else nullcontext():
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start : start + batch_size]
                answers[run] += generate_batch(
                    model, tokenizer, batch, max_new_tokens=max_new_tokens
                )
                done += len(batch)
                if progress:
                    progress(done, total)
    return answers


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
) -> list[str]:
    """Greedy answers to chat-formatted prompts, padded on the left as decoder-only models need."""
    import torch

    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    encoded = encoded.to(model.device)
    with torch.inference_mode():
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[:, encoded["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _vllm_usable(source: ModelSource) -> bool:
    import importlib.util

    import torch

    return (
        source.gguf_file is None
        and torch.cuda.is_available()
        and importlib.util.find_spec("vllm") is not None
    )


# The LoRA ranks vLLM's engine takes (`LoRAConfig.max_lora_rank`); an adapter of another rank
# runs with the next larger one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Prompts per `LLM.generate` call: vLLM batches within a call, and the progress bar moves
# between calls.
VLLM_CHUNK = 256


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM takes that holds an adapter of `rank`, or a TuneError."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise TuneError(
        f"--adapter: its LoRA rank {rank} is more than vLLM takes ({VLLM_LORA_RANKS[-1]})"
    )


def _generate_vllm(
    source: ModelSource,
    adapter: Path | None,
    *,
    prompts: list[str],
    runs: list[str],
    max_new_tokens: int,
    progress: Progress | None = None,
) -> dict[str, list[str]]:
    """The GPU path: one vLLM engine for both runs, the adapter applied per request."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    lora: dict[str, Any] = {}
    if adapter is not None:
        rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
        lora = {"enable_lora": True, "max_lora_rank": vllm_lora_rank(int(rank))}
    try:
        llm = LLM(model=str(source.folder), **lora)
    except Exception as exc:  # vLLM raises many kinds; the user needs the message
        raise TuneError(f"--model: vLLM cannot load {source.spec} ({_one_line(exc)})") from None
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    answers: dict[str, list[str]] = {}
    done, total = 0, len(prompts) * len(runs)
    for run in runs:
        request = LoRARequest("tuned", 1, str(adapter)) if run == "tuned" else None
        answers[run] = []
        for start in range(0, len(prompts), VLLM_CHUNK):
            chunk = prompts[start : start + VLLM_CHUNK]
            try:
                outputs = llm.generate(
                    chunk,
                    params,
                    lora_request=request,
                    use_tqdm=False,
                    # The prompts are chat-formatted: the template wrote the special tokens,
                    # as for the transformers path (a second BOS would change the answers).
                    tokenization_kwargs={"add_special_tokens": False},
                )
            except Exception as exc:
                raise TuneError(f"vLLM failed to answer ({_one_line(exc)})") from None
            answers[run] += [o.outputs[0].text.strip() for o in outputs]
            done += len(chunk)
            if progress:
                progress(done, total)
    return answers


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (pydantic's span several), cut at 300 characters."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
