#!/usr/bin/env bash
# The main job, offline on ../shared/fixtures: set-up, then evaluate llama-tiny's perplexity on
# WikiText-2 (out of domain for it) and on held-out text from its own books (in domain).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
target/release/repro eval --model llama-tiny --ppl wikitext2,books-heldout "$@"
