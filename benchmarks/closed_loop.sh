#!/usr/bin/env bash
# The closed loop on the embedded default: grow data with selfgen, tune the bundled model on it,
# and measure whether the tuned model does better than the base on held-out tasks. Prints each
# step's wall time and the results; everything lands in OUT.
#
#   bash benchmarks/closed_loop.sh tools [N] [OUT]   N verified traces (default 60); tune on the
#                                                     tool seeds and the traces, and on the seeds
#                                                     alone; eval on the held-out
#                                                     seeds/tool_eval_tasks.jsonl
#   bash benchmarks/closed_loop.sh tasks [N] [OUT]   N kept tasks (default 100); base, tuned on
#                                                     all of them, and tuned on the half IFD
#                                                     ranks best (same steps), on the 252 tasks
#
# A step whose output is already in OUT is not run again (a run is resumed), so the script can
# be stopped and started again. Set EVAL_LIMIT to score only the first tasks of the 252,
# THREADS for the model's CPU threads (default 2), EPOCHS for the tools mode's tune (default 3),
# EVAL_BATCH for the prompts each eval generates together (default eval's; more on a GPU),
# TUNE_SEED for the tools mode's tune seed (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?give the mode: tools or tasks}
threads=${THREADS:-2}  # CPU threads for the model in every step
batch=(); [ -n "${EVAL_BATCH:-}" ] && batch=(--batch-size "$EVAL_BATCH")
declare -A took
step() {  # step NAME DONE-FILE COMMAND...: run COMMAND unless DONE-FILE exists; time it
    local name=$1 done=$2; shift 2
    if [ -e "$done" ]; then took[$name]=done; return; fi
    local start=$EPOCHREALTIME
    "$@"
    took[$name]=$(python3 -c "print(round($EPOCHREALTIME - $start))")
}
seeds_only() {  # seeds_only RUN OUT: the run's tool seeds alone, as training rows
    selfgen export "$1" --format openai --only traces --include-seeds --with-metadata \
        --out "$2.tmp" >/dev/null
    python3 - "$2.tmp" "$2" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
with open(sys.argv[2], "w") as out:
    for row in rows:
        if row.pop("metadata")["origin"] == "seed":
            out.write(json.dumps(row) + "\n")
PY
    rm "$2.tmp"
}
times() {
    printf '\n%-12s %10s\n' step "wall s"
    for s in "$@"; do printf '%-12s %10s\n' "$s" "${took[$s]:-}"; done
}

if [ "$mode" = tools ]; then
    n=${2:-60}
    out=${3:-outputs/closed_loop_tools}
    epochs=${EPOCHS:-3}
    mkdir -p "$out"
    resume=(); [ -e "$out/run/selfgen.db" ] && resume=(--resume)
    step run "$out/train.jsonl" selfgen run --seeds seeds/seed_tasks.jsonl --tools tools/ \
        --num-traces "$n" -n 1 --seed 1 --threads "$threads" --out "$out/run" -q "${resume[@]}"
    # The tool seeds and the verified traces that pass today's checks (the one kept task is left
    # out, so the adapter learns tool use alone); and the seeds alone, for the ablation that asks whether the
    # generated traces teach anything the human examples do not.
    step export "$out/train.jsonl" selfgen export "$out/run" --format openai --only traces \
        --include-seeds --recheck --out "$out/train.jsonl"
    step export_seeds "$out/seeds.jsonl" seeds_only "$out/run" "$out/seeds.jsonl"
    for data in train seeds; do
        adapter=$out/adapter; [ $data = seeds ] && adapter=$out/adapter_seeds
        step "tune_$data" "$adapter/adapter_model.safetensors" selfgen tune "$out/$data.jsonl" \
            --out "$adapter" --epochs "$epochs" --learning-rate 1e-3 --batch-size 1 \
            --grad-accum 2 --threads "$threads" --seed "${TUNE_SEED:-1}" --quiet
    done
    # Base and tuned are evaluated apart (the same code as `eval --compare`), so that a stopped
    # script resumes after the slow base half, and one base result serves several runs.
    step eval_base "$out/eval_base.json" selfgen eval --tool-tasks seeds/tool_eval_tasks.jsonl \
        --threads "$threads" "${batch[@]}" --json "$out/eval_base.json" -q
    step eval_tuned "$out/eval_tuned.json" selfgen eval --tool-tasks seeds/tool_eval_tasks.jsonl \
        --adapter "$out/adapter" --threads "$threads" "${batch[@]}" --json "$out/eval_tuned.json" -q
    step eval_seeds "$out/eval_seeds.json" selfgen eval --tool-tasks seeds/tool_eval_tasks.jsonl \
        --adapter "$out/adapter_seeds" --threads "$threads" "${batch[@]}" --json "$out/eval_seeds.json" -q
    times run export export_seeds tune_train tune_seeds eval_base eval_tuned eval_seeds
    python3 - "$out/eval_base.json" "$out/eval_tuned.json" "$out/eval_seeds.json" <<'PY'
import json, sys
base, tuned, seeds = (json.load(open(p))["models"] for p in sys.argv[1:])
models = {"base": base["base"], "seeds+traces": tuned["tuned"], "seeds only": seeds["tuned"]}
print(f"{'':18} " + " ".join(f"{m:>13}" for m in models))
for key in ("call_rate", "abstain_rate", "parseable_rate", "schema_valid_rate",
            "right_tool_rate", "execution_match"):
    cells = [m["overall"][key] for m in models.values()]
    print(f"{key:18} " + " ".join("            -" if c is None else f"{c:13.1%}" for c in cells))
PY
    exit 0
fi

[ "$mode" = tasks ] || { echo "mode: tools or tasks, not $mode" >&2; exit 2; }
n=${2:-100}
out=${3:-outputs/closed_loop}
tasks=../shared/data/self_instruct_user_oriented_instructions_252.jsonl
[ -f "$tasks" ] || { echo "needs $tasks" >&2; exit 2; }
limit=(); [ -n "${EVAL_LIMIT:-}" ] && limit=(--limit "$EVAL_LIMIT")
mkdir -p "$out"
resume=(); [ -e "$out/run/selfgen.db" ] && resume=(--resume)
step run "$out/all.jsonl" selfgen run --seeds seeds/seed_tasks.jsonl --out "$out/run" -n "$n" \
    --seed 1 --threads "$threads" -q "${resume[@]}"
step score "$out/all.jsonl" selfgen score "$out/run" --scorer ifd -q
step export "$out/all.jsonl" selfgen export "$out/run" --format openai --out "$out/all.jsonl"
step export_best "$out/best.jsonl" selfgen export "$out/run" --format openai \
    --top-fraction 0.5 --rank-by ifd --out "$out/best.jsonl"
# The same number of optimizer steps for both, so that only the data differs.
steps=$(( ($(wc -l < "$out/all.jsonl") * 3 + 3) / 4 ))
for data in all best; do
    step "tune_$data" "$out/adapter_$data/adapter_model.safetensors" selfgen tune \
        "$out/$data.jsonl" --out "$out/adapter_$data" --max-steps "$steps" --threads "$threads" --seed 1 \
        --quiet
done
step eval_all "$out/eval_all.json" selfgen eval --tasks "$tasks" --adapter "$out/adapter_all" \
    --compare --threads "$threads" --out "$out/eval_all.json" -q "${limit[@]}"
step eval_best "$out/eval_best.json" selfgen eval --tasks "$tasks" \
    --adapter "$out/adapter_best" --threads "$threads" --out "$out/eval_best.json" -q "${limit[@]}"
times run score export export_best tune_all tune_best eval_all eval_best
python3 - "$out/eval_all.json" "$out/eval_best.json" <<'PY'
import json, random, sys
every, best = (json.load(open(p)) for p in sys.argv[1:])
rows = [("base", every, "base"), ("tuned on all", every, "tuned"), ("tuned on best half", best, "tuned")]
for label, results, key in rows:
    m = results["models"][key]["overall"]
    print(f"{label:20} mean ROUGE-L {m['rouge_l']:.3f} over {m['n']} instances")
# Paired differences over the same instances, with a 95% bootstrap interval (2,000 resamples).
scores = {label: [i[f"{key}_rouge_l"] for i in results["items"]] for label, results, key in rows}
def interval(d, resamples=2000):
    rng = random.Random(0)
    means = sorted(sum(rng.choices(d, k=len(d))) / len(d) for _ in range(resamples))
    return sum(d) / len(d), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
for a, b in (("tuned on all", "base"), ("tuned on best half", "base"),
             ("tuned on best half", "tuned on all")):
    diff = [x - y for x, y in zip(scores[a], scores[b], strict=True)]
    mean, low, high = interval(diff)
    print(f"{a} - {b}: {mean:+.4f} (95% interval {low:+.4f} to {high:+.4f})")
PY
