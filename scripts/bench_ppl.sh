#!/usr/bin/env bash
# WikiText-2 evaluation speed of llama-tiny: repro vs transformers, same machine, same run.
# Needs transformers in the venv: .venv/bin/pip install transformers==5.24.0 pyarrow
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
MODEL="$REPRO_HUB_MIRROR/models/llama-tiny"
WIKI="$REPRO_HUB_MIRROR/datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"
WINDOWS="${WINDOWS:-200}"
echo "== transformers (f32, CPU, batch 1)"
hf=$(python scripts/bench_ppl_transformers.py --model "$MODEL" --wikitext "$WIKI" --max-windows "$WINDOWS" | tail -1)
echo "$hf"
for bs in 1 8; do
  echo "== repro (f32, CPU, batch $bs)"
  r=$(target/release/repro eval --model "$MODEL" --ppl wikitext2 --max-windows "$WINDOWS" --batch-size $bs --json | tail -1)
  echo "$r"
  python - "$hf" "$r" <<'PY'
import json, sys
hf, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"tokens/s: repro {r['eval_tokens_per_second']:.0f} vs transformers {hf['tokens_per_second']:.0f} "
      f"-> ratio {r['eval_tokens_per_second'] / hf['tokens_per_second']:.2f}x; "
      f"ppl {r['ppl']['wikitext2']:.4f} vs {hf['ppl']:.4f}")
PY
done
