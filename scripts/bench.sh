#!/usr/bin/env bash
# End-to-end benchmark of rmq-bridge against the real RocketMQ peers on
# loopback (benches/e2e.rs), installing what is missing first: Debian build
# deps and the test peers (SPEC.md section 7), like scripts/test.sh.
#
# Measures in one run: raw 4.x pull rate, raw 5.x send rate, the bridge's
# forwarding rate, p50/p99 added latency at half that rate, restart to first
# forward, the bridge's peak RSS while draining a 1M-message backlog, and the
# bridge's own ceiling against a blackhole 5.x endpoint (raw send into it, and
# bridged 4.x -> blackhole, single sends and packed batches: msg/s, bridge CPU
# per message, peak RSS, ratio);
# prints one table with the ratios and targets, also written to
# target/bench-e2e.txt (bridge logs in target/bench-e2e-logs/).
#
# Every RMQ_BENCH_* variable is passed through, e.g.
#   RMQ_BENCH_MESSAGES=50000 RMQ_BENCH_BACKLOG=0 scripts/bench.sh
#   RMQ_BENCH_ONLY_BLACKHOLE=1 RMQ_BENCH_PERF=target/perf scripts/bench.sh
# (the table of variables is at the top of benches/e2e.rs and in README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/install-deps.sh
scripts/install-peers.sh
. scripts/peer-tmpdir.sh
echo "== cargo bench --bench e2e ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
env | grep '^RMQ_BENCH_' | sort | sed 's/^/   /' || true
cargo bench --bench e2e
target_dir="${CARGO_TARGET_DIR:-target}"
echo "== benchmark finished in $(( $(date +%s) - start ))s"
echo "== table: $target_dir/bench-e2e.txt (bridge logs: $target_dir/bench-e2e-logs/)"
