"""TLS on both sides of the proxy, as a user sees it.

Backends: TLS-only redis-server processes (--port 0 --tls-port N), replicas replicating over
TLS, Sentinels reachable only over TLS; the proxy with backend_tls verifies their
certificates (CA, expiry, host name or IP) and presents a client certificate when the
servers require one. A backend whose certificate fails verification is marked down with the
reason in the log; clients get an error reply, not a hang, and the proxy keeps running.

Clients: the proxy's tls_listen port next to its plaintext port (redis-cli --tls, redis-py
ssl=True, raw ssl sockets), optional client certificates, a plaintext client on the TLS port
and a TLS client on the plaintext port failing cleanly, certificates read again on SIGHUP
without dropping open connections, and configuration errors refused at start-up.

Certificates are made once per session with the openssl CLI: a CA, server certificates for
localhost / 127.0.0.1 (two of them, for the rotation test), a client certificate, an expired
server certificate (openssl ca with dates in 2020), one signed by another CA, and one for
other.example only. Everything runs on 127.0.0.1; every wait is bounded."""

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

import fixtures
from fixtures import (HOST, SENTINEL_MASTER, SLOWDOWN, Cluster, RedisServer, Sentinel,
                      SentinelCluster, connect, encode_command, free_port, http_get, metric,
                      SlowLink, read_replies, read_until_closed, run_proxy_once, wait_until)

MB = 1 << 20


# -- certificates -----------------------------------------------------------------------------

OPENSSL_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[ wronghost ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:other.example
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
"""


class Cert:
    def __init__(self, crt, key, cn):
        self.crt, self.key, self.cn = str(crt), str(key), cn

    def __repr__(self):
        return f"<Cert {self.cn}>"


class Certs:
    """All the files, made with the openssl CLI in `d`."""

    def __init__(self, d):
        self.dir = Path(d)
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(OPENSSL_CNF.format(dir=self.dir))
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        (self.dir / "newcerts").mkdir()
        self._serial = 100
        self.ca = self._ca("ca", "kp-test-ca")
        self.other_ca = self._ca("other-ca", "kp-other-ca")
        self.server = self._leaf("server", "kp-server", "server", self.ca)
        self.server_b = self._leaf("server-b", "kp-server-b", "server", self.ca)
        self.client = self._leaf("client", "kp-client", "client", self.ca)
        self.untrusted = self._leaf("untrusted", "kp-untrusted", "server", self.other_ca)
        self.wronghost = self._leaf("wronghost", "kp-wronghost", "wronghost", self.ca)
        self.expired = self._expired("expired", "kp-expired")

    def _run(self, *args):
        r = subprocess.run(["openssl", *args], capture_output=True, timeout=60,
                           cwd=self.dir)
        assert r.returncode == 0, f"openssl {' '.join(args)}:\n{r.stderr.decode()}"

    def _key_and_csr(self, name, cn):
        key, csr = self.dir / f"{name}.key", self.dir / f"{name}.csr"
        self._run("req", "-new", "-config", str(self.cnf), "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                  "-out", str(csr), "-subj", f"/CN={cn}")
        return key, csr

    def _ca(self, name, cn):
        key, crt = self.dir / f"{name}.key", self.dir / f"{name}.crt"
        self._run("req", "-x509", "-config", str(self.cnf), "-extensions", "v3_ca",
                  "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={cn}", "-days", "3650")
        return Cert(crt, key, cn)

    def _leaf(self, name, cn, ext, ca):
        key, csr = self._key_and_csr(name, cn)
        crt = self.dir / f"{name}.crt"
        self._serial += 1
        self._run("x509", "-req", "-in", str(csr), "-CA", ca.crt, "-CAkey", ca.key,
                  "-set_serial", str(self._serial), "-days", "3650", "-sha256",
                  "-extfile", str(self.cnf), "-extensions", ext, "-out", str(crt))
        return Cert(crt, key, cn)

    def _expired(self, name, cn):
        key, csr = self._key_and_csr(name, cn)
        crt = self.dir / f"{name}.crt"
        self._run("ca", "-batch", "-config", str(self.cnf), "-cert", self.ca.crt,
                  "-keyfile", self.ca.key, "-in", str(csr), "-out", str(crt), "-notext",
                  "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                  "-extfile", str(self.cnf), "-extensions", "server")
        return Cert(crt, key, cn)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    c = Certs(tmp_path_factory.mktemp("certs"))
    # What the tests rely on, checked with openssl itself.
    out = subprocess.run(["openssl", "x509", "-in", c.expired.crt, "-noout", "-checkend", "0"],
                         capture_output=True, timeout=30)
    assert out.returncode != 0, "the 'expired' certificate has not expired"
    return c


# -- TLS servers ------------------------------------------------------------------------------

def tls_redis_client(port, certs, timeout=5.0, **kw):
    """A direct client of a TLS-only server, for inspection: presents the client certificate
    (servers may require one) and does not verify (some servers have bad certificates on
    purpose)."""
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, ssl=True, ssl_cert_reqs="none",
                       ssl_certfile=certs.client.crt, ssl_keyfile=certs.client.key, **kw)


class TlsRedisServer(RedisServer):
    """A redis-server that listens only for TLS (--port 0 --tls-port N); a replica replicates
    over TLS. client() is a TLS client, so start(), wait_link_up(), commandstats() work."""

    def __init__(self, workdir, name, certs, cert=None, auth_clients="no", **kw):
        self.certs = certs
        self.cert = cert or certs.server
        self.auth_clients = auth_clients
        super().__init__(workdir, name, **kw)

    def args(self, extra_args=()):
        args = super().args(extra_args)
        args[args.index("--port") + 1] = "0"
        args += ["--tls-port", str(self.port), "--tls-cert-file", self.cert.crt,
                 "--tls-key-file", self.cert.key, "--tls-ca-cert-file", self.certs.ca.crt,
                 "--tls-auth-clients", self.auth_clients]
        if self.replicaof:
            args += ["--tls-replication", "yes"]
        return args

    def client(self, timeout=5.0, **kw):
        return tls_redis_client(self.port, self.certs, timeout, **kw)


def tls_cluster(workdir, certs, replicas=1, auth_clients="no", cert=None):
    c = Cluster(workdir, replicas=0)
    c.primary = TlsRedisServer(c.workdir, "primary", certs, cert=cert, auth_clients=auth_clients)
    c.replicas = [TlsRedisServer(c.workdir, f"replica{i + 1}", certs, cert=cert,
                                 auth_clients=auth_clients, replicaof=c.primary.port)
                  for i in range(replicas)]
    return c


@pytest.fixture
def cluster_factory(tmp_path):
    started = []

    def make(name, *args, **kw):
        c = tls_cluster(tmp_path / name, *args, **kw)
        started.append(c)
        return c.start()
    yield make
    for c in started:
        c.stop()


# -- proxy helpers ----------------------------------------------------------------------------

def start_proxy(make_proxy, primary, replicas=(), extra=(), backend_tls=None):
    """A proxy with an admin port (proxy.admin); backend_tls: the Certs for --backend-tls."""
    admin = free_port()
    args = ["--admin-listen", f"{HOST}:{admin}"]
    if backend_tls is not None:
        args += ["--backend-tls", "true", "--backend-tls-ca-file", backend_tls.ca.crt]
    p = make_proxy(primary.port if primary is not None else None,
                   [r.port for r in replicas], extra_args=args + list(extra))
    p.admin = admin
    return p


def metrics(proxy):
    status, text = http_get(proxy.admin, "/metrics")
    assert status == 200, (status, text[:300])
    return text


def series(text, name, **labels):
    """The value of the one series of metric `name` whose labels include `labels`, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    return None


def backend_up(proxy, role, backend=None):
    labels = {"role": role}
    if backend is not None:
        labels["backend"] = backend
    return series(metrics(proxy), "kompress_backend_up", **labels)


def wait_backends_up(proxy, primary, replicas=(), timeout=15):
    def ready():
        text = metrics(proxy)
        return (series(text, "kompress_backend_up", role="primary",
                       backend=f"{HOST}:{primary.port}") == 1
                and all(series(text, "kompress_replica_serves_reads",
                               backend=f"{HOST}:{r.port}") == 1 for r in replicas))
    try:
        wait_until(ready, timeout * SLOWDOWN, what="proxy: backends up, replicas serving reads")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{metrics(proxy)}\n{proxy.stderr()[-3000:]}") from None


def tls_context(certs, cert=None, verify=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(certs.ca.crt)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.crt, cert.key)
    return ctx


def tls_socket(port, certs, cert=None, verify=True, server_hostname="localhost", timeout=10.0):
    raw = socket.create_connection((HOST, port), timeout=timeout)
    try:
        return tls_context(certs, cert, verify).wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def proxy_tls_client(port, certs, cert=None, timeout=10.0, **kw):
    """redis-py over TLS to the proxy's tls_listen, verifying its certificate and name."""
    extra = {}
    if cert is not None:
        extra = {"ssl_certfile": cert.crt, "ssl_keyfile": cert.key}
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, ssl=True, ssl_cert_reqs="required",
                       ssl_ca_certs=certs.ca.crt, ssl_check_hostname=True, **extra, **kw)


def timed_error(fn, limit):
    """Runs fn(), which must fail with a Redis error reply (not a dropped connection, not a
    timeout) within `limit` seconds; returns (message, seconds)."""
    t0 = time.monotonic()
    try:
        got = fn()
    except redis.ResponseError as exc:
        took = time.monotonic() - t0
        assert took < limit, f"the error took {took:.1f}s (limit {limit:.1f}s): {exc}"
        return str(exc), took
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"expected an error reply, got {type(exc).__name__}: {exc} "
                             f"after {time.monotonic() - t0:.1f}s") from None
    raise AssertionError(f"expected an error reply, got {got!r}")


class PlainLoad:
    """A plaintext client through the proxy's plaintext port (SET then GET of its own keys)
    in a thread, counting errors and wrong values."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.ops, self.errors, self.wrong = 0, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        c = self.proxy.client(timeout=10)
        i = 0
        while not self._stop.is_set() and i < 200_000:
            i += 1
            try:
                c.set(f"plain:{i % 50}", i)
                got = c.get(f"plain:{i % 50}")
                if got != str(i).encode():
                    self.wrong.append((i, got))
            except Exception as exc:  # noqa: BLE001
                self.errors.append(repr(exc))
            self.ops += 1
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the plaintext client hung"


def redis_cli_tls(port, certs, *cmd, cert=None):
    args = ["redis-cli", "--tls", "--cacert", certs.ca.crt, "-h", HOST, "-p", str(port)]
    if cert is not None:
        args += ["--cert", cert.crt, "--key", cert.key]
    r = subprocess.run(args + list(cmd), capture_output=True, timeout=20 * SLOWDOWN,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.decode().strip(), r.stderr.decode().strip()


# -- 1. TLS backends, TLS listener ------------------------------------------------------------

def test_tls_backends_replica_reads_and_tls_listener(cluster_factory, make_proxy, certs):
    c = cluster_factory("c", certs, replicas=1)
    replica = c.replicas[0]
    tls_port = free_port()
    proxy = start_proxy(make_proxy, c.primary, c.replicas, backend_tls=certs, extra=[
        "--tls-listen", f"{HOST}:{tls_port}", "--tls-cert-file", certs.server.crt,
        "--tls-key-file", certs.server.key])
    wait_backends_up(proxy, c.primary, c.replicas)
    text = metrics(proxy)
    assert series(text, "kompress_backend_up", role="primary",
                  backend=f"{HOST}:{c.primary.port}") == 1, text
    assert series(text, "kompress_backend_up", role="replica",
                  backend=f"{HOST}:{replica.port}") == 1, text

    # Plaintext clients, TLS backends: writes reach the primary.
    pc = proxy.client()
    assert pc.set("tls:k", "v1") is True
    assert pc.get("tls:k") == b"v1"
    assert c.primary.client().get("tls:k") == b"v1"
    pc.mset({f"tls:r{i}": f"v{i}" for i in range(50)})
    c.wait_replicated()
    assert replica.client().get("tls:r49") == b"v49"

    # A client that has not written reads from the replica (over TLS), not the primary.
    before = c.snapshot("get")
    reader = proxy.client()
    for i in range(50):
        assert reader.get(f"tls:r{i}") == f"v{i}".encode()
    after = c.snapshot("get")
    assert after["replica1"] - before["replica1"] >= 50, (before, after)
    assert after["primary"] == before["primary"], (before, after)

    # The proxy's own TLS listener: redis-cli --tls.
    rc, out, err = redis_cli_tls(tls_port, certs, "SET", "cli:k", "hello")
    assert (rc, out) == (0, "OK"), (rc, out, err)
    c.wait_replicated()  # the GET is another client's: it may be a replica's to answer
    rc, out, err = redis_cli_tls(tls_port, certs, "GET", "cli:k")
    assert (rc, out) == (0, "hello"), (rc, out, err)
    assert c.primary.client().get("cli:k") == b"hello"

    # redis-py with ssl=True, verifying the certificate and the name 127.0.0.1.
    tc = proxy_tls_client(tls_port, certs)
    assert tc.ping() is True
    assert tc.set("tlsc:k", "x") is True
    assert tc.get("tlsc:k") == b"x"
    pipe = tc.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"tlsc:p{i}", i)
        pipe.get(f"tlsc:p{i}")
    res = pipe.execute()
    assert res[0::2] == [True] * 300
    assert res[1::2] == [str(i).encode() for i in range(300)]
    big = os.urandom(1 << 20)
    assert tc.set("tlsc:big", big) is True
    assert tc.get("tlsc:big") == big
    assert c.primary.client().get("tlsc:big") == big
    c.wait_replicated()
    # ... and the 1 MB value read back from the replica by a client that has not written.
    before = c.snapshot("get")
    assert proxy_tls_client(tls_port, certs).get("tlsc:big") == big
    assert c.snapshot("get")["replica1"] == before["replica1"] + 1

    # HELLO 3 over a raw TLS socket: a RESP3 map, then RESP3 replies.
    with tls_socket(tls_port, certs) as s:
        s.sendall(encode_command("HELLO", "3"))
        (hello,), rest = read_replies(s, 1, timeout=10 * SLOWDOWN)
        assert hello.startswith(b"%"), hello[:200]
        assert b"proto" in hello
        s.sendall(encode_command("SET", "tls:r3", "x3") + encode_command("GET", "tls:r3")
                  + encode_command("HGETALL", "tls:nohash"))
        replies, _ = read_replies(s, 3, timeout=10 * SLOWDOWN, buf=rest)
        assert replies == [b"+OK\r\n", b"$2\r\nx3\r\n", b"%0\r\n"], replies

    assert proxy.alive


def test_command_table_read_from_a_tls_primary(cluster_factory, make_proxy, certs):
    """command_table primary (the default): the start-up COMMAND request reaches a TLS-only
    primary too (the same table a plaintext primary gives, no warning)."""
    c = cluster_factory("cmdtable", certs, replicas=0)
    proxy = start_proxy(make_proxy, c.primary, backend_tls=certs)
    wait_until(lambda: backend_up(proxy, "primary") == 1, 10 * SLOWDOWN, what="primary up")
    log = proxy.stderr()
    assert "could not read COMMAND" not in log, log[-2000:]
    assert re.search(r"command table: \d+ rows built in, \d+ more learned from \S+",
                     log), log[-2000:]



def test_large_value_over_a_slow_tls_path_is_not_late(cluster_factory, make_proxy, certs):
    """A large SET on a TLS connection still in its handshake: its plaintext is held by the
    TLS stream until the handshake is done, and counts as not yet sent (it once did not, and
    the first SET on a new connection timed out while crossing, about one run in two). Each
    database's connection is a new one: 1.5 MB over 1 MB/s with `timeout` 0.4 s."""
    c = cluster_factory("slowtls", certs, replicas=0)
    link = SlowLink(c.primary.port, 1 * MB / SLOWDOWN)
    try:
        timeout = 0.4 * SLOWDOWN
        proxy = make_proxy(link.port, [], use_base_args=False, extra_args=[
            "--backend-tls", "true", "--backend-tls-ca-file", certs.ca.crt,
            "--timeout", str(timeout), "--workers", "1"])
        value = b"t" * int(1.5 * MB)
        for db in (1, 2, 3):
            cl = proxy.client(timeout=30 * SLOWDOWN, db=db)
            t0 = time.monotonic()
            assert cl.set("slow:tls", value) is True, db
            took = time.monotonic() - t0
            print(f"db {db}: 1.5 MB SET over TLS at 1 MB/s in {took:.2f} s (timeout {timeout} s)")
            assert took > timeout
            assert c.primary.client(timeout=10, db=db).strlen("slow:tls") == len(value)
    finally:
        link.close()


# -- 2. mutual TLS to backends ----------------------------------------------------------------

def test_mutual_tls_to_backends(cluster_factory, make_proxy, certs):
    c = cluster_factory("mtls", certs, replicas=1, auth_clients="yes")
    replica = c.replicas[0]
    # With the client certificate: everything works.
    good = start_proxy(make_proxy, c.primary, c.replicas, backend_tls=certs, extra=[
        "--backend-tls-cert-file", certs.client.crt,
        "--backend-tls-key-file", certs.client.key])
    wait_backends_up(good, c.primary, c.replicas)
    gc = good.client()
    assert gc.set("mtls:k", "v") is True
    assert gc.get("mtls:k") == b"v"
    c.wait_replicated()
    before = c.snapshot("get")
    assert good.client().get("mtls:k") == b"v"
    assert c.snapshot("get")["replica1"] == before["replica1"] + 1

    # Without it the servers refuse the handshake: the backends are down, with the reason.
    bad = start_proxy(make_proxy, c.primary, c.replicas, backend_tls=certs)

    def both_down():
        text = metrics(bad)
        return (series(text, "kompress_backend_up", role="primary") == 0
                and series(text, "kompress_backend_up", role="replica") == 0)
    wait_until(both_down, 10 * SLOWDOWN, what="backends without client certificate down")
    wait_until(lambda: re.search(rf"primary {HOST}:{c.primary.port} marked down: .*TLS.*"
                                 r"certificate required", bad.stderr()),
               5 * SLOWDOWN, what="log line naming the TLS failure")
    bc = bad.client(timeout=30)
    msg, _ = timed_error(lambda: bc.set("mtls:k2", "v"), 10 * SLOWDOWN)
    msg2, _ = timed_error(lambda: bc.get("mtls:k"), 10 * SLOWDOWN)
    print("client errors:", msg, "|", msg2)
    assert bad.alive and bc.ping() is True
    assert c.primary.client().get("mtls:k2") is None
    # The first proxy was not disturbed.
    assert gc.get("mtls:k") == b"v"


# -- 3. bad backend certificates --------------------------------------------------------------

BAD_CERTS = [
    # (case, certificate attribute, host the proxy connects to, reason in the log)
    ("untrusted_ca", "untrusted", HOST, "unable to get local issuer certificate"),
    ("wrong_ip", "wronghost", HOST, "IP address mismatch"),
    ("wrong_hostname", "wronghost", "localhost", "hostname mismatch"),
    ("expired", "expired", HOST, "certificate has expired"),
]


@pytest.mark.parametrize("case,attr,host,reason", BAD_CERTS, ids=[b[0] for b in BAD_CERTS])
def test_bad_backend_certificate(cluster_factory, make_proxy, certs, case, attr, host, reason):
    c = cluster_factory(case, certs, replicas=0, cert=getattr(certs, attr))
    addr = f"{host}:{c.primary.port}"
    base = ["--primary", addr]

    # Verified (the default): refused, with the reason.
    p = start_proxy(make_proxy, None, backend_tls=certs, extra=base)
    wait_until(lambda: backend_up(p, "primary") == 0, 10 * SLOWDOWN,
               what="the primary marked down")
    wait_until(lambda: re.search(rf"primary {re.escape(addr)} marked down: .*"
                                 rf"certificate verification failed: {reason}", p.stderr()),
               5 * SLOWDOWN, what=f"a log line with '{reason}'")
    pc = p.client(timeout=30)
    msg, took = timed_error(lambda: pc.set("bad:k", "v"), 10 * SLOWDOWN)
    print(f"client error after {took:.2f}s: {msg}")
    timed_error(lambda: pc.get("bad:k"), 10 * SLOWDOWN)
    assert p.alive and pc.ping() is True
    assert http_get(p.admin, "/healthz")[0] in (200, 503)
    assert c.primary.client().get("bad:k") is None

    # --backend-tls-verify false (testing only): accepted.
    q = start_proxy(make_proxy, None, backend_tls=certs,
                    extra=base + ["--backend-tls-verify", "false"])
    wait_until(lambda: backend_up(q, "primary") == 1, 10 * SLOWDOWN, what="primary up")
    qc = q.client()
    assert qc.set("bad:k", "noverify") is True
    assert qc.get("bad:k") == b"noverify"
    assert c.primary.client().get("bad:k") == b"noverify"

    if attr == "wronghost":
        # The name the certificate carries, given explicitly: accepted, verification on.
        r = start_proxy(make_proxy, None, backend_tls=certs,
                        extra=base + ["--backend-tls-server-name", "other.example"])
        wait_until(lambda: backend_up(r, "primary") == 1, 10 * SLOWDOWN, what="primary up")
        rc = r.client()
        assert rc.set("bad:k", "by-name") is True
        assert rc.get("bad:k") == b"by-name"
    # The refusing proxy still refuses (nothing was cached), and is still alive.
    timed_error(lambda: pc.get("bad:k"), 10 * SLOWDOWN)
    assert p.alive


def test_good_certificate_by_hostname(cluster_factory, make_proxy, certs):
    """The counterpart of wrong_hostname: the primary given as localhost, its certificate for
    DNS:localhost, verification on."""
    c = cluster_factory("byname", certs, replicas=0)
    p = start_proxy(make_proxy, None, backend_tls=certs,
                    extra=["--primary", f"localhost:{c.primary.port}"])
    wait_until(lambda: backend_up(p, "primary") == 1, 10 * SLOWDOWN,
               what="primary (localhost) up")
    pc = p.client()
    assert pc.set("byname:k", "v") is True
    assert pc.get("byname:k") == b"v"


# -- 4. the client side -----------------------------------------------------------------------

def test_client_side_tls(cluster, make_proxy, certs):
    tls_port = free_port()
    proxy = start_proxy(make_proxy, cluster.primary, cluster.replicas, extra=[
        "--tls-listen", f"{HOST}:{tls_port}", "--tls-cert-file", certs.server.crt,
        "--tls-key-file", certs.server.key, "--tls-auth-clients", "true",
        "--tls-ca-file", certs.ca.crt])
    limit = 10 * SLOWDOWN
    with PlainLoad(proxy) as load:
        time.sleep(0.2)
        # Plaintext on the TLS port: closed, no reply, no hang.
        with connect(tls_port) as s:
            s.sendall(b"PING\r\n" + encode_command("PING"))
            data, closed = read_until_closed(s, timeout=limit)
        assert closed, f"plaintext client on the TLS port not closed within {limit}s: {data!r}"
        assert b"PONG" not in data

        # TLS on the plaintext port: the handshake fails at once.
        t0 = time.monotonic()
        with pytest.raises((ssl.SSLError, ConnectionError)) as ei:
            s = tls_socket(proxy.port, certs, cert=certs.client, timeout=limit)
            s.close()
        assert time.monotonic() - t0 < limit
        print("TLS on the plaintext port:", repr(ei.value))

        # No client certificate: refused (with TLS 1.3 the refusal arrives after the
        # client's side of the handshake, so a request is sent and must get no reply).
        for who, cert in (("no certificate", None), ("another CA's", certs.untrusted)):
            t0 = time.monotonic()
            try:
                s = tls_socket(tls_port, certs, cert=cert, timeout=limit)
                with s:
                    s.sendall(encode_command("PING"))
                    data, closed = read_until_closed(s, timeout=limit)
                got = ("closed", data) if closed else ("open", data)
            except (ssl.SSLError, ConnectionError) as exc:
                got = ("refused", repr(exc))
            assert got[0] in ("refused", "closed") and b"PONG" not in str(got[1]).encode(), \
                f"client with {who} certificate: {got}"
            assert time.monotonic() - t0 < limit, f"client with {who}: took too long"

        # With the client certificate: works.
        tc = proxy_tls_client(tls_port, certs, cert=certs.client)
        assert tc.ping() is True
        assert tc.set("cs:k", "v") is True
        assert tc.get("cs:k") == b"v"
        # redis-cli is another client: read-your-writes covers only the writer's own reads,
        # so its GET may reach a replica that has not applied the SET yet (it did once, with
        # the load running).
        cluster.wait_replicated()
        rc, out, err = redis_cli_tls(tls_port, certs, "GET", "cs:k", cert=certs.client)
        assert (rc, out) == (0, "v"), (rc, out, err)
        time.sleep(0.2)
    assert load.errors == [] and load.wrong == [], (load.errors[:5], load.wrong[:5])
    assert load.ops > 20, load.ops
    assert proxy.alive
    # The plaintext client on the TLS port and the two refused certificates are counted
    # (the TLS client on the plaintext port is a protocol error there, not a TLS failure).
    assert metric(metrics(proxy), "kompress_tls_failures_total") >= 3


# -- 5. certificates read again on SIGHUP -----------------------------------------------------

def reloads(proxy, result):
    return metric(metrics(proxy), f'kompress_config_reloads_total{{result="{result}"}}')


def peer_cn(port, certs):
    with tls_socket(port, certs) as s:
        subject = dict(x[0] for x in s.getpeercert()["subject"])
        s.sendall(encode_command("PING"))
        replies, _ = read_replies(s, 1, timeout=10 * SLOWDOWN)
        assert replies == [b"+PONG\r\n"], replies
        return subject["commonName"]


def replace_file(src, dst):
    tmp = Path(str(dst) + ".new")
    tmp.write_bytes(Path(src).read_bytes())
    os.replace(tmp, dst)


def test_sighup_reloads_certificates_without_dropping_connections(cluster, make_proxy, certs,
                                                                  tmp_path):
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    replace_file(certs.server.crt, crt)
    replace_file(certs.server.key, key)
    tls_port = free_port()
    proxy = start_proxy(make_proxy, cluster.primary, cluster.replicas, extra=[
        "--tls-listen", f"{HOST}:{tls_port}", "--tls-cert-file", str(crt),
        "--tls-key-file", str(key)])
    assert peer_cn(tls_port, certs) == "kp-server"

    # An open TLS connection (raw socket: a drop cannot be hidden by a reconnect).
    s = tls_socket(tls_port, certs)
    buf = b""

    def roundtrip(i):
        nonlocal buf
        s.sendall(encode_command("SET", "rot:k", f"v{i}") + encode_command("GET", "rot:k"))
        replies, buf = read_replies(s, 2, timeout=10 * SLOWDOWN, buf=buf)
        assert replies == [b"+OK\r\n", b"$%d\r\nv%d\r\n" % (len(f"v{i}"), i)], replies

    try:
        roundtrip(1)
        with PlainLoad(proxy) as load:
            replace_file(certs.server_b.crt, crt)
            replace_file(certs.server_b.key, key)
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_until(lambda: reloads(proxy, "ok") == 1, 10 * SLOWDOWN, what="reload ok")
            roundtrip(2)  # the open connection survived
            assert peer_cn(tls_port, certs) == "kp-server-b"

            # A reload with an unusable key fails as a whole; certificate B stays in use.
            key.write_text("not a key\n")
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_until(lambda: reloads(proxy, "failed") == 1, 10 * SLOWDOWN,
                       what="reload failed counted")
            assert reloads(proxy, "ok") == 1
            roundtrip(3)
            assert peer_cn(tls_port, certs) == "kp-server-b"
            # A missing key file: the same.
            key.unlink()
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_until(lambda: reloads(proxy, "failed") == 2, 10 * SLOWDOWN,
                       what="second failed reload counted")
            roundtrip(4)
            assert peer_cn(tls_port, certs) == "kp-server-b"
        assert load.errors == [] and load.wrong == [], (load.errors[:5], load.wrong[:5])
    finally:
        s.close()
    log = proxy.stderr()
    assert re.search(r"reload failed, configuration unchanged: .*tls", log), log[-2000:]
    assert proxy.alive


# -- 6. Sentinel over TLS ---------------------------------------------------------------------

class TlsSentinel(Sentinel):
    """A redis-sentinel reachable only over TLS that also talks TLS to the servers and the
    other Sentinels (tls-replication yes)."""

    def __init__(self, workdir, name, master_port, certs, **kw):
        self.certs = certs
        super().__init__(workdir, name, master_port, **kw)

    def _write_config(self):
        super()._write_config()
        text = self.conf.read_text().replace(f"port {self.port}\n", "port 0\n", 1)
        c = self.certs
        self.conf.write_text(text + "\n".join([
            f"tls-port {self.port}", f"tls-cert-file {c.server.crt}",
            f"tls-key-file {c.server.key}", f"tls-ca-cert-file {c.ca.crt}",
            "tls-auth-clients no", "tls-replication yes", ""]))

    def client(self, timeout=5.0):
        return tls_redis_client(self.port, self.certs, timeout)


def test_sentinel_over_tls(cluster_factory, make_proxy, certs, tmp_path):
    c = cluster_factory("sc", certs, replicas=1)
    sc = SentinelCluster(tmp_path / "sentinels", c)
    sc.sentinels = [TlsSentinel(sc.workdir, f"sentinel{i + 1}", c.primary.port, certs,
                                down_after_ms=1000 + i * 100)
                    for i in range(3)]
    try:
        sc.start()
        assert sc.master_port() == c.primary.port
        admin = free_port()
        proxy = make_proxy(None, (), use_base_args=False, extra_args=[
            "--sentinels", sc.addrs(), "--sentinel-master", SENTINEL_MASTER,
            "--workers", "2", "--health-check-interval", "0.2", "--timeout", "1",
            "--admin-listen", f"{HOST}:{admin}", "--backend-tls", "true",
            "--backend-tls-ca-file", certs.ca.crt])
        proxy.admin = admin
        wait_backends_up(proxy, c.primary, c.replicas)
        text = metrics(proxy)
        for s in sc.sentinels:
            assert series(text, "kompress_sentinel_up", sentinel=s.addr) == 1, text
        pc = proxy.client()
        assert pc.set("sent:k", "v") is True
        assert pc.get("sent:k") == b"v"
        assert c.primary.client().get("sent:k") == b"v"
        c.wait_replicated()
        before = c.snapshot("get")
        assert proxy.client().get("sent:k") == b"v"
        assert c.snapshot("get")["replica1"] == before["replica1"] + 1
        assert proxy.alive
    finally:
        sc.stop()


# -- configuration errors ---------------------------------------------------------------------

def base_args():
    return ["--listen", f"{HOST}:{free_port()}", "--primary", f"{HOST}:{free_port()}"]


def test_config_error_tls_listen_without_certificate():
    r = run_proxy_once(base_args() + ["--tls-listen", f"{HOST}:{free_port()}"])
    err = r.stderr.decode().strip()
    assert r.returncode == 2, (r.returncode, err)
    assert len(err.splitlines()) == 1 and "tls_cert_file" in err, err


def test_config_error_key_does_not_match_certificate(certs):
    r = run_proxy_once(base_args() + ["--tls-listen", f"{HOST}:{free_port()}",
                                      "--tls-cert-file", certs.server.crt,
                                      "--tls-key-file", certs.client.key])
    err = r.stderr.decode().strip()
    assert r.returncode == 2, (r.returncode, err)
    last = err.splitlines()[-1]
    assert certs.client.key in last and re.search("mismatch|does not match", last), err
    assert len(err.splitlines()) == 1, f"more than the one-line error:\n{err}"


def test_config_error_missing_backend_ca_file(cluster_factory, certs):
    """A CA file that does not exist, with a live TLS primary: refused at once, naming it."""
    c = cluster_factory("cfg", certs, replicas=0)
    missing = str(Path(certs.dir) / "missing-ca.crt")
    t0 = time.monotonic()
    r = run_proxy_once(["--listen", f"{HOST}:{free_port()}", "--primary",
                        f"{HOST}:{c.primary.port}", "--backend-tls", "true",
                        "--backend-tls-ca-file", missing], timeout=30 * SLOWDOWN)
    took = time.monotonic() - t0
    err = r.stderr.decode().strip()
    assert r.returncode == 2, (r.returncode, err)
    assert missing in err.splitlines()[-1], err
    assert took < 5 * SLOWDOWN, f"took {took:.1f}s: {err}"
    assert len(err.splitlines()) == 1, f"more than the one-line error:\n{err}"


def listening_ports(pid):
    """The TCP ports process `pid` listens on (its socket inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def test_tls_only_no_plaintext_port(cluster, certs, tmp_path):
    """`listen` empty with `tls_listen`: the proxy opens no plaintext port at all (for
    deployments where nothing may travel unencrypted); without tls_listen that is refused."""
    r = run_proxy_once(["--listen", "", "--primary", f"{HOST}:{free_port()}", "--check-config"])
    assert r.returncode == 2 and b"listen" in r.stderr and b"tls_listen" in r.stderr, r
    port = free_port()
    log = open(tmp_path / "tls-only.log", "wb")
    proc = subprocess.Popen(
        [str(fixtures.PROXY_BIN), "--listen", "",
         "--tls-listen", f"{HOST}:{port}", "--tls-cert-file", certs.server.crt,
         "--tls-key-file", certs.server.key, "--primary", f"{HOST}:{cluster.primary.port}",
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    fixtures.REGISTRY.add(proc)
    try:
        wait_until(lambda: fixtures.port_accepts(port), 15 * SLOWDOWN, what="the TLS port")
        c = proxy_tls_client(port, certs)
        assert c.set("tlsonly:k", "v") is True and c.get("tlsonly:k") == b"v"
        text = (tmp_path / "tls-only.log").read_text()
        assert f"listening on {HOST}:{port} (TLS)" in text, text
        # The process listens on nothing else (its only listening socket is the TLS one).
        assert listening_ports(proc.pid) == [port]
    finally:
        fixtures.stop_process(proc)
        fixtures.REGISTRY.discard(proc)
        log.close()


# -- Redis Cluster over TLS -------------------------------------------------------------------

def test_redis_cluster_over_tls(certs, make_proxy, tmp_path):
    """A TLS-only Redis Cluster (3 primaries + 3 replicas, tls-cluster and tls-replication):
    the proxy reads the slot map, routes by slot and reads from the replicas, all over TLS."""
    from fixtures import free_cluster_port
    nodes = [TlsRedisServer(tmp_path / "rc", f"node{i}", certs, port=free_cluster_port(),
                            extra_args=["--cluster-enabled", "yes", "--cluster-config-file",
                                        "nodes.conf", "--cluster-node-timeout", "1000",
                                        "--tls-cluster", "yes", "--tls-replication", "yes"])
             for i in range(6)]
    try:
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_ready()
        out = subprocess.run(["redis-cli", "--tls", "--cacert", certs.ca.crt, "--cert",
                              certs.client.crt, "--key", certs.client.key, "--cluster", "create",
                              *[f"{HOST}:{n.port}" for n in nodes], "--cluster-replicas", "1",
                              "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr

        def listed():
            try:
                slots = nodes[0].client().execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                return False
            return len(slots) == 3 and all(len(s) >= 4 for s in slots)
        wait_until(listed, 30 * SLOWDOWN, 0.1, what="TLS cluster with its replicas")
        proxy = make_proxy(None, [], extra_args=[
            "--cluster-nodes", f"{HOST}:{nodes[0].port},{HOST}:{nodes[1].port}",
            "--backend-tls", "true", "--backend-tls-ca-file", certs.ca.crt,
            "--backend-tls-cert-file", certs.client.crt, "--backend-tls-key-file",
            certs.client.key])
        c = proxy.client()

        def serving():
            try:
                return all(c.set(f"tls:{{{t}}}", t) for t in "abcdef") and c.execute_command(
                    "PROXY", "INFO").decode().count("role=replica,up=1,serving=1") == 3
            except redis.RedisError:
                return False
        wait_until(serving, 30 * SLOWDOWN, 0.1, what="proxy serving the TLS cluster")
        keys = {f"tk:{i}": str(i) for i in range(300)}
        assert c.mset(keys) is True
        time.sleep(0.5)  # the replicas have the writes (read-your-writes would use primaries)
        assert c.mget(list(keys)) == [v.encode() for v in keys.values()]
        assert c.dbsize() == 300 + 6
        replica_gets = 0
        for n in nodes:
            stats = n.client().info("commandstats")
            role = n.client().info("replication")["role"]
            if role == "slave":
                replica_gets += stats.get("cmdstat_mget", {}).get("calls", 0)
        assert replica_gets > 0
    finally:
        for n in nodes:
            n.stop()
