"""Redis Cluster behind one address: a real local cluster (3 primaries + 3 replicas made by
redis-cli --cluster create), a plain non-cluster client (redis-py `Redis`) talking to the proxy.

Keys must land where cluster-aware clients find them, reads must spread over each shard's
replicas, multi-key commands must be split or refused exactly as Redis would, transactions
must run on their keys' shard, and neither resharding nor a shard primary's kill -9 may show
the client a redirection, an error or a stale value.
"""

import contextlib
import threading
import time

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

import fixtures
from fixtures import (HOST, SLOWDOWN, BusyScript, Proxy, RedisCluster as LocalCluster, busy,
                      busy_answers_for, wait_until)

CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot"


def start_proxy(workdir, cluster, extra=()):
    fixtures.require_proxy_bin()
    p = Proxy(workdir, extra_args=["--cluster-nodes", cluster.seeds(2), *extra])
    p.start(timeout=30 * SLOWDOWN)
    return p


@contextlib.contextmanager
def cluster_and_proxy(tmp_path, name, node_timeout_ms, proxy_args):
    """A cluster of its own (for tests that fail nodes over) and a ready proxy in front."""
    rc = LocalCluster(tmp_path / name, node_timeout_ms=node_timeout_ms)
    rc.start()
    try:
        proxy = start_proxy(tmp_path / f"{name}-proxy", rc, proxy_args)
        try:
            wait_proxy_ready(proxy)
            yield rc, proxy
        finally:
            proxy.stop()
    finally:
        rc.stop()


def proxy_info(proxy):
    text = proxy.client(timeout=5).execute_command("PROXY", "INFO")
    return text.decode() if isinstance(text, bytes) else text


def wait_proxy_ready(proxy, replicas=3, timeout=20):
    """Every slot served through the proxy (a write to each shard answers) and every shard's
    replica taking reads."""
    c = proxy.client(timeout=5)

    def ok():
        try:
            if not all(c.set(f"ready:{{{t}}}", 1) for t in ("a", "b", "c", "d", "e", "f")):
                return False
            return proxy_info(proxy).count("role=replica,up=1,serving=1") >= replicas
        except redis.RedisError:
            return False
    wait_until(ok, timeout * SLOWDOWN, interval=0.1, what="proxy serving every slot")


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("rcluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def rproxy(rc, tmp_path_factory):
    p = start_proxy(tmp_path_factory.mktemp("rproxy"), rc)
    try:
        wait_proxy_ready(p)
        yield p
    finally:
        p.stop()


def cluster_client(rc):
    n = rc.alive_nodes()[0]
    return RedisCluster(startup_nodes=[ClusterNode(HOST, n.port)], socket_timeout=5)


def commandstats_calls(node, command):
    try:
        return node.calls(command)
    except redis.RedisError:
        return 0


# ---- routing ------------------------------------------------------------------------------

def test_keys_land_where_cluster_clients_find_them_and_reads_spread(rc, rproxy):
    c = rproxy.client()
    keys = [f"user:{i}" for i in range(600)]
    p = c.pipeline(transaction=False)
    for k in keys:
        p.set(k, f"v-{k}")
    assert all(p.execute())
    # A cluster-aware client finds every key, with its value, on the node owning its slot.
    cc = cluster_client(rc)
    for k in keys[::7]:
        assert cc.get(k) == f"v-{k}".encode()
        owner = rc.owner(k)
        assert owner.client().execute_command("GET", k) == f"v-{k}".encode()
    shards = rc.primaries()
    assert len(shards) == 3
    # Reads through the proxy spread over every shard's replica (READONLY connections): from a
    # client that wrote nothing (the writer's own reads may go to a primary until the proxy
    # has seen the replica reach its writes), once every replica has them.
    def offset(port):
        return rc.node(port).client().info("replication")["master_repl_offset"]
    for primary, reps in shards.items():
        want = offset(primary)
        for r in reps:
            wait_until(lambda: offset(r) >= want, 10 * SLOWDOWN, what=f"replica {r} synced")
            wait_until(lambda: f"addr={HOST}:{r},role=replica,up=1,serving=1" in
                       proxy_info(rproxy), 10 * SLOWDOWN, what=f"replica {r} serving reads")
    reader = rproxy.client()
    before = {r: commandstats_calls(rc.node(r), "get") for reps in shards.values() for r in reps}
    for _ in range(3):
        for k in keys:
            assert reader.get(k) == f"v-{k}".encode()
    after = {r: commandstats_calls(rc.node(r), "get") for r in before}
    for r in before:
        assert after[r] - before[r] > 100, f"replica {r} served {after[r] - before[r]} GETs"


def test_split_commands_merge_in_client_order(rproxy):
    c = rproxy.client()
    keys = [f"split:{i}" for i in range(40)]
    assert c.mset({k: f"val{i}" for i, k in enumerate(keys)}) is True
    want = [f"val{i}".encode() for i in range(40)]
    assert c.mget(keys) == want
    mixed = ["split:3", "nope:1", "split:17", "split:3", "nope:2", "split:39"]
    assert c.mget(mixed) == [b"val3", None, b"val17", b"val3", None, b"val39"]
    assert c.exists(*mixed) == 4  # duplicates count, as in Redis
    assert c.touch("split:1", "split:2", "nope:3") == 2
    assert c.delete("split:1", "split:2", "nope:3", "split:30") == 3
    assert c.unlink("split:4", "split:5", "nope:4") == 2
    assert c.mget(["split:1", "split:4", "split:6"]) == [None, None, b"val6"]


def test_unsplittable_cross_slot_commands_get_redis_own_error(rc, rproxy):
    c = rproxy.client()
    node = rc.alive_nodes()[0].client()
    cases = [
        ("MSETNX", "a", "1", "b", "2"),
        ("SUNIONSTORE", "dst", "s1", "s2"),
        ("RENAME", "a", "b"),
        ("EVAL", "return 1", "2", "a", "b"),
        ("BLPOP", "a", "b", "1"),
        ("ZUNIONSTORE", "d", "2", "z1", "z2"),
    ]
    for cmd in cases:
        with pytest.raises(redis.ResponseError) as direct:
            node.execute_command(*cmd)
        assert str(direct.value) == CROSSSLOT, cmd  # what Redis itself says
        with pytest.raises(redis.ResponseError) as proxied:
            c.execute_command(*cmd)
        assert str(proxied.value) == CROSSSLOT, cmd
    # The same commands within one slot (hash tags) work.
    assert c.msetnx({"{t}a": 1, "{t}b": 2}) is True
    assert c.execute_command("RENAME", "{t}a", "{t}c") is True
    assert c.eval("return redis.call('get', KEYS[1]) .. redis.call('get', KEYS[2])", 2,
                  "{t}b", "{t}c") == b"21"


def test_hash_tag_transactions_and_watch(rproxy):
    c = rproxy.client()
    c.delete("{acct}balance", "{acct}log")
    p = c.pipeline(transaction=True)
    p.set("{acct}balance", 100)
    p.incrby("{acct}balance", 5)
    p.rpush("{acct}log", "deposit")
    p.get("{acct}balance")
    assert p.execute() == [True, 105, 1, b"105"]
    # WATCH on the key's shard: a concurrent change aborts the transaction.
    with c.pipeline() as p:
        p.watch("{acct}balance")
        p.multi()
        p.incr("{acct}balance")
        rproxy.client().set("{acct}balance", 0)
        with pytest.raises(redis.WatchError):
            p.execute()
    assert c.get("{acct}balance") == b"0"
    with c.pipeline() as p:
        p.watch("{acct}balance")
        v = int(p.get("{acct}balance"))
        p.multi()
        p.set("{acct}balance", v + 7)
        assert p.execute() == [True]
    assert c.get("{acct}balance") == b"7"
    # Keyless commands before the first key do not choose the shard: they run in it.
    p = c.pipeline(transaction=True)
    p.ping()
    p.echo("x")
    p.incr("{acct}balance")
    assert p.execute() == [True, b"x", 8]
    p = c.pipeline(transaction=True)
    p.ping()
    assert p.execute() == [True]
    # Keys of several slots in one transaction: refused, nothing applied.
    c.delete("{x}k", "{y}k")
    p = c.pipeline(transaction=True)
    p.set("{x}k", 1)
    p.set("{y}k", 1)
    with pytest.raises(redis.ResponseError):
        p.execute()
    assert c.exists("{x}k", "{y}k") == 0
    # An empty transaction and DISCARD are answered like Redis.
    raw = c.connection_pool.get_connection("MULTI")
    try:
        raw.send_command("MULTI")
        assert raw.read_response() == b"OK"
        raw.send_command("EXEC")
        assert raw.read_response() == []
        raw.send_command("MULTI")
        raw.read_response()
        raw.send_command("SET", "{acct}d", "1")
        assert raw.read_response() == b"QUEUED"
        raw.send_command("DISCARD")
        assert raw.read_response() == b"OK"
    finally:
        c.connection_pool.release(raw)
    assert c.exists("{acct}d") == 0
    assert c.set("after", 1) is True  # the connection is back on shared connections


def test_a_one_node_cluster_is_served_and_a_slot_nobody_serves_aborts_the_transaction(
        tmp_path):
    """A cluster of one node (development setups, single-shard services) says "" for its own
    address in CLUSTER SHARDS and SLOTS, as Redis does until another node tells it its IP:
    the proxy takes the address it asked, as cluster clients do, where it used to leave every
    slot unserved (CLUSTERDOWN for every command). With a slot nobody serves
    (cluster-require-full-coverage no), a transaction whose first key falls there is refused
    at that command and aborted at EXEC, as Redis does, and the client is out of it afterwards
    (it used to stay in it: every later command answered QUEUED)."""
    node = fixtures.RedisServer(
        tmp_path, "solo", port=fixtures.free_cluster_port(),
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-require-full-coverage", "no"])
    node.start()
    try:
        direct = node.client()
        gap = direct.execute_command("CLUSTER", "KEYSLOT", "{gap}")
        ranges = [(0, gap - 1), (gap + 1, 16383)]
        direct.execute_command("CLUSTER", "ADDSLOTSRANGE", *[b for r in ranges if r[0] <= r[1]
                                                             for b in r])
        wait_until(lambda: b"cluster_state:ok" in direct.execute_command("CLUSTER", "INFO"),
                   10 * SLOWDOWN, what="one-node cluster ok")
        assert direct.execute_command("CLUSTER", "SLOTS")[0][2][0] == b""  # what it says
        proxy = Proxy(tmp_path, extra_args=["--cluster-nodes", f"{HOST}:{node.port}"])
        proxy.start(timeout=30 * SLOWDOWN)
        c = proxy.client()

        def served():
            try:
                return c.set("solo:k", "v")
            except redis.RedisError:
                return False
        wait_until(served, 10 * SLOWDOWN, what="the proxy serving the one node's slots")
        assert c.get("solo:k") == b"v" and direct.get("solo:k") == b"v"
        p = c.pipeline(transaction=True)
        p.incr("{solo}n")
        p.get("{solo}n")
        assert p.execute() == [1, b"1"]
        refused = (b"+OK\r\n", b"-CLUSTERDOWN Hash slot not served\r\n",
                   b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                   b"+PONG\r\n")
        for port in (node.port, proxy.port):
            with fixtures.connect(port) as sock:
                sock.sendall(fixtures.encode_command("MULTI")
                             + fixtures.encode_command("SET", "{gap}x", "1")
                             + fixtures.encode_command("EXEC") + fixtures.encode_command("PING"))
                assert tuple(fixtures.read_replies(sock, 4)[0]) == refused, port
                # Keyless commands held before the first key go with the transaction.
                sock.sendall(fixtures.encode_command("MULTI") + fixtures.encode_command("PING")
                             + fixtures.encode_command("SET", "{gap}x", "1")
                             + fixtures.encode_command("EXEC") + fixtures.encode_command("PING"))
                assert tuple(fixtures.read_replies(sock, 5)[0]) == (
                    refused[0], b"+QUEUED\r\n") + refused[1:], port
                # Commands after the refused one are queued, and EXEC aborts all the same.
                sock.sendall(fixtures.encode_command("MULTI")
                             + fixtures.encode_command("SET", "{gap}x", "1")
                             + fixtures.encode_command("SET", "{solo}y", "1")
                             + fixtures.encode_command("EXEC") + fixtures.encode_command("PING"))
                assert tuple(fixtures.read_replies(sock, 5)[0]) == refused[:2] + (
                    b"+QUEUED\r\n",) + refused[2:], port
        assert direct.exists("{solo}y") == 0
    finally:
        node.stop()


def test_mixed_pipeline_across_shards_keeps_order(rproxy):
    c = rproxy.client()
    c.delete(*[f"ctr:{i}" for i in range(7)])
    p = c.pipeline(transaction=False)
    for i in range(300):
        p.set(f"pipe:{i}", i)
        p.get(f"pipe:{i}")
        p.mget([f"pipe:{j}" for j in range(max(0, i - 4), i + 1)])
        p.incr(f"ctr:{i % 7}")
    res = p.execute()
    counts = {}
    for i in range(300):
        assert res[4 * i] is True
        assert res[4 * i + 1] == str(i).encode()
        assert res[4 * i + 2] == [str(j).encode() for j in range(max(0, i - 4), i + 1)]
        counts[i % 7] = counts.get(i % 7, 0) + 1
        assert res[4 * i + 3] == counts[i % 7]


def test_keyless_commands_cover_the_whole_cluster(rc, rproxy):
    c = rproxy.client()
    assert c.flushall() is True
    assert c.dbsize() == 0
    keys = {f"scan:{i}" for i in range(1000)}
    p = c.pipeline(transaction=False)
    for k in keys:
        p.set(k, 1)
    p.execute()
    direct = sum(n.client().dbsize() for n in rc.nodes if n.port in rc.primaries())
    assert direct == 1000
    assert c.dbsize() == 1000
    assert set(k.decode() for k in c.keys("scan:*")) == keys
    seen = []
    for k in c.scan_iter(match="scan:*", count=100):
        seen.append(k.decode())
    assert sorted(seen) == sorted(keys)  # every key exactly once, across all shards
    assert c.randomkey().decode() in keys
    with pytest.raises(redis.ResponseError):
        c.execute_command("SCAN", "notanumber")
    # A script loaded through the proxy is on every primary: EVALSHA works for any key.
    sha = c.script_load("return redis.call('get', KEYS[1])")
    c.set("tagged", "v")
    for k in ["tagged", "scan:1", "scan:2", "scan:3", "scan:500"]:
        assert c.evalsha(sha, 1, k) is not None
    for port in rc.primaries():
        assert rc.node(port).client().script_exists(sha) == [True]
    assert c.ping() is True
    assert c.echo("hi") == b"hi"
    assert "redis_version" in c.info("server")
    assert c.flushall() is True
    assert c.dbsize() == 0


def test_pubsub_and_sharded_pubsub(rproxy):
    c = rproxy.client()
    sub = rproxy.client().pubsub()
    sub.subscribe("news")
    sub.psubscribe("ne*")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    assert sub.get_message(timeout=2)["type"] == "psubscribe"
    # Published through the proxy on whichever node: the cluster delivers it everywhere.
    c.publish("news", "hello")
    got = {sub.get_message(timeout=2)["type"], sub.get_message(timeout=2)["type"]}
    assert got == {"message", "pmessage"}
    sub.close()
    # Sharded pub/sub: SSUBSCRIBE and SPUBLISH go to the shard owning the channel.
    conn = rproxy.client().connection_pool.get_connection("SSUBSCRIBE")
    conn.send_command("SSUBSCRIBE", "{orders}new")
    assert conn.read_response() == [b"ssubscribe", b"{orders}new", 1]
    assert c.execute_command("SPUBLISH", "{orders}new", "o1") == 1
    assert conn.read_response() == [b"smessage", b"{orders}new", b"o1"]
    conn.disconnect()


def test_blocking_command_on_its_keys_shard(rproxy):
    c = rproxy.client()
    c.delete("{jobs}q")

    def push():
        time.sleep(0.3)
        rproxy.client().rpush("{jobs}q", "job1")
    t = threading.Thread(target=push)
    t.start()
    assert c.blpop("{jobs}q", timeout=5) == (b"{jobs}q", b"job1")
    t.join()
    assert c.set("after-blpop", 1) is True


def test_commands_pipelined_after_a_transaction_or_blocking_command_go_by_their_slot(rproxy):
    """One send: a transaction on one shard, then commands for keys all over the cluster;
    then a BLPOP answered at once, and the same again. The session is pinned to the
    transaction's (the BLPOP's) shard until EXEC's (BLPOP's) reply is in: what follows must
    wait for that and go by its own slot, not run on the pinned connection (where a key of
    another shard got MOVED, answered as CROSSSLOT)."""
    c = rproxy.client()
    keys = [f"after-tx:{i}" for i in range(12)]  # 12 keys: all three shards, surely
    c.delete("{tx}k", "{jobs}after", *keys)
    c.rpush("{jobs}after", "j1")
    send = [("MULTI",), ("SET", "{tx}k", "1"), ("INCR", "{tx}k"), ("EXEC",)]
    send += [("SET", k, k) for k in keys] + [("GET", k) for k in keys]
    send += [("BLPOP", "{jobs}after", "5")] + [("GET", k) for k in keys]
    want = [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n", b"*2\r\n+OK\r\n:2\r\n"]
    want += [b"+OK\r\n"] * len(keys)
    want += [b"$%d\r\n%s\r\n" % (len(k), k.encode()) for k in keys]
    want += [b"*2\r\n$11\r\n{jobs}after\r\n$2\r\nj1\r\n"]
    want += [b"$%d\r\n%s\r\n" % (len(k), k.encode()) for k in keys]
    with fixtures.connect(rproxy.port) as s:
        s.sendall(b"".join(fixtures.encode_command(*cmd) for cmd in send))
        got, _ = fixtures.read_replies(s, len(want), timeout=10 * SLOWDOWN)
    bad = [(send[i], g) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} wrong replies, first: {bad[0]}"


def test_client_gone_while_blocked_with_commands_waiting_frees_its_blpop(rproxy):
    """BLPOP with no timeout, then a GET pipelined behind it (which waits for the BLPOP's
    reply: the session is pinned to the list's shard until then), and the client goes away.
    The proxy must notice and end the BLPOP: an element pushed afterwards stays in the list
    instead of being popped for nobody."""
    c = rproxy.client()
    c.delete("{gone}q")
    with fixtures.connect(rproxy.port) as s:
        s.sendall(fixtures.encode_command("BLPOP", "{gone}q", "0") +
                  fixtures.encode_command("GET", "after-blpop:gone"))
        time.sleep(0.3 * SLOWDOWN)  # the BLPOP blocks on the shard's primary
    time.sleep(0.5 * SLOWDOWN)  # the proxy sees the client gone and ends its session
    c.rpush("{gone}q", "job")
    time.sleep(0.2)
    assert c.lrange("{gone}q", 0, -1) == [b"job"], "popped for a client that had gone"


def test_requests_held_behind_a_blocked_command_count_towards_the_total_bound(rc, tmp_path):
    """A BLPOP that blocks, then 24 MB of SETs pipelined behind it: they wait for the BLPOP
    (the session is pinned to its shard until then) and are read in meanwhile (so the client
    going away is seen); what the proxy holds for them counts in kompress_client_buffer_bytes,
    and so against max_total_client_buffer_bytes, and all of them run once the BLPOP ends."""
    admin = fixtures.free_port()
    p = start_proxy(tmp_path / "held", rc, ["--admin-listen", f"{HOST}:{admin}"])
    try:
        wait_proxy_ready(p)
        c = p.client()
        c.delete("{held}q")

        def held():
            return fixtures.metric(fixtures.http_get(admin, "/metrics")[1],
                                   "kompress_client_buffer_bytes")
        value = b"v" * (1 << 20)
        with fixtures.connect(p.port, timeout=30 * SLOWDOWN) as s:
            s.sendall(fixtures.encode_command("BLPOP", "{held}q", "0"))
            time.sleep(0.3 * SLOWDOWN)
            sets = b"".join(fixtures.encode_command("SET", f"held:{i}", value) for i in range(24))
            s.sendall(sets)
            wait_until(lambda: held() >= 16 * (1 << 20), 10 * SLOWDOWN,
                       what="the held requests counted")
            c.rpush("{held}q", "go")
            replies, _ = fixtures.read_replies(s, 25, timeout=30 * SLOWDOWN)
        assert replies == [b"*2\r\n$7\r\n{held}q\r\n$2\r\ngo\r\n"] + [b"+OK\r\n"] * 24
        assert c.strlen("held:23") == len(value)
    finally:
        p.stop()


def test_wait_after_a_transaction_counts_the_transactions_shard(rc, rproxy):
    """A write on one shard, then a transaction on another and WAIT pipelined after it. WAIT
    counts the replicas that have the client's last write: the transaction's shard's. Its
    replica is stopped meanwhile, so WAIT must say 0 (the other shard's replica would say 1:
    WAIT used to go to the shard of the client's last write on a shared connection)."""
    c = rproxy.client()
    slot = c.execute_command("CLUSTER", "KEYSLOT", "{wt}k")
    other = next(k for k in (f"wt-other:{i}" for i in range(100))
                 if not same_shard(c, slot, c.execute_command("CLUSTER", "KEYSLOT", k)))
    owner = next(s for s in c.execute_command("CLUSTER", "SLOTS") if s[0] <= slot <= s[1])
    replica = next(n for n in rc.nodes if n.port == owner[3][1])
    with fixtures.connect(rproxy.port) as s:
        s.sendall(fixtures.encode_command("SET", other, "1"))
        assert fixtures.read_replies(s, 1)[0] == [b"+OK\r\n"]
        replica.sigstop()
        try:
            s.sendall(b"".join(fixtures.encode_command(*cmd) for cmd in
                               [("MULTI",), ("SET", "{wt}k", "1"), ("EXEC",), ("WAIT", "1", "200")]))
            replies, _ = fixtures.read_replies(s, 4, timeout=10 * SLOWDOWN)
        finally:
            replica.sigcont()
    assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n", b":0\r\n"]


def same_shard(c, slot_a, slot_b):
    for s in c.execute_command("CLUSTER", "SLOTS"):
        if s[0] <= slot_a <= s[1]:
            return s[0] <= slot_b <= s[1]
    return False


def test_info_and_metrics_show_shards(rc, rproxy):
    text = proxy_info(rproxy)
    assert "# Cluster" in text and "slots_unassigned:0" in text
    assert text.count(",shard=") == 6
    # Metrics need the admin endpoint: a second proxy with one.
    admin = fixtures.free_port()
    p = start_proxy(rproxy.workdir / "m", rc, ["--admin-listen", f"{HOST}:{admin}"])
    try:
        wait_proxy_ready(p)
        body = fixtures.http_get(admin, "/metrics")[1]
        assert "kompress_cluster_shards 3" in body
        assert "kompress_cluster_slots_unassigned 0" in body
        assert "kompress_cluster_slot_map_refreshes_total" in body
        assert 'kompress_cluster_redirections_total{kind="moved"}' in body
        assert body.count('kompress_backend_up{backend=') == 6
        assert 'shard="2"' in body
        status, ready = fixtures.http_get(admin, "/readyz")
        assert status == 200 and ready.startswith("ready"), ready
        assert ready.count("shard ") == 6, ready
    finally:
        p.stop()


def test_split_requests_under_backpressure_large_parts_and_denials(rc, tmp_path):
    """A second proxy: hostname seeds, a tiny pipeline depth (a split request completing while
    the client is paused), and CONFIG denied (also inside a transaction)."""
    seeds = ",".join(f"localhost:{n.port}" for n in rc.nodes[:2])
    fixtures.require_proxy_bin()
    p = Proxy(tmp_path / "p2", extra_args=["--cluster-nodes", seeds, "--max-pipeline-depth", "4",
                                            "--deny-commands", "config"])
    p.start(timeout=30 * SLOWDOWN)
    try:
        wait_proxy_ready(p)
        c = p.client()
        small = [f"{{t{i}}}x" for i in range(60)]
        three = ["{a}1", "{b}1", "{c}1"]
        for k in small + three:
            c.set(k, "v")
        # Raw pipeline: the first MGET completes while the second waits in the input.
        s = fixtures.socket.create_connection((HOST, p.port))
        s.settimeout(10)

        def enc(*args):
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else a.encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            return out
        want = (b"*3\r\n" + b"$1\r\nv\r\n" * 3 + b"*60\r\n" + b"$1\r\nv\r\n" * 60 + b"+PONG\r\n")
        s.sendall(enc("MGET", *three) + enc("MGET", *small) + enc("PING"))
        got = b""
        while len(got) < len(want):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        assert got == want
        # Parts larger than the streaming threshold are merged whole, in order. Written on the
        # same connection: read-your-writes then holds across the shards (another client's
        # write may still be on its way to the replicas).
        big = {k: bytes([65 + i]) * (1 << 20) for i, k in enumerate(three)}
        s.sendall(enc("MSET", *[x for kv in big.items() for x in kv]))
        got = b""
        while len(got) < 5:
            got += s.recv(16)
        assert got == b"+OK\r\n"
        s.sendall(enc("MGET", *three) + enc("PING"))
        want = b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in big.values()) \
            + b"+PONG\r\n"
        got = b""
        while len(got) < len(want):
            chunk = s.recv(1 << 20)
            assert chunk, len(got)
            got += chunk
        assert got == want
        s.close()
        # A denied command inside MULTI: refused, and the transaction does not run.
        before = rc.nodes[0].client().config_get("maxmemory-policy")
        pipe = c.pipeline(transaction=True)
        pipe.set("{d}k", 1)
        pipe.execute_command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        # Inside a transaction already on its shard the session ends with the reason (as
        # without Redis Cluster); either way nothing of it runs.
        with pytest.raises((redis.ResponseError, redis.ConnectionError)):
            pipe.execute()
        raw = c.connection_pool.get_connection("MULTI")
        try:
            raw.send_command("MULTI")
            assert raw.read_response() == b"OK"
            raw.send_command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
            with pytest.raises(redis.ResponseError, match="refused by the proxy"):
                raw.read_response()
            raw.send_command("SET", "{d}k", "2")  # queued, as Redis queues after a refusal
            assert raw.read_response() == b"QUEUED"
            raw.send_command("EXEC")
            with pytest.raises(redis.exceptions.ExecAbortError):
                raw.read_response()
        finally:
            c.connection_pool.release(raw)
        assert rc.nodes[0].client().config_get("maxmemory-policy") == before
        assert c.get("{d}k") is None
    finally:
        p.stop()


# ---- topology changes under load ----------------------------------------------------------

class Load:
    """Clients writing and reading through the proxy, counting errors and wrong values. Each
    client reads back what it wrote (read-your-writes) and keys written once before the load
    (a read of "no such key" for those is a stale read)."""

    def __init__(self, proxy, clients=6, fixed=2000):
        self.proxy = proxy
        self.fixed = fixed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops = self.errors = self.wrong = 0
        self.samples = []
        self.write_errors = []
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def seed(self):
        c = self.proxy.client()
        p = c.pipeline(transaction=False)
        for i in range(self.fixed):
            p.set(f"fixed:{i}", f"f{i}")
        p.execute()

    def note(self, kind, msg):
        with self.lock:
            if kind == "error":
                self.errors += 1
            else:
                self.wrong += 1
            if len(self.samples) < 10:
                self.samples.append(msg)

    def run(self, wid):
        c = self.proxy.client(timeout=20)
        i = 0
        mine = {}
        while not self.stop.is_set():
            i += 1
            k = f"w{wid}:{i % 200}"
            v = f"{wid}-{i}"
            fk = [f"fixed:{(i * 31 + wid * 7 + j * 101) % self.fixed}" for j in range(8)]
            try:
                c.set(k, v)
                mine[k] = v
            except redis.RedisError as e:
                # A write in flight when its shard's primary dies may or may not have been
                # applied: the one error a client may see (counted apart, checked by shard).
                with self.lock:
                    self.write_errors.append((k, f"{type(e).__name__}: {e}"))
                continue
            try:
                got = c.get(k)
                vals = c.mget(fk)
                one = c.get(fk[0])
            except redis.RedisError as e:
                self.note("error", f"{type(e).__name__}: {e}")
                continue
            if got is None or got.decode() != v:
                self.note("wrong", f"{k}: {got!r}, wrote {v}")
            for key, val in zip(fk + fk[:1], vals + [one]):
                if val is None or val.decode() != "f" + key.split(":")[1]:
                    self.note("wrong", f"{key}: {val!r}")
            with self.lock:
                self.ops += 4

    def __enter__(self):
        self.seed()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def report(self):
        return (f"ops={self.ops} errors={self.errors} wrong={self.wrong} {self.samples} "
                f"write errors: {self.write_errors[:5]}")


def test_resharding_under_load_shows_no_redirections_errors_or_stale_reads(
        tmp_path, rc, rproxy):
    shards = rc.primaries()
    src, dst = sorted(shards)[:2]
    ids = {p: rc.node(p).client().execute_command("CLUSTER", "MYID").decode() for p in (src, dst)}
    with Load(rproxy) as load:
        time.sleep(0.5)
        for a, b in ((src, dst), (dst, src)):
            rc.wait_ok()
            for attempt in range(20):
                # redis-cli refuses while the nodes' views still differ (gossip settling).
                out = fixtures.subprocess.run(
                    [fixtures.REDIS_CLI, "--cluster", "reshard", f"{HOST}:{a}", "--cluster-from",
                     ids[a], "--cluster-to", ids[b], "--cluster-slots", "1500", "--cluster-yes",
                     "--cluster-pipeline", "20"], capture_output=True, text=True, timeout=120)
                if out.returncode == 0 or "don't agree" not in out.stdout:
                    break
                time.sleep(0.5)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        time.sleep(1.0)
    assert load.ops > 1000, load.report()
    assert load.errors == 0 and load.wrong == 0 and not load.write_errors, load.report()
    # Slots did move under the clients: the proxy followed redirections for them.
    text = proxy_info(rproxy)
    moved = int(text.split("redirections_moved:")[1].split("\r\n")[0])
    changes = int(text.split("slot_changes:")[1].split("\r\n")[0])
    # redis-cli moves the lowest slots first, so the second reshard takes back the very
    # slots the first one moved: a slot that goes and comes back between two reads of the
    # map is never seen to change (CI once saw 2998 of 3000). Each direction is 1500 slots
    # moved one at a time over seconds, so nearly all moves are still seen.
    assert changes >= 1500, text
    assert moved > 0, text


def test_shard_primary_kill9_under_load(tmp_path):
    # Requests wait for the promotion: the timeout must outlast the cluster's failover.
    with cluster_and_proxy(tmp_path, "kc", 1000,
                           ["--timeout", str(8 * SLOWDOWN)]) as (rc, proxy):
        victim_port = sorted(rc.primaries())[0]
        victim = rc.node(victim_port)
        promoted_from = rc.primaries()[victim_port]
        with Load(proxy) as load:
            time.sleep(1.0)
            ops_before = load.ops
            victim.kill9()
            wait_until(lambda: victim_port not in rc.primaries(), 20 * SLOWDOWN, 0.1,
                       what="the cluster to promote a replica")
            time.sleep(2.0)
        assert load.ops > ops_before, load.report()
        # Reads: not one error, not one wrong value.
        assert load.errors == 0 and load.wrong == 0, load.report()
        new_primary = (set(rc.primaries()) & set(promoted_from)).pop()
        # Writes: only those to the failed shard, in flight as it died, may fail, and
        # only with "may or may not have been applied".
        for key, err in load.write_errors:
            assert rc.owner(key).port == new_primary, load.report()
            assert "may or may not have been applied" in err, load.report()
        assert len(load.write_errors) <= 6, load.report()
        # Writes to the failed shard work again without a restart; the old primary comes
        # back as a replica and is taken into the shard.
        c = proxy.client()
        for i in range(200):
            assert c.set(f"after:{i}", i) is True
            assert c.get(f"after:{i}") == str(i).encode()
        victim.start()
        wait_until(lambda: victim_port in {r for reps in rc.primaries().values()
                                           for r in reps}, 20 * SLOWDOWN, 0.2,
                   what="old primary to rejoin as a replica")
        wait_until(lambda: f"addr={HOST}:{victim_port},role=replica" in proxy_info(proxy),
                   10 * SLOWDOWN, 0.2,
            what="proxy to list the rejoined node as a replica")


def test_a_client_reads_its_own_write_through_manual_failovers(tmp_path):
    """CLUSTER FAILOVER moves a shard's primary to its replica while clients each SET a key and
    GET it back on the same connection. The proxy's connection to the old primary had sent
    READONLY, so once demoted (and before it had the new primary's writes) it answered the
    GET from its own data: the value before the client's acknowledged SET, in about half the
    rounds. Now only connections made to replicas send READONLY; the demoted node answers
    MOVED, which the proxy follows."""
    with cluster_and_proxy(tmp_path, "fc", 1000,
                           ["--timeout", str(8 * SLOWDOWN)]) as (rc, proxy):
        stale, pairs, errors = [], [0], []
        for rnd in range(6):
            stop = threading.Event()

            def client(i):
                c = proxy.client(timeout=10 * SLOWDOWN)
                k, v = f"{{ryw}}:{rnd}:{i}", 0
                while not stop.is_set():
                    v += 1
                    try:
                        c.set(k, v)
                        got = c.get(k)
                    except redis.RedisError as exc:
                        errors.append((rnd, repr(exc)))
                        continue
                    pairs[0] += 1
                    if got != str(v).encode():
                        stale.append((rnd, k, v, got))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.7)
            old = rc.owner("{ryw}")
            replica = rc.primaries()[old.port][0]
            assert rc.node(replica).client().execute_command("CLUSTER", "FAILOVER") in (
                b"OK", "OK", True)
            wait_until(lambda: rc.owner("{ryw}").port == replica, 10 * SLOWDOWN, 0.02,
                       what="the replica to take over")
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(timeout=30)
            rc.wait_ok()
        print(f"{pairs[0]} SET+GET pairs over 6 failovers; stale {stale[:5]}; "
              f"errors {errors[:5]}")
        assert pairs[0] > 1000
        assert stale == [], f"{len(stale)} GETs read older than the client's own SET"
        assert errors == [], errors[:5]
        # Three shards, each node in one of them as what it is: the map read mid-failover
        # (the demoted primary listed alone for a moment) used to leave a shard group of
        # its own each time, probing that node again and showing it as a primary.
        def nodes():
            return [line for line in proxy_info(proxy).splitlines()
                    if line.startswith("node") and ",role=" in line]

        def three_shards_of_two():
            seen = nodes()
            return len({n.rsplit("shard=", 1)[1] for n in seen}) == 3 and len(seen) == 6

        try:
            wait_until(three_shards_of_two, 10 * SLOWDOWN, 0.2, what="3 shards of 2 nodes")
        except TimeoutError:
            raise AssertionError("\n".join(nodes())) from None


def test_an_mget_over_slots_does_not_wait_for_a_stopped_replica(tmp_path):
    """A shard replica stops (SIGSTOP) for longer than the timeout. A GET of its shard moves
    on after its health check goes unanswered (about half a second); an MGET of a few keys
    in several slots of that shard is as cheap, and its parts move on too. They used to wait
    until the replica was marked down (4 s of a 4 s stop)."""
    with cluster_and_proxy(tmp_path, "mc", 5000,
                           ["--timeout", "5", "--health-check-interval", "0.1"]) as (rc, proxy):
        primary_port = sorted(rc.primaries())[0]
        replica = rc.node(rc.primaries()[primary_port][0])
        owner = rc.node(primary_port).client()
        keys = [k for k in (f"ms:{i}" for i in range(400))
                if rc.owner(k).port == primary_port][:6]
        assert len({owner.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}) > 1
        c = proxy.client(timeout=20)
        c.mset({k: "v" for k in keys})
        reader = proxy.client(timeout=20)  # wrote nothing: its reads go to the replica
        wait_until(lambda: reader.mget(keys) == [b"v"] * 6 and replica.calls("mget") > 0,
                   10 * SLOWDOWN, 0.05, what="MGETs served by the shard's replica")
        stop = threading.Event()
        slowest, wrong = [0.0], []

        def loop():
            while not stop.is_set():
                t = time.monotonic()
                got = reader.mget(keys)
                slowest[0] = max(slowest[0], time.monotonic() - t)
                if got != [b"v"] * 6:
                    wrong.append(got)

        th = threading.Thread(target=loop)
        th.start()
        try:
            time.sleep(0.3)
            replica.sigstop()
            time.sleep(3.0)
        finally:
            replica.sigcont()
            stop.set()
            th.join(timeout=30)
        print(f"slowest MGET over {len(keys)} keys while the replica stopped: "
              f"{slowest[0]:.2f}s")
        assert wrong == []
        assert slowest[0] < 1.5 * SLOWDOWN, f"an MGET waited {slowest[0]:.2f}s"


def test_script_kill_reaches_the_shard_running_the_script(rc, tmp_path):
    """SCRIPT KILL asks every shard, each on a connection of its own (the script holds the
    one it was called on): +OK as soon as one had a script to stop (another shard's primary
    is stopped meanwhile: the answer must not wait for its timeout), NOTBUSY when none had."""
    for n in rc.alive_nodes():
        n.client().config_set("busy-reply-threshold", 100)
    rproxy = start_proxy(tmp_path / "proxy", rc, extra=["--timeout", "5"])
    wait_proxy_ready(rproxy)
    c = rproxy.client()
    slot = c.execute_command("CLUSTER", "KEYSLOT", "{spin}k")
    shards = c.execute_command("CLUSTER", "SLOTS")
    owner = next(s for s in shards if s[0] <= slot <= s[1])
    node = next(n for n in rc.nodes if n.port == owner[2][1])
    stalled = next(n for n in rc.nodes if n.port == next(
        s for s in shards if s[2][1] != owner[2][1])[2][1])
    outcome = {}

    def run():
        try:
            rproxy.client(timeout=20).eval("local a = 0 while true do a = a + 1 end", 1, "{spin}k")
        except redis.RedisError as e:
            outcome["error"] = str(e)
    t = threading.Thread(target=run)
    t.start()
    direct = node.client()
    try:
        wait_until(lambda: busy(direct), 5 * SLOWDOWN, what="the script running")
        stalled.sigstop()
        try:
            started = time.monotonic()
            assert c.execute_command("SCRIPT", "KILL") in (True, b"OK", "OK")
            took = time.monotonic() - started
        finally:
            stalled.sigcont()
        assert took < 2 * SLOWDOWN, took
        wait_until(lambda: not busy(direct), 5 * SLOWDOWN, what="the script stopped")
        with pytest.raises(redis.ResponseError, match="NOTBUSY"):
            c.execute_command("SCRIPT", "KILL")
    finally:
        try:
            direct.execute_command("SCRIPT", "KILL")
        except redis.RedisError:
            pass
        t.join(10)
        rproxy.stop()
    assert not t.is_alive()


def test_requests_behind_a_script_get_busy_without_a_connection_each(rc, tmp_path):
    """A script holds the shared connection to its shard's primary; after a second of silence
    that connection leaves the pool. The new one's READONLY (every cluster connection sends
    it) is refused with -BUSY while the script runs: the requests held behind it get that
    answer, and a client retrying on it does not cost a connection per attempt (thousands a
    second, each also asking the cluster for its slots again)."""
    for n in rc.alive_nodes():
        n.client().config_set("busy-reply-threshold", 100)
    rproxy = start_proxy(tmp_path / "proxy", rc, extra=["--timeout", "5", "--workers", "1"])
    wait_proxy_ready(rproxy)
    c = rproxy.client(timeout=20)
    slot = c.execute_command("CLUSTER", "KEYSLOT", "{spin}k")
    owner = next(s for s in c.execute_command("CLUSTER", "SLOTS") if s[0] <= slot <= s[1])
    node = next(n for n in rc.nodes if n.port == owner[2][1])
    direct = node.client()
    before = direct.info("stats")["total_connections_received"]
    script = BusyScript(rproxy.client(timeout=20), "{spin}k")
    try:
        wait_until(lambda: busy(direct), 5 * SLOWDOWN, what="the script running")
        time.sleep(1.5 * SLOWDOWN)  # the connection has been silent for a second
        attempts, busy_answers = busy_answers_for(lambda: c.incr("{spin}n"))
        assert busy_answers == attempts, (busy_answers, attempts)
        assert c.execute_command("SCRIPT", "KILL") in (True, b"OK", "OK")
        assert script.killed(), script.outcome
        opened = direct.info("stats")["total_connections_received"] - before
        print(f"{attempts} INCRs in 1 s while busy, all -BUSY; {opened} connections opened")
        assert opened <= 40, opened
        assert direct.get("{spin}n") is None  # none of the refused INCRs ran
    finally:
        script.stop(direct)
        rproxy.stop()
    assert not script.thread.is_alive()
