#!/usr/bin/env bash
# Cost of rmq-bridge as the estate grows (benches/estate.rs): many routes and
# source queues on the real 4.x peer, mostly idle, a few busy routes, the
# 5.x side an in-process blackhole endpoint. Installs what is missing first
# (Debian build deps, the test peers), like scripts/bench.sh.
#
# Per estate size: startup until every queue is pulling, idle CPU and RSS of
# the bridge, the 4.x broker's idle CPU, and the drain rate of the busy
# routes next to the same routes with no idle estate; one table, also
# written to target/bench-estate.txt (bridge logs in target/bench-estate-logs/).
#
# Every RMQ_ESTATE_* variable is passed through, e.g.
#   RMQ_ESTATE_QUEUES=100,1000,8000 scripts/bench-estate.sh
#   RMQ_ESTATE_QUEUES=8000 RMQ_ESTATE_IDLE_SECS=60 RMQ_ESTATE_PERF=target/perf-estate scripts/bench-estate.sh
# (the table of variables is at the top of benches/estate.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/install-deps.sh
scripts/install-peers.sh
. scripts/peer-tmpdir.sh
echo "== cargo bench --bench estate ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
env | grep '^RMQ_ESTATE_' | sort | sed 's/^/   /' || true
cargo bench --bench estate
target_dir="${CARGO_TARGET_DIR:-target}"
echo "== benchmark finished in $(( $(date +%s) - start ))s"
echo "== table: $target_dir/bench-estate.txt (bridge logs: $target_dir/bench-estate-logs/)"
