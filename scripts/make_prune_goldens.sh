#!/usr/bin/env bash
# Regenerates tests/goldens/prune/ with scripts/reference_prune.py (PyTorch reference of the
# official Wanda code). CPU only, single thread; about 7 minutes on 2 cores.
#   scripts/make_prune_goldens.sh            # all cases
#   ONLY=llama-tiny_wanda scripts/make_prune_goldens.sh   # cases whose name starts with ONLY
# Env: PYTHON (default .venv/bin/python), FIXTURES (default ../shared/fixtures), OUT (default tests/goldens/prune).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FX=${FIXTURES:-../shared/fixtures}
OUT=${OUT:-tests/goldens/prune}
CALIB=$FX/datasets/c4-format-sample/en/c4-train.00000-of-01024.json.gz
WIKI=$FX/datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet
NS=16; SL=128; SEED=0; EVW=16
mkdir -p "$OUT"

# name model method pattern [extra flags...]; a name ending in "+masks" also writes <name>.masks.safetensors
CASES=(
  "llama-tiny_magnitude_unstructured      llama-tiny        magnitude unstructured"
  "llama-tiny_magnitude_2_4               llama-tiny        magnitude 2:4"
  "llama-tiny_magnitude_4_8               llama-tiny        magnitude 4:8"
  "llama-tiny_wanda_unstructured+masks    llama-tiny        wanda     unstructured"
  "llama-tiny_wanda_2_4                   llama-tiny        wanda     2:4"
  "llama-tiny_wanda_4_8                   llama-tiny        wanda     4:8"
  "llama-tiny_wanda-variant_unstructured+masks llama-tiny   wanda     unstructured --use-variant"
  "llama-tiny_sparsegpt_unstructured+masks llama-tiny       sparsegpt unstructured"
  "llama-tiny_sparsegpt_2_4               llama-tiny        sparsegpt 2:4"
  "llama-tiny-random_wanda_unstructured+masks llama-tiny-random wanda unstructured"
  "opt-tiny_wanda_unstructured+masks      opt-tiny          wanda     unstructured"
  "opt-tiny_sparsegpt_unstructured        opt-tiny          sparsegpt unstructured"
  "llama-tiny_ablate_mag_seq_unstructured   llama-tiny      ablate_mag_seq    unstructured"
  "llama-tiny_ablate_wanda_seq_unstructured llama-tiny      ablate_wanda_seq  unstructured"
  "llama-tiny_ablate_mag_iter_unstructured  llama-tiny      ablate_mag_iter   unstructured"
  "llama-tiny_ablate_wanda_iter_unstructured llama-tiny     ablate_wanda_iter unstructured"
  "llama-tiny_ablate_wanda_iter_2_4         llama-tiny      ablate_wanda_iter 2:4"
  # OWL (luuyin/OWL prune_*_outlier) at 70%, two (M, lambda) settings each
  "llama-tiny_wanda_owl_m5_l0.08+masks      llama-tiny      wanda     unstructured --sparsity 0.7 --allocation owl --owl-m 5 --owl-lambda 0.08"
  "llama-tiny_wanda_owl_m3_l0.2+masks       llama-tiny      wanda     unstructured --sparsity 0.7 --allocation owl --owl-m 3 --owl-lambda 0.2"
  "llama-tiny_magnitude_owl_m5_l0.08        llama-tiny      magnitude unstructured --sparsity 0.7 --allocation owl --owl-m 5 --owl-lambda 0.08"
  "llama-tiny_magnitude_owl_m3_l0.2         llama-tiny      magnitude unstructured --sparsity 0.7 --allocation owl --owl-m 3 --owl-lambda 0.2"
)

for c in "${CASES[@]}"; do
  read -r name model method pattern extra <<<"$c"
  masks=()
  if [[ $name == *+masks ]]; then name=${name%+masks}; masks=(--save-masks "$OUT/$name.masks.safetensors"); fi
  [[ -n ${ONLY:-} && $name != ${ONLY}* ]] && continue
  echo "== $name"
  # shellcheck disable=SC2086
  "$PY" scripts/reference_prune.py --model "$FX/models/$model" --method "$method" --sparsity 0.5 \
    --pattern "$pattern" $extra --nsamples $NS --seqlen $SL --seed $SEED --extra-seeds 1 \
    --calib "$CALIB" --wikitext "$WIKI" --eval-windows $EVW --threads 1 \
    --out "$OUT/$name.json" "${masks[@]}" 2> >(grep -v 'Loading weights' >&2)
done
chmod 644 "$OUT"/*.masks.safetensors 2>/dev/null || true

# calibration windows of the paper protocol (128 x seqlen 512 = max_position_embeddings), seeds 0 and 1
if [[ -z ${ONLY:-} || calib == ${ONLY}* ]]; then
  echo "== calib_llama-tiny_n128_seqlen512"
  "$PY" scripts/reference_prune.py --calib-only --model "$FX/models/llama-tiny" --nsamples 128 --seqlen 512 \
    --seed 0 --extra-seeds 1 --calib "$CALIB" --out "$OUT/calib_llama-tiny_n128_seqlen512.json"
fi

# sanity checks of the whole folder (exit status 1 on any problem)
"$PY" scripts/reference_prune.py --check-goldens "$OUT" "$FX"
