#!/usr/bin/env bash
# Checks a machine with a CUDA GPU and vLLM before a long run, in one command of at most
# 8 minutes: the `gpu`-marked tests (tests/test_vllm_backend.py: constraints, seeds, tool calls,
# a 10-task run on the in-process vllm backend and one through `vllm serve`) and
# benchmarks/loop_overhead.py on the vllm backend, both on the bundled SmolLM2-135M converted
# once to a Hugging Face folder. Everything goes to one file, which ends with one line per step
# and a verdict; the exit code is 0 only when every step passed.
#
#   pip install -e '.[vllm,tune,test]'    # in the environment that has vLLM and CUDA
#   scripts/gpu_check.sh [RESULTS_FILE]   # default: gpu_check.txt
#
# Each step has its own time limit (conversion 100 s, tests 280 s, benchmark 90 s), so the whole
# check ends within 8 minutes; a step that runs out is reported as such.
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(realpath -m "${1:-gpu_check.txt}")
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model="$work/smollm2-hf"
summary=()

step() {  # step NAME SECONDS COMMAND...: run one step into the results file, note its outcome
    local name=$1 limit=$2 status
    shift 2
    echo "=== $name (at most ${limit}s): $*" >>"$results"
    local started=$SECONDS
    timeout "$limit" "$@" >>"$results" 2>&1
    status=$?
    local took=$((SECONDS - started))
    if [ "$status" -eq 0 ]; then
        summary+=("$name: passed in ${took}s")
    elif [ "$status" -eq 124 ]; then
        summary+=("$name: TIMED OUT after ${limit}s")
    else
        summary+=("$name: FAILED (exit code $status) after ${took}s")
    fi
    echo >>"$results"
    return "$status"
}

{
    echo "selfgen GPU check, $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)" 2>&1
    echo
} >"$results"

if ! "$python" -c "import vllm" 2>/dev/null; then
    summary+=("vLLM: not installed in $python (pip install -e '.[vllm,tune,test]'); nothing was run")
elif ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    summary+=("CUDA: no CUDA GPU found by torch; nothing was run")
else
    step "convert the bundled model" 100 "$python" -c \
        "import sys; from pathlib import Path; from selfgen.tune.models import resolve_model, save_hf_folder; save_hf_folder(resolve_model('bundled'), Path(sys.argv[1]))" \
        "$model" &&
        {
            SELFGEN_HF_MODEL="$model" step "gpu tests" 280 "$python" -m pytest -m gpu -p no:cacheprovider \
                -o addopts="-ra" tests/test_vllm_backend.py
            step "loop overhead benchmark on vllm" 90 "$python" benchmarks/loop_overhead.py \
                --backends vllm --model "$model" -n 5
        }
fi

failed=0
{
    echo "=== summary"
    for line in "${summary[@]}"; do
        echo "$line"
        case $line in *passed*) ;; *) failed=1 ;; esac
    done
} >>"$results"
if [ "$failed" -eq 0 ]; then
    echo "verdict: this machine runs selfgen on vLLM" >>"$results"
else
    echo "verdict: NOT READY, see the steps above" >>"$results"
fi
tail -n $((${#summary[@]} + 2)) "$results"
echo "(all output in $results)"
exit "$failed"
