#!/usr/bin/env bash
# Quick start on a fresh machine: install what is missing, then run the demo:
# local 4.x and 5.x peers on loopback, sample traffic of every message type,
# the bridge between them, and its progress until lag is zero.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-peers.sh
export RMQ_PEERS_BIN="${RMQ_PEERS_BIN:-${RMQ_PEERS_ROOT:-$HOME/.cargo}/bin}"
# `demo` is developer tooling behind the `dev` cargo feature (the daemon's own
# `cargo build --release` leaves it out).
cargo build --release --features dev --bin rmq-bridge
exec target/release/rmq-bridge demo "$@"
