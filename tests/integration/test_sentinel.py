"""Topology changes: the proxy follows a Redis Sentinel failover without a restart, keeps
working when Sentinels go away, rejects a configuration that mixes Sentinel with a static
primary, follows a manual switchover in a static topology, and does not mistake a busy
primary (a slow script, DEBUG SLEEP) for a dead one.

Real redis-server and redis-sentinel processes on free loopback ports (three Sentinels,
quorum 2, down-after 1 s), the real proxy binary. Clients run through the proxy in threads
and every error and every wrong value is counted; acknowledged writes are checked on the
new primary directly. Every wait is bounded in time and every loop in count."""

import os
import re
import signal
import threading
import time

import pytest

from fixtures import (HOST, SENTINEL_MASTER, SLOWDOWN, Proxy, RedisServer, Sentinel,
                      SentinelCluster, connect, encode_command, free_port, http_get, raw_command,
                      read_replies, run_proxy_once, wait_until)

N_KEYS = 50
MAX_OPS = 200_000  # per client thread; the loops stop on time long before


# -- helpers --------------------------------------------------------------------------------

def addr(server):
    return f"{HOST}:{server.port}"


def populate(cluster, prefix="k", n=N_KEYS):
    cluster.primary.client().mset({f"{prefix}:{i}": f"v{i}" for i in range(n)})
    cluster.wait_replicated()
    return [(f"{prefix}:{i}", f"v{i}".encode()) for i in range(n)]


def metrics(admin):
    status, text = http_get(admin, "/metrics")
    assert status == 200, (status, text[:200])
    return text


def metric_value(text, series):
    """The value of one series in Prometheus text, or None when the series is absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def primary_metric(admin, server):
    return metric_value(metrics(admin), f'kompress_primary{{backend="{addr(server)}"}}')


def serves_reads(admin, server):
    return metric_value(metrics(admin),
                        f'kompress_replica_serves_reads{{backend="{addr(server)}"}}')


def sentinel_up(admin, sentinel):
    return metric_value(metrics(admin), f'kompress_sentinel_up{{sentinel="{sentinel.addr}"}}')


def backend_up(admin, server, role):
    return metric_value(metrics(admin),
                        f'kompress_backend_up{{backend="{addr(server)}",role="{role}"}}')


def topology_changes(admin):
    return metric_value(metrics(admin), "kompress_topology_changes_total")


def wait_topology(admin, primary, replicas, timeout=10.0):
    """Waits until the proxy writes to `primary` and every one of `replicas` serves reads."""
    def ready():
        text = metrics(admin)
        return (metric_value(text, f'kompress_primary{{backend="{addr(primary)}"}}') == 1
                and all(metric_value(text, f'kompress_replica_serves_reads{{backend='
                                           f'"{addr(r)}"}}') == 1 for r in replicas))
    try:
        wait_until(ready, timeout * SLOWDOWN, interval=0.05,
                   what=f"proxy: primary {addr(primary)}, replicas serving reads")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{metrics(admin)}") from None


def sentinel_proxy(make_proxy, sentinels, timeout, extra_args=(), interval=0.2):
    """A proxy that learns the topology from the Sentinels; returns (proxy, admin port)."""
    admin = free_port()
    p = make_proxy(None, (), use_base_args=False, extra_args=[
        "--sentinels", sentinels.addrs(), "--sentinel-master", SENTINEL_MASTER,
        "--workers", "2", "--health-check-interval", str(interval), "--timeout", str(timeout),
        "--admin-listen", f"{HOST}:{admin}"] + list(extra_args))
    return p, admin


def static_proxy(make_proxy, primary, replicas, extra_args=()):
    admin = free_port()
    p = make_proxy(primary.port, [r.port for r in replicas],
                   extra_args=["--admin-listen", f"{HOST}:{admin}"] + list(extra_args))
    return p, admin


def describe(exc):
    """An exception as text that keeps the Redis error code: redis-py strips codes it maps to
    classes (READONLY -> ReadOnlyError "You can't write against a read only replica.")."""
    name = type(exc).__name__
    return f"{name}: {exc}" if name != "ResponseError" else str(exc)


class Load:
    """A writer (MSET w i w:<i> i, through the proxy) and a reader (GET of fixed keys that
    never change) in threads. Times are time.monotonic() values."""

    def __init__(self, proxy, keys, write=True, read=True, pause=0.001, prefix="w"):
        self.proxy = proxy
        self.prefix = prefix
        self.keys = keys
        self.pause = pause
        self.acked = []         # (t_issued, t_done, i)
        self.write_errors = []  # (t_issued, t_done, i, message)
        self.reads = 0
        self.read_errors = []   # (t, key, message)
        self.wrong = []         # (t, key, got, wanted)
        self.max_read_latency = 0.0
        self._stop = threading.Event()
        self._threads = ([threading.Thread(target=self._writer, daemon=True)] if write else []) \
            + ([threading.Thread(target=self._reader, daemon=True)] if read else [])

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"

    def _writer(self):
        c = self.proxy.client(timeout=30)
        i = 0
        while not self._stop.is_set() and i < MAX_OPS:
            i += 1
            t1 = time.monotonic()
            try:
                ok = c.mset({self.prefix: i, f"{self.prefix}:{i}": i})
                t2 = time.monotonic()
                if ok is True:
                    self.acked.append((t1, t2, i))
                else:
                    self.write_errors.append((t1, t2, i, f"reply {ok!r}"))
            except Exception as exc:  # noqa: BLE001 - every client-visible failure counts
                self.write_errors.append((t1, time.monotonic(), i, describe(exc)))
            time.sleep(self.pause)

    def _reader(self):
        c = self.proxy.client(timeout=30)
        n = 0
        while not self._stop.is_set() and n < MAX_OPS:
            key, want = self.keys[n % len(self.keys)]
            n += 1
            t1 = time.monotonic()
            try:
                got = c.get(key)
                if got != want:
                    self.wrong.append((t1, key, got, want))
            except Exception as exc:  # noqa: BLE001
                self.read_errors.append((t1, key, describe(exc)))
            self.max_read_latency = max(self.max_read_latency, time.monotonic() - t1)
            self.reads += 1
            time.sleep(self.pause)

    def acks_after(self, t):
        return sum(1 for a in self.acked if a[0] >= t)

    @property
    def max_write_latency(self):
        return max([d - s for s, d, _ in self.acked] + [d - s for s, d, _, _ in self.write_errors],
                   default=0.0)

    def summary(self, t0):
        def rel(items):
            return [(round(x[0] - t0, 3),) + tuple(x[1:]) for x in items[:5]]
        werr = [(round(s - t0, 3), round(d - s, 3), i, m) for s, d, i, m in self.write_errors[:5]]
        return (f"{len(self.acked)} writes acked, {len(self.write_errors)} write errors {werr}, "
                f"max write latency {self.max_write_latency:.3f}s; {self.reads} reads, "
                f"{len(self.read_errors)} read errors {rel(self.read_errors)}, "
                f"{len(self.wrong)} wrong {rel(self.wrong)}, "
                f"max read latency {self.max_read_latency:.3f}s")


def check_acked_on(server, load):
    """Every acknowledged MSET is on `server`; w there is >= the last acknowledged i."""
    c = server.client(timeout=30)
    acked = [i for _, _, i in load.acked]
    missing = []
    for start in range(0, len(acked), 1000):
        chunk = acked[start:start + 1000]
        values = c.mget([f"w:{i}" for i in chunk])
        missing += [i for i, v in zip(chunk, values) if v != str(i).encode()]
    assert missing == [], (f"{len(missing)} acknowledged writes missing on {server.name} "
                           f"(first {missing[:10]})")
    last = max(acked, default=0)
    w = c.get("w")
    assert w is not None and int(w) >= last, f"w on {server.name} is {w!r}, last ack {last}"


def role_of(server):
    info = server.client(timeout=2).info("replication")
    return info["role"], info.get("master_port"), info.get("master_link_status")


def outage_numbers(load, t_kill):
    """(seconds from the kill to the first acknowledged write issued after it, seconds from
    the last write acknowledged before the kill to the first acknowledged after it)."""
    before = [d for _, d, _ in load.acked if d <= t_kill]
    after = [d for s, d, _ in load.acked if s >= t_kill]
    first_after = min(after, default=None)
    if first_after is None:
        return None, None
    return first_after - t_kill, first_after - max(before, default=t_kill)


@pytest.fixture
def sentinels(fresh_cluster, tmp_path):
    sc = SentinelCluster(tmp_path / "sentinels", fresh_cluster)
    try:
        sc.start()
        yield sc
    finally:
        sc.stop()
        print(sc.log_tails(25))  # shown for failing tests only


def kill_primary_and_follow(c, sc, admin, load):
    """kill -9 the primary under `load`; waits for the Sentinels to promote a replica, the
    proxy to name it (metric) and writes to be acknowledged again. Returns (new primary,
    time of the kill, time it was dead, Sentinel switched, proxy switched)."""
    old = c.primary
    t_kill = time.monotonic()
    old.kill9()
    t_dead = time.monotonic()  # kill9() returns once the process is gone
    new, t_sentinel, t_proxy = follow_new_primary(c, sc, admin, load, old.port)
    return new, t_kill, t_dead, t_sentinel, t_proxy


def follow_new_primary(c, sc, admin, load, old_port):
    """Waits for the Sentinels to name a primary other than old_port, the proxy to name it
    (metric) and writes to be acknowledged again. Returns (new primary, Sentinel switched,
    proxy switched)."""
    new_port = sc.wait_master_changed(old_port, timeout=20)
    t_sentinel = time.monotonic()
    new = next(r for r in c.replicas if r.port == new_port)
    wait_until(lambda: primary_metric(admin, new) == 1, 10 * SLOWDOWN, interval=0.02,
               what=f"proxy metric kompress_primary for the new primary {addr(new)}")
    t_proxy = time.monotonic()
    wait_until(lambda: load.acks_after(t_proxy) >= 20, 10 * SLOWDOWN,
               what="writes acknowledged after the failover")
    return new, t_sentinel, t_proxy


class TransactionLoop:
    """MULTI / INCR / EXEC on a new connection each time, back to back, in a thread: ok
    holds the finish times of those EXEC answered with the INCR's result, failed the other
    outcomes (time, what)."""

    def __init__(self, port):
        self.port = port
        self.ok, self.failed = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        payload = (encode_command("MULTI") + encode_command("INCR", "tx:counter") +
                   encode_command("EXEC"))
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                with connect(self.port, timeout=15) as s:
                    s.sendall(payload)
                    replies, _ = read_replies(s, 3, timeout=15)
                if replies[:2] == [b"+OK\r\n", b"+QUEUED\r\n"] and replies[2].startswith(b"*1\r\n:"):
                    self.ok.append(time.monotonic())
                else:
                    self.failed.append((round(t, 3), replies))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failed.append((round(t, 3), repr(exc)))
            time.sleep(0.01)

    def ok_after(self, t):
        return sum(1 for x in self.ok if x > t)

    def wait_ok_after(self, t, n):
        wait_until(lambda: self.ok_after(t) >= n, 20 * SLOWDOWN,
                   what=f"{n} transactions after the failover")

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)


# -- 1. a failover is followed without a restart ----------------------------------------------

def test_failover_followed_without_restart(fresh_cluster, sentinels, make_proxy):
    c, sc = fresh_cluster, sentinels
    old = c.primary
    keys = populate(c)
    proxy, admin = sentinel_proxy(make_proxy, sc, timeout=5)
    wait_topology(admin, old, c.replicas)
    changes_before = topology_changes(admin)

    load = Load(proxy, keys).start()
    tx = TransactionLoop(proxy.port).start()
    subscriber = connect(proxy.port, timeout=20)
    subscriber.sendall(encode_command("SUBSCRIBE", "failover:news"))
    sub_rest = read_replies(subscriber, 1)[1]
    t0 = time.monotonic()
    extra_reads = {"n": 0, "wrong": [], "errors": []}
    try:
        time.sleep(1.0)
        new, t_kill, _, t_sentinel, t_proxy = kill_primary_and_follow(c, sc, admin, load)
        tx.wait_ok_after(time.monotonic(), 5)
        tx.stop()
        # The subscriber was not cut off: its subscription was renewed on the new primary.
        wait_until(lambda: new.client().pubsub_numsub("failover:news")[0][1] == 1,
                   10 * SLOWDOWN, what="the subscription renewed on the new primary")
        assert new.client().publish("failover:news", "after") == 1
        got, sub_rest = read_replies(subscriber, 1, timeout=10, buf=sub_rest)
        assert got == [b"*3\r\n$7\r\nmessage\r\n$13\r\nfailover:news\r\n$5\r\nafter\r\n"], got
        subscriber.close()

        # The old primary comes back (empty: no persistence). Sentinel turns it into a replica
        # of the new primary; once synced, the proxy sends it reads again, still unrestarted.
        old.restart()
        t_restart = time.monotonic()

        def converted():
            role, port, link = role_of(old)
            return role == "slave" and port == new.port and link == "up"
        wait_until(converted, 40 * SLOWDOWN, interval=0.1,
                   what="Sentinel to make the restarted old primary a replica of the new one")
        t_converted = time.monotonic()
        wait_until(lambda: serves_reads(admin, old) == 1, 15 * SLOWDOWN,
                   what=f"proxy: the old primary {addr(old)} serves reads again")
        reader = proxy.client(timeout=10)  # never writes: reads go to replicas
        gets_before = old.calls("get")

        def old_gets_reads():
            for _ in range(20):
                key, want = keys[extra_reads["n"] % len(keys)]
                extra_reads["n"] += 1
                try:
                    got = reader.get(key)
                    if got != want:
                        extra_reads["wrong"].append((key, got))
                except Exception as exc:  # noqa: BLE001
                    extra_reads["errors"].append((key, str(exc)))
            return old.calls("get") > gets_before
        wait_until(old_gets_reads, 10 * SLOWDOWN, interval=0.0,
                   what="the old primary, now a replica, to get reads through the proxy")
    finally:
        load.stop()
        tx.stop()

    first_ack, gap = outage_numbers(load, t_kill)
    print(f"\nFAILOVER --timeout 5: Sentinel switched after {t_sentinel - t_kill:.2f}s, "
          f"proxy metric after {t_proxy - t_kill:.2f}s; first write issued after the kill "
          f"acked {first_ack}s after it; write gap {gap}s; "
          f"old primary converted {t_converted - t_restart:.2f}s after its restart\n"
          f"  {load.summary(t0)}\n  extra reads: {extra_reads}")

    assert load.read_errors == [], load.summary(t0)
    assert load.wrong == [], load.summary(t0)
    assert extra_reads["errors"] == [] and extra_reads["wrong"] == [], extra_reads
    # Transactions started while the primary was gone waited for the new one: only one in
    # flight on the old primary when it died may fail (its connection, and state, are lost).
    print(f"  transactions: {len(tx.ok)} ok, failed {tx.failed[:3]}")
    assert len(tx.failed) <= 1, tx.failed
    assert tx.ok_after(t_kill) >= 5, (tx.ok, tx.failed)
    # Writes wait (up to the 5 s timeout) for the new primary: none fails, except that a
    # write in flight on the old primary when it died cannot be known to have been applied.
    ambiguous = [e for e in load.write_errors if "may or may not have been applied" in e[3]]
    assert len(ambiguous) == len(load.write_errors) and len(ambiguous) <= 1, load.summary(t0)
    assert load.max_write_latency <= 5 + 1.5 * SLOWDOWN, load.summary(t0)
    assert load.acks_after(t_proxy) >= 20 and len(load.acked) > 100, load.summary(t0)

    # Nothing acknowledged was lost; the new primary has it all.
    check_acked_on(new, load)
    text = metrics(admin)
    assert metric_value(text, f'kompress_primary{{backend="{addr(new)}"}}') == 1, text
    assert metric_value(text, f'kompress_primary{{backend="{addr(old)}"}}') in (None, 0), text
    assert topology_changes(admin) >= changes_before + 1, text
    line = f"primary is now {addr(new)} (was {addr(old)}): named by the Sentinels"
    assert line in proxy.stderr(), proxy.stderr()[-3000:]
    assert proxy.alive


# -- 2. a failover longer than the timeout: writes fail clearly, reads flow -------------------

class OnlySentinel:
    """Stands for a SentinelCluster in sentinel_proxy: the proxy is given one Sentinel."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def addrs(self):
        return self.sentinel.addr


def move_sentinel(sentinel):
    """Restarts `sentinel` on another port, keeping its sentinel.conf (so its run id)."""
    sentinel.stop()
    new_port = free_port()
    text = re.sub(r"(?m)^port \d+$", f"port {new_port}", sentinel.conf.read_text())
    sentinel.conf.write_text(text)
    sentinel.port = new_port
    sentinel.start()


def discovered_line(sentinel):
    return f"sentinel {sentinel.addr} (discovered, failover events only) subscribed"


@pytest.mark.parametrize("given, interval, timeout",
                         [("all", 0.2, 5), ("another", 0.2, 5), ("moved", 0.2, 5),
                          ("all", 2, 1)])
def test_manual_failover_loses_no_acknowledged_write(fresh_cluster, sentinels, make_proxy,
                                                     given, interval, timeout):
    """SENTINEL FAILOVER: Sentinel promotes a replica and names it about a second later; the
    old primary keeps accepting writes meanwhile, and they are thrown away when it becomes
    the new primary's replica. The leading Sentinel announces its choice (+selected-slave)
    one tick (50-100 ms) before it sends REPLICAOF NO ONE: from then on the proxy holds
    writes until the Sentinels name the new primary, and what the old primary took before
    has reached the replica by the time it is promoted. So four writers going flat out lose
    no acknowledged write, and no read is wrong.

    Only the leading Sentinel announces its choice. Given ("another") just one Sentinel that
    is not the one leading the failover, the proxy hears it because it subscribes to every
    Sentinel the ones it was given know of (SENTINEL SENTINELS). "moved": that Sentinel
    restarts on another port (keeping its run id, as a pod does) after the proxy found it:
    the proxy follows it to the new address.

    With probes every 2 s and a timeout of 1 s, writes are held on the Sentinel's word for at
    most half the timeout; the chosen replica is probed every 20 ms meanwhile, so its
    promotion is seen within that and holds writes until the Sentinels name it. Writes held
    longer than the timeout fail unsent; none acknowledged is lost."""
    c, sc = fresh_cluster, sentinels
    old = c.primary
    keys = populate(c)
    proxy, admin = sentinel_proxy(
        make_proxy, sc if given == "all" else OnlySentinel(sc.sentinels[1]), timeout=timeout,
        interval=interval)
    wait_topology(admin, old, c.replicas)
    if given != "all":
        # The leader is one the proxy heard of from the Sentinel it was given: subscribed to,
        # never asked for the master (so not in kompress_sentinel_up).
        leader = sc.sentinels[0]
        wait_until(lambda: discovered_line(leader) in http_get(admin, "/readyz")[1],
                   10 * SLOWDOWN, interval=0.05,
                   what=f"/readyz: {leader.addr} discovered and subscribed")
        assert sentinel_up(admin, sc.sentinels[1]) == 1
        assert f'sentinel="{leader.addr}"' not in metrics(admin)
        if given == "moved":
            move_sentinel(leader)
            # The others learn its new address from its hello messages (every 2 s).
            wait_until(lambda: discovered_line(leader) in http_get(admin, "/readyz")[1],
                       15 * SLOWDOWN, interval=0.05,
                       what=f"/readyz: {leader.addr} (moved) followed")
    loads = [Load(proxy, keys, read=(k == 0), pause=0, prefix=f"w{k}").start()
             for k in range(4)]
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        assert sc.sentinels[0].client().execute_command(
            "SENTINEL", "FAILOVER", SENTINEL_MASTER) in (b"OK", "OK", True)
        new, _, _ = follow_new_primary(c, sc, admin, loads[0], old.port)
    finally:
        for load in loads:
            load.stop()
    lost = []
    for load in loads:
        print(f"\nSENTINEL FAILOVER, {load.prefix}: {load.summary(t0)}")
        have = new.client(timeout=30).mget([f"{load.prefix}:{i}" for _, _, i in load.acked])
        lost += [(load.prefix, i) for (_, _, i), v in zip(load.acked, have)
                 if v != str(i).encode()]
        assert load.wrong == [], load.summary(t0)
        if timeout >= 5:
            assert load.write_errors == [], load.summary(t0)  # waited, within the timeout
        else:  # held past the timeout: not sent
            assert all("primary is unavailable" in m and "may or may not" not in m
                       for _, _, _, m in load.write_errors), load.summary(t0)
    assert sum(len(load.acked) for load in loads) >= 1000, "too little load to tell"
    assert lost == [], f"{len(lost)} acknowledged writes lost (first {lost[:5]})"


def test_reads_after_a_write_never_go_stale_while_a_failover_holds_writes(fresh_cluster,
                                                                         tmp_path, make_proxy):
    """A client writes, then reads its key while a SENTINEL FAILOVER is under way. One replica
    (which the Sentinels may not promote: replica-priority 0) has not applied the write (its
    replication is paused), and the proxy's probes are slow (every 2 s), so no replica is
    known to have it. From +selected-slave the old primary takes no writes, but it is up and
    holds the client's write: the reads wait for the new primary (which has it) instead of
    taking a replica's old value. Every read answers `new`, none fails."""
    c = fresh_cluster
    chosen, lagging = c.replicas
    c.primary.client().set("ryw:k", "old")
    c.wait_replicated()
    lagging.client().config_set("replica-priority", 0)
    sc = SentinelCluster(tmp_path / "sentinels", c)
    try:
        sc.start()
        proxy, admin = sentinel_proxy(make_proxy, sc, timeout=5,
                                      extra_args=["--health-check-interval", "2"])
        wait_topology(admin, c.primary, c.replicas)
        client = proxy.client(timeout=10)
        lagging.client().execute_command("CLIENT", "PAUSE", str(int(6000 * SLOWDOWN)), "WRITE")
        assert client.set("ryw:k", "new") is True
        assert sc.sentinels[0].client().execute_command(
            "SENTINEL", "FAILOVER", SENTINEL_MASTER) in (b"OK", "OK", True)
        wait_until(lambda: "+selected-slave" in proxy.stderr(), 5 * SLOWDOWN, interval=0.005,
                   what="the Sentinel to choose a replica (proxy log)")
        got = []
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            try:
                got.append(client.get("ryw:k"))
            except Exception as exc:  # noqa: BLE001
                got.append(describe(exc))
        assert got and all(v == b"new" for v in got), \
            f"{sum(v != b'new' for v in got)} of {len(got)} reads: {sorted(set(map(str, got)))}"
        assert chosen.client().get("ryw:k") == b"new"
    finally:
        sc.stop()


@pytest.mark.parametrize("timeout", [5, 0.5])
def test_a_transaction_acknowledged_during_a_failover_is_on_the_new_primary(
        fresh_cluster, sentinels, make_proxy, timeout):
    """A client has a transaction open (MULTI, SET queued on its dedicated connection to the
    primary) when a SENTINEL FAILOVER starts, and sends EXEC once the chosen replica has been
    promoted, before the Sentinels announce it. The old primary would run it and acknowledge
    it, and the write would be thrown away when it becomes the new primary's replica. The
    EXEC waits instead: the failover closes the session, and the EXEC is answered with an
    error saying it was not sent (it used to be a bare close); with a timeout shorter than the
    failover, likewise once the timeout is up. An EXEC acknowledged is one the new primary has."""
    c, sc = fresh_cluster, sentinels
    old = c.primary
    proxy, admin = sentinel_proxy(make_proxy, sc, timeout=timeout)
    wait_topology(admin, old, c.replicas)
    with connect(proxy.port, timeout=10 * SLOWDOWN) as s:
        s.sendall(encode_command("MULTI") + encode_command("SET", "ftx:k", "1"))
        (r1, r2), rest = read_replies(s, 2)
        assert (r1, r2) == (b"+OK\r\n", b"+QUEUED\r\n")
        assert sc.sentinels[0].client().execute_command(
            "SENTINEL", "FAILOVER", SENTINEL_MASTER) in (b"OK", "OK", True)
        wait_until(lambda: any(role_of(r)[0] == "master" for r in c.replicas), 5 * SLOWDOWN,
                   interval=0.01, what="a replica to be promoted")
        s.sendall(encode_command("EXEC"))
        try:
            (outcome,), _ = read_replies(s, 1, timeout=10 * SLOWDOWN, buf=rest)
        except ConnectionError as exc:
            outcome = f"closed: {exc}"
    new_port = sc.wait_master_changed(old.port, timeout=20)
    new = next(r for r in c.replicas if r.port == new_port)
    wait_until(lambda: primary_metric(admin, new) == 1, 10 * SLOWDOWN,
               what="the proxy to name the new primary")
    have = new.client().get("ftx:k")
    print(f"\nEXEC during the failover: {outcome!r}; on the new primary: {have!r}")
    if outcome == b"*1\r\n+OK\r\n":
        assert have == b"1", "the transaction was acknowledged and then lost"
    else:
        # An answer either way, never a bare close (which reads as "maybe applied").
        assert isinstance(outcome, bytes) and (
            outcome.startswith(b"-ERR kompress: the primary changed while this command waited")
            or outcome.startswith(b"-ERR kompress: primary is unavailable")), outcome
        assert have is None
    assert proxy.client().set("ftx:after", "1") is True  # the proxy goes on


@pytest.mark.parametrize("interval, timeout", [(0.2, 5), (3, 1)])
def test_aborted_failover_lets_writes_through_again(fresh_cluster, sentinels, make_proxy,
                                                    interval, timeout):
    """SENTINEL FAILOVER, and as soon as the Sentinel has chosen a replica (+selected-slave,
    from then on writes wait) both replicas die, so the promotion never comes; the Sentinel
    gives up only after its failover-timeout (3 s here; minutes by default). The proxy holds
    writes on the Sentinel's word alone for well under its timeout (at most half of it), then
    the old primary takes them: none fails, none is lost, no read is wrong, the primary never
    changed. With probes every 3 s and a timeout of 1 s the primary is asked again as soon
    as the fence is over, not at the next probe: writes waited for the next probe, up to
    3 s, and failed after 1 s."""
    c, sc = fresh_cluster, sentinels
    old = c.primary
    keys = populate(c)
    proxy, admin = sentinel_proxy(make_proxy, sc, timeout=timeout, interval=interval)
    wait_topology(admin, old, c.replicas)
    load = Load(proxy, keys).start()
    t0 = time.monotonic()
    try:
        time.sleep(0.5)
        assert sc.sentinels[0].client().execute_command(
            "SENTINEL", "FAILOVER", SENTINEL_MASTER) in (b"OK", "OK", True)
        wait_until(lambda: "+selected-slave" in proxy.stderr(), 5 * SLOWDOWN, interval=0.005,
                   what="the Sentinel to choose a replica (proxy log)")
        for r in c.replicas:
            r.kill9()
        t_killed = time.monotonic()
        wait_until(lambda: load.acks_after(t_killed) >= 20, 5 * SLOWDOWN,
                   what="writes acknowledged after the promotion did not come")
        wait_until(lambda: "-failover-abort-slave-timeout" in proxy.stderr(), 10 * SLOWDOWN,
                   what="the Sentinel to abort the failover (proxy log)")
        t_abort = time.monotonic()
        wait_until(lambda: load.acks_after(t_abort) >= 20, 5 * SLOWDOWN,
                   what="writes acknowledged after the abort")
    finally:
        load.stop()
    print(f"\naborted SENTINEL FAILOVER: {load.summary(t0)}")
    assert load.write_errors == [], load.summary(t0)
    assert load.max_write_latency < 2.5 * SLOWDOWN, load.summary(t0)  # held, not for long
    assert load.read_errors == [] and load.wrong == [], load.summary(t0)
    assert primary_metric(admin, old) == 1
    check_acked_on(old, load)


def test_failover_longer_than_timeout_writes_fail_fast_reads_flow(fresh_cluster, sentinels,
                                                                  make_proxy):
    c, sc = fresh_cluster, sentinels
    old = c.primary
    keys = populate(c)
    timeout = 1.0
    proxy, admin = sentinel_proxy(make_proxy, sc, timeout=timeout)
    wait_topology(admin, old, c.replicas)

    load = Load(proxy, keys).start()
    tx = TransactionLoop(proxy.port).start()
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        new, t_kill, t_dead, t_sentinel, t_proxy = kill_primary_and_follow(c, sc, admin, load)
        tx.wait_ok_after(time.monotonic(), 5)
        time.sleep(0.5)
    finally:
        load.stop()
        tx.stop()

    first_ack, gap = outage_numbers(load, t_kill)
    kinds = {}
    for _, _, _, m in load.write_errors:
        k = re.sub(r"\d+", "N", m)[:160]
        kinds[k] = kinds.get(k, 0) + 1
    print(f"\nFAILOVER --timeout 1: Sentinel switched after {t_sentinel - t_kill:.2f}s, "
          f"proxy metric after {t_proxy - t_kill:.2f}s; write outage: first write issued "
          f"after the kill acked {first_ack}s after it (gap between acks {gap}s); "
          f"{len(load.write_errors)} write errors {kinds}\n  {load.summary(t0)}")

    assert load.read_errors == [], load.summary(t0)
    assert load.wrong == [], load.summary(t0)
    assert load.acks_after(t_proxy) >= 20, load.summary(t0)
    # Transactions that could not start within the timeout failed as a whole: never a
    # command of theirs run outside MULTI (the counter on the new primary counts exactly the
    # committed ones, give or take the one in flight when the primary died).
    print(f"  transactions: {len(tx.ok)} ok, {len(tx.failed)} failed, e.g. {tx.failed[:2]}")
    assert not [f for f in tx.failed if "EXEC without MULTI" in repr(f)], tx.failed
    counter = int(new.client().get("tx:counter") or 0)
    assert len(tx.ok) <= counter <= len(tx.ok) + 1, (counter, len(tx.ok), tx.failed)
    # Each write is answered within the timeout and a second: an error, not a hang.
    assert load.max_write_latency <= timeout + 1.0 * SLOWDOWN, load.summary(t0)
    # The failover takes longer than the timeout (down-after alone is 1 s): writes failed...
    assert load.write_errors, f"no write failed during a > 1 s failover: {load.summary(t0)}"
    # ...with the proxy's clear error, and only between the primary's death and the first
    # write the new primary took.
    first_ok_after = min((s for s, _, _ in load.acked if s >= t_kill), default=None)
    assert first_ok_after is not None
    for s, d, i, m in load.write_errors:
        # A write sent before the process was gone may have been in flight on it.
        ok_text = ("kompress: primary is unavailable" in m
                   or (s <= t_dead and "may or may not have been applied" in m))
        assert ok_text, f"write {i} at {s - t0:.3f}s failed with an unclear error: {m}"
        assert t_kill - 0.05 <= s <= first_ok_after, \
            f"write {i} failed at {s - t0:.3f}s, outside the failover: {m}"
    check_acked_on(new, load)
    assert proxy.alive


def test_a_discovered_sentinel_is_checked_before_it_is_followed(fresh_cluster, sentinels,
                                                                make_proxy, tmp_path):
    """The Sentinels list each other by the address each announces. One of them announces an
    address that, from the proxy, reaches another deployment's Sentinel (same master name):
    the proxy, given one Sentinel, follows the honest one it is named and not the impostor
    (SENTINEL MYID differs from the run id listed), and writes keep going to its primary."""
    c, sc = fresh_cluster, sentinels
    other_primary = RedisServer(tmp_path / "other", "other-primary").start()
    other = Sentinel(tmp_path / "other", "other-sentinel", other_primary.port, quorum=1).start()
    try:
        liar = sc.sentinels[2]
        assert liar.client().execute_command(
            "SENTINEL", "CONFIG", "SET", "announce-port", str(other.port)) in (b"OK", "OK", True)
        # The others learn the new address from its next hello message (every 2 s).
        wait_until(lambda: any(int(x["port"]) == other.port for x in sc.sentinels[0].sentinels()),
                   15 * SLOWDOWN, interval=0.1, what="Sentinel 1 to list the announced address")
        proxy, admin = sentinel_proxy(make_proxy, OnlySentinel(sc.sentinels[0]), timeout=5)
        wait_topology(admin, c.primary, c.replicas)
        honest = (f"sentinel {sc.sentinels[1].addr} (discovered, failover events only) "
                  "subscribed")
        impostor = (f"sentinel {HOST}:{other.port} (discovered, failover events only) not "
                    "followed: not the Sentinel listed there")
        wait_until(lambda: honest in http_get(admin, "/readyz")[1] and
                   impostor in http_get(admin, "/readyz")[1], 10 * SLOWDOWN, interval=0.05,
                   what="/readyz: the honest Sentinel subscribed, the impostor not followed")
        client = proxy.client()
        assert client.set("after:discovery", "1") is True
        assert c.primary.client().get("after:discovery") == b"1"
        assert primary_metric(admin, c.primary) == 1
        assert "is not the Sentinel listed there" in proxy.stderr()
    finally:
        other.stop()
        other_primary.stop()


def test_sentinels_changed_by_reload(fresh_cluster, sentinels, tmp_path):
    """SIGHUP with other Sentinels in the file: the new ones are asked from then on, one no
    longer configured is at most followed as a discovered one (not asked, not in
    kompress_sentinel_up), writes go on, and the moment of new links is not reported as
    every Sentinel lost."""
    c, sc = fresh_cluster, sentinels
    cfg = tmp_path / "proxy.yaml"
    admin = free_port()

    def write(given):
        cfg.write_text(
            f"listen: {HOST}:{port}\n"
            f"sentinels: [{', '.join(s.addr for s in given)}]\n"
            f"sentinel_master: {SENTINEL_MASTER}\n"
            f"admin_listen: {HOST}:{admin}\n"
            "health_check_interval: 0.2\n"
            "timeout: 5\n")

    proxy = Proxy(tmp_path, extra_args=["--config", str(cfg)], use_base_args=False)
    i = proxy.args.index("--listen")
    del proxy.args[i:i + 2]
    port = proxy.port
    write([sc.sentinels[0]])
    proxy.start()
    try:
        wait_topology(admin, c.primary, c.replicas)
        assert sentinel_up(admin, sc.sentinels[0]) == 1
        client = proxy.client()
        assert client.set("reload:s", "1") is True
        write(sc.sentinels[1:])
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: sentinel_up(admin, sc.sentinels[1]) == 1 and
                   sentinel_up(admin, sc.sentinels[2]) == 1, 10 * SLOWDOWN, interval=0.05,
                   what="the reloaded Sentinels up")
        time.sleep(1.5)  # a query of the new ones, and their list of the others
        assert f'sentinel="{sc.sentinels[0].addr}"' not in metrics(admin)
        assert client.set("reload:s", "2") is True
        assert c.primary.client().get("reload:s") == b"2"
        text = proxy.stderr()
        assert "configuration reloaded" in text, text[-2000:]
        assert "no Sentinel reachable" not in text, text[-2000:]
    finally:
        proxy.stop()


# -- 3. Sentinels go away: the proxy keeps the last topology ----------------------------------

def test_sentinels_down_last_topology_kept(fresh_cluster, sentinels, make_proxy):
    c, sc = fresh_cluster, sentinels
    keys = populate(c)
    proxy, admin = sentinel_proxy(make_proxy, sc, timeout=1)
    wait_topology(admin, c.primary, c.replicas)
    s1, s2, s3 = sc.sentinels
    problems = []  # metric checks that failed; asserted at the end so every phase runs

    def wait_metric(sentinel, want, timeout, phase):
        try:
            wait_until(lambda: sentinel_up(admin, sentinel) == want, timeout * SLOWDOWN,
                       interval=0.05, what=f"kompress_sentinel_up for {sentinel.addr} == {want}")
        except TimeoutError:
            problems.append(f"{phase}: kompress_sentinel_up{{sentinel=\"{sentinel.addr}\"}} is "
                            f"{sentinel_up(admin, sentinel)}, not {want}")

    def traffic(phase, duration=1.5):
        """Writes and reads through the proxy for `duration`: all must work, the writes land
        on the primary and the reads are served by the replicas."""
        load = Load(proxy, keys)
        gets = {r.name: r.calls("get") for r in c.replicas}
        t0 = time.monotonic()
        load.start()
        try:
            time.sleep(duration)
        finally:
            load.stop()
        print(f"{phase}: {load.summary(t0)}")
        assert load.write_errors == [], f"{phase}: {load.summary(t0)}"
        assert load.read_errors == [] and load.wrong == [], f"{phase}: {load.summary(t0)}"
        assert len(load.acked) > 50 and load.reads > 50, f"{phase}: {load.summary(t0)}"
        check_acked_on(c.primary, load)
        assert any(r.calls("get") > gets[r.name] for r in c.replicas), \
            f"{phase}: no read reached a replica"

    for s in sc.sentinels:  # all three up and answering
        wait_metric(s, 1, 5, "all Sentinels running")

    line = "no Sentinel reachable; keeping the last known topology"

    def none_reachable_lines():
        return proxy.stderr().count(line)

    # One Sentinel (the first listed: the one a proxy asks first) stops.
    s1.stop()
    wait_metric(s1, 0, 5, "first Sentinel stopped")
    for s in (s2, s3):
        wait_metric(s, 1, 5, "first Sentinel stopped")
    traffic("one Sentinel down")
    status, body = http_get(admin, "/readyz")
    print("/readyz with one Sentinel down:", status, body)
    if "no Sentinel reachable" in body:
        problems.append(f"one Sentinel down: /readyz says {body!r}")
    if none_reachable_lines():
        problems.append(f"one Sentinel down, two running: the proxy logged {line!r}")

    # All of them stop: the last topology is kept.
    logged_before = none_reachable_lines()
    s2.stop()
    s3.stop()
    try:
        wait_until(lambda: none_reachable_lines() > logged_before, 5 * SLOWDOWN,
                   what="the log line")
    except TimeoutError:
        problems.append(f"all Sentinels down: no log line {line!r}")
    for s in sc.sentinels:
        wait_metric(s, 0, 5, "all Sentinels down")
    status, body = http_get(admin, "/readyz")
    print("/readyz with all Sentinels down:", status, body)
    if "no Sentinel reachable: the last known topology is kept" not in body:
        problems.append(f"all Sentinels down: /readyz says {status} {body!r}")
    # Longer than the proxy's 1 s refresh, twice over.
    traffic("all Sentinels down", duration=2.5)
    text = metrics(admin)
    assert metric_value(text, f'kompress_primary{{backend="{addr(c.primary)}"}}') == 1, text

    # They come back.
    for s in sc.sentinels:
        s.start()
    for s in sc.sentinels:
        wait_metric(s, 1, 10, "Sentinels restarted")
    status, body = http_get(admin, "/readyz")
    if "no Sentinel reachable" in body:
        problems.append(f"Sentinels restarted: /readyz still says {body!r}")
    traffic("Sentinels back")
    assert problems == [], "\n".join(problems) + "\n" + metrics(admin)
    assert proxy.alive


# -- 4. configuration errors ------------------------------------------------------------------

def _one_line_error(proc):
    err = proc.stderr.decode(errors="replace").strip()
    lines = err.splitlines()
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    return lines[0]


def test_config_errors_sentinel_with_static_topology():
    sentinels = f"{HOST}:{free_port()},{HOST}:{free_port()}"
    # With --primary.
    line = _one_line_error(run_proxy_once(
        ["--sentinels", sentinels, "--sentinel-master", "mymaster",
         "--primary", f"{HOST}:{free_port()}"]))
    assert "primary" in line and "sentinels" in line, line
    # With --replicas.
    line = _one_line_error(run_proxy_once(
        ["--sentinels", sentinels, "--sentinel-master", "mymaster",
         "--replicas", f"{HOST}:{free_port()}"]))
    assert "replicas" in line and "sentinels" in line, line
    # The same through the environment.
    line = _one_line_error(run_proxy_once([], env={
        "KOMPRESS_SENTINELS": sentinels, "KOMPRESS_SENTINEL_MASTER": "mymaster",
        "KOMPRESS_PRIMARY": f"{HOST}:{free_port()}"}))
    assert "primary" in line and "sentinels" in line, line
    # Sentinels without a master name.
    line = _one_line_error(run_proxy_once(["--sentinels", sentinels]))
    assert "sentinel_master" in line, line
    line = _one_line_error(run_proxy_once([], env={"KOMPRESS_SENTINELS": sentinels}))
    assert "sentinel_master" in line, line


def test_a_read_on_a_hung_primary_is_answered_by_the_one_promoted(fresh_cluster, sentinels,
                                                                   make_proxy):
    """A read is on the primary when it hangs (SIGSTOP). Once the Sentinels promote a replica
    the read runs there, well before the timeout; it used to wait the whole timeout and fail
    ("read failed on replica", the old primary's new role). Reads go to the primary here
    (read_policy primary) so that this one surely does; read-your-writes sends a read there
    just the same after the client's write."""
    c = fresh_cluster
    timeout = 10.0
    proxy, admin = sentinel_proxy(make_proxy, sentinels, timeout,
                                  extra_args=["--read-policy", "primary"])
    wait_topology(admin, c.primary, c.replicas)
    client = proxy.client(timeout=3 * timeout)
    assert client.set("hung:k", "v2") is True
    c.wait_replicated()
    old = c.primary
    old.sigstop()
    t0 = time.monotonic()
    try:
        got = client.get("hung:k")
        elapsed = time.monotonic() - t0
    finally:
        old.sigcont()
    new_port = sentinels.wait_master_changed(old.port, timeout=20)
    print(f"read answered {elapsed:.2f}s after the primary hung; new primary {new_port}")
    assert got == b"v2"
    assert elapsed < timeout - 2.0, f"the read waited {elapsed:.2f}s (timeout {timeout}s)"


# -- 5. a static topology: roles verified, a manual switchover followed -----------------------

def test_static_manual_switchover_followed(fresh_cluster, make_proxy):
    c = fresh_cluster
    old = c.primary
    r1, r2 = c.replicas
    keys = populate(c)
    proxy, admin = static_proxy(make_proxy, old, [r1, r2])
    wait_topology(admin, old, [r1, r2])
    changes_before = topology_changes(admin)

    load = Load(proxy, keys).start()
    t0 = time.monotonic()
    try:
        time.sleep(0.5)
        # Switchover: replica1 becomes the primary, the others replicate it.
        r1.client().execute_command("REPLICAOF", "NO", "ONE")
        old.client().execute_command("REPLICAOF", HOST, r1.port)
        r2.client().execute_command("REPLICAOF", HOST, r1.port)
        t_switch = time.monotonic()
        wait_until(lambda: primary_metric(admin, r1) == 1, 5 * SLOWDOWN, interval=0.02,
                   what=f"proxy: kompress_primary for {addr(r1)}")
        t_proxy = time.monotonic()
        wait_until(lambda: load.acks_after(t_proxy) >= 20, 10 * SLOWDOWN,
                   what="writes acknowledged after the switchover")
        time.sleep(0.5)
    finally:
        load.stop()
    print(f"\nswitchover followed {t_proxy - t_switch:.2f}s after it; {load.summary(t0)}")

    # Acknowledged by the old primary after replica1 had been promoted and before the old
    # primary followed it: lost by the switchover itself (no CLIENT PAUSE), not by the proxy.
    before = [a for a in load.acked if a[0] < t_proxy]
    values = r1.client(timeout=30).mget([f"w:{i}" for _, _, i in before]) if before else []
    print(f"writes acked before the proxy switched and not on replica1: "
          f"{sum(1 for (_, _, i), v in zip(before, values) if v != str(i).encode())}")
    assert load.read_errors == [] and load.wrong == [], load.summary(t0)
    # The writes acknowledged after the proxy switched are on replica1, the new primary.
    after = [a for a in load.acked if a[0] >= t_proxy]
    values = r1.client().mget([f"w:{i}" for _, _, i in after])
    lost = [i for (_, _, i), v in zip(after, values) if v != str(i).encode()]
    assert lost == [], f"{len(lost)} writes acked after the switch are not on replica1"
    sets_before = r1.calls("set")
    assert proxy.client().set("switch:marker", "m") is True
    assert r1.client().get("switch:marker") == b"m"
    assert r1.calls("set") == sets_before + 1
    assert role_of(old)[0] == "slave"
    text = metrics(admin)
    assert topology_changes(admin) == changes_before + 1 == 1, text
    line = f"primary is now {addr(r1)} (was {addr(old)})"
    assert line in proxy.stderr(), proxy.stderr()[-3000:]
    # No write reached a node that is a replica (it would have answered READONLY), and no
    # write failed: the switchover is invisible to clients.
    readonly = [e for e in load.write_errors if "ReadOnlyError" in e[3] or "READONLY" in e[3]]
    assert readonly == [], (f"{len(readonly)} writes were sent to the old primary after it "
                            f"had become a replica (READONLY): {load.summary(t0)}")
    assert load.write_errors == [], load.summary(t0)


def test_static_primary_replicating_an_unlisted_server_gets_no_writes(fresh_cluster,
                                                                      make_proxy):
    """--primary names replica1, a replica of a primary the proxy was not told about."""
    c = fresh_cluster
    r1, r2 = c.replicas
    proxy, admin = static_proxy(make_proxy, r1, [r2])
    client = proxy.client(timeout=10)
    want = (f"kompress: primary is unavailable ({addr(r1)}: it reports itself as a replica "
            f"of {HOST}:{c.primary.port})")
    sets_before = r1.calls("set")
    replies = []
    for i in range(5):
        t1 = time.monotonic()
        try:
            replies.append((client.set(f"unlisted:{i}", i), time.monotonic() - t1))
        except Exception as exc:  # noqa: BLE001
            replies.append((str(exc), time.monotonic() - t1))
        time.sleep(0.2)
    print("writes with a primary that is a replica of an unlisted server:", replies)
    for reply, took in replies:
        assert isinstance(reply, str) and want in reply, f"got {reply!r}, want {want!r}"
        assert took <= 1 + 1.0 * SLOWDOWN, f"the error took {took:.2f}s"
    assert r1.calls("set") == sets_before, "a write reached the replica"
    assert r1.errorstats().get("READONLY", 0) == 0
    assert primary_metric(admin, r1) in (0, None), metrics(admin)
    assert proxy.alive


# -- 6. busy is not dead ----------------------------------------------------------------------

BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) then break end
end
return 1
"""


def test_busy_primary_is_not_marked_down(fresh_cluster, make_proxy):
    c = fresh_cluster
    p = c.primary
    keys = populate(c)
    proxy, admin = static_proxy(make_proxy, p, c.replicas, extra_args=["--timeout", "2"])
    wait_topology(admin, p, c.replicas)
    p.client().config_set("busy-reply-threshold", 200)
    client = proxy.client(timeout=10)
    reader = proxy.client(timeout=10)  # never writes: its reads go to the replicas
    assert client.set("busy:k", "0") is True

    samples = []  # (t, kompress_backend_up for the primary)
    stop_polling = threading.Event()

    def poll():
        n = 0
        while not stop_polling.is_set() and n < 2000:
            n += 1
            try:
                samples.append((time.monotonic(), backend_up(admin, p, "primary")))
            except Exception as exc:  # noqa: BLE001
                samples.append((time.monotonic(), repr(exc)))
            time.sleep(0.05)

    script = {}

    def run_script():
        try:
            script["reply"] = p.client(timeout=10).eval(BUSY_SCRIPT, 0, 1_500_000)
        except Exception as exc:  # noqa: BLE001
            script["reply"] = repr(exc)
        script["end"] = time.monotonic()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    runner = threading.Thread(target=run_script, daemon=True)
    t_start = time.monotonic()
    runner.start()
    try:
        time.sleep(0.5)  # past the 200 ms threshold: Redis answers BUSY
        via_proxy = raw_command(proxy.port, encode_command("SET", "busy:k", "1"), timeout=5)
        direct = raw_command(p.port, encode_command("SET", "busy:k", "1"), timeout=5)
        read = reader.get(keys[0][0])
        runner.join(timeout=10)
        assert not runner.is_alive(), "the script did not end"
        # Right after the script: writes go through at once.
        t1 = time.monotonic()
        after = client.set("busy:k", "2")
        t_after = time.monotonic()
        time.sleep(0.5)
    finally:
        stop_polling.set()
        poller.join(timeout=10)
    print(f"\nBUSY: via proxy {via_proxy!r}, direct {direct!r}; script {script} "
          f"{script.get('end', 0) - t_start:.2f}s; SET after it {after!r} in "
          f"{t_after - t1:.3f}s ({t_after - script['end']:.3f}s after the script ended); "
          f"{len(samples)} backend_up samples, values {sorted({s[1] for s in samples}, key=str)}")
    assert script["reply"] == 1, script
    assert direct.startswith(b"-BUSY"), f"the test is void: Redis itself said {direct!r}"
    assert via_proxy == direct, f"proxy said {via_proxy!r}, Redis says {direct!r}"
    assert read == keys[0][1], f"read during the script: {read!r}"
    assert after is True
    assert t_after - script["end"] <= 0.3 * SLOWDOWN, \
        f"SET after the script took {t_after - script['end']:.3f}s"
    assert samples and all(v == 1 for _, v in samples), \
        f"kompress_backend_up for the busy primary was not always 1: {samples}"
    assert f"primary {addr(p)} marked down" not in proxy.stderr(), proxy.stderr()[-3000:]
    assert p.client().get("busy:k") == b"2"

    # DEBUG SLEEP: the primary answers nothing for 0.5 s; a write behind it waits, no error.
    sleeper = threading.Thread(
        target=lambda: p.client(timeout=10).execute_command("DEBUG", "SLEEP", "0.5"),
        daemon=True)
    sleeper.start()
    time.sleep(0.1)
    t1 = time.monotonic()
    try:
        reply = client.set("busy:k", "3")
    except Exception as exc:  # noqa: BLE001
        reply = str(exc)
    took = time.monotonic() - t1
    sleeper.join(timeout=10)
    print(f"SET during DEBUG SLEEP 0.5: {reply!r} after {took:.3f}s")
    assert reply is True, f"SET during DEBUG SLEEP got {reply!r} after {took:.2f}s"
    assert 0.2 <= took <= 2.0, f"SET during DEBUG SLEEP took {took:.3f}s"
    assert p.client().get("busy:k") == b"3"
    assert backend_up(admin, p, "primary") == 1
    assert proxy.alive
