#!/usr/bin/env bash
# Makes .venv-llamafactory, the environment of tests/test_llamafactory.py: LLaMA-Factory 0.9.5,
# whose own data pipeline reads selfgen's `--format sharegpt` exports there. Its pins
# (datasets<=4.0, trl<=0.24) clash with selfgen's `tune` extra, so it cannot share the project's
# environment. Re-running it on an existing environment only checks it.
#
# torch is the 2.13 CPU build, as in the project's environment. PyPI's newest torchaudio (2.11)
# has kernels built for torch 2.11 that fail to load under 2.13, and LLaMA-Factory imports
# torchaudio whatever the data; without those kernels torchaudio imports in pure Python, and
# only audio data, which selfgen never exports, would need them. So they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LLAMAFACTORY_VENV:-.venv-llamafactory}
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q torch==2.13.0 llamafactory==0.9.5
# torchvision from PyPI is built for another torch too, and nothing here uses it.
"$venv/bin/python" -m pip uninstall -q -y torchvision 2>/dev/null || true
rm -f "$venv"/lib/python3*/site-packages/torchaudio/lib/*.so
"$venv/bin/python" -c "import llamafactory.data; print('LLaMA-Factory', __import__('llamafactory').__version__, 'in', '$venv')"
