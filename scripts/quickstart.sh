#!/usr/bin/env bash
# The main job, offline on ../shared/fixtures: set-up, then the quickstart sweep on llama-tiny
# (dense, magnitude, Wanda, SparseGPT; 50% and 2:4), perplexity on WikiText-2 (out of domain for
# it) and on held-out text from its own books (in domain), tables and charts in results/quickstart.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
target/release/repro run configs/quickstart.yaml "$@"
