#!/usr/bin/env bash
# Peak memory of streamed pruning (README "Memory"). Generated LLaMA-shaped checkpoints
# (scripts/make_random_llama.py): hidden 2048, MLP 5504, 32000 tokens with 1, 8 and 32 blocks
# (0.8, 2.1 and 7.0 GB in f32), and a LLaMA-7B-shaped one stored in f16 (13.5 GB) run in f32;
# each pruned with Wanda at 50% (4 x 512 calibration tokens, 2 WikiText-2 windows), streamed,
# and resident where it fits: peak RSS, wall time, and whether the two runs' masks agree (saved
# weights compared tensor by tensor where both are saved; otherwise zeros per layer and
# perplexity). Then the spill path: the 2 GB model with 32 x 512 calibration tokens and a
# --max-memory that forces the calibration buffers to disk, against the same run in memory.
# Last, the 7B-shaped model's plan at the paper's 128 x 2048 tokens (--plan, nothing run).
#
#   scripts/bench_memory.sh [DIR]    checkpoints, saves and records under DIR (default
#                                    target/bench-memory; the 7B model needs ~45 GB free there
#                                    and in $TMPDIR for its pruned blocks)
#   SIZES="0.8 2 8 7b" picks models; SAVE_MAX_GB=3 saves (and compares weights) up to that size;
#   KEEP=1 keeps the generated checkpoints; REPRO=PATH runs another repro binary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
DIR="$(realpath -m "${1:-target/bench-memory}")"
SIZES="${SIZES:-0.8 2 8 7b}"
SAVE_MAX_GB="${SAVE_MAX_GB:-3}"
REPRO="${REPRO:-$ROOT/target/release/repro}"
TOKENIZER="$REPRO_HUB_MIRROR/tokenizers/llama-2"
mkdir -p "$DIR/runs"
export TMPDIR="${TMPDIR:-$DIR/tmp}"
mkdir -p "$TMPDIR"

# name -> generator arguments
declare -A SHAPE=(
  [0.8]="--hidden 2048 --intermediate 5504 --heads 16 --layers 1 --dtype f32"
  [2]="--hidden 2048 --intermediate 5504 --heads 16 --layers 8 --dtype f32"
  [8]="--hidden 2048 --intermediate 5504 --heads 16 --layers 32 --dtype f32"
  [7b]="--hidden 4096 --intermediate 11008 --heads 32 --layers 32 --dtype f16"
)

generate() {
  local name=$1 model="$DIR/llama-$1"
  [ -f "$model/config.json" ] || python scripts/make_random_llama.py "$model" --tokenizer "$TOKENIZER" \
    --device cpu ${SHAPE[$name]} > /dev/null
  echo "$model"
}

# run NAME MODEL ARGS...: one repro prune --json, its record in runs/NAME.json, wall time and
# the child's peak RSS from /usr/bin/time.
run() {
  local name=$1 model=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$DIR/runs/$name.time" "$REPRO" prune --model "$model" --dtype f32 \
    --method wanda --sparsity 0.5 --calib c4:c4-format-sample --seqlen 512 --eval wikitext2 \
    --max-windows 2 --json "$@" 2> "$DIR/runs/$name.err" | tail -1 > "$DIR/runs/$name.json"
}

# row LABEL NAME [COMPARED_WITH]: one table row from a run's record and time.
row() {
  python - "$DIR/runs" "$@" <<'PY'
import json, os, sys
from pathlib import Path
runs, label, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
other = sys.argv[4] if len(sys.argv) > 4 else None
r = json.loads((runs / f"{name}.json").read_text())
wall, max_kb = (runs / f"{name}.time").read_text().split()[-2:]
plan = r["memory_plan"]
gib = lambda b: f"{b / 2**30:.2f}"
same = ""
if other:
    o = json.loads((runs / f"{other}.json").read_text())
    same = "yes" if (o["layers"], o["ppl"]) == (r["layers"], r["ppl"]) else "NO"
    saves = [runs / f"{n}.save" for n in (name, other)]
    if all(s.is_dir() for s in saves):
        import torch
        from safetensors import safe_open
        def tensors(d):
            for f in sorted(d.glob("*.safetensors")):
                with safe_open(f, "pt") as h:
                    for k in h.keys():
                        yield k, f
        a, b = dict(tensors(saves[0])), dict(tensors(saves[1]))
        equal = a.keys() == b.keys() and all(
            torch.equal(safe_open(a[k], "pt").get_tensor(k), safe_open(b[k], "pt").get_tensor(k)) for k in a)
        same = ("yes" if equal else "NO") + " (weights)"
    else:
        same += " (zeros per layer, ppl)"
disk = f"{gib(plan['scratch_bytes'])} GiB" if plan["buffers_on_disk"] else "-"
print(f"| {label} | {'streamed' if r['streamed'] else 'resident'} | {gib(int(max_kb) * 1024)} | "
      f"{gib(plan['planned_peak_bytes'])} | {disk} | {float(wall):.0f} | {same} |")
PY
}

echo "| model | weights | peak RSS GiB | planned GiB | scratch | wall s | same masks |"
echo "|---|---|---|---|---|---|---|"
for size in $SIZES; do
  model=$(generate "$size")
  gb=$(du -sbL "$model" | awk '{printf "%.1f", $1 / 1e9}')
  f32_gb=$(python -c "import json; c=json.load(open('$model/config.json')); h,i,v,n=c['hidden_size'],c['intermediate_size'],c['vocab_size'],c['num_hidden_layers']; print((2*v*h + n*(4*h*h+3*h*i)) * 4 / 1e9)")
  avail_gb=$(awk '/MemAvailable/ {print $2 * 1024 / 1e9}' /proc/meminfo)
  save=()
  [ "$(python -c "print(int($f32_gb <= $SAVE_MAX_GB))")" = 1 ] && save=(--save)
  label="f32, $(python -c "import json; print(json.load(open('$model/config.json'))['num_hidden_layers'])") blocks ($gb GB)"
  [ "$size" = 7b ] && label="LLaMA-7B shape, f16 on disk ($gb GB), run f32"
  run "$size-streamed" "$model" --nsamples 4 --stream on ${save:+--save "$DIR/runs/$size-streamed.save"}
  row "$label" "$size-streamed"
  if python -c "import sys; sys.exit(not $f32_gb < 0.6 * $avail_gb)"; then
    run "$size-resident" "$model" --nsamples 4 --stream off ${save:+--save "$DIR/runs/$size-resident.save"}
    row "$label" "$size-resident" "$size-streamed"
  fi
  rm -rf "$DIR/runs/$size-"*.save
  if [ "$size" = 2 ]; then
    # The spill path: 32 x 512 tokens (two buffers of 128 MiB) with a budget below what they need.
    run 2-spill-memory "$model" --nsamples 32 --stream on --save "$DIR/runs/2-spill-memory.save"
    row "2 GB, 32 x 512 calibration tokens, in memory" 2-spill-memory
    run 2-spill-disk "$model" --nsamples 32 --stream on --max-memory 800M --scratch "$TMPDIR" \
      --save "$DIR/runs/2-spill-disk.save"
    row "2 GB, 32 x 512 calibration tokens, --max-memory 800M" 2-spill-disk 2-spill-memory
    rm -rf "$DIR/runs/2-spill-"*.save
  fi
  if [ "$size" = 7b ]; then
    echo
    echo "LLaMA-7B shape, 128 x 2048 calibration tokens (--plan):"
    "$REPRO" prune --model "$model" --dtype f32 --method wanda --calib c4:c4-format-sample --nsamples 128 \
      --seqlen 2048 --stream on --plan
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$model"
done
echo
echo "(peak RSS: the process's maximum resident set, from /usr/bin/time; planned: the memory plan's peak,"
echo " without the runtime's own ~0.15 GiB; records and stderr in $DIR/runs)"
