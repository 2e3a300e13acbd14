"""Redis ACL users through the proxy (auth_mode passthrough): Redis itself checks each
client's AUTH, and the client's commands then run on connections authenticated as that user,
on the primary and on the replicas, so Redis's own rules and error texts apply. Users
interleaving on one worker never borrow each other's rights."""

import threading

import pytest
import redis

from fixtures import (SLOWDOWN, connect, encode_command, read_replies, read_until_closed,
                      run_proxy_once, wait_until)

USERS = {
    # name: (password, ACL rules)
    "reader": ("r-pass", ["~*", "+@read", "+@connection"]),
    "writer": ("w-pass", ["~*", "+@all"]),
    "scoped": ("s-pass", ["~own:*", "+@all"]),
}


@pytest.fixture
def acl_cluster(fresh_cluster):
    # ACL users are per server (SETUSER is not replicated): defined on every node, as an
    # operator would for replicas that serve reads.
    for server in fresh_cluster.servers:
        client = server.client()
        for name, (password, rules) in USERS.items():
            client.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules)
    return fresh_cluster


def passthrough_proxy(make_proxy, c, *extra):
    return make_proxy(c.primary.port, [r.port for r in c.replicas],
                      extra_args=["--workers", "1", "--auth-mode", "passthrough", *extra])


def test_acl_users_are_checked_and_applied_by_redis(acl_cluster, make_proxy):
    c = acl_cluster
    p = passthrough_proxy(make_proxy, c)
    c.primary.client().set("k", "v")
    c.primary.client().set("own:k", "mine")
    c.wait_replicated()

    reader = p.client(username="reader", password="r-pass")
    writer = p.client(username="writer", password="w-pass")
    scoped = p.client(username="scoped", password="s-pass")
    assert reader.get("k") == b"v"
    # Redis's own refusal, word for word as a direct connection gets it.
    direct = c.primary.client(username="reader", password="r-pass")
    with pytest.raises(redis.exceptions.NoPermissionError) as via_proxy:
        reader.set("k", "x")
    with pytest.raises(redis.exceptions.NoPermissionError) as via_redis:
        direct.set("k", "x")
    assert str(via_proxy.value) == str(via_redis.value)
    assert writer.set("k2", "w") is True and writer.get("k2") == b"w"
    assert scoped.get("own:k") == b"mine"
    with pytest.raises(redis.exceptions.NoPermissionError):
        scoped.get("k")  # key outside its pattern: Redis says so, also on a replica

    # Wrong password: Redis's WRONGPASS, and the client stays unauthenticated as before.
    raw = connect(p.port)
    raw.sendall(encode_command("AUTH", "reader", "nope") + encode_command("AUTH", "reader", "r-pass")
                + encode_command("GET", "k"))
    replies, _ = read_replies(raw, 3)
    assert replies == [b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                       b"+OK\r\n", b"$1\r\nv\r\n"], replies
    raw.close()

    # Reads of an ACL user go to the replicas like anyone's.
    before = sum(r.calls("get") for r in c.replicas)
    fresh_reader = p.client(username="reader", password="r-pass")
    for _ in range(20):
        assert fresh_reader.get("k") == b"v"
    assert sum(r.calls("get") for r in c.replicas) >= before + 20
    assert "marked down" not in p.stderr()
    assert "r-pass" not in p.stderr() and "w-pass" not in p.stderr()


def test_users_interleaving_on_one_worker_never_borrow_rights(acl_cluster, make_proxy):
    c = acl_cluster
    p = passthrough_proxy(make_proxy, c)
    c.primary.client().set("k", "v")
    c.wait_replicated()
    wrong = []

    def run(user, password, i):
        client = p.client(username=user, password=password)
        for n in range(150):
            try:
                client.set(f"t:{i}:{n}", n)
                wrote = True
            except redis.exceptions.NoPermissionError:
                wrote = False
            if wrote != (user == "writer"):
                wrong.append((user, n, "write allowed" if wrote else "write refused"))
            if client.get("k") != b"v":
                wrong.append((user, n, "read"))

    threads = [threading.Thread(target=run, args=(u, USERS[u][0], i))
               for i, u in enumerate(["reader", "writer", "reader", "writer", "reader"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60 * SLOWDOWN)
    assert wrong == [], wrong[:5]
    assert "marked down" not in p.stderr()


def test_hello_auth_and_unauthenticated_clients(acl_cluster, make_proxy):
    c = acl_cluster
    # The proxy's own connections use an admin user; the default user needs a password, so a
    # client that has not authenticated must not act with the proxy's rights.
    for server in c.servers:
        server.client().execute_command("ACL", "SETUSER", "proxyadmin", "on", ">adm", "~*",
                                        "+@all")
    p = passthrough_proxy(make_proxy, c, "--backend-username", "proxyadmin",
                          "--backend-password", "adm")
    raw = connect(p.port)
    raw.sendall(encode_command("GET", "k"))
    assert read_replies(raw, 1)[0][0].startswith(b"-NOAUTH"), "acted without authenticating"
    raw.sendall(encode_command("HELLO", "3", "AUTH", "writer", "w-pass", "SETNAME", "app")
                + encode_command("SET", "h:k", "1") + encode_command("CLIENT", "GETNAME"))
    replies, _ = read_replies(raw, 3)
    assert replies[0].startswith(b"%7\r\n"), replies[0][:40]
    assert replies[1:] == [b"+OK\r\n", b"$3\r\napp\r\n"], replies
    raw.sendall(encode_command("HELLO", "2", "AUTH", "reader", "bad"))
    assert read_replies(raw, 1)[0] == [
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"]
    # Still the writer.
    raw.sendall(encode_command("SET", "h:k", "2"))
    assert read_replies(raw, 1)[0] == [b"+OK\r\n"]
    # RESET: back to unauthenticated.
    raw.sendall(encode_command("RESET") + encode_command("GET", "k"))
    replies, _ = read_replies(raw, 2)
    assert replies[0] == b"+RESET\r\n" and replies[1].startswith(b"-NOAUTH"), replies
    raw.close()
    wait_until(lambda: c.primary.client().get("h:k") == b"2", 5, what="the writer's SET")


def test_passthrough_conflicts_with_requirepass():
    r = run_proxy_once(["--auth-mode", "passthrough", "--requirepass", "x", "--check-config"])
    assert r.returncode == 2 and b"requirepass" in r.stderr and b"passthrough" in r.stderr, r
    r = run_proxy_once(["--auth-mode", "sometimes", "--check-config"])
    assert r.returncode == 2 and b"auth_mode" in r.stderr, r


def test_wrong_password_flood_does_not_lock_out_real_users(acl_cluster, make_proxy):
    """Thousands of wrong passwords (each a new pair the proxy must ask Redis about) never
    keep a user with the right one out."""
    p = passthrough_proxy(make_proxy, acl_cluster)
    raw = connect(p.port, timeout=60)
    n = 5000
    raw.sendall(b"".join(encode_command("AUTH", "reader", f"guess{i}") for i in range(n)))
    replies, _ = read_replies(raw, n, timeout=60)
    assert all(r.startswith(b"-WRONGPASS") for r in replies), {r[:40] for r in replies}
    raw.close()
    ok = p.client(username="reader", password="r-pass")
    assert ok.ping() is True


def test_a_refused_select_never_lets_the_requests_behind_it_run_in_database_0(acl_cluster,
                                                                              make_proxy):
    """A user whose ACL lacks SELECT: the proxy accepts `SELECT 5` (the index is valid), and
    the connection it opens for that user and database is refused its SELECT. Nothing the
    client sent may run on that connection in database 0 instead: the proxy sends the
    connection's handshake alone and the requests only once it is accepted. (Pipelined with
    it, the SET below was stored in database 0 and the client was told it "may or may not
    have been applied".)"""
    c = acl_cluster
    for server in c.servers:
        server.client().execute_command("ACL", "SETUSER", "noselect", "on", ">n-pass", "~*",
                                        "+@all", "-select")
    p = passthrough_proxy(make_proxy, c)
    s = connect(p.port)
    s.sendall(encode_command("AUTH", "noselect", "n-pass") + encode_command("SELECT", "5") +
              encode_command("SET", "wrong:db", "1") + encode_command("INCR", "wrong:n") +
              encode_command("GET", "wrong:db"))
    replies, _ = read_replies(s, 5, timeout=10 * SLOWDOWN)
    assert replies[:2] == [b"+OK\r\n", b"+OK\r\n"], replies
    for r in replies[2:]:
        assert r.startswith(b"-ERR kompress: SELECT refused: NOPERM"), replies
    s.close()
    for db in (0, 5):
        d = c.primary.client(db=db)
        assert d.get("wrong:db") is None and d.get("wrong:n") is None, db


def test_a_password_changed_meanwhile_never_lets_requests_run_as_the_default_user(acl_cluster,
                                                                                   make_proxy):
    """A user's password is changed after the client authenticated; the client then needs a
    new connection (another database). Its AUTH there is refused, and what the client sent
    behind it must not run as the default user (with every right) instead: it gets Redis's
    WRONGPASS and nothing is stored. AUTH with the new password works at once."""
    c = acl_cluster
    p = passthrough_proxy(make_proxy, c)
    s = connect(p.port)
    s.sendall(encode_command("AUTH", "scoped", "s-pass") + encode_command("SET", "own:a", "1"))
    assert read_replies(s, 2)[0] == [b"+OK\r\n", b"+OK\r\n"]
    for server in c.servers:
        server.client().execute_command("ACL", "SETUSER", "scoped", "resetpass", ">s-new")
    s.sendall(encode_command("SELECT", "2") + encode_command("SET", "outside:scope", "1") +
              encode_command("SET", "own:b", "1"))
    replies, _ = read_replies(s, 3, timeout=10 * SLOWDOWN)
    assert replies[0] == b"+OK\r\n", replies
    for r in replies[1:]:
        assert r.startswith(b"-WRONGPASS"), replies
    s.sendall(encode_command("AUTH", "scoped", "s-new") + encode_command("SET", "own:c", "1"))
    assert read_replies(s, 2, timeout=10 * SLOWDOWN)[0] == [b"+OK\r\n", b"+OK\r\n"]
    s.close()
    d = c.primary.client(db=2)
    assert d.get("outside:scope") is None and d.get("own:b") is None
    assert d.get("own:c") == b"1"


def test_a_password_changed_meanwhile_never_lets_a_transaction_run_as_the_default_user(
        acl_cluster, make_proxy):
    """The same on a connection of the client's own (MULTI): its AUTH as the user is refused,
    and neither the transaction nor anything after it runs as the default user."""
    c = acl_cluster
    p = passthrough_proxy(make_proxy, c)
    s = connect(p.port)
    s.sendall(encode_command("AUTH", "scoped", "s-pass") + encode_command("SELECT", "4"))
    assert read_replies(s, 2)[0] == [b"+OK\r\n", b"+OK\r\n"]
    for server in c.servers:
        server.client().execute_command("ACL", "SETUSER", "scoped", "resetpass", ">s-new")
    s.sendall(encode_command("MULTI") + encode_command("SET", "outside:scope", "1") +
              encode_command("EXEC"))
    data, _ = read_until_closed(s, timeout=10 * SLOWDOWN)
    assert b"WRONGPASS" in data, data
    assert b"+QUEUED" not in data and b"+OK" not in data, data
    s.close()
    for db in (0, 4):
        assert c.primary.client(db=db).get("outside:scope") is None, db


def test_auth_with_only_a_password_is_asked_of_redis_in_that_form(acl_cluster, make_proxy):
    """AUTH <password> (no user) means the default user, but with a default user that has no
    password Redis refuses it ("called without any password configured"), where AUTH default
    <anything> succeeds. The proxy asked the second and answered +OK, switching a client
    logged in as another user to the default one. The same session through the proxy and
    directly must say the same and leave the client the same user."""
    c = acl_cluster
    p = passthrough_proxy(make_proxy, c)
    script = (encode_command("AUTH", "writer", "w-pass") + encode_command("ACL", "WHOAMI") +
              encode_command("AUTH", "anything") + encode_command("ACL", "WHOAMI"))
    answers = []
    for port in (c.primary.port, p.port):
        with connect(port) as s:
            s.sendall(script)
            replies, _ = read_replies(s, 4, timeout=10 * SLOWDOWN)
        answers.append(replies)
    direct, proxied = answers
    assert direct[3] == b"$6\r\nwriter\r\n" and direct[2].startswith(b"-ERR AUTH"), direct
    assert proxied == direct, proxied
