"""Session state through the proxy: transactions, WATCH, blocking commands, pub/sub, SELECT,
AUTH against the proxy's requirepass, backend credentials, and the admin HTTP endpoint.
A direct connection to Redis is the reference for every answer."""

import os
import socket
import threading
import time

import pytest
import redis

from fixtures import (HOST, SLOWDOWN, BusyScript, busy, busy_answers_for, connect,
                      encode_command, free_port, http_get, metric, read_replies, wait_until)


def send(sock, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)


def test_transaction_then_reads_return_to_replicas(cluster, proxy):
    c = proxy.client()
    pipe = c.pipeline(transaction=True)
    pipe.set("tx:a", 1).incr("tx:a").get("tx:a")
    assert pipe.execute() == [True, 2, b"2"]
    assert cluster.primary.client().get("tx:a") == b"2"
    cluster.wait_replicated()
    # The same pooled connection is no longer pinned: its reads go to replicas again, as
    # soon as the proxy has seen them replicate the transaction (read-your-writes; the
    # suite's probes run every 0.2 s).
    before = cluster.snapshot("get")

    def on_replica():
        assert c.get("tx:a") == b"2"
        now = cluster.snapshot("get")
        return any(now[k] > before.get(k, 0) for k in now if k != "primary")
    wait_until(on_replica, 5, interval=0.01, what="reads back on the replicas")
    before = cluster.snapshot("get")
    for _ in range(20):
        assert c.get("tx:a") == b"2"
    d = {k: v for k, v in (cluster.snapshot("get").items())}
    moved = {k: d[k] - before.get(k, 0) for k in d}
    assert moved["primary"] == 0
    assert sum(v for k, v in moved.items() if k != "primary") == 20


def test_watch_aborts_transaction_when_key_changes(cluster, proxy):
    c = proxy.client()
    c.set("w:k", "1")
    other = cluster.primary.client()
    with c.pipeline(transaction=True) as pipe:
        pipe.watch("w:k")
        other.set("w:k", "changed")
        pipe.multi()
        pipe.set("w:k", "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert other.get("w:k") == b"changed"
    # A WATCH left behind must not leak into another client's transaction.
    raw = connect(proxy.port)
    send(raw, "WATCH", "w:leak")
    send(raw, "DISCARD")  # outside MULTI: an error, and the WATCH stays
    assert read_replies(raw, 2)[0][1].startswith(b"-ERR DISCARD without MULTI")
    raw.close()
    other.set("w:leak", "x")
    c2 = proxy.client()
    p2 = c2.pipeline(transaction=True)
    p2.set("w:other", "1")
    assert p2.execute() == [True]


def test_blpop_blocks_only_its_own_client(proxy):
    c = proxy.client()
    c.delete("bq")
    result = {}

    def blocker():
        result["v"] = proxy.client(timeout=10).blpop("bq", timeout=5)

    t = threading.Thread(target=blocker)
    t.start()
    time.sleep(0.3)
    # Other clients are served while BLPOP waits.
    t0 = time.monotonic()
    assert c.ping() is True
    c.set("bq:other", "1")
    assert time.monotonic() - t0 < 0.5
    c.rpush("bq", "item")
    t.join(10)
    assert result["v"] == (b"bq", b"item")


def test_blpop_longer_than_timeout_is_not_cut(proxy):
    # The proxy's per-command timeout (1 s in these tests) must not fail a blocking command
    # that legitimately waits longer.
    c = proxy.client(timeout=10)
    c.delete("bq2")
    t0 = time.monotonic()
    assert c.blpop("bq2", timeout=2) is None
    assert time.monotonic() - t0 >= 1.9


def test_pubsub_through_proxy(proxy):
    sub = proxy.client().pubsub()
    sub.subscribe("news")
    msg = sub.get_message(timeout=2)
    assert msg["type"] == "subscribe" and msg["channel"] == b"news"
    assert proxy.client().publish("news", "hello") == 1
    msg = sub.get_message(timeout=2)
    assert msg["type"] == "message" and msg["data"] == b"hello"
    sub.psubscribe("n*")
    assert sub.get_message(timeout=2)["type"] == "psubscribe"
    proxy.client().publish("news", "again")
    got = {sub.get_message(timeout=2)["type"], sub.get_message(timeout=2)["type"]}
    assert got == {"message", "pmessage"}
    sub.close()


def test_select_uses_the_right_database(cluster, proxy):
    c = proxy.client(db=3)
    c.set("db3:key", "three")
    assert c.get("db3:key") == b"three"
    assert cluster.primary.client(db=3).get("db3:key") == b"three"
    assert cluster.primary.client().get("db3:key") is None
    assert proxy.client().get("db3:key") is None


def test_reset_leaves_pinned_mode(cluster, proxy):
    raw = connect(proxy.port)
    send(raw, "SELECT", "4")
    send(raw, "SET", "reset:k", "4")
    send(raw, "RESET")
    send(raw, "GET", "reset:k")  # database 0 again after RESET
    replies, _ = read_replies(raw, 4)
    assert replies == [b"+OK\r\n", b"+OK\r\n", b"+RESET\r\n", b"$-1\r\n"]
    raw.close()


def test_quit_on_pinned_session_does_not_hurt_other_clients(proxy):
    raw = connect(proxy.port)
    send(raw, "SELECT", "1")
    send(raw, "QUIT")
    assert read_replies(raw, 2)[0] == [b"+OK\r\n", b"+OK\r\n"]
    raw.close()
    time.sleep(0.05)
    assert proxy.client().set("after:quit", "1") is True


def test_protocol_error_in_pinned_session_replies_and_closes(proxy):
    raw = connect(proxy.port)
    send(raw, "SUBSCRIBE", "ch")
    read_replies(raw, 1)
    raw.sendall(b"*1\r\n$-5\r\n")
    raw.settimeout(3)
    data = b""
    while True:
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"-ERR Protocol error")


def test_requirepass(cluster, make_proxy):
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--requirepass", "s3cret"])
    c = p.client()
    with pytest.raises(redis.AuthenticationError):  # NOAUTH, as Redis says it
        c.get("x")
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)) as e:
        p.client(password="wrong").get("x")
    assert "WRONGPASS" in str(e.value) or "invalid" in str(e.value)
    ok = p.client(password="s3cret")
    assert ok.set("auth:k", "v") is True
    assert ok.ping() is True
    assert p.client(username="default", password="s3cret").ping() is True


def test_reset_in_a_transaction_with_a_request_half_sent(cluster, make_proxy):
    """RESET logs the client out (requirepass); a request it had half sent behind the RESET is
    framed again from its start once the rest arrives (NOAUTH, as Redis answers it), and after
    AUTH the next requests are framed correctly: no parser resumes stale state."""
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--requirepass", "s3cret"])
    with connect(p.port) as s:
        send(s, "AUTH", "s3cret")
        send(s, "MULTI")
        assert read_replies(s, 2)[0] == [b"+OK\r\n", b"+OK\r\n"]
        whole = encode_command("SET", "reset:half", "hello")
        s.sendall(encode_command("RESET") + whole[:-4])
        assert read_replies(s, 1)[0] == [b"+RESET\r\n"]
        time.sleep(0.2)
        s.sendall(whole[-4:])
        got = read_replies(s, 1)[0][0]
        assert got.startswith(b"-NOAUTH"), got
        send(s, "AUTH", "s3cret")
        send(s, "PING")
        send(s, "SET", "reset:after", "v")
        replies, rest = read_replies(s, 3, timeout=5 * SLOWDOWN)
        assert replies == [b"+OK\r\n", b"+PONG\r\n", b"+OK\r\n"] and rest == b""
    assert cluster.primary.client().get("reset:half") is None
    assert cluster.primary.client().get("reset:after") == b"v"


def test_unauthenticated_clients_get_redis_bounds(tmp_path, cluster, make_proxy):
    """Before AUTH a request may have at most 10 arguments of 16 KB (as Redis bounds an
    unauthenticated client): past that the client gets Redis's own protocol error and is
    closed, so it cannot make the proxy hold large buffers. After AUTH the usual limits."""
    from fixtures import RedisServer, port_accepts, read_until_closed
    guarded = RedisServer(str(tmp_path), "guarded", extra_args=["--requirepass", "s3cret"])
    guarded.start(wait=False)  # its PING needs the password
    wait_until(lambda: port_accepts(guarded.port), 10 * SLOWDOWN, what="guarded redis-server")
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--requirepass", "s3cret"])
    big_bulk = encode_command("SET", "k", "v" * 20_000)
    many_args = encode_command("MSET", *(["k", "v"] * 10))
    try:
        for payload in (big_bulk, many_args):
            answers = []
            for port in (guarded.port, p.port):
                with connect(port) as s:
                    s.sendall(payload)
                    answers.append(read_until_closed(s, timeout=5))
            assert answers[0] == answers[1], answers
            assert answers[1][1] is True and answers[1][0].startswith(
                b"-ERR Protocol error: unauthenticated"), answers[1]
        # Authenticated first, in the same pipeline: the big request is served.
        with connect(p.port) as s:
            s.sendall(encode_command("AUTH", "s3cret") + big_bulk + encode_command("STRLEN", "k"))
            assert read_replies(s, 3)[0] == [b"+OK\r\n", b"+OK\r\n", b":20000\r\n"]
    finally:
        guarded.stop()


def test_backend_password(tmp_path, make_proxy):
    from fixtures import Cluster
    c = Cluster(tmp_path / "authcluster", replicas=1,
                primary_args=["--requirepass", "backpw"],
                replica_args=["--requirepass", "backpw", "--masterauth", "backpw"])
    try:
        c.primary.start(wait=False)
        c.replicas[0].start(wait=False)
        for s in c.servers:
            wait_until(lambda: redis.Redis(host=HOST, port=s.port, password="backpw",
                                           socket_timeout=0.5).ping(), 10)
        good = make_proxy(c.primary.port, [c.replicas[0].port],
                          extra_args=["--backend-password", "backpw"])
        assert good.client().set("bp:k", "v") is True
        assert redis.Redis(host=HOST, port=c.primary.port, password="backpw").get("bp:k") == b"v"
        bad = make_proxy(c.primary.port, [], extra_args=["--backend-password", "nope"])
        with pytest.raises(redis.ResponseError) as e:
            bad.client().set("bp:k2", "v")
        assert str(e.value).startswith("kompress:")
    finally:
        for s in c.servers:
            if s.proc is not None:
                s.stop()


def test_admin_endpoint(fresh_cluster, make_proxy):
    admin = free_port()
    p = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas],
                   extra_args=["--admin-listen", f"{HOST}:{admin}"])
    assert http_get(admin, "/healthz")[0] == 200
    status, body = http_get(admin, "/readyz")
    assert status == 200 and body.startswith("ready")
    assert http_get(admin, "/nope")[0] == 404
    c = p.client()  # reads only: replicas serve it
    p.client().set("m:k", "v")
    fresh_cluster.wait_replicated()
    for _ in range(10):
        c.get("m:k")
    _, text = http_get(admin, "/metrics")
    assert metric(text, 'kompress_requests_total{route="replica"}') == 10
    assert metric(text, 'kompress_requests_total{route="primary_write"}') == 1
    assert metric(text, 'kompress_request_duration_seconds_count{kind="read"}') == 10
    up = f'kompress_backend_up{{backend="{HOST}:{fresh_cluster.replicas[0].port}",role="replica"}}'
    assert metric(text, up) == 1
    fresh_cluster.replicas[0].kill9()
    for _ in range(10):
        assert c.get("m:k") == b"v"
    wait_until(lambda: metric(http_get(admin, "/metrics")[1], up) == 0, 5)
    assert metric(http_get(admin, "/metrics")[1], "kompress_errors_total") == 0
    # A command the proxy refuses is an error reply the proxy generated, counted as such.
    with pytest.raises(redis.ResponseError):
        c.execute_command("CLIENT", "KILL", "ID", "1")
    assert metric(http_get(admin, "/metrics")[1], "kompress_errors_total") == 1


def test_failover_is_counted(fresh_cluster, make_proxy):
    # Probes far apart, so the reads themselves discover the dead replica and fail over.
    admin = free_port()
    p = make_proxy(fresh_cluster.primary.port, [fresh_cluster.replicas[0].port],
                   extra_args=["--admin-listen", f"{HOST}:{admin}",
                               "--health-check-interval", "60"])
    p.client().set("f:k", "v")
    fresh_cluster.wait_replicated()
    c = p.client()  # has written nothing: its reads go to the replica
    assert c.get("f:k") == b"v"
    # A stopped replica keeps its connections open (a killed one is noticed at once by the
    # health checker's connection): the read times out there and the primary answers.
    fresh_cluster.replicas[0].sigstop()
    t0 = time.monotonic()
    assert c.get("f:k") == b"v"
    assert time.monotonic() - t0 < 3
    text = http_get(admin, "/metrics")[1]
    assert metric(text, 'kompress_requests_total{route="failover"}') == 1
    assert metric(text, "kompress_errors_total") == 0


def test_scan_stays_on_one_replica(cluster, proxy):
    primary = cluster.primary.client()
    pipe = primary.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"scan:{i}", i)
    pipe.execute()
    cluster.wait_replicated()
    before = cluster.snapshot("scan")
    c = proxy.client()
    seen = set()
    calls = 0
    cursor = 0
    while True:
        cursor, keys = c.scan(cursor=cursor, match="scan:*", count=20)
        seen.update(keys)
        calls += 1
        if cursor == 0:
            break
    assert seen == {f"scan:{i}".encode() for i in range(300)}
    moved = {k: v - before.get(k, 0) for k, v in cluster.snapshot("scan").items()}
    # Every call of the iteration went to the replica that issued cursor 0.
    assert sorted(moved.values()) == [0, 0, calls]
    assert moved["primary"] == 0


def test_wait_counts_replicas_that_have_the_clients_writes(fresh_cluster, make_proxy):
    p = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas])
    raw = connect(p.port)
    send(raw, "SET", "durable", "1")
    send(raw, "WAIT", "2", "2000")
    assert read_replies(raw, 2)[0] == [b"+OK\r\n", b":2\r\n"]
    fresh_cluster.replicas[1].sigstop()
    try:
        send(raw, "SET", "durable", "2")
        send(raw, "WAIT", "2", "500")
        t0 = time.monotonic()
        replies = read_replies(raw, 2)[0]
        # Only one replica can acknowledge; WAIT waits its timeout and says so.
        assert replies == [b"+OK\r\n", b":1\r\n"]
        assert time.monotonic() - t0 >= 0.45
    finally:
        fresh_cluster.replicas[1].sigcont()
    raw.close()


def test_pipelined_blocking_commands_are_not_timed_out(cluster, proxy):
    raw = connect(proxy.port)
    send(raw, "BLPOP", "nothing:a", "0.2")
    send(raw, "BLPOP", "nothing:b", "1.5")  # longer than the proxy's 1 s timeout
    time.sleep(0.5)
    send(raw, "PING")
    replies, _ = read_replies(raw, 3, timeout=5)
    assert replies == [b"*-1\r\n", b"*-1\r\n", b"+PONG\r\n"]
    raw.close()
    assert proxy.client().set("after:blpop", "1") is True


def test_read_only_script_that_writes_gets_the_primarys_error(cluster, proxy):
    c = proxy.client()
    direct = cluster.primary.client()
    script = "#!lua\nreturn redis.call('set', KEYS[1], 'x')"
    with pytest.raises(redis.ResponseError) as via_proxy:
        c.eval_ro(script, 1, "ro:key")
    with pytest.raises(redis.ResponseError) as via_direct:
        direct.eval_ro(script, 1, "ro:key")
    assert str(via_proxy.value) == str(via_direct.value)


def test_interleaved_scans_keep_their_cursors(cluster, proxy):
    primary = cluster.primary.client()
    pipe = primary.pipeline(transaction=False)
    for i in range(200):
        pipe.hset(f"iscan:{i}", mapping={"a": 1, "b": 2})
    pipe.execute()
    cluster.wait_replicated()
    c = proxy.client()
    keys = set()
    fields = 0
    for k in c.scan_iter(match="iscan:*", count=10):
        keys.add(k)
        fields += sum(1 for _ in c.hscan_iter(k))
    assert len(keys) == 200
    assert fields == 400


def test_client_name_survives_pinning(proxy):
    raw = connect(proxy.port)
    send(raw, "CLIENT", "SETNAME", "worker-7")
    send(raw, "SELECT", "1")
    send(raw, "CLIENT", "GETNAME")
    assert read_replies(raw, 3)[0] == [b"+OK\r\n", b"+OK\r\n", b"$8\r\nworker-7\r\n"]
    raw.close()


def test_named_clients_transactions_reuse_connections_and_keep_their_own_names(cluster, proxy):
    """A transaction runs on a connection of its own, taken from the worker's idle ones: a
    named client's (redis-py's client_name, Lettuce's, ioredis's connectionName) are reused
    like anyone's, not opened and closed per transaction (that was a connection per MULTI:
    thousands a second, and the proxy's ports in TIME_WAIT), and each transaction still sees
    its own client's name, or none."""
    def norm(name):  # redis-py gives CLIENT GETNAME's answer as str
        return name.encode() if isinstance(name, str) else name

    primary = cluster.primary.client()
    before = primary.info("stats")["total_connections_received"]
    alpha, plain, gamma = proxy.client(), proxy.client(), proxy.client()
    alpha.client_setname("alpha")
    gamma.client_setname("gamma")
    for i in range(40):
        for c, name in ((alpha, b"alpha"), (plain, None), (gamma, b"gamma")):
            p = c.pipeline(transaction=True)
            p.client_getname()
            p.incr("names:ctr")
            got, _ = p.execute()
            assert norm(got) == name, (i, got, name)
    # A name the server refuses inside a transaction leaves the old one, on the proxy too.
    p = alpha.pipeline(transaction=True)
    p.execute_command("CLIENT", "SETNAME", "a b")
    p.client_getname()
    res = p.execute(raise_on_error=False)
    assert isinstance(res[0], redis.ResponseError) and norm(res[1]) == b"alpha", res
    assert norm(alpha.client_getname()) == b"alpha"
    opened = primary.info("stats")["total_connections_received"] - before
    assert opened <= 12, f"{opened} connections opened for 121 transactions"
    # Renamed inside a transaction: the next transaction, on whichever connection, has it.
    p = gamma.pipeline(transaction=True)
    p.client_setname("delta")
    p.execute()
    for c, name in ((plain, None), (gamma, b"delta"), (alpha, b"alpha")):
        p = c.pipeline(transaction=True)
        p.client_getname()
        got = p.execute()[0]
        assert norm(got) == name == norm(c.client_getname()), (got, name)


@pytest.mark.parametrize("args,expected", [
    (("HELLO", "4"), b"-NOPROTO unsupported protocol version\r\n"),
    (("HELLO", "x"), b"-ERR Protocol version is not an integer or out of range\r\n"),
    (("AUTH", "a", "b", "c"), b"-ERR syntax error\r\n"),
    (("RESET", "x"), b"-ERR wrong number of arguments for 'reset' command\r\n"),
    (("PING", "a", "b"), b"-ERR wrong number of arguments for 'ping' command\r\n"),
])
def test_local_commands_answer_like_redis(cluster, proxy, args, expected):
    for port in (proxy.port, cluster.primary.port):
        raw = connect(port)
        send(raw, *args)
        assert read_replies(raw, 1)[0] == [expected], f"port {port}"
        raw.close()


def test_client_subcommands_are_per_client(cluster, proxy):
    """CLIENT ID/INFO/LIST/SETINFO describe the calling client, not the proxy's shared
    connections; subcommands that would act on shared connections (or every client of the
    server) are refused by name. Another client pipelining meanwhile sees nothing, and the
    replicas' replication links are untouched."""
    a, b = proxy.client(), proxy.client()
    a_id = a.client_id()
    assert a_id != b.client_id()
    hello = a.execute_command("HELLO", "2")
    fields = dict(zip(hello[::2], hello[1::2])) if isinstance(hello, list) else hello
    assert int(fields[b"id"]) == a_id
    assert a.execute_command("CLIENT", "SETINFO", "LIB-NAME", "kp-test") in (True, b"OK")
    a.client_setname("alpha")
    info = a.execute_command("CLIENT", "INFO").decode()
    assert f"id={a_id} " in info and "name=alpha " in info and "lib-name=kp-test" in info, info
    listing = a.execute_command("CLIENT", "LIST").decode().strip().splitlines()
    assert len(listing) == 1 and listing[0].startswith(f"id={a_id} "), listing
    assert a.execute_command("CLIENT", "LIST", "ID", str(a_id)).decode().startswith(f"id={a_id}")
    assert a.execute_command("CLIENT", "LIST", "ID", str(a_id + 1)) in (b"", "")
    links_before = [r.client().info("replication")["master_link_status"] for r in cluster.replicas]
    with connect(proxy.port) as bystander:
        for args in (["CLIENT", "KILL", "SKIPME", "yes"], ["CLIENT", "KILL", "TYPE", "normal"],
                     ["CLIENT", "PAUSE", "1000"], ["CLIENT", "UNPAUSE"],
                     ["CLIENT", "NO-EVICT", "on"], ["CLIENT", "UNBLOCK", str(a_id)]):
            with pytest.raises(redis.ResponseError) as err:
                a.execute_command(*args)
            assert str(err.value).startswith(f"kompress: CLIENT {args[1].upper()} is not "
                                             "supported"), err.value
            send(bystander, "SET", "cs:k", "v")
            send(bystander, "GET", "cs:k")
            assert read_replies(bystander, 2)[0] == [b"+OK\r\n", b"$1\r\nv\r\n"]
    assert [r.client().info("replication")["master_link_status"]
            for r in cluster.replicas] == links_before == ["up", "up"]
    assert a.ping() is True
    assert "marked down" not in proxy.stderr()


def test_proxy_info_command_and_json(fresh_cluster, make_proxy):
    """PROXY INFO answers the proxy's own view; INFO still answers the primary's (clients and
    tools parse it); /info on the admin endpoint is the same view as JSON."""
    import json
    admin = free_port()
    c = fresh_cluster
    p = make_proxy(c.primary.port, [r.port for r in c.replicas],
                   extra_args=["--admin-listen", f"{HOST}:{admin}"])
    cl = p.client()
    cl.set("pi:k", "v")
    text = cl.execute_command("PROXY", "INFO").decode()
    assert text.startswith("# Proxy\r\nversion:"), text
    assert f"primary:{HOST}:{c.primary.port}\r\n" in text and "primary_confirmed:1" in text
    for r in c.replicas:
        assert f"addr={HOST}:{r.port},role=replica,up=1" in text, text
    assert "writes:1\r\n" in text, text
    info = cl.info("server")
    assert "redis_version" in info and "tcp_port" in info and info["tcp_port"] == c.primary.port
    with pytest.raises(redis.ResponseError):
        cl.execute_command("PROXY", "NOPE")
    status, body = http_get(admin, "/info")
    assert status == 200
    view = json.loads(body)
    assert view["primary"] == f"{HOST}:{c.primary.port}" and view["primary_confirmed"] is True
    assert {n["role"] for n in view["nodes"]} == {"primary", "replica"}
    assert view["stats"]["writes"] >= 1  # the SET (INFO goes to the primary as well)


def test_admin_endpoint_listens_once_clients_are_accepted(cluster, make_proxy):
    """Whoever sees the proxy accept clients (a test, an orchestrator's readiness probe) finds
    the admin endpoint listening too: it opens first. (It used to open after the workers had
    started: a connect in between was refused, under ASan in CI, and nearly every time for a
    check polling the client port every millisecond.)"""
    import socket as sk
    for _ in range(5):
        admin = free_port()
        p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                       extra_args=["--admin-listen", f"{HOST}:{admin}"], ready_poll=0.001)
        try:
            sk.create_connection((HOST, admin), timeout=5).close()
        except ConnectionRefusedError:
            raise AssertionError("the client port accepted before the admin endpoint listened")
        p.stop()


def test_admin_endpoint_holds_up_to_bad_http(cluster, make_proxy):
    """Idle, slow, oversized and malformed admin requests neither stop the next scrape nor
    hold descriptors for long; clients of the proxy see nothing of it."""
    import socket as sk
    admin = free_port()
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--admin-listen", f"{HOST}:{admin}"])
    idle = [sk.create_connection((HOST, admin), timeout=5) for _ in range(100)]
    try:
        # More idle connections than the cap: the oldest are shed, a scrape still works.
        status, text = http_get(admin, "/metrics")
        assert status == 200 and "kompress_requests_total" in text
        # Oversized head (no end of headers): answered and closed, not buffered forever.
        with sk.create_connection((HOST, admin), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, sk.timeout):
                    break
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 "), data[:100]
        # Malformed request line.
        with sk.create_connection((HOST, admin), timeout=5) as s:
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 400"), "malformed request not refused"
        # A request that never finishes is closed after a few seconds.
        slow = sk.create_connection((HOST, admin), timeout=10)
        slow.sendall(b"GET /metr")
        t0 = time.monotonic()
        try:
            assert slow.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 8 * SLOWDOWN
        slow.close()
    finally:
        for s in idle:
            s.close()
    assert http_get(admin, "/healthz")[0] == 200
    assert p.client().ping() is True
    assert p.alive


def test_subscriber_survives_losing_its_connection(fresh_cluster, make_proxy):
    """A subscriber whose dedicated connection is killed (CLIENT KILL TYPE pubsub on the
    primary, as an operator or a failover would) keeps its subscriptions: the proxy renews
    them, swallows the repeated confirmations, and later messages arrive in order."""
    c = fresh_cluster
    p = make_proxy(c.primary.port, [r.port for r in c.replicas])
    sub = connect(p.port)
    send(sub, "SUBSCRIBE", "ch:a", "ch:b")
    send(sub, "PSUBSCRIBE", "pat:*")
    replies, rest = read_replies(sub, 3)
    assert [r.split(b"\r\n")[1:4:2] for r in replies] == [
        [b"$9", b"$4"], [b"$9", b"$4"], [b"$10", b"$5"]], replies
    direct = c.primary.client()
    assert direct.publish("ch:a", "before") == 1
    got, rest = read_replies(sub, 1, buf=rest)
    assert got == [b"*3\r\n$7\r\nmessage\r\n$4\r\nch:a\r\n$6\r\nbefore\r\n"]
    assert direct.client_kill_filter(_type="pubsub") >= 1
    # Renewed: all three subscriptions are back on the primary.
    wait_until(lambda: direct.pubsub_numsub("ch:a", "ch:b") == [(b"ch:a", 1), (b"ch:b", 1)]
               and direct.pubsub_numpat() == 1, 10 * SLOWDOWN, what="subscriptions renewed")
    for i in range(20):
        direct.publish("ch:b" if i % 2 else "pat:x", str(i))
    got, rest = read_replies(sub, 20, buf=rest)
    for i, r in enumerate(got):
        if i % 2:
            assert r == b"*3\r\n$7\r\nmessage\r\n$4\r\nch:b\r\n$%d\r\n%d\r\n" % (len(str(i)), i), r
        else:
            assert r == (b"*4\r\n$8\r\npmessage\r\n$5\r\npat:*\r\n$5\r\npat:x\r\n$%d\r\n%d\r\n"
                         % (len(str(i)), i)), r
    assert rest == b"", rest  # no duplicate confirmation reached the client
    send(sub, "UNSUBSCRIBE")
    send(sub, "PUNSUBSCRIBE")
    got, rest = read_replies(sub, 3)
    assert got[-1].endswith(b":0\r\n"), got
    send(sub, "PING")
    assert read_replies(sub, 1, buf=rest)[0] == [b"+PONG\r\n"]
    sub.close()
    assert "marked down" not in p.stderr()


def test_client_name_follows_transactions_resets_and_renewed_subscriptions(fresh_cluster,
                                                                           make_proxy):
    """The name a client has is the one Redis would give it, now that dedicated connections
    of named clients are reused: a CLIENT SETNAME queued in a transaction counts only if EXEC
    runs it (not after DISCARD, EXECABORT or a failed WATCH); RESET then SETNAME pipelined
    leaves the new name; a subscriber whose connection is renewed on one another client
    used keeps its own name."""
    c = fresh_cluster
    p = make_proxy(c.primary.port, [r.port for r in c.replicas], extra_args=["--workers", "1"])
    primary = c.primary.client()

    def run(sock, *cmds):
        sock.sendall(b"".join(encode_command(*cmd) for cmd in cmds))
        return read_replies(sock, len(cmds))[0]

    def name_seen_by(port, *setup):
        with connect(port) as sock:
            run(sock, ("CLIENT", "SETNAME", "a"))
            for step in setup:
                run(sock, *step)
            return (run(sock, ("CLIENT", "GETNAME")),
                    run(sock, ("MULTI",), ("CLIENT", "GETNAME"), ("EXEC",))[-1])

    cases = [
        [[("MULTI",), ("CLIENT", "SETNAME", "b"), ("DISCARD",)]],
        [[("MULTI",), ("CLIENT", "SETNAME", "b"), ("NOSUCHCMD",), ("EXEC",)]],
        [[("MULTI",), ("CLIENT", "SETNAME", "b"), ("EXEC",)]],
        [[("MULTI",), ("RESET",), ("CLIENT", "SETNAME", "x")]],
        [[("WATCH", "nm:w"), ("RESET",), ("CLIENT", "SETNAME", "x")]],
        [[("MULTI",), ("CLIENT", "SETNAME", "a b"), ("EXEC",)]],
        [[("MULTI",), ("CLIENT", "SETNAME", "x"), ("EXEC",), ("CLIENT", "SETNAME", "c")]],
        [[("MULTI",), ("CLIENT", "SETNAME", "x"), ("EXEC",), ("RESET",)]],
        [[("WATCH", "nm:w"), ("HELLO", "4", "SETNAME", "b")], [("UNWATCH",)]],
        [[("HELLO", "3")], [("SUBSCRIBE", "nm:c")], [("MULTI",), ("CLIENT", "SETNAME", "x"),
                                                     ("EXEC",)], [("UNSUBSCRIBE", "nm:c")]],
    ]
    for steps in cases:
        assert name_seen_by(p.port, *steps) == name_seen_by(c.primary.port, *steps), steps
    # A WATCH that fails: EXEC answers nil and the queued name is not taken.
    for port in (p.port, c.primary.port):
        with connect(port) as sock:
            run(sock, ("CLIENT", "SETNAME", "a"))
            run(sock, ("WATCH", "nm:w"))
            primary.set("nm:w", port)
            assert run(sock, ("MULTI",), ("CLIENT", "SETNAME", "b"), ("EXEC",))[-1] in (
                b"*-1\r\n", b"_\r\n")
            assert run(sock, ("CLIENT", "GETNAME")) == [b"$1\r\na\r\n"], port
    # A subscriber renewed on an idle connection that another named client left.
    sub = connect(p.port)
    run(sub, ("CLIENT", "SETNAME", "bob"))
    assert run(sub, ("SUBSCRIBE", "nm:ch"))[0].startswith(b"*3\r\n$9\r\nsubscribe")
    alice = connect(p.port)
    run(alice, ("CLIENT", "SETNAME", "alice"))
    for _ in range(2):  # leaves connections named alice idle in the worker
        run(alice, ("MULTI",), ("SET", "nm:k", "1"), ("EXEC",))
    assert primary.client_kill_filter(_type="pubsub") >= 1
    wait_until(lambda: primary.pubsub_numsub("nm:ch") == [(b"nm:ch", 1)], 10 * SLOWDOWN,
               what="subscription renewed")
    names = {cl["name"] for cl in primary.client_list() if cl.get("cmd") == "subscribe"
             or int(cl.get("sub", 0)) > 0}
    assert names == {"bob"}, primary.client_list()
    assert run(sub, ("PING",))[0] == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    sub.close()
    alice.close()


def test_a_transaction_opened_after_a_pipelined_reset_stays_its_clients(cluster, proxy):
    """WATCH, RESET, MULTI, SET in one write: the MULTI after RESET holds the dedicated
    connection until EXEC. It used to go back to the worker at RESET's reply, still inside
    MULTI: the next client's MULTI got "nested", and its EXEC ran the first client's SET."""
    results = []
    for port in (proxy.port, cluster.primary.port):
        a, b = connect(port), connect(port)
        a.sendall(encode_command("WATCH", "tr:k") + encode_command("RESET")
                  + encode_command("MULTI") + encode_command("SET", "tr:k", "A"))
        got = read_replies(a, 4)[0]
        b.sendall(encode_command("MULTI") + encode_command("SET", "tr:b", "B")
                  + encode_command("EXEC"))
        got += read_replies(b, 3)[0]
        a.sendall(encode_command("EXEC"))
        got += read_replies(a, 1)[0]
        results.append(got)
        a.close()
        b.close()
    assert results[0] == results[1] == [
        b"+OK\r\n", b"+RESET\r\n", b"+OK\r\n", b"+QUEUED\r\n",
        b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n", b"*1\r\n+OK\r\n"], results


def test_unsubscribe_and_subscribe_in_one_batch_stay_subscribed(proxy, cluster):
    """UNSUBSCRIBE of the last channel and SUBSCRIBE of another in one write: the client is
    still a subscriber afterwards (messages arrive, nothing stray), and a PING with an
    argument then QUIT is answered like Redis answers it."""
    s = connect(proxy.port)
    send(s, "SUBSCRIBE", "batch:a")
    read_replies(s, 1)
    s.sendall(encode_command("UNSUBSCRIBE", "batch:a") + encode_command("SUBSCRIBE", "batch:b"))
    replies, rest = read_replies(s, 2)
    assert replies[0].endswith(b":0\r\n") and replies[1].endswith(b":1\r\n"), replies
    wait_until(lambda: cluster.primary.client().pubsub_numsub("batch:b")[0][1] == 1, 5,
               what="the subscription")
    assert cluster.primary.client().publish("batch:b", "hi") == 1
    got, rest = read_replies(s, 1, buf=rest)
    assert got == [b"*3\r\n$7\r\nmessage\r\n$7\r\nbatch:b\r\n$2\r\nhi\r\n"], got
    s.sendall(encode_command("PING", "x") + encode_command("QUIT"))
    got, rest = read_replies(s, 2, buf=rest)
    assert got == [b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n", b"+OK\r\n"], got
    s.settimeout(5)
    assert s.recv(100) == b"", "not closed after QUIT"
    s.close()


PINNING = {
    "watch": [("WATCH", "pin:k")],
    "subscribe": [("SUBSCRIBE", "pin:ch")],
    "resp3-subscribe": [("HELLO", "3"), ("SUBSCRIBE", "pin:ch")],
    "tracking": [("CLIENT", "TRACKING", "on")],
    "monitor": [("MONITOR",)],
}


def pinned_exchange(port, pin, commands, first_replies=False):
    """Pins a raw connection with `pin`, then sends `commands` and PING; returns the replies
    to `commands` + PING (MONITOR's feed lines, "+<timestamp> ...", left out), after those to
    `pin` when first_replies."""
    sock = connect(port)
    first = []
    try:
        for cmd in pin:
            send(sock, *cmd)
            first += read_replies(sock, 1, timeout=5 * SLOWDOWN)[0]
        for cmd in commands + [("PING",)]:
            send(sock, *cmd)
        got, buf = [], b""
        while len(got) < len(commands) + 1:
            replies, buf = read_replies(sock, 1, timeout=5 * SLOWDOWN, buf=buf)
            if not (replies[0].startswith(b"+") and replies[0][1:2].isdigit()):
                got.append(replies[0])
        return first + got if first_replies else got
    finally:
        sock.close()


@pytest.mark.parametrize("mode", sorted(PINNING))
def test_refused_command_on_a_pinned_session_leaves_it_usable(proxy, mode):
    """A command the proxy refuses (CLIENT KILL, a deny_commands entry) inside WATCH, a
    subscription, tracking or MONITOR gets its error in its place in the stream and the
    session goes on, as it does unpinned (it used to end the connection)."""
    got = pinned_exchange(proxy.port, PINNING[mode],
                          [("CLIENT", "KILL", "ID", "1"), ("SHUTDOWN",)])
    assert got[0].startswith(b"-ERR kompress: CLIENT KILL is not supported"), got
    assert got[1].startswith(b"-ERR kompress: SHUTDOWN is refused"), got
    assert got[2] in (b"+PONG\r\n", b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"), got


def test_refused_command_inside_multi_aborts_the_transaction(cluster, proxy):
    """Like a command Redis refuses at queue time: the error, then EXEC answers EXECABORT
    and nothing of the transaction is applied; the connection carries on."""
    cluster.primary.client().delete("pin:tx")
    sock = connect(proxy.port)
    try:
        for cmd in [("MULTI",), ("SET", "pin:tx", "1"), ("SHUTDOWN",), ("EXEC",), ("PING",)]:
            send(sock, *cmd)
        got, _ = read_replies(sock, 5, timeout=5 * SLOWDOWN)
    finally:
        sock.close()
    assert got[:2] == [b"+OK\r\n", b"+QUEUED\r\n"], got
    assert got[2].startswith(b"-ERR kompress: SHUTDOWN is refused"), got
    assert got[3].startswith(b"-EXECABORT"), got
    assert got[4] == b"+PONG\r\n", got
    assert cluster.primary.client().get("pin:tx") is None


@pytest.mark.parametrize("mode", sorted(PINNING))
def test_client_id_and_list_on_a_pinned_session_describe_the_client(proxy, mode):
    """CLIENT ID keeps the id the client had before it pinned its session, and CLIENT LIST
    lists only this client: the server's list (other applications' addresses and names, the
    proxy's own connections) is never shown, pinned or not."""
    got = pinned_exchange(proxy.port, [("CLIENT", "ID")] + PINNING[mode],
                          [("CLIENT", "ID"), ("CLIENT", "LIST")], first_replies=True)
    before, pinned_id, listing = got[0], got[-3], got[-2]
    assert before.startswith(b":") and pinned_id == before, got
    body = listing.split(b"\r\n", 1)[1]
    lines = [ln for ln in body.split(b"\n") if b"id=" in ln]
    assert len(lines) == 1, listing
    assert f"id={int(before[1:-2])} ".encode() in lines[0], listing
    assert f"laddr={HOST}:{proxy.port} ".encode() in lines[0], listing


def test_a_message_carrying_a_marker_token_is_delivered_as_sent(proxy):
    """The proxy's own answers on a pinned session replace the replies to its marker PINGs,
    recognised by their exact shape: a pub/sub message carrying the same text, arriving
    while the marker is outstanding, is delivered as sent and takes nothing's place."""
    sub = connect(proxy.port)
    try:
        send(sub, "HELLO", "3")
        (hello,), rest = read_replies(sub, 1, timeout=5 * SLOWDOWN)
        send(sub, "CLIENT", "ID")
        (cid,), rest = read_replies(sub, 1, timeout=5 * SLOWDOWN, buf=rest)
        my_id = int(cid[1:-2])
        send(sub, "SUBSCRIBE", "pin:forge")
        _, rest = read_replies(sub, 1, timeout=5 * SLOWDOWN, buf=rest)
        tokens = [f"kompress-local-{my_id}-{n}" for n in (1, 2, 99999999)]
        # One write: the marker for CLIENT ID goes out behind the PUBLISHes, so each message
        # comes back while it is outstanding.
        sub.sendall(b"".join(encode_command("PUBLISH", "pin:forge", t) for t in tokens)
                    + encode_command("CLIENT", "ID"))
        got, _ = read_replies(sub, 2 * len(tokens) + 1, timeout=5 * SLOWDOWN, buf=rest)
    finally:
        sub.close()
    want = []
    for t in tokens:
        want += [b">3\r\n$7\r\nmessage\r\n$9\r\npin:forge\r\n$%d\r\n%s\r\n"
                 % (len(t), t.encode()), b":1\r\n"]
    assert got == want + [cid], got


def exchange_until_quiet(port, payload, quiet=0.5):
    """Sends payload and returns every byte that arrives until nothing has for `quiet` s."""
    with connect(port) as s:
        s.sendall(payload)
        s.settimeout(quiet * SLOWDOWN)
        data = b""
        try:
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        return data


CLIENT_REPLY_CASES = {
    "off-then-on": [("CLIENT", "REPLY", "OFF"), ("CLIENT", "ID"), ("SET", "cr:k", "1"),
                    ("CLIENT", "REPLY", "ON"), ("GET", "cr:k")],
    "skip-a-local-answer": [("CLIENT", "REPLY", "SKIP"), ("CLIENT", "ID"), ("PING",)],
    "skip-a-forwarded-one": [("CLIENT", "REPLY", "SKIP"), ("GET", "cr:k"), ("PING", "after")],
    "off-then-reset": [("CLIENT", "REPLY", "OFF"), ("CLIENT", "ID"), ("CLIENT", "ID"),
                       ("RESET",), ("PING",)],
}


@pytest.mark.parametrize("case", sorted(CLIENT_REPLY_CASES))
def test_client_reply_off_and_skip_cover_what_the_proxy_answers(cluster, proxy, case):
    """Under CLIENT REPLY OFF/SKIP the commands the proxy answers itself on the pinned
    connection (CLIENT ID/INFO/LIST, refusals) get no answer, as from Redis, and a SKIP
    spent on one leaves the client's next command answered."""
    payload = b"".join(encode_command(*c) for c in CLIENT_REPLY_CASES[case])
    want = exchange_until_quiet(cluster.primary.port, payload)
    got = exchange_until_quiet(proxy.port, payload)
    assert got == want, case
    assert want or case == "skip-a-forwarded-one", case


def test_client_reply_off_local_answers_are_not_kept(cluster, make_proxy):
    """Under CLIENT REPLY OFF nothing is answered, so nothing may be kept for an answer:
    200,000 CLIENT IDs and refused commands leave the proxy's memory where it was."""
    asan = os.environ.get("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    proxy = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                       env={"ASAN_OPTIONS": asan + ":quarantine_size_mb=8"})

    def rss():
        with open(f"/proc/{proxy.proc.pid}/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) * 1024

    n = 100_000
    with connect(proxy.port) as s:
        s.sendall(encode_command("CLIENT", "REPLY", "OFF") + encode_command("PING"))
        time.sleep(0.2)
        before = rss()
        batch = (encode_command("CLIENT", "ID") + encode_command("SHUTDOWN")) * 1000
        for _ in range(n // 1000):
            s.sendall(batch)
        s.sendall(encode_command("CLIENT", "REPLY", "ON") + encode_command("PING", "done"))
        assert read_replies(s, 2, timeout=30 * SLOWDOWN)[0] == [b"+OK\r\n", b"$4\r\ndone\r\n"]
        grown = rss() - before
    assert grown < 4 * 1024 * 1024, f"proxy grew by {grown} bytes"


def connections_received(server):
    return server.client().info("stats")["total_connections_received"]


@pytest.mark.parametrize("db", [0, 3])
def test_requests_behind_a_long_script_get_the_servers_answer_not_a_timeout(fresh_cluster,
                                                                            make_proxy, db):
    """Other clients of the worker whose shared connection a script holds: Redis answers
    them -BUSY at once on any other connection. Through the proxy they used to queue behind
    the script until the timeout, be told it may or may not have been applied, and then run
    once the script ended (an INCR the client saw fail was applied). The stuck connection
    leaves the pool after a second of silence: later requests get -BUSY as a direct client
    would, and nothing they sent runs after the script. In a database other than 0 the new
    connection's SELECT is refused with -BUSY too: the requests held behind it get that
    answer, none of them runs in database 0, and a client retrying in a loop does not cost a
    connection per attempt."""
    proxy = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas],
                       extra_args=["--workers", "1", "--timeout", "5"])
    direct = fresh_cluster.primary.client()
    direct.config_set("busy-reply-threshold", 100)
    # (INFO is refused while the script runs: connections are counted across it.)
    before = connections_received(fresh_cluster.primary)
    script = BusyScript(proxy.client(timeout=20, db=db))
    try:
        wait_until(lambda: busy(direct), 5, what="the script running")
        time.sleep(1.5 * SLOWDOWN)  # the connection has been silent for a second
        other = proxy.client(timeout=20, db=db)
        started = time.monotonic()
        with pytest.raises(redis.ResponseError, match="^BUSY"):
            other.incr("behind:script")
        took = time.monotonic() - started
        assert took < 2 * SLOWDOWN, took  # the server's answer, not the 5 s timeout
        # A client retrying on -BUSY for a second: each attempt answered, few connections.
        attempts, busy_answers = busy_answers_for(lambda: other.incr("behind:script"))
        assert busy_answers == attempts
        assert direct.execute_command("SCRIPT", "KILL") in (True, b"OK", "OK")
        assert script.killed(), script.outcome
        # Free again: the next request runs at once (no -BUSY held over from before the kill:
        # the stuck connection's own answer told the worker), on the new connection. 1: none
        # of the refused INCRs ran, before or after.
        assert other.incr("behind:script") == 1
        opened = connections_received(fresh_cluster.primary) - before
        print(f"db {db}: {attempts} INCRs in 1 s while busy, all -BUSY; {opened} connections "
              f"opened to the primary in all")
        assert opened <= 40, opened  # a connection per refused attempt: thousands
        time.sleep(0.2)
        assert proxy.client(db=db).get("behind:script") == b"1"
        if db != 0:
            assert direct.get("behind:script") is None  # nothing ran in database 0
        # A second script, on the connection that took the first one's place: stuck in turn,
        # it leaves the pool too.
        script.stop(direct)
        script = BusyScript(proxy.client(timeout=20, db=db))
        wait_until(lambda: busy(direct), 5, what="the second script running")
        time.sleep(1.5 * SLOWDOWN)
        started = time.monotonic()
        with pytest.raises(redis.ResponseError, match="^BUSY"):
            other.incr("behind:script")
        assert time.monotonic() - started < 2 * SLOWDOWN
    finally:
        script.stop(direct)


@pytest.mark.parametrize("kind", ["script", "function"])
def test_kill_reaches_a_script_that_holds_the_shared_connection(fresh_cluster, make_proxy, kind):
    """A script that runs on and on holds the connection it was called on: Redis reads nothing
    more from it until the script ends. SCRIPT KILL / FUNCTION KILL from another client of
    the same worker must not queue behind it there, and must work from a client in another
    database (SELECT is refused while a script runs)."""
    proxy = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas],
                       extra_args=["--workers", "1", "--timeout", "5"])
    direct = fresh_cluster.primary.client()
    direct.config_set("busy-reply-threshold", 100)
    loop = "local a = 0 while true do a = a + 1 end"
    if kind == "function":
        direct.function_load(f"#!lua name=spin\nredis.register_function('spin', function() {loop} end)",
                             replace=True)
    outcome = {}

    def run():
        try:
            c = proxy.client(timeout=20)
            outcome["reply"] = c.eval(loop, 0) if kind == "script" else c.fcall("spin", 0)
        except redis.RedisError as e:
            outcome["error"] = str(e)
    t = threading.Thread(target=run)
    t.start()
    try:
        wait_until(lambda: busy(direct), 5, what="the script running")
        killer = proxy.client(timeout=20, db=9)
        started = time.monotonic()
        assert killer.execute_command(kind.upper(), "KILL") in (True, b"OK", "OK")
        took = time.monotonic() - started
        t.join(10)
        assert not t.is_alive()
        assert "killed by user" in outcome.get("error", ""), outcome
        # Well before the 5 s timeout: it did not wait behind the script.
        assert took < 2 * SLOWDOWN, took
        # Nothing left to kill: Redis's own answer, and the shared connection works again.
        with pytest.raises(redis.ResponseError, match="NOTBUSY"):
            killer.execute_command(kind.upper(), "KILL")
        assert killer.set("after:kill", "1") is True and killer.get("after:kill") == b"1"
    finally:
        try:
            direct.execute_command(kind.upper(), "KILL")
        except redis.RedisError:
            pass
        t.join(10)


def test_kills_beyond_the_workers_budget_are_refused_not_queued(fresh_cluster, make_proxy):
    """Each kill opens a connection of its own; a client pipelining many gets an explicit
    error for those over the worker's budget (8 at once, 50 a second) instead of having them
    queue behind the script on the shared connection, and every one is answered at once."""
    proxy = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas],
                       extra_args=["--workers", "1", "--timeout", "5"])
    direct = fresh_cluster.primary.client()
    direct.config_set("busy-reply-threshold", 100)
    t = threading.Thread(target=lambda: pytest.raises(
        redis.ResponseError, proxy.client(timeout=20).eval, "while true do end", 0))
    t.start()
    try:
        wait_until(lambda: busy(direct), 5, what="the script running")
        raw = connect(proxy.port)
        started = time.monotonic()
        raw.sendall(encode_command("SCRIPT", "KILL") * 200)
        replies, _ = read_replies(raw, 200, timeout=10)
        took = time.monotonic() - started
        raw.close()
    finally:
        try:
            direct.script_kill()
        except redis.RedisError:
            pass
        t.join(10)
    refused = [r for r in replies if r.startswith(b"-ERR kompress: too many SCRIPT KILL")]
    others = [r for r in replies if r not in refused]
    assert b"+OK\r\n" in others
    assert all(r == b"+OK\r\n" or r.startswith(b"-NOTBUSY") for r in others), others
    assert took < 2 * SLOWDOWN, took
    # At most 50 connections in each second (window) the 200 kills spanned.
    assert len(others) <= 50 * (int(took) + 2), len(others)


def test_requests_held_behind_an_unanswered_handshake_are_never_sent_late(fresh_cluster,
                                                                         make_proxy):
    """A new connection (database 3) to a server that answers nothing for a while (CLIENT
    PAUSE): its SELECT gets no answer within the timeout, and the client's INCR, held behind
    it, was never sent. The client hears so, and the INCR does not run once the pause ends
    (it was answered as late and then sent all the same)."""
    proxy = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas],
                       extra_args=["--workers", "1", "--timeout", "1"])
    direct = fresh_cluster.primary.client()
    assert proxy.client().set("warm", "1") is True
    pause_ms = int(2500 * SLOWDOWN)
    direct.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
    paused_at = time.monotonic()
    c = proxy.client(timeout=20, db=3)
    with pytest.raises(redis.ResponseError) as e:
        c.incr("held:n")
    print(f"INCR behind an unanswered SELECT: {e.value}")
    assert "may or may not" not in str(e.value), e.value
    assert "primary" in str(e.value)
    time.sleep(max(0.0, pause_ms / 1000 - (time.monotonic() - paused_at)) + 0.5)
    assert fresh_cluster.primary.client(db=3).get("held:n") is None
    assert c.incr("held:n") == 1  # and the class works once the server answers again


def test_a_refused_backend_password_is_answered_at_once_and_nothing_is_sent(fresh_cluster,
                                                                           make_proxy):
    """The primary's password changes under the proxy (CONFIG SET requirepass) and a client
    then needs a new connection (another database): the proxy's own AUTH is refused. What the
    client sent behind it gets that reason at once, is never sent, and is not retried on new
    connections in a loop (it once waited the whole timeout, refused again on each retry)."""
    direct = fresh_cluster.primary.client()
    direct.config_set("requirepass", "pw1")
    try:
        proxy = make_proxy(fresh_cluster.primary.port, [],
                           extra_args=["--workers", "1", "--timeout", "3",
                                       "--backend-password", "pw1"], use_base_args=False)
        assert proxy.client().set("warm", "1") is True
        admin = fresh_cluster.primary.client(password="pw1")
        admin.config_set("requirepass", "pw2")
        admin = fresh_cluster.primary.client(password="pw2")
        before = admin.info("stats")["total_connections_received"]
        c = proxy.client(timeout=20, db=1)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(redis.ResponseError) as e:
                c.set("refused:k", "v")
            took = time.monotonic() - started
            print(f"SET behind a refused AUTH: {e.value} after {took:.3f} s")
            assert "AUTH refused" in str(e.value) and "WRONGPASS" in str(e.value), e.value
            assert took < 1.0 * SLOWDOWN, took
        opened = admin.info("stats")["total_connections_received"] - before - 1
        assert opened <= 10, opened
        assert admin.execute_command("SELECT", "1") and admin.get("refused:k") is None
    finally:
        fresh_cluster.primary.client(password="pw2").config_set("requirepass", "")


def _session_bytes(port, payload, follow):
    """What a connection receives for `payload`, then for `follow` sent once it is quiet."""
    out = []
    with connect(port, timeout=5) as s:
        for chunk in (payload, follow):
            s.sendall(chunk)
            s.settimeout(0.4 * SLOWDOWN)
            got = b""
            while True:
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    break
                got += data
            out.append(got)
    return out


@pytest.mark.parametrize("payload", [
    b"SUBSCRIBE a\r\nRESET\r\nSUBSCRIBE b\r\nPING\r\n",
    b"SUBSCRIBE a\r\nRESET\r\nSUBSCRIBE b\r\nRESET\r\nPING\r\n",
    b"MULTI\r\nSET rs:x 1\r\nRESET\r\nGET rs:x\r\nRESET\r\nPING\r\n",
])
def test_commands_pipelined_after_reset_keep_their_own_state(cluster, proxy, payload):
    """RESET's answer clears the session (subscriptions, transaction); what the client
    pipelined after it must keep the state it sets. A SUBSCRIBE after RESET left the client
    unsubscribed (its messages lost), and a second RESET lost the last replies for good. The
    proxy's bytes must be the server's own, and so must the session's state after them."""
    follow = b"PUBLISH b hi\r\nPING\r\n"
    direct = _session_bytes(cluster.primary.port, payload, follow)
    proxied = _session_bytes(proxy.port, payload, follow)
    assert proxied == direct, (proxied, direct)
