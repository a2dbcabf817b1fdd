# Sourced by the test and benchmark scripts: puts the throwaway RocketMQ test
# peers (and other temporary files) on a tmpfs. The rocketmq-rust 1.0.0 broker
# refuses writes and rolls its startup back when its filesystem has less than
# 10 % of its size available (docs/peers.md), which a build machine's disk can
# be. RMQ_TEST_TMPDIR chooses another directory; /dev/shm is used when it is
# writable and has more than 4 GiB free.
if [ -z "${RMQ_TEST_TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] \
  && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 4194304 ]; then
  RMQ_TEST_TMPDIR=/dev/shm
fi
if [ -n "${RMQ_TEST_TMPDIR:-}" ]; then
  export TMPDIR="$RMQ_TEST_TMPDIR"
fi
echo "temporary files and test peers in ${TMPDIR:-/tmp}:"
df -h "${TMPDIR:-/tmp}" | sed 's/^/   /'
