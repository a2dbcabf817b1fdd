#!/usr/bin/env bash
# Runs every test of rmq-bridge on this machine, installing what is missing:
# Debian build deps, the real RocketMQ test peers (SPEC.md section 7), then
# formatting, lints, unit tests and the integration tests against the peers.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/install-deps.sh
scripts/install-peers.sh
export RMQ_PEERS_BIN="${RMQ_PEERS_BIN:-${RMQ_PEERS_ROOT:-$HOME/.cargo}/bin}"
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test (unit, property and peer integration tests)"
# Peer tests each start real clusters; two at a time fit a 2-core machine.
# Benchmarks are compiled by clippy above but not run here (scripts/bench.sh).
cargo test --lib --bins --tests -- --test-threads="${RMQ_TEST_THREADS:-2}"
cargo test --doc
echo "== tests finished in $(( $(date +%s) - start ))s"
