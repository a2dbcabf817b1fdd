#!/usr/bin/env bash
# Installs the real RocketMQ test peers of SPEC.md section 7 if they are missing:
#   4.x cluster: rocketmq-namesrv-rust + rocketmq-broker-rust
#   5.x cluster: the same two plus rocketmq-proxy-rust (gRPC v2, cluster mode)
# All three are built once into one shared target directory and installed into
# $RMQ_PEERS_ROOT/bin (default ~/.cargo/bin), so later runs reuse the binaries.
set -euo pipefail

PEER_VERSION="${RMQ_PEER_VERSION:-1.0.0}"
ROOT="${RMQ_PEERS_ROOT:-$HOME/.cargo}"
TARGET_DIR="${RMQ_PEERS_TARGET_DIR:-$HOME/.cache/rmq-bridge-peers-target}"
BIN="$ROOT/bin"

have_all() {
  [ -x "$BIN/rocketmq-namesrv-rust" ] && [ -x "$BIN/rocketmq-broker-rust" ] && [ -x "$BIN/rocketmq-proxy-rust" ]
}

if have_all; then
  echo "install-peers: peers already installed in $BIN"
  exit 0
fi

# rocketmq-proxy's build script compiles .proto files with protoc.
if ! command -v protoc >/dev/null 2>&1; then
  echo "install-peers: installing Debian protobuf-compiler (needed to build rocketmq-proxy)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler
fi

mkdir -p "$TARGET_DIR"
export CARGO_TARGET_DIR="$TARGET_DIR"
# The peers are test servers, not the product: build them at opt-level 1 with
# many codegen units, no LTO and no debug info (cargo's profile environment
# overrides apply to this install only). docs/ci-timing.md has the build times
# and the peer tests' run times at each level; RMQ_PEERS_OPT_LEVEL overrides.
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${RMQ_PEERS_OPT_LEVEL:-1}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${RMQ_PEERS_CODEGEN_UNITS:-256}"
export CARGO_PROFILE_RELEASE_LTO=false
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_INCREMENTAL=false
jobs="${RMQ_PEERS_BUILD_JOBS:-$(nproc)}"
for crate in rocketmq-namesrv rocketmq-broker rocketmq-proxy; do
  bin="${crate}-rust"
  if [ -x "$BIN/$bin" ]; then
    echo "install-peers: $bin present"
    continue
  fi
  echo "install-peers: building $crate $PEER_VERSION at opt-level $CARGO_PROFILE_RELEASE_OPT_LEVEL (first build of all three: about 17 min on 2 idle cores)"
  start=$(date +%s)
  if ! cargo install --locked --root "$ROOT" --version "$PEER_VERSION" -j "$jobs" "$crate"; then
    echo "install-peers: --locked build of $crate failed, retrying with fresh resolution"
    cargo install --root "$ROOT" --version "$PEER_VERSION" -j "$jobs" "$crate"
  fi
  echo "install-peers: $crate built in $(( $(date +%s) - start ))s"
done

if ! have_all; then
  echo "install-peers: ERROR: expected rocketmq-namesrv-rust, rocketmq-broker-rust and rocketmq-proxy-rust in $BIN" >&2
  ls -l "$BIN" >&2 || true
  exit 1
fi
echo "install-peers: all peers installed in $BIN"
