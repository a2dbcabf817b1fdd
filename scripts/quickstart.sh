#!/usr/bin/env bash
# Quick start on a fresh machine: install what is missing, then run the demo:
# local 4.x and 5.x peers on loopback, sample traffic of every message type,
# the bridge between them, its progress until everything landed, and the
# decommission report of the demo estate.
#
# The bridge is built in the profile the tests use (target/debug, the
# dependencies at opt-level 1), so `scripts/test.sh` afterwards compiles the
# bridge and RocksDB's C++ core no second time. The daemon's production build
# stays `cargo build --release`. docs/ci-timing.md has the measured times.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step_start=""
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
step() {
  if [ -n "$step_start" ]; then echo "   (step took $(elapsed "$step_start"))"; fi
  step_start=$(date +%s)
  echo "== [$(elapsed "$start")] $*"
}

step "Debian build dependencies (libclang, g++, make; seconds if present)"
scripts/install-deps.sh

step "test peers and the bridge, built side by side (first time: about 24 min on 2 cores; the peers are built once into ~/.cargo/bin, the bridge's debug build, RocksDB's C++ core most of it, uses what the peers' serial compile phases leave idle)"
# The peers' build is mostly one rustc front end at a time; the bridge's
# build runs beside it. The peers get their own CARGO_HOME so neither build
# waits on the other's package-cache lock.
peers_log=$(mktemp)
(
  export CARGO_HOME="${RMQ_PEERS_CARGO_HOME:-${HOME}/.cache/rmq-bridge-peers-cargo-home}"
  export RMQ_PEERS_ROOT="${RMQ_PEERS_ROOT:-$HOME/.cargo}"
  mkdir -p "$CARGO_HOME"
  scripts/install-peers.sh
) > "$peers_log" 2>&1 &
peers_pid=$!
# Tests, benches and examples see the `dev` feature through the dev-dependency
# on this crate; building the example too makes this build a part of the test
# build's graph (the same features for every dependency), which then reuses it.
if ! cargo build --bin rmq-bridge --example blackhole; then
  kill "$peers_pid" 2>/dev/null || true
  exit 1
fi
echo "   bridge built at $(elapsed "$start"); waiting for the peers:"
if ! wait "$peers_pid"; then
  cat "$peers_log"
  echo "quickstart: installing the test peers failed (log above)" >&2
  exit 1
fi
grep '^install-peers:' "$peers_log" | sed 's/^/   /'
rm -f "$peers_log"
export RMQ_PEERS_BIN="${RMQ_PEERS_BIN:-${RMQ_PEERS_ROOT:-$HOME/.cargo}/bin}"

step "demo: local peers, 800 messages of four types through the bridge (about 30 s)"
target/debug/rmq-bridge demo "$@"
step "quick start finished"
