#!/usr/bin/env bash
# Zero-shot evaluation speed on llama-tiny, all seven tasks, first LIMIT documents of each:
# repro vs lm-evaluation-harness 0.4.13's HF backend (scripts/reference_zeroshot.py), same machine,
# same run, same thread count. Needs lm_eval in the venv (see tests/goldens/zeroshot/README.md).
#
#   LIMIT=200 scripts/bench_zeroshot.sh
#
# Env: LIMIT (documents per task, default 200), THREADS (torch intra-op threads for both,
# default 1: on a loaded 2-core machine more threads than free cores is many times slower),
# REPRO_BS (repro batch sizes, default "1 8"), LMEVAL_BS (lm-eval batch size, default 1).
# Times are wall-clock seconds of the whole command (process start, model and dataset loading,
# evaluation); lm-eval's own evaluation-only time (simple_evaluate) is printed too.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
LIMIT="${LIMIT:-200}"
THREADS="${THREADS:-1}"
REPRO_BS="${REPRO_BS:-1 8}"
LMEVAL_BS="${LMEVAL_BS:-1}"
TASKS=boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa
MODEL="$REPRO_HUB_MIRROR/models/llama-tiny"
CORES=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ -x target/release/repro ] || cargo build --release
now() { date +%s.%N; }
echo "== zero-shot, llama-tiny f32 CPU, $TASKS, limit $LIMIT, $THREADS thread(s), $CORES cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== lm-eval 0.4.13 HF backend (batch $LMEVAL_BS)"
t0=$(now)
lm=$(python scripts/reference_zeroshot.py --time-only --limit "$LIMIT" --threads "$THREADS" --batch-size "$LMEVAL_BS" 2>/dev/null | tail -1)
lm_wall=$(echo "$(now) - $t0" | bc)
echo "$lm"

results=()
for bs in $REPRO_BS; do
  echo "== repro (batch $bs)"
  t0=$(now)
  r=$(target/release/repro eval --model "$MODEL" --tasks "$TASKS" --limit "$LIMIT" --batch-size "$bs" --json 2>/dev/null | tail -1)
  r_wall=$(echo "$(now) - $t0" | bc)
  echo "$r"
  results+=("$bs $r_wall")
done

python - "$lm" "$lm_wall" "${results[@]}" <<'PY'
import json, sys
lm = json.loads(sys.argv[1]); lm_wall = float(sys.argv[2])
print(f"lm-eval: {lm_wall:.1f} s wall ({lm['seconds']:.1f} s in simple_evaluate)")
for item in sys.argv[3:]:
    bs, wall = item.split()
    wall = float(wall)
    print(f"repro batch {bs}: {wall:.1f} s wall -> lm-eval/repro = {lm_wall / wall:.2f}x")
PY
