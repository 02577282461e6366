#!/usr/bin/env bash
# Idempotent set-up: project venv with torch (libtorch for tch), then a release build.
# Fast when nothing changed: each step checks before it works.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

if [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
  echo "==> creating venv in .venv"
  python3 -m venv "$VIRTUAL_ENV"
fi
if ! "$VIRTUAL_ENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "==> installing torch==$TORCH_VERSION into .venv (libtorch for tch; ~2.6 GB, about a minute)"
  "$VIRTUAL_ENV/bin/pip" install --progress-bar on "torch==$TORCH_VERSION"
fi
echo "==> building repro (release)"
cargo build --release
echo "==> ready: target/release/repro"
