#!/usr/bin/env python3
"""Soak check of kompress-proxy from the outside: real redis-server processes, the real proxy
binary and real redis-py clients, with backend faults and hostile clients at the same time.
Wrong answers are counted as well as errors. Not part of CI: it prints a report and exits 1
when a well-behaved client saw an error or a wrong answer, any client got a wrong reply, or
the proxy died.

Topology: one primary and one replica redis-server on free loopback ports (each with its own
--dir in a fresh temp dir, --save '', --appendonly no); the proxy in front of both (--workers
2, an admin endpoint, otherwise its defaults), its log in the temp dir.

For --seconds (default 40), at once:
  good clients (--good, 2)  redis-py: SET of a fresh key (value 10 B..4 KB, EX 10), then GET
                            of it, which must return exactly that value (read-your-writes)
  hostile (--no-hostile)    4 never-readers (SO_RCVBUF 4096) pipelining 30 GETs of a 16 MB
                            key, reconnecting every 8 s; a MULTI / SET / QUIT looper (+OK
                            +QUEUED +OK, then the connection closes); a flooder of 50 x 1 KB
                            SETs per send (every reply +OK); 500 idle connections
  faults (--no-faults)      on the replica, at fixed fractions of the run (for 40 s): SIGKILL
                            at 10 s, restart at 14 s; REPLICAOF NO ONE at 20 s, back at 22 s;
                            SIGSTOP at 26 s, SIGCONT at 30 s. The primary is never touched, so
                            any error a good client sees is a failure.
  sampler                   the proxy's VmRSS every 10 ms (peak, and the largest mappings of
                            /proc/PID/smaps near the peak) and kompress_client_buffer_bytes
                            from /metrics every 0.5 s.
--direct runs the good clients (and the faults) against the primary without the proxy: the
baseline. Hostile clients are skipped there (they would hurt Redis itself).

Run (Debian's python3 with python3-redis; redis-server on PATH):
    python3 bench/soak.py --seconds 40
    python3 bench/soak.py --direct --seconds 40
The proxy binary: --proxy, else env KP_PROXY_BIN, else build-release/kompress-proxy.
Round-trip times include this script's own waits (its threads share one interpreter lock).
"""

import argparse
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path

try:
    import redis
except ImportError:
    sys.exit("soak.py needs redis-py: apt-get install python3-redis (run it with that python3)")

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
BIG_KEY = "soak:big"          # the 16 MB value the never-readers ask for
GOOD_TIMEOUT_S = 20           # a good client's socket timeout: above the proxy's 5 s timeout
KEY_TTL_S = 10                # good clients' keys expire, so Redis's memory stays small
SLOW_S = 0.1                  # good round trips over this are listed (when, how long)
DOWN_RE = re.compile(r"\b(primary|replica) (\S+) marked down: (.*)$")  # backend.cpp's words
NO_READS_RE = re.compile(r"\breplica \S+ gets no reads: ")

_handed_out = set()


def free_port():
    """A loopback port nobody listens on, below the ephemeral range (no outgoing connection
    can take it before its server binds it, nor after a restart), never handed out twice."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError):
        low = 32768
    for _ in range(500):
        port = random.randint(10000, min(low, 32768) - 1)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stop_proc(proc, timeout=10):
    """By PID: SIGCONT (it may be stopped), SIGTERM, SIGKILL after timeout; its exit status."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            break
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def client(port, timeout=5.0):
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=5)


class RedisServer:
    """One redis-server on a fixed port; restartable on that port with the same arguments."""

    def __init__(self, binary, work, name, replicaof=None):
        self.name, self.port, self.proc = name, free_port(), None
        d = work / name
        d.mkdir()
        self.args = [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(d),
                     "--save", "", "--appendonly", "no", "--daemonize", "no",
                     "--logfile", str(d / "redis.log"), "--repl-diskless-sync-delay", "0"]
        if replicaof:
            self.args += ["--replicaof", HOST, str(replicaof)]

    def start(self):
        def port_free():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, self.port))
                return True
        wait_until(port_free, 10, f"port {self.port} free")
        # Own session: a Ctrl-C in the terminal reaches this script only, which stops us.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ping(self, timeout=20):
        wait_until(lambda: client(self.port, 0.5).ping(), timeout, f"{self.name} to answer PING")

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self):
        stop_proc(self.proc)


class Proxy:
    def __init__(self, binary, work, primary, replica, workers, extra):
        self.port, self.admin, self.proc = free_port(), free_port(), None
        self.log_path = work / "proxy.log"
        self.args = [binary, "--listen", f"{HOST}:{self.port}", "--primary", f"{HOST}:{primary}",
                     "--replicas", f"{HOST}:{replica}", "--workers", str(workers),
                     "--admin-listen", f"{HOST}:{self.admin}"] + list(extra)

    def start(self):
        # The caller's KOMPRESS_* / REDIS_* variables must not change what the run means.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KOMPRESS_", "REDIS_"))}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise SystemExit(f"proxy exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            return client(self.port, 0.5).ping()
        wait_until(ready, 20, "the proxy to answer PING")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def metrics(self):
        with urllib.request.urlopen(f"http://{HOST}:{self.admin}/metrics", timeout=2) as r:
            return r.read().decode()

    def stop(self, timeout=10):
        return stop_proc(self.proc, timeout)


def metric_series(text, name):
    """{labels or "": value} of every sample of metric `name` in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Tally:
    """What one kind of client saw: rounds, errors, wrong answers (a few samples of each,
    with the time of the first), round-trip times."""

    def __init__(self, t0):
        self.t0, self.lock = t0, threading.Lock()
        self.rounds = self.errors = self.wrong = 0
        self.samples = {}  # message -> [seconds into the run of the first, count]
        self.rtts, self.worst = [], (0.0, 0.0)
        self.slow = []  # (seconds into the run, round trip) of those over SLOW_S

    def ok(self, rtt=None, started=0.0):
        with self.lock:
            self.rounds += 1
            if rtt is not None:
                self.rtts.append(rtt)
                self.worst = max(self.worst, (rtt, started - self.t0))
                if rtt > SLOW_S:
                    self.slow.append((started - self.t0, rtt))

    def bad(self, wrong, msg):
        with self.lock:
            if wrong:
                self.wrong += 1
            else:
                self.errors += 1
            msg = ("wrong: " if wrong else "") + msg[:160]
            if msg in self.samples or len(self.samples) < 100:  # a sample, not a record
                self.samples.setdefault(msg, [time.monotonic() - self.t0, 0])[1] += 1

    def sample_lines(self, n=5):
        top = sorted(self.samples.items(), key=lambda kv: kv[1][0])[:n]
        return [f"    {c} x (first at {t:.1f} s) {m}" for m, (t, c) in top]


def good_client(idx, port, stop, tally):
    r, rng, i = client(port, GOOD_TIMEOUT_S), random.Random(), 0
    while not stop.is_set():
        i += 1
        key = f"soak:good:{idx}:{i}:{rng.getrandbits(32):08x}"
        value = rng.randbytes(int(10 * (4096 / 10) ** rng.random()))  # 10 B..4 KB, log-uniform
        t = time.monotonic()
        try:
            ok = r.set(key, value, ex=KEY_TTL_S)
            got = r.get(key)
        except Exception as exc:  # noqa: BLE001 - every client-visible failure counts
            tally.bad(False, f"{type(exc).__name__}: {exc}")
            stop.wait(0.05)
            continue
        tally.ok(time.monotonic() - t, t)
        if ok is not True:
            tally.bad(True, f"SET {key} -> {ok!r}")
        elif got != value:
            tally.bad(True, f"GET {key} -> {got[:40] if got else got!r} ({len(got or b'')} "
                            f"bytes), want {len(value)} bytes")


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes: {buf[:60]!r}")
        buf += chunk
    return buf


def never_reader(port, stop, tally):
    ask = encode("GET", BIG_KEY) * 30
    while not stop.is_set():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sticks
        s.settimeout(5)
        try:
            s.connect((HOST, port))
            s.sendall(ask)
            tally.ok()
        except OSError as exc:
            tally.bad(False, f"{type(exc).__name__}: {exc}")
        stop.wait(8)
        s.close()


def multi_quit(port, stop, tally):
    payload = encode("MULTI") + encode("SET", "soak:multi", "x") + encode("QUIT")
    want = b"+OK\r\n+QUEUED\r\n+OK\r\n"
    while not stop.is_set():
        try:
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall(payload)
                data = b""
                while len(data) <= len(want):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                else:
                    raise ValueError(f"not closed after QUIT; got {data[:80]!r}")
            if data == want:
                tally.ok()
            else:
                tally.bad(True, f"got {data[:80]!r} and close")
        except (OSError, ValueError) as exc:
            tally.bad(False, f"{type(exc).__name__}: {exc}")
        stop.wait(0.005)


def flooder(port, stop, tally):
    payload = b"".join(encode("SET", f"soak:flood:{j}", os.urandom(512).hex()) for j in range(50))
    want = b"+OK\r\n" * 50
    s = None
    while not stop.is_set():
        try:
            if s is None:
                s = socket.create_connection((HOST, port), timeout=10)
            s.sendall(payload)
            got = recv_exact(s, len(want))
            if got == want:
                tally.ok()
            else:
                tally.bad(True, f"replies {got[:80]!r}")
        except OSError as exc:
            tally.bad(False, f"{type(exc).__name__}: {exc}")
            if s is not None:
                s.close()
            s = None
            stop.wait(0.1)
    if s is not None:
        s.close()


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def smaps_top(pid, n=5):
    """The n largest mappings by Rss (over 1 MB): [[rss, size, "name range"]] (bytes)."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                maps.append([0, 0, f"{parts[5] if len(parts) > 5 else '[anon]'} {parts[0]}"])
            elif line.startswith(("Rss:", "Size:")) and maps:
                maps[-1][line.startswith("Size:")] = int(line.split()[1]) * 1024
    return sorted((m for m in maps if m[0] > MB), reverse=True)[:n]


class Sampler(threading.Thread):
    def __init__(self, proxy, stop, t0):
        super().__init__(daemon=True)
        self.proxy, self.stop, self.t0 = proxy, stop, t0
        self.start_rss = self.peak = vm_rss(proxy.proc.pid)
        self.peak_t, self.smaps, self.smaps_rss = 0.0, smaps_top(proxy.proc.pid), self.peak
        self.buf_peak, self.metric_failures = 0, 0

    def run(self):
        pid, next_metrics = self.proxy.proc.pid, 0.0
        while not self.stop.wait(0.01):
            try:
                rss = vm_rss(pid)
                if rss > self.peak:
                    self.peak, self.peak_t = rss, time.monotonic() - self.t0
                    if rss >= self.smaps_rss + MB:  # not at every KB of growth: smaps costs
                        self.smaps, self.smaps_rss = smaps_top(pid), rss
            except OSError:
                return  # the proxy is gone; the report says so
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + 0.5
                try:
                    held = metric_series(self.proxy.metrics(), "kompress_client_buffer_bytes")
                    self.buf_peak = max(self.buf_peak, held.get("", 0))
                except Exception:  # noqa: BLE001
                    self.metric_failures += 1


def run_faults(primary, replica, seconds, stop, t0, log):
    """The faults, on the replica only, at fixed fractions of the run (10 s, 14 s... of 40)."""
    def kill():
        replica.signal(signal.SIGKILL)
        replica.proc.wait(10)
    plan = [(0.25, "SIGKILL", kill), (0.35, "restart", replica.start),
            (0.50, "REPLICAOF NO ONE", lambda: client(replica.port).replicaof("NO", "ONE")),
            (0.55, f"REPLICAOF {HOST} {primary.port}",
             lambda: client(replica.port).replicaof(HOST, primary.port)),
            (0.65, "SIGSTOP", lambda: replica.signal(signal.SIGSTOP)),
            (0.75, "SIGCONT", lambda: replica.signal(signal.SIGCONT))]
    for frac, what, act in plan:
        if stop.wait(max(0.0, t0 + frac * seconds - time.monotonic())):
            return
        try:
            act()
            note = f" (pid {replica.proc.pid})" if what in ("SIGKILL", "restart") else ""
        except Exception as exc:  # noqa: BLE001
            note = f" FAILED: {type(exc).__name__}: {exc}"
        log(f"[{time.monotonic() - t0:5.1f} s] replica {what}{note}")


def wait_replica_synced(primary, replica, timeout=60):
    want = client(primary.port).info("replication")["master_repl_offset"]

    def synced():
        info = client(replica.port).info("replication")
        return info.get("master_link_status") == "up" and info.get("slave_repl_offset", -1) >= want
    wait_until(synced, timeout, "the replica to sync")


def mb(n):
    return f"{n / MB:.1f} MB"


def setup(args, work, stack):
    """The primary, the replica (synced) and, unless --direct, the proxy; all on `stack`."""
    primary = RedisServer(args.redis_server, work, "primary")
    replica = RedisServer(args.redis_server, work, "replica", replicaof=primary.port)
    for s in (primary, replica):
        stack.append(s)
        s.start()
    primary.wait_ping()
    replica.wait_ping()
    if args.hostile:
        client(primary.port, 30).set(BIG_KEY, os.urandom(8 * MB).hex())
    wait_replica_synced(primary, replica)
    proxy = None
    if not args.direct:
        proxy = Proxy(args.proxy, work, primary.port, replica.port, args.workers, args.proxy_arg)
        stack.append(proxy)
        proxy.start()
    return primary, replica, proxy


def load(args, primary, replica, proxy):
    """Runs every client (and the faults) for --seconds; what they saw."""
    port = proxy.port if proxy else primary.port
    stop, t0, threads = threading.Event(), time.monotonic(), []
    r = types.SimpleNamespace(good=Tally(t0), faults=[], idle=[], idle_closed=0, interrupted=False,
                              hostile={k: Tally(t0) for k in ("never-readers", "MULTI/SET/QUIT",
                                                              "flooder")})
    r.sampler = Sampler(proxy, stop, t0) if proxy else None

    def log(line):
        r.faults.append(line)
        print("  fault " + line, flush=True)

    def spawn(fn, *a):
        threads.append(threading.Thread(target=fn, args=a, daemon=True))
        threads[-1].start()

    if r.sampler:
        r.sampler.start()
    if args.hostile:
        r.idle = [socket.create_connection((HOST, port), timeout=10) for _ in range(500)]
        for _ in range(4):
            spawn(never_reader, port, stop, r.hostile["never-readers"])
        spawn(multi_quit, port, stop, r.hostile["MULTI/SET/QUIT"])
        spawn(flooder, port, stop, r.hostile["flooder"])
    for i in range(args.good):
        spawn(good_client, i, port, stop, r.good)
    if args.faults:
        spawn(run_faults, primary, replica, args.seconds, stop, t0, log)
    try:
        while time.monotonic() - t0 < args.seconds and (proxy is None or proxy.proc.poll() is None):
            time.sleep(0.1)
    except KeyboardInterrupt:
        r.interrupted = True  # stop early, but still report
    r.seconds = time.monotonic() - t0
    r.died = proxy is not None and proxy.proc.poll() is not None
    stop.set()
    for t in threads:
        t.join(GOOD_TIMEOUT_S + 5)
    for s in r.idle:  # still open, or closed by the proxy?
        s.setblocking(False)
        try:
            r.idle_closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            r.idle_closed += 1
        s.close()
    return r


def report_proxy(args, r, primary, proxy):
    """The proxy's part of the report; stops the proxy. Returns the failures found."""
    failures, sampler = [], r.sampler
    print(f"proxy RSS: at start {mb(sampler.start_rss)}, peak {mb(sampler.peak)} "
          f"(at {sampler.peak_t:.1f} s); peak kompress_client_buffer_bytes {mb(sampler.buf_peak)}"
          + (f" ({sampler.metric_failures} /metrics reads failed)" if sampler.metric_failures
             else ""))
    print(f"  largest mappings (smaps at {mb(sampler.smaps_rss)}): "
          + (", ".join(f"{mb(rss)} of {mb(size)} {name}" for rss, size, name in sampler.smaps)
             or "none over 1 MB"))
    pong = False
    if not r.died:
        try:
            drops = metric_series(proxy.metrics(), "kompress_client_drops_total")
            named = {k.split('"')[1] if '"' in k else k: v for k, v in drops.items()}
            print("  client drops: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(named.items())
                                                  if v) or "none"))
        except Exception as exc:  # noqa: BLE001
            print(f"  client drops: /metrics failed: {exc}")
        try:
            pong = client(proxy.port).ping()
        except Exception as exc:  # noqa: BLE001
            print(f"  PING failed: {type(exc).__name__}: {exc}")
    downs, no_reads = {"primary": [], "replica": []}, 0
    for line in proxy.log().splitlines():
        m = DOWN_RE.search(line)
        if m:
            downs["primary" if m.group(2).endswith(f":{primary.port}") else "replica"].append(
                m.group(3))
        no_reads += bool(NO_READS_RE.search(line))
    print("  marked down: " + "; ".join(f"{k} {len(v)}x" + (f" (first: {v[0][:100]})" if v else "")
                                        for k, v in downs.items())
          + f"; replica taken off reads (lag, resync, role) {no_reads}x")
    status = proxy.stop(timeout=30)  # SIGTERM; it drains for up to 10 s
    print(f"  PING at end: {'PONG' if pong else 'no answer'}; "
          + ("DIED during the run, " if r.died else "") + f"exit status after SIGTERM: {status}")
    if args.keep_logs:
        print(f"  proxy log: {proxy.log_path}")
    if r.died:
        failures.append(f"the proxy died during the run (status {status})")
    elif not pong:
        failures.append("the proxy did not answer PING at the end")
    elif status != 0:
        failures.append(f"the proxy exited with {status} after SIGTERM")
    return failures


def run(args, work, stack):
    t_setup = time.monotonic()
    primary, replica, proxy = setup(args, work, stack)
    print(f"soak: {'direct to the primary' if args.direct else f'proxy {args.proxy}'}; primary "
          f":{primary.port}, replica :{replica.port}"
          + (f", proxy :{proxy.port} (admin :{proxy.admin}, --workers {args.workers})" if proxy
             else "")
          + f"; {args.seconds:g} s, {args.good} good clients, hostile "
          f"{'on' if args.hostile else 'off'}, faults {'on' if args.faults else 'off'}; setup "
          f"{time.monotonic() - t_setup:.1f} s",
          flush=True)
    r = load(args, primary, replica, proxy)

    good, rtts = r.good, sorted(r.good.rtts)

    def pct(p):
        return rtts[min(len(rtts) - 1, math.ceil(p * len(rtts)) - 1)] * 1000 if rtts else 0

    print(f"\n== soak report ({'direct' if args.direct else 'proxy'}, {r.seconds:.1f} s"
          + (", INTERRUPTED" if r.interrupted else "") + ")")
    if r.faults:
        print("faults (replica): " + ", ".join(f.replace("replica ", "") for f in r.faults))
    print(f"good clients: {good.rounds} SET+GET pairs ({good.rounds / r.seconds:.0f}/s), "
          f"{good.errors} errors, {good.wrong} wrong answers; round trip p50 {pct(0.5):.2f} ms, "
          f"p99 {pct(0.99):.2f} ms, worst {good.worst[0] * 1000:.0f} ms (at {good.worst[1]:.1f} s)")
    if good.slow:
        print(f"  over {SLOW_S * 1000:.0f} ms: {len(good.slow)}, at "
              + ", ".join(f"{t:.1f} s ({rtt * 1000:.0f} ms)" for t, rtt in good.slow[:12])
              + (" ..." if len(good.slow) > 12 else ""))
    for line in good.sample_lines():
        print(line)
    if args.hostile:
        print("hostile: " + "; ".join(f"{k} {t.rounds} rounds ({t.errors} errors, {t.wrong} "
                                      f"unexpected)" for k, t in r.hostile.items())
              + f"; idle {len(r.idle)} opened, {r.idle_closed} closed by the proxy "
              "(their errors are reported; a wrong reply fails the run)")
        for t in r.hostile.values():
            for line in t.sample_lines(3):
                print(line)
    failures = []
    if good.errors or good.wrong:
        failures.append(f"good clients: {good.errors} errors, {good.wrong} wrong answers")
    if not good.rounds:
        failures.append("no good SET+GET pair completed")
    # Closing a hostile client is the proxy's right; answering it wrongly never is.
    wrong_hostile = {k: t.wrong for k, t in r.hostile.items() if t.wrong} if args.hostile else {}
    if wrong_hostile:
        failures.append(f"hostile clients got wrong replies: {wrong_hostile}")
    if proxy:
        failures += report_proxy(args, r, primary, proxy)
    print("RESULT: " + ("FAIL: " + "; ".join(failures) if failures else "PASS"))
    return 130 if r.interrupted else (1 if failures else 0)


def main():
    default_proxy = os.environ.get("KP_PROXY_BIN") or str(ROOT / "build-release" / "kompress-proxy")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40, help="length of the run (default 40)")
    ap.add_argument("--good", type=int, default=2, help="well-behaved clients (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="the proxy's --workers (default 2)")
    ap.add_argument("--proxy", default=default_proxy,
                    help="proxy binary (default: env KP_PROXY_BIN, else "
                    "build-release/kompress-proxy)")
    ap.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                    help="extra proxy argument, repeatable (e.g. --proxy-arg=--timeout=1)")
    ap.add_argument("--redis-server", default=os.environ.get("KP_REDIS_SERVER", "redis-server"),
                    help="redis-server binary (default: env KP_REDIS_SERVER, else from PATH)")
    ap.add_argument("--direct", action="store_true",
                    help="good clients (and faults) against the primary, no proxy: the baseline")
    ap.add_argument("--no-hostile", action="store_true", help="no hostile clients")
    ap.add_argument("--no-faults", action="store_true", help="no replica faults")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the temp dir's logs (proxy, redis) and print where")
    args = ap.parse_args()
    args.hostile = not args.direct and not args.no_hostile
    args.faults = not args.no_faults
    if args.seconds <= 0 or args.good < 1 or args.workers < 0:
        ap.error("--seconds and --good must be positive, --workers >= 0")
    if not args.direct and not os.access(args.proxy, os.X_OK):
        ap.error(f"proxy binary not found: {args.proxy} (build it, or --proxy / KP_PROXY_BIN)")
    if not shutil.which(args.redis_server):
        ap.error(f"redis-server not found: {args.redis_server}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # 500 idle connections here, and as many in the proxy
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="kp-soak."))
    stack = []  # everything started, stopped by PID in reverse order at the end
    try:
        return run(args, work, stack)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        for thing in reversed(stack):
            thing.stop()
        if args.keep_logs:
            for rdb in work.glob("*/*.rdb"):
                rdb.unlink()
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
