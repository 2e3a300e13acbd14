"""A slow network path between the proxy and a real primary: large values take longer to
send or receive than `timeout`, while the server reads and answers all along. The timeout
judges the server, not the link: a request is late only once the server has had all of it
for `timeout`, or when the path stops moving for `timeout`."""

import threading
import time

import pytest
import redis

from fixtures import (SLOWDOWN, SlowLink, connect, encode_command, read_replies,
                      read_until_closed)

MB = 1 << 20


TIMEOUT_S = 0.4 * SLOWDOWN


def slow_proxy(fresh_cluster, make_proxy, rate):
    """A proxy (one worker, `timeout` 0.4 s) whose primary is behind a path of `rate` bytes/s
    (rates scale down with the timeouts under sanitizers)."""
    link = SlowLink(fresh_cluster.primary.port, rate / SLOWDOWN)
    proxy = make_proxy(link.port, [], extra_args=["--timeout", str(TIMEOUT_S),
                                                  "--workers", "1"], use_base_args=False)
    return link, proxy


# (value, rate): 0.75 s to cross at 8 MB/s, on a connection that leaves the pool with it (as
# large as a client's in-flight bound); 1 s at 3 MB/s, on the shared connection another
# client's GET waits on behind it.
@pytest.mark.parametrize("size,rate", [(6 * MB, 8 * MB), (3 * MB, 3 * MB)],
                         ids=["out-of-pool", "shared"])
def test_large_set_is_not_late_while_it_is_being_sent(fresh_cluster, make_proxy, size, rate):
    link, proxy = slow_proxy(fresh_cluster, make_proxy, rate)
    try:
        proxy.client().set("slow:small", "here")
        value = b"s" * size
        c = proxy.client(timeout=30 * SLOWDOWN)
        other = {}

        def get_meanwhile():
            time.sleep(0.2 * SLOWDOWN)  # the value is crossing by now
            t0 = time.monotonic()
            try:
                other["reply"] = proxy.client(timeout=30 * SLOWDOWN).get("slow:small")
            except redis.RedisError as e:
                other["error"] = str(e)
            other["took"] = time.monotonic() - t0
        t = threading.Thread(target=get_meanwhile)
        t.start()
        t0 = time.monotonic()
        assert c.set("slow:set", value) is True
        took = time.monotonic() - t0
        t.join(30)
        print(f"{size // MB} MB SET over {rate / MB:.0f} MB/s: {took:.2f} s "
              f"(timeout {TIMEOUT_S} s); another client's GET meanwhile: {other}")
        # It did take longer than the timeout: otherwise this test shows nothing.
        assert took > TIMEOUT_S
        assert fresh_cluster.primary.client().strlen("slow:set") == size
        # The other client's GET, sent while the value crossed: its right answer, whether it
        # waited behind the value or went on a fresh connection.
        assert other.get("reply") == b"here", other
    finally:
        link.close()


@pytest.mark.parametrize("size,rate", [(6 * MB, 8 * MB), (int(1.5 * MB), 1 * MB)],
                         ids=["8MB/s", "1MB/s"])
def test_large_values_in_a_transaction_are_not_late_while_they_cross(fresh_cluster, make_proxy,
                                                                     size, rate):
    """A MULTI runs on a connection of its own, judged by its oldest request: the value goes
    out in EXEC's batch and comes back as one frame, each taking longer than the timeout
    (at 1 MB/s the relay's socket takes bytes in bursts, with gaps of a few ticks)."""
    link, proxy = slow_proxy(fresh_cluster, make_proxy, rate)
    try:
        value = b"m" * size
        s = connect(proxy.port, timeout=30 * SLOWDOWN)
        t0 = time.monotonic()
        s.sendall(encode_command("MULTI") + encode_command("SET", "slow:multi", value) +
                  encode_command("EXEC"))
        replies, rest = read_replies(s, 3, timeout=30 * SLOWDOWN)
        sent = time.monotonic() - t0
        assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n"], replies[:3]
        t0 = time.monotonic()
        s.sendall(encode_command("MULTI") + encode_command("GET", "slow:multi") +
                  encode_command("EXEC"))
        replies, _ = read_replies(s, 3, timeout=30 * SLOWDOWN, buf=rest)
        got = time.monotonic() - t0
        print(f"{size / MB:.1f} MB in a MULTI over {rate / MB:.0f} MB/s: sent in {sent:.2f} s, "
              f"read back in {got:.2f} s (timeout {TIMEOUT_S} s)")
        assert sent > TIMEOUT_S and got > TIMEOUT_S
        assert replies[:2] == [b"+OK\r\n", b"+QUEUED\r\n"]
        assert replies[2] == b"*1\r\n$%d\r\n" % size + value + b"\r\n"
        s.close()
    finally:
        link.close()


@pytest.mark.parametrize("pinned", [False, True], ids=["shared", "multi"])
def test_a_path_that_stops_moving_still_times_out(fresh_cluster, make_proxy, pinned):
    """The other side of it: once nothing crosses for a whole timeout, the request is late
    (the client hears so), however much of it was sent before."""
    link, proxy = slow_proxy(fresh_cluster, make_proxy, 8 * MB)
    try:
        value = b"p" * (6 * MB)
        s = connect(proxy.port, timeout=30 * SLOWDOWN)
        want = 1
        if pinned:
            s.sendall(encode_command("MULTI"))
            assert read_replies(s, 1)[0] == [b"+OK\r\n"]
            s.sendall(encode_command("SET", "slow:stalled", value) + encode_command("EXEC"))
            want = 2
        else:
            s.sendall(encode_command("SET", "slow:stalled", value))
        time.sleep(0.3 * SLOWDOWN)  # part of it crosses
        link.pause()
        t0 = time.monotonic()
        if pinned:
            # The session ends: the queued SET's answer may come first, then the error.
            data, _ = read_until_closed(s, timeout=30 * SLOWDOWN)
            waited = time.monotonic() - t0
            assert b"-ERR kompress:" in data and b"no reply within" in data, data[:300]
        else:
            replies, _ = read_replies(s, want, timeout=30 * SLOWDOWN)
            waited = time.monotonic() - t0
            assert replies[0].startswith(
                b"-ERR kompress: primary did not reply within the timeout"), replies
        print(f"stalled path: error after {waited:.2f} s (timeout {TIMEOUT_S} s)")
        assert waited < TIMEOUT_S + 1.0 * SLOWDOWN
        s.close()
    finally:
        link.close()


def test_a_stuck_request_is_not_kept_alive_by_the_bytes_behind_it(fresh_cluster, make_proxy):
    """On a pinned connection the deadline is the oldest request's: a value pipelined behind
    it that is still crossing is no sign of life for it. The server is paused (CLIENT PAUSE:
    it still reads, answers nothing), the client, after WATCH, sends a GET and then a 6 MB
    SET that takes 1.5 s to cross: the GET is late after the timeout, not after the SET."""
    link, proxy = slow_proxy(fresh_cluster, make_proxy, 4 * MB)
    direct = fresh_cluster.primary.client()
    try:
        s = connect(proxy.port, timeout=30 * SLOWDOWN)
        s.sendall(encode_command("WATCH", "slow:watched"))
        assert read_replies(s, 1)[0] == [b"+OK\r\n"]
        # Long enough for the test, short enough to end by itself (CLIENT UNPAUSE would wait
        # for it too).
        direct.execute_command("CLIENT", "PAUSE", str(int(3000 * SLOWDOWN)), "ALL")
        t0 = time.monotonic()
        s.sendall(encode_command("GET", "slow:watched") +
                  encode_command("SET", "slow:behind", b"b" * (6 * MB)))
        data, _ = read_until_closed(s, timeout=30 * SLOWDOWN)
        waited = time.monotonic() - t0
        print(f"paused server, pinned: error after {waited:.2f} s (timeout {TIMEOUT_S} s)")
        assert b"no reply within" in data, data[:300]
        assert waited < TIMEOUT_S + 0.6 * SLOWDOWN, waited
    finally:
        link.close()
