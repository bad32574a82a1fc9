#!/usr/bin/env bash
# The closed loop on the embedded default: grow N tasks, export them, tune the bundled model on
# them, and score base and tuned model on the 252 user-oriented tasks. Prints each step's wall
# time and the two mean ROUGE-L scores.
#
#   bash benchmarks/closed_loop.sh [N] [OUT]      (defaults: 100, outputs/closed_loop)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
out=${2:-outputs/closed_loop}
tasks=../shared/data/self_instruct_user_oriented_instructions_252.jsonl
[ -f "$tasks" ] || { echo "needs $tasks" >&2; exit 2; }
rm -rf "$out"
declare -A took
step() {
    local name=$1; shift
    local start=$EPOCHREALTIME
    "$@"
    took[$name]=$(python3 -c "print($EPOCHREALTIME - $start)")
}
step run selfgen run --seeds seeds/seed_tasks.jsonl --out "$out" -n "$n" --seed 1 -q
step export selfgen export "$out" --format openai --out "$out/train.jsonl"
step tune selfgen tune "$out/train.jsonl" --out "$out/adapter" --epochs 3 --threads 1 --seed 1 --quiet
step eval selfgen eval --tasks "$tasks" --adapter "$out/adapter" --compare --threads 1 \
    --out "$out/eval.json"
printf '\n%-8s %10s\n' step "wall s"
for s in run export tune eval; do printf '%-8s %10.0f\n' "$s" "${took[$s]}"; done
python3 - "$out/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for name, m in r["models"].items():
    print(f"{name}: mean ROUGE-L {m['overall']['rouge_l']:.3f} over {m['overall']['n']} instances")
PY
