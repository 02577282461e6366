#!/usr/bin/env bash
# Bit-exactness on this machine: the reference (scripts/reference_prune.py, 1 thread) makes every
# pruning golden afresh here, then tests/golden_prune.rs holds repro to them with no tolerance:
# every layer's mask hash and every sampled weight equal to the last bit. The stored goldens come
# from one CPU and the reference itself moves on others (README, golden tests); this shows that
# repro follows the reference wherever both run. Not in CI: about 8 min on 2 cores, and it needs
# transformers 5.24 in the venv (pip install transformers==5.24.0).
# Exits non-zero when any case differs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/repro-prune-goldens.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
OUT="$OUT" scripts/make_prune_goldens.sh
REPRO_PRUNE_GOLDENS="$OUT" REPRO_PRUNE_EXACT=1 cargo test --release --test golden_prune -- --test-threads=1
