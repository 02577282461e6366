#!/usr/bin/env bash
# Idempotent set-up: project venv with torch (libtorch for tch), then a release build.
# Fast when nothing changed: each step checks before it works.
#
#   scripts/setup.sh                      .venv with torch 2.13.0 from PyPI -> target/release/repro
#   scripts/setup.sh --torch-from PYTHON  an existing Python's torch (a cluster module, a site
#                                         environment) -> target/torch-<version>/release/repro
#   REPRO_TORCH_FROM=PYTHON               the same as --torch-from
#
# A build against another torch gets its own target directory: torch-sys does not notice a
# change of interpreter, so sharing one would silently keep the other libtorch's bindings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

torch_from="${REPRO_TORCH_FROM:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --torch-from) torch_from="${2:?--torch-from needs a Python interpreter (e.g. \$(which python3))}"; shift 2 ;;
    --torch-from=*) torch_from="${1#*=}"; shift ;;
    *) echo "setup.sh: unknown option $1 (usage: scripts/setup.sh [--torch-from PYTHON])" >&2; exit 2 ;;
  esac
done

if [ -z "$torch_from" ]; then
  ensure_torch_venv "$VIRTUAL_ENV" "$TORCH_VERSION"
  echo "==> building repro (release)"
  cargo build --release
  echo "==> ready: target/release/repro"
  exit 0
fi

# --torch-from: build against the libtorch inside an installed torch package.
if ! command -v "$torch_from" >/dev/null; then
  echo "setup.sh: --torch-from $torch_from: no such interpreter" >&2; exit 2
fi
py="$(command -v "$torch_from")"
query='import os, torch; print(torch.__version__.split("+")[0]); print(os.path.dirname(torch.__file__))'
info="$("$py" -W ignore -c "$query" 2>/dev/null)" || {
  echo "setup.sh: --torch-from $py: this Python cannot import torch:" >&2; "$py" -c "$query" 2>&1 | tail -3 >&2; exit 2; }
version="$(echo "$info" | sed -n 1p)"
torch_dir="$(echo "$info" | sed -n 2p)"
# tch releases generate their bindings for one torch each: 0.26 for 2.13, 0.24 for 2.11 (there is
# no 0.25). 0.26's bindings call ops that 2.11 lacks, so 2.11 and 2.12 build with tch 0.24.
case "$version" in
  2.13.*) tch=0.26 made_for=2.13.0 ;;
  2.11.*|2.12.*) tch=0.24 made_for=2.11.0 ;;
  *) echo "setup.sh: torch $version at $torch_dir is outside the supported range 2.11-2.13 (tch 0.24 and 0.26)" >&2; exit 2 ;;
esac
target="$ROOT/target/torch-$version"
echo "==> building repro against torch $version at $torch_dir -> $target/release/repro"
# torch-sys asks `python` (with VIRTUAL_ENV set) where torch lives: a shim named python runs the
# chosen interpreter by its own path, so a venv interpreter still finds its site-packages.
shim="$target/python-shim"
mkdir -p "$shim/bin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" > "$shim/bin/python"
chmod +x "$shim/bin/python"
ln -sf python "$shim/bin/python3"
export VIRTUAL_ENV="$shim" PATH="$shim/bin:$PATH" CARGO_TARGET_DIR="$target"
manifest="$ROOT/Cargo.toml"
if [ "$tch" != 0.26 ]; then
  # One manifest cannot offer two tch releases (both link the native library `tch`), so this
  # build gets a generated one: the project's, with the matching tch and paths back to the sources.
  gen="$target/manifest"
  mkdir -p "$gen"
  sed -e "s|^tch = \"0.26\"|tch = \"$tch\"|" -e "s|^torch-sys = \"0.26\"|torch-sys = \"$tch\"|" \
      -e "s|^path = \"src/|path = \"$ROOT/src/|" -e "s|^\[package\]|[package]\nbuild = \"$ROOT/build.rs\"|" \
      -e '/^\[dev-dependencies\]/,/^\[/{/^\[dev-dependencies\]/d;/^[^[]/d}' "$ROOT/Cargo.toml" > "$gen/Cargo.toml.new"
  printf '\n# Its own workspace, not a member of the project beside it.\n[workspace]\n' >> "$gen/Cargo.toml.new"
  grep -q "^tch = \"$tch\"" "$gen/Cargo.toml.new" || { echo "setup.sh: Cargo.toml has no tch = \"0.26\" line to retarget" >&2; exit 1; }
  mv "$gen/Cargo.toml.new" "$gen/Cargo.toml"
  # Every other dependency at the versions the project's lock file pins.
  [ -f "$gen/Cargo.lock" ] || cp "$ROOT/Cargo.lock" "$gen/Cargo.lock"
  manifest="$gen/Cargo.toml"
fi
# torch-sys accepts only the exact version its bindings were made for; a patch release differs
# in no op, and 2.12 keeps every op of 2.11.
if [ "$version" != "$made_for" ]; then export LIBTORCH_BYPASS_VERSION_CHECK=1; fi
cargo build --release --manifest-path "$manifest"
echo "==> ready: $target/release/repro (finds libtorch in $torch_dir/lib through its rpath)"
