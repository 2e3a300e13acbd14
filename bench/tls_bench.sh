#!/usr/bin/env bash
# TLS cost, measured in one run: redis-benchmark GET/SET through
#   direct        plaintext to redis-server
#   direct-tls    TLS to redis-server
#   proxy         plaintext client -> proxy -> plaintext backend
#   proxy-tls     TLS client (tls_listen) -> proxy -> TLS backend (backend_tls)
# All four front the same redis-server (it listens on a plaintext and a TLS port). For each
# it prints ops/s, and for the proxies the CPU time the proxy process spent per request (user
# + sys from /proc/PID/stat over the run), then the ratios proxy-tls/proxy and
# proxy-tls/direct-tls. Certificates are made with openssl in a temporary directory. Every
# process it starts is stopped by PID on exit.
#
# Environment: BENCH_N (default 100000), BENCH_CLIENTS (50), BENCH_PIPELINES ("1 16"),
# BENCH_WORKERS (1), KP_PROXY_BIN (default build-release/kompress-proxy, built on first use).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${BENCH_N:-100000}"
CLIENTS="${BENCH_CLIENTS:-50}"
PIPELINES="${BENCH_PIPELINES:-1 16}"
WORKERS="${BENCH_WORKERS:-1}"
HOST=127.0.0.1
BENCH_NAME=tls_bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in redis-server redis-benchmark redis-cli openssl python3; do
  command -v "$tool" >/dev/null || { echo "tls_bench: $tool not found" >&2; exit 1; }
done
PROXY_BIN="${KP_PROXY_BIN:-$ROOT/build-release/kompress-proxy}"
if [[ ! -x "$PROXY_BIN" ]]; then
  cmake -S "$ROOT" -B "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >&2
  cmake --build "$ROOT/build-release" -j"$(nproc)" --target kompress-proxy >&2
  PROXY_BIN="$ROOT/build-release/kompress-proxy"
fi

W="$(mktemp -d "${TMPDIR:-/tmp}/kp-tls-bench.XXXXXX")"
BENCH_DIR="$W"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

# A CA and a server certificate for 127.0.0.1 / localhost.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench-ca" \
  -keyout "$W/ca.key" -out "$W/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$W/server.key" -out "$W/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$W/server.ext"
openssl x509 -req -in "$W/server.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial \
  -days 2 -out "$W/server.crt" -extfile "$W/server.ext" 2>/dev/null

RPORT=$(free_port)
RTLS=$(free_port)
redis-server --port "$RPORT" --tls-port "$RTLS" --tls-cert-file "$W/server.crt" \
  --tls-key-file "$W/server.key" --tls-ca-cert-file "$W/ca.crt" --tls-auth-clients no \
  --save "" --appendonly no --logfile "$W/redis.log" &
PIDS+=($!)

PPORT=$(free_port)
"$PROXY_BIN" --listen "$HOST:$PPORT" --primary "$HOST:$RPORT" --workers "$WORKERS" \
  --log-level warn 2>"$W/proxy.log" &
PLAIN_PID=$!
PIDS+=($PLAIN_PID)

TPORT_PLAIN=$(free_port)
TPORT=$(free_port)
"$PROXY_BIN" --listen "$HOST:$TPORT_PLAIN" --tls-listen "$HOST:$TPORT" \
  --tls-cert-file "$W/server.crt" --tls-key-file "$W/server.key" \
  --primary "$HOST:$RTLS" --backend-tls true --backend-tls-ca-file "$W/ca.crt" \
  --workers "$WORKERS" --log-level warn 2>"$W/proxy-tls.log" &
TLS_PID=$!
PIDS+=($TLS_PID)

for i in $(seq 1 100); do
  redis-cli -p "$PPORT" ping >/dev/null 2>&1 &&
    redis-cli --tls --cacert "$W/ca.crt" -p "$TPORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

TICK=$(getconf CLK_TCK)

# run NAME PORT PID TLS P -> "get_ops set_ops get_us set_us" (us: proxy CPU per request)
run() {
  local name=$1 port=$2 pid=$3 tls=$4 p=$5 out t0 t1 ops us=() opsv=()
  local args=(-h "$HOST" -p "$port" -c "$CLIENTS" -n "$N" -P "$p" -q)
  [[ "$tls" == 1 ]] && args+=(--tls --cacert "$W/ca.crt")
  for t in get set; do
    [[ -n "$pid" ]] && t0=$(proc_ticks "$pid")
    out=$(redis-benchmark "${args[@]}" -t "$t" 2>/dev/null | tr '\r' '\n' | grep -i "requests per second" | tail -1)
    ops=$(echo "$out" | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')
    opsv+=("$ops")
    if [[ -n "$pid" ]]; then
      t1=$(proc_ticks "$pid")
      us+=("$(python3 -c "print(f'{($t1-$t0)/$TICK/$N*1e6:.2f}')")")
    else
      us+=("-")
    fi
  done
  printf '%-11s P=%-3s GET %10s ops/s  SET %10s ops/s  proxy CPU/request GET %s us, SET %s us\n' \
    "$name" "$p" "${opsv[0]}" "${opsv[1]}" "${us[0]}" "${us[1]}"
  echo "${opsv[0]} ${opsv[1]} ${us[0]} ${us[1]}" >"$W/$name.$p"
}

echo "kompress-proxy TLS bench: N=$N clients=$CLIENTS workers=$WORKERS"
for p in $PIPELINES; do
  run direct "$RPORT" "" 0 "$p"
  run direct-tls "$RTLS" "" 1 "$p"
  run proxy "$PPORT" "$PLAIN_PID" 0 "$p"
  run proxy-tls "$TPORT" "$TLS_PID" 1 "$p"
  read -r dg ds _ _ <"$W/direct-tls.$p"
  read -r pg ps pgu psu <"$W/proxy.$p"
  read -r tg ts tgu tsu <"$W/proxy-tls.$p"
  python3 - "$p" "$dg" "$ds" "$pg" "$ps" "$pgu" "$psu" "$tg" "$ts" "$tgu" "$tsu" <<'EOF'
import sys
p, dg, ds, pg, ps, pgu, psu, tg, ts, tgu, tsu = sys.argv[1:]
def r(a, b):  # "-" when a run was too short to measure (0 clock ticks)
    return f"{float(a) / float(b):.2f}" if float(b) > 0 else "-"
print(f"  P={p}: proxy-tls/proxy throughput GET {r(tg, pg)} SET {r(ts, ps)}; "
      f"CPU/request GET {r(tgu, pgu)}x SET {r(tsu, psu)}x; "
      f"proxy-tls/direct-tls throughput GET {r(tg, dg)} SET {r(ts, ds)}")
EOF
done
