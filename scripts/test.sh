#!/usr/bin/env bash
# Runs every test of rmq-bridge on this machine, installing what is missing:
# Debian build deps, the test peers (Apache RocketMQ 4.9.7 and 5.5.0 jars from
# Maven Central, SPEC.md section 7), cargo-nextest, then formatting, lints,
# unit tests and the integration tests against the peers.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# Each phase says when it started, so a CI log shows where the time went.
phase() { echo "== [+$(( $(date +%s) - start ))s] $*"; }
phase "install build dependencies"
scripts/install-deps.sh
phase "install test peers"
scripts/install-peers.sh
phase "install cargo-nextest (first time: a few minutes of compiling; reused later)"
# `cargo install` puts it in $CARGO_HOME/bin, which a fresh shell may lack.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest || echo "test: cargo-nextest did not install; cargo test runs the tests instead"
fi
phase "cargo fmt --check"
cargo fmt --check
# Tests, benches and doctests build with the `dev` feature (rmq_bridge::dev:
# test peers, test helpers, demo) through Cargo.toml's dev-dependency on this
# crate; the daemon's own build (lib + bin) is linted once without it.
phase "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
phase "cargo clippy --lib --bins -- -D warnings (daemon build, without the dev feature)"
cargo clippy --lib --bins -- -D warnings
phase "build the tests (the debug profile)"
cargo test --no-run --lib --bins --tests
phase "unit, property and peer integration tests"
# The test peers go to a tmpfs (why: scripts/peer-tmpdir.sh).
. scripts/peer-tmpdir.sh

# Peer tests each start real clusters; two at a time fit a 2-core machine.
# cargo-nextest (installed above) keeps two running across the test binaries,
# where cargo test waits for each binary's last test; its profile
# (.config/nextest.toml) bounds a hung test. Benchmarks are compiled
# by clippy above but not run here (scripts/bench.sh).
threads="${RMQ_TEST_THREADS:-2}"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --lib --bins --tests --test-threads="$threads"
else
  echo "test: cargo-nextest not found; running the tests with cargo test (slower)"
  cargo test --lib --bins --tests -- --test-threads="$threads"
fi
phase "cargo test --doc"
cargo test --doc
phase "tests finished"
