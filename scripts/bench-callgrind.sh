#!/usr/bin/env bash
# Instructions per forwarded message (issue 33, item 1): a unit that does not
# move with the machine. Wall-clock figures here moved 20-30 % between runs of
# one build; valgrind's callgrind counts the instructions the bridge executes,
# which repeat for the same binary and input.
#
# Runs the blackhole legs of benches/e2e.rs (RMQ_BENCH_ONLY_BLACKHOLE=1: the
# bridge drains a preloaded 4.x topic into the in-process blackhole 5.x
# endpoint, once with single sends, once packed) and the bridged leg of
# benches/reverse.rs (a reverse route drains a preloaded 5.x topic into the
# 4.x broker, packed by born time) with the daemon under
# `valgrind --tool=callgrind`, twice: with SMALL and with LARGE messages. The
# marginal cost, (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL), leaves out what
# does not grow with traffic (start, connect, shutdown); what grows with time
# (timers, the checkpoint flusher) stays in, and is small.
#
#   scripts/bench-callgrind.sh                         # 10,000 and 30,000 messages
#   RMQ_CALLGRIND_SMALL=5000 RMQ_CALLGRIND_LARGE=15000 scripts/bench-callgrind.sh
#   RMQ_CALLGRIND_REPORT_ONLY=1 scripts/bench-callgrind.sh   # the table again, no run
#
# Prints per leg: instructions per message, and the functions that cost most
# (self cost, the LARGE run); writes target/callgrind/<leg>-<N>.out (or
# under RMQ_CALLGRIND_DIR, an absolute path) for callgrind_annotate /
# kcachegrind.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${RMQ_CALLGRIND_SMALL:-10000}
large=${RMQ_CALLGRIND_LARGE:-30000}
if (( large <= small )); then
  echo "bench-callgrind: RMQ_CALLGRIND_LARGE ($large) must exceed RMQ_CALLGRIND_SMALL ($small)" >&2
  exit 2
fi
command -v valgrind >/dev/null || { echo "bench-callgrind: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
scripts/install-peers.sh
. scripts/peer-tmpdir.sh
target_dir="${CARGO_TARGET_DIR:-target}"
out="${RMQ_CALLGRIND_DIR:-$(pwd)/$target_dir/callgrind}"
mkdir -p "$out"
cargo bench --bench e2e --no-run
cargo bench --bench reverse --no-run
real="$(pwd)/$target_dir/release/rmq-bridge"
[[ -x "$real" ]] || { echo "bench-callgrind: no release build at $real" >&2; exit 2; }

# The wrapper the bench runs as the daemon: the leg is the config's name
# (bh_single.toml, bh_packed.toml).
wrapper="$out/rmq-bridge-under-callgrind"
run_wrapper() {
  local n=$1
  cat >"$wrapper" <<EOF
#!/usr/bin/env bash
leg=\${RMQ_CALLGRIND_LEG:-\$(basename "\${3:-unknown}" .toml)}
exec valgrind --tool=callgrind --callgrind-out-file="$out/\$leg-$n.out" "$real" "\$@"
EOF
  chmod +x "$wrapper"
  echo "== blackhole legs, $n messages, the daemon under callgrind"
  RMQ_BENCH_BRIDGE_BIN="$wrapper" RMQ_BENCH_ONLY_BLACKHOLE=1 RMQ_BENCH_MESSAGES="$n" \
    RMQ_BENCH_SEND_MESSAGES="${RMQ_BENCH_SEND_MESSAGES:-5000}" RMQ_BENCH_DRAIN_CAP_SECS=3600 \
    cargo bench --bench e2e >"$out/bench-$n.txt" 2>&1 || {
      echo "bench-callgrind: the bench failed; see $out/bench-$n.txt" >&2
      tail -20 "$out/bench-$n.txt" >&2
      exit 1
    }
  echo "== reverse route (5.x -> 4.x server), $n messages, the daemon under callgrind"
  RMQ_BENCH_BRIDGE_BIN="$wrapper" RMQ_CALLGRIND_LEG=reverse RMQ_BENCH_REVERSE_MESSAGES="$n" \
    cargo bench --bench reverse >"$out/reverse-$n.txt" 2>&1 || {
      echo "bench-callgrind: the reverse bench failed; see $out/reverse-$n.txt" >&2
      tail -20 "$out/reverse-$n.txt" >&2
      exit 1
    }
}

annotated() {
  # callgrind_annotate into a file (a pipe closed early would SIGPIPE it).
  callgrind_annotate --threshold=100 "$1" >"$1.txt" 2>/dev/null || true
}

total() {
  # "PROGRAM TOTALS" of callgrind_annotate: the Ir count with commas.
  awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$1.txt" | head -n 1
}

if [[ "${RMQ_CALLGRIND_REPORT_ONLY:-0}" != 1 ]]; then
  rm -f "$out"/*-"$small".out "$out"/*-"$large".out
  run_wrapper "$small"
  run_wrapper "$large"
fi

echo
echo "| leg | Ir at $small | Ir at $large | instructions per message |"
echo "|---|---|---|---|"
for leg in bh_single bh_packed reverse; do
  a="$out/$leg-$small.out"
  b="$out/$leg-$large.out"
  if [[ ! -s "$a" || ! -s "$b" ]]; then
    echo "| $leg | missing | missing | (no callgrind output: is the leg in the bench?) |"
    continue
  fi
  annotated "$a"
  annotated "$b"
  ia=$(total "$a")
  ib=$(total "$b")
  per=$(( (ib - ia) / (large - small) ))
  echo "| $leg | $ia | $ib | $per |"
done
for leg in bh_single bh_packed reverse; do
  b="$out/$leg-$large.out"
  [[ -s "$b" ]] || continue
  echo
  echo "== $leg, $large messages: the 15 functions of most self cost"
  grep -E '^ *[0-9,]+ \([ 0-9.]+%\)' "$b.txt" | sed -n '2,16p' || true
done
