"""Reads are never wrong: a replica serves reads only while it is linked to the current
primary, not syncing and within the lag limits, and a client that wrote reads its own writes
(read-your-writes). Every test counts wrong answers (a stale value or a nil for a key that
exists is a wrong answer), not just errors. Which server answered is proven with each
server's INFO commandstats and the proxy's /metrics."""

import bisect
import re
import threading
import time

from fixtures import (HOST, PROXY_BASE_ARGS, SLOWDOWN, Cluster, RedisServer, connect, delta,
                      encode_command, free_port, http_get, metric, read_replies, wait_until)

# The suite's probe interval (--health-check-interval in PROXY_BASE_ARGS).
INTERVAL_S = float(PROXY_BASE_ARGS[PROXY_BASE_ARGS.index("--health-check-interval") + 1])
# Time for the proxy to see a change a replica reports: one probe round may have just gone,
# the next one sees it; two intervals and some slack.
NOTICE_S = 2 * INTERVAL_S + 0.25 * SLOWDOWN


# -- admin endpoint helpers ------------------------------------------------------------------

def metrics(admin):
    status, text = http_get(admin, "/metrics")
    assert status == 200, (status, text[:200])
    return text


def serves_reads(admin, server):
    return metric(metrics(admin),
                  f'kompress_replica_serves_reads{{backend="{HOST}:{server.port}"}}')


def route(admin, name):
    return metric(metrics(admin), f'kompress_requests_total{{route="{name}"}}')


def replica_metrics(admin, server):
    text = metrics(admin)
    b = f'{{backend="{HOST}:{server.port}"}}'
    return {"serves_reads": metric(text, "kompress_replica_serves_reads" + b),
            "lag_bytes": metric(text, "kompress_replica_lag_bytes" + b),
            "lag_seconds": metric(text, "kompress_replica_lag_seconds" + b)}


def start_proxy(make_proxy, primary, replicas, extra_args=()):
    """A proxy with an admin endpoint; returns (proxy, admin port)."""
    admin = free_port()
    p = make_proxy(primary.port, [r.port for r in replicas],
                   extra_args=["--admin-listen", f"{HOST}:{admin}"] + list(extra_args))
    return p, admin


def wait_serves_reads(admin, server, want=1, timeout=10.0):
    wait_until(lambda: serves_reads(admin, server) == want, timeout * SLOWDOWN,
               what=f"{server.name} serves_reads == {want}")


def log_lines(proxy, server, what):
    """Proxy stderr lines "replica HOST:PORT <what>..." for `server`."""
    pat = re.compile(rf"replica {re.escape(HOST)}:{server.port} {what}")
    return [line for line in proxy.stderr().splitlines() if pat.search(line)]


def replica_offset(server):
    return server.client(timeout=2).info("replication").get("slave_repl_offset", -1)


def primary_offset(cluster):
    return cluster.primary.client(timeout=2).info("replication")["master_repl_offset"]


def wait_offset(cluster, replicas, timeout=5.0):
    """Waits until each of `replicas` (and only those) has the primary's current offset."""
    target = primary_offset(cluster)
    wait_until(lambda: all(replica_offset(r) >= target for r in replicas), timeout * SLOWDOWN,
               interval=0.002, what=f"{[r.name for r in replicas]} at offset {target}")


def fill(server, items, chunk=200):
    """MSET `items` ({key: value}) directly on `server`, in chunks."""
    c = server.client(timeout=30)
    items = list(items.items())
    for i in range(0, len(items), chunk):
        c.mset(dict(items[i:i + chunk]))


class Tally:
    """Wrong answers and errors seen by client loops (appends are atomic in CPython)."""

    def __init__(self):
        self.ops = 0
        self.wrong = []   # (what, got, wanted)
        self.errors = []  # (what, exception)
        self._lock = threading.Lock()

    @staticmethod
    def _short(v):
        if isinstance(v, tuple):
            return tuple(Tally._short(x) for x in v)
        return v[:40] + b"..." if isinstance(v, bytes) and len(v) > 40 else v

    def check(self, what, got, want):
        with self._lock:
            self.ops += 1
        if got != want:
            self.wrong.append((what, self._short(got), self._short(want)))

    def __repr__(self):
        return (f"<{self.ops} checks, {len(self.wrong)} wrong {self.wrong[:5]}, "
                f"{len(self.errors)} errors {self.errors[:5]}>")


# -- 1. a replica that is still syncing gets no reads -----------------------------------------

N_SYNC_KEYS = 2000
SYNC_VALUE_BYTES = 8 * 1024


def sync_value(i):
    unit = f"<{i}>".encode()
    return (unit * (SYNC_VALUE_BYTES // len(unit) + 1))[:SYNC_VALUE_BYTES]


def test_replica_started_empty_gets_no_reads_until_synced(tmp_path, make_proxy):
    # Redis's default delay before a full sync starts (the suite's fixture sets 0): the new
    # replica is up, answers commands and holds nothing for about 5 seconds.
    c = Cluster(tmp_path / "cluster", replicas=1,
                primary_args=["--repl-diskless-sync-delay", "5"])
    try:
        c.primary.start()
        r = c.replicas[0]
        keys = [f"sync:{i}" for i in range(N_SYNC_KEYS)]
        want = {k: sync_value(i) for i, k in enumerate(keys)}
        fill(c.primary, want)
        proxy, admin = start_proxy(make_proxy, c.primary, [r])
        client = proxy.client(timeout=10)  # never writes

        tally = Tally()
        # passes_while_syncing: passes begun while the replica ran but was not linked yet
        # (waiting for the primary to start the sync, receiving or loading it).
        state = {"passes_while_syncing": 0, "passes_after_link_up": 0, "saw_sync": False}

        def one_pass():
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(keys), 200):
                batch = keys[start:start + 200]
                for k in batch:
                    pipe.get(k)
                try:
                    got = pipe.execute()
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    tally.errors.append((f"GET {batch[0]}..", repr(exc)))
                    continue
                for k, v in zip(batch, got):
                    tally.check(f"GET {k}", v, want[k])

        one_pass()  # replica not running yet: the primary answers
        r.start(wait=True)
        t0 = time.monotonic()
        deadline = t0 + 5 + 25 * SLOWDOWN
        passes = 0
        while time.monotonic() < deadline and passes < 500:
            info = r.client(timeout=2).info("replication")
            linked = info.get("master_link_status") == "up"
            syncing = info.get("master_sync_in_progress") == 1 or not linked
            state["saw_sync"] |= info.get("master_sync_in_progress") == 1
            one_pass()
            passes += 1
            if syncing:
                state["passes_while_syncing"] += 1
            else:
                state["passes_after_link_up"] += 1
                # Keep reading across the moment the proxy admits it, and a little after.
                if state["passes_after_link_up"] >= 3 and serves_reads(admin, r) == 1:
                    break
        print(f"replica synced after {time.monotonic() - t0:.2f}s:", state, tally)
        assert tally.wrong == [], tally
        assert tally.errors == [], tally
        # The window was real: reads ran while the replica was up and had not synced.
        assert state["passes_while_syncing"] >= 2, state
        assert state["passes_after_link_up"] >= 1, f"replica never linked: {state}"

        # Synced: it serves reads by itself, and really gets them.
        wait_serves_reads(admin, r, 1)
        before = r.calls("get")
        for k in keys[:200]:
            tally.check(f"GET {k}", client.get(k), want[k])
        assert tally.wrong == [], tally
        assert r.calls("get") - before > 0, "synced replica gets no reads"
        assert log_lines(proxy, r, "serves reads"), proxy.stderr()[-3000:]
    finally:
        c.stop()


# -- 2. a replica whose link is cut gets no reads ---------------------------------------------

def test_replica_with_cut_link_gets_no_reads_and_comes_back(fresh_cluster, make_proxy):
    c = fresh_cluster
    r1, r2 = c.replicas
    proxy, admin = start_proxy(make_proxy, c.primary, [r1, r2])
    writer = proxy.client(timeout=10)   # client A
    reader = proxy.client(timeout=10)   # client B: never writes
    assert writer.set("cut:k", "v0") is True
    c.wait_replicated()
    wait_serves_reads(admin, r1, 1)
    wait_serves_reads(admin, r2, 1)
    before = c.snapshot("get")
    for _ in range(20):
        assert reader.get("cut:k") == b"v0"
    d = delta(before, c.snapshot("get"))
    assert d["replica1"] > 0 and d["replica2"] > 0, f"both replicas should serve reads: {d}"

    # Cut r1 off: it keeps its data (and replication id) but gets nothing new.
    dead = free_port()
    r1.client().execute_command("REPLICAOF", HOST, dead)
    time.sleep(NOTICE_S)

    tally = Tally()
    r1_before = r1.calls("get")
    t_end = time.monotonic() + 10 * SLOWDOWN
    last = b"v0"
    for i in range(1, 201):
        if time.monotonic() > t_end:
            break
        value = f"v{i}".encode()
        assert writer.set("cut:k", value) is True
        last = value
        # The linked replica has the write (replication is asynchronous): only the cut
        # replica can answer with an old value now.
        wait_offset(c, [r2])
        for _ in range(2):
            try:
                tally.check(f"GET cut:k after SET {value!r}", reader.get("cut:k"), value)
            except Exception as exc:  # noqa: BLE001
                tally.errors.append(("GET cut:k", repr(exc)))
    print("link cut:", tally)
    assert tally.ops >= 100, tally
    assert tally.wrong == [], f"stale reads from the cut replica: {tally}"
    assert tally.errors == [], tally
    assert r1.calls("get") == r1_before, "the cut replica still got reads"
    assert r1.client().get("cut:k") == b"v0", "the cut replica was not stale (test is void)"
    assert serves_reads(admin, r1) == 0
    assert serves_reads(admin, r2) == 1
    reasons = log_lines(proxy, r1, "gets no reads: .*link")
    assert reasons, "no log line names the cut link:\n" + proxy.stderr()[-3000:]

    # Re-link: it catches up and serves reads again by itself.
    r1.client().execute_command("REPLICAOF", HOST, c.primary.port)
    r1.wait_link_up(timeout=20 * SLOWDOWN)
    wait_serves_reads(admin, r1, 1)
    before = r1.calls("get")

    def r1_serves():
        for _ in range(10):
            tally.check("GET cut:k after re-link", reader.get("cut:k"), last)
        return r1.calls("get") > before
    wait_until(r1_serves, 5 * SLOWDOWN, interval=0.01, what="re-linked replica to get reads")
    assert tally.wrong == [], tally
    assert log_lines(proxy, r1, "serves reads"), proxy.stderr()[-3000:]


# -- 3. a primary listed as a replica gets no reads -------------------------------------------

def test_standalone_primary_listed_as_replica_gets_no_reads(tmp_path, fresh_cluster,
                                                             make_proxy):
    """Listed as replicas: a standalone primary with other data, a healthy replica of that
    other primary (linked, in sync: only its replication id tells), and a real replica."""
    c = fresh_cluster
    rogue = RedisServer(tmp_path, "rogue")  # a primary of its own, with other data
    rogue_replica = RedisServer(tmp_path, "rogue-replica", replicaof=rogue.port)
    try:
        rogue.start()
        n = 300
        fill(c.primary, {f"rw:{i}": f"right{i}" for i in range(n)})
        fill(rogue, {f"rw:{i}": f"WRONG{i}" for i in range(n)})
        rogue_replica.start()
        rogue_replica.wait_link_up()
        c.wait_replicated()
        wait_until(lambda: replica_offset(rogue_replica)
                   >= rogue.client().info("replication")["master_repl_offset"], 5 * SLOWDOWN,
                   what="rogue replica in sync")
        r1 = c.replicas[0]
        proxy, admin = start_proxy(make_proxy, c.primary, [rogue, rogue_replica, r1])
        client = proxy.client(timeout=10)  # never writes
        tally = Tally()

        def read_all():
            for i in range(n):
                try:
                    tally.check(f"GET rw:{i}", client.get(f"rw:{i}"), f"right{i}".encode())
                except Exception as exc:  # noqa: BLE001
                    tally.errors.append((f"GET rw:{i}", repr(exc)))

        read_all()  # at once: before the proxy has looked at the servers
        wait_serves_reads(admin, r1, 1)
        time.sleep(NOTICE_S)
        before = r1.calls("get")
        for _ in range(3):
            read_all()
        print("rogue primary and its replica listed as replicas:", tally)
        assert tally.wrong == [], tally
        assert tally.errors == [], tally
        assert rogue.calls("get") == 0, "the standalone primary got reads"
        assert rogue_replica.calls("get") == 0, "the replica of another primary got reads"
        assert r1.calls("get") > before, "the real replica got no reads"
        assert serves_reads(admin, rogue) == 0
        assert serves_reads(admin, rogue_replica) == 0
        assert log_lines(proxy, rogue, "gets no reads: .*primary"), proxy.stderr()[-3000:]
        assert log_lines(proxy, rogue_replica, "gets no reads: .*another primary"), \
            proxy.stderr()[-3000:]
    finally:
        rogue_replica.stop()
        rogue.stop()


# -- 4. read-your-writes ----------------------------------------------------------------------

def big_value(i, size=1 << 20):
    unit = f"[{i}]".encode()
    return (unit * (size // len(unit) + 1))[:size]


def set_get_loop(client, key, n, tally, check=True):
    for i in range(n):
        value = big_value(i)
        try:
            assert client.set(key, value) is True
            got = client.get(key)
            if check:
                tally.check(f"GET {key} #{i}", got, value)
            else:
                tally.ops += 1
        except Exception as exc:  # noqa: BLE001
            tally.errors.append((f"SET/GET {key} #{i}", repr(exc)))


def test_read_your_writes_large_values(cluster, make_proxy):
    proxy, admin = start_proxy(make_proxy, cluster.primary, cluster.replicas)
    client = proxy.client(timeout=30)
    tally = Tally()
    set_get_loop(client, "ryw:big", 100, tally)
    print("1 MB SET/GET:", tally, "ryw reads on the primary:",
          route(admin, "primary_read_your_writes"), "replica reads:", route(admin, "replica"))
    assert tally.errors == [], tally
    assert tally.wrong == [], f"a client did not read its own write: {tally}"
    assert tally.ops == 100
    # The rule was at work: reads right behind the client's write went to the primary.
    assert route(admin, "primary_read_your_writes") > 0

    # The same with the GET pipelined right behind its SET (sent before the SET is answered).
    for i in range(100, 120):
        value = big_value(i)
        pipe = client.pipeline(transaction=False)
        pipe.set("ryw:big", value)
        pipe.get("ryw:big")
        try:
            ok, got = pipe.execute()
            tally.check(f"pipelined SET/GET #{i}", (ok, got), (True, value))
        except Exception as exc:  # noqa: BLE001
            tally.errors.append((f"pipelined SET/GET #{i}", repr(exc)))
    assert tally.errors == [], tally
    assert tally.wrong == [], f"a client did not read its own write: {tally}"


def test_read_your_writes_pipelined_incr_get(cluster, make_proxy):
    proxy, _ = start_proxy(make_proxy, cluster.primary, cluster.replicas)
    n = 500
    for rnd in range(3):
        key = f"ryw:pipe:{rnd}"
        payload = b"".join(encode_command("INCR", key) + encode_command("GET", key)
                           for _ in range(n))
        with connect(proxy.port, timeout=30) as s:
            s.sendall(payload)
            replies, _ = read_replies(s, 2 * n, timeout=30 * SLOWDOWN)
        bad = []
        for j in range(n):
            incr, get = replies[2 * j], replies[2 * j + 1]
            if not incr.startswith(b":"):
                bad.append((j, incr, get))
                continue
            num = incr[1:-2]
            if get != b"$%d\r\n%s\r\n" % (len(num), num) or int(num) != j + 1:
                bad.append((j, incr, get))
        assert bad == [], f"round {rnd}: {len(bad)} GETs did not see their INCR: {bad[:5]}"


def test_read_your_writes_parallel_clients_under_load(cluster, make_proxy):
    proxy, admin = start_proxy(make_proxy, cluster.primary, cluster.replicas)
    tally = Tally()
    stop = threading.Event()
    duration = 4.0

    def counter_client(t):
        c = proxy.client(timeout=30)
        key = f"ryw:par:{t}"
        c.delete(key)
        n = 0
        deadline = time.monotonic() + duration * SLOWDOWN
        rounds = 0
        while time.monotonic() < deadline and rounds < 2000 and not stop.is_set():
            rounds += 1
            try:
                if rounds % 2:
                    n += 1
                    got_n = c.incr(key)
                    tally.check(f"INCR {key}", got_n, n)
                    tally.check(f"GET {key} after INCR -> {n}", c.get(key), str(n).encode())
                else:
                    pipe = c.pipeline(transaction=False)
                    for _ in range(5):
                        pipe.incr(key)
                        pipe.get(key)
                    out = pipe.execute()
                    for j in range(5):
                        n += 1
                        tally.check(f"INCR {key} (pipelined)", out[2 * j], n)
                        tally.check(f"GET {key} (pipelined) after INCR -> {n}", out[2 * j + 1],
                                    str(n).encode())
            except Exception as exc:  # noqa: BLE001
                tally.errors.append((key, repr(exc)))
                return

    def load():
        # Large writes keep the replication stream busy, so replicas trail the primary.
        c = proxy.client(timeout=30)
        blob = b"x" * (256 * 1024)
        i = 0
        while not stop.is_set() and i < 5000:
            try:
                c.set(f"ryw:load:{i % 20}", blob)
            except Exception as exc:  # noqa: BLE001
                tally.errors.append(("load", repr(exc)))
                return
            i += 1

    before = cluster.snapshot("get")
    loaders = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    clients = [threading.Thread(target=counter_client, args=(t,), daemon=True) for t in range(8)]
    for t in loaders + clients:
        t.start()
    for t in clients:
        t.join(timeout=duration * SLOWDOWN + 60)
    stop.set()
    for t in loaders:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in loaders + clients), "a client thread hung"
    d = delta(before, cluster.snapshot("get"))
    print("8 parallel clients:", tally, "gets per server:", d,
          "ryw reads on the primary:", route(admin, "primary_read_your_writes"),
          "replica reads:", route(admin, "replica"))
    assert tally.errors == [], tally
    assert tally.wrong == [], f"stale reads of a client's own counter: {tally}"
    assert tally.ops >= 8 * 100, tally


def test_read_your_writes_off_reads_go_to_replicas(cluster, make_proxy):
    """With --read-your-writes false the same loop works without errors and its reads go to
    the replicas. (Whether a read is stale is not asserted either way.)"""
    proxy, admin = start_proxy(make_proxy, cluster.primary, cluster.replicas,
                               extra_args=["--read-your-writes", "false"])
    for r in cluster.replicas:
        wait_serves_reads(admin, r, 1)
    client = proxy.client(timeout=30)
    tally = Tally()
    before = cluster.snapshot("get")
    set_get_loop(client, "ryw:off", 100, tally, check=False)
    d = delta(before, cluster.snapshot("get"))
    print("read-your-writes off:", tally, d)
    assert tally.errors == [], tally
    assert tally.ops == 100
    on_replicas = sum(d[r.name] for r in cluster.replicas)
    assert on_replicas >= 90, f"reads after writes should go to replicas: {d}"
    assert route(admin, "primary_read_your_writes") == 0

    # A client that only reads: replicas, and the primary stays (near) idle.
    cluster.wait_replicated()
    reader = proxy.client(timeout=10)
    before = cluster.snapshot("get")
    for _ in range(200):
        assert reader.get("ryw:off") == big_value(99)
    d = delta(before, cluster.snapshot("get"))
    assert d["primary"] <= 5, f"reads of a reading client went to the primary: {d}"
    assert all(d[r.name] > 0 for r in cluster.replicas), d


# -- 5. replicas restarted empty under mixed load ---------------------------------------------

def test_replicas_restarted_empty_under_mixed_load(fresh_cluster, make_proxy):
    c = fresh_cluster
    n_fixed = 500
    fixed = {f"fix:{i}": f"f{i}:".encode() + b"." * 1000 for i in range(n_fixed)}
    fill(c.primary, fixed)
    # Bulk, so each full sync (and the load of its RDB) takes a moment.
    c.primary.client(timeout=60).execute_command("DEBUG", "POPULATE", 200000, "filler", 100)
    c.wait_replicated(timeout_ms=30000)
    proxy, admin = start_proxy(make_proxy, c.primary, c.replicas)
    for r in c.replicas:
        wait_serves_reads(admin, r, 1)

    stop = threading.Event()
    own = Tally()      # clients reading what they wrote themselves
    fixed_t = Tally()  # clients that never write
    acked = {}         # INCR key -> last acknowledged value

    def set_get(t):
        cl = proxy.client(timeout=30)
        key = f"mix:set:{t}"
        i = 0
        while not stop.is_set() and i < 200_000:
            i += 1
            try:
                assert cl.set(key, i) is True
                own.check(f"GET {key} after SET {i}", cl.get(key), str(i).encode())
            except Exception as exc:  # noqa: BLE001
                own.errors.append((key, i, repr(exc)))

    def incr_get(t):
        cl = proxy.client(timeout=30)
        key = f"mix:ctr:{t}"
        i = 0
        while not stop.is_set() and i < 200_000:
            try:
                n = cl.incr(key)
                acked[key] = n
                own.check(f"GET {key} after INCR -> {n}", cl.get(key), str(n).encode())
            except Exception as exc:  # noqa: BLE001
                own.errors.append((key, i, repr(exc)))
            i += 1

    def reader(t):
        cl = proxy.client(timeout=30)
        keys = list(fixed)
        i = t * 97
        while not stop.is_set() and i < 10_000_000:
            k = keys[i % n_fixed]
            try:
                fixed_t.check(f"GET {k}", cl.get(k), fixed[k])
            except Exception as exc:  # noqa: BLE001
                fixed_t.errors.append((k, repr(exc)))
            i += 1

    threads = ([threading.Thread(target=set_get, args=(t,), daemon=True) for t in range(2)]
               + [threading.Thread(target=incr_get, args=(t,), daemon=True) for t in range(1)]
               + [threading.Thread(target=reader, args=(t,), daemon=True) for t in range(2)])
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        # One replica at a time, each back in rotation before the next goes.
        for r in c.replicas:
            r.restart()
            r.wait_link_up(timeout=30 * SLOWDOWN)
            wait_serves_reads(admin, r, 1, timeout=15)
        # Both at once.
        for r in c.replicas:
            r.kill9()
        time.sleep(0.2)
        for r in c.replicas:
            r.restart(wait=False)
        for r in c.replicas:
            r.wait_ready()
            r.wait_link_up(timeout=30 * SLOWDOWN)
        for r in c.replicas:
            wait_serves_reads(admin, r, 1, timeout=15)
        # The restarted replicas take reads again while the clients still run.
        wait_until(lambda: all(r.calls("get") > 0 for r in c.replicas), 10 * SLOWDOWN,
                   what="restarted replicas to get reads")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    print("own writes:", own, "fixed reads:", fixed_t)
    assert own.errors == [], own
    assert own.wrong == [], f"a client did not read what it wrote: {own}"
    assert fixed_t.errors == [], fixed_t
    assert fixed_t.wrong == [], f"wrong values for keys that never changed: {fixed_t}"
    assert own.ops > 200 and fixed_t.ops > 200, (own, fixed_t)
    p = c.primary.client()
    for key, n in acked.items():
        assert int(p.get(key)) == n, f"{key}: primary has {p.get(key)!r}, last ack {n}"


# -- 6. the primary lost right after a write ----------------------------------------------------

def proxy_info_probes(server, last):
    """INFO calls `server` got since the previous call, minus this function's own INFO."""
    now = server.calls("info")
    return now, now - last - 1


def test_primary_lost_right_after_a_write_stale_replica_gets_no_reads(fresh_cluster,
                                                                       make_proxy):
    """The primary dies just after a write that only one replica got; the other replica had
    been cut off before it, at exactly the offset the proxy last saw on the primary. With the
    primary gone, only the replica that has the write may serve reads."""
    c = fresh_cluster
    r1, r2 = c.replicas
    # Probes 1 s apart, so the write and the kill fit between two looks at the primary; no
    # replication PINGs, so the primary's offset moves only with our writes.
    interval = 1.0
    c.primary.client().config_set("repl-ping-replica-period", 3600)
    proxy, admin = start_proxy(make_proxy, c.primary, [r1, r2],
                               extra_args=["--health-check-interval", str(interval)])
    writer = proxy.client(timeout=10)
    reader = proxy.client(timeout=10)
    assert writer.set("last:k", "old") is True
    c.wait_replicated()
    wait_serves_reads(admin, r1, 1)
    wait_serves_reads(admin, r2, 1)

    r1.client().execute_command("REPLICAOF", HOST, free_port())  # cut, keeps "old"
    wait_serves_reads(admin, r1, 0, timeout=3 * interval + 2)
    # Right after the proxy's next look at the primary (it sees the offset r1 has):
    calls, _ = proxy_info_probes(c.primary, 0)
    deadline = time.monotonic() + 3 * interval * SLOWDOWN
    while time.monotonic() < deadline:
        calls, probes = proxy_info_probes(c.primary, calls)
        if probes > 0:
            break
        time.sleep(0.005)
    assert probes > 0, "the proxy did not probe the primary"
    t0 = time.monotonic()
    assert writer.set("last:k", "new") is True
    wait_offset(c, [r2])
    c.primary.kill9()
    assert time.monotonic() - t0 < interval / 2, "too slow: the proxy may have looked again"
    assert r1.client().get("last:k") == b"old" and r2.client().get("last:k") == b"new"

    # Primary gone: reads go on, and none returns the value the write replaced.
    tally = Tally()
    end = time.monotonic() + 3 * interval + 1.0 * SLOWDOWN
    n = 0
    while time.monotonic() < end and n < 2000:
        for who, cl in (("writer", writer), ("reader", reader)):
            n += 1
            try:
                tally.check(f"GET last:k ({who}, {time.monotonic() - t0:.2f}s after the write)",
                            cl.get("last:k"), b"new")
            except Exception as exc:  # noqa: BLE001
                tally.errors.append((who, repr(exc)))
        time.sleep(0.01)
    print("primary lost after a write:", tally, replica_metrics(admin, r1),
          replica_metrics(admin, r2))
    assert tally.wrong == [], f"stale reads with the primary gone: {tally}"
    assert tally.errors == [], f"errors with the primary gone and a replica up: {tally}"
    assert tally.ops > 0, tally


# -- a read and the client's own later write --------------------------------------------------

def held_writes(admin):
    return metric(metrics(admin), "kompress_writes_held_for_reads_total")


def read_then_write_on_a_stalled_replica(c, proxy, admin, r1, fault, key="order:k",
                                         write_key=None):
    """One connection pipelines GET key, SET write_key 2 while its GET waits on r1, which
    `fault(r1)` stalls or kills right then; returns (GET reply, SET reply)."""
    write_key = write_key or key
    c.primary.client().set(key, "1")
    c.primary.client().set(write_key, "1")
    c.wait_replicated()
    wait_serves_reads(admin, r1, 1)
    before = route(admin, "replica")
    with connect(proxy.port, timeout=30) as s:
        r1.sigstop()  # the GET is sent to it (its health check is not late yet)
        s.sendall(encode_command("GET", key) + encode_command("SET", write_key, "2"))
        fault(r1)
        replies, _ = read_replies(s, 2, timeout=30 * SLOWDOWN)
    assert route(admin, "replica") == before + 1, "the GET did not go to the replica"
    return replies


def test_a_read_never_sees_the_write_its_client_sent_after_it_stalled_replica(fresh_cluster,
                                                                              make_proxy):
    """GET k, SET k 2 in one pipeline; the GET went to a replica that then stops answering,
    so the proxy hands it to the primary. Sent there after the SET had run, it read 2: a
    value its client had not written yet when it asked (Redis answers 1). The SET now waits
    until the read before it is answered."""
    c = fresh_cluster
    r1 = c.replicas[0]
    proxy, admin = start_proxy(make_proxy, c.primary, [r1])

    resume = threading.Timer(3.0 * SLOWDOWN, r1.sigcont)
    # Stopped past the time its reads are handed to the primary, then resumed.
    get, set_ = read_then_write_on_a_stalled_replica(c, proxy, admin, r1,
                                                     lambda r: resume.start())
    resume.cancel()
    r1.sigcont()
    assert get == b"$1\r\n1\r\n", f"GET sent before SET k 2 read {get!r}"
    assert set_ == b"+OK\r\n", set_
    assert c.primary.client().get("order:k") == b"2"
    assert held_writes(admin) >= 1


def test_a_read_never_sees_the_write_its_client_sent_after_it_killed_replica(fresh_cluster,
                                                                             make_proxy):
    """The same with the replica killed while the GET waits on it: the GET runs again on the
    primary, before the SET."""
    c = fresh_cluster
    r1 = c.replicas[0]
    proxy, admin = start_proxy(make_proxy, c.primary, [r1])

    def kill(r):
        time.sleep(0.1)  # the proxy has sent the GET to it, and the SET to the primary
        r.kill9()

    get, set_ = read_then_write_on_a_stalled_replica(c, proxy, admin, r1, kill)
    assert get == b"$1\r\n1\r\n", f"GET sent before SET k 2 read {get!r}"
    assert set_ == b"+OK\r\n", set_
    assert c.primary.client().get("order:k") == b"2"


def test_a_write_to_another_key_does_not_wait_for_a_read(fresh_cluster, make_proxy):
    """Only a write that may touch the read's key waits: GET a, SET b goes to the primary at
    once while the GET waits on a stalled replica."""
    c = fresh_cluster
    r1 = c.replicas[0]
    # Probes 1 s apart: the stopped replica keeps the GET for the whole stop.
    proxy, admin = start_proxy(make_proxy, c.primary, [r1],
                               extra_args=["--health-check-interval", "1", "--timeout", "10"])
    seen = []

    def stall(r):
        seen.append(wait_until(lambda: c.primary.client().get("order:b") == b"2",
                               3.0 * SLOWDOWN, interval=0.01, what="SET order:b on the primary"))
        r.sigcont()

    get, set_ = read_then_write_on_a_stalled_replica(c, proxy, admin, r1, stall,
                                                     key="order:a", write_key="order:b")
    assert get == b"$1\r\n1\r\n" and set_ == b"+OK\r\n", (get, set_)
    assert held_writes(admin) == 0


def test_a_stalled_replica_serves_nothing_older_than_the_lag_bound(fresh_cluster, make_proxy):
    """A replica stopped for 4 s while the primary takes writes applies nothing meanwhile, and
    when it goes on it works through its backlog while it answers. Judged as of when its
    health check was asked (just before the stop) it looked current and served reads 2-3 s
    old (max_replica_lag is 1 s). Now it is judged as of its answer, and while silent as far
    behind as the primary has moved since: no read is older than the bound."""
    c = fresh_cluster
    r1 = c.replicas[0]
    # The default timeout (5 s): with the suite's 1 s the replica is marked down first.
    proxy, admin = start_proxy(make_proxy, c.primary, [r1], extra_args=["--timeout", "5"])
    key = "stall:counter"
    c.primary.client().set(key, 0)
    c.wait_replicated()
    wait_serves_reads(admin, r1, 1)
    acked = []  # (time acknowledged, value)
    reads = []  # (time sent, value)
    stop = threading.Event()

    def writer():
        cl = proxy.client(timeout=30)
        filler = "f" * 20000  # a backlog for the replica to work through
        while not stop.is_set():
            cl.set("stall:filler", filler)
            acked.append((time.monotonic(), cl.incr(key)))
            time.sleep(0.002)

    def reader():
        cl = proxy.client(timeout=30)
        while not stop.is_set():
            t = time.monotonic()
            reads.append((t, int(cl.get(key))))
            time.sleep(0.002)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                  for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        r1.sigstop()
        time.sleep(4.0)
        r1.sigcont()
        t_cont = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    # A read sent at t may miss what was acknowledged after t - bound: max_replica_lag (1 s),
    # one probe interval to see it, and slack for this machine.
    bound = 1.0 + 2 * INTERVAL_S + 0.3 * SLOWDOWN
    times = [a for a, _ in acked]
    stale = []
    for t, got in reads:
        i = bisect.bisect_right(times, t - bound)
        if i > 0 and got < acked[i - 1][1]:
            stale.append((round(t - t_cont, 3), got, acked[i - 1][1]))
    print(f"{len(reads)} reads, {len(acked)} writes; stale beyond {bound:.2f}s: {stale[:5]}")
    assert len(reads) > 100 and len(acked) > 100
    assert stale == [], f"{len(stale)} reads older than {bound:.2f}s (s after SIGCONT, got, " \
                        f"acknowledged by then): {stale[:5]}"
    assert serves_reads(admin, r1) == 1  # caught up, it serves again
