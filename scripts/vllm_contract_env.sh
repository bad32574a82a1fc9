#!/usr/bin/env bash
# Makes .venv-vllm: vLLM 0.33 (which pins its own torch, CUDA build and all) beside selfgen, for
# the vLLM contract tests (tests/test_vllm_contract.py). No GPU is needed to install it or to run
# those tests. Run from anywhere; re-running reuses the folder and pip's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VLLM_VENV:-.venv-vllm}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q 'vllm==0.33.0'
