#!/usr/bin/env bash
# Installs the test peers of SPEC.md section 7: Apache RocketMQ itself, as the
# jars Apache publishes on Maven Central, run with a JDK 17.
#   4.x line: rocketmq-namesrv + rocketmq-broker 4.9.7 (the newest 4.x whose
#             server jars are on Maven Central: 4.9.8 was published for the
#             client and tools only; docs/peers.md)
#   5.x line: rocketmq-namesrv + rocketmq-broker + rocketmq-proxy 5.5.0
# Each line is resolved by a small pom of its own (never one classpath for
# both) into $RMQ_PEERS_DIR/<line>/lib (default ~/.cache/rmq-bridge-peers),
# with a `classpath` file the launcher (src/dev/cluster) reads. Nothing of
# Apache's is compiled or committed; later runs reuse the cache.
# Installs Debian's openjdk-17-jre-headless and maven when java or mvn is missing.
set -euo pipefail

DIR="${RMQ_PEERS_DIR:-$HOME/.cache/rmq-bridge-peers}"
V4="${RMQ_PEER_V4_VERSION:-4.9.7}"
V5="${RMQ_PEER_V5_VERSION:-5.5.0}"
start=$(date +%s)
say() { echo "install-peers: $*"; }

line_ready() {
  [ -s "$DIR/$1/classpath" ] && [ -f "$DIR/$1/version" ] && [ "$(cat "$DIR/$1/version")" = "$2" ]
}

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if ! { line_ready v4 "$V4" && line_ready v5 "$V5"; }; then
  command -v mvn >/dev/null 2>&1 || need+=(maven)
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "installing Debian ${need[*]} (about a minute)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  say "ERROR: the peers need Java 17 or newer; \`java -version\` says ${java_major:-nothing}" >&2
  say "install openjdk-17-jre-headless or put a JDK 17 first on PATH" >&2
  exit 1
fi

# resolve LINE VERSION ARTIFACT...
resolve() {
  local line="$1" version="$2"
  shift 2
  if line_ready "$line" "$version"; then
    say "$line line ($version) cached in $DIR/$line"
    return 0
  fi
  local dest="$DIR/$line" t0
  t0=$(date +%s)
  say "resolving the $line line ($version: $*) from Maven Central into $dest (first time: 10-60 s)"
  rm -rf "$dest"
  mkdir -p "$dest"
  {
    echo '<project xmlns="http://maven.apache.org/POM/4.0.0">'
    echo '  <modelVersion>4.0.0</modelVersion>'
    echo "  <groupId>rmq-bridge.test-peers</groupId><artifactId>rocketmq-$line</artifactId><version>1</version>"
    echo '  <packaging>pom</packaging>'
    echo '  <dependencies>'
    local artifact
    for artifact in "$@"; do
      echo "    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>$artifact</artifactId><version>$version</version></dependency>"
    done
    echo '  </dependencies>'
    echo '</project>'
  } > "$dest/pom.xml"
  if ! (cd "$dest" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$dest/lib" -DincludeScope=runtime); then
    say "ERROR: Maven could not resolve the $line line ($version) into $dest; its output is above" >&2
    exit 1
  fi
  (cd "$dest/lib" && ls -1 ./*.jar | sed "s#^\./#$dest/lib/#") | paste -sd: - > "$dest/classpath"
  echo "$version" > "$dest/version"
  say "$line line: $(ls "$dest/lib" | wc -l) jars, $(du -sh "$dest/lib" | cut -f1), in $(( $(date +%s) - t0 ))s"
}

resolve v4 "$V4" rocketmq-namesrv rocketmq-broker
resolve v5 "$V5" rocketmq-namesrv rocketmq-broker rocketmq-proxy
say "peers ready in $DIR ($(( $(date +%s) - start ))s; java $java_major at $(command -v java))"
