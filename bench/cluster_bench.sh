#!/usr/bin/env bash
# Redis Cluster behind one address, measured in one run: redis-benchmark GET/SET through
#   direct   redis-benchmark --cluster (cluster-aware: it reads the slot map and talks to
#            each primary itself)
#   proxy    plain redis-benchmark -> kompress-proxy --cluster-nodes -> the same cluster
# Both use one client thread by default (THREADS): redis-benchmark --cluster otherwise runs
# one thread per primary, and in its multi-thread mode a thread whose clients all finished
# early only stops on its 250 ms timer, so the run's time (and its ops/s) is off by up to
# 250 ms: on short pipelined runs that halves the figure. One thread also gives both modes
# the same client.
# The cluster is real and local: 6 redis-server processes (3 primaries, 3 replicas) made with
# `redis-cli --cluster create --cluster-replicas 1`. Both targets run the same tests with the
# same clients, requests, pipeline depth and random keyspace (-r), interleaved: in every round
# each (P, test) pair is run against both targets back to back, the order alternating between
# rounds. It prints every run, then a table of the medians over the rounds: ops/s of both, the
# ratio proxy/direct, the CPU time (user + sys from /proc/PID/stat) the proxy process spent per
# request during its runs, and the CPU time the six redis-servers spent per request in each
# mode. Every process it starts is stopped by PID on exit (also on Ctrl-C or failure).
#
# Environment (the BENCH_* names of the other bench scripts are accepted as fallbacks):
#   ROUNDS      rounds of the whole matrix; medians are over these (default 3)
#   REQUESTS    requests per redis-benchmark run, -n (default 200000; BENCH_N)
#   CLIENTS     redis-benchmark -c, in both modes (default 50; BENCH_CLIENTS)
#   PIPELINES   pipeline depths, -P (default "1 16"; BENCH_PIPELINES)
#   KEYSPACE    redis-benchmark -r (default 100000)
#   WORKERS     proxy --workers (default 1; BENCH_WORKERS)
#   THREADS     redis-benchmark client threads in both modes (default 1: --threads 1 for
#               direct, no --threads for the proxy; N > 1: --threads N for both, with the
#               250 ms stop granularity above)
#   PROXY_ARGS  extra proxy flags, e.g. "--read-policy primary" (default none)
#   KP_PROXY_BIN  proxy binary; default build-release/kompress-proxy, built (Release) on
#                 first use; it must know --cluster-nodes
#
# Note: with its default read policy the proxy sends GETs to the shards' replicas, while
# redis-benchmark --cluster sends everything to the primaries; the GET calls each role
# answered are printed at the end (PROXY_ARGS="--read-policy primary" for primaries only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${ROUNDS:-${BENCH_ROUNDS:-3}}"
REQUESTS="${REQUESTS:-${BENCH_N:-200000}}"
CLIENTS="${CLIENTS:-${BENCH_CLIENTS:-50}}"
PIPELINES="${PIPELINES:-${BENCH_PIPELINES:-1 16}}"
KEYSPACE="${KEYSPACE:-100000}"
WORKERS="${WORKERS:-${BENCH_WORKERS:-1}}"
PROXY_ARGS="${PROXY_ARGS:-}"
THREADS="${THREADS:-1}"
HOST=127.0.0.1
BENCH_NAME=cluster_bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NODES=6

for v in ROUNDS REQUESTS CLIENTS KEYSPACE WORKERS THREADS; do
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || { echo "cluster_bench: $v must be a positive integer" >&2; exit 1; }
done
for tool in redis-server redis-benchmark redis-cli python3 timeout; do
  command -v "$tool" >/dev/null || { echo "cluster_bench: $tool not found" >&2; exit 1; }
done
if ! redis-benchmark --help 2>&1 | grep -q -- '--cluster'; then
  echo "cluster_bench: this redis-benchmark has no --cluster mode (Redis 7 needed)" >&2
  exit 1
fi

PROXY_BIN="${KP_PROXY_BIN:-$ROOT/build-release/kompress-proxy}"
if [[ ! -x "$PROXY_BIN" ]]; then
  echo "== building the proxy (Release) into build-release/" >&2
  cmake -S "$ROOT" -B "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >&2
  cmake --build "$ROOT/build-release" -j"$(nproc)" --target kompress-proxy >&2
  PROXY_BIN="$ROOT/build-release/kompress-proxy"
fi
if ! "$PROXY_BIN" --help 2>&1 | grep -q -- '--cluster-nodes'; then
  echo "cluster_bench: $PROXY_BIN has no --cluster-nodes (an old build?); rebuild it" \
    "(cmake --build build-release) or set KP_PROXY_BIN" >&2
  exit 1
fi

W="$(mktemp -d "${TMPDIR:-/tmp}/kp-cluster-bench.XXXXXX")"
BENCH_DIR="$W"
PIDS=()
BENCH_PID=""
cleanup() {
  local pid
  if [[ -n "$BENCH_PID" ]]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}" $BENCH_PID; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# COUNT loopback ports below the ephemeral range whose cluster bus port (port + 10000) is
# free too, all distinct; the bus port stays below 32768.
free_cluster_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
count, taken, out = int(sys.argv[1]), set(), []
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
for _ in range(2000):
    if len(out) == count:
        break
    port = random.randint(10000, 22000)
    if {port, port + 10000} & taken or not (free(port) and free(port + 10000)):
        continue
    taken |= {port, port + 10000}
    out.append(port)
if len(out) != count:
    sys.exit("no free ports")
print(" ".join(map(str, out)))
PY
}

# -- the cluster --------------------------------------------------------------------------
read -r -a PORTS <<<"$(free_cluster_ports "$NODES")" || die "no free ports"
[[ "${#PORTS[@]}" == "$NODES" ]] || die "no free ports"
NODE_PIDS=()
for port in "${PORTS[@]}"; do
  mkdir -p "$W/node-$port"
  redis-server --port "$port" --bind "$HOST" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 5000 --save '' --appendonly no \
    --dir "$W/node-$port" --daemonize no --logfile "$W/node-$port.log" &
  PIDS+=($!)
  NODE_PIDS+=($!)
done
for port in "${PORTS[@]}"; do wait_ping "$port" "node-$port"; done

create_args=()
for port in "${PORTS[@]}"; do create_args+=("$HOST:$port"); done
if ! timeout 60 redis-cli --cluster create "${create_args[@]}" --cluster-replicas 1 \
    --cluster-yes >"$W/create.log" 2>&1; then
  tail -n 30 "$W/create.log" >&2
  die "redis-cli --cluster create failed"
fi

# Every node must see the whole cluster as ok, every replica's link to its primary up.
for i in $(seq 1 300); do
  ok=1
  for port in "${PORTS[@]}"; do
    state="$(redis-cli -h "$HOST" -p "$port" CLUSTER INFO 2>/dev/null | tr -d '\r' |
      awk -F: '$1 == "cluster_state" { print $2 }')"
    [[ "$state" == ok ]] || { ok=0; break; }
  done
  if [[ "$ok" == 1 ]]; then
    for port in "${PORTS[@]}"; do
      if [[ "$(info_field "$port" replication role)" == slave &&
            "$(info_field "$port" replication master_link_status)" != up ]]; then
        ok=0
        break
      fi
    done
  fi
  [[ "$ok" == 1 ]] && break
  sleep 0.1
done
[[ "$ok" == 1 ]] || { redis-cli -h "$HOST" -p "${PORTS[0]}" CLUSTER NODES >&2; die "cluster not ok after 30 s"; }
PRIMARY_PORTS=()
REPLICA_PORTS=()
for port in "${PORTS[@]}"; do
  if [[ "$(info_field "$port" replication role)" == master ]]; then
    PRIMARY_PORTS+=("$port")
  else
    REPLICA_PORTS+=("$port")
  fi
done
[[ "${#PRIMARY_PORTS[@]}" == $((NODES / 2)) ]] || die "expected $((NODES / 2)) primaries"

# -- the proxy ----------------------------------------------------------------------------
PPORT="$(free_port "${PORTS[@]}")"
# shellcheck disable=SC2086  # PROXY_ARGS is a list of flags
"$PROXY_BIN" --listen "$HOST:$PPORT" --cluster-nodes "$HOST:${PORTS[0]},$HOST:${PORTS[1]}" \
  --workers "$WORKERS" --log-level warn $PROXY_ARGS 2>"$W/proxy.log" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_ping "$PPORT" proxy

# Both ways must really work (and agree) before anything is measured: keys over many slots.
for i in $(seq 1 32); do
  redis-cli -h "$HOST" -p "$PPORT" SET "bench:check:$i" "v$i" >/dev/null
done
for i in $(seq 1 32); do
  got="$(redis-cli -h "$HOST" -p "$PPORT" GET "bench:check:$i")"
  [[ "$got" == "v$i" ]] || die "proxy returned '$got' for GET bench:check:$i; log: $(tail -n 5 "$W/proxy.log")"
  got="$(redis-cli -c -h "$HOST" -p "${PORTS[0]}" GET "bench:check:$i")"
  [[ "$got" == "v$i" ]] || die "cluster returned '$got' for GET bench:check:$i"
done

# -- runs ---------------------------------------------------------------------------------
TICK="$(getconf CLK_TCK)"

# run ROUND TARGET P TEST: one redis-benchmark run; appends to results.tsv
#   round target P test ops/s proxy-ticks redis-ticks GETs-on-primaries GETs-on-replicas
run() {
  local round=$1 target=$2 p=$3 test=$4 out="$W/bench-$1-$2-$3-$4" ops p0 p1 r0 r1 rc=0
  local gp0 gp1 gr0 gr1
  local args=(-h "$HOST" -c "$CLIENTS" -n "$REQUESTS" -P "$p" -r "$KEYSPACE" -t "$test" -q --csv)
  if [[ "$target" == direct ]]; then
    args+=(--cluster -p "${PORTS[0]}" --threads "$THREADS")
  else
    args+=(-p "$PPORT")
    [[ "$THREADS" == 1 ]] || args+=(--threads "$THREADS")
  fi
  gp0="$(get_calls "${PRIMARY_PORTS[@]}")"
  gr0="$(get_calls "${REPLICA_PORTS[@]}")"
  p0="$(proc_ticks "$PROXY_PID")"
  r0="$(proc_ticks "${NODE_PIDS[@]}")"
  redis-benchmark "${args[@]}" >"$out.csv" 2>"$out.err" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  p1="$(proc_ticks "$PROXY_PID")"
  r1="$(proc_ticks "${NODE_PIDS[@]}")"
  gp1="$(get_calls "${PRIMARY_PORTS[@]}")"
  gr1="$(get_calls "${REPLICA_PORTS[@]}")"
  if [[ "$rc" != 0 ]]; then
    cat "$out.csv" "$out.err" >&2
    die "redis-benchmark against $target (-P $p -t $test) failed (status $rc)"
  fi
  if grep -qiE 'error|moved|ask ' "$out.csv" "$out.err"; then
    grep -hiE 'error|moved|ask ' "$out.csv" "$out.err" | sort | uniq -c | head >&2
    die "errors while benchmarking $target (-P $p -t $test)"
  fi
  ops="$(awk -F'"' -v t="$test" 'toupper($2) == toupper(t) { print $4 }' "$out.csv")"
  [[ -n "$ops" ]] || { cat "$out.csv" "$out.err" >&2; die "no $test result for $target"; }
  printf 'round %s  %-6s -P %-3s %-3s %12s ops/s  proxy CPU %s ticks  redis CPU %s ticks\n' \
    "$round" "$target" "$p" "$test" "$ops" "$((p1 - p0))" "$((r1 - r0))"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$p" "$test" "$ops" \
    "$((p1 - p0))" "$((r1 - r0))" "$((gp1 - gp0))" "$((gr1 - gr0))" >>"$W/results.tsv"
}

echo "kompress-proxy cluster bench: $NODES redis-server $(redis-server --version | awk '{ print $3 }')" \
  "(${#PRIMARY_PORTS[@]} primaries, ${#REPLICA_PORTS[@]} replicas), $(nproc) cores; redis-benchmark" \
  "-c $CLIENTS -n $REQUESTS -r $KEYSPACE, $THREADS client thread(s) (pipelines: $PIPELINES)," \
  "$ROUNDS rounds; proxy $(basename "$(dirname "$PROXY_BIN")")/kompress-proxy --workers $WORKERS" \
  "$PROXY_ARGS"
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then order="direct proxy"; else order="proxy direct"; fi
  for p in $PIPELINES; do
    for test in set get; do  # SET first: the GETs then mostly find their keys
      for target in $order; do run "$round" "$target" "$p" "$test"; done
    done
  done
done

# -- table --------------------------------------------------------------------------------
echo
python3 - "$W/results.tsv" "$TICK" "$REQUESTS" "$PIPELINES" <<'PY'
import statistics, sys
path, tick, n, pipelines = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split()
runs = {}
for line in open(path):
    rnd, target, p, test, ops, pt, rt, gp, gr = line.split("\t")
    runs.setdefault((target, p, test.upper()), []).append(
        (float(ops), int(pt), int(rt), int(gp), int(gr)))
def med(target, p, test, i):
    return statistics.median(r[i] for r in runs[(target, p, test)])
def us(ticks):  # CPU microseconds per request
    return ticks / tick / n * 1e6
rounds = len(runs[next(iter(runs))])
print(f"medians over {rounds} rounds (ops/s; CPU = user+sys per request, us)")
head = ("test", "P", "direct", "proxy", "proxy/direct", "proxy CPU", "redis CPU direct", "redis CPU proxy")
fmt = "{:<4} {:>3} {:>12} {:>12} {:>13} {:>10} {:>17} {:>16}"
print(fmt.format(*head))
for p in pipelines:
    for test in ("GET", "SET"):
        d, x = med("direct", p, test, 0), med("proxy", p, test, 0)
        print(fmt.format(test, p, f"{d:.2f}", f"{x:.2f}", f"{x / d:.2f}",
                         f"{us(med('proxy', p, test, 1)):.2f}",
                         f"{us(med('direct', p, test, 2)):.2f}",
                         f"{us(med('proxy', p, test, 2)):.2f}"))
print()
for target in ("direct", "proxy"):
    gp = sum(r[3] for p in pipelines for r in runs[(target, p, "GET")])
    gr = sum(r[4] for p in pipelines for r in runs[(target, p, "GET")])
    print(f"GET calls the nodes answered during the {target} runs: primaries {gp}, replicas {gr}")
PY

echo "peak RSS (VmHWM) kompress-proxy: $(awk '/^VmHWM:/ { print $2, $3 }' "/proc/$PROXY_PID/status")"
