#!/usr/bin/env bash
# The one test command (README, .ci/run): set-up, then every test in release mode.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "==> cargo test --release"
cargo test --release -- --test-threads=1 "$@"
