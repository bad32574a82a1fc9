"""Load exports with the real `datasets` library, as a user's script would, and print what came
back as JSON: `python load_with_datasets.py FOLDER_OR_FILE...`. A folder is loaded with
`load_dataset(FOLDER)` alone; a file with `load_dataset("json", data_files=FILE)`.

It runs in a child process so that `datasets` caches under the HF_HOME the test gives it.
"""

import json
import sys
from pathlib import Path

from datasets import load_dataset

out = {}
for arg in sys.argv[1:]:
    path = Path(arg)
    if path.is_dir():
        data = load_dataset(str(path))
        out[arg] = {name: split.to_list() for name, split in data.items()}
    else:
        out[arg] = {"train": load_dataset("json", data_files=str(path), split="train").to_list()}
print(json.dumps(out))
