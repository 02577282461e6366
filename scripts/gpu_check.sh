#!/usr/bin/env bash
# repro's GPU check, run from the kit (target/gpu-kit/, built by scripts/gpu_kit.sh) on a GPU node
# that has its own PyTorch and no network:
#
#   gpu_check.sh OUTDIR                  the node's python3 and its torch (CUDA device 0)
#   gpu_check.sh --python PY OUTDIR      another interpreter (a module's or a venv's python)
#   gpu_check.sh --cpu-smoke OUTDIR      here, on the CPU, small shapes, against the torch 2.11
#                                        venv the kit was built against
#
# Writes OUTDIR/summary.json and OUTDIR/summary.md and prints the Markdown; exit 0 when every
# check passed. About 7-8 minutes on one H100/H200; the smoke run takes a few minutes.
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
smoke=0 py="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) smoke=1; shift ;;
    --python) py="${2:?--python needs an interpreter}"; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    *) out="$1"; shift ;;
  esac
done
[ -n "$out" ] || { echo "usage: gpu_check.sh [--cpu-smoke] [--python PY] OUTDIR" >&2; exit 2; }
kit_torch="$(sed -n 's/.*"torch": *"\([^"]*\)".*/\1/p' "$KIT/kit.json")"
if [ -z "$py" ]; then
  if [ "$smoke" = 1 ]; then
    py="$(sed -n 's/.*"build_python": *"\([^"]*\)".*/\1/p' "$KIT/kit.json")"
  else
    py="$(command -v python3 || true)"
  fi
fi
[ -n "$py" ] && [ -x "$py" ] || { echo "gpu_check.sh: no Python interpreter found (${py:-python3}); pass --python PY" >&2; exit 2; }
node_torch="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" || {
  echo "gpu_check.sh: $py cannot import torch; pass the Python of the node's PyTorch with --python" >&2; exit 2; }
echo "gpu_check: torch $node_torch from $py (kit built against $kit_torch)"
if [ "${node_torch%.*}" != "${kit_torch%.*}" ]; then
  echo "gpu_check.sh: this kit's repro is built against torch $kit_torch; torch $node_torch has another C++ ABI. Build a kit for it: scripts/gpu_kit.sh --torch $node_torch" >&2
  exit 2
fi
mkdir -p "$out"
if [ "$smoke" = 1 ]; then
  exec "$py" "$KIT/gpu_check.py" "$out" --kit "$KIT" --device cpu --smoke --budget 1200
fi
exec "$py" "$KIT/gpu_check.py" "$out" --kit "$KIT" --device cuda --budget 480
