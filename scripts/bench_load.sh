#!/usr/bin/env bash
# Peak host memory of loading a checkpoint: a random LLaMA of about 0.85 GB (f32 safetensors,
# made once with transformers under target/bench/), loaded by `repro eval` in f32 and f16 with
# one short perplexity window, then pruned with the model resident and streamed block by block
# (--stream). Prints the checkpoint size and each run's peak RSS.
#
#   scripts/bench_load.sh
#
# Needs transformers in the venv (see tests/goldens/prune/README.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
MODEL=target/bench/llama-850m
if [ ! -f "$MODEL/model.safetensors" ]; then
  python - "$MODEL" "$REPRO_HUB_MIRROR/models/llama-tiny" <<'PY'
import shutil, sys, torch, transformers
out, tok = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=1024, intermediate_size=2752, num_hidden_layers=16,
                               num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512)
transformers.LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
    shutil.copy(f"{tok}/{f}", out)
PY
fi
[ -x target/release/repro ] || cargo build --release
size=$(stat -c %s "$MODEL/model.safetensors")
echo "checkpoint: $MODEL, $((size / 1048576)) MiB (f32)"
for dtype in f32 f16; do
  /usr/bin/time -f "%M" -o "$MODEL/rss.txt" target/release/repro eval --model "$MODEL" --dtype "$dtype" \
    --ppl books-heldout --seqlen 128 --max-windows 1 > /dev/null 2>&1
  rss=$(tail -1 "$MODEL/rss.txt")
  echo "repro eval --dtype $dtype: peak RSS $((rss / 1024)) MiB"
done

# Pruning (Wanda, 16 calibration samples of 128 tokens, then perplexity on 4 windows and a
# save) with the whole model in memory and streamed block by block.
SAVE=target/bench/pruned
for stream in off on; do
  rm -rf "$SAVE"
  /usr/bin/time -f "%M %e" -o "$MODEL/rss.txt" target/release/repro prune --model "$MODEL" --method wanda \
    --calib c4:c4-format-sample --nsamples 16 --seqlen 128 --eval books-heldout --max-windows 4 \
    --stream "$stream" --save "$SAVE" --json > "$MODEL/prune.json" 2>/dev/null
  read -r rss secs < <(tail -1 "$MODEL/rss.txt")
  ppl=$(tail -1 "$MODEL/prune.json" | python -c 'import json,sys; print(json.load(sys.stdin)["ppl"]["books-heldout"])')
  echo "repro prune --stream $stream (f32): peak RSS $((rss / 1024)) MiB, ${secs} s, ppl $ppl"
done
rm -rf "$SAVE"
