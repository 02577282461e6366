#!/usr/bin/env bash
# Zero-shot accuracies on the whole evaluation split of each task, repro vs the lm-evaluation-harness
# 0.4.13 numbers recorded in tests/goldens/zeroshot/full_splits.json (scripts/reference_zeroshot.py --full).
# Too slow for CI (about 8 min on 2 busy cores); CI checks the first 50 documents per item instead.
#
#   scripts/check_full_splits.sh                 # every task full_splits.json has
#   TASKS=rte,winogrande scripts/check_full_splits.sh
#
# Env: TASKS (default: all tasks in full_splits.json), THREADS (torch threads, default 1), BS (repro batch, default 8).
# Exits non-zero when any accuracy differs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
GOLDEN=tests/goldens/zeroshot/full_splits.json
TASKS="${TASKS:-$(python -c "import json; print(','.join(json.load(open('$GOLDEN'))['tasks']))")}"
THREADS="${THREADS:-1}"
BS="${BS:-8}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
[ -x target/release/repro ] || cargo build --release
start=$(date +%s.%N)
out=$(target/release/repro eval --model "$REPRO_HUB_MIRROR/models/llama-tiny" --tasks "$TASKS" --batch-size "$BS" --json | tail -1)
seconds=$(echo "$(date +%s.%N) - $start" | bc)
python - "$GOLDEN" "$out" "$seconds" <<'PY'
import json, sys
golden = json.load(open(sys.argv[1]))["tasks"]
ours = json.loads(sys.argv[2])["zero_shot"]
print(f"repro: {float(sys.argv[3]):.0f} s for {', '.join(ours)}")
print(f"| task | n | metric | lm-eval 0.4.13 | repro | stderr lm-eval | stderr repro |")
print(f"|---|---|---|---|---|---|---|")
bad = 0
for task, r in ours.items():
    g = golden[task]
    for metric in ("acc", "acc_norm"):
        if metric not in g:
            continue
        same = abs(g[metric] - r[metric]) < 1e-12 and abs(g[metric + "_stderr"] - r[metric + "_stderr"]) < 1e-9
        bad += not same
        print(f"| {task} | {g['n']} | {metric} | {g[metric]:.6f} | {r[metric]:.6f} | "
              f"{g[metric + '_stderr']:.6f} | {r[metric + '_stderr']:.6f} |{'' if same else ' DIFFERS'}")
sys.exit(1 if bad else 0)
PY
