"""Routing through the real proxy: writes land on the primary, reads are served by the
replicas, replies come back in request order, and every reply is relayed byte for byte.
Which server served what is proven with each server's INFO commandstats."""

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pytest
import redis

from fixtures import (HOST, SLOWDOWN, connect, delta, encode_command, raw_command,
                      read_replies, reply_depth)


def describe_difference(got, want):
    """Where two byte strings first differ, with some context, for assertion messages."""
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"len {len(got)} vs {len(want)}, first difference at byte {i}: "
            f"got ...{got[max(0, i - 120):i + 120]!r}... want ...{want[max(0, i - 120):i + 120]!r}...")


def replica_names(cluster):
    return [r.name for r in cluster.replicas]


def test_ping_answered(proxy):
    assert proxy.client().ping() is True


def test_writes_land_on_primary(cluster, proxy):
    c = proxy.client()
    before = cluster.snapshot("set")
    errors_before = [s.errorstats().get("READONLY", 0) for s in cluster.replicas]
    for i in range(100):
        assert c.set(f"w:{i}", i) is True
    cluster.wait_replicated()
    d = delta(before, cluster.snapshot("set"))
    # The primary executed exactly our 100 SETs. Replicas count the replicated stream too,
    # so each shows exactly 100 as well; a SET the proxy sent to a replica would have been
    # refused there with READONLY.
    assert d["primary"] == 100, d
    for name in replica_names(cluster):
        assert d[name] == 100, d
    assert [s.errorstats().get("READONLY", 0) for s in cluster.replicas] == errors_before
    p = cluster.primary.client()
    assert [p.get(f"w:{i}") for i in range(100)] == [str(i).encode() for i in range(100)]


def test_reads_served_by_replicas_round_robin(cluster, proxy):
    p = cluster.primary.client()
    p.set("r:key", "value")
    cluster.wait_replicated()
    c = proxy.client()
    c.get("r:key")  # warm-up: backend connections established
    before = cluster.snapshot("get")
    for _ in range(200):
        assert c.get("r:key") == b"value"
    d = delta(before, cluster.snapshot("get"))
    assert d["primary"] == 0, f"GETs reached the primary: {d}"
    assert sum(d[n] for n in replica_names(cluster)) == 200, d
    for name in replica_names(cluster):
        assert 70 <= d[name] <= 130, f"reads not balanced over the replicas: {d}"


def test_reads_balanced_across_many_connections(cluster, proxy):
    # Clients land on different workers; each worker must still use both replicas.
    p = cluster.primary.client()
    p.set("r:multi", "v")
    cluster.wait_replicated()
    before = cluster.snapshot("get")
    clients = [proxy.client() for _ in range(8)]
    for _ in range(25):
        for c in clients:
            assert c.get("r:multi") == b"v"
    d = delta(before, cluster.snapshot("get"))
    assert d["primary"] == 0, d
    assert sum(d[n] for n in replica_names(cluster)) == 200, d
    for name in replica_names(cluster):
        assert d[name] >= 50, f"a replica got almost no reads: {d}"


def test_pipeline_1000_mixed_in_order(cluster, proxy):
    p = cluster.primary.client()
    p.delete("pl:counter")
    for i in range(500):
        p.set(f"pl:pre:{i}", f"pre-{i}")
    cluster.wait_replicated()

    before_get = cluster.snapshot("get")
    pipe = proxy.client(timeout=30).pipeline(transaction=False)
    expected = []
    for i in range(250):
        # A write, a read of a key written before the pipeline, a write whose reply
        # carries its position (INCR), and another read: 1000 commands, two servers kinds.
        pipe.set(f"pl:new:{i}", i)
        expected.append(True)
        pipe.get(f"pl:pre:{i}")
        expected.append(f"pre-{i}".encode())
        pipe.incr("pl:counter")
        expected.append(i + 1)
        pipe.get(f"pl:pre:{499 - i}")
        expected.append(f"pre-{499 - i}".encode())
    results = pipe.execute(raise_on_error=False)
    assert len(results) == 1000
    mismatches = [(n, e, r) for n, (e, r) in enumerate(zip(expected, results)) if e != r]
    assert not mismatches, f"{len(mismatches)} replies out of order/wrong, first: {mismatches[:5]}"

    # Every read follows a write of this client in the same pipeline: read-your-writes sends
    # it to the primary unless a replica already had those writes.
    d = delta(before_get, cluster.snapshot("get"))
    assert sum(d.values()) == 500 and d["primary"] > 0, d
    assert [p.get(f"pl:new:{i}") for i in range(250)] == [str(i).encode() for i in range(250)]
    assert p.get("pl:counter") == b"250"


def test_raw_pipeline_replies_in_order(cluster, proxy):
    # The same over one raw socket written in a single send: replies must match a direct
    # primary connection byte for byte (writes) and the expected values (reads).
    p = cluster.primary.client()
    for i in range(100):
        p.set(f"raw:pre:{i}", "x" * i)
    cluster.wait_replicated()
    payload = b"".join(encode_command("GET", f"raw:pre:{i}") + encode_command("ECHO", str(i))
                       for i in range(100))
    with connect(proxy.port) as s:
        s.sendall(payload)
        replies, rest = read_replies(s, 200)
    assert rest == b""
    for i in range(100):
        assert replies[2 * i] == b"$%d\r\n%s\r\n" % (i, b"x" * i)
        assert replies[2 * i + 1] == b"$%d\r\n%d\r\n" % (len(str(i)), i)


def test_command_docs_relayed_byte_for_byte(cluster, proxy):
    # COMMAND DOCS is nested deeper than hiredis 0.14's reader accepts.
    req = encode_command("COMMAND", "DOCS")
    # A freshly started Redis leaves the dict of COMMAND's subcommands mid-rehash, and each
    # subcommand lookup moves it one step, so the order of that part of the reply changes
    # from one call to the next for a while. Finish the rehash first (64 lookups > 16
    # buckets), so that the server's reply is the same before and after the proxy's call.
    for s in cluster.servers:
        with connect(s.port) as sock:
            sock.sendall(encode_command("COMMAND", "COUNT") * 64)
            read_replies(sock, 64)
    via_proxy = raw_command(proxy.port, req, timeout=20)
    depth, end = reply_depth(via_proxy)
    assert end == len(via_proxy)
    assert depth > 7 and len(via_proxy) > 100_000, (depth, len(via_proxy))
    # COMMAND is not a read (primary), but the order of a full COMMAND DOCS reply depends on
    # the server process's hash seed, so compare with whichever server answered.
    direct = {s.name: raw_command(s.port, req, timeout=20) for s in cluster.servers}
    assert via_proxy in direct.values(), (
        "COMMAND DOCS differs from every server's reply: "
        + describe_difference(via_proxy, direct["primary"]))
    assert via_proxy == direct["primary"], "COMMAND DOCS not served by the primary"

    # With named commands the reply order is fixed: compare directly with the primary.
    req = encode_command("COMMAND", "DOCS", "SET", "GET", "XADD", "CLIENT")
    assert raw_command(proxy.port, req) == raw_command(cluster.primary.port, req)
    req = encode_command("COMMAND", "INFO", "GET", "SET", "OBJECT")
    assert raw_command(proxy.port, req) == raw_command(cluster.primary.port, req)


def test_redis_cli_one_shot(cluster, proxy):
    def cli(*args):
        r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(proxy.port)] + list(args),
                           capture_output=True, timeout=20 * SLOWDOWN, text=True)
        assert r.returncode == 0, r
        return r.stdout.strip()

    assert cli("PING") == "PONG"
    assert cli("SET", "cli:key", "hello world") == "OK"
    cluster.wait_replicated()
    assert cli("GET", "cli:key") == "hello world"
    assert cli("--no-raw", "GET", "cli:missing") == "(nil)"
    assert cli("DEL", "cli:key") == "1"
    # COMMAND DOCS through redis-cli (the deep reply) renders like direct.
    direct = subprocess.run(["redis-cli", "-h", HOST, "-p", str(cluster.primary.port),
                             "COMMAND", "DOCS", "SET"], capture_output=True, timeout=20,
                            text=True).stdout
    assert cli("COMMAND", "DOCS", "SET") == direct.strip()


def test_redis_cli_stdin_pipe(cluster, proxy):
    cmds = "SET cli:pipe 1\nINCR cli:pipe\nINCRBY cli:pipe 40\nPING\nECHO done\n"
    r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(proxy.port)], input=cmds,
                       capture_output=True, timeout=20 * SLOWDOWN, text=True)
    assert r.returncode == 0, r
    assert r.stdout.split() == ["OK", "2", "42", "PONG", "done"], r.stdout


def test_redis_cli_interactive_pty(cluster, proxy):
    """redis-cli on a terminal (its interactive mode), driven through a pseudo-terminal."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            # A window size, so linenoise need not query the cursor position.
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
            os.execvp("redis-cli", ["redis-cli", "-h", HOST, "-p", str(proxy.port)])
        finally:
            os._exit(127)
    out = bytearray()
    seen = [0]  # output before this index has been matched already

    def expect(token, timeout=10 * SLOWDOWN):
        deadline = time.monotonic() + timeout
        while out.find(token, seen[0]) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"waiting for {token!r}; got {bytes(out[-3000:])!r}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    raise AssertionError(f"redis-cli exited; got {bytes(out[-3000:])!r}")
                if not chunk:
                    raise AssertionError(f"redis-cli closed; got {bytes(out[-3000:])!r}")
                if b"\x1b[6n" in chunk:  # cursor position query: answer "row 1 col 1"
                    os.write(fd, b"\x1b[1;1R")
                out.extend(chunk)
        seen[0] = out.find(token, seen[0]) + len(token)

    prompt = f"{HOST}:{proxy.port}> ".encode()

    def command(line, reply):
        # Type only at a fresh prompt, so linenoise (raw mode) reads the keys.
        expect(prompt)
        os.write(fd, line + b"\r")
        expect(b"\r\n" + reply)

    try:
        command(b"SET tty:key hello", b"OK")
        command(b"PING", b"PONG")
        command(b"HSET tty:h f1 v1 f2 v2", b"(integer) 2")
        command(b"GET tty:key", b'"hello"')
        command(b"COMMAND DOCS GET", b'1) "get"')
        expect(b"Get the value of a key")
        expect(prompt)
        os.write(fd, b"quit\r")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                assert os.waitstatus_to_exitcode(status) == 0
                pid = 0
                break
            try:
                select.select([fd], [], [], 0.1)
                os.read(fd, 65536)
            except OSError:
                pass
        assert pid == 0, "redis-cli did not exit after quit"
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_redis_benchmark_through_proxy(cluster, proxy):
    before_get = cluster.snapshot("get")
    before_set = cluster.snapshot("set")
    r = subprocess.run(["redis-benchmark", "-h", HOST, "-p", str(proxy.port),
                        "-t", "get,set", "-n", "20000", "-c", "20", "-P", "16", "-q"],
                       capture_output=True, timeout=120 * SLOWDOWN, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "SET:" in out and "GET:" in out, out
    assert "requests per second" in out, out
    assert "error" not in out.lower(), out
    d_get = delta(before_get, cluster.snapshot("get"))
    d_set = delta(before_set, cluster.snapshot("set"))
    assert d_set["primary"] == 20000, d_set
    assert d_get["primary"] == 0, d_get
    assert sum(d_get[n] for n in replica_names(cluster)) == 20000, d_get


def test_inline_commands(cluster, proxy):
    with connect(proxy.port) as s:
        s.sendall(b"PING\r\n")
        assert read_replies(s, 1)[0] == [b"+PONG\r\n"]
        s.sendall(b"SET inline:a b\r\n")
        assert read_replies(s, 1)[0] == [b"+OK\r\n"]
        # Several inline commands in one packet, and a bare \n terminator like telnet/nc.
        s.sendall(b"SET inline:c d\r\nINCR inline:n\nPING\r\n")
        assert read_replies(s, 3)[0] == [b"+OK\r\n", b":1\r\n", b"+PONG\r\n"]
    p = cluster.primary.client()
    assert p.get("inline:a") == b"b"
    assert p.get("inline:c") == b"d"
    cluster.wait_replicated()
    with connect(proxy.port) as s:
        s.sendall(b"GET inline:a\r\n")
        assert read_replies(s, 1)[0] == [b"$1\r\nb\r\n"]


def test_inline_quoted_arguments_like_redis(cluster, proxy):
    req = b'ECHO "hello world\\x41"\r\n'
    assert raw_command(proxy.port, req) == raw_command(cluster.primary.port, req)
    assert raw_command(proxy.port, req) == b"$12\r\nhello worldA\r\n"


def test_readonly_subcommands_go_to_replicas(cluster, proxy):
    p = cluster.primary.client()
    p.set("sub:str", "12345")
    p.xadd("sub:stream", {"f": "v"})
    cluster.wait_replicated()
    c = proxy.client()
    b_obj = cluster.snapshot("object|encoding")
    b_xinfo = cluster.snapshot("xinfo|stream")
    for _ in range(20):
        assert c.object("encoding", "sub:str") in (b"int", "int")
        info = c.xinfo_stream("sub:stream")
        assert info["length"] == 1
    d_obj = delta(b_obj, cluster.snapshot("object|encoding"))
    d_xinfo = delta(b_xinfo, cluster.snapshot("xinfo|stream"))
    assert d_obj["primary"] == 0 and sum(d_obj[n] for n in replica_names(cluster)) == 20, d_obj
    assert d_xinfo["primary"] == 0 and sum(
        d_xinfo[n] for n in replica_names(cluster)) == 20, d_xinfo


def test_config_set_goes_to_primary(cluster, proxy):
    before = cluster.snapshot("config|set")
    c = proxy.client()
    for _ in range(5):
        assert c.config_set("slowlog-max-len", 128) is True
    d = delta(before, cluster.snapshot("config|set"))
    assert d["primary"] == 5, d
    assert all(d[n] == 0 for n in replica_names(cluster)), d


def test_unknown_command_goes_to_primary_with_redis_error(cluster, proxy):
    req = encode_command("NOSUCHCMD", "a", "b")
    before = [s.errorstats().get("ERR", 0) for s in cluster.servers]
    got = raw_command(proxy.port, req)
    after = [s.errorstats().get("ERR", 0) for s in cluster.servers]
    expected = raw_command(cluster.primary.port, req)
    assert got == expected, (got, expected)
    assert got.startswith(b"-ERR unknown command 'NOSUCHCMD'"), got
    # The proxy's request was counted by the primary only.
    assert after[0] - before[0] == 1 and after[1:] == before[1:], (before, after)
    # Wrong arity is Redis's own error too.
    req = encode_command("GET")
    assert raw_command(proxy.port, req) == raw_command(cluster.primary.port, req)


def test_large_value_round_trip(cluster, proxy):
    value = os.urandom(10 * 1024 * 1024)
    c = proxy.client(timeout=60)
    assert c.set("big:10mb", value) is True
    cluster.wait_replicated(timeout_ms=20000)
    assert cluster.primary.client(timeout=60).get("big:10mb") == value
    reader = proxy.client(timeout=60)  # wrote nothing: served by replicas
    before = cluster.snapshot("get")
    for _ in range(4):  # lands on both replicas
        assert reader.get("big:10mb") == value
    d = delta(before, cluster.snapshot("get"))
    assert d["primary"] == 0, d
    assert c.strlen("big:10mb") == len(value)
    c.delete("big:10mb")


def test_binary_safe_keys_and_values(cluster, proxy):
    c = proxy.client()
    value = bytes(range(256)) * 4 + b"\r\n$3\r\n*1\r\n\x00\r\n"
    key = b"bin:\x00\r\n\xff*2\r\n"
    assert c.set(key, value) is True
    assert c.hset(b"bin:h\r\n", b"f\x00\r\n", value) == 1
    cluster.wait_replicated()
    assert c.get(key) == value
    assert c.hget(b"bin:h\r\n", b"f\x00\r\n") == value
    assert c.mget([key, b"bin:missing", key]) == [value, None, value]
    assert c.set(b"bin:empty", b"") is True
    cluster.wait_replicated()
    assert c.get(b"bin:empty") == b""


def test_reply_types_relayed(cluster, proxy):
    """Integer, nil, empty array, nested arrays and errors, compared with direct Redis."""
    p = cluster.primary.client()
    p.delete("t:list", "t:zs")
    p.rpush("t:list", "a", "b", "c")
    p.zadd("t:zs", {"m1": 1.5, "m2": 2})
    cluster.wait_replicated()
    reqs = [encode_command("LRANGE", "t:list", 0, -1),
            encode_command("LRANGE", "t:nolist", 0, -1),
            encode_command("ZRANGE", "t:zs", 0, -1, "WITHSCORES"),
            encode_command("GET", "t:none"),
            encode_command("EXISTS", "t:list", "t:zs", "t:none"),
            encode_command("LPOP", "t:list", 0),
            encode_command("INCR", "t:list")]
    for req in reqs:
        got = raw_command(proxy.port, req)
        assert got == raw_command(cluster.primary.port, req), req


def test_proxy_keeps_serving_many_connections(cluster, proxy):
    conns = [connect(proxy.port) for _ in range(50)]
    try:
        for s in conns:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
        for s in conns:
            assert read_replies(s, 1)[0] == [b"+PONG\r\n"]
    finally:
        for s in conns:
            s.close()
    assert proxy.client().ping()


def test_redis_py_errors_pass_through(proxy):
    c = proxy.client()
    c.set("t:str", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        c.lpush("t:str", "y")


def test_requests_split_at_every_byte(cluster, proxy):
    """Requests arriving one byte per TCP segment (RESP and inline) are framed correctly."""
    payload = (encode_command("SET", "split:k", "v\r\nv") + encode_command("ECHO", "")
               + b"PING\r\n" + encode_command("GET", "split:missing"))
    with connect(proxy.port) as s:
        for i in range(len(payload)):
            s.sendall(payload[i:i + 1])
            time.sleep(0.001)
        replies, rest = read_replies(s, 4)
    assert replies == [b"+OK\r\n", b"$0\r\n\r\n", b"+PONG\r\n", b"$-1\r\n"], replies
    assert rest == b""
    assert cluster.primary.client().get("split:k") == b"v\r\nv"
