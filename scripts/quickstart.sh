#!/usr/bin/env bash
# Quick start on a fresh machine: install what is missing, then run the demo:
# a local Apache RocketMQ 4.x cluster and 5.x cluster on loopback, sample
# traffic of every message type, the bridge between them, its progress until
# everything landed, `verify`, and the decommission report of the demo estate.
#
# The bridge is built in its own `quickstart` profile (Cargo.toml): nothing
# optimised and no debug info, the fastest build to the first message; the
# demo moves 800 messages, so speed does not matter there. `scripts/test.sh`
# builds the tests' own profile afterwards, and the daemon's production build
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

step "test peers: Apache RocketMQ 4.9.7 and 5.5.0 jars from Maven Central (first time: under a minute; a JDK 17 and Maven from Debian if missing)"
scripts/install-peers.sh

step "the bridge with the demo (first time: several minutes on 2 cores, RocksDB's C++ core the longest part)"
cargo build --profile quickstart --bin rmq-bridge --features dev

step "demo: local 4.x and 5.x clusters, 800 messages of four types through the bridge, verify, decommission report (about 2 min)"
target/quickstart/rmq-bridge demo "$@"
step "quick start finished"
