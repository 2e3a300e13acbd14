"""Bad input and process behaviour: malformed RESP gets `-ERR Protocol error` and a close
(like Redis) while other clients carry on; wire limits; start-up rejection of bad config
with one clear line; --help/--version/--check-config; the original REDIS_* variables with no
file; SIGTERM drains in-flight pipelines and exits 0."""

import os
import select
import signal
import socket
import struct
import time

import pytest
import redis

from fixtures import (HOST, SLOWDOWN, Proxy, connect, delta, dump_proxy_log,
                      encode_command, free_port, http_get, metric, port_accepts, raw_command,
                      read_replies, read_until_closed, reply_depth, require_proxy_bin,
                      run_proxy_once, wait_until)

MAX_BULK = 1024 * 1024
MAX_ARRAY = 1000


@pytest.fixture(scope="module")
def limited_proxy(cluster, tmp_path_factory):
    require_proxy_bin()
    p = Proxy(tmp_path_factory.mktemp("limited"), cluster.primary.port,
              [r.port for r in cluster.replicas],
              extra_args=["--max-bulk-bytes", str(MAX_BULK),
                          "--max-array-len", str(MAX_ARRAY)], name="limited")
    try:
        p.start()
        yield p
    finally:
        p.stop()
        dump_proxy_log(p)


def assert_protocol_error_and_close(port, payload):
    with connect(port) as s:
        s.sendall(payload)
        data, closed = read_until_closed(s, timeout=5 * SLOWDOWN)
    assert data.startswith(b"-ERR Protocol error"), f"{payload[:40]!r} -> {data[:200]!r}"
    assert data.endswith(b"\r\n") and data.count(b"\r\n") == 1, data[:200]
    assert closed, f"{payload[:40]!r}: connection not closed after the protocol error"


def assert_limit_error_and_close(port, payload, limit):
    """A well-formed request over a configured limit: an error naming the limit, then close."""
    with connect(port) as s:
        s.sendall(payload)
        data, closed = read_until_closed(s, timeout=5 * SLOWDOWN)
    assert data.startswith(b"-ERR kompress: request over limits.%s (" % limit.encode()), \
        f"{payload[:40]!r} -> {data[:200]!r}"
    assert data.endswith(b"\r\n") and data.count(b"\r\n") == 1, data[:200]
    assert closed, f"{payload[:40]!r}: connection not closed after the limit error"


def assert_still_serving(proxy, bystander):
    """The bystander connection (opened before the bad client) and a new one both work."""
    bystander.sendall(encode_command("ECHO", "still here") + b"PING\r\n")
    assert read_replies(bystander, 2)[0] == [b"$10\r\nstill here\r\n", b"+PONG\r\n"]
    c = proxy.client()
    assert c.set("proto:alive", "1") is True
    assert c.ping() is True


MALFORMED = {
    "non-numeric multibulk length": b"*abc\r\n",
    "negative bulk length": b"*3\r\n$-5\r\n",
    "non-numeric bulk length": b"*1\r\n$abc\r\n",
    "bulk where $ expected": b"*1\r\nfoo\r\n",
    "multibulk count over INT_MAX": b"*3000000000\r\n",
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_resp_error_and_close(proxy, payload):
    with connect(proxy.port) as bystander:
        bystander.sendall(b"PING\r\n")
        read_replies(bystander, 1)
        assert_protocol_error_and_close(proxy.port, payload)
        assert_still_serving(proxy, bystander)


@pytest.mark.parametrize("payload,limit", [
    (b"*2\r\n$3\r\nGET\r\n$%d\r\n" % (MAX_BULK + 1), "max_bulk_bytes"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (10 * MAX_BULK), "max_bulk_bytes"),
    (b"*%d\r\n" % (MAX_ARRAY + 1), "max_array_len"),
    (b"*%d\r\n$4\r\nMGET\r\n" % (MAX_ARRAY + 5), "max_array_len"),
], ids=["bulk over max-bulk-bytes", "SET value over max-bulk-bytes",
        "array over max-array-len", "MGET over max-array-len"])
def test_configured_limits_error_and_close(limited_proxy, payload, limit):
    with connect(limited_proxy.port) as bystander:
        # The limit is checked on the announced length, before any data arrives.
        assert_limit_error_and_close(limited_proxy.port, payload, limit)
        assert_still_serving(limited_proxy, bystander)


def test_default_bulk_limit_is_named(proxy):
    """Over the default max_bulk_bytes (512mb, Redis's proto-max-bulk-len): the error names
    the limit instead of Redis's "invalid bulk length", and it is counted by limit."""
    with connect(proxy.port) as bystander:
        assert_limit_error_and_close(proxy.port, b"*1\r\n$600000000\r\n", "max_bulk_bytes")
        assert_still_serving(proxy, bystander)


def test_limits_allow_values_up_to_the_bound(limited_proxy, cluster):
    c = limited_proxy.client()
    value = b"x" * MAX_BULK
    assert c.set("proto:bound", value) is True
    assert cluster.primary.client().get("proto:bound") == value
    assert len(c.mget([f"k{i}" for i in range(MAX_ARRAY - 1)])) == MAX_ARRAY - 1


def test_replies_are_not_bounded_by_request_limits(cluster, limited_proxy):
    """A reply bigger than max_bulk_bytes, or deeper than any request could be, is Redis's
    legitimate answer: relayed byte for byte, and neither the shared connection nor the
    backend suffers for it (another client pipelining at the same time sees nothing)."""
    big = b"r" * (3 * MAX_BULK + 17)  # written directly: over the proxy's request limit
    cluster.primary.client().set("proto:bigreply", big)
    cluster.wait_replicated()
    # A Lua table 150 levels deep, as a direct connection returns it.
    script = ("local t = {1} for i = 1, 149 do t = {t} end return t")
    direct = raw_command(cluster.primary.port, encode_command("EVAL", script, "0"))
    with connect(limited_proxy.port) as bystander:
        for _ in range(3):
            assert limited_proxy.client().get("proto:bigreply") == big
            assert raw_command(limited_proxy.port, encode_command("EVAL", script, "0")) == direct
            bystander.sendall(encode_command("SET", "proto:by", "1") +
                              encode_command("GET", "proto:by"))
            replies, _ = read_replies(bystander, 2)
            assert replies == [b"+OK\r\n", b"$1\r\n1\r\n"]
    assert reply_depth(direct)[0] == 150
    assert "marked down" not in limited_proxy.stderr()


def test_dollar_where_star_expected_is_inline_like_redis(cluster, proxy):
    # Redis parses a request not starting with '*' as an inline command: "$3" and "foo"
    # are two unknown commands, and the connection stays open.
    payload = b"$3\r\nfoo\r\n"
    with connect(cluster.primary.port) as s:
        s.sendall(payload)
        direct, _ = read_replies(s, 2)
    with connect(proxy.port) as s:
        s.sendall(payload)
        via_proxy, _ = read_replies(s, 2)
        s.sendall(b"PING\r\n")
        assert read_replies(s, 1)[0] == [b"+PONG\r\n"]
    assert via_proxy == direct


def test_request_over_max_request_bytes_refused(cluster, make_proxy):
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--max-request-bytes", str(MAX_BULK)])
    with connect(p.port) as bystander:
        with connect(p.port) as s:
            # Announce a 2 MB value, then send it in pieces until the proxy answers.
            s.sendall(b"*3\r\n$3\r\nSET\r\n$11\r\nproto:large\r\n$%d\r\n" % (2 * MAX_BULK))
            chunk = b"y" * 65536
            sent = 0
            while sent < 2 * MAX_BULK:
                if select.select([s], [], [], 0.02)[0]:
                    break  # the proxy has answered
                try:
                    s.sendall(chunk)
                except OSError:
                    break
                sent += len(chunk)
            data, closed = read_until_closed(s, timeout=5 * SLOWDOWN)
        assert data.startswith(b"-ERR kompress: request over limits.max_request_bytes ("), \
            data[:200]
        assert closed
        assert_still_serving(p, bystander)
    assert cluster.primary.client().get("proto:large") is None


def _monitor_lines(sock, until, timeout):
    """Reads MONITOR lines from `sock` until one contains `until` (bytes); returns them all."""
    buf = b""
    deadline = time.monotonic() + timeout
    while until not in buf:
        assert time.monotonic() < deadline, f"MONITOR never showed {until!r}: {buf[-300:]!r}"
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(1 << 20)
        assert chunk, "MONITOR connection closed"
        buf += chunk
    return [line for line in buf.split(b"\r\n") if line.startswith(b"+") and b"[" in line]


def _monitor_source(line):
    # +1700000000.123456 [0 127.0.0.1:53412] "SET" "k" "v"
    return line.split(b"[", 1)[1].split(b"]", 1)[0].split()[-1]


def test_very_large_request_takes_its_connection_out_of_the_pool(fresh_cluster, make_proxy):
    """A request larger than the client's in-flight bound (a 2 MB SET past a 1 MB bound) holds
    up everything queued behind it on its connection while its bytes reach Redis. The
    connection leaves the pool with it: the client's own earlier requests are ahead of it on
    the same connection, everyone's later requests go on a fresh one, and the client's own
    later requests wait for its reply, so none of them overtakes it."""
    c = fresh_cluster
    # A timeout this test is not about: on a loaded machine under ASan the 2 MB SET has
    # taken longer than the suite's 1 s to be answered.
    p = make_proxy(c.primary.port, [r.port for r in c.replicas],
                   extra_args=["--max-inflight-bytes", "1mb", "--workers", "1",
                               "--timeout", "10"])
    big = b"B" * (2 * MAX_BULK)
    with socket.create_connection((HOST, c.primary.port), timeout=10) as mon, \
            connect(p.port) as a, connect(p.port) as b:
        mon.sendall(encode_command("MONITOR"))
        assert mon.recv(100).startswith(b"+OK")
        # Warm the pool's connection, so the first SET below is not what opens it.
        a.sendall(encode_command("SET", "proto:pool", "warm"))
        assert read_replies(a, 1)[0] == [b"+OK\r\n"]
        a.sendall(encode_command("SET", "proto:order", "first") +
                  encode_command("SET", "proto:order", big) +
                  encode_command("SET", "proto:order", "last") +
                  encode_command("GET", "proto:order"))
        replies, _ = read_replies(a, 4, timeout=20 * SLOWDOWN)
        assert replies == [b"+OK\r\n"] * 3 + [b"$4\r\nlast\r\n"], [r[:40] for r in replies]
        b.sendall(encode_command("SET", "proto:other", "after"))
        assert read_replies(b, 1)[0] == [b"+OK\r\n"]
        lines = _monitor_lines(mon, b'"proto:other"', timeout=20 * SLOWDOWN)
    assert c.primary.client().get("proto:order") == b"last"

    def source_of(needle):
        found = [_monitor_source(l) for l in lines if needle in l]
        assert len(found) == 1, (needle, found)
        return found[0]

    warm = source_of(b'"proto:pool"')
    first = source_of(b'"first"')
    bulk = source_of(b'"BBBB')
    last = source_of(b'"last"')
    other = source_of(b'"proto:other"')
    # The client's earlier request and the large one share the pool's connection (in order)...
    assert warm == first == bulk
    # ...which then left the pool: the client's next request and another client's are on a
    # fresh connection.
    assert last == other != bulk
    order = [i for i, l in enumerate(lines) if b'"first"' in l or b'"BBBB' in l or b'"last"' in l]
    assert order == sorted(order) and len(order) == 3


def test_requests_queued_behind_a_large_one_are_not_overtaken(fresh_cluster, make_proxy):
    """When a large request takes its connection out of the pool, other clients may have
    requests queued on it that Redis has not read yet. Their next requests go on the fresh
    connection only once those are answered: Redis orders one connection's requests, not
    two, and a client's writes must run in the order it sent them. The primary is stopped
    while the requests are handed on, so the queued ones are still unread when the next
    one is sent."""
    c = fresh_cluster
    p = make_proxy(c.primary.port, [r.port for r in c.replicas],
                   extra_args=["--max-inflight-bytes", "1mb", "--workers", "1",
                               "--timeout", "20"])
    warm = redis.Redis(port=p.port)
    assert warm.set("order:warm", "1")  # the pool's connection is open
    with connect(p.port, timeout=30 * SLOWDOWN) as a, connect(p.port, timeout=30 * SLOWDOWN) as b:
        c.primary.sigstop()
        try:
            # B's first push sits behind nearly 1 MB of its own on the pool's connection, so
            # Redis takes a while to reach it.
            b.sendall(encode_command("SET", "order:pad", b"p" * (MAX_BULK - 4096)) +
                      encode_command("RPUSH", "order:list", "1"))
            time.sleep(0.3 * SLOWDOWN)
            a.sendall(encode_command("SET", "order:big", b"B" * (2 * MAX_BULK)))
            time.sleep(0.3 * SLOWDOWN)
            b.sendall(encode_command("RPUSH", "order:list", "2"))
            time.sleep(0.3 * SLOWDOWN)
        finally:
            c.primary.sigcont()
        assert read_replies(a, 1, timeout=30 * SLOWDOWN)[0] == [b"+OK\r\n"]
        assert read_replies(b, 3, timeout=30 * SLOWDOWN)[0] == [b"+OK\r\n", b":1\r\n",
                                                               b":2\r\n"]
    assert c.primary.client().lrange("order:list", 0, -1) == [b"1", b"2"]


def test_parked_writes_keep_their_order_behind_a_large_one(fresh_cluster, make_proxy):
    """Writes sent while the primary is down wait for it (up to the timeout). When it is
    back, a large one among them takes its connection out of the pool; those after it wait
    for it as new requests would, instead of going on the fresh connection at once, where
    they could run before it."""
    c = fresh_cluster
    p = make_proxy(c.primary.port, [r.port for r in c.replicas],
                   extra_args=["--max-inflight-bytes", "1mb", "--workers", "1",
                               "--timeout", str(15 * SLOWDOWN), "--health-check-interval",
                               "0.1"])
    assert redis.Redis(port=p.port).set("parked:warm", "1")
    c.primary.kill9()
    wait_until(lambda: "marked down" in p.stderr(), 10 * SLOWDOWN, what="the primary down")
    with connect(p.port, timeout=30 * SLOWDOWN) as s:
        s.sendall(encode_command("SET", "parked:k", b"B" * (2 * MAX_BULK)) +
                  encode_command("DEL", "parked:k"))
        time.sleep(0.3 * SLOWDOWN)  # both wait for the primary
        c.primary.restart()
        assert read_replies(s, 2, timeout=30 * SLOWDOWN)[0] == [b"+OK\r\n", b":1\r\n"]
    assert c.primary.client().exists("parked:k") == 0


def test_client_over_buffer_limit_dropped(cluster, make_proxy):
    """A client that pipelines requests but never reads its replies: once the replies
    the proxy holds for it pass --max-client-buffer-bytes it is disconnected."""
    limit = MAX_BULK
    value_size = 256 * 1024
    n = 200  # 50 MB of replies, far past the limit and the socket buffers
    admin = free_port()
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--max-client-buffer-bytes", str(limit),
                               "--admin-listen", f"{HOST}:{admin}"])
    cluster.primary.client().set("proto:quarter", b"q" * value_size)
    cluster.wait_replicated()
    with connect(p.port) as bystander:
        s = connect(p.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            s.sendall(encode_command("GET", "proto:quarter") * n)
            time.sleep(1.5 * SLOWDOWN)
            assert_still_serving(p, bystander)
            data, closed = read_until_closed(s, timeout=10 * SLOWDOWN)
        finally:
            s.close()
        assert closed, "slow client over the buffer limit was not disconnected"
        assert len(data) < n * value_size, "every reply was delivered: no limit applied"
        assert_still_serving(p, bystander)
    assert p.alive
    text = http_get(admin, "/metrics")[1]
    assert metric(text, 'kompress_limit_drops_total{limit="max_client_buffer_bytes"}') == 1
    assert metric(text, 'kompress_limit_drops_total{limit="max_bulk_bytes"}') == 0
    assert metric(text, "kompress_protocol_errors_total") == 0
    assert "marked down" not in p.stderr()


def test_reply_larger_than_client_buffer_is_streamed(cluster, make_proxy):
    """One reply bigger than --max-client-buffer-bytes is Redis's answer to a client that
    reads: it is delivered (also inside a transaction), not a reason to drop the client."""
    limit = MAX_BULK
    admin = free_port()
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--max-client-buffer-bytes", str(limit),
                               "--admin-listen", f"{HOST}:{admin}"])
    big = os.urandom(3 * limit)
    cluster.primary.client().set("proto:huge", big)
    cluster.wait_replicated()
    c = p.client(timeout=30)
    for _ in range(3):
        assert c.get("proto:huge") == big
    pipe = c.pipeline(transaction=True)
    pipe.get("proto:huge").strlen("proto:huge")
    assert pipe.execute() == [big, len(big)]
    text = http_get(admin, "/metrics")[1]
    assert metric(text, 'kompress_limit_drops_total{limit="max_client_buffer_bytes"}') == 0


def test_client_buffer_bound_too_small_is_refused():
    r = run_proxy_once(["--max-client-buffer-bytes", "1"])
    assert r.returncode == 2, r
    line = one_line(r.stderr)
    assert "limits.max_client_buffer_bytes" in line and "too small" in line, line


# -- configuration --------------------------------------------------------------------------

def one_line(stderr):
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines}"
    return lines[0]


BAD_FLAGS = {
    "port 70000": (["--primary", "localhost:70000"], "primary", "70000"),
    "negative timeout": (["--timeout", "-1"], "timeout", "-1"),
    "host with no port": (["--primary", "host:"], "primary", "host:"),
    "workers not a number": (["--workers", "many"], "workers", "many"),
    "replica port 0": (["--replicas", "127.0.0.1:6381,127.0.0.1:0"], "replicas", "0"),
    "bad size": (["--max-bulk-bytes", "lots"], "bulk", "lots"),
}


@pytest.mark.parametrize("args,key,value", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_flag_rejected_with_one_line(args, key, value):
    r = run_proxy_once(["--listen", f"{HOST}:{free_port()}"] + args, timeout=10 * SLOWDOWN)
    assert r.returncode != 0
    line = one_line(r.stderr)
    assert key in line and value in line, line


BAD_ENV = {
    "REDIS_PORT not a number": ({"REDIS_PORT": "sixty"}, "REDIS_PORT", "sixty"),
    "REDIS_PORT 70000": ({"REDIS_PORT": "70000"}, "REDIS_PORT", "70000"),
    "REDIS_TIMEOUT negative": ({"REDIS_TIMEOUT": "-3"}, "REDIS_TIMEOUT", "-3"),
    "REDIS_REPLICAS_HOST_PORT no port": ({"REDIS_REPLICAS_HOST_PORT": "r1:6379,r2"},
                                         "REDIS_REPLICAS_HOST_PORT", "r2"),
}


@pytest.mark.parametrize("env,key,value", BAD_ENV.values(), ids=BAD_ENV.keys())
def test_bad_env_rejected_with_one_line(env, key, value):
    env = dict(env, KOMPRESS_LISTEN=f"{HOST}:{free_port()}")
    r = run_proxy_once([], env=env, timeout=10 * SLOWDOWN)
    assert r.returncode != 0
    line = one_line(r.stderr)
    assert key in line and value in line, line


BAD_YAML = {
    "unknown key": ("primary: 127.0.0.1:6379\nbogus_key: 1\n", "bogus_key", "bogus_key"),
    "wrong type": ("timeout: [1, 2]\n", "timeout", "timeout"),
    "bad port": ("primary: 127.0.0.1:99999\n", "primary", "99999"),
    "negative timeout": ("timeout: -2\n", "timeout", "-2"),
}


@pytest.mark.parametrize("text,key,value", BAD_YAML.values(), ids=BAD_YAML.keys())
@pytest.mark.parametrize("check", [False, True], ids=["start", "check-config"])
def test_bad_yaml_rejected_with_one_line(tmp_path, text, key, value, check):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"listen: {HOST}:{free_port()}\n" + text)
    r = run_proxy_once(["--config", str(cfg)] + (["--check-config"] if check else []),
                       timeout=10 * SLOWDOWN)
    assert r.returncode != 0
    line = one_line(r.stderr)
    assert key in line and value in line, line


def test_unreadable_config_file_rejected(tmp_path):
    r = run_proxy_once(["--config", str(tmp_path / "missing.yaml"), "--check-config"])
    assert r.returncode != 0
    assert "missing.yaml" in one_line(r.stderr)


def good_yaml(tmp_path, cluster, replicas):
    cfg = tmp_path / "good.yaml"
    listen_port = free_port()
    cfg.write_text(f"listen: {HOST}:{listen_port}\n"
                   f"primary: {HOST}:{cluster.primary.port}\n"
                   "replicas:\n" + "".join(f"  - {HOST}:{r.port}\n" for r in replicas)
                   + "timeout: 1\nworkers: 2\n")
    return cfg, listen_port


def test_check_config_good_exits_zero(tmp_path, cluster):
    cfg, _ = good_yaml(tmp_path, cluster, cluster.replicas)
    r = run_proxy_once(["--config", str(cfg), "--check-config"])
    assert r.returncode == 0, r
    r = run_proxy_once(["--check-config", "--primary", f"{HOST}:6379", "--timeout", "0.5"])
    assert r.returncode == 0, r


def test_config_file_drives_the_proxy(tmp_path, cluster, make_proxy):
    cfg, _ = good_yaml(tmp_path, cluster, cluster.replicas[1:])
    # The Proxy helper adds only --listen (CLI beats file) and --config.
    p = make_proxy(extra_args=["--config", str(cfg)], use_base_args=False)
    cluster.primary.client().set("cfg:k", "v")
    cluster.wait_replicated()
    before = cluster.snapshot("get")
    c = p.client()
    for _ in range(20):
        assert c.get("cfg:k") == b"v"
    d = delta(before, cluster.snapshot("get"))
    assert d == {"primary": 0, "replica1": 0, "replica2": 20}, d


def test_help_and_version_exit_zero():
    r = run_proxy_once(["--help"])
    assert r.returncode == 0, r
    out = r.stdout.decode()
    for flag in ("--listen", "--primary", "--replicas", "--timeout", "--config",
                 "--check-config", "REDIS_HOST", "REDIS_REPLICAS_HOST_PORT"):
        assert flag in out, f"--help does not mention {flag}"
    r = run_proxy_once(["--version"])
    assert r.returncode == 0, r
    assert any(ch.isdigit() for ch in r.stdout.decode()), r.stdout


def test_original_env_vars_with_no_file(cluster, make_proxy):
    r1, r2 = cluster.replicas
    env = {"REDIS_HOST": HOST, "REDIS_PORT": str(cluster.primary.port),
           "REDIS_REPLICAS_HOST_PORT": f"{HOST}:{r2.port}", "REDIS_TIMEOUT": "1.5"}
    p = make_proxy(env=env, use_base_args=False, listen_via_env=True)
    c = p.client()
    assert c.set("env:k", "v") is True
    assert cluster.primary.client().get("env:k") == b"v"
    cluster.wait_replicated()
    reader = p.client()  # has written nothing: replicas serve it at once
    before = cluster.snapshot("get")
    for _ in range(30):
        assert reader.get("env:k") == b"v"
    d = delta(before, cluster.snapshot("get"))
    assert d == {"primary": 0, "replica1": 0, "replica2": 30}, d


def test_no_replicas_primary_serves_reads(cluster, make_proxy):
    env = {"REDIS_HOST": HOST, "REDIS_PORT": str(cluster.primary.port),
           "REDIS_REPLICAS_HOST_PORT": ""}
    p = make_proxy(env=env, use_base_args=False, listen_via_env=True)
    cluster.primary.client().set("env:p", "v")
    before = cluster.snapshot("get")
    c = p.client()
    for _ in range(10):
        assert c.get("env:p") == b"v"
    d = delta(before, cluster.snapshot("get"))
    assert d == {"primary": 10, "replica1": 0, "replica2": 0}, d


@pytest.mark.parametrize("n", [400, 1000], ids=["801-commands", "2001-commands"])
def test_sigterm_drains_inflight_pipeline(cluster, make_proxy, n):
    """Every request the client sent before SIGTERM is answered, also past the proxy's
    pipeline-depth backpressure (default 1024 in flight), then the proxy exits 0."""
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas])
    prim = cluster.primary.client()
    prim.delete("drain:ctr")
    for i in range(100):
        prim.set(f"drain:pre:{i}", i)
    cluster.wait_replicated()
    # DEBUG SLEEP holds the primary (for less than the proxy's 1 s timeout), so the writes
    # behind it are in flight at SIGTERM.
    payload = encode_command("DEBUG", "SLEEP", "0.5") + b"".join(
        encode_command("INCR", "drain:ctr") + encode_command("GET", f"drain:pre:{i % 100}")
        for i in range(n))
    with connect(p.port, timeout=30) as s:
        s.sendall(payload)
        time.sleep(0.15)
        os.kill(p.proc.pid, signal.SIGTERM)
        time.sleep(0.1)
        accepting = port_accepts(p.port)
        replies, rest = read_replies(s, 1 + 2 * n, timeout=30 * SLOWDOWN)
        tail, closed = read_until_closed(s, timeout=10 * SLOWDOWN)
    assert replies[0] == b"+OK\r\n"
    for i in range(n):
        assert replies[1 + 2 * i] == b":%d\r\n" % (i + 1)
        v = str(i % 100).encode()
        assert replies[2 + 2 * i] == b"$%d\r\n%s\r\n" % (len(v), v)
    assert rest == b"" and tail == b""
    assert closed, "connection not closed after draining"
    code = p.proc.wait(timeout=15 * SLOWDOWN)
    assert code == 0, f"exit code {code} after SIGTERM; stderr:\n{p.stderr()[-3000:]}"
    assert not accepting, "proxy still accepted connections while draining"
    assert prim.get("drain:ctr") == str(n).encode()


def test_sigint_idle_exits_zero(cluster, make_proxy):
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas])
    assert p.client().ping()
    os.kill(p.proc.pid, signal.SIGINT)
    assert p.proc.wait(timeout=15 * SLOWDOWN) == 0


def test_clients_vanishing_with_requests_in_flight(cluster, proxy):
    """Clients that close (or reset) with thousands of requests in flight: the proxy drops
    the late replies and keeps serving everyone else."""
    cluster.primary.client().set("vanish:k", b"z" * 1000)
    cluster.wait_replicated()
    payload = encode_command("GET", "vanish:k") * 5000 + encode_command("INCR", "vanish:n") * 500
    for i in range(10):
        s = connect(proxy.port)
        s.sendall(payload)
        if i % 2:  # RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.5)
    c = proxy.client()
    assert c.ping() is True
    assert c.get("vanish:k") == b"z" * 1000
    # Every INCR the proxy forwarded ran once at most: never more than were sent.
    n = int(cluster.primary.client().get("vanish:n") or 0)
    assert n <= 10 * 500


def half_closed_exchange(port, payload):
    """Sends payload, shuts down the sending side, and reads until the server closes."""
    with connect(port) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return read_until_closed(s, timeout=5 * SLOWDOWN)


HALF_CLOSED = {
    "inline": b"SET hc:a 1\r\nGET hc:a\r\nPING\r\n",
    "pipeline": b"".join(encode_command("SET", f"hc:{i % 7}", str(i)) for i in range(3000))
    + encode_command("GET", "hc:3"),
    "cut-short": b"PING\r\n*2\r\n$3\r\nGET",
    "transaction": b"MULTI\r\nINCR hc:n\r\nEXEC\r\n",
    # Sessions on a dedicated connection that would never finish on their own: what was
    # sent is answered, then the connection closes (the open transaction goes with it).
    "watch-open": b"WATCH hc:w\r\nGET hc:w\r\n",
    "multi-open": b"MULTI\r\nINCR hc:n\r\n",
    "subscribe": b"SUBSCRIBE hc:ch\r\n",
    "get-then-blpop": b"GET hc:w\r\nBLPOP hc:nolist 0\r\n",
    "select-then-get": b"SELECT 2\r\nGET hc:w\r\n",
}


@pytest.mark.parametrize("what", sorted(HALF_CLOSED))
def test_half_closed_client_gets_every_reply_then_eof(cluster, proxy, what):
    """`nc -N`, `printf ... | socat`, health-check scripts: the client sends its commands and
    shuts down its side. Like Redis, every complete command is answered, then the
    connection closes; the proxy must not drop the replies (the writes were applied)."""
    payload = HALF_CLOSED[what]
    cluster.primary.client().delete("hc:n")
    want = half_closed_exchange(cluster.primary.port, payload)
    cluster.primary.client().delete("hc:n")
    got = half_closed_exchange(proxy.port, payload)
    assert got[1] is True, f"{what}: the proxy did not close the connection"
    assert got == want, f"{what}: proxy {got[0][-200:]!r} vs Redis {want[0][-200:]!r}"
    assert want[0], what  # Redis answered something: the comparison means something
    assert proxy.client().ping() is True
    # The open transaction was discarded with the connection, as Redis discards it.
    assert cluster.primary.client().get("hc:n") == (b"1" if what == "transaction" else None)


def test_clients_that_close_inside_pinned_sessions_are_closed(cluster, make_proxy):
    """A client that closes (or half-closes) with a transaction or WATCH open, inside a
    subscription or MONITOR, or blocked in BLPOP 0 is closed by the proxy, as Redis closes it:
    its session never finishes on its own, and must not hold a descriptor, a client slot and
    a dedicated backend connection for good."""
    admin = free_port()
    proxy = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                       extra_args=["--admin-listen", f"{HOST}:{admin}"])

    def clients():
        return metric(http_get(admin, "/metrics")[1], "kompress_client_connections")

    # The start-up probe's connection may still be counted for a moment.
    wait_until(lambda: clients() == 0, 5 * SLOWDOWN, interval=0.05, what="no clients")
    base = 0
    socks = []
    for pin, half in [(("WATCH", "pc:a"), False), (("MULTI",), False),
                      (("SUBSCRIBE", "pc:ch"), True), (("WATCH", "pc:a"), True),
                      (("MONITOR",), True)]:
        for _ in range(3):
            s = connect(proxy.port)
            s.sendall(encode_command(*pin))
            read_replies(s, 1, timeout=5 * SLOWDOWN)
            if half:
                s.shutdown(socket.SHUT_WR)
                socks.append((pin[0], s))
            else:
                s.close()
    for _ in range(3):
        s = connect(proxy.port)
        s.sendall(encode_command("BLPOP", "pc:nolist", "0"))
        time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        socks.append(("BLPOP", s))
    try:
        open_ones = [name for name, s in socks
                     if not read_until_closed(s, timeout=5 * SLOWDOWN)[1]]
        assert not open_ones, f"half-closed clients not closed by the proxy: {open_ones}"
        wait_until(lambda: clients() == base, 5 * SLOWDOWN, interval=0.05,
                   what="the proxy to close every client that left")
    finally:
        for _, s in socks:
            s.close()
    assert proxy.client().ping() is True


def test_deny_commands_default_and_configured(cluster, proxy, make_proxy):
    """By default the proxy refuses SHUTDOWN, REPLICAOF/SLAVEOF and FAILOVER (server-wide
    operations no application should send through a shared sidecar), naming the command and
    the setting; deny_commands replaces the list, subcommands included."""
    c = proxy.client()
    for args in (["SHUTDOWN", "NOSAVE"], ["REPLICAOF", "NO", "ONE"], ["SLAVEOF", "NO", "ONE"],
                 ["FAILOVER"]):
        with pytest.raises(redis.ResponseError) as err:
            c.execute_command(*args)
        assert str(err.value) == (f"kompress: {args[0]} is refused by the proxy "
                                  "(deny_commands)"), err.value
    assert cluster.primary.client().ping() is True
    assert cluster.primary.client().info("replication")["role"] == "master"
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--deny-commands", "config set, flushall"])
    c = p.client()
    with pytest.raises(redis.ResponseError) as err:
        c.config_set("maxmemory-policy", "allkeys-lru")
    assert str(err.value) == "kompress: CONFIG SET is refused by the proxy (deny_commands)"
    with pytest.raises(redis.ResponseError):
        c.flushall()
    assert c.config_get("maxmemory-policy")  # other CONFIG subcommands pass
    assert c.set("deny:k", "v") is True
    # An unknown name is a configuration error, reported at start-up.
    r = run_proxy_once(["--primary", f"{HOST}:{cluster.primary.port}", "--listen",
                        f"{HOST}:{free_port()}", "--deny-commands", "shutdwn"])
    assert r.returncode == 2, r
    assert b'deny_commands: "shutdwn": no such command' in r.stderr, r.stderr


def test_healthcheck_flag_for_container_images(cluster, make_proxy):
    """`kompress-proxy --healthcheck HOST:PORT[/PATH]` (the image's HEALTHCHECK) exits 0 when
    the admin endpoint answers 200, 1 otherwise, quickly, without any configuration."""
    admin = free_port()
    make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
               extra_args=["--admin-listen", f"{HOST}:{admin}"])
    ok = run_proxy_once(["--healthcheck", f"{HOST}:{admin}"])
    assert ok.returncode == 0 and ok.stdout.startswith(b"healthy: HTTP/1.1 200"), ok
    ready = run_proxy_once(["--healthcheck", f"{HOST}:{admin}/readyz"])
    assert ready.returncode == 0, ready
    missing = run_proxy_once(["--healthcheck", f"{HOST}:{admin}/nope"])
    assert missing.returncode == 1 and b"404" in missing.stdout, missing
    t0 = time.monotonic()
    down = run_proxy_once(["--healthcheck", f"{HOST}:{free_port()}"])
    assert down.returncode == 1 and down.stdout.startswith(b"unhealthy:"), down
    assert time.monotonic() - t0 < 5
    bad = run_proxy_once(["--healthcheck", "no-port-here"])
    assert bad.returncode == 1, bad


def test_json_logs_one_object_per_line_and_no_secrets(fresh_cluster, make_proxy):
    """log_format json: every line of the proxy's log is one JSON object (time, level, logger
    kompress_cache, message), state changes with structured fields (event, backend, role,
    reason); passwords never appear."""
    import json
    c = fresh_cluster
    p = make_proxy(c.primary.port, [r.port for r in c.replicas],
                   extra_args=["--log-format", "json", "--requirepass", "s3cret-client",
                               "--log-level", "debug"])
    cl = p.client(password="s3cret-client")
    assert cl.set("json:k", "v") is True
    c.replicas[0].kill9()
    wait_until(lambda: "marked down" in p.stderr(), 5 * SLOWDOWN, what="a state change logged")
    lines = [ln for ln in p.stderr().splitlines() if ln.strip()]
    assert lines
    entries = [json.loads(ln) for ln in lines]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert all(isinstance(v, str) for v in entry.values()), entry
        assert entry["logger"] == "kompress_cache"
        assert entry["time"].endswith("Z") and "T" in entry["time"], entry
    # State changes carry structured fields: what happened, to which backend, and why.
    down = [e for e in entries if e.get("event") == "backend_down"]
    assert down and "marked down" in down[0]["message"], entries[-5:]
    assert down[0]["backend"] == f"127.0.0.1:{c.replicas[0].port}", down[0]
    assert down[0]["role"] == "replica" and down[0]["reason"], down[0]
    assert any(e.get("event") == "replica_serves_reads" and e.get("backend") for e in entries)
    assert "s3cret-client" not in p.stderr()
    bad = run_proxy_once(["--log-format", "xml"])
    assert bad.returncode == 2 and b"log_format" in bad.stderr, bad


def test_a_resp3_push_on_a_shared_connection_reaches_its_client_in_place(proxy):
    """A RESP3 push the server sends on the proxy's shared connection (here DEBUG PROTOCOL
    push; modules send them too) is no reply to any request. Taken as one, it shifted every
    later reply onto the wrong request (SET got the DEBUG reply, INCR the +OK), other
    clients' too. Now the client that caused it gets it where Redis puts it, ahead of that
    command's reply, and the replies after it stay paired."""
    key = f"push:{time.monotonic_ns()}"
    payload = (encode_command("HELLO", "3") + encode_command("DEBUG", "PROTOCOL", "push") +
               encode_command("SET", key, "1") + encode_command("INCR", key) +
               encode_command("ECHO", "hi"))
    want = (b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n"
            b"$40\r\nSome real reply following the push reply\r\n+OK\r\n:2\r\n$2\r\nhi\r\n")
    with connect(proxy.port, timeout=10) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + 10 * SLOWDOWN
        while not data.endswith(b"$2\r\nhi\r\n") and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.endswith(want), data[-300:]
        # The connection, and the others on the same backend connection, carry on.
        s.sendall(encode_command("GET", key))
        assert s.recv(100) == b"$1\r\n2\r\n"
    assert proxy.client().incr(key) == 3
    assert "reply with no request outstanding" not in proxy.stderr()
