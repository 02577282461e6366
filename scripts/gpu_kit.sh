#!/usr/bin/env bash
# Builds target/gpu-kit/: everything an offline GPU node with its own PyTorch needs to check repro
# in one call (`target/gpu-kit/gpu_check.sh OUTDIR`), at most 56 MiB:
#   bin/repro.xz      repro built against PyPI's torch $KIT_TORCH (installed into .venv-torch$KIT_TORCH),
#                     stripped and compressed; no libtorch inside, the node's own is used
#   fixtures/         llama-tiny, opt-tiny, the LLaMA-2 tokenizer, WikiText-2 test, the C4-format
#                     calibration shard, the seven zero-shot tasks' data (a hub mirror)
#   expected.json     CPU results computed here: perplexities and mask hashes per case, zero-shot
#                     loglikelihoods per document
#   gpu_check.sh, gpu_check.py, make_random_llama.py, kit.json
#
#   scripts/gpu_kit.sh [--torch VERSION]   (default 2.11.0, the reference GPU node's torch)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
KIT_TORCH=2.11.0
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) KIT_TORCH="${2:?--torch needs a version}"; shift 2 ;;
    *) echo "gpu_kit.sh: unknown option $1 (usage: scripts/gpu_kit.sh [--torch VERSION])" >&2; exit 2 ;;
  esac
done
MAX_BYTES=$((56 * 1024 * 1024))
venv="$ROOT/.venv-torch$KIT_TORCH"
fixtures="$ROOT/../shared/fixtures"
kit="$ROOT/target/gpu-kit"

ensure_torch_venv "$venv" "$KIT_TORCH"
"$ROOT/scripts/setup.sh" --torch-from "$venv/bin/python"
binary="$ROOT/target/torch-$KIT_TORCH/release/repro"

echo "==> assembling $kit"
tmp="$kit.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/fixtures"
strip -o "$tmp/bin/repro" "$binary"
python3 -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as s, lzma.open(sys.argv[1] + ".xz", "wb", preset=9) as d: shutil.copyfileobj(s, d)' "$tmp/bin/repro"
rm "$tmp/bin/repro"
for model in llama-tiny opt-tiny; do
  mkdir -p "$tmp/fixtures/models/$model"
  cp "$fixtures/models/$model"/{config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json,special_tokens_map.json} \
     "$tmp/fixtures/models/$model/"
done
mkdir -p "$tmp/fixtures/tokenizers/llama-2" "$tmp/fixtures/datasets/Salesforce/wikitext/wikitext-2-raw-v1" "$tmp/fixtures/datasets/c4-format-sample/en"
cp "$fixtures/tokenizers/llama-2"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json} "$tmp/fixtures/tokenizers/llama-2/"
cp "$fixtures/datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet" "$tmp/fixtures/datasets/Salesforce/wikitext/wikitext-2-raw-v1/"
cp "$fixtures/datasets/c4-format-sample/en/c4-train.00000-of-01024.json.gz" "$tmp/fixtures/datasets/c4-format-sample/en/"
# The seven zero-shot tasks' datasets (the repos of src/eval/tasks.rs), for the zero-shot checks.
for repo in aps/super_glue nyu-mll/glue Rowan/hellaswag allenai/winogrande allenai/ai2_arc allenai/openbookqa; do
  mkdir -p "$tmp/fixtures/datasets/$repo"
  cp -r "$fixtures/datasets/$repo/." "$tmp/fixtures/datasets/$repo/"
done
cp scripts/gpu_check.sh scripts/gpu_check.py scripts/make_random_llama.py "$tmp/"
cat > "$tmp/kit.json" <<JSON
{"torch": "$KIT_TORCH", "commit": "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock scripts || echo +changes)",
 "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "build_python": "$venv/bin/python"}
JSON
echo "==> expected CPU results (fidelity cases with the kit's binary)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$venv/bin/python" "$tmp/gpu_check.py" "$scratch" --kit "$tmp" --make-expected
size=$(du -sb "$tmp" | cut -f1)
if [ "$size" -gt "$MAX_BYTES" ]; then
  echo "gpu_kit.sh: the kit is $((size / 1024 / 1024)) MiB, over the 56 MiB limit" >&2
  exit 1
fi
rm -rf "$kit"
mv "$tmp" "$kit"
echo "==> ready: $kit ($((size / 1024)) KiB); on a GPU node: $kit/gpu_check.sh OUTDIR"
