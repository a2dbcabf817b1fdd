#!/usr/bin/env bash
# Real RocketMQ test peers on fixed loopback ports, for manual use and the
# README quick start (SPEC.md section 7): Apache RocketMQ's Java servers, run
# from the jars scripts/install-peers.sh resolves. The same settings as the
# Rust launcher in src/dev/cluster (settings.rs; a unit test there keeps the
# two in step); docs/peers.md explains every one.
#
#   scripts/peers.sh start     start a 4.9.7 cluster and a 5.x cluster with gRPC proxy
#   scripts/peers.sh stop      stop them (SIGTERM, SIGKILL after 15 s)
#   scripts/peers.sh status    show what runs and whether it is ready
#   scripts/peers.sh logs [v4|v5] [namesrv|broker|proxy]   tail a peer's log
#   scripts/peers.sh reset     stop and delete all quick-start data
#   scripts/peers.sh cleanup   kill stray peers of dead test processes and of the
#                              quick start, and remove their throwaway dirs
#
# Ports (override with the environment variables named in brackets):
#   4.x name server 127.0.0.1:19876 [RMQ_QS_V4_NAMESRV_PORT]
#   4.x broker      127.0.0.1:20911 [RMQ_QS_V4_BROKER_PORT] (+ fast port -2, HA port +1)
#   5.x name server 127.0.0.1:29876 [RMQ_QS_V5_NAMESRV_PORT]
#   5.x broker      127.0.0.1:30911 [RMQ_QS_V5_BROKER_PORT] (+ fast port -2, HA port +1)
#   5.x proxy gRPC  127.0.0.1:28081 [RMQ_QS_PROXY_GRPC_PORT]
#   5.x proxy Remoting 127.0.0.1:28080 [RMQ_QS_PROXY_REMOTING_PORT]
# State: ./.rmq-quickstart/ [RMQ_QUICKSTART_DIR]. Jars: $RMQ_PEERS_DIR/{v4,v5}/classpath
# (default ~/.cache/rmq-bridge-peers; scripts/install-peers.sh). Java:
# $RMQ_PEERS_JAVA, else $JAVA_HOME/bin/java, else java on $PATH.
# Startup bound per peer: RMQ_PEER_START_TIMEOUT_SECS (default 120).
set -euo pipefail

STATE="${RMQ_QUICKSTART_DIR:-$PWD/.rmq-quickstart}"
V4_NAMESRV_PORT="${RMQ_QS_V4_NAMESRV_PORT:-19876}"
V4_BROKER_PORT="${RMQ_QS_V4_BROKER_PORT:-20911}"
V5_NAMESRV_PORT="${RMQ_QS_V5_NAMESRV_PORT:-29876}"
V5_BROKER_PORT="${RMQ_QS_V5_BROKER_PORT:-30911}"
PROXY_GRPC_PORT="${RMQ_QS_PROXY_GRPC_PORT:-28081}"
PROXY_REMOTING_PORT="${RMQ_QS_PROXY_REMOTING_PORT:-28080}"
START_TIMEOUT="${RMQ_PEER_START_TIMEOUT_SECS:-120}"
PEERS_DIR="${RMQ_PEERS_DIR:-${HOME:-}/.cache/rmq-bridge-peers}"
SHUTDOWN_TIMEOUT=10            # settings::PEER_SHUTDOWN_TIMEOUT_SECS
STOP_GRACE=$((SHUTDOWN_TIMEOUT + 5))
TMP_ROOT="${TMPDIR:-/tmp}"
TMP_ROOT="${TMP_ROOT%/}"
SETSID=()
command -v setsid >/dev/null 2>&1 && SETSID=(setsid)

die() { echo "peers.sh: $*" >&2; exit 1; }
say() { echo "peers.sh: $*"; }

# ----------------------------------------------------------- java and jars --
find_java() {
  local candidate dir
  if [ -n "${RMQ_PEERS_JAVA:-}" ]; then
    [ -f "$RMQ_PEERS_JAVA" ] && [ -x "$RMQ_PEERS_JAVA" ] && { echo "$RMQ_PEERS_JAVA"; return 0; }
    die "RMQ_PEERS_JAVA=$RMQ_PEERS_JAVA is not an executable; run scripts/install-peers.sh (it installs a JDK 17) or fix the variable"
  fi
  if [ -n "${JAVA_HOME:-}" ]; then
    candidate="$JAVA_HOME/bin/java"
    [ -f "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  fi
  local IFS=:
  for dir in ${PATH:-}; do
    candidate="${dir:-.}/java"
    [ -f "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  done
  die "no java executable (Java 17 or newer) found in \$JAVA_HOME/bin or \$PATH; run scripts/install-peers.sh or set RMQ_PEERS_JAVA"
}

# classpath <v4|v5>: the line's jar list, every jar checked.
classpath() {
  local line="$1" file="$PEERS_DIR/$1/classpath" cp jar
  [ -s "$file" ] || die "test peers not installed: no $file; run scripts/install-peers.sh (or set RMQ_PEERS_DIR to where it put them)"
  cp="$(tr -d '\n\r' <"$file")"
  local IFS=:
  for jar in $cp; do
    [ -f "$jar" ] || die "test peers incomplete: $jar, listed in $file, is missing; run scripts/install-peers.sh"
  done
  printf '%s\n' "$cp"
}

line_version() { cat "$PEERS_DIR/$1/version" 2>/dev/null || echo "?"; }

# ------------------------------------------------------------------- probes --
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() {
  local pid="$1"
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# pid_ours <cluster dir> <pid>: alive, and its working directory lies inside
# the cluster dir (so a recycled pid is never signalled).
pid_ours() {
  local dir="$1" pid="$2" cwd
  pid_alive "$pid" || return 1
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" || return 1
  case "$cwd" in "$dir"/*) return 0 ;; *) return 1 ;; esac
}

read_pid() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

BANNER="===== peers.sh: starting "

# Whether the log holds `marker` after byte `offset` (this start's output).
log_has_since() { # log offset marker
  tail -c +"$(($2 + 1))" "$1" 2>/dev/null | grep -qF -- "$3"
}

# Whether the log holds `marker` after its last start banner.
log_has_since_banner() { # log marker
  [ -f "$1" ] || return 1
  awk -v b="$BANNER" -v m="$2" 'index($0, b) { seen = 0 } index($0, m) { seen = 1 } END { exit !seen }' "$1"
}

# ------------------------------------------------------------------ configs --
check_path() {
  case "$1" in *'\'*|*$'\n'*) die "paths with backslashes or newlines are not supported: $1" ;; esac
}

# A peer's home is its working directory, HOME, ROCKETMQ_HOME,
# rocketmq.home.dir and user.home. 4.9.7 aborts without conf/logback_*.xml.
prepare_home() { # home line
  local home="$1" line="$2" file
  mkdir -p "$home/conf"
  [ "$line" = v4 ] || return 0
  for file in logback_namesrv.xml logback_broker.xml logback_tools.xml; do
    cat >"$home/conf/$file" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by rmq-bridge devcluster: the 4.x server logs to stdout (logs/<peer>.log). -->
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{yyyy-MM-dd HH:mm:ss.SSS} %-5p [%t] %c{0} - %m%n</pattern></encoder>
  </appender>
  <logger name="RocketmqStore" level="WARN"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
  done
}

write_namesrv_config() { # home port
  local home="$1" port="$2"
  cat >"$home/namesrv.properties" <<EOF
# Generated by scripts/peers.sh (settings::namesrv_properties); docs/peers.md explains every key.
listenPort=$port
kvConfigPath=$home/kvConfig.json
EOF
}

write_broker_config() { # home line name port namesrv_port
  local home="$1" line="$2" name="$3" port="$4" namesrv_port="$5"
  local store="$home/store"
  {
    cat <<EOF
# Generated by scripts/peers.sh (settings::broker_properties); docs/peers.md explains every key.
brokerClusterName=$name-cluster
brokerName=$name-broker-a
brokerId=0
brokerIP1=127.0.0.1
brokerIP2=127.0.0.1
listenPort=$port
haListenPort=$((port + 1))
namesrvAddr=127.0.0.1:$namesrv_port
storePathRootDir=$store
storePathCommitLog=$store/commitlog
mappedFileSizeCommitLog=67108864
maxHashSlotNum=50000
maxIndexNum=200000
brokerRole=ASYNC_MASTER
flushDiskType=ASYNC_FLUSH
autoCreateTopicEnable=true
autoCreateSubscriptionGroup=true
enablePropertyFilter=true
registerNameServerPeriod=10000
EOF
    # Timers (DELAY messages with a delivery time) and pop depend on it.
    if [ "$line" = v5 ]; then echo "timerWheelEnable=true"; fi
  } >"$home/broker.properties"
}

write_proxy_config() { # home grpc_port remoting_port namesrv_port cluster_name
  local home="$1" grpc_port="$2" remoting_port="$3" namesrv_port="$4" cluster="$5"
  cat >"$home/rmq-proxy.json" <<EOF
{
  "rocketMQClusterName": "$cluster",
  "namesrvAddr": "127.0.0.1:$namesrv_port",
  "grpcServerPort": $grpc_port,
  "remotingListenPort": $remoting_port,
  "topicRouteServiceCacheRefreshSeconds": 1,
  "topicConfigCacheRefreshSeconds": 1,
  "subscriptionGroupConfigCacheRefreshSeconds": 1,
  "userCacheRefreshSeconds": 1,
  "metricCollectorMode": "off"
}
EOF
}

# jvm_args <line> <namesrv|broker|proxy> <home> <classpath>: sets JVM_ARGS to
# the command line after `java`, exactly as settings::jvm_args builds it.
jvm_args() {
  local line="$1" role="$2" home="$3" cp="$4" heap main
  case "$role" in
    namesrv) heap=-Xmx128m; main=org.apache.rocketmq.namesrv.NamesrvStartup ;;
    broker) heap=-Xmx512m; main=org.apache.rocketmq.broker.BrokerStartup ;;
    proxy) heap=-Xmx256m; main=org.apache.rocketmq.proxy.ProxyStartup ;;
  esac
  JVM_ARGS=("$heap" -XX:+UseSerialGC -XX:-UsePerfData -Xss512k
    "-Drocketmq.home.dir=$home" "-Duser.home=$home" -Dfile.encoding=UTF-8)
  if [ "$line" = v4 ]; then
    # 4.9.x on JDK 17: without them every shutdown throws in MappedFile.clean.
    JVM_ARGS+=(--add-opens=java.base/java.nio=ALL-UNNAMED
      --add-exports=java.base/jdk.internal.ref=ALL-UNNAMED
      --add-opens=java.base/sun.nio.ch=ALL-UNNAMED)
  else
    JVM_ARGS+=(--add-opens=java.base/java.lang=ALL-UNNAMED
      "-Drmq.logback.configurationFile=rmq.$role.logback.xml")
  fi
  JVM_ARGS+=(-cp "$cp" "$main")
  case "$role" in
    namesrv) JVM_ARGS+=(-c "$home/namesrv.properties") ;;
    broker) JVM_ARGS+=(-c "$home/broker.properties") ;;
    proxy) JVM_ARGS+=(-pc "$home/rmq-proxy.json" -pm cluster) ;;
  esac
}

ready_marker() {
  case "$1" in
    namesrv) echo "The Name Server boot success" ;;
    broker) echo "boot success" ;;
    proxy) echo "rocketmq-proxy startup successfully" ;;
  esac
}

# ---------------------------------------------------------------- processes --
show_log_tail() { # log
  tail -n 40 "$1" | cut -c1-400 | sed 's/\x1b\[[0-9;]*[A-Za-z]//g; s/^/    /' >&2
}

# launch <cluster dir> <line> <peer> <java> <classpath> <ports to check free>
#        -- <ports that must accept TCP>
launch() {
  local dir="$1" line="$2" peer="$3" java="$4" cp="$5"
  shift 5
  local -a bind=() serve=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do bind+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  serve=("$@")
  local home="$dir/$peer" log="$dir/logs/$peer.log" pidfile="$dir/run/$peer.pid"
  local label marker old p
  label="$(basename "$dir")/$peer"
  marker="$(ready_marker "$peer")"
  old="$(read_pid "$pidfile")"
  if pid_ours "$dir" "$old"; then
    say "$label already runs (pid $old)"
    return 0
  fi
  for p in "${bind[@]}"; do
    if port_open "$p"; then
      die "port 127.0.0.1:$p (for $label) is already in use; stop what holds it or choose other ports (see scripts/peers.sh help)"
    fi
  done
  jvm_args "$line" "$peer" "$home" "$cp"
  printf '\n%s%s at unix time %s: %s %s =====\n' \
    "$BANNER" "$label" "$(date +%s)" "$java" "${JVM_ARGS[*]}" >>"$log"
  local offset started
  offset="$(stat -c %s "$log")"
  started="$(date +%s%N)"
  local -a env_args=(PATH="${PATH:-/usr/bin:/bin}" HOME="$home" ROCKETMQ_HOME="$home")
  local var
  for var in JAVA_HOME TMPDIR LANG LC_ALL TZ; do
    if [ -n "${!var:-}" ]; then env_args+=("$var=${!var}"); fi
  done
  rm -f "$pidfile"
  (
    cd "$home"
    # setsid: the peer survives the terminal that started it.
    exec "${SETSID[@]}" sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
      env -i "${env_args[@]}" "$java" "${JVM_ARGS[@]}"
  ) >>"$log" 2>&1 </dev/null &
  local deadline=$(( $(date +%s) + START_TIMEOUT )) pid="" closed=""
  while :; do
    pid="$(read_pid "$pidfile")"
    if [ -n "$pid" ] && ! pid_alive "$pid"; then
      echo "peers.sh: $label exited during startup; last lines of $log:" >&2
      show_log_tail "$log"
      rm -f "$pidfile"
      echo "peers.sh: peers started before it keep running; stop them with: scripts/peers.sh stop" >&2
      exit 1
    fi
    closed="marker"
    if [ -n "$pid" ] && log_has_since "$log" "$offset" "$marker"; then
      closed=""
      for p in "${serve[@]}"; do
        if ! port_open "$p"; then closed="$p"; break; fi
      done
      [ -z "$closed" ] && break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      local detail="it never printed '$marker'"
      [ "$closed" != marker ] && detail="127.0.0.1:$closed does not accept TCP connections"
      echo "peers.sh: $label not ready after ${START_TIMEOUT}s: $detail; last lines of $log:" >&2
      show_log_tail "$log"
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
      rm -f "$pidfile"
      echo "peers.sh: peers started before it keep running; stop them with: scripts/peers.sh stop" >&2
      exit 1
    fi
    sleep 0.1
  done
  local ms=$(( ($(date +%s%N) - started) / 1000000 ))
  say "$label ready on 127.0.0.1:${serve[0]} in ${ms} ms (pid $pid)"
}

# stop_peers <cluster dir>/<peer>...: SIGTERM to all at once (the JVMs run
# the servers' shutdown hooks), one shared grace period, then SIGKILL.
stop_peers() {
  local entry dir pid
  local -a entries=() pids=() took=()
  for entry in "$@"; do
    dir="${entry%/*}"
    pid="$(read_pid "$dir/run/${entry##*/}.pid")"
    if pid_ours "$dir" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      entries+=("$entry")
      pids+=("$pid")
      took+=("")
    else
      rm -f "$dir/run/${entry##*/}.pid"
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  local started deadline i left
  started="$(date +%s%N)"
  deadline=$(( started + STOP_GRACE * 1000000000 ))
  while :; do
    left=0
    for i in "${!pids[@]}"; do
      [ -n "${took[$i]}" ] && continue
      if pid_alive "${pids[$i]}"; then
        left=1
      else
        took[$i]="$(( ($(date +%s%N) - started) / 1000000 ))"
      fi
    done
    [ "$left" = 0 ] && break
    [ "$(date +%s%N)" -ge "$deadline" ] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    entry="${entries[$i]}"
    dir="${entry%/*}"
    pid="${pids[$i]}"
    if [ -z "${took[$i]}" ]; then
      say "$(basename "$dir")/${entry##*/} ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      took[$i]="$(( ($(date +%s%N) - started) / 1000000 ))"
    fi
    rm -f "$dir/run/${entry##*/}.pid"
    say "stopped $(basename "$dir")/${entry##*/} (pid $pid) in ${took[$i]} ms"
  done
}

prepare_cluster_dir() { # dir line peers...
  local dir="$1" line="$2" peer
  shift 2
  mkdir -p "$dir/logs" "$dir/run"
  for peer in "$@"; do prepare_home "$dir/$peer" "$line"; done
}

# ----------------------------------------------------------------- commands --
cmd_start() {
  local java v4_cp v5_cp
  java="$(find_java)"
  v4_cp="$(classpath v4)"
  v5_cp="$(classpath v5)"
  mkdir -p "$STATE"
  STATE="$(cd "$STATE" && pwd -P)"
  check_path "$STATE"
  local started
  started="$(date +%s%N)"

  local v4="$STATE/v4" v5="$STATE/v5"
  prepare_cluster_dir "$v4" v4 namesrv broker
  prepare_cluster_dir "$v5" v5 namesrv broker proxy

  write_namesrv_config "$v4/namesrv" "$V4_NAMESRV_PORT"
  write_broker_config "$v4/broker" v4 v4 "$V4_BROKER_PORT" "$V4_NAMESRV_PORT"
  write_namesrv_config "$v5/namesrv" "$V5_NAMESRV_PORT"
  write_broker_config "$v5/broker" v5 v5 "$V5_BROKER_PORT" "$V5_NAMESRV_PORT"
  write_proxy_config "$v5/proxy" "$PROXY_GRPC_PORT" "$PROXY_REMOTING_PORT" "$V5_NAMESRV_PORT" v5-cluster

  launch "$v4" v4 namesrv "$java" "$v4_cp" "$V4_NAMESRV_PORT" -- "$V4_NAMESRV_PORT"
  launch "$v4" v4 broker "$java" "$v4_cp" \
    $((V4_BROKER_PORT - 2)) "$V4_BROKER_PORT" $((V4_BROKER_PORT + 1)) -- "$V4_BROKER_PORT"
  launch "$v5" v5 namesrv "$java" "$v5_cp" "$V5_NAMESRV_PORT" -- "$V5_NAMESRV_PORT"
  launch "$v5" v5 broker "$java" "$v5_cp" \
    $((V5_BROKER_PORT - 2)) "$V5_BROKER_PORT" $((V5_BROKER_PORT + 1)) -- "$V5_BROKER_PORT"
  launch "$v5" v5 proxy "$java" "$v5_cp" "$PROXY_GRPC_PORT" "$PROXY_REMOTING_PORT" \
    -- "$PROXY_GRPC_PORT" "$PROXY_REMOTING_PORT"

  cat <<EOF

RocketMQ test peers are running (state and logs under $STATE), all up in $(( ($(date +%s%N) - started) / 1000000 )) ms:
  4.x  $(line_version v4)  name server  127.0.0.1:$V4_NAMESRV_PORT   broker 127.0.0.1:$V4_BROKER_PORT  (cluster v4-cluster, broker v4-broker-a)
  5.x  $(line_version v5)  name server  127.0.0.1:$V5_NAMESRV_PORT   broker 127.0.0.1:$V5_BROKER_PORT  (cluster v5-cluster, broker v5-broker-a)
  5.x  $(line_version v5)  gRPC proxy   127.0.0.1:$PROXY_GRPC_PORT   (apache.rocketmq.v2.MessagingService, plaintext; Remoting 127.0.0.1:$PROXY_REMOTING_PORT)
Stop with: scripts/peers.sh stop
EOF
}

cmd_stop() {
  [ -d "$STATE" ] || return 0
  STATE="$(cd "$STATE" && pwd -P)"
  # Proxy first, then the brokers (they unregister from their name servers).
  stop_peers "$STATE/v5/proxy"
  stop_peers "$STATE/v5/broker" "$STATE/v4/broker"
  stop_peers "$STATE/v5/namesrv" "$STATE/v4/namesrv"
}

cmd_status() {
  local rc=0
  [ -d "$STATE" ] && STATE="$(cd "$STATE" && pwd -P)"
  show() { # cluster peer ports...
    local cluster="$1" peer="$2" pid state="stopped" p closed=""
    shift 2
    pid="$(read_pid "$STATE/$cluster/run/$peer.pid")"
    if pid_ours "$STATE/$cluster" "$pid"; then
      for p in "$@"; do port_open "$p" || closed="$closed $p"; done
      if [ -n "$closed" ]; then
        state="running, NOT ready (closed:$closed)"; rc=1
      elif ! log_has_since_banner "$STATE/$cluster/logs/$peer.log" "$(ready_marker "$peer")"; then
        state="running, NOT ready (no '$(ready_marker "$peer")' yet)"; rc=1
      else
        state="ready"
      fi
      state="$state (pid $pid)"
    else
      rc=1
    fi
    printf '  %-3s %-8s 127.0.0.1:%-6s %s\n' "$cluster" "$peer" "$1" "$state"
  }
  echo "quick-start peers ($STATE):"
  show v4 namesrv "$V4_NAMESRV_PORT"
  show v4 broker "$V4_BROKER_PORT"
  show v5 namesrv "$V5_NAMESRV_PORT"
  show v5 broker "$V5_BROKER_PORT"
  show v5 proxy "$PROXY_GRPC_PORT" "$PROXY_REMOTING_PORT"
  local dir owner n=0
  for dir in "$TMP_ROOT"/rmq-devcluster-*; do
    [ -d "$dir" ] || continue
    owner="$(read_pid "$dir/owner.pid")"
    if pid_alive "$owner"; then n=$((n + 1)); fi
  done
  echo "test clusters of live test processes under $TMP_ROOT: $n"
  return $rc
}

cmd_logs() {
  local cluster="${1:-v5}" peer="${2:-broker}"
  local log="$STATE/$cluster/logs/$peer.log"
  [ -f "$log" ] || die "no log at $log"
  tail -n 200 -f "$log" | sed -u 's/\x1b\[[0-9;]*[A-Za-z]//g'
}

cmd_reset() {
  cmd_stop
  if [ -d "$STATE" ]; then
    rm -rf "$STATE"
    say "removed $STATE"
  fi
}

# Kills every RocketMQ server JVM (java ... org.apache.rocketmq.*) whose
# working directory is inside a throwaway test cluster whose owner process is
# gone, or inside the quick start state dir; removes throwaway dirs of dead
# owners.
cmd_cleanup() {
  local state_dir=""
  [ -d "$STATE" ] && state_dir="$(cd "$STATE" && pwd -P)"
  local proc pid exe cwd dir owner killed=0
  for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    exe="$(readlink "$proc/exe" 2>/dev/null)" || continue
    case "$(basename "$exe")" in java) ;; *) continue ;; esac
    tr '\0' '\n' <"$proc/cmdline" 2>/dev/null | grep -q '^org\.apache\.rocketmq\.' || continue
    cwd="$(readlink "$proc/cwd" 2>/dev/null)" || continue
    case "$cwd" in
      "$TMP_ROOT"/rmq-devcluster-*)
        dir="${cwd#"$TMP_ROOT"/}"
        dir="$TMP_ROOT/${dir%%/*}"
        owner="$(read_pid "$dir/owner.pid")"
        if pid_alive "$owner"; then continue; fi
        ;;
      *)
        if [ -z "$state_dir" ]; then continue; fi
        case "$cwd" in "$state_dir"/*) ;; *) continue ;; esac
        ;;
    esac
    kill -KILL "$pid" 2>/dev/null && killed=$((killed + 1))
    say "killed stray $(basename "$exe") pid $pid (cwd $cwd)"
  done
  [ -n "$state_dir" ] && rm -f "$state_dir"/v4/run/*.pid "$state_dir"/v5/run/*.pid
  local removed=0
  for dir in "$TMP_ROOT"/rmq-devcluster-*; do
    [ -d "$dir" ] || continue
    owner="$(read_pid "$dir/owner.pid")"
    pid_alive "$owner" && continue
    # No owner yet: maybe a test creating it right now; only old ones go.
    if [ -z "$owner" ] && [ -z "$(find "$dir" -maxdepth 0 -mmin +10 2>/dev/null)" ]; then
      continue
    fi
    if [ -f "$dir/.temporary" ] || [ -z "$owner" ]; then
      rm -rf "$dir" && removed=$((removed + 1))
    fi
  done
  say "cleanup: killed $killed stray peer(s), removed $removed throwaway cluster dir(s)"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  reset) cmd_reset ;;
  cleanup) cmd_cleanup ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    [ -n "${1:-}" ] && exit 2
    exit 0
    ;;
esac
