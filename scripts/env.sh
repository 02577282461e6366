# Sourced by the other scripts: puts the project venv first so torch-sys finds the torch wheel.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export REPRO_HUB_MIRROR="${REPRO_HUB_MIRROR:-$ROOT/../shared/fixtures}"
TORCH_VERSION=2.13.0
