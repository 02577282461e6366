#!/usr/bin/env bash
# The one test command (README, .ci/run): set-up, then every test in release mode.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ROOT/scripts/setup.sh"
# tests/slurm.rs starts (and stops) a single-node SLURM cluster of its own; it needs the packages.
"$ROOT/scripts/slurm_cluster.sh" install
# The GPU kit (a second build, against torch 2.11.0) is tested here too: tests/gpu_kit.rs.
"$ROOT/scripts/gpu_kit.sh"
cd "$ROOT"
echo "==> cargo test --release"
cargo test --release -- --test-threads=1 "$@"
