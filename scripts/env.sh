# Sourced by the other scripts: puts the project venv first so torch-sys finds the torch wheel.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export REPRO_HUB_MIRROR="${REPRO_HUB_MIRROR:-$ROOT/../shared/fixtures}"
TORCH_VERSION=2.13.0

# A venv at $1 holding torch==$2: created and installed when missing, left alone otherwise.
ensure_torch_venv() {
  local venv="$1" version="$2"
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating venv in $venv"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
    echo "==> installing torch==$version into $venv (libtorch for tch; ~2.6 GB, about a minute)"
    # A multi-GB download now and then arrives corrupt (pip: "do not match the hashes"); one
    # retry, bypassing pip's cache, saves a CI run from a network hiccup.
    "$venv/bin/pip" install --progress-bar off "torch==$version" || {
      echo "==> retrying torch==$version once, without pip's cache"
      "$venv/bin/pip" install --progress-bar off --no-cache-dir "torch==$version"
    }
  fi
}
