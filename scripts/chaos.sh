#!/usr/bin/env bash
# The chaos soak (outside CI): 100k mixed-type messages through the bridge
# between real 4.x and 5.x peers on loopback, 50 SIGKILLs of the bridge at
# random moments, two restarts of every peer, then one table (lost,
# duplicates and their bound, FIFO order, quarantined, recovery per fault,
# peak RSS). Knobs: RMQ_CHAOS_MESSAGES, RMQ_CHAOS_KILLS,
# RMQ_CHAOS_PEER_RESTARTS, RMQ_CHAOS_RATE, RMQ_CHAOS_SEED, RMQ_CHAOS_WINDOW
# (benches/chaos_soak.rs). The table is also written to target/chaos-soak.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-peers.sh
. scripts/peer-tmpdir.sh
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
cargo bench --bench chaos_soak 2>&1 | tee "$target_dir/chaos-soak.txt"
exit "${PIPESTATUS[0]}"
