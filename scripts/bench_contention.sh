#!/usr/bin/env bash
# Zero-shot on llama-tiny on cores shared with a competing busy process: wall and CPU time of
# repro quiet, contended with OpenMP's default spin-waiting (libgomp's GOMP_SPINCOUNT=300000,
# what repro ran with before), and contended with repro's default (OMP_WAIT_POLICY=PASSIVE).
#
#   scripts/bench_contention.sh
#
# Env: LIMIT (documents per task, default 50), COMPETITORS (busy processes, default 1),
# TASKS (default all seven). The thread count is repro's own (all allowed CPUs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
LIMIT="${LIMIT:-50}"
COMPETITORS="${COMPETITORS:-1}"
TASKS="${TASKS:-boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa}"
MODEL="$REPRO_HUB_MIRROR/models/llama-tiny"
[ -x target/release/repro ] || cargo build --release
echo "== zero-shot, llama-tiny f32 CPU, limit $LIMIT, $(nproc) cores, $COMPETITORS competing busy process(es), load $(cut -d' ' -f1-3 /proc/loadavg)"

busy=()
start_competition() {
  for _ in $(seq "$COMPETITORS"); do
    (while :; do :; done) &
    busy+=($!)
  done
}
stop_competition() {
  for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done
  busy=()
}
trap stop_competition EXIT

# One measurement: label, then `env` assignments; prints wall, user+system CPU and the accuracy mean.
measure() {
  local label=$1 out
  shift
  out=$( { /usr/bin/time -f 'TIME %e %U %S' env "$@" target/release/repro eval --model "$MODEL" --tasks "$TASKS" --limit "$LIMIT" --json 2>&1 >/dev/null | grep '^TIME'; } )
  read -r _ wall user sys <<<"$out"
  printf '%-42s wall %7.1f s   cpu %7.1f s\n' "$label" "$wall" "$(echo "$user + $sys" | bc)"
}

measure "quiet, repro default (PASSIVE)"
measure "quiet, spin-waiting (GOMP_SPINCOUNT=300000)" GOMP_SPINCOUNT=300000
start_competition
measure "contended, spin-waiting (before)" GOMP_SPINCOUNT=300000
measure "contended, repro default (PASSIVE, after)"
stop_competition
