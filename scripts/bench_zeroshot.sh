#!/usr/bin/env bash
# Zero-shot evaluation speed on llama-tiny: repro vs lm-evaluation-harness 0.4.13's HF backend
# (scripts/reference_zeroshot.py), same machine, same local data, same model, same thread count,
# one after the other. Needs lm_eval in the venv (see tests/goldens/zeroshot/README.md).
#
#   scripts/bench_zeroshot.sh                    # 7 tasks x first 200 docs, twice; HellaSwag's whole validation once
#   FULL_HELLASWAG=0 ROUNDS=1 scripts/bench_zeroshot.sh
#
# Env: LIMIT (documents per task, default 200), ROUNDS (default 2), THREADS (torch intra-op
# threads for both, default 1: on a loaded 2-core machine more threads than free cores is many
# times slower), REPRO_BS (repro batch sizes, default "1 4 8"), LMEVAL_BS (lm-eval batch sizes,
# default "1 8"; the ratio is taken against lm-eval's best), FULL_HELLASWAG (1: also the whole
# HellaSwag validation split once, each side at its best batch size of the last round, or at its
# first listed one with ROUNDS=0).
# Times are wall-clock seconds of the whole command (process start, model and dataset loading,
# evaluation); the evaluation-only times (lm-eval's simple_evaluate, repro's zero_shot_seconds)
# are printed too. Tokens per document come from repro's --json: `unshared` is one row per
# request without padding (lm-eval's rows at batch size 1, and repro's before shared contexts),
# `computed` what the packed rows ran, padding included.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
LIMIT="${LIMIT:-200}"
ROUNDS="${ROUNDS:-2}"
THREADS="${THREADS:-1}"
REPRO_BS="${REPRO_BS:-1 4 8}"
LMEVAL_BS="${LMEVAL_BS:-1 8}"
FULL_HELLASWAG="${FULL_HELLASWAG:-1}"
TASKS=boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa
MODEL="$REPRO_HUB_MIRROR/models/llama-tiny"
CORES=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ -x target/release/repro ] || cargo build --release
# The HF backend's own imports (accelerate among them), not just the package: a missing one would
# otherwise surface only as an empty result line.
python -c "from lm_eval.models.huggingface import HFLM" 2>/dev/null || {
  echo "lm-eval's HF backend does not import in $VIRTUAL_ENV: install lm_eval 0.4.13 and its dependencies as tests/goldens/zeroshot/README.md says" >&2; exit 1; }
now() { date +%s.%N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT

# One line of JSON per run: side, batch size, round, scope, wall seconds, load before, the run's JSON.
lmeval() {  # round scope bs args...
  local round=$1 scope=$2 bs=$3; shift 3
  local before t0 out wall
  before=$(load); t0=$(now)
  out=$(python scripts/reference_zeroshot.py --time-only --threads "$THREADS" --batch-size "$bs" "$@" 2>/dev/null | tail -1)
  wall=$(echo "$(now) - $t0" | bc)
  echo "{\"side\": \"lm-eval\", \"bs\": $bs, \"round\": $round, \"scope\": \"$scope\", \"wall\": $wall, \"load\": \"$before\", \"out\": $out}" >>"$RESULTS"
  echo "  lm-eval batch $bs: $wall s (load $before)"
}
repro() {  # round scope bs args...
  local round=$1 scope=$2 bs=$3; shift 3
  local before t0 out wall
  before=$(load); t0=$(now)
  out=$(target/release/repro eval --model "$MODEL" --batch-size "$bs" --json "$@" 2>/dev/null | tail -1)
  wall=$(echo "$(now) - $t0" | bc)
  echo "{\"side\": \"repro\", \"bs\": $bs, \"round\": $round, \"scope\": \"$scope\", \"wall\": $wall, \"load\": \"$before\", \"out\": $out}" >>"$RESULTS"
  echo "  repro batch $bs: $wall s (load $before)"
}

echo "== zero-shot, llama-tiny f32 CPU, $THREADS thread(s), $CORES cores"
for round in $(seq "$ROUNDS"); do
  echo "== round $round: $TASKS, first $LIMIT documents each"
  for bs in $LMEVAL_BS; do lmeval "$round" "limit $LIMIT" "$bs" --limit "$LIMIT"; done
  for bs in $REPRO_BS; do repro "$round" "limit $LIMIT" "$bs" --tasks "$TASKS" --limit "$LIMIT"; done
done
if [ "$FULL_HELLASWAG" = 1 ]; then
  best() {  # side, its batch sizes: the fastest of the last round, or the first given when no round ran
    python - "$RESULTS" "$1" "$2" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["side"] == sys.argv[2]]
if not runs:
    print(sys.argv[3].split()[0])
else:
    last = max(r["round"] for r in runs)
    print(min((r for r in runs if r["round"] == last), key=lambda r: r["wall"])["bs"])
PY
  }
  echo "== hellaswag, whole validation split, each at its best batch size"
  lmeval 0 "hellaswag full" "$(best lm-eval "$LMEVAL_BS")" --tasks hellaswag --full
  repro 0 "hellaswag full" "$(best repro "$REPRO_BS")" --tasks hellaswag
fi

python - "$RESULTS" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def evaluation_seconds(r):
    return r["out"]["seconds"] if r["side"] == "lm-eval" else r["out"]["zero_shot_seconds"]
print("\nEvery run (wall seconds, evaluation seconds, acc per task):")
for r in runs:
    metrics = r["out"]["zero_shot"] if r["side"] == "repro" else r["out"]["metrics"]
    acc = {t: round(v["acc"], 4) for t, v in sorted(metrics.items())}
    print(f"  {r['scope']}, round {r['round'] or 'once'}, {r['side']} batch {r['bs']}: {r['wall']:.1f} s, "
          f"{evaluation_seconds(r):.1f} s, {acc}")
print("\n| scope | round | lm-eval best (batch) | repro best (batch) | end-to-end ratio | evaluation-only ratio | load avg |")
print("|---|---|---|---|---|---|---|")
for scope in dict.fromkeys(r["scope"] for r in runs):
    for rnd in sorted({r["round"] for r in runs if r["scope"] == scope}):
        these = [r for r in runs if r["scope"] == scope and r["round"] == rnd]
        lm = min((r for r in these if r["side"] == "lm-eval"), key=lambda r: r["wall"])
        rp = min((r for r in these if r["side"] == "repro"), key=lambda r: r["wall"])
        print(f"| {scope} | {rnd or 'once'} | {lm['wall']:.1f} s ({lm['bs']}) | {rp['wall']:.1f} s ({rp['bs']}) | "
              f"{lm['wall'] / rp['wall']:.2f}x | {evaluation_seconds(lm) / evaluation_seconds(rp):.2f}x | "
              f"{lm['load']} / {rp['load']} |")
print("\nTokens computed per document (repro, batch 8 or the last run): one row per request -> packed rows")
print("| scope | task | documents | one row per request | packed | ratio | padding |")
print("|---|---|---|---|---|---|---|")
for scope in dict.fromkeys(r["scope"] for r in runs):
    rp = [r for r in runs if r["scope"] == scope and r["side"] == "repro"][-1]
    for task, t in rp["out"]["zero_shot_tokens"].items():
        n = rp["out"]["zero_shot"][task]["n"] if "n" in rp["out"]["zero_shot"][task] else None
        per = (lambda k: f"{t[k] / n:.1f}") if n else (lambda k: str(t[k]))
        print(f"| {scope} | {task} | {n} | {per('unshared')} | {per('computed')} | "
              f"{t['unshared'] / t['computed']:.2f}x | {100 * t['padding'] / t['computed']:.2f}% |")
    print(f"| {scope} | all | | | | | {100 * rp['out']['zero_shot_padding_fraction']:.2f}% |")
print("\nPerplexity: every window is seqlen tokens on both sides (ratio 1.00x); its speed ratio is scripts/bench_ppl.sh's.")
PY
