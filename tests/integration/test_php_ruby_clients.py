"""PHP and Ruby applications through the proxy: phpredis (Debian's php-redis) and redis-rb
(Debian's ruby-redis) run the scenarios of php/clients.php and ruby/clients.rb, the same
scenarios with the same results. A direct connection to the primary is the reference for
every answer; where a read ran is read from the servers' INFO commandstats; under a replica
fault every answer is checked (a stale or wrong one is a failure, as an error is).

scripts/test.sh installs php-cli, php-redis and ruby-redis.
"""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from fixtures import wait_until
# The module-scoped proxy and the helpers of the Node.js client tests (shared, not copied).
from test_clients import (WAIT, _seed_node_data, kp, moved, run_client,  # noqa: F401
                          start_proxy, stats)

HERE = Path(__file__).resolve().parent
CLIENTS = {"php": ("php", HERE / "php" / "clients.php"),
           "ruby": ("ruby", HERE / "ruby" / "clients.rb")}
LANGS = sorted(CLIENTS)


def run(lang, scenario, args, cluster=None, on_ready=None):
    interpreter, script = CLIENTS[lang]
    exe = shutil.which(interpreter)
    if exe is None:
        pytest.fail(f"{interpreter} not found: scripts/test.sh installs php-cli, php-redis and "
                    "ruby-redis", pytrace=False)
    return run_client([exe, str(script)], script.parent, scenario, args, cluster, on_ready)


def clear(cluster, *patterns):
    for db in range(16):
        c = cluster.primary.client(db=db)
        for pattern in patterns:
            keys = c.keys(pattern)
            if keys:
                c.delete(*keys)
    cluster.wait_replicated()


@pytest.mark.parametrize("lang", LANGS)
def test_reads_from_replicas_with_a_selected_database(cluster, kp, lang):  # noqa: F811
    """A client that SELECTs database 3 on connect and only reads: the same answers as the
    same client connected to Redis directly, and every read after its first ran on a
    replica."""
    db, n = 3, 10
    keys = _seed_node_data(cluster, db, f"pr:{lang}")
    ref = run(lang, "read", dict(keys, proxy=cluster.primary.port, db=db, n=n))
    before = {}
    out = run(lang, "read", dict(keys, proxy=kp.port, db=db, n=n), cluster,
              on_ready=lambda: before.update(stats(cluster)))
    after = stats(cluster)
    assert out == ref
    assert out["get"] == [f"hello-db{db}"] * n
    assert out["hgetall"][0] == {"a": "1", "b": "two", "db": str(db)}
    assert out["mget"] == [f"hello-db{db}", None, f"hello-db{db}"] or \
        out["mget"] == [f"hello-db{db}", False, f"hello-db{db}"]  # phpredis: a nil is false
    reads = {"get": n + 1, "hgetall": n, "zscore": 1, "smembers": 1, "mget": 1}
    for cmd, count in reads.items():
        assert moved(before, after, [cmd]) == (0, count), \
            f"{cmd}: (primary, replicas) calls {moved(before, after, [cmd])}, want (0, {count})"


@pytest.mark.parametrize("lang", LANGS)
def test_writes_pipelines_transactions_and_large_values(cluster, kp, lang):  # noqa: F811
    """Writes and read-backs, a pipeline of 200 SETs and 200 GETs, MULTI/EXEC, WATCH aborted
    by another client's write, EVAL, a 3 MB value, SCAN, BLPOP (served and timed out),
    unknown-command and WRONGTYPE errors: the same answers as directly against Redis (the key
    prefix aside), and the writes are in database 3 only."""
    db = 3
    prefixes = {"direct": f"pw:{lang}:direct", "proxy": f"pw:{lang}:proxy"}
    clear(cluster, f"pw:{lang}:*")
    ref = run(lang, "write", {"proxy": cluster.primary.port, "db": db,
                              "prefix": prefixes["direct"]})
    out = run(lang, "write", {"proxy": kp.port, "db": db, "prefix": prefixes["proxy"]})
    assert json.loads(json.dumps(ref).replace(prefixes["direct"], prefixes["proxy"])) == out
    assert out["many"] == [f"m{i}" for i in range(200)] and out["pipeline_sets"] == 200
    assert out["big"] == [3 * 1024 * 1024, True]
    assert out["watch_value"] == "changed"
    assert len(out["scan"]) == 111  # m1, m10..m19, m100..m199
    in_db = cluster.primary.client(db=db)
    assert sorted(in_db.keys(prefixes["proxy"] + ":*")) == \
        sorted(k.replace(prefixes["direct"].encode(), prefixes["proxy"].encode())
               for k in in_db.keys(prefixes["direct"] + ":*"))
    assert len(in_db.get(prefixes["proxy"] + ":big")) == 3 * 1024 * 1024
    assert cluster.primary.client(db=0).keys(prefixes["proxy"] + ":*") == []


@pytest.mark.parametrize("lang", LANGS)
def test_pubsub_then_reads_on_replicas(cluster, kp, lang):  # noqa: F811
    """Subscribe through the proxy; 300 messages published on the primary arrive in order;
    the client unsubscribes from inside its message loop, and its reads on the same
    connection afterwards run on the replicas (it left the dedicated connection)."""
    db, n, reads_after = 3, 300, 10
    keys = _seed_node_data(cluster, db, f"pp:{lang}")
    channel = f"pp:{lang}:news"
    publisher = cluster.primary.client()
    problems = []

    def publish():
        try:
            wait_until(lambda: publisher.pubsub_numsub(channel)[0][1] >= 1, WAIT,
                       what="the subscription on the primary")
            for i in range(n):
                publisher.publish(channel, f"msg-{i}")
            publisher.publish(channel, "stop")
        except Exception as exc:  # noqa: BLE001
            problems.append(exc)
    t = threading.Thread(target=publish)
    t.start()
    before = {}
    try:
        out = run(lang, "pubsub", dict(keys, proxy=kp.port, db=db, channel=channel,
                                       reads_after=reads_after), cluster,
                  on_ready=lambda: before.update(stats(cluster)))
    finally:
        t.join(WAIT + 10)
    after = stats(cluster)
    assert not problems, problems
    assert out["got"] == [[channel, f"msg-{i}"] for i in range(n)]
    assert out["after"] == [f"hello-db{db}"] * reads_after
    assert publisher.pubsub_numsub(channel)[0][1] == 0, "the subscription outlived UNSUBSCRIBE"
    assert moved(before, after, ["get"]) == (0, reads_after), \
        f"GETs after unsubscribing: (primary, replicas) {moved(before, after, ['get'])}"


@pytest.mark.parametrize("lang", LANGS)
def test_reads_stay_right_while_replicas_fail(fresh_cluster, make_proxy, lang):
    """The client reads one key for 4 s, checking every answer, while one replica is stopped
    (SIGSTOP: it hangs) and the other is killed (SIGKILL): no error, no wrong answer, and the
    reads went on at the primary."""
    cluster, db, value = fresh_cluster, 2, f"steady-{lang}"
    key = f"pf:{lang}"
    cluster.primary.client(db=db).set(key, value)
    cluster.wait_replicated()
    p = start_proxy(make_proxy, cluster)
    before = {}

    def fault():
        before.update(stats(cluster))
        cluster.replicas[0].sigstop()
        cluster.replicas[1].kill9()
    started = time.monotonic()
    out = run(lang, "failover", {"proxy": p.port, "db": db, "str": key, "value": value,
                                 "seconds": 4}, cluster, on_ready=fault)
    assert out["errors"] == [] and out["wrong"] == [], out
    # Well over what the stalled replica's detection costs (one --timeout, 1 s) would leave.
    assert out["reads"] >= 100, out
    on_primary = cluster.primary.calls("get") - before["primary"].get("get", 0)
    assert on_primary >= out["reads"] // 2, \
        f"{on_primary} of {out['reads']} reads ran on the primary after the fault"
    assert time.monotonic() - started < 4 + WAIT + 30
