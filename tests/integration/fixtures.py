"""Process fixtures for the integration suite: real redis-server processes (a primary and
replicas started with --replicaof) and the real kompress-proxy binary, on free loopback
ports, each in its own temporary directory.

Every process started here is registered by PID and stopped by PID (SIGCONT first, in case
a test left it stopped, then SIGTERM, then SIGKILL after a bounded wait). Every wait is
bounded in time. Nothing here talks to anything but 127.0.0.1.
"""

import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

HOST = "127.0.0.1"

REPO_ROOT = Path(os.environ.get("KP_SOURCE_DIR") or Path(__file__).resolve().parents[2])
PROXY_BIN = Path(os.environ.get("KP_PROXY_BIN") or (REPO_ROOT / "build" / "kompress-proxy"))
REDIS_SERVER = os.environ.get("KP_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("KP_REDIS_CLI", "redis-cli")

# Multiplier for timing bounds: sanitizer builds are several times slower.
SLOWDOWN = float(os.environ.get("KP_TEST_SLOWDOWN", "1"))

# Arguments every proxy in the suite runs with (the brief of the suite: fast failure
# detection so fault tests finish quickly).
PROXY_TIMEOUT_S = 1.0
PROXY_BASE_ARGS = ["--workers", "2", "--timeout", str(PROXY_TIMEOUT_S),
                   "--health-check-interval", "0.2"]

# Environment variables the proxy reads; cleared for every proxy we start so the caller's
# environment cannot change what a test means.
PROXY_ENV_PREFIXES = ("REDIS_", "KOMPRESS_")


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


# Every port handed out in this run. A port is free until its server binds it, so two picks
# before either binds (a cluster's primary and replica) could return the same one: the second
# server then waited for the first to let go of it (CI: "port 29982 free" timed out in a
# fixture's setup). Never handing a port out twice rules that out; 20,000 ports suffice.
_HANDED_OUT = set()


def _port_class():
    """(residue, modulus): the ports this test process may hand out are those congruent to
    residue. Under pytest-xdist each worker is its own process with its own _HANDED_OUT, so
    the workers split the ports between them instead. The modulus divides 10000, so a
    cluster node's bus port (+10000) stays in its node's class."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return 0, 1
    modulus = next(m for m in range(count, 10001) if 10000 % m == 0)
    return int(worker[2:]) % modulus, modulus


_PORT_CLASS = _port_class()


def _random_port(low, top):
    residue, modulus = _PORT_CLASS
    port = random.randint(low, top - modulus)
    return port - port % modulus + residue


def _hand_out(port):
    _HANDED_OUT.add(port)
    return port


def free_port():
    """A loopback TCP port nobody listens on right now, and not handed out before in this
    run. Taken below the kernel's ephemeral range, so the outgoing connections of the servers
    and the proxy (which get ephemeral source ports) cannot occupy it between now and the
    moment a server binds it."""
    low, _ = _ephemeral_range()
    top = min(low, 32768) - 1
    for _ in range(200):
        port = _random_port(10000, top)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return _hand_out(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # fall back to the kernel
        s.bind((HOST, 0))
        return _hand_out(s.getsockname()[1])


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it is truthy; raises TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def busy(client):
    """Whether the server behind `client` (a direct redis-py client) is busy running a script
    past its busy-reply-threshold: it then answers PING with -BUSY."""
    try:
        client.ping()
        return False
    except redis.ResponseError as e:
        return str(e).startswith("BUSY")


class BusyScript:
    """A script that runs until it is killed, sent through `client` (EVAL, on `keys`) from a
    thread: what its caller got is in `outcome` ("reply" or "error")."""

    SPIN = "local a = 0 while true do a = a + 1 end"

    def __init__(self, client, *keys):
        self.outcome = {}

        def run():
            try:
                self.outcome["reply"] = client.eval(self.SPIN, len(keys), *keys)
            except redis.RedisError as e:
                self.outcome["error"] = str(e)
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def killed(self, timeout=10):
        """Waits for the caller's answer: whether it says the script was killed."""
        self.thread.join(timeout)
        return "killed by user" in self.outcome.get("error", "")

    def stop(self, direct):
        """For `finally`: kills it (through `direct`, a client of its server) if it runs."""
        try:
            direct.execute_command("SCRIPT", "KILL")
        except redis.RedisError:
            pass
        self.thread.join(10)


def busy_answers_for(fn, seconds=1.0):
    """Calls fn() in a loop for `seconds`, as a client retrying on -BUSY would: returns
    (attempts, attempts answered -BUSY)."""
    attempts = busy_answers = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        attempts += 1
        try:
            fn()
        except redis.ResponseError as e:
            busy_answers += str(e).startswith("BUSY")
    return attempts, busy_answers


def port_accepts(port, host=HOST):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_is_free(port, host=HOST):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_answers_ping(server, timeout):
    """Waits until a started server (RedisServer, Sentinel) answers PING; its log on failure."""
    def ready():
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; "
                               f"log:\n{server.log_tail()}")
        return server.client(timeout=0.5).ping()
    try:
        wait_until(ready, timeout, what=f"{server.name} to answer PING")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{server.log_tail()}") from None


class ProcessRegistry:
    """Every child process we start, so teardown can always stop each one by PID."""

    def __init__(self):
        self._procs = {}

    def add(self, proc):
        self._procs[proc.pid] = proc

    def discard(self, proc):
        self._procs.pop(proc.pid, None)

    def stop_all(self):
        for proc in list(self._procs.values()):
            stop_process(proc)
            self.discard(proc)


REGISTRY = ProcessRegistry()


def stop_process(proc, timeout=10.0, sig=signal.SIGTERM):
    """Stops one child by PID: SIGCONT (it may be stopped), `sig`, SIGKILL after timeout."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc is not None else None
    for s in (signal.SIGCONT, sig):
        try:
            os.kill(proc.pid, s)
        except ProcessLookupError:
            break
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(timeout=10)


class RedisServer:
    """One redis-server on a fixed loopback port; can be killed and restarted on that port."""

    def __init__(self, workdir, name, port=None, replicaof=None, extra_args=()):
        self.name = name
        self.port = port or free_port()
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.replicaof = replicaof  # port of the primary, or None
        self.extra_args = list(extra_args)
        self.proc = None
        self.stopped = False  # SIGSTOPped by a test

    # -- lifecycle -------------------------------------------------------------------
    def args(self, extra_args=()):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", HOST,
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                "--protected-mode", "no",
                # Full syncs start at once instead of after the 5 s default delay.
                "--repl-diskless-sync-delay", "0",
                # DEBUG SLEEP lets tests hold a request in flight on purpose.
                "--enable-debug-command", "yes"]
        if self.replicaof:
            args += ["--replicaof", HOST, str(self.replicaof)]
        return args + self.extra_args + list(extra_args)

    def start(self, extra_args=(), wait=True):
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        # A port freed by kill -9 can take a moment to be bindable again.
        wait_until(lambda: port_is_free(self.port), 10, what=f"port {self.port} free")
        self.proc = subprocess.Popen(self.args(extra_args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        REGISTRY.add(self.proc)
        self.stopped = False
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=15):
        wait_answers_ping(self, timeout)

    def wait_link_up(self, timeout=20):
        """For a replica: waits until INFO replication says master_link_status:up."""
        assert self.replicaof, f"{self.name} is not a replica"
        wait_until(lambda: self.client(timeout=0.5).info("replication")
                   .get("master_link_status") == "up",
                   timeout, interval=0.05, what=f"{self.name} master_link_status:up")

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        REGISTRY.discard(self.proc)

    def sigstop(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            REGISTRY.discard(self.proc)

    def restart(self, extra_args=(), wait=True, keep_data=False):
        """Stops the server if it still runs (kill -9) and starts it on the same port. Unless
        keep_data, the RDB file a replica kept from its last sync is removed first, so a
        restarted replica needs a full resync (as a replacement machine would)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.sigcont()
            self.kill9()
        if not keep_data:
            for rdb in self.dir.glob("*.rdb"):
                rdb.unlink()
        return self.start(extra_args=extra_args, wait=wait)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- inspection ------------------------------------------------------------------
    def client(self, timeout=5.0, **kw):
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, **kw)

    def commandstats(self):
        """{command name: calls} from INFO commandstats, e.g. {"get": 12, "config|set": 1}."""
        raw = self.client().execute_command("INFO", "commandstats")
        if isinstance(raw, bytes):
            raw = raw.decode()
        if isinstance(raw, dict):  # redis-py parsed it
            return {k[len("cmdstat_"):]: int(v["calls"]) for k, v in raw.items()
                    if k.startswith("cmdstat_")}
        stats = {}
        for line in raw.splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_"):].partition(":")
                fields = dict(f.split("=", 1) for f in rest.split(","))
                stats[name] = int(fields["calls"])
        return stats

    def calls(self, command):
        return self.commandstats().get(command.lower(), 0)

    def errorstats(self):
        raw = self.client().execute_command("INFO", "errorstats")
        if isinstance(raw, bytes):
            raw = raw.decode()
        stats = {}
        if isinstance(raw, dict):
            raw = "\n".join(f"{k}:{v}" for k, v in raw.items())
        for line in raw.splitlines():
            if line.startswith("errorstat_"):
                name, _, rest = line[len("errorstat_"):].partition(":")
                stats[name] = int(rest.split("count=", 1)[1].split(",")[0].strip("}'\" "))
        return stats

    def log_tail(self, n=30):
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def __repr__(self):
        return f"<RedisServer {self.name} :{self.port}>"


class Cluster:
    """A primary and `replicas` replicas of it, replication up before start() returns."""

    def __init__(self, workdir, replicas=2, primary_args=(), replica_args=()):
        self.workdir = Path(workdir)
        self.primary = RedisServer(self.workdir, "primary", extra_args=primary_args)
        self.replicas = [RedisServer(self.workdir, f"replica{i + 1}", replicaof=self.primary.port,
                                     extra_args=replica_args)
                         for i in range(replicas)]

    @property
    def servers(self):
        return [self.primary] + self.replicas

    def start(self):
        self.primary.start()
        for r in self.replicas:
            r.start(wait=False)
        for r in self.replicas:
            r.wait_ready()
        for r in self.replicas:
            r.wait_link_up()
        return self

    def stop(self):
        for s in self.servers:
            if s.proc is not None and s.stopped:
                try:
                    s.sigcont()
                except ProcessLookupError:
                    pass
        for s in self.servers:
            s.stop()

    def wait_replicated(self, timeout_ms=5000):
        """Waits until every running replica has applied everything written to the primary
        so far (replica offset >= primary offset). WAIT on a fresh connection would not do:
        it only counts the writes of its own connection."""
        target = self.primary.client().info("replication")["master_repl_offset"]
        replicas = [r for r in self.replicas if r.alive and not r.stopped]

        def caught_up():
            return all(r.client(timeout=1).info("replication").get("slave_repl_offset", -1)
                       >= target for r in replicas)
        wait_until(caught_up, timeout_ms / 1000 * SLOWDOWN, interval=0.01,
                   what=f"replicas to reach primary offset {target}")

    def snapshot(self, command):
        """{server name: calls of `command`} for every running server."""
        return {s.name: s.calls(command) for s in self.servers if s.alive and not s.stopped}

    def replica_addrs(self):
        return ",".join(f"{HOST}:{r.port}" for r in self.replicas)


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


# Every proxy started in this run, so the suite can check their stderr for sanitizer reports.
ALL_PROXIES = []

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: UndefinedBehaviorSanitizer")


def sanitizer_report(proxy):
    """The first sanitizer report in a proxy's stderr, or None."""
    text = proxy.stderr()
    for marker in SANITIZER_MARKERS:
        i = text.find(marker)
        if i >= 0:
            return text[max(0, i - 200):i + 3000]
    return None


class Proxy:
    """The real kompress-proxy binary, listening on a free loopback port."""

    def __init__(self, workdir, primary_port=None, replica_ports=(), extra_args=(),
                 env=None, use_base_args=True, name="proxy", listen_via_env=False,
                 ready_poll=0.05):
        """ready_poll: seconds between checks that the client port accepts (start())."""
        ALL_PROXIES.append(self)
        self.ready_poll = ready_poll
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.name = name
        args = [str(PROXY_BIN)]
        env = dict(env or {})
        if listen_via_env:
            env["KOMPRESS_LISTEN"] = f"{HOST}:{self.port}"
        else:
            args += ["--listen", f"{HOST}:{self.port}"]
        if primary_port is not None:
            args += ["--primary", f"{HOST}:{primary_port}"]
        if replica_ports:
            args += ["--replicas", ",".join(f"{HOST}:{p}" for p in replica_ports)]
        if use_base_args:
            args += PROXY_BASE_ARGS
        self.args = args + list(extra_args)
        self.env = clean_env(env)
        self.log_path = self.workdir / f"{name}-{self.port}.stderr"
        self.proc = None
        self._log = None

    def start(self, timeout=20):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=self.env)
        REGISTRY.add(self.proc)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}: {self.stderr()}")
            return port_accepts(self.port)
        try:
            wait_until(ready, timeout, interval=self.ready_poll,
                       what="proxy to accept connections")
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"proxy did not start: {exc}\nargs: {self.args}\n"
                               f"stderr:\n{self.stderr()}") from None
        return self

    def client(self, timeout=10.0, **kw):
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, **kw)

    def terminate(self, timeout=20.0):
        """SIGTERM and wait; returns the exit code (SIGKILL after `timeout`: returns < 0)."""
        code = stop_process(self.proc, timeout=timeout, sig=signal.SIGTERM)
        REGISTRY.discard(self.proc)
        self._close_log()
        return code

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            REGISTRY.discard(self.proc)
        self._close_log()

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def stderr(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def require_proxy_bin():
    import pytest
    if not PROXY_BIN.is_file() or not os.access(PROXY_BIN, os.X_OK):
        pytest.fail(f"proxy binary not found: {PROXY_BIN} (set KP_PROXY_BIN)", pytrace=False)


def dump_proxy_log(proxy):
    # Printed output is shown by pytest only for failing tests.
    text = proxy.stderr()
    if text:
        tail = "\n".join(text.splitlines()[-40:])
        print(f"--- {proxy.name} :{proxy.port} stderr (tail) ---\n{tail}")


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROXY_ENV_PREFIXES)}
    # ASan: report but keep the exit code meaningful for leak reports too.
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    env.update(extra or {})
    return env


def run_proxy_once(args, env=None, timeout=15):
    """Runs the proxy binary to completion (for --help, --check-config, bad config)."""
    return subprocess.run([str(PROXY_BIN)] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, env=clean_env(env), timeout=timeout)


# -- the admin endpoint -----------------------------------------------------------------------

def http_get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, series):
    """The value of one series in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in metrics")


# -- raw RESP over a socket ----------------------------------------------------------------

class IncompleteReply(Exception):
    pass


def _line_end(buf, pos):
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise IncompleteReply
    return end


def reply_end(buf, pos=0):
    """Index just past the one complete RESP2/RESP3 reply starting at buf[pos]; raises
    IncompleteReply if buf holds only part of it. Validates nothing beyond framing."""
    if pos >= len(buf):
        raise IncompleteReply
    t = buf[pos:pos + 1]
    end = _line_end(buf, pos)
    head = buf[pos + 1:end]
    nxt = end + 2
    if t in b"+-:_,#(":
        return nxt
    if t in b"$!=":
        n = int(head)
        if n < 0:
            return nxt
        if len(buf) < nxt + n + 2:
            raise IncompleteReply
        return nxt + n + 2
    if t in b"*~>%|":
        n = int(head)
        if n < 0:
            return nxt
        if t in b"%|":
            n *= 2
        for _ in range(n):
            nxt = reply_end(buf, nxt)
        if t == b"|":  # an attribute precedes the reply it annotates
            nxt = reply_end(buf, nxt)
        return nxt
    raise ValueError(f"not a RESP type byte: {t!r} at {pos}")


def reply_depth(buf, pos=0):
    """(nesting depth, end) of the reply at buf[pos]."""
    t = buf[pos:pos + 1]
    end = _line_end(buf, pos)
    nxt = end + 2
    if t in b"*~>%|":
        n = int(buf[pos + 1:end])
        if t in b"%|":
            n *= 2
        depth = 0
        for _ in range(max(n, 0)):
            d, nxt = reply_depth(buf, nxt)
            depth = max(depth, d)
        return depth + 1, nxt
    return 0, reply_end(buf, pos)


def connect(port, timeout=10.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_replies(sock, count, timeout=10.0, buf=b""):
    """Reads exactly `count` complete replies; returns (list of raw replies, leftover)."""
    deadline = time.monotonic() + timeout
    replies = []
    pos = 0
    while len(replies) < count:
        try:
            end = reply_end(buf, pos)
            replies.append(buf[pos:end])
            pos = end
            continue
        except IncompleteReply:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"got {len(replies)} of {count} replies; "
                               f"pending bytes: {buf[pos:pos + 200]!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(replies)} of {count} replies;"
                                  f" pending bytes: {buf[pos:pos + 200]!r}")
        buf = buf[pos:] + chunk
        pos = 0
    return replies, buf[pos:]


def raw_command(port, payload, count=1, timeout=10.0):
    """Sends payload on a fresh connection and returns the raw bytes of `count` replies."""
    with connect(port, timeout) as s:
        s.sendall(payload)
        replies, _ = read_replies(s, count, timeout)
        return b"".join(replies)


def read_until_closed(sock, timeout=5.0, limit=1 << 30):
    """Reads until EOF/reset. Returns (data, closed): closed is False on timeout."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            return bytes(data), False
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def encode_command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# -- a misbehaving backend -------------------------------------------------------------------

class FakeBackend:
    """A TCP server speaking just enough RESP to pass the proxy's health check as a replica
    of the primary on `info_from` (INFO gets that primary's INFO replication, rewritten as a
    linked replica that has everything; PING gets +PONG; CONFIG GET the default databases)
    and answering every other request
    according to `mode`:
      "garbage"    bytes that are not RESP
      "close"      closes the connection without a reply
      "loading"    -LOADING (Redis loading its dataset: the command was not executed)
      "masterdown" -MASTERDOWN (replica with a broken link and serve-stale-data no)
    Runs in daemon threads; stop() closes everything. Counts the requests it got."""

    REPLIES = {
        "garbage": b"?this is not RESP\r\n",
        "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
        "masterdown": b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data "
                      b"is set to 'no'.\r\n",
    }

    def __init__(self, mode, info_from=None):
        import threading
        self.mode = mode
        self.info_from = info_from
        self.port = free_port()
        self.requests = 0       # everything but PING and INFO
        self.pings = 0
        self.infos = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, self.port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self._conns = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        import threading
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _parse_request(buf):
        """(argv, consumed) for one request at the start of buf, or (None, 0)."""
        if not buf:
            return None, 0
        if buf[:1] != b"*":
            end = buf.find(b"\n")
            if end < 0:
                return None, 0
            return buf[:end].strip().split(), end + 1
        end = buf.find(b"\r\n")
        if end < 0:
            return None, 0
        n = int(buf[1:end])
        pos = end + 2
        argv = []
        for _ in range(n):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None, 0
            size = int(buf[pos + 1:end])
            if len(buf) < end + 2 + size + 2:
                return None, 0
            argv.append(buf[end + 2:end + 2 + size])
            pos = end + 2 + size + 2
        return argv, pos

    def _serve(self, conn):
        buf = b""
        conn.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buf += chunk
                out = b""
                while True:
                    argv, used = self._parse_request(buf)
                    if argv is None:
                        break
                    buf = buf[used:]
                    if not argv:
                        continue
                    if argv[0].upper() == b"PING":
                        with self._lock:
                            self.pings += 1
                        out += b"+PONG\r\n"
                        continue
                    if argv[0].upper() == b"CONFIG":
                        # The proxy's health check asks once per connection (databases).
                        out += b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n"
                        continue
                    if argv[0].upper() == b"INFO" and self.info_from is not None:
                        with self._lock:
                            self.infos += 1
                        text = self._replica_info().encode()
                        out += b"$%d\r\n%s\r\n" % (len(text), text)
                        continue
                    with self._lock:
                        self.requests += 1
                    if self.mode == "close":
                        if out:
                            conn.sendall(out)
                        return
                    out += self.REPLIES[self.mode]
                    if self.mode == "garbage":
                        conn.sendall(out)
                        return  # a real broken server would not make sense after this either
                if out:
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()

    def _replica_info(self):
        info = redis.Redis(host=HOST, port=self.info_from, socket_timeout=2).info("replication")
        offset = info["master_repl_offset"]
        return "\r\n".join([
            "# Replication", "role:slave", f"master_host:{HOST}",
            f"master_port:{self.info_from}", "master_link_status:up",
            "master_sync_in_progress:0", f"slave_repl_offset:{offset}",
            f"master_replid:{info['master_replid']}", f"master_repl_offset:{offset}", ""])

    def stop(self):
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(timeout=5)


# -- Redis Sentinel ----------------------------------------------------------------------------

REDIS_SENTINEL = os.environ.get("KP_REDIS_SENTINEL", "redis-sentinel")
SENTINEL_MASTER = "mymaster"


def _pairs(flat):
    """{field: value} (str) from a flat [field, value, ...] list of a SENTINEL reply."""
    out = {}
    for k, v in zip(flat[0::2], flat[1::2]):
        k = k.decode() if isinstance(k, bytes) else str(k)
        v = v.decode() if isinstance(v, bytes) else v
        out[k] = v
    return out


class SlowLink:
    """A TCP relay standing for a slow path to a real server (a sidecar in front of a Redis
    in another zone): each connection's bytes are passed on at `rate` bytes/s each way.
    pause() stops passing anything on (a path that stalled); resume() goes on. Its sockets
    buffer little, so the sender's kernel queue shows how far the far end got."""

    CHUNK = 16 * 1024

    def __init__(self, target_port, rate):
        self.target_port = target_port
        self.rate = rate
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.socks = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set before listen(): accepted sockets inherit it, with the window it implies.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.listener.bind((HOST, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection((HOST, self.target_port))
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                self.socks.append(s)
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                self.flowing.wait()
                time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pause(self):
        self.flowing.clear()

    def resume(self):
        self.flowing.set()

    def close(self):
        self.closed = True
        self.flowing.set()
        self.listener.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


class Sentinel:
    """One redis-sentinel on a fixed loopback port, monitoring `master_name` at master_port.
    Its sentinel.conf is written into its own directory (Sentinel rewrites that file as it
    learns the topology, so a restart keeps what it knew, as a real deployment does)."""

    def __init__(self, workdir, name, master_port, port=None, master_name=SENTINEL_MASTER,
                 quorum=2, down_after_ms=1000, failover_timeout_ms=3000):
        self.name = name
        self.port = port or free_port()
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        self.master_port = master_port
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.proc = None
        self._write_config()

    def _write_config(self):
        m = self.master_name
        self.conf.write_text("\n".join([
            f"port {self.port}",
            f"bind {HOST}",
            "daemonize no",
            "protected-mode no",
            f"dir {self.dir}",
            f"logfile {self.dir / 'sentinel.log'}",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {m} {HOST} {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
            f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {m} 2",
            ""]))

    @property
    def addr(self):
        return f"{HOST}:{self.port}"

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        wait_until(lambda: port_is_free(self.port), 10, what=f"port {self.port} free")
        self.proc = subprocess.Popen([REDIS_SENTINEL, str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        REGISTRY.add(self.proc)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=15):
        wait_answers_ping(self, timeout)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            REGISTRY.discard(self.proc)

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        REGISTRY.discard(self.proc)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- inspection ------------------------------------------------------------------
    def client(self, timeout=5.0):
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout)

    def master_addr(self):
        """(host, port) this Sentinel names for the master, or None."""
        r = self.client(timeout=2).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not r:
            return None
        host, port = r
        return (host.decode() if isinstance(host, bytes) else host), int(port)

    def replicas(self):
        """[{field: value}] of SENTINEL REPLICAS."""
        raw = self.client(timeout=2).execute_command("SENTINEL", "REPLICAS", self.master_name)
        return [_pairs(r) for r in raw]

    def sentinels(self):
        raw = self.client(timeout=2).execute_command("SENTINEL", "SENTINELS", self.master_name)
        return [_pairs(r) for r in raw]

    def master_state(self):
        raw = self.client(timeout=2).execute_command("SENTINEL", "MASTER", self.master_name)
        return _pairs(raw)

    def log_tail(self, n=30):
        try:
            lines = (self.dir / "sentinel.log").read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def __repr__(self):
        return f"<Sentinel {self.name} :{self.port}>"


class SentinelCluster:
    """`n` Sentinels (quorum 2) monitoring a Cluster's primary. start() returns once every
    Sentinel names the primary, knows every replica and every other Sentinel, so a failover
    started right after can get its quorum and a leader.

    Sentinel i waits down_after_ms + i * stagger_ms before it calls the master down. With
    identical settings all of them can reach ODOWN within a few milliseconds and each vote for
    itself; no leader is elected and the next attempt comes 2 x failover-timeout later, which
    would make the failover time (what the tests measure) a lottery. Staggered, the first
    Sentinel to see the master down asks the others for their vote before they start their
    own attempt."""

    def __init__(self, workdir, cluster, n=3, master_name=SENTINEL_MASTER, quorum=2,
                 down_after_ms=1000, failover_timeout_ms=3000, stagger_ms=100):
        self.workdir = Path(workdir)
        self.cluster = cluster
        self.master_name = master_name
        self.sentinels = [Sentinel(self.workdir, f"sentinel{i + 1}", cluster.primary.port,
                                   master_name=master_name, quorum=quorum,
                                   down_after_ms=down_after_ms + i * stagger_ms,
                                   failover_timeout_ms=failover_timeout_ms)
                          for i in range(n)]

    def start(self, timeout=30):
        for s in self.sentinels:
            s.start(wait=False)
        for s in self.sentinels:
            s.wait_ready()
        self.wait_converged(timeout)
        return self

    def wait_converged(self, timeout=30):
        """Every running Sentinel knows the master, the replicas (not down) and the others."""
        running = [s for s in self.sentinels if s.alive]
        want_replicas = {r.port for r in self.cluster.replicas if r.alive}

        def converged():
            for s in running:
                replicas = {int(r["port"]) for r in s.replicas()
                            if "s_down" not in r.get("flags", "")
                            and "disconnected" not in r.get("flags", "")}
                if not want_replicas <= replicas:
                    return False
                if len(s.sentinels()) < len(running) - 1:
                    return False
            return True
        try:
            wait_until(converged, timeout * SLOWDOWN, interval=0.1,
                       what="Sentinels to know the replicas and each other")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n" + "\n".join(f"{s.name}:\n{s.log_tail(15)}"
                                                      for s in running)) from None

    def addrs(self):
        return ",".join(s.addr for s in self.sentinels)

    def master_port(self):
        """The master port every running Sentinel agrees on, or None."""
        ports = set()
        for s in self.sentinels:
            if s.alive:
                a = s.master_addr()
                ports.add(a[1] if a else None)
        return ports.pop() if len(ports) == 1 else None

    def wait_master_changed(self, old_port, timeout=30):
        """Waits until every running Sentinel names a master other than old_port; returns it."""
        def changed():
            p = self.master_port()
            return p if p is not None and p != old_port else None
        try:
            return wait_until(changed, timeout * SLOWDOWN, interval=0.05,
                              what=f"Sentinels to name a master other than :{old_port}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n" + "\n".join(f"{s.name}:\n{s.log_tail(15)}"
                                                      for s in self.sentinels)) from None

    def stop(self):
        for s in self.sentinels:
            s.stop()

    def log_tails(self, n=20):
        return "\n".join(f"--- {s.name} :{s.port} ---\n{s.log_tail(n)}" for s in self.sentinels)


def free_cluster_port():
    """A port for a Redis Cluster node: it and its cluster bus port (+10000) both free, both
    below the ephemeral range."""
    low, _ = _ephemeral_range()
    top = min(low, 32768) - 1 - 10000
    for _ in range(500):
        port = _random_port(10000, top)
        if {port, port + 10000} & _HANDED_OUT:
            continue
        if port_is_free(port) and port_is_free(port + 10000):
            _hand_out(port + 10000)
            return _hand_out(port)
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A real Redis Cluster: `shards` primaries with `replicas` replicas each, made by
    redis-cli --cluster create, all slots covered and every node agreeing before start()
    returns."""

    def __init__(self, workdir, shards=3, replicas=1, node_timeout_ms=1000, extra_args=()):
        self.workdir = Path(workdir)
        self.shards = shards
        self.replicas = replicas
        self.nodes = [
            RedisServer(self.workdir, f"node{i}", port=free_cluster_port(),
                        extra_args=["--cluster-enabled", "yes",
                                    "--cluster-config-file", "nodes.conf",
                                    "--cluster-node-timeout", str(node_timeout_ms),
                                    *extra_args])
            for i in range(shards * (1 + replicas))]

    def start(self):
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready()
        addrs = [f"{HOST}:{n.port}" for n in self.nodes]
        out = subprocess.run([REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas",
                              str(self.replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        self.wait_ok()
        # Replicas are listed once they have synced with their primary.
        wait_until(lambda: sum(len(r) for r in self.primaries().values())
                   == self.shards * self.replicas, 30 * SLOWDOWN, interval=0.1,
                   what="every replica listed in CLUSTER SLOTS")
        return self

    def alive_nodes(self):
        return [n for n in self.nodes if n.alive and not n.stopped]

    def wait_ok(self, timeout=30):
        """Every running node says cluster_state:ok and agrees on who serves each slot."""
        def ok():
            maps = []
            for n in self.alive_nodes():
                try:
                    c = n.client(timeout=1)
                    if c.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                        return False
                    maps.append(sorted((s[0], s[1], s[2][1]) for s in
                                       c.execute_command("CLUSTER", "SLOTS")))
                except redis.RedisError:
                    return False
            return all(m == maps[0] for m in maps)
        wait_until(ok, timeout * SLOWDOWN, interval=0.1, what="cluster state ok everywhere")

    def primaries(self):
        """{port: [replica ports]} per shard, as the cluster says now."""
        for n in self.alive_nodes():
            try:
                slots = n.client(timeout=1).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            out = {}
            for s in slots:
                out.setdefault(s[2][1], set()).update(r[1] for r in s[3:])
            return {p: sorted(r) for p, r in out.items()}
        raise RuntimeError("no node answers CLUSTER SLOTS")

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def owner(self, key):
        """The node (RedisServer) serving `key` as primary now."""
        c = self.alive_nodes()[0].client(timeout=2)
        slot = c.execute_command("CLUSTER", "KEYSLOT", key)
        for s in c.execute_command("CLUSTER", "SLOTS"):
            if s[0] <= slot <= s[1]:
                return self.node(s[2][1])
        raise RuntimeError(f"slot {slot} not served")

    def stop(self):
        for n in self.nodes:
            if n.proc is not None and n.stopped:
                try:
                    n.sigcont()
                except ProcessLookupError:
                    pass
        for n in self.nodes:
            n.stop()

    def seeds(self, count=2):
        return ",".join(f"{HOST}:{n.port}" for n in self.nodes[:count])
