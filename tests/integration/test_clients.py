"""Every client keeps the fast path: clients that SELECT a database, speak RESP3 (HELLO 3),
block (BLPOP, XREAD BLOCK) or subscribe still get replica reads and shared, multiplexed
backend connections, and nothing of one client's database or protocol reaches another.

Clients as users run them: redis-py (RESP2, `db=`), raw sockets for RESP3 from Python (the
Debian redis-py has no RESP3), and real Node.js clients (node-redis v5 with `RESP: 3`,
ioredis) from tests/integration/node (installed by `npm ci` there; scripts/test.sh does it).
A direct connection to redis-server is the reference for every answer; where a command ran
is read from the servers' INFO commandstats.

The proxy runs with one worker, so every client here shares the same backend connections.
"""

import json
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import fixtures
from fixtures import (HOST, SLOWDOWN, Proxy, RedisServer, connect, encode_command, free_port,
                      http_get, metric, read_replies, wait_until)

BASE_ARGS = ["--workers", "1", "--timeout", "1.0", "--health-check-interval", "0.2"]
# Waits that normally end within a second; generous for a 2-core CI machine under ASan (which
# the suite does not always announce through KP_TEST_SLOWDOWN).
SLOW = max(SLOWDOWN, 3.0)
WAIT = 10 * SLOW
NODE_DIR = Path(__file__).resolve().parent / "node"
RESP2_TYPES = set(b"+-:$*")
PINNED = "kompress_pinned_sessions_total"


# -- RESP helpers ------------------------------------------------------------------------------

class R:
    """One decoded RESP reply: its type byte `t` (b"%", b"$", ...) and value `v` (a list of R
    for aggregates, maps as a flat key, value, ... list)."""
    __slots__ = ("t", "v")

    def __init__(self, t, v):
        self.t, self.v = t, v

    def __repr__(self):
        return f"R({self.t!r}, {self.v!r})"


def parse(buf, pos=0):
    """(R, end) for the reply at buf[pos]. An attribute (|) is kept as its own R before the
    reply it annotates: (R(b'|', [...attr..., reply]))."""
    t = buf[pos:pos + 1]
    eol = buf.index(b"\r\n", pos)
    head = buf[pos + 1:eol]
    nxt = eol + 2
    if t in (b"+", b"-"):
        return R(t, head.decode()), nxt
    if t in (b":", b"("):
        return R(t, int(head)), nxt
    if t == b",":
        return R(t, float(head)), nxt
    if t == b"#":
        return R(t, head == b"t"), nxt
    if t == b"_":
        return R(t, None), nxt
    if t in (b"$", b"=", b"!"):
        n = int(head)
        if n < 0:
            return R(t, None), nxt
        return R(t, buf[nxt:nxt + n]), nxt + n + 2
    if t in (b"*", b"~", b">", b"%", b"|"):
        n = int(head)
        if n < 0:
            return R(t, None), nxt
        items = []
        for _ in range(n * 2 if t in (b"%", b"|") else n):
            item, nxt = parse(buf, nxt)
            items.append(item)
        if t == b"|":
            real, nxt = parse(buf, nxt)
            items.append(real)
        return R(t, items), nxt
    raise ValueError(f"not a RESP type byte {t!r} at {pos} in {buf[:200]!r}")


def decode(raw):
    r, end = parse(raw)
    assert end == len(raw), f"trailing bytes after one reply: {raw!r}"
    return r


def type_bytes(raw):
    """Every type byte in the reply, nested ones included."""
    out = set()

    def walk(r):
        out.add(r.t[0])
        if isinstance(r.v, list):
            for x in r.v:
                walk(x)
    walk(decode(raw))
    return out


def hello_fields(raw):
    """{field name: R} of a HELLO reply (a RESP3 map, or the RESP2 flat array)."""
    r = decode(raw)
    assert r.t in (b"%", b"*"), f"HELLO did not answer a map/array: {raw!r}"
    return {k.v.decode(): v for k, v in zip(r.v[0::2], r.v[1::2])}


def bulk(value):
    value = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(value), value)


class Conn:
    """A raw RESP connection: send commands, read whole replies (bytes)."""

    def __init__(self, port, timeout=WAIT):
        self.sock = connect(port, timeout)
        self.timeout = timeout
        self.buf = b""

    def send(self, *cmds):
        self.sock.sendall(b"".join(encode_command(*c) for c in cmds))

    def read(self, n=1):
        replies, self.buf = read_replies(self.sock, n, self.timeout, self.buf)
        return replies

    def run(self, *cmds):
        """Sends the commands in one write; their replies."""
        self.send(*cmds)
        return self.read(len(cmds))

    def call(self, *args):
        return self.run(args)[0]

    def close(self):
        self.sock.close()


# -- where commands ran ----------------------------------------------------------------------

def stats(cluster):
    """{server name: {command: calls}}."""
    return {s.name: s.commandstats() for s in cluster.servers}


def moved(before, after, commands):
    """(calls on the primary, calls on all replicas) of `commands` between two stats()."""
    def d(name):
        return sum(after[name].get(c, 0) - before[name].get(c, 0) for c in commands)
    return d("primary"), sum(d(n) for n in after if n != "primary")


def settle_on_replicas(cluster, read, command="get", what="a read served by a replica"):
    """Repeats read() (which checks its own answer) until one call of it is served by a
    replica: the proxy has qualified the replicas and this client's read-your-writes window
    (if it wrote) is over."""
    def served():
        before = cluster.snapshot(command)
        read()
        after = cluster.snapshot(command)
        return any(after[k] > before.get(k, 0) for k in after if k != "primary")
    wait_until(served, WAIT, interval=0.02, what=what)


def assert_reads_on_replicas(cluster, commands, expected, run):
    """run() issues `expected` reads (of `commands`); all of them must reach replicas."""
    before = stats(cluster)
    run()
    on_primary, on_replicas = moved(before, stats(cluster), commands)
    assert (on_primary, on_replicas) == (0, expected), \
        f"{commands}: {on_primary} ran on the primary, {on_replicas} on replicas " \
        f"(expected 0 and {expected})"


def pinned_total(p):
    status, text = http_get(p.admin, "/metrics")
    assert status == 200, text
    return metric(text, PINNED)


# -- fixtures --------------------------------------------------------------------------------

def start_proxy(factory_or_dir, cluster, *extra, name="clients"):
    admin = free_port()
    args = BASE_ARGS + ["--admin-listen", f"{HOST}:{admin}"] + list(extra)
    if callable(factory_or_dir):
        p = factory_or_dir(cluster.primary.port, [r.port for r in cluster.replicas],
                           extra_args=args, use_base_args=False)
    else:
        p = Proxy(factory_or_dir, cluster.primary.port, [r.port for r in cluster.replicas],
                  extra_args=args, use_base_args=False, name=name).start()
    p.admin = admin
    wait_until(lambda: http_get(admin, "/metrics")[0] == 200, WAIT, what="admin endpoint")
    return p


@pytest.fixture(scope="module")
def kp(cluster, tmp_path_factory):
    """One proxy (one worker, admin endpoint) in front of the module's cluster."""
    fixtures.require_proxy_bin()
    p = None
    try:
        p = start_proxy(tmp_path_factory.mktemp("clients-proxy"), cluster)
        yield p
    finally:
        if p is not None:
            p.stop()
            fixtures.dump_proxy_log(p)


# -- 1. SELECT n keeps replica reads and multiplexing ------------------------------------------

def test_select_dbs_interleaved_on_one_worker(cluster, kp):
    """redis-py clients in databases 0..5 (two threads each) interleave pipelined writes and
    reads of the same key names with database-specific values: every answer is their own
    database's. Then clients that did not write read each database from the replicas."""
    dbs = [0, 1, 2, 3, 4, 5]
    for db in dbs:
        direct = cluster.primary.client(db=db)
        direct.delete(*[f"sel:{t}:{j}" for t in range(2) for j in range(10)])
        direct.set("sel:marker", f"marker-db{db}")
    cluster.wait_replicated()
    rounds = 40
    errors = []
    start = threading.Barrier(len(dbs) * 2)

    def worker(db, tag):
        try:
            # One connection for all of this thread's commands: read-your-writes is per
            # connection (a single_connection_client's pipeline() would run on another one
            # taken from its pool), and redis-py's pool hands one thread the same connection.
            c = kp.client(db=db, timeout=WAIT)
            keys = [f"sel:{tag}:{j}" for j in range(10)]
            start.wait(WAIT)
            for r in range(rounds):
                values = [f"db{db}:t{tag}:r{r}:{j}".encode() for j in range(10)]
                pipe = c.pipeline(transaction=False)
                for k, v in zip(keys, values):
                    pipe.set(k, v)
                pipe.get("sel:marker")
                for k in keys:
                    pipe.get(k)
                got = pipe.execute()
                if got[:10] != [True] * 10:
                    errors.append((db, tag, r, "set", got[:10]))
                if got[10] != f"marker-db{db}".encode():
                    errors.append((db, tag, r, "marker", got[10]))
                if got[11:] != values:
                    errors.append((db, tag, r, "pipelined get", got[11:]))
                many = c.mget(keys)
                if many != values:
                    errors.append((db, tag, r, "mget", many))
                j = r % 10
                one = c.get(keys[j])
                if one != values[j]:
                    errors.append((db, tag, r, "get", one))
            c.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append((db, tag, "exception", repr(exc)))

    threads = [threading.Thread(target=worker, args=(db, tag)) for db in dbs for tag in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 6)
    assert not any(t.is_alive() for t in threads), "client threads did not finish"
    assert not errors, f"{len(errors)} wrong answers, first: {errors[:5]}"

    # What the primary holds: each database its own values, no write landed elsewhere.
    for db in dbs:
        direct = cluster.primary.client(db=db)
        for tag in (0, 1):
            want = [f"db{db}:t{tag}:r{rounds - 1}:{j}".encode() for j in range(10)]
            assert direct.mget([f"sel:{tag}:{j}" for j in range(10)]) == want, f"db {db}"
    cluster.wait_replicated()

    # Readers that never wrote: every database is read from the replicas.
    readers = {db: kp.client(db=db, single_connection_client=True) for db in dbs}

    def read_all():
        for db, c in readers.items():
            assert c.get("sel:marker") == f"marker-db{db}".encode(), f"db {db}"
            assert c.get("sel:1:3") == f"db{db}:t1:r{rounds - 1}:3".encode(), f"db {db}"
    settle_on_replicas(cluster, lambda: readers[0].get("sel:marker"))
    assert_reads_on_replicas(cluster, ["get"], 5 * 2 * len(dbs),
                             lambda: [read_all() for _ in range(5)])


def test_select_errors_are_redis_errors(cluster, kp):
    """SELECT out of range / not a number answers what Redis answers, and leaves the
    client in its database."""
    seq = [("SELECT", "2"), ("SET", "sel:err", "in-db2"), ("SELECT", "99"), ("SELECT", "x"),
           ("SELECT", "-1"), ("SELECT", "16"), ("SELECT", ""), ("SELECT", "1", "2"),
           ("SELECT",), ("GET", "sel:err"), ("SELECT", "0"), ("GET", "sel:err")]
    cluster.primary.client().delete("sel:err")
    direct = Conn(cluster.primary.port).run(*seq)
    via = Conn(kp.port).run(*seq)
    diffs = [(c, d, v) for c, d, v in zip(seq, direct, via) if d != v]
    assert not diffs, "replies differ from Redis (command, direct, proxy): " + repr(diffs)
    assert direct[2] == b"-ERR DB index is out of range\r\n"
    assert direct[3] == b"-ERR value is not an integer or out of range\r\n"


def test_select_unusual_arguments_match_redis(cluster, kp):
    """Arguments a client could send by mistake get Redis's own answer, and its next write
    lands in the database it would land in on Redis."""
    args = ["01", "-0", "+1", "1.5", " 1", "4294967296", "-99999999999", "15", "007",
            "99999999999999999999"]

    def select_then_write(port, arg):
        for db in range(16):
            cluster.primary.client(db=db).delete("sel:unusual")
        c = Conn(port)
        reply = c.call("SELECT", arg)
        assert c.call("SET", "sel:unusual", "x") == b"+OK\r\n"
        c.close()
        return reply, [db for db in range(16)
                       if cluster.primary.client(db=db).exists("sel:unusual")]
    diffs = []
    for a in args:
        (w, wdb), (g, gdb) = select_then_write(cluster.primary.port, a), \
            select_then_write(kp.port, a)
        if (w, wdb) != (g, gdb):
            diffs.append(f"SELECT {a!r}: Redis {w!r} (next write in db {wdb}), "
                         f"proxy {g!r} (next write in db {gdb})")
    assert not diffs, "\n".join(diffs)


# -- 2. HELLO 3 / RESP3 end to end -------------------------------------------------------------

def test_hello3_as_first_command(cluster, kp):
    """A Lettuce-style handshake: HELLO 3 is the first thing on the connection (no AUTH
    before it), commands follow in the same write. The map has Redis's fields and types."""
    version = cluster.primary.client().info("server")["redis_version"]
    cluster.primary.client().delete("h3:k")
    cmds = [("HELLO", "3"), ("CLIENT", "ID"), ("PING",), ("SET", "h3:k", "v"), ("GET", "h3:k"),
            ("GET", "h3:missing"), ("CLIENT", "GETNAME"), ("ECHO", "e")]
    direct = Conn(cluster.primary.port).run(*cmds)
    via = Conn(kp.port).run(*cmds)
    assert via[0][:1] == direct[0][:1] == b"%", (direct[0], via[0])
    fd, fv = hello_fields(direct[0]), hello_fields(via[0])
    assert list(fv) == list(fd), f"fields: Redis {list(fd)}, proxy {list(fv)}"
    assert {k: v.t for k, v in fv.items()} == {k: v.t for k, v in fd.items()}
    assert fv["server"].v == b"redis"
    assert fv["version"].v == version.encode()
    assert fv["proto"].v == 3
    assert fv["id"].v == decode(via[1]).v, "HELLO's id is not CLIENT ID"
    assert fv["mode"].v == b"standalone" and fv["role"].v == b"master"
    assert fv["modules"].t == b"*" and fv["modules"].v == []
    for k in ("server", "version", "proto", "mode", "role"):
        assert fv[k].v == fd[k].v, k
    assert via[2:] == direct[2:], list(zip(cmds[2:], direct[2:], via[2:]))
    assert via[5] == b"_\r\n" and via[6] == b"_\r\n"

    # HELLO 3 SETNAME names the client (a fresh connection, like a client's second one).
    cmds = [("HELLO", "3", "SETNAME", "lettuce-like"), ("CLIENT", "GETNAME"), ("GET", "h3:k")]
    direct = Conn(cluster.primary.port).run(*cmds)
    via = Conn(kp.port).run(*cmds)
    assert via[0][:1] == direct[0][:1] == b"%" and hello_fields(via[0])["proto"].v == 3
    assert via[1:] == direct[1:] == [bulk("lettuce-like"), bulk("v")]


def test_resp3_replies_byte_equal_to_direct(cluster, kp):
    """After HELLO 3 every reply type is relayed as the primary gives it to a direct RESP3
    connection: maps, sets, doubles, nulls, booleans, big numbers, verbatim strings,
    attributes, errors. Reads come from the replicas (their connections speak RESP3 too).
    HELLO 2 switches back to RESP2 replies."""
    p = cluster.primary.client()
    p.delete("r3:h", "r3:s", "r3:z", "r3:str", "r3:x", "r3:l", "r3:zi:direct", "r3:zi:proxy")
    p.hset("r3:h", mapping={"f1": "v1", "f2": "2", "f3": ""})
    p.sadd("r3:s", "only")
    p.zadd("r3:z", {"m": 2.5, "n": -1, "o": 1e10})
    p.set("r3:str", "plain")
    p.rpush("r3:l", "a", "b")
    p.xadd("r3:x", {"k": "v"}, id="1-1")
    p.xadd("r3:x", {"k2": "v2"}, id="2-1")
    cluster.wait_replicated()
    reads = [("HGETALL", "r3:h"), ("SMEMBERS", "r3:s"), ("ZSCORE", "r3:z", "m"),
             ("ZSCORE", "r3:z", "nope"), ("ZRANGE", "r3:z", "0", "-1", "WITHSCORES"),
             ("ZMSCORE", "r3:z", "m", "nope", "o"), ("GET", "r3:missing"), ("GET", "r3:str"),
             ("MGET", "r3:str", "r3:missing"), ("HMGET", "r3:h", "f1", "zz"),
             ("HGETALL", "r3:missing"), ("LRANGE", "r3:l", "0", "-1"), ("EXISTS", "r3:h"),
             ("XRANGE", "r3:x", "-", "+"), ("HGETALL", "r3:str"), ("STRLEN", "r3:str"),
             ("TTL", "r3:str")]
    read_cmds = sorted({c[0].lower() for c in reads})
    others = [("CLIENT", "GETNAME"), ("PING",), ("ECHO", "x"),
              ("EVAL", "redis.setresp(3); return true", "0"),
              ("EVAL", "redis.setresp(3); return false", "0"),
              ("EVAL", "redis.setresp(3); return {double=3.5}", "0"),
              ("EVAL", "redis.setresp(3); return {big_number='123456789012345678901234567890'}",
               "0"),
              ("EVAL", "redis.setresp(3); return redis.call('HGETALL', KEYS[1])", "1", "r3:h"),
              ("EVAL", "return redis.call('HGETALL', KEYS[1])", "1", "r3:h"),
              ("DEBUG", "PROTOCOL", "map"), ("DEBUG", "PROTOCOL", "set"),
              ("DEBUG", "PROTOCOL", "double"), ("DEBUG", "PROTOCOL", "bignum"),
              ("DEBUG", "PROTOCOL", "null"), ("DEBUG", "PROTOCOL", "true"),
              ("DEBUG", "PROTOCOL", "verbatim"), ("DEBUG", "PROTOCOL", "attrib"),
              ("NOSUCHCOMMAND", "a"), ("GET",), ("INCR", "r3:str")]

    direct, via = Conn(cluster.primary.port), Conn(kp.port)
    assert direct.call("HELLO", "3")[:1] == via.call("HELLO", "3")[:1] == b"%"
    # The proxy has to know the replicas are current before it reads from them.
    settle_on_replicas(cluster, lambda: via.call("HGETALL", "r3:h"), command="hgetall")
    want = direct.run(*reads)
    got = []
    assert_reads_on_replicas(cluster, read_cmds, len(reads),
                             lambda: got.extend(via.run(*reads)))
    diffs = [(c, w, g) for c, w, g in zip(reads, want, got) if w != g]
    assert not diffs, "RESP3 reads differ (command, direct, proxy): " + repr(diffs)
    # (The reference really is RESP3: a map, a set, a double, a null.)
    assert [w[:1] for w in want[:3]] == [b"%", b"~", b","] and want[6] == b"_\r\n"

    want = direct.run(*others)
    got = via.run(*others)
    diffs = [(c, w, g) for c, w, g in zip(others, want, got) if w != g]
    assert not diffs, "RESP3 replies differ (command, direct, proxy): " + repr(diffs)
    assert got[0] == b"_\r\n" and got[3] == b"#t\r\n" and got[4] == b"#f\r\n"
    # Doubles from writes: each connection its own key, so the same answer.
    assert direct.call("ZINCRBY", "r3:zi:direct", "1.5", "m") == \
        via.call("ZINCRBY", "r3:zi:proxy", "1.5", "m")

    # Back to RESP2: the same reads, RESP2 types only.
    hd, hv = direct.call("HELLO", "2"), via.call("HELLO", "2")
    assert hd[:1] == hv[:1] == b"*"
    assert hello_fields(hv)["proto"].v == 2
    cluster.wait_replicated()
    settle_on_replicas(cluster, lambda: via.call("HGETALL", "r3:h"), command="hgetall")
    want = direct.run(*reads)
    got = []
    assert_reads_on_replicas(cluster, read_cmds, len(reads),
                             lambda: got.extend(via.run(*reads)))
    diffs = [(c, w, g) for c, w, g in zip(reads, want, got) if w != g]
    assert not diffs, "RESP2 reads after HELLO 2 differ (command, direct, proxy): " + repr(diffs)
    for c, g in zip(reads, got):
        assert type_bytes(g) <= RESP2_TYPES, (c, g)
    assert via.call("CLIENT", "GETNAME") == direct.call("CLIENT", "GETNAME") == b"$-1\r\n"


def _start_reference_with_password(tmp_path, password):
    """A standalone redis-server with requirepass: the reference for AUTH answers."""
    ref = RedisServer(tmp_path, "authref", extra_args=["--requirepass", password])
    ref.start(wait=False)

    def up():
        if ref.proc.poll() is not None:
            raise RuntimeError(f"reference server exited: {ref.log_tail()}")
        c = Conn(ref.port, timeout=1)
        try:
            return c.call("PING").startswith(b"-NOAUTH")
        finally:
            c.close()
    wait_until(up, WAIT, what="reference redis-server with requirepass")
    return ref


def test_hello_auth_and_setname_with_requirepass(cluster, make_proxy, tmp_path):
    """HELLO 3 AUTH default <pw> SETNAME x authenticates and names the client; before it,
    HELLO 3 alone and wrong passwords are refused as Redis refuses them."""
    ref = _start_reference_with_password(tmp_path, "s3cret")
    try:
        p = start_proxy(make_proxy, cluster, "--requirepass", "s3cret")
        steps = [("GET", "auth:missing"), ("HELLO", "3"),
                 ("HELLO", "3", "AUTH", "default", "wrong"),
                 ("HELLO", "3", "AUTH", "nobody", "s3cret"),
                 ("HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "lettuce-x"),
                 ("CLIENT", "GETNAME"), ("GET", "auth:missing"), ("ZSCORE", "auth:missing", "m"),
                 ("HELLO", "2"), ("GET", "auth:missing"), ("CLIENT", "GETNAME"),
                 ("HELLO", "3", "SETNAME", "renamed"), ("CLIENT", "GETNAME"),
                 ("HELLO", "4"), ("GET", "auth:missing"), ("HELLO", "2", "AUTH", "default")]
        cluster.primary.client().delete("auth:missing")
        direct, via = Conn(ref.port), Conn(p.port)
        problems = []
        for step in steps:
            w, g = direct.call(*step), via.call(*step)
            if w[:1] in (b"%", b"*") and step[0] == "HELLO":
                fw, fg = hello_fields(w), hello_fields(g) if g[:1] in (b"%", b"*") else None
                if fg is None or list(fw) != list(fg) or \
                        {k: v.t for k, v in fw.items()} != {k: v.t for k, v in fg.items()} or \
                        fw["proto"].v != fg["proto"].v or g[:1] != w[:1]:
                    problems.append((step, w, g))
                elif step[:2] == ("HELLO", "3"):
                    assert fg["id"].v == decode(via.call("CLIENT", "ID")).v
            elif w != g:
                problems.append((step, w, g))
        assert not problems, "replies differ (command, Redis, proxy): " + repr(problems)
    finally:
        ref.stop()


def test_hello_arguments_match_redis(cluster, kp):
    """HELLO with versions and options Redis refuses: the same error, byte for byte (each on
    a fresh connection, which stays usable in its protocol)."""
    cases = [("4",), ("1",), ("0",), ("-1",), ("x",), ("",), ("03",), ("3.0",),
             ("99999999999999999999",), ("3", "FOO"), ("3", "AUTH", "default"),
             ("3", "SETNAME"), ("2", "SETNAME", "a b"), ("3", "AUTH", "default", "any")]
    problems = []
    for case in cases:
        direct, via = Conn(cluster.primary.port), Conn(kp.port)
        w = direct.run(("HELLO",) + case, ("GET", "hello:missing"))
        g = via.run(("HELLO",) + case, ("GET", "hello:missing"))
        if w[0][:1] == b"-" or g[0][:1] == b"-":
            if w != g:
                problems.append((case, w, g))
        elif g[0][:1] != w[0][:1] or g[1] != w[1] or \
                list(hello_fields(g[0])) != list(hello_fields(w[0])):
            problems.append((case, w, g))
        direct.close()
        via.close()
    assert not problems, "replies differ (HELLO arguments, Redis, proxy):\n" + \
        "\n".join(map(repr, problems))


# -- 3. Node.js clients: node-redis (RESP3) and ioredis (RESP2) -----------------------------------

def run_node(scenario, args, cluster=None, on_ready=None):
    """Runs one scenario of node/clients.js; its JSON result (see run_client)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: the Node.js client tests need Node.js 18+", pytrace=False)
    for mod in ("redis", "ioredis"):
        if not (NODE_DIR / "node_modules" / mod / "package.json").is_file():
            pytest.fail(f"{NODE_DIR}/node_modules/{mod} missing: run `npm ci` in {NODE_DIR} "
                        "(scripts/test.sh does)", pytrace=False)
    return run_client([node, str(NODE_DIR / "clients.js")], NODE_DIR, scenario, args, cluster,
                      on_ready)


def run_client(argv, cwd, scenario, args, cluster=None, on_ready=None):
    """Runs one scenario of a client script (`argv scenario json-args`: node/clients.js,
    php/clients.php, ruby/clients.rb); its JSON result, the last line it prints. With
    on_ready, the scenario first settles its reads on the cluster's replicas, then on_ready()
    runs (a snapshot of the servers' counters, a fault) before the reads it is told to go on
    with."""
    label = f"{Path(argv[-1]).name} {scenario}"
    deadline_ms = int(30000 * SLOW)
    args = dict(args, deadline_ms=deadline_ms, gate=on_ready is not None,
                settle_ms=int(WAIT * 1000),
                replicas=[r.port for r in cluster.replicas] if cluster else [])
    proc = subprocess.Popen(argv + [scenario, json.dumps(args)], cwd=cwd,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)

    def failed(what, out=b"", err=b""):
        return f"{label}: {what}\nstdout: {out.decode()[-2000:]}\n" \
               f"stderr: {err.decode()[-4000:]}"
    try:
        if on_ready is not None:
            ready, _, _ = select.select([proc.stdout], [], [], deadline_ms / 1000 + 10)
            line = proc.stdout.readline() if ready else b""
            if not line.strip():
                proc.kill()
                out, err = proc.communicate(timeout=30)
                pytest.fail(failed(f"not ready (exit {proc.returncode})", line + out, err),
                            pytrace=False)
            assert json.loads(line) == {"ready": True}, line
            on_ready()
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=deadline_ms / 1000 + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(failed("still running after its deadline", out, err), pytrace=False)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, failed(f"exited {proc.returncode}", out, err)
    return json.loads(out.splitlines()[-1])


def _seed_node_data(cluster, db, prefix):
    c = cluster.primary.client(db=db)
    c.delete(f"{prefix}:str", f"{prefix}:h", f"{prefix}:z", f"{prefix}:set", f"{prefix}:missing")
    c.set(f"{prefix}:str", f"hello-db{db}")
    c.hset(f"{prefix}:h", mapping={"a": "1", "b": "two", "db": str(db)})
    c.zadd(f"{prefix}:z", {"m": 1.5})
    c.sadd(f"{prefix}:set", "only")
    cluster.wait_replicated()
    return {"str": f"{prefix}:str", "hash": f"{prefix}:h", "zset": f"{prefix}:z",
            "member": "m", "set": f"{prefix}:set", "missing": f"{prefix}:missing"}


@pytest.mark.parametrize("lib", ["node-redis", "ioredis"])
def test_node_client_reads_from_replicas(cluster, kp, lib):
    """node-redis (RESP3, database 3 from the URL) and ioredis (RESP2, db 3): the answers
    equal those of the same client connected to Redis directly, and the reads ran on the
    replicas."""
    db, n = 3, 10
    keys = _seed_node_data(cluster, db, f"nr:{lib}")
    ref = run_node(f"{lib}-read", dict(keys, proxy=cluster.primary.port, db=db, n=n))
    before = {}
    out = run_node(f"{lib}-read", dict(keys, proxy=kp.port, db=db, n=n), cluster,
                   on_ready=lambda: before.update(stats(cluster)))
    after = stats(cluster)
    assert out == ref
    assert out["get"] == [f"hello-db{db}"] * n
    if lib == "node-redis":
        assert out["hGetAll"][0] == {"a": "1", "b": "two", "db": str(db)}
        # RESP3 really spoken: a map arrives as an object, a double as a number.
        assert out["raw"]["hgetall"]["type"] == "object"
        assert out["raw"]["zscore"] == {"type": "number", "value": "1.5"}
        reads = {"get": n + 1, "hgetall": n + 1, "zscore": 1, "smembers": 1}
    else:
        assert out["hgetall"][0] == {"a": "1", "b": "two", "db": str(db)}
        reads = {"get": n + 1, "hgetall": n, "zscore": 1}
    for cmd, count in reads.items():
        assert moved(before, after, [cmd]) == (0, count), \
            f"{cmd}: (primary, replicas) calls {moved(before, after, [cmd])}, want (0, {count})"


@pytest.mark.parametrize("lib", ["node-redis", "ioredis"])
def test_node_client_writes_and_pipelines(cluster, kp, lib):
    """Writes, read-backs, a pipeline and 400 concurrent commands in database 3: the same
    answers as directly against Redis, and the writes are in database 3 only."""
    db = 3
    prefixes = {"direct": f"nw:{lib}:direct", "proxy": f"nw:{lib}:proxy"}
    for d in (0, db):
        c = cluster.primary.client(db=d)
        for pfx in prefixes.values():
            keys = c.keys(pfx + ":*")
            if keys:
                c.delete(*keys)
    ref = run_node(f"{lib}-write", {"proxy": cluster.primary.port, "db": db,
                                    "prefix": prefixes["direct"]})
    out = run_node(f"{lib}-write", {"proxy": kp.port, "db": db, "prefix": prefixes["proxy"]})
    assert out == ref
    assert out["get"] in ("v-node", "v-io") and out["many"] == [f"m{i}" for i in range(200)]
    in_db = cluster.primary.client(db=db)
    in_0 = cluster.primary.client(db=0)
    assert len(in_db.keys(prefixes["proxy"] + ":*")) == len(in_db.keys(prefixes["direct"] + ":*"))
    assert in_db.get(prefixes["proxy"] + ":s") == out["get"].encode()
    assert in_0.keys(prefixes["proxy"] + ":*") == []


@pytest.mark.parametrize("lib", ["node-redis", "ioredis"])
def test_node_client_pubsub(cluster, kp, lib):
    """Subscribe to a channel and a pattern through the proxy, 300 messages published on a
    direct connection arrive in order, unsubscribe; then the same client's reads run on the
    replicas (it left the dedicated connection)."""
    db, n, reads_after = 3, 300, 10
    keys = _seed_node_data(cluster, db, f"np:{lib}")
    args = dict(keys, primary=cluster.primary.port, db=db, n=n, reads_after=reads_after,
                channel=f"np:{lib}:news", pattern=f"np:{lib}:n*")
    ref = run_node(f"{lib}-pubsub", dict(args, proxy=cluster.primary.port))
    pinned0 = pinned_total(kp)
    before = {}
    # (The client settles its reads on the replicas after unsubscribing: they never get
    # there if it stayed on its dedicated primary connection.)
    out = run_node(f"{lib}-pubsub", dict(args, proxy=kp.port), cluster,
                   on_ready=lambda: before.update(stats(cluster)))
    after = stats(cluster)
    assert out == ref
    want = [[args["channel"], f"msg-{i}"] for i in range(n)]
    assert out["got"] == want and out["pgot"] == want
    assert out["receiversAfter"] == 0, "the subscription outlived UNSUBSCRIBE"
    assert out["after"] == [f"hello-db{db}"] * reads_after
    assert pinned_total(kp) - pinned0 == 1
    assert moved(before, after, ["get"]) == (0, reads_after), \
        f"GETs after unsubscribing: (primary, replicas) {moved(before, after, ['get'])}"


# -- 4. blocking commands hold a dedicated connection only while they block --------------------

@pytest.mark.parametrize("kind", ["blpop", "xread"])
def test_blocking_command_then_reads_on_replicas(cluster, kp, kind):
    key, val_key = f"blk:{kind}", f"blk:{kind}:v"
    direct = cluster.primary.client()
    direct.delete(key)
    direct.set(val_key, "here")
    last_id = direct.xadd(key, {"seed": "0"}) if kind == "xread" else None
    cluster.wait_replicated()
    a = kp.client(timeout=WAIT + 10, single_connection_client=True)
    assert a.get(val_key) == b"here"
    blocked0 = direct.info("clients")["blocked_clients"]
    pinned0 = pinned_total(kp)
    result = {}

    def block():
        try:
            if kind == "blpop":
                result["v"] = a.blpop(key, timeout=int(WAIT))
            else:
                result["v"] = a.xread({key: last_id}, block=int(WAIT * 1000))
        except Exception as exc:  # noqa: BLE001
            result["v"] = exc
    t = threading.Thread(target=block)
    t.start()
    wait_until(lambda: direct.info("clients")["blocked_clients"] > blocked0, WAIT,
               what=f"{kind} blocked on the primary")
    b = kp.client()
    new_id = b.rpush(key, "item") if kind == "blpop" else b.xadd(key, {"f": "v"})
    t.join(WAIT + 10)
    assert not t.is_alive()
    if kind == "blpop":
        assert result["v"] == (key.encode(), b"item")
    else:
        assert result["v"] == [[key.encode(), [(new_id, {b"f": b"v"})]]]
    assert pinned_total(kp) - pinned0 == 1
    # The blocking command counted as a write (read-your-writes): once a replica has it,
    # this same connection's reads are on the replicas again, not on a pinned primary one.
    settle_on_replicas(cluster, lambda: a.get(val_key), what=f"reads after {kind} on replicas")

    def reads():
        for _ in range(20):
            assert a.get(val_key) == b"here"
    assert_reads_on_replicas(cluster, ["get"], 20, reads)


@pytest.mark.parametrize("proto,db", [(2, 0), (3, 3)])
def test_blocking_commands_inside_pipelines(cluster, kp, proto, db):
    """BLPOP / XREAD BLOCK pipelined between GETs, by a client in database `db` speaking
    RESP`proto`: the replies in order and byte for byte as Redis gives them (the dedicated
    connection has the client's database and protocol); afterwards its reads are on the
    replicas again, in its database."""
    key, xkey, vkey = f"bp:{proto}:{db}:l", f"bp:{proto}:{db}:x", f"bp:{proto}:{db}:v"
    for d in range(6):
        cluster.primary.client(db=d).set(vkey, f"v-db{d}")
    seq = [("RPUSH", key, "a", "b"), ("BLPOP", key, "1"), ("GET", vkey), ("BLPOP", key, "1"),
           ("BLPOP", key, "0.01"), ("GET", vkey), ("XADD", xkey, "1-1", "f", "v"),
           ("XREAD", "BLOCK", "10", "STREAMS", xkey, "0"),
           ("XREAD", "BLOCK", "10", "STREAMS", xkey, "$"), ("GET", vkey), ("LLEN", key)]

    def run(port):
        in_db = cluster.primary.client(db=db)
        in_db.delete(key, xkey)
        c = Conn(port)
        assert c.run(("HELLO", str(proto)), ("SELECT", str(db)))[1] == b"+OK\r\n"
        replies = c.run(*seq)
        in_db.delete(key, xkey)
        return c, replies
    _, want = run(cluster.primary.port)
    pinned0 = pinned_total(kp)
    via, got = run(kp.port)
    diffs = [(c, w, g) for c, w, g in zip(seq, want, got) if w != g]
    assert not diffs, "replies differ (command, direct, proxy): " + repr(diffs)
    assert got[2] == bulk(f"v-db{db}")
    assert pinned_total(kp) - pinned0 >= 1
    cluster.wait_replicated()
    settle_on_replicas(cluster, lambda: via.call("GET", vkey), what="reads on the replicas")

    def reads():
        for _ in range(10):
            assert via.call("GET", vkey) == bulk(f"v-db{db}")
    assert_reads_on_replicas(cluster, ["get"], 10, reads)


def test_repeated_blpop_reuses_backend_connection(fresh_cluster, make_proxy):
    """50 BLPOPs of 0.01 s in a row from one client: each is a pinned session, but they do
    not open a backend connection each (the primary's connection count stays small)."""
    cluster = fresh_cluster
    p = start_proxy(make_proxy, cluster)
    cluster.primary.client().set("rb:v", "value")
    cluster.wait_replicated()
    mon = cluster.primary.client(single_connection_client=True)
    c = p.client(timeout=WAIT, single_connection_client=True)
    assert c.blpop("rb:empty", timeout=0.01) is None  # warm-up: the first dedicated connection
    conns0 = mon.info("stats")["total_connections_received"]
    clients0 = mon.info("clients")["connected_clients"]
    pinned0 = pinned_total(p)
    peak = [clients0]
    stop = threading.Event()

    def sample():
        s = cluster.primary.client(single_connection_client=True)
        while not stop.is_set():
            peak[0] = max(peak[0], s.info("clients")["connected_clients"])
            time.sleep(0.002)
        s.close()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(50):
            assert c.blpop("rb:empty", timeout=0.01) is None
    finally:
        stop.set()
        sampler.join(10)
    opened = mon.info("stats")["total_connections_received"] - conns0 - 1  # - the sampler
    print(f"primary clients: {clients0} before, peak {peak[0]}; connections opened: {opened}")
    assert pinned_total(p) - pinned0 == 50
    assert peak[0] < 10, f"primary had {peak[0]} clients during the BLPOPs (before: {clients0})"
    assert opened <= 3, f"50 BLPOPs opened {opened} new backend connections"
    settle_on_replicas(cluster, lambda: c.get("rb:v"), what="reads after BLPOPs on replicas")

    def reads():
        for _ in range(10):
            assert c.get("rb:v") == b"value"
    assert_reads_on_replicas(cluster, ["get"], 10, reads)


# -- 5. pub/sub: until the last unsubscribe, then back to shared connections -------------------

@pytest.mark.parametrize("proto", [2, 3])
def test_pubsub_order_and_leaving_the_dedicated_connection(cluster, kp, proto):
    """A client on a channel, a pattern and a shard channel gets exactly what a direct
    subscriber gets (1000 messages, publish order, RESP3 push frames); it stays subscribed
    until all three are gone, then its reads go to the replicas."""
    pre = f"ps{proto}"
    ch, pat, sch, key = f"{pre}:news", f"{pre}:n*", f"{pre}:shard", f"{pre}:v"
    cluster.primary.client().set(key, "val")
    cluster.wait_replicated()
    direct, via, pub = Conn(cluster.primary.port), Conn(kp.port), Conn(cluster.primary.port)

    def both(*cmds, frames=None):
        direct.send(*cmds)
        via.send(*cmds)
        n = len(cmds) if frames is None else frames
        w, g = direct.read(n), via.read(n)
        assert g == w, f"after {cmds}: direct {w!r}, proxy {g!r}"
        return g

    if proto == 3:
        assert direct.call("HELLO", "3")[:1] == via.call("HELLO", "3")[:1] == b"%"
    pinned0 = pinned_total(kp)
    got = both(("SUBSCRIBE", ch), ("PSUBSCRIBE", pat), ("SSUBSCRIBE", sch))
    assert all(f[:1] == (b">" if proto == 3 else b"*") for f in got)
    assert pinned_total(kp) - pinned0 == 1

    n = 1000
    receivers = pub.run(*[("PUBLISH", ch, f"m{i}") for i in range(n)])
    assert set(receivers) == {b":4\r\n"}, set(receivers)  # two subscribers, channel + pattern
    frames = both(frames=2 * n)
    msgs = [decode(f).v for f in frames]
    assert [m[-1].v for m in msgs] == [f"m{i // 2}".encode() for i in range(2 * n)]
    assert [m[0].v for m in msgs] == [b"message", b"pmessage"] * n
    if proto == 2:
        assert all(type_bytes(f) <= RESP2_TYPES for f in frames)
    else:
        assert all(f[:1] == b">" for f in frames)
    assert pub.call("SPUBLISH", sch, "s1") == b":2\r\n"
    both(frames=1)

    # The channel is gone, the pattern and the shard channel keep the client subscribed.
    both(("UNSUBSCRIBE", ch))
    assert pub.call("PUBLISH", ch, "after-unsubscribe") == b":2\r\n"
    assert decode(both(frames=1)[0]).v[0].v == b"pmessage"
    both(("GET", key))  # RESP2: refused as Redis refuses it; RESP3: answered
    both(("PING",))
    both(("PUNSUBSCRIBE", pat))
    assert pub.call("SPUBLISH", sch, "s2") == b":2\r\n"
    assert decode(both(frames=1)[0]).v[0].v == b"smessage"
    both(("SUNSUBSCRIBE", sch))
    assert pub.call("PUBLISH", ch, "nobody") == b":0\r\n"
    assert pub.call("SPUBLISH", sch, "nobody") == b":0\r\n"

    # No subscription left: an ordinary client again, reading from the replicas.
    both(("PING",), ("GET", key), ("GET", f"{pre}:missing"))
    settle_on_replicas(cluster, lambda: via.call("GET", key), what="reads after unsubscribing")

    def reads():
        for _ in range(20):
            assert via.call("GET", key) == bulk("val")
    assert_reads_on_replicas(cluster, ["get"], 20, reads)
    for c in (direct, via, pub):
        c.close()


def test_pubsub_subscribe_again_after_leaving(cluster, kp):
    """Subscribe, unsubscribe (back on shared connections), subscribe again: messages still
    arrive, and nothing published in between is delivered late."""
    direct, via, pub = Conn(cluster.primary.port), Conn(kp.port), Conn(cluster.primary.port)
    for round_ in range(3):
        for c in (direct, via):
            assert c.call("SUBSCRIBE", "again")[:1] == b"*"
        assert pub.call("PUBLISH", "again", f"r{round_}") == b":2\r\n"
        w, g = direct.read(1), via.read(1)
        assert g == w
        assert direct.call("UNSUBSCRIBE", "again") == via.call("UNSUBSCRIBE", "again")
        assert pub.call("PUBLISH", "again", f"lost{round_}") == b":0\r\n"
        assert direct.run(("PING",), ("GET", "again:missing")) == \
            via.run(("PING",), ("GET", "again:missing"))


@pytest.mark.parametrize("proto", [2, 3])
def test_pubsub_sequences_match_redis(cluster, kp, proto):
    """Subscribe / unsubscribe sequences (several channels, no-argument UNSUBSCRIBE,
    unsubscribing when not subscribed, commands pipelined right after the last unsubscribe):
    the replies as Redis gives them, then the client reads from the replicas."""
    key = f"pseq:{proto}:v"
    cluster.primary.client().set(key, "val")
    cluster.wait_replicated()
    sequences = [
        [("SUBSCRIBE", "pa", "pb", "pc"), ("UNSUBSCRIBE",), ("GET", key)],
        [("SUBSCRIBE", "pa"), ("UNSUBSCRIBE", "pa"), ("GET", key), ("GET", key)],
        [("PSUBSCRIBE", "p*"), ("SUBSCRIBE", "pa"), ("PUNSUBSCRIBE",), ("UNSUBSCRIBE",),
         ("GET", key)],
        [("UNSUBSCRIBE",), ("PUNSUBSCRIBE", "nothing*"), ("GET", key)],
        [("SSUBSCRIBE", "sa", "sb"), ("SUNSUBSCRIBE", "sa"), ("SUNSUBSCRIBE",), ("GET", key)],
        [("SUBSCRIBE", "pa"), ("PING",), ("PING", "x"), ("UNSUBSCRIBE", "pa", "pb"),
         ("PING",), ("GET", key)],
    ]
    end = ("ECHO", "end-of-sequence")

    def replies(conn, seq):
        conn.send(*seq, end)
        out = []
        while not out or out[-1] != bulk(end[1]):
            out += conn.read(1)
        return out
    for seq in sequences:
        direct, via = Conn(cluster.primary.port), Conn(kp.port)
        if proto == 3:
            assert direct.call("HELLO", "3")[:1] == via.call("HELLO", "3")[:1] == b"%"
        want, got = replies(direct, seq), replies(via, seq)
        assert got == want, f"{seq}: direct {want!r}, proxy {got!r}"
        settle_on_replicas(cluster, lambda: via.call("GET", key),
                           what=f"reads on replicas after {seq}")

        def reads():
            for _ in range(5):
                assert via.call("GET", key) == bulk("val")
        assert_reads_on_replicas(cluster, ["get"], 5, reads)
        direct.close()
        via.close()


def test_resp3_reply_resembling_unsubscribe_keeps_subscription(cluster, kp):
    """A RESP3 subscriber may run ordinary commands; a reply whose data happens to look like
    an unsubscribe confirmation (a list holding "unsubscribe", "x", "y:0") must not end its
    subscription: it still gets the channel's messages, and no other client ever does."""
    r = cluster.primary.client()
    r.delete("trap:list")
    r.rpush("trap:list", "unsubscribe", "x", "y:0")
    cluster.wait_replicated()
    direct, via = Conn(cluster.primary.port), Conn(kp.port)
    for c in (direct, via):
        assert c.call("HELLO", "3")[:1] == b"%"
        assert c.call("SUBSCRIBE", "trap:ch")[:1] == b">"
    assert via.call("LRANGE", "trap:list", "0", "-1") == \
        direct.call("LRANGE", "trap:list", "0", "-1")
    # Another RESP3 client blocks meanwhile (a pinned session of the same class).
    other = Conn(kp.port)
    assert other.call("HELLO", "3")[:1] == b"%"
    blocked0 = r.info("clients")["blocked_clients"]
    other.send(("BLPOP", "trap:empty", "2"))
    wait_until(lambda: r.info("clients")["blocked_clients"] > blocked0, WAIT,
               what="the other client's BLPOP blocked")
    assert r.publish("trap:ch", "for-subscribers-only") == 2
    want = direct.read(1)
    try:
        via.timeout = 2 * SLOW  # the direct subscriber has it already
        got = via.read(1)
    except (TimeoutError, OSError) as exc:
        got = [f"nothing ({exc!r})"]
    other_reply = other.read(1)
    assert other_reply == [b"_\r\n"], \
        f"the blocked client got {other_reply!r} instead of its BLPOP timeout"
    assert got == want, f"the subscriber got {got!r} instead of {want!r}"


# -- 6. many clients, databases and protocols on one worker ------------------------------------

def test_mixed_dbs_and_protocols_do_not_leak(cluster, kp):
    """Clients in databases 0, 3 and 5, speaking RESP2 or RESP3, and clients switching
    database and protocol inside their pipelines, all on one worker: every reply is what a
    direct connection in that database and protocol gets; no RESP2 client ever sees a RESP3
    type; no database sees another's values."""
    dbs = [0, 3, 5]
    for db in dbs:
        c = cluster.primary.client(db=db)
        c.delete("mix:h", "mix:z", "mix:s", "mix:only0", "mix:missing",
                 *[f"mix:k:{p}:{i}" for p in (2, 3) for i in range(2)])
        c.hset("mix:h", mapping={"db": str(db), "x": "1"})
        c.zadd("mix:z", {"m": db + 0.5})
        c.sadd("mix:s", f"db{db}")
        if db == 0:
            c.set("mix:only0", "zero")
    cluster.wait_replicated()
    static = [("HGETALL", "mix:h"), ("ZSCORE", "mix:z", "m"), ("SMEMBERS", "mix:s"),
              ("GET", "mix:missing"), ("GET", "mix:only0"), ("MGET", "mix:only0", "mix:missing"),
              ("ZRANGE", "mix:z", "0", "-1", "WITHSCORES"), ("EXISTS", "mix:only0"),
              ("HMGET", "mix:h", "db", "nope")]
    reference = {}
    for db in dbs:
        for proto in (2, 3):
            d = Conn(cluster.primary.port)
            d.run(("HELLO", str(proto)), ("SELECT", str(db)))
            reference[(db, proto)] = d.run(*static)
            d.close()
    assert reference[(0, 3)] != reference[(3, 3)] != reference[(0, 2)]
    rounds = 40
    errors = []
    start = threading.Barrier(len(dbs) * 2 * 2 + 2)

    def check_static(who, r, db, proto, got):
        if got != reference[(db, proto)]:
            errors.append((who, r, db, proto, "static", got, reference[(db, proto)]))
        if proto == 2:
            for g in got:
                if not type_bytes(g) <= RESP2_TYPES:
                    errors.append((who, r, "RESP3 type in a RESP2 reply", g))

    def fixed(db, proto, idx):
        who = f"db{db}/resp{proto}/{idx}"
        try:
            c = Conn(kp.port)
            setup = c.run(("HELLO", str(proto)), ("SELECT", str(db)))
            assert setup[1] == b"+OK\r\n", setup
            key = f"mix:k:{proto}:{idx}"
            start.wait(WAIT)
            for r in range(rounds):
                value = f"db{db}:p{proto}:{idx}:r{r}"
                got = c.run(("SET", key, value), *static, ("GET", key))
                if got[0] != b"+OK\r\n" or got[-1] != bulk(value):
                    errors.append((who, r, "own key", got[0], got[-1]))
                check_static(who, r, db, proto, got[1:-1])
            c.close()
        except Exception as exc:  # noqa: BLE001
            errors.append((who, "exception", repr(exc)))

    def switcher(idx):
        who = f"switcher{idx}"
        try:
            c = Conn(kp.port)
            start.wait(WAIT)
            for r in range(rounds):
                a, b = dbs[(r + idx) % 3], dbs[(r + idx + 1) % 3]
                cmds = [("SELECT", str(a))] + static + [("HELLO", "3")] + static + \
                       [("SELECT", str(b))] + static + [("HELLO", "2")] + static
                got = c.run(*cmds)
                n = len(static)
                segments = [(a, 2, got[1:1 + n]), (a, 3, got[2 + n:2 + 2 * n]),
                            (b, 3, got[3 + 2 * n:3 + 3 * n]), (b, 2, got[4 + 3 * n:])]
                for db, proto, seg in segments:
                    check_static(who, r, db, proto, seg)
                if got[0] != b"+OK\r\n" or got[2 + 2 * n] != b"+OK\r\n":
                    errors.append((who, r, "SELECT", got[0], got[2 + 2 * n]))
                h3, h2 = got[1 + n], got[3 + 3 * n]
                if h3[:1] != b"%" or hello_fields(h3)["proto"].v != 3 or \
                        h2[:1] != b"*" or hello_fields(h2)["proto"].v != 2:
                    errors.append((who, r, "HELLO", h3, h2))
            c.close()
        except Exception as exc:  # noqa: BLE001
            errors.append((who, "exception", repr(exc)))

    threads = [threading.Thread(target=fixed, args=(db, proto, idx))
               for db in dbs for proto in (2, 3) for idx in (0, 1)]
    threads += [threading.Thread(target=switcher, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 6)
    assert not any(t.is_alive() for t in threads), "client threads did not finish"
    assert not errors, f"{len(errors)} wrong replies, first: {errors[:3]}"
    for db in dbs:
        c = cluster.primary.client(db=db)
        for proto in (2, 3):
            for idx in (0, 1):
                assert c.get(f"mix:k:{proto}:{idx}") == \
                    f"db{db}:p{proto}:{idx}:r{rounds - 1}".encode()
