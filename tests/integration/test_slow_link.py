"""A slow network path between the proxy and a real primary: large values take longer to
send or receive than `timeout`, while the server reads and answers all along. The timeout
judges the server, not the link: a request is late only once the server has had all of it
for `timeout`, or when the path stops moving for `timeout`."""

import socket
import threading
import time

from fixtures import HOST, SLOWDOWN, connect, encode_command, read_replies

MB = 1 << 20


class SlowLink:
    """A TCP relay standing for a slow path to a real server (a sidecar in front of a Redis
    in another zone): each connection's bytes are passed on at `rate` bytes/s each way.
    pause() stops passing anything on (a path that stalled); resume() goes on. Its sockets
    buffer little, so the sender's kernel queue shows how far the far end got."""

    CHUNK = 16 * 1024

    def __init__(self, target_port, rate):
        self.target_port = target_port
        self.rate = rate
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.socks = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set before listen(): accepted sockets inherit it, with the window it implies.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.listener.bind((HOST, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection((HOST, self.target_port))
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                self.socks.append(s)
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                self.flowing.wait()
                time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pause(self):
        self.flowing.clear()

    def resume(self):
        self.flowing.set()

    def close(self):
        self.closed = True
        self.flowing.set()
        self.listener.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


# 8 MB/s, a busy 100 Mbit/s path: a 6 MB value takes 0.75 s to cross, against a timeout of
# 0.4 s; both scale together under sanitizers.
RATE = 8 * MB / SLOWDOWN
TIMEOUT_S = 0.4 * SLOWDOWN
VALUE = 6 * MB


def slow_proxy(fresh_cluster, make_proxy):
    link = SlowLink(fresh_cluster.primary.port, RATE)
    proxy = make_proxy(link.port, [], extra_args=["--timeout", str(TIMEOUT_S),
                                                  "--workers", "1"], use_base_args=False)
    return link, proxy


def test_large_set_is_not_late_while_it_is_being_sent(fresh_cluster, make_proxy):
    link, proxy = slow_proxy(fresh_cluster, make_proxy)
    try:
        value = b"s" * VALUE
        c = proxy.client(timeout=30 * SLOWDOWN)
        t0 = time.monotonic()
        assert c.set("slow:set", value) is True
        took = time.monotonic() - t0
        print(f"{VALUE // MB} MB SET over {RATE / MB:.0f} MB/s: {took:.2f} s "
              f"(timeout {TIMEOUT_S} s)")
        # It did take longer than the timeout: otherwise this test shows nothing.
        assert took > TIMEOUT_S
        assert fresh_cluster.primary.client().strlen("slow:set") == VALUE
        # Small requests of other clients meanwhile: answered, after the value (they share
        # its connection), none timed out.
        assert c.get("slow:small") is None
    finally:
        link.close()


def test_large_values_in_a_transaction_are_not_late_while_they_cross(fresh_cluster, make_proxy):
    """A MULTI runs on a connection of its own, judged by its oldest request: the value goes
    out in EXEC's batch and comes back as one frame, each taking longer than the timeout."""
    link, proxy = slow_proxy(fresh_cluster, make_proxy)
    try:
        value = b"m" * VALUE
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
        print(f"{VALUE // MB} MB in a MULTI over {RATE / MB:.0f} MB/s: sent in {sent:.2f} s, "
              f"read back in {got:.2f} s (timeout {TIMEOUT_S} s)")
        assert sent > TIMEOUT_S and got > TIMEOUT_S
        assert replies[:2] == [b"+OK\r\n", b"+QUEUED\r\n"]
        assert replies[2] == b"*1\r\n$%d\r\n" % VALUE + value + b"\r\n"
        s.close()
    finally:
        link.close()


def test_a_path_that_stops_moving_still_times_out(fresh_cluster, make_proxy):
    """The other side of it: once nothing crosses for a whole timeout, the request is late
    (the client hears so), however much of it was sent before."""
    link, proxy = slow_proxy(fresh_cluster, make_proxy)
    try:
        value = b"p" * VALUE
        s = connect(proxy.port, timeout=30 * SLOWDOWN)
        s.sendall(encode_command("SET", "slow:stalled", value))
        time.sleep(0.3 * SLOWDOWN)  # part of it crosses
        link.pause()
        t0 = time.monotonic()
        replies, _ = read_replies(s, 1, timeout=30 * SLOWDOWN)
        waited = time.monotonic() - t0
        print(f"stalled path: error after {waited:.2f} s (timeout {TIMEOUT_S} s)")
        assert replies[0].startswith(b"-ERR kompress: primary did not reply within the timeout")
        assert waited < TIMEOUT_S + 1.0 * SLOWDOWN
        s.close()
    finally:
        link.close()
