#!/usr/bin/env bash
# Debian packages needed to build rmq-bridge itself:
#   libclang-dev  bindgen (via librocksdb-sys) parses RocksDB's C header with libclang
#   g++ / make    RocksDB's C++ core
# The test peers have their own script (install-peers.sh).
set -euo pipefail
need=()
ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if [ "${#need[@]}" -eq 0 ]; then
  echo "install-deps: build dependencies present"
  exit 0
fi
echo "install-deps: installing ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
