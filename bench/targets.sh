#!/usr/bin/env bash
# The performance targets of kompress-proxy ("cheaper per request than every peer proxy, and
# close to direct Redis"), measured in one run, each printed with its value, its target, the
# ratio and PASS/MISS, then a compact table; the exit status is 1 when any target is missed.
# A benchmark, not a test: nothing in CI runs it.
#
# Topology: one primary and one replica redis-server on free loopback ports. The proxy gets
# both (--primary, --replicas; --workers 1 unless a section says otherwise), so its GETs are
# answered by the replica. The peers front the same primary: nutcracker (twemproxy, one server
# connection, as in run_bench.sh), HAProxy in `mode tcp` with `nbthread 1`, and Predixy when
# PREDIXY_BIN names a binary (WorkerThreads 1). A peer that is not installed is skipped (said
# so), and so is a target that then has no peer to compare with.
#
# Sections (TARGETS picks a subset, e.g. TARGETS="1 2" or TARGETS=4,7):
#   1  CPU per proxied request: user + sys of each proxy process (/proc/PID/stat, clock ticks)
#      over every round of `redis-benchmark -c 50 -n N -r 100000 -P 1|16 -t get|set`, divided
#      by the requests; target: proxy <= 0.8x the cheapest peer, for each P and test.
#      Also, as INFO, the proxy against bench/floor_forwarder.c (built with cc, in front of
#      the primary like the peers): one backend connection, requests batched, replies framed
#      and handed back, nothing else; the proxy's cost above it is what its features cost.
#   2  Throughput, the same runs: median ops/s over ROUNDS rounds; in every round each
#      (P, test) runs against direct Redis, the proxy and each peer back to back, the order
#      rotating between rounds. Targets: P=1 >= 1.0x direct, P=16 >= 0.8x direct, both
#      >= 1.1x the best peer. INFO rows: the CPU per request of every process of the direct
#      and the proxied runs (both redis-servers from /proc/PID/stat, redis-benchmark from the
#      shell's `times`, and the proxy): the two cores are shared by all of them, so their sum
#      explains a throughput ratio.
#   3  Latency. One client: `redis-benchmark -c 1 -P 1 -n LAT_N --csv` GET and SET (its
#      p50, 1 us resolution), median over rounds, interleaved; target: proxy p50 <= direct
#      p50 + 20 us. 50 clients: the p99 of redis-benchmark's CSV in the P=1 runs of 1-2
#      (redis-benchmark 7 prints avg/min/p50/p95/p99/max there); target: proxy <= 1.5x direct.
#      The one-client rounds also run against a second proxy with --busy-poll-us BUSY_POLL_US
#      (proxy-bp): its p50 is judged against the same goal on its own row, marked opt-in.
#      The peers and the floor forwarder run the one-client rounds too (INFO: what any proxy
#      adds to one client's round trip on this machine).
#   4  Large values: `redis-benchmark -c 4 -d 1048576 -n BIG1_N` and `-d 16777216
#      -n BIG16_N`, SET then GET (the replica synced in between), interleaved rounds; target:
#      proxy >= 0.9x direct. And a slow reader: a fresh proxy, a 16 MB value, a client with a
#      64 KB receive buffer that GETs it and reads 64 KB every 10 ms; the proxy's peak RSS
#      (VmHWM, reset just before through /proc/PID/clear_refs) minus its RSS before; target:
#      at most SLOW_BOUND_MB (default 32) MB.
#   5  IDLE_CLIENTS (10000) idle clients on a fresh proxy: each connects and sends one PING;
#      proxy VmRSS growth / clients; target: <= 2 KB per client. The script raises its open
#      files limit (ulimit -n) for this; without enough descriptors it is skipped.
#   6  Workers: CPU per request at P=16 GET (as in 1) of the proxy with --workers 1 and of a
#      second one with --workers 2, interleaved rounds; target: ratio 2/1 <= 1.15 (flat).
#      Beside it, as INFO, where the difference lies: the proxy's context switches per 1,000
#      requests, and, when `perf record` works here, one more run of each under
#      `perf record -e cpu-clock` whose samples are split into the proxy's own code (its
#      binary, libuv, libstdc++), libc and the kernel, per request.
#   7  Instructions per proxied GET: the proxy (--workers 1) under valgrind --tool=callgrind,
#      CG_N GETs of one key through `redis-benchmark -c 1` at P=1 and at P=16; from each run's
#      Ir a baseline run's is subtracted (start, one PING, idle as long as the GETs took,
#      stop), divided by CG_N. No target: printed as INFO, the before/after measure.
#
# Environment:
#   ROUNDS        rounds of every interleaved comparison; medians are over these (default 3)
#   N             requests per redis-benchmark run at P=1 in 1 and 2 (default 200000)
#   N16           the same at P=16, and in 6 (default 8 x N: a P=16 run of N requests cost the
#                 proxy only about 20 clock ticks of CPU, too coarse for a ratio)
#   TARGETS       sections to run (default "1 2 3 4 5 6 7")
#   LAT_N         requests per one-client latency run (default N/10, at least 10000)
#   BIG1_N, BIG16_N   requests per 1 MB / 16 MB run (default 400 / 32)
#   SLOW_BOUND_MB     bound of the slow reader's peak RSS growth (default 32)
#   IDLE_CLIENTS  idle clients in 5 (default 10000)
#   CG_N          GETs per callgrind run (default 20000)
#   BUSY_POLL_US  busy_poll_us of section 3's opt-in row (default 50)
#   PERF_HZ       sampling rate of section 6's perf runs (default 999)
#   PREDIXY_BIN   a predixy binary to compare with (not packaged; see README)
#   KP_PROXY_BIN  proxy binary; default build-release/kompress-proxy, built (Release) on
#                 first use
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/bench/targets_helper.py"
ROUNDS="${ROUNDS:-3}"
N="${N:-200000}"
N16="${N16:-$((8 * N))}"
SECTIONS="$(echo "${TARGETS:-1 2 3 4 5 6 7}" | tr ',' ' ')"
LAT_N="${LAT_N:-$((N / 10 > 10000 ? N / 10 : 10000))}"
BIG1_N="${BIG1_N:-400}"
BIG16_N="${BIG16_N:-32}"
SLOW_BOUND_MB="${SLOW_BOUND_MB:-32}"
IDLE_CLIENTS="${IDLE_CLIENTS:-10000}"
CG_N="${CG_N:-20000}"
PERF_HZ="${PERF_HZ:-999}"
CLIENTS=50
KEYSPACE=100000
HOST=127.0.0.1
BENCH_NAME=targets
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in ROUNDS N N16 LAT_N BIG1_N BIG16_N SLOW_BOUND_MB IDLE_CLIENTS CG_N; do
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || die "$v must be a positive integer"
done
for s in $SECTIONS; do
  [[ "$s" =~ ^[1-7]$ ]] || die "TARGETS: unknown section '$s' (1-7)"
done
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

for tool in redis-server redis-benchmark redis-cli python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

PROXY_BIN="${KP_PROXY_BIN:-$ROOT/build-release/kompress-proxy}"
if [[ ! -x "$PROXY_BIN" ]]; then
  echo "== building the proxy (Release) into build-release/" >&2
  cmake -S "$ROOT" -B "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >&2
  cmake --build "$ROOT/build-release" -j"$(nproc)" --target kompress-proxy >&2
  PROXY_BIN="$ROOT/build-release/kompress-proxy"
fi

# The peers that are here; a missing one is skipped.
PEERS=()
NOTES=()
if want 1 || want 2 || want 3; then
  if command -v nutcracker >/dev/null; then PEERS+=(nutcracker); else
    NOTES+=("nutcracker skipped: not installed (apt-get install nutcracker)"); fi
  if command -v haproxy >/dev/null; then PEERS+=(haproxy); else
    NOTES+=("haproxy skipped: not installed (apt-get install haproxy)"); fi
  if [[ -n "${PREDIXY_BIN:-}" ]]; then
    [[ -x "$PREDIXY_BIN" ]] || die "PREDIXY_BIN=$PREDIXY_BIN is not an executable"
    PEERS+=(predixy)
  else
    NOTES+=("predixy skipped: PREDIXY_BIN not set (not packaged; build it from source)")
  fi
fi
if want 7 && ! command -v valgrind >/dev/null; then
  NOTES+=("section 7 skipped: valgrind not installed (apt-get install valgrind)")
fi

# Section 5 needs a descriptor per idle client in this script's client and in the proxy.
if want 5 && (($(ulimit -n) < IDLE_CLIENTS + 512)); then
  ulimit -n $((IDLE_CLIENTS + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

W="$(mktemp -d "${TMPDIR:-/tmp}/kp-targets.XXXXXX")"
BENCH_DIR="$W"
RAW="$W/raw.tsv"
VERDICTS="$W/verdicts.tsv"
: >"$RAW"
: >"$VERDICTS"
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
    for _ in $(seq 1 100); do
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

# Every proxy of the run starts from one copy, so a rebuild during the run does not mix two
# versions into one table.
PROXY_NAME="$(basename "$(dirname "$PROXY_BIN")")/$(basename "$PROXY_BIN")"
cp "$PROXY_BIN" "$W/kompress-proxy"
PROXY_BIN="$W/kompress-proxy"

# stop PID: TERM, a bounded wait (valgrind writes its output on exit), then KILL; the PID
# leaves the cleanup list, so a reused PID is never signalled later.
stop() {
  local pid=$1 keep=() p
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# Bounded wait until the replica has applied everything the primary has written.
wait_sync() {
  local want got
  for _ in $(seq 1 600); do
    want="$(info_field "$PRIMARY_PORT" replication master_repl_offset)"
    got="$(info_field "$REPLICA_PORT" replication slave_repl_offset)"
    [[ "$(info_field "$REPLICA_PORT" replication master_link_status)" == up &&
       -n "$got" && "$got" -ge "$want" ]] && return 0
    sleep 0.1
  done
  die "the replica did not catch up with the primary in 60 s"
}

TICK="$(getconf CLK_TCK)"

# rb OUT ARGS...: one redis-benchmark --csv run into OUT.csv (killed with the script);
# dies on failure or on error replies.
rb() {
  local out=$1 rc=0
  shift
  redis-benchmark -h "$HOST" "$@" -q --csv >"$out.csv" 2>"$out.err" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  if [[ "$rc" != 0 ]]; then
    cat "$out.csv" "$out.err" >&2
    die "redis-benchmark $* failed (status $rc)"
  fi
  if grep -qi 'error' "$out.csv" "$out.err"; then
    grep -hi 'error' "$out.csv" "$out.err" | sort | uniq -c | head >&2
    die "errors from redis-benchmark $*"
  fi
}
# csv OUT TEST: "rps p50_ms p99_ms" from redis-benchmark's CSV row of TEST
csv() {
  python3 - "$1.csv" "$2" <<'PY'
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    if r["test"].upper() == sys.argv[2].upper():
        print(r["rps"], r.get("p50_latency_ms", "-"), r.get("p99_latency_ms", "-"))
        break
else:
    sys.exit(f"no {sys.argv[2]} row in {sys.argv[1]}")
PY
}
# parse OUT TEST: sets OPS, P50 and P99 (ms) from OUT.csv, or dies.
parse() {
  read -r OPS P50 P99 <<<"$(csv "$1" "$2")"
  [[ -n "$OPS" ]] || { cat "$1.csv" "$1.err" >&2; die "no $2 result in $1.csv"; }
}

# child_ms BEFORE AFTER: CPU ms (user + sys) of the children this shell reaped in between,
# from two files written by the `times` builtin (its second line: children).
child_ms() {
  awk 'function ms(t, a) { split(t, a, /[ms]/); return (a[1] * 60 + a[2]) * 1000 }
       FNR == 2 { v = ms($1) + ms($2); if (NR == FNR) before = v; else after = v }
       END { printf "%d\n", after - before }' "$1" "$2"
}

judge() { python3 "$HELPER" eval "$1" "$RAW" "$VERDICTS" "$TICK" "$N" "$ROUNDS"; }

# -- processes ----------------------------------------------------------------------------
PRIMARY_PORT="$(free_port)"
mkdir -p "$W/primary" "$W/replica"
# No output-buffer limit for the replica: the 16 MB SETs of section 4 would otherwise cut
# the replication link (and force a full resync) in the middle of a run.
redis-server --port "$PRIMARY_PORT" --bind "$HOST" --save '' --appendonly no \
  --client-output-buffer-limit 'replica 0 0 0' --dir "$W/primary" --daemonize no \
  --logfile "$W/primary.log" &
PRIMARY_PID=$!
PIDS+=("$PRIMARY_PID")
wait_ping "$PRIMARY_PORT" primary
REPLICA_PORT="$(free_port)"
redis-server --port "$REPLICA_PORT" --bind "$HOST" --save '' --appendonly no \
  --replicaof "$HOST" "$PRIMARY_PORT" --dir "$W/replica" --daemonize no \
  --logfile "$W/replica.log" &
REPLICA_PID=$!
PIDS+=("$REPLICA_PID")
wait_ping "$REPLICA_PORT" replica
wait_sync

declare -A PORT=([direct]="$PRIMARY_PORT")
declare -A PID=()

# start_proxy NAME WORKERS [FLAGS...]: a proxy in front of the primary and the replica.
start_proxy() {
  local name=$1 workers=$2
  shift 2
  PORT[$name]="$(free_port)"
  "$PROXY_BIN" --listen "$HOST:${PORT[$name]}" --primary "$HOST:$PRIMARY_PORT" \
    --replicas "$HOST:$REPLICA_PORT" --workers "$workers" --log-level warn "$@" \
    2>"$W/$name.log" &
  PID[$name]=$!
  PIDS+=("${PID[$name]}")
  wait_ping "${PORT[$name]}" "$name"
}

start_peer() {
  local name=$1
  PORT[$name]="$(free_port)"
  case "$name" in
    nutcracker)
      cat >"$W/nutcracker.yml" <<EOF
bench:
  listen: $HOST:${PORT[nutcracker]}
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  timeout: 5000
  server_connections: 1
  servers:
   - $HOST:$PRIMARY_PORT:1
EOF
      nutcracker -c "$W/nutcracker.yml" -a "$HOST" -s "$(free_port)" \
        -o "$W/nutcracker.log" &
      ;;
    haproxy)
      cat >"$W/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend redis_in
    bind $HOST:${PORT[haproxy]}
    default_backend redis_primary
backend redis_primary
    server primary $HOST:$PRIMARY_PORT
EOF
      haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
      ;;
    floor)
      "$W/floor-forwarder" "${PORT[floor]}" "$PRIMARY_PORT" 2>"$W/floor.log" &
      ;;
    predixy)
      cat >"$W/predixy.conf" <<EOF
Name kp-targets
Bind $HOST:${PORT[predixy]}
WorkerThreads 1
ClientTimeout 0
LogVerbSample 0
LogDebugSample 0
LogInfoSample 0
LogNoticeSample 1
LogWarnSample 1
LogErrorSample 1
Authority {
    Auth {
        Mode write
    }
}
StandaloneServerPool {
    Databases 1
    Hash crc16
    Distribution modula
    MasterReadPriority 100
    RefreshMethod fixed
    ServerTimeout 5
    Group shard001 {
        + $HOST:$PRIMARY_PORT
    }
}
EOF
      "$PREDIXY_BIN" "$W/predixy.conf" >"$W/predixy.log" 2>&1 &
      ;;
  esac
  PID[$name]=$!
  PIDS+=("${PID[$name]}")
  wait_ping "${PORT[$name]}" "$name"
}

if want 1 || want 2 || want 3 || want 4 || want 6; then
  start_proxy proxy 1
fi
# Section 3 also measures the opt-in busy polling (busy_poll_us), which trades CPU for
# latency; only its one-client rows use this proxy.
BUSY_POLL_US="${BUSY_POLL_US:-50}"
if want 3; then
  start_proxy proxy-bp 1 --busy-poll-us "$BUSY_POLL_US"
fi
for peer in "${PEERS[@]}"; do start_peer "$peer"; done
# The yardstick of sections 1-2: bench/floor_forwarder.c, the least a multiplexing proxy does
# (INFO rows only; it is not a peer).
FLOOR=""
if want 1 || want 2 || want 3; then
  if command -v cc >/dev/null && cc -O2 -o "$W/floor-forwarder" "$ROOT/bench/floor_forwarder.c"; then
    FLOOR=floor
    start_peer floor
  else
    NOTES+=("floor forwarder skipped: no C compiler (apt-get install gcc)")
  fi
fi

# Every target must really work (same answers) before it is measured.
for t in direct "${PEERS[@]}" $FLOOR $([[ -n "${PID[proxy]:-}" ]] && echo proxy) \
  $([[ -n "${PID[proxy-bp]:-}" ]] && echo proxy-bp); do
  redis-cli -h "$HOST" -p "${PORT[$t]}" SET "bench:check:$t" ok >/dev/null
  wait_sync
  got="$(redis-cli -h "$HOST" -p "${PORT[$t]}" GET "bench:check:$t")"
  [[ "$got" == ok ]] || die "$t returned '$got' for GET bench:check:$t"
done

# GETs should find their keys whatever sections run: fill the keyspace once.
rb "$W/fill" -p "$PRIMARY_PORT" -t set -c "$CLIENTS" -n $((3 * KEYSPACE)) -P 16 -r "$KEYSPACE"
wait_sync

rotate() {  # rotate K WORDS...: the words, starting at index K mod count
  local k=$1
  shift
  local a=("$@") i
  for ((i = 0; i < ${#a[@]}; i++)); do printf '%s ' "${a[(i + k) % ${#a[@]}]}"; done
}

echo "kompress-proxy performance targets: $(nproc) cores, redis-server" \
  "$(redis-server --version | awk '{ print $3 }' | sed 's/v=//'), primary + 1 replica;" \
  "proxy $PROXY_NAME --workers 1;" \
  "peers: ${PEERS[*]:-none}; ROUNDS=$ROUNDS N=$N N16=$N16; sections: $SECTIONS"
for note in "${NOTES[@]}"; do echo "  ($note)"; done

# -- 1, 2, 3: the interleaved matrix --------------------------------------------------------
if want 1 || want 2 || want 3; then
  if want 1 || want 2; then
    MTARGETS=(direct proxy "${PEERS[@]}" $FLOOR)
    MPIPES="1 16"
  else
    MTARGETS=(direct proxy)
    MPIPES="1"
  fi
  echo
  echo "== redis-benchmark -c $CLIENTS -n $N (P=16: $N16) -r $KEYSPACE, $ROUNDS interleaved rounds:" \
    "${MTARGETS[*]}"
  for round in $(seq 1 "$ROUNDS"); do
    read -r -a order <<<"$(rotate $((round - 1)) "${MTARGETS[@]}")"
    for p in $MPIPES; do
      for test in set get; do  # SET first: the GETs then find their keys
        for t in "${order[@]}"; do
          out="$W/m-$round-$t-$p-$test"
          t0=0
          [[ -n "${PID[$t]:-}" ]] && t0="$(proc_ticks "${PID[$t]}")"
          r0="$(proc_ticks "$PRIMARY_PID" "$REPLICA_PID")"
          n=$([[ "$p" == 16 ]] && echo "$N16" || echo "$N")
          times >"$W/times0"  # this shell's children: the redis-benchmark run below
          rb "$out" -p "${PORT[$t]}" -c "$CLIENTS" -n "$n" -P "$p" -r "$KEYSPACE" -t "$test"
          times >"$W/times1"
          dt=0
          [[ -n "${PID[$t]:-}" ]] && dt=$(($(proc_ticks "${PID[$t]}") - t0))
          dr=$(($(proc_ticks "$PRIMARY_PID" "$REPLICA_PID") - r0))
          db="$(child_ms "$W/times0" "$W/times1")"
          parse "$out" "$test" && ops=$OPS p50=$P50 p99=$P99
          printf 'm\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$p" \
            "${test^^}" "$ops" "$dt" "$p50" "$p99" "$n" "$dr" "$db" >>"$RAW"
          printf '  round %s -P %-2s %-3s %-10s %11s ops/s  p50 %6s ms  p99 %6s ms  CPU %4s ticks\n' \
            "$round" "$p" "${test^^}" "$t" "$ops" "$p50" "$p99" \
            "$([[ -n "${PID[$t]:-}" ]] && echo "$dt" || echo -)"
        done
      done
    done
  done
  if want 1; then echo; echo "== 1. CPU per proxied request"; judge 1; fi
  if want 2; then echo; echo "== 2. throughput"; judge 2; fi
fi

if want 3; then
  echo
  echo "== 3. latency: redis-benchmark -c 1 -P 1 -n $LAT_N -r $KEYSPACE --csv (its p50)," \
    "$ROUNDS interleaved rounds; p99 at 50 clients from the P=1 runs above"
  for round in $(seq 1 "$ROUNDS"); do
    read -r -a order <<<"$(rotate $((round - 1)) direct proxy proxy-bp "${PEERS[@]}" $FLOOR)"
    for test in set get; do
      for t in "${order[@]}"; do
        out="$W/l-$round-$t-$test"
        rb "$out" -p "${PORT[$t]}" -c 1 -n "$LAT_N" -P 1 -r "$KEYSPACE" -t "$test"
        parse "$out" "$test" && ops=$OPS p50=$P50 p99=$P99
        printf 'l\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "${test^^}" "$ops" "$p50" "$p99" >>"$RAW"
        printf '  round %s 1 client %-3s %-8s %10s ops/s  p50 %s ms  p99 %s ms\n' \
          "$round" "${test^^}" "$t" "$ops" "$p50" "$p99"
      done
    done
  done
  judge 3
fi

# -- 4: large values ----------------------------------------------------------------------
if want 4; then
  echo
  echo "== 4. large values: redis-benchmark -c 4 -d SIZE, SET then GET, $ROUNDS interleaved rounds"
  for round in $(seq 1 "$ROUNDS"); do
    read -r -a order <<<"$(rotate $((round - 1)) direct proxy)"
    for size in 1048576 16777216; do
      n=$([[ "$size" == 1048576 ]] && echo "$BIG1_N" || echo "$BIG16_N")
      for test in set get; do
        for t in "${order[@]}"; do
          out="$W/b-$round-$t-$size-$test"
          rb "$out" -p "${PORT[$t]}" -c 4 -n "$n" -d "$size" -t "$test"
          wait_sync
          parse "$out" "$test" && ops=$OPS
          printf 'b\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$size" "${test^^}" "$ops" >>"$RAW"
          printf '  round %s %2s MB %-3s %-6s %9s ops/s (-n %s)\n' "$round" \
            $((size / 1048576)) "${test^^}" "$t" "$ops" "$n"
        done
      done
    done
  done
  redis-cli -h "$HOST" -p "$PRIMARY_PORT" DEL 'key:__rand_int__' >/dev/null

  # The slow reader, on a fresh proxy.
  SLOW_SIZE=16777216
  python3 "$HELPER" set-value "$HOST" "$PRIMARY_PORT" bench:slow "$SLOW_SIZE"
  wait_sync
  start_proxy slow 1
  read -r before hwm peak secs reset < <(python3 "$HELPER" slow-reader "$HOST" "${PORT[slow]}" \
    bench:slow "$SLOW_SIZE" "${PID[slow]}" 65536 10) || die "slow reader failed"
  printf 's\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SLOW_SIZE" "$before" "$hwm" "$peak" "$secs" \
    "$reset" "$SLOW_BOUND_MB" >>"$RAW"
  stop "${PID[slow]}"
  redis-cli -h "$HOST" -p "$PRIMARY_PORT" DEL bench:slow >/dev/null
  judge 4
fi

# -- 5: idle clients ----------------------------------------------------------------------
if want 5; then
  echo
  echo "== 5. $IDLE_CLIENTS idle clients (one PING each) on a fresh proxy; open files limit $(ulimit -n)"
  if (($(ulimit -n) < IDLE_CLIENTS + 512)); then
    echo "  skipped: the open files limit ($(ulimit -n)) is too low for $IDLE_CLIENTS clients"
    printf '5\tRSS per idle client\t-\t<= 2 KB\tulimit -n %s\tSKIP\n' "$(ulimit -n)" >>"$VERDICTS"
  else
    start_proxy idle 1 --max-clients $((IDLE_CLIENTS + 100))
    read -r before after < <(python3 "$HELPER" idle-clients "$HOST" "${PORT[idle]}" \
      "$IDLE_CLIENTS" "${PID[idle]}") || die "idle clients failed"
    printf 'i\t%s\t%s\t%s\n' "$IDLE_CLIENTS" "$before" "$after" >>"$RAW"
    stop "${PID[idle]}"
    judge 5
  fi
fi

# -- 6: workers ---------------------------------------------------------------------------
if want 6; then
  echo
  echo "== 6. CPU per request, P=16 GET (-c $CLIENTS -n $N16), --workers 1 and --workers 2," \
    "$ROUNDS interleaved rounds"
  start_proxy proxy2 2
  for round in $(seq 1 "$ROUNDS"); do
    read -r -a order <<<"$(rotate $((round - 1)) proxy proxy2)"
    for t in "${order[@]}"; do
      out="$W/w-$round-$t"
      t0="$(proc_ticks "${PID[$t]}")"
      s0="$(proc_switches "${PID[$t]}")"
      rb "$out" -p "${PORT[$t]}" -c "$CLIENTS" -n "$N16" -P 16 -r "$KEYSPACE" -t get
      dt=$(($(proc_ticks "${PID[$t]}") - t0))
      ds=$(($(proc_switches "${PID[$t]}") - s0))
      parse "$out" get && ops=$OPS
      workers=$([[ "$t" == proxy ]] && echo 1 || echo 2)
      printf 'w\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$workers" "$ops" "$dt" "$N16" "$ds" >>"$RAW"
      printf '  round %s --workers %s %11s ops/s  CPU %s ticks  %s context switches\n' \
        "$round" "$workers" "$ops" "$dt" "$ds"
    done
  done
  # Where the CPU goes: one sampled run of each (not counted above: sampling costs a little).
  if command -v perf >/dev/null &&
    perf record -q -e cpu-clock -o "$W/perf-probe.data" -- true >/dev/null 2>&1; then
    for t in proxy proxy2; do
      workers=$([[ "$t" == proxy ]] && echo 1 || echo 2)
      perf record -q -e cpu-clock -F "$PERF_HZ" -p "${PID[$t]}" -o "$W/perf-$t.data" \
        >/dev/null 2>&1 &
      perf_pid=$!
      sleep 0.5  # attached before the first request
      rb "$W/wp-$t" -p "${PORT[$t]}" -c "$CLIENTS" -n "$N16" -P 16 -r "$KEYSPACE" -t get
      kill -INT "$perf_pid"
      wait "$perf_pid" || true
      perf report -i "$W/perf-$t.data" --stdio -q --sort dso -g none -F sample,dso 2>/dev/null |
        awk -v w="$workers" -v n="$N16" -v hz="$PERF_HZ" -v bin="$(basename "$PROXY_BIN")" '
          function part(d) {
            if (d == "[kernel.kallsyms]") return "kernel"
            if (d ~ /^libc[.-]/) return "libc"
            if (d == bin || d ~ /^lib(uv|stdc[+][+])[.]/) return "own"
            return "other"
          }
          NF >= 2 { s[part($2)] += $1 }
          END { for (c in s) printf "wp\t%s\t%s\t%s\t%s\t%s\n", w, c, s[c], n, hz }' >>"$RAW"
    done
  else
    echo "  (perf record does not work here: no split of the CPU by code)"
  fi
  stop "${PID[proxy2]}"
  judge 6
fi

# -- 7: instructions per GET under callgrind ----------------------------------------------
# cg_run NAME P|idle SECONDS: one proxy under callgrind; P: CG_N GETs at that pipeline depth,
# idle: SECONDS without requests. Sets CG_IR (its instructions, all threads, start to exit)
# and CG_SECS (how long the GETs or the idle time took).
cg_run() {
  local name=$1 mode=$2 idle=$3 port pid t0 t1
  port="$(free_port)"
  valgrind --tool=callgrind --callgrind-out-file="$W/$name.callgrind" \
    "$PROXY_BIN" --listen "$HOST:$port" --primary "$HOST:$PRIMARY_PORT" \
    --replicas "$HOST:$REPLICA_PORT" --workers 1 --log-level warn 2>"$W/$name.log" &
  pid=$!
  PIDS+=("$pid")
  wait_ping "$port" "$name" 600
  sleep 1  # past the first health checks
  t0="$(date +%s.%N)"
  if [[ "$mode" == idle ]]; then
    sleep "$idle"
  else
    rb "$W/$name" -p "$port" -c 1 -n "$CG_N" -P "$mode" -t get
  fi
  t1="$(date +%s.%N)"
  stop "$pid"
  CG_IR="$(awk '/^totals:/ { print $2 }' "$W/$name.callgrind" 2>/dev/null || true)"
  [[ -n "$CG_IR" ]] || { tail -n 20 "$W/$name.log" >&2; die "no callgrind totals for $name"; }
  CG_SECS="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}

if want 7 && command -v valgrind >/dev/null; then
  echo
  echo "== 7. instructions per GET: callgrind, $CG_N GETs of one key (redis-benchmark -c 1)," \
    "minus an idle run as long"
  redis-cli -h "$HOST" -p "$PRIMARY_PORT" SET 'key:__rand_int__' xxx >/dev/null
  wait_sync
  for p in 1 16; do
    cg_run "cg-p$p" "$p" 0
    ir=$CG_IR secs=$CG_SECS
    cg_run "cg-idle-p$p" idle "$secs"
    printf 'c\t%s\t%s\t%s\t%s\t%s\n' "$p" "$CG_N" "$ir" "$CG_IR" "$secs" >>"$RAW"
  done
  judge 7
fi

# -- table --------------------------------------------------------------------------------
echo
echo "== targets ($PROXY_NAME, ROUNDS=$ROUNDS N=$N N16=$N16)"
status=0
python3 "$HELPER" table "$VERDICTS" || status=$?
for note in "${NOTES[@]}"; do echo "($note)"; done
exit "$status"
