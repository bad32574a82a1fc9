#!/usr/bin/env bash
# One run of each shape of tool-use trace on the embedded default, and a table of what each
# gave: requests that reached a tool, traces verified, each check's pass rate, and wall time.
#
#   bash benchmarks/trace_shapes.sh [N] [OUT]    N verified traces a run (default 4)
#
# Shapes: single (English), single+parallel, multiturn, and single in Chinese. A run already in
# OUT is skipped, one stopped half way is resumed (the wall time then counts the last part only). THREADS sets the model's CPU
# threads (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-4}
out=${2:-outputs/trace_shapes}
threads=${THREADS:-2}
mkdir -p "$out"
run() {  # run NAME ARGS...: one run, timed, into OUT/NAME
    local name=$1; shift
    [ -e "$out/$name/wall_s" ] && return  # finished before
    local resume=(); [ -e "$out/$name/selfgen.db" ] && resume=(--resume)
    local start=$EPOCHREALTIME
    selfgen run --tools tools/ --num-traces "$n" -n 1 --seed 1 --threads "$threads" \
        --out "$out/$name" -q "${resume[@]}" "$@"
    python3 -c "print(round($EPOCHREALTIME - $start))" > "$out/$name/wall_s"
}
run single --seeds seeds/seed_tasks.jsonl
run parallel --seeds seeds/seed_tasks.jsonl --trace-kinds single,parallel
run multiturn --seeds seeds/seed_tasks.jsonl --trace-kinds multiturn
run zh --seeds seeds/seed_tasks_zh.jsonl --language zh
python3 - "$out" <<'PY'
import json, pathlib, subprocess, sys
out = pathlib.Path(sys.argv[1])
checks = ("format", "target", "execution", "grounding", "semantic")
print(f"{'run':10} {'kind':10} {'reached':>7} {'verified':>8} "
      + " ".join(f"{c:>9}" for c in checks) + f" {'wall s':>7}")
for name in ("single", "parallel", "multiturn", "zh"):
    stats = json.loads(subprocess.run(["selfgen", "stats", str(out / name), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    wall = (out / name / "wall_s").read_text().strip()
    for k in stats["trace_kinds"]:
        rates = " ".join(f"{k[c] / k['traces']:9.0%}" for c in checks)
        print(f"{name:10} {k['kind']:10} {k['traces']:7} {k['verified']:8} {rates} {wall:>7}")
PY
