"""Fault tests: replicas and the primary are killed (-9), stopped (SIGSTOP) and restarted on
the same port while clients keep issuing commands through the proxy. Reads must never
show an error, the latency of a read hit by a failure is bounded by the proxy's timeout,
writes to a dead primary fail promptly with -ERR, and nothing acknowledged is lost."""

import threading
import time

import pytest

from fixtures import (HOST, PROXY_TIMEOUT_S, SLOWDOWN, FakeBackend, connect, delta,
                      encode_command, free_port, http_get, metric, read_replies, wait_until)

# A read hit by a failure may take the proxy's timeout plus a failover round trip.
LATENCY_BOUND_S = PROXY_TIMEOUT_S + 1.0 * SLOWDOWN
N_KEYS = 50


def populate(cluster, prefix="k", n=N_KEYS):
    p = cluster.primary.client()
    p.mset({f"{prefix}:{i}": f"v{i}" for i in range(n)})
    cluster.wait_replicated()
    return [(f"{prefix}:{i}", f"v{i}".encode()) for i in range(n)]


class LoopResult:
    def __init__(self):
        self.count = 0
        self.errors = []  # (seconds since start, command, what happened)
        self.latencies = []

    @property
    def max_latency(self):
        return max(self.latencies, default=0.0)

    def __repr__(self):
        return (f"<{self.count} reads, {len(self.errors)} errors {self.errors[:5]}, "
                f"max latency {self.max_latency:.3f}s>")


def read_loop(client, keys, duration, actions=(), max_ops=200_000):
    """Issues GETs (checking each value) for `duration` seconds; runs each (t, fn) of
    `actions` once the loop is t seconds old. Bounded by time and by max_ops."""
    res = LoopResult()
    pending = sorted(actions, key=lambda a: a[0])
    start = time.monotonic()
    i = 0
    while i < max_ops:
        now = time.monotonic() - start
        if now >= duration:
            break
        while pending and pending[0][0] <= now:
            pending.pop(0)[1]()
        key, want = keys[i % len(keys)]
        t0 = time.monotonic()
        try:
            got = client.get(key)
            if got != want:
                res.errors.append((round(now, 3), f"GET {key}", f"wrong value {got!r}"))
        except Exception as exc:  # noqa: BLE001 - every client-visible failure counts
            res.errors.append((round(now, 3), f"GET {key}", repr(exc)))
        res.latencies.append(time.monotonic() - t0)
        res.count += 1
        i += 1
    for _, fn in pending:  # an action scheduled past the end still runs
        fn()
    return res


def wait_replicas_serve_reads(cluster, client, keys, replicas, timeout=8.0):
    """Keeps reading until every server in `replicas` has served GETs (commandstats grows).
    Returns the LoopResult of all those reads."""
    res = LoopResult()
    before = {r.name: r.calls("get") for r in replicas}

    def served():
        part = read_loop(client, keys, 0.2)
        res.count += part.count
        res.errors += part.errors
        res.latencies += part.latencies
        return all(r.calls("get") > before[r.name] for r in replicas)

    wait_until(served, timeout * SLOWDOWN, interval=0.0,
               what=f"{[r.name for r in replicas]} to serve reads again")
    return res


def test_replica_kill_then_stop_reads_never_fail(fresh_cluster, fresh_proxy):
    c = fresh_cluster
    r1, r2 = c.replicas
    keys = populate(c)
    client = fresh_proxy.client(timeout=10)
    client.get(keys[0][0])

    # 1. kill -9 one replica under load.
    res = read_loop(client, keys, 3.0, actions=[(0.5, r1.kill9)])
    print("replica killed:", res)
    assert res.errors == [], res
    assert res.count > 100, res
    assert res.max_latency <= LATENCY_BOUND_S, res

    # 2. SIGSTOP the other one: reads to it time out and fail over to the primary.
    before = c.primary.calls("get")
    res = read_loop(client, keys, 3.0, actions=[(0.5, r2.sigstop)])
    print("replica stopped:", res)
    assert res.errors == [], res
    assert res.count > 20, res
    assert res.max_latency <= LATENCY_BOUND_S, f"a read took longer than the timeout: {res}"
    assert c.primary.calls("get") > before, "no read failed over to the primary"

    # With both replicas gone, reads still work (primary serves them).
    res = read_loop(client, keys, 1.0)
    assert res.errors == [] and res.max_latency <= LATENCY_BOUND_S, res

    # 3. Bring both back: SIGCONT one, restart the killed one on the same port.
    r2.sigcont()
    r1.restart()
    r1.wait_link_up()
    r2.wait_link_up()
    res = wait_replicas_serve_reads(c, client, keys, [r1, r2])
    assert res.errors == [], res

    # And the replicas take the load again, not the primary.
    before = c.snapshot("get")
    res = read_loop(client, keys, 0.5)
    assert res.errors == [], res
    d = delta(before, c.snapshot("get"))
    assert d["primary"] == 0, f"replicas back but reads still go to the primary: {d}"
    assert d["replica1"] > 0 and d["replica2"] > 0, d
    assert fresh_proxy.alive


def test_restarted_replica_gets_no_reads_until_synced(fresh_cluster, make_proxy):
    """A replica restarted empty (here with replica-serve-stale-data no, so a read reaching it
    would be refused with MASTERDOWN rather than answered wrongly) is not sent reads until its
    sync is done: no wrong value, no error, and it never even sees a read while syncing."""
    c = fresh_cluster
    r1, r2 = c.replicas
    keys = populate(c, n=200)
    proxy = make_proxy(c.primary.port, [r1.port])  # only r1 serves reads
    client = proxy.client(timeout=10)
    client.get(keys[0][0])
    # Hold the primary's side of the resync back so the syncing window is wide.
    c.primary.client().config_set("repl-diskless-sync-delay", 2)

    def restart_r1():
        r1.restart(extra_args=["--replica-serve-stale-data", "no"], wait=False)

    res = read_loop(client, keys, 4.0, actions=[(0.3, restart_r1)])
    print("replica restarted (syncing):", res)
    assert res.errors == [], res
    assert res.max_latency <= LATENCY_BOUND_S, res
    assert r1.errorstats().get("MASTERDOWN", 0) == 0, "a read reached the syncing replica"
    c.primary.client().config_set("repl-diskless-sync-delay", 0)
    r1.wait_link_up()
    res = wait_replicas_serve_reads(c, client, keys, [r1])
    assert res.errors == [], res


def test_pipelined_reads_in_flight_fail_over(fresh_cluster, fresh_proxy):
    """Thousands of pipelined GETs in flight when a replica dies: every reply arrives, in
    order, with the right value."""
    c = fresh_cluster
    keys = populate(c, n=100)
    n = 20000
    payload = b"".join(encode_command("GET", keys[i % len(keys)][0]) for i in range(n))
    expected = [b"$%d\r\n%s\r\n" % (len(v), v) for _, v in keys]
    with connect(fresh_proxy.port, timeout=30) as s:
        sender_error = []

        def send():
            try:
                s.sendall(payload)
            except OSError as exc:
                sender_error.append(exc)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        replies, rest = read_replies(s, 500, timeout=30)
        c.replicas[0].kill9()
        more, rest = read_replies(s, n - 500, timeout=60 * SLOWDOWN, buf=rest)
        t.join(timeout=10)
    replies += more
    assert sender_error == []
    bad = [(i, r) for i, r in enumerate(replies) if r != expected[i % len(keys)]]
    assert not bad, f"{len(bad)} wrong replies, first {bad[:3]}"


def test_pipelined_reads_in_flight_replica_stopped(fresh_cluster, fresh_proxy):
    c = fresh_cluster
    keys = populate(c, n=100)
    n = 5000
    payload = b"".join(encode_command("GET", keys[i % len(keys)][0]) for i in range(n))
    expected = [b"$%d\r\n%s\r\n" % (len(v), v) for _, v in keys]
    c.replicas[1].sigstop()
    t0 = time.monotonic()
    with connect(fresh_proxy.port, timeout=30) as s:
        s.sendall(payload)
        replies, _ = read_replies(s, n, timeout=30 * SLOWDOWN)
    elapsed = time.monotonic() - t0
    bad = [(i, r) for i, r in enumerate(replies) if r != expected[i % len(keys)]]
    assert not bad, f"{len(bad)} wrong replies, first {bad[:3]}"
    # The stopped replica costs one timeout (then it is marked down), not one per request.
    assert elapsed <= 3 * LATENCY_BOUND_S, f"pipeline took {elapsed:.2f}s"


def test_primary_killed_writes_error_reads_flow_then_recover(fresh_cluster, fresh_proxy):
    c = fresh_cluster
    keys = populate(c)
    client = fresh_proxy.client(timeout=10)
    assert client.set("before", "1") is True
    c.wait_replicated()

    c.primary.kill9()
    with connect(fresh_proxy.port, timeout=10) as s:
        # Writes: a clear -ERR, promptly, and the connection stays usable.
        for i, cmd in enumerate([encode_command("SET", "during", i) for i in range(3)]
                                + [encode_command("INCR", "ctr"),
                                   encode_command("DEL", "before")]):
            t0 = time.monotonic()
            s.sendall(cmd)
            (reply,), _ = read_replies(s, 1, timeout=10)
            took = time.monotonic() - t0
            assert reply.startswith(b"-ERR"), f"write #{i} while primary down got {reply!r}"
            assert took <= LATENCY_BOUND_S, f"write error took {took:.2f}s"
        # Reads on the same connection still succeed, from the replicas.
        for key, want in keys[:10]:
            s.sendall(encode_command("GET", key))
            (reply,), _ = read_replies(s, 1, timeout=10)
            assert reply == b"$%d\r\n%s\r\n" % (len(want), want)

    res = read_loop(client, keys, 1.5)
    assert res.errors == [], res
    assert res.max_latency <= LATENCY_BOUND_S, res

    # Primary back on the same port (empty: no persistence): writes work again without
    # restarting the proxy.
    c.primary.restart()
    deadline = time.monotonic() + 5 * SLOWDOWN
    last = None
    with connect(fresh_proxy.port, timeout=10) as s:
        while time.monotonic() < deadline:
            s.sendall(encode_command("SET", "after", "ok"))
            (last,), _ = read_replies(s, 1, timeout=10)
            if last == b"+OK\r\n":
                break
            time.sleep(0.1)
    assert last == b"+OK\r\n", f"SET still failing 5 s after primary restart: {last!r}"
    assert c.primary.client().get("after") == b"ok"
    assert client.set("after2", "ok") is True  # the old client connection too
    assert fresh_proxy.alive


def test_reads_in_flight_on_a_killed_primary_connection_run_again(fresh_cluster, fresh_proxy):
    """CLIENT KILL TYPE normal on a healthy primary closes the proxy's connections while a
    client's reads wait there behind its own write, with no replica able to answer them (both
    stopped): the reads run again on a new connection instead of failing, each seeing the
    client's write (or, when that write failed as "may or may not have been applied", the
    one before). An idle client inside WATCH whose dedicated connection is killed is closed
    without an answer it never asked for."""
    c = fresh_cluster
    client = fresh_proxy.client(timeout=10)
    direct = c.primary.client()
    for r in c.replicas:
        r.sigstop()
    info = fresh_proxy.client(timeout=5)
    wait_until(lambda: b"role=replica,up=1" not in info.execute_command("PROXY", "INFO"),
               10 * SLOWDOWN, what="both replicas marked down")
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            time.sleep(0.1)
            direct.client_kill_filter(_type="normal")

    t = threading.Thread(target=killer, daemon=True)
    reads, bad, write_errors, rounds, prev = 0, [], 0, 0, None
    try:
        client.set("rk:k", "v0")  # the replicas are marked down behind this
        t.start()
        deadline = time.monotonic() + 2.0 * SLOWDOWN
        while time.monotonic() < deadline:
            rounds += 1
            value = f"v{rounds}".encode()
            p = client.pipeline(transaction=False)
            p.set("rk:k", value)
            for _ in range(200):
                p.get("rk:k")
            out = p.execute(raise_on_error=False)
            ok = out[0] is True
            if not ok:
                write_errors += 1
                assert "may or may not have been applied" in str(out[0]), out[0]
            for got in out[1:]:
                reads += 1
                if not (got == value or (not ok and got == prev)):
                    bad.append(got)
            prev = value if ok else prev
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        for r in c.replicas:
            r.sigcont()
    assert reads > 1000 and write_errors > 0, (reads, rounds, write_errors)
    assert not bad, f"{len(bad)} of {reads} reads failed or wrong: {bad[:3]}"
    # An idle client inside WATCH: its connection closes, and nothing else arrives.
    with connect(fresh_proxy.port, timeout=5) as s:
        s.sendall(encode_command("WATCH", "rk:w"))
        assert read_replies(s, 1)[0] == [b"+OK\r\n"]
        direct.client_kill_filter(_type="normal")
        s.settimeout(5 * SLOWDOWN)
        assert s.recv(1024) == b""


def test_a_read_the_server_drops_its_connection_for_is_run_again_only_once(fresh_cluster,
                                                                           make_proxy):
    """A read whose reply is over the servers' output buffer limit makes them close the
    connection each time it runs. Run again once after a lost connection, it then fails with
    that reason at once, instead of being sent again every few milliseconds for the whole
    timeout (hundreds of reconnects, each failing every other client's request on the shared
    connection as "may or may not have been applied")."""
    c = fresh_cluster
    c.primary.client().set("ob:big", "x" * (2 * 1024 * 1024))
    c.wait_replicated()
    for server in [c.primary, *c.replicas]:
        server.client().config_set("client-output-buffer-limit", "normal 1mb 1mb 0")
    p = make_proxy(c.primary.port, [r.port for r in c.replicas],
                   extra_args=["--workers", "1", "--timeout", "2"])
    before = c.primary.client().info("stats")["total_connections_received"]
    writer = p.client(timeout=10)
    stop = threading.Event()
    write_errors = []

    def write():
        i = 0
        while not stop.is_set():
            i += 1
            try:
                writer.set(f"ob:w{i % 50}", i)
            except Exception as exc:  # counted: the shared connection was taken down
                write_errors.append(exc)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        reader = p.client(timeout=10)
        reader.set("ob:mine", 1)  # read-your-writes: its next reads go to the primary
        t0 = time.monotonic()
        with pytest.raises(Exception) as err:
            reader.get("ob:big")
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    opened = c.primary.client().info("stats")["total_connections_received"] - before
    assert "connection" in str(err.value), err.value
    assert took < 1.0, f"the read took {took:.2f}s"
    assert opened <= 10, f"{opened} connections opened to the primary"
    assert len(write_errors) <= 5, write_errors[:3]


def test_read_behind_a_write_never_sent_to_a_dead_primary_goes_after_it(fresh_cluster,
                                                                        fresh_proxy):
    """A client in database 3 pipelines SET then GET of one key while the proxy's connection
    for that database is still in its handshake (SELECT 3 unanswered: the primary is stopped),
    and the primary then dies (kill -9) and comes back on its port. Neither was sent: the SET
    waits for the primary, and the GET must wait behind it, not be answered at once by a
    replica with the old value while the SET is applied afterwards."""
    c = fresh_cluster
    direct = c.primary.client(db=3)
    direct.set("ow:k", "old")
    c.wait_replicated()
    c.primary.sigstop()
    with connect(fresh_proxy.port, timeout=10 * SLOWDOWN) as s:
        s.sendall(encode_command("SELECT", "3"))  # answered by the proxy
        assert read_replies(s, 1)[0] == [b"+OK\r\n"]
        s.sendall(encode_command("SET", "ow:k", "new") + encode_command("GET", "ow:k"))
        time.sleep(0.3 * PROXY_TIMEOUT_S)  # inside the handshake's timeout
        c.primary.kill9()  # still stopped: it never reads the handshake
        c.primary.stopped = False
        c.primary.restart()
        (set_reply, get_reply), _ = read_replies(s, 2, timeout=10 * SLOWDOWN)
    assert set_reply == b"+OK\r\n", set_reply
    assert get_reply == b"$3\r\nnew\r\n", get_reply
    assert c.primary.client(db=3).get("ow:k") == b"new"


def test_a_write_on_a_new_connection_to_a_dying_primary_waits_for_it_to_come_back(
        fresh_cluster, fresh_proxy):
    """A primary being killed still completes connections into its listen backlog and then
    closes them unread. In database 0 a new connection has no AUTH or SELECT to send first;
    the proxy's first write on it must still wait for the server to answer something (a
    PING), so that when the server dies the write is known unsent and waits for the primary
    to come back, instead of failing as "may or may not have been applied". Here the
    primary drops the proxy's connections and then sleeps (DEBUG SLEEP), so the proxy's new
    connection sits in the backlog, unread, until the kill."""
    c = fresh_cluster
    via = fresh_proxy.client(timeout=10 * SLOWDOWN)
    assert via.set("dy:k", "old") is True  # the primary is known up, its connection made
    c.wait_replicated()
    # The proxy's connections that carried the SET, not its health check's: a health check
    # that loses its connection holds writes until it has an answer again.
    workers = [cl["id"] for cl in c.primary.client().client_list() if cl["cmd"] == "set"]
    assert workers, c.primary.client().client_list()
    with connect(c.primary.port, timeout=10) as d:
        d.sendall(b"".join(encode_command("CLIENT", "KILL", "ID", i) for i in workers)
                  + encode_command("DEBUG", "SLEEP", "30"))
        # Its replies come after the sleep: not waited for. The write goes in at once, well
        # inside the timeout after which the health check would give up on the primary.
        time.sleep(0.02)
        with connect(fresh_proxy.port, timeout=10 * SLOWDOWN) as s:
            s.sendall(encode_command("SET", "dy:k", "new") + encode_command("GET", "dy:k"))
            time.sleep(0.3 * PROXY_TIMEOUT_S)  # inside the timeout: both still wait
            c.primary.kill9()  # asleep: it never read the proxy's new connection
            c.primary.restart()
            (set_reply, get_reply), _ = read_replies(s, 2, timeout=10 * SLOWDOWN)
    assert set_reply == b"+OK\r\n", set_reply
    assert get_reply == b"$3\r\nnew\r\n", get_reply
    assert c.primary.client().get("dy:k") == b"new"


def test_a_primary_refusing_new_connections_gets_its_own_answer_to_the_client(fresh_cluster,
                                                                            fresh_proxy):
    """A primary at maxclients writes "-ERR max number of clients reached" on accept and closes
    the connection without reading it. Nothing was sent on that connection, and the client
    gets the server's own words, as it would directly, not "may or may not have been
    applied"; once the primary takes connections again, so does the write."""
    c = fresh_cluster
    d = c.primary.client()
    # The proxy's health check connects to the primary as the proxy starts; refused by the
    # limit below, it would mark the primary down and the SET get the proxy's own error (seen
    # on a loaded machine). The replicas serve reads once the primary has answered it.
    wait_until(lambda: "serves reads" in fresh_proxy.stderr(), 10 * SLOWDOWN,
               what="the proxy's first health check of the primary")
    try:
        d.config_set("maxclients", len(d.client_list()))
        # The proxy's first request: its worker has no connection to the primary yet.
        with connect(fresh_proxy.port, timeout=10 * SLOWDOWN) as s:
            s.sendall(encode_command("SET", "mc:k", "v"))
            (reply,), _ = read_replies(s, 1, timeout=10 * SLOWDOWN)
        assert reply == b"-ERR max number of clients reached\r\n", reply
    finally:
        d.config_set("maxclients", 10000)
    assert d.get("mc:k") is None
    via = fresh_proxy.client()

    def written():
        try:
            return via.set("mc:k", "v") is True
        except Exception:  # noqa: BLE001 - the refusal is held for a moment
            return False
    wait_until(written, 5 * SLOWDOWN, interval=0.2,
               what="the write once the primary takes connections again")


def test_a_primary_that_refuses_the_proxys_ping_still_takes_its_requests(fresh_cluster,
                                                                           fresh_proxy):
    """The proxy says PING first on a new connection to the primary. A backend user that may
    not run it (NOPERM; or PING renamed away) is still a server reading the socket: the
    requests behind it go out and get their own answers."""
    c = fresh_cluster
    d = c.primary.client()
    d.execute_command("ACL", "SETUSER", "default", "-ping")
    try:
        # The proxy's first request: its worker has no connection to the primary yet.
        with connect(fresh_proxy.port, timeout=10 * SLOWDOWN) as s:
            s.sendall(encode_command("SET", "np:k", "v") + encode_command("GET", "np:k"))
            (r1, r2), _ = read_replies(s, 2, timeout=10 * SLOWDOWN)
        assert (r1, r2) == (b"+OK\r\n", b"$1\r\nv\r\n"), (r1, r2)
    finally:
        d.execute_command("ACL", "SETUSER", "default", "+ping")


def test_primary_stopped_writes_time_out_with_error(fresh_cluster, fresh_proxy):
    c = fresh_cluster
    keys = populate(c)
    client = fresh_proxy.client(timeout=10)
    assert client.set("x", "1") is True
    c.primary.sigstop()
    try:
        with connect(fresh_proxy.port, timeout=10) as s:
            t0 = time.monotonic()
            s.sendall(encode_command("SET", "x", "2"))
            (reply,), _ = read_replies(s, 1, timeout=10)
            took = time.monotonic() - t0
            assert reply.startswith(b"-ERR"), reply
            assert took <= LATENCY_BOUND_S, f"write to a hung primary took {took:.2f}s"
        # A client that has not written reads from the replicas, hung primary or not. (One
        # that just wrote may need the primary for its own write: see test_freshness.py.)
        res = read_loop(fresh_proxy.client(timeout=10), keys, 1.0)
        assert res.errors == [], res
    finally:
        c.primary.sigcont()
    deadline = time.monotonic() + 5 * SLOWDOWN
    ok = False
    while time.monotonic() < deadline and not ok:
        try:
            ok = client.set("x", "3") is True
        except Exception:  # noqa: BLE001 - still recovering
            time.sleep(0.1)
    assert ok, "writes did not recover after SIGCONT of the primary"


def test_acknowledged_writes_survive_replica_kill(fresh_cluster, fresh_proxy):
    c = fresh_cluster
    keys = populate(c)
    acked, write_errors, read_errors = [], [], []
    stop = threading.Event()

    def writer():
        w = fresh_proxy.client(timeout=10)
        i = 0
        while not stop.is_set() and i < 100_000:
            try:
                if w.set(f"ack:{i}", i) is True:
                    acked.append(i)
            except Exception as exc:  # noqa: BLE001
                write_errors.append((i, repr(exc)))
            i += 1

    def reader():
        r = fresh_proxy.client(timeout=10)
        i = 0
        while not stop.is_set() and i < 100_000:
            key, want = keys[i % len(keys)]
            try:
                got = r.get(key)
                if got != want:
                    read_errors.append((key, got))
            except Exception as exc:  # noqa: BLE001
                read_errors.append((key, repr(exc)))
            i += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader),
               threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        c.replicas[0].kill9()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert write_errors == [], write_errors[:5]
    assert read_errors == [], read_errors[:5]
    assert len(acked) > 100, len(acked)
    p = c.primary.client(timeout=30)
    missing = []
    for start in range(0, len(acked), 1000):
        chunk = acked[start:start + 1000]
        values = p.mget([f"ack:{i}" for i in chunk])
        missing += [i for i, v in zip(chunk, values) if v != str(i).encode()]
    assert missing == [], f"{len(missing)} acknowledged writes missing on the primary"


@pytest.mark.parametrize("mode", ["garbage", "close", "loading", "masterdown"])
def test_misbehaving_replica_reads_fail_over(fresh_cluster, make_proxy, mode):
    """A replica that answers PING but replies garbage, closes mid-request, or says LOADING
    or MASTERDOWN to reads: the client never sees it, it gets the primary's answer."""
    c = fresh_cluster
    keys = populate(c)
    fake = FakeBackend(mode, info_from=c.primary.port)
    try:
        # The fake replica and a real one: reads alternate between them.
        proxy = make_proxy(c.primary.port, [fake.port, c.replicas[0].port])
        client = proxy.client(timeout=10)
        before = c.primary.calls("get")
        res = read_loop(client, keys, 2.0)
        print(f"{mode}:", res, f"fake got {fake.requests} reads, {fake.pings} pings")
        assert res.errors == [], res
        assert res.count > 50, res
        assert res.max_latency <= LATENCY_BOUND_S, res
        assert fake.requests > 0, "no read was ever sent to the misbehaving replica"
        assert c.primary.calls("get") > before, "no read failed over to the primary"
        assert proxy.alive
    finally:
        fake.stop()


# A replica that stops answering leaves read rotation once its health check has waited
# UnansweredAfterMs (4 intervals of 0.1 s here: 0.4-0.5 s, the probe being sent up to an
# interval after the stop), and the reads already waiting on it go to the primary on the
# workers' next tick: within this with room to spare, far from the 5 s timeout below.
UNANSWERED_BOUND_S = 1.5 * SLOWDOWN
# Stalls last this much longer than the bound, so that a read that waited one out is seen.
STALL_MARGIN_S = 1.0
LONG_TIMEOUT = ["--timeout", str(5 * SLOWDOWN), "--health-check-interval", "0.1"]


def reader_threads(proxy, keys, n, stop):
    """n clients GETting `keys` (checking each value) until `stop` is set; their LoopResults."""
    results = [LoopResult() for _ in range(n)]

    def run(res):
        client = proxy.client(timeout=10)
        while not stop.is_set():
            part = read_loop(client, keys, 0.05)
            res.count += part.count
            res.errors += part.errors
            res.latencies += part.latencies

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in results]
    for t in threads:
        t.start()
    return results, threads


def merged(results):
    out = LoopResult()
    for r in results:
        out.count += r.count
        out.errors += r.errors
        out.latencies += r.latencies
    return out


def test_a_stopped_replica_costs_reads_a_health_check_not_the_timeout(fresh_cluster,
                                                                       make_proxy):
    """The only replica hangs (SIGSTOP) for 3 s, shorter than the proxy's 5 s timeout, while
    8 clients read. Before, every read sent to it waited until it ran again (3 s: a client
    with a 2 s socket timeout, Jedis's default, saw errors); now once its health check has
    gone unanswered for UnansweredAfterMs these clients' GETs (cheap reads, small replies)
    go elsewhere, and those already waiting on it are answered by the primary: no error, no
    wrong value, none slower than UNANSWERED_BOUND_S. It is not marked down (it never missed
    a timeout), the metrics say it is not answering meanwhile, and it serves reads again once
    it answers."""
    c = fresh_cluster
    r1 = c.replicas[0]
    keys = populate(c)
    admin = free_port()
    proxy = make_proxy(c.primary.port, [r1.port],
                       extra_args=LONG_TIMEOUT + ["--admin-listen", f"{HOST}:{admin}"])
    wait_replicas_serve_reads(c, proxy.client(timeout=10), keys, [r1])
    answering = f'kompress_replica_answering{{backend="{HOST}:{r1.port}"}}'
    assert metric(http_get(admin, "/metrics")[1], answering) == 1
    stop = threading.Event()
    results, threads = reader_threads(proxy, keys, 8, stop)
    try:
        time.sleep(0.5)
        before = c.primary.calls("get")
        r1.sigstop()
        wait_until(lambda: metric(http_get(admin, "/metrics")[1], answering) == 0,
                   UNANSWERED_BOUND_S, interval=0.05, what="the replica seen not answering")
        time.sleep(max(3.0, UNANSWERED_BOUND_S + STALL_MARGIN_S))
        r1.sigcont()
        time.sleep(0.5)
    finally:
        if r1.stopped:
            r1.sigcont()
        stop.set()
        for t in threads:
            t.join(timeout=30)
    res = merged(results)
    print("replica stopped for 3 s:", res)
    assert res.errors == [], res
    assert res.count > 100, res
    assert res.max_latency <= UNANSWERED_BOUND_S, f"reads waited for the stopped replica: {res}"
    assert c.primary.calls("get") > before, "no read went to the primary"
    log = proxy.stderr()
    assert "is not answering (no answer to INFO replication" in log, log[-2000:]
    assert "marked down" not in log, log[-2000:]
    res = wait_replicas_serve_reads(c, proxy.client(timeout=10), keys, [r1])
    assert res.errors == [], res
    assert metric(http_get(admin, "/metrics")[1], answering) == 1


# Busy for ARGV[1] microseconds: past UNANSWERED_BOUND_S, short of Redis's 5 s
# busy-reply-threshold (then it would answer BUSY).
BUSY_SCRIPT = ("local t = redis.call('TIME') while true do local n = redis.call('TIME') "
               "if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > tonumber(ARGV[1]) then break end "
               "end return 'slept'")
BUSY_S = min(UNANSWERED_BOUND_S + STALL_MARGIN_S, 4.5)


def test_a_replica_busy_with_a_slow_script_keeps_it_and_sends_others_reads_on(fresh_cluster,
                                                                               make_proxy):
    """A client's EVAL_RO keeps the only replica busy for BUSY_S (timeout 5 s). The script is
    not the proxy's to move: it finishes on the replica and its client gets its answer, not a
    re-run on the primary and not an error. The plain GETs of 4 other clients meanwhile do not
    wait for it (the replica leaves read rotation as its health check goes unanswered, and
    the GETs queued behind the script go to the primary). The replica is not marked down,
    and serves reads again afterwards."""
    assert BUSY_S >= UNANSWERED_BOUND_S + 0.5, "KP_TEST_SLOWDOWN too large for a 5 s script"
    c = fresh_cluster
    r1 = c.replicas[0]
    keys = populate(c)
    proxy = make_proxy(c.primary.port, [r1.port], extra_args=LONG_TIMEOUT)
    wait_replicas_serve_reads(c, proxy.client(timeout=10), keys, [r1])
    stop = threading.Event()
    results, threads = reader_threads(proxy, keys, 4, stop)
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        answer = proxy.client(timeout=10).eval_ro(BUSY_SCRIPT, 0, int(BUSY_S * 1e6))
        took = time.monotonic() - t0
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    res = merged(results)
    print(f"EVAL_RO took {took:.2f}s; readers meanwhile:", res)
    assert answer == b"slept" and took >= BUSY_S, took
    assert r1.calls("eval_ro") == 1 and c.primary.calls("eval_ro") == 0, "the script moved"
    assert res.errors == [], res
    assert res.max_latency <= UNANSWERED_BOUND_S, f"reads waited for the script: {res}"
    log = proxy.stderr()
    assert "marked down" not in log, log[-2000:]
    res = wait_replicas_serve_reads(c, proxy.client(timeout=10), keys, [r1])
    assert res.errors == [], res


def test_a_read_slower_than_the_timeout_runs_at_most_twice(fresh_cluster, fresh_proxy):
    """An EVAL_RO longer than the timeout (1 s here) times out on a replica, is run again on
    the primary (the retry budget), and times out there too: that is a slow read, and the
    client gets an error. It used to run a third time, on the other replica, blocking three
    servers in turn for its whole length."""
    c = fresh_cluster
    keys = populate(c)
    client = fresh_proxy.client(timeout=30)
    wait_replicas_serve_reads(c, client, keys, c.replicas)
    script_s = 2.5 * PROXY_TIMEOUT_S
    servers = [c.primary] + c.replicas
    before = sum(n.calls("eval_ro") for n in servers)
    t0 = time.monotonic()
    with pytest.raises(Exception) as err:
        client.eval_ro(BUSY_SCRIPT, 0, int(script_s * 1e6))
    took = time.monotonic() - t0
    assert "no reply within" in str(err.value), err.value
    # Each run blocks its server for script_s: wait for the last to end before counting.
    time.sleep(script_s + 0.5)
    runs = sum(n.calls("eval_ro") for n in servers) - before
    print(f"error after {took:.2f}s: {err.value}; runs: {runs}")
    assert runs == 2, f"the script ran {runs} times"


def test_a_stalled_replica_that_is_all_there_is_is_waited_for(fresh_cluster, make_proxy):
    """The primary is gone (killed; a static topology has no other) and the only replica
    then stalls for 1.2 s, longer than its health check may go unanswered but shorter than
    the timeout. With nothing else to read from, it is not taken out of rotation: the reads
    wait for it and get its answers, none an error (a fork on a large data set, or the host
    swapping, stalls a server that long)."""
    c = fresh_cluster
    r1 = c.replicas[0]
    keys = populate(c)
    proxy = make_proxy(c.primary.port, [r1.port], extra_args=LONG_TIMEOUT)
    client = proxy.client(timeout=10)
    wait_replicas_serve_reads(c, client, keys, [r1])
    c.primary.kill9()
    wait_until(lambda: "primary" in proxy.stderr() and "marked down" in proxy.stderr(),
               10 * SLOWDOWN, what="the primary marked down")
    res = read_loop(client, keys, 0.3)
    assert res.errors == [], f"reads from the replica alone failed: {res}"

    def stall():
        r1.sigstop()
        time.sleep(1.2)
        r1.sigcont()

    staller = threading.Thread(target=stall, daemon=True)
    res = read_loop(client, keys, 2.5, actions=[(0.3, staller.start)])
    staller.join(timeout=10)
    print("the only replica stalled, no primary:", res)
    assert res.errors == [], res
    assert res.max_latency >= 1.0, f"no read waited for the stalled replica: {res}"
    assert "is not answering" not in proxy.stderr()


def test_new_connections_read_elsewhere_once_a_replica_is_not_answering(fresh_cluster,
                                                                         make_proxy):
    """A client that connects per request (PHP) while the only replica is stopped: each new
    connection sends one GET, a new one every 50 ms. Those sent before the replica was seen
    not answering wait for it (up to its return, here); every one sent after that (from
    UNANSWERED_BOUND_S on) goes to the primary and is answered at once, rightly. Before, a new
    connection's GETs kept going to the stopped replica for the whole stop."""
    c = fresh_cluster
    r1 = c.replicas[0]
    keys = populate(c)
    proxy = make_proxy(c.primary.port, [r1.port], extra_args=LONG_TIMEOUT)
    wait_replicas_serve_reads(c, proxy.client(timeout=10), keys, [r1])
    stop_s = UNANSWERED_BOUND_S + 2.0
    done = []  # (sent, seconds after the stop; latency; right)

    def one(i, t0):
        key, want = keys[i % len(keys)]
        sent = time.monotonic()
        try:
            client = proxy.client(timeout=30)
            right = client.get(key) == want
            client.close()
        except Exception as exc:  # noqa: BLE001 - every client-visible failure counts
            right = repr(exc)
        done.append((sent - t0, time.monotonic() - sent, right))

    threads = []
    r1.sigstop()
    try:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < stop_s:
            t = threading.Thread(target=one, args=(i, t0), daemon=True)
            t.start()
            threads.append(t)
            i += 1
            time.sleep(0.05)
    finally:
        r1.sigcont()
    for t in threads:
        t.join(timeout=30)
    wrong = [d for d in done if d[2] is not True]
    assert not wrong and len(done) == len(threads), f"wrong or missing answers: {wrong}"
    late = [(round(s, 2), round(l, 2)) for s, l, _ in done if s >= UNANSWERED_BOUND_S and l > 0.75]
    print(f"{len(done)} GETs; waited for the replica: "
          f"{sum(1 for _, l, _ in done if l > 0.75)}; late after the bound: {late}")
    assert not late, f"GETs sent after the replica was seen not answering still waited: {late}"


def test_a_not_answering_replica_takes_reads_again_once_nothing_else_can(fresh_cluster,
                                                                        make_proxy):
    """No primary (killed; a static topology has no other), two replicas. One stalls long
    enough to be seen not answering while the other serves; then the other is killed too.
    From then on nothing else can take the reads: the stalled one is no longer avoided (the
    rule is looked at on every tick, not only when it was first applied; logged, and its
    gauge back to 1), and a client's reads wait for it and get its answers once it runs
    again, none an error. (Without that look the reads waited as well, parked for a backend,
    but the replica stayed "not answering" with nothing else to read from.)"""
    c = fresh_cluster
    r1, r2 = c.replicas
    keys = populate(c)
    proxy = make_proxy(c.primary.port, [r1.port, r2.port], extra_args=LONG_TIMEOUT)
    client = proxy.client(timeout=30)
    wait_replicas_serve_reads(c, client, keys, [r1, r2])
    c.primary.kill9()
    wait_until(lambda: "primary" in proxy.stderr() and "marked down" in proxy.stderr(),
               10 * SLOWDOWN, what="the primary marked down")
    r1.sigstop()
    try:
        wait_until(lambda: "is not answering" in proxy.stderr(), 5 * SLOWDOWN,
                   what=f"{r1.name} seen not answering")
        res = read_loop(client, keys, 0.3)
        assert res.errors == [], f"reads from the other replica failed: {res}"
        r2.kill9()
        wait_until(lambda: "nothing else can take its reads" in proxy.stderr(), 5 * SLOWDOWN,
                   what=f"{r1.name} taking reads again with nothing else left")
        staller = threading.Timer(1.0, r1.sigcont)
        staller.start()
        res = read_loop(client, keys, 2.0)
        staller.join(timeout=10)
    finally:
        if r1.stopped:
            r1.sigcont()
    print("no primary, the other replica killed, this one stalled:", res)
    assert res.errors == [], res
    assert res.count > 10, res
