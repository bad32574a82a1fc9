"""Read a `--format sharegpt` export with LLaMA-Factory's own data pipeline, as its `sft` stage
does, and write what it made of each row as JSON.

    python llamafactory_check.py DATA_DIR DATASET TOKENIZER_DIR OUT_JSON

It runs in LLaMA-Factory's own environment (its pins clash with selfgen's `tune` extra), so it
imports nothing from selfgen. `DATA_DIR` holds the export and the `dataset_info.json` selfgen
wrote beside it; `DATASET` is the entry's name. For every row that survives LLaMA-Factory's
converter it writes the whole rendered text and the text of the tokens the loss is taken on
to `OUT_JSON` (LLaMA-Factory prints to stdout itself).
"""

import json
import sys
import tempfile

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer

IGNORE_INDEX = -100


def main() -> None:
    data_dir, dataset, tokenizer_dir, out_json = sys.argv[1:5]
    with tempfile.TemporaryDirectory() as out:
        model_args, data_args, training_args, _, _ = get_train_args(
            {
                "stage": "sft",
                "do_train": True,
                "model_name_or_path": tokenizer_dir,
                "dataset": dataset,
                "dataset_dir": data_dir,
                # A chatml template with tool calls and observations (Hermes-style tags).
                "template": "qwen",
                "cutoff_len": 8192,
                "output_dir": out,
                "overwrite_cache": True,
                "report_to": "none",
                "finetuning_type": "lora",
            }
        )
        tokenizer_module = load_tokenizer(model_args)
        tokenizer = tokenizer_module["tokenizer"]
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
        module = get_dataset(
            template, model_args, data_args, training_args, "sft", **tokenizer_module
        )
        rows = []
        for example in module["train_dataset"]:
            ids, labels = example["input_ids"], example["labels"]
            trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
            rows.append(
                {
                    "text": tokenizer.decode(ids),
                    "trained": tokenizer.decode(trained),
                }
            )
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
