#!/usr/bin/env bash
# Throughput of kompress-proxy next to direct Redis and nutcracker (twemproxy), in one run.
#
# All three targets front the SAME single redis-server primary (the proxy runs with no
# replicas, so it sends reads to the primary too; nutcracker has the primary as its only
# server), so the numbers compare the cost of the hop, not a different topology.
# For each target it runs `redis-benchmark -t get,set -c 50 -n N -q` with -P 1 and -P 16,
# prints ops/s, the ratios proxy/direct and proxy/nutcracker, and the peak RSS (VmHWM) of
# the proxy and of nutcracker. Every process it starts is stopped by PID on exit.
#
# Environment:
#   BENCH_N           requests per redis-benchmark run (default 100000)
#   BENCH_CLIENTS     redis-benchmark -c (default 50)
#   BENCH_PIPELINES   pipeline depths to run (default "1 16")
#   BENCH_WORKERS     proxy --workers (default 2)
#   BENCH_TARGETS     subset of "direct proxy nutcracker" (default all three)
#   BENCH_REPLICA     1: also start a replica of the primary and give it to the proxy, so
#                     the proxy's GETs go to the replica (read-only clients); the GET calls
#                     each server answered are printed at the end (default 0)
#   KP_PROXY_BIN      proxy binary; default build-release/kompress-proxy, built (Release)
#                     on first use
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${BENCH_N:-100000}"
CLIENTS="${BENCH_CLIENTS:-50}"
PIPELINES="${BENCH_PIPELINES:-1 16}"
WORKERS="${BENCH_WORKERS:-2}"
TARGETS="${BENCH_TARGETS:-direct proxy nutcracker}"
REPLICA="${BENCH_REPLICA:-0}"
HOST=127.0.0.1
BENCH_NAME=run_bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want() { [[ " $TARGETS " == *" $1 "* ]]; }

for tool in redis-server redis-benchmark redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "run_bench: $tool not found" >&2; exit 1; }
done
NUTCRACKER="$(command -v nutcracker || true)"
if want nutcracker && [[ -z "$NUTCRACKER" ]]; then
  echo "run_bench: nutcracker not found (apt-get install nutcracker)" >&2
  exit 1
fi

PROXY_BIN="${KP_PROXY_BIN:-$ROOT/build-release/kompress-proxy}"
if want proxy && [[ ! -x "$PROXY_BIN" ]]; then
  echo "== building the proxy (Release) into build-release/" >&2
  cmake -S "$ROOT" -B "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >&2
  cmake --build "$ROOT/build-release" -j"$(nproc)" --target kompress-proxy >&2
  PROXY_BIN="$ROOT/build-release/kompress-proxy"
fi

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/kp-bench.XXXXXX")"
BENCH_DIR="$WORKDIR"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
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
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- processes ----------------------------------------------------------------------------
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind "$HOST" --save '' --appendonly no \
  --dir "$WORKDIR" --daemonize no --logfile "$WORKDIR/redis.log" &
PIDS+=($!)
wait_ping "$REDIS_PORT" redis

declare -A PORT=([direct]="$REDIS_PORT")

REPLICA_ARGS=()
if [[ "$REPLICA" == 1 ]]; then
  REPLICA_PORT="$(free_port)"
  mkdir -p "$WORKDIR/replica"
  redis-server --port "$REPLICA_PORT" --bind "$HOST" --save '' --appendonly no \
    --dir "$WORKDIR/replica" --daemonize no --logfile "$WORKDIR/replica.log" \
    --replicaof "$HOST" "$REDIS_PORT" &
  PIDS+=($!)
  wait_ping "$REPLICA_PORT" replica
  for _ in $(seq 1 100); do
    redis-cli -h "$HOST" -p "$REPLICA_PORT" INFO replication | grep -q 'master_link_status:up' \
      && break
    sleep 0.1
  done
  REPLICA_ARGS=(--replicas "$HOST:$REPLICA_PORT")
fi

if want proxy; then
  PORT[proxy]="$(free_port)"
  "$PROXY_BIN" --listen "$HOST:${PORT[proxy]}" --primary "$HOST:$REDIS_PORT" \
    "${REPLICA_ARGS[@]}" --workers "$WORKERS" --log-level warn 2>"$WORKDIR/proxy.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_ping "${PORT[proxy]}" proxy
fi

if want nutcracker; then
  PORT[nutcracker]="$(free_port)"
  cat >"$WORKDIR/nutcracker.yml" <<EOF
bench:
  listen: $HOST:${PORT[nutcracker]}
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  timeout: 5000
  server_connections: 1
  servers:
   - $HOST:$REDIS_PORT:1
EOF
  "$NUTCRACKER" -c "$WORKDIR/nutcracker.yml" -a "$HOST" -s "$(free_port)" \
    -o "$WORKDIR/nutcracker.log" &
  NC_PID=$!
  PIDS+=("$NC_PID")
  wait_ping "${PORT[nutcracker]}" nutcracker
fi

# Every target must really work (same answers) before it is measured.
for t in $TARGETS; do
  redis-cli -h "$HOST" -p "${PORT[$t]}" SET "bench:check:$t" ok >/dev/null
  got="$(redis-cli -h "$HOST" -p "${PORT[$t]}" GET "bench:check:$t")"
  [[ "$got" == ok ]] || { echo "run_bench: $t returned '$got' for GET" >&2; exit 1; }
done

# -- runs ---------------------------------------------------------------------------------
declare -A RPS
echo "redis-benchmark -t get,set -c $CLIENTS -n $N (pipelines: $PIPELINES), $(nproc) cores," \
  "proxy --workers $WORKERS"
for p in $PIPELINES; do
  for t in $TARGETS; do
    out="$WORKDIR/bench-$t-$p.csv"
    if ! redis-benchmark -h "$HOST" -p "${PORT[$t]}" -t get,set -c "$CLIENTS" -n "$N" \
        -P "$p" -q --csv >"$out" 2>"$out.err"; then
      echo "run_bench: redis-benchmark against $t (-P $p) failed:" >&2
      cat "$out.err" >&2
      exit 1
    fi
    if grep -qi 'error' "$out" "$out.err"; then
      echo "run_bench: errors while benchmarking $t (-P $p):" >&2
      grep -hi 'error' "$out" "$out.err" | sort | uniq -c | head >&2
      exit 1
    fi
    for test in SET GET; do
      RPS[$t,$p,$test]="$(awk -F'"' -v t="$test" '$2 == t { print $4 }' "$out")"
      [[ -n "${RPS[$t,$p,$test]}" ]] || { echo "run_bench: no $test result for $t" >&2; exit 1; }
    done
    printf '  %-10s -P %-3s SET %12s  GET %12s ops/s\n' "$t" "$p" \
      "${RPS[$t,$p,SET]}" "${RPS[$t,$p,GET]}"
  done
done

# -- table --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
echo
printf '%-4s %-4s %12s %12s %12s %14s %14s\n' test P direct proxy nutcracker \
  proxy/direct proxy/nutcr
for p in $PIPELINES; do
  for test in SET GET; do
    d="${RPS[direct,$p,$test]:-}"
    x="${RPS[proxy,$p,$test]:-}"
    n="${RPS[nutcracker,$p,$test]:-}"
    printf '%-4s %-4s %12s %12s %12s %14s %14s\n' "$test" "$p" "${d:--}" "${x:--}" "${n:--}" \
      "$(ratio "$x" "$d")" "$(ratio "$x" "$n")"
  done
done

echo
peak_rss() { awk '/^VmHWM:/ { print $2, $3 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
if want proxy; then
  echo "peak RSS (VmHWM) kompress-proxy: $(peak_rss "$PROXY_PID")"
fi
if want nutcracker; then
  echo "peak RSS (VmHWM) nutcracker:     $(peak_rss "$NC_PID")"
fi
if [[ "$REPLICA" == 1 ]]; then
  echo "GET calls answered: primary $(get_calls "$REDIS_PORT"), replica $(get_calls "$REPLICA_PORT")" \
    "(direct and nutcracker GETs go to the primary)"
fi
