#!/usr/bin/env bash
# Runs kompress-proxy in front of a local primary and two replicas, from a fresh Debian
# bookworm machine (as root): installs the Debian packages it needs (skipped when already
# installed), builds a Release binary into build/, starts redis-server on 127.0.0.1:7379
# (primary), :7380 and :7381 (replicas) in a temporary directory, and runs the proxy in the
# foreground on 127.0.0.1:6380. Ctrl-C stops the proxy and the redis servers (by PID).
#
# Environment: KP_LISTEN_PORT (6380), KP_PRIMARY_PORT (7379), KP_REPLICA_PORTS ("7380 7381"),
# KP_LOG_LEVEL (info), KP_BUILD_DIR (build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST=127.0.0.1
LISTEN_PORT="${KP_LISTEN_PORT:-6380}"
PRIMARY_PORT="${KP_PRIMARY_PORT:-7379}"
read -r -a REPLICA_PORTS <<<"${KP_REPLICA_PORTS:-7380 7381}"
LOG_LEVEL="${KP_LOG_LEVEL:-info}"
BUILD_DIR="${KP_BUILD_DIR:-$ROOT/build}"

PACKAGES=(build-essential cmake pkg-config libuv1-dev libhiredis-dev libyaml-cpp-dev
          libspdlog-dev libfmt-dev doctest-dev redis-server redis-tools)

# -- packages -------------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "run-local: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's redis-server package starts a system instance on 6379; we do not use it.

# -- build ----------------------------------------------------------------------------------
echo "== building (Release) into ${BUILD_DIR#"$ROOT"/}"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target kompress-proxy
PROXY_BIN="$BUILD_DIR/kompress-proxy"

# -- redis servers --------------------------------------------------------------------------
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/kompress-local.XXXXXX")"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORKDIR"
  echo "== stopped the redis servers"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() {
  redis-cli -h "$HOST" -p "$1" PING >/dev/null 2>&1 ||
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

start_redis() {  # name port [replicaof-port]
  local name=$1 port=$2 dir="$WORKDIR/$1"
  if port_busy "$port"; then
    echo "run-local: port $port is already in use" >&2
    exit 1
  fi
  mkdir -p "$dir"
  local args=(--port "$port" --bind "$HOST" --dir "$dir" --save '' --appendonly no
              --daemonize no --logfile "$dir/redis.log" --repl-diskless-sync-delay 0)
  [[ $# -ge 3 ]] && args+=(--replicaof "$HOST" "$3")
  # Own session: Ctrl-C reaches only the proxy, which drains first; the EXIT trap then
  # stops the servers. (A background child is no group leader, so setsid execs in place
  # and $! stays the server's PID.)
  setsid redis-server "${args[@]}" &
  PIDS+=($!)
  local i
  for i in $(seq 1 100); do
    [[ "$(redis-cli -h "$HOST" -p "$port" PING 2>/dev/null)" == PONG ]] && return 0
    sleep 0.1
  done
  echo "run-local: $name on port $port did not start; log:" >&2
  tail -n 20 "$dir/redis.log" >&2
  exit 1
}

wait_link_up() {  # port
  local i
  for i in $(seq 1 100); do
    redis-cli -h "$HOST" -p "$1" INFO replication 2>/dev/null |
      grep -q '^master_link_status:up' && return 0
    sleep 0.1
  done
  echo "run-local: replica on port $1 did not sync with the primary" >&2
  exit 1
}

if port_busy "$LISTEN_PORT"; then
  echo "run-local: port $LISTEN_PORT (proxy) is already in use" >&2
  exit 1
fi
start_redis primary "$PRIMARY_PORT"
replicas=()
for i in "${!REPLICA_PORTS[@]}"; do
  start_redis "replica$((i + 1))" "${REPLICA_PORTS[$i]}" "$PRIMARY_PORT"
  replicas+=("$HOST:${REPLICA_PORTS[$i]}")
done
for port in "${REPLICA_PORTS[@]}"; do
  wait_link_up "$port"
done

replica_list="$(IFS=,; echo "${replicas[*]}")"
cat <<EOF

== kompress-proxy on $HOST:$LISTEN_PORT
   primary  $HOST:$PRIMARY_PORT
   replicas $replica_list
   data and logs in $WORKDIR (removed on exit)

   Connect with:   redis-cli -p $LISTEN_PORT
   Try:            redis-cli -p $LISTEN_PORT SET greeting hello
                   redis-cli -p $LISTEN_PORT GET greeting
   Ctrl-C stops the proxy and the redis servers.

EOF

# Foreground, but not exec: the trap must still stop the redis servers afterwards.
"$PROXY_BIN" --listen "$HOST:$LISTEN_PORT" --primary "$HOST:$PRIMARY_PORT" \
  --replicas "$replica_list" --log-level "$LOG_LEVEL" &
PROXY_PID=$!
PIDS=("$PROXY_PID" "${PIDS[@]}")
set +e
wait "$PROXY_PID"
status=$?
set -e
# Ctrl-C reaches the proxy (same process group) and it drains; report how it ended.
if ((status != 0 && status != 130)); then
  echo "run-local: kompress-proxy exited with status $status" >&2
fi
exit "$status"
