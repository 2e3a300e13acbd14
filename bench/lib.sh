# shellcheck shell=bash
# Helpers shared by the bench scripts (sourced, not run): free loopback ports, bounded waits
# for a server to answer, INFO fields, CPU ticks of processes. The caller sets BENCH_NAME
# (prefix of messages), BENCH_DIR (where NAME.log files are) and HOST.

HOST="${HOST:-127.0.0.1}"

die() {
  echo "${BENCH_NAME:-bench}: $*" >&2
  exit 1
}

# free_port [TAKEN...]: a loopback port nothing listens on, below the ephemeral range (so no
# outgoing connection takes it between the check and the bind), never one of TAKEN or
# TAKEN+10000 (a cluster node's bus port).
# shellcheck disable=SC2120  # TAKEN is optional
free_port() {
  python3 - "$@" <<'PY'
import random, socket, sys
taken = {int(p) for p in sys.argv[1:]} | {int(p) + 10000 for p in sys.argv[1:]}
for _ in range(200):
    port = random.randint(10000, 32000)
    if port in taken:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
PY
}

# wait_ping PORT NAME [TRIES]: bounded wait (TRIES x 0.1 s) until the target answers PING;
# otherwise the tail of BENCH_DIR/NAME.log and exit.
wait_ping() {
  local _
  for _ in $(seq 1 "${3:-100}"); do
    if [[ "$(redis-cli -h "$HOST" -p "$1" PING 2>/dev/null)" == "PONG" ]]; then
      return 0
    fi
    sleep 0.1
  done
  echo "${BENCH_NAME:-bench}: $2 on port $1 did not answer PING; log:" >&2
  tail -n 20 "$BENCH_DIR/$2.log" >&2 || true
  exit 1
}

info_field() {  # info_field PORT SECTION FIELD
  redis-cli -h "$HOST" -p "$1" INFO "$2" 2>/dev/null | tr -d '\r' |
    awk -F: -v f="$3" '$1 == f { print $2 }'
}

proc_ticks() {  # proc_ticks PID...: their summed utime + stime, in clock ticks
  local pid t=0
  for pid in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  echo "$t"
}

proc_switches() {  # proc_switches PID: context switches (voluntary + not) of all its threads
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(non)?voluntary_ctxt_switches:/ { t += $2 } END { print t + 0 }'
}

get_calls() {  # get_calls PORT...: GET calls those servers answered so far, summed
  local port c t=0
  for port in "$@"; do
    c="$(redis-cli -h "$HOST" -p "$port" INFO commandstats | tr -d '\r' |
      awk -F'[=,:]' '/^cmdstat_get:/ { print $3 }')"
    t=$((t + ${c:-0}))
  done
  echo "$t"
}
