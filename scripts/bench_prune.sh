#!/usr/bin/env bash
# Prune + evaluate llama-tiny with each method at 50% unstructured and 2:4: repro against the
# PyTorch reference (scripts/reference_prune.py, one calibration sample at a time like the
# official code), same machine, same run, same threads. Prints a table of times and ratios.
# Needs transformers in the venv: .venv/bin/pip install transformers==5.24.0 pyarrow
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
FX="$REPRO_HUB_MIRROR"
NS="${NSAMPLES:-128}"; SL="${SEQLEN:-512}"; EW="${EVAL_WINDOWS:-64}"; THREADS="${THREADS:-2}"
CALIB="$FX/datasets/c4-format-sample/en/c4-train.00000-of-01024.json.gz"
OUT=$(mktemp -d)
printf "%-10s %-12s %10s %10s %10s %10s %8s %10s %10s\n" method pattern ref_prune ref_total repro_prune repro_total speedup ref_ppl repro_ppl
for method in magnitude wanda sparsegpt; do
  for pattern in unstructured 2:4; do
    python scripts/reference_prune.py --model "$FX/models/llama-tiny" --method $method --sparsity 0.5 --pattern $pattern \
      --nsamples "$NS" --seqlen "$SL" --seed 0 --calib "$CALIB" --eval-windows "$EW" --threads "$THREADS" \
      --no-dense-eval --out "$OUT/ref.json" > /dev/null 2>&1
    target/release/repro prune --model llama-tiny --method $method --sparsity 0.5 --pattern $pattern \
      --calib c4:c4-format-sample --nsamples "$NS" --seqlen "$SL" --seed 0 --eval wikitext2 \
      --max-windows "$EW" --batch-size 8 --json 2>/dev/null | tail -1 > "$OUT/repro.json"
    python - "$OUT/ref.json" "$OUT/repro.json" $method $pattern <<'PY'
import json, sys
ref, r = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
t = ref["timings"]
print(f"{sys.argv[3]:<10} {sys.argv[4]:<12} {t['prune_seconds']:10.2f} {t['total_seconds']:10.2f} "
      f"{r['prune_seconds']:10.2f} {r['total_seconds']:10.2f} {t['total_seconds'] / r['total_seconds']:7.2f}x "
      f"{ref['eval']['ppl']:10.3f} {r['ppl']['wikitext2']:10.3f}")
PY
  done
done
echo "(seconds; calibration ${NS} x ${SL}, eval ${EW} WikiText-2 windows, ${THREADS} threads; peak RSS in the --json output)"
