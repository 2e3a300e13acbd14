"""Loopback TCP: the proxy's client connections and its request connections to backends on
this host get the congestion control `loopback_tcp_congestion` names (default reno), read
off the kernel with `ss -tinp`; `system` leaves the kernel's default; a name the kernel
refuses is logged once and the proxy serves as before."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from fixtures import connect, encode_command, read_replies, run_proxy_once, wait_until

SYSCTL = Path("/proc/sys/net/ipv4")


def kernel_congestion():
    """The system default and the algorithms this process may set."""
    default = (SYSCTL / "tcp_congestion_control").read_text().strip()
    available = (SYSCTL / "tcp_available_congestion_control").read_text().split()
    # Without CAP_NET_ADMIN (a container's root has none) only the allowed ones can be set.
    allowed = set((SYSCTL / "tcp_allowed_congestion_control").read_text().split())
    return default, [a for a in available if a in allowed or a == default]


def other_than_default():
    default, available = kernel_congestion()
    others = [a for a in available if a != default]
    if not others:
        pytest.skip(f"the kernel offers only {default}: nothing to tell apart")
    return default, ("reno" if "reno" in others else others[0])


def proxy_sockets(pid):
    """(local port, peer port, congestion control) of every established TCP socket of `pid`."""
    known = set((SYSCTL / "tcp_available_congestion_control").read_text().split())
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    found = []
    head = None
    for line in out.splitlines():
        if not line[:1].isspace():
            head = line
            continue
        if head is None or f"pid={pid}," not in head:
            continue
        fields = head.split()
        local, peer = fields[2], fields[3]
        algo = next((w for w in line.split() if w in known), None)
        found.append((int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1]), algo))
        head = None
    return found


def ask(sock, *commands):
    """Sends the commands on `sock` and returns their raw replies."""
    sock.sendall(b"".join(encode_command(*c) for c in commands))
    replies, _ = read_replies(sock, len(commands))
    return replies


def client_side(proxy, sock):
    """The congestion control of the proxy's end of `sock`'s connection."""
    port = sock.getsockname()[1]
    return [s[2] for s in proxy_sockets(proxy.proc.pid) if s[0] == proxy.port and s[1] == port]


def test_default_gives_loopback_connections_reno(cluster, make_proxy):
    default, _ = kernel_congestion()
    if default == "reno":
        pytest.skip("the kernel's default is reno already: the default changes nothing here")
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--workers", "1"])
    c = connect(p.port)
    assert ask(c, ("SET", "lt:k", "v")) == [b"+OK\r\n"]
    assert client_side(p, c) == ["reno"], proxy_sockets(p.proc.pid)
    # A client that wrote nothing reads from a replica (read-your-writes sends the writer's
    # own reads to the primary until the replicas have its write).
    reader = connect(p.port)
    assert ask(reader, ("GET", "lt:k")) in ([b"$1\r\nv\r\n"], [b"$-1\r\n"])
    backend_ports = {cluster.primary.port} | {r.port for r in cluster.replicas}
    to_backends = [s for s in proxy_sockets(p.proc.pid) if s[1] in backend_ports]
    # The connections that carried the SET and the GET; the health probes keep the default.
    assert any(s[1] == cluster.primary.port and s[2] == "reno" for s in to_backends), to_backends
    assert any(s[1] != cluster.primary.port and s[2] == "reno" for s in to_backends), to_backends


def test_named_algorithm_and_system(cluster, make_proxy):
    default, chosen = other_than_default()
    named = make_proxy(cluster.primary.port, [], name="named",
                       extra_args=["--loopback-tcp-congestion", chosen])
    c = connect(named.port)
    assert ask(c, ("SET", "lt:n", "1")) == [b"+OK\r\n"]
    assert client_side(named, c) == [chosen]
    system = make_proxy(cluster.primary.port, [], name="system",
                        env={"KOMPRESS_LOOPBACK_TCP_CONGESTION": "system"})
    c2 = connect(system.port)
    assert ask(c2, ("SET", "lt:s", "1")) == [b"+OK\r\n"]
    assert client_side(system, c2) == [default]
    assert all(s[2] == default for s in proxy_sockets(system.proc.pid)), \
        proxy_sockets(system.proc.pid)


def test_refused_name_is_logged_once_and_changes_nothing(cluster, make_proxy, tmp_path):
    default, _ = kernel_congestion()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text("loopback_tcp_congestion: nosuchcc\n")
    p = make_proxy(cluster.primary.port, [], extra_args=["--config", str(cfg)])
    clients = [connect(p.port) for _ in range(5)]
    for i, c in enumerate(clients):
        assert ask(c, ("SET", f"lt:r{i}", str(i)), ("GET", f"lt:r{i}")) == \
            [b"+OK\r\n", f"$1\r\n{i}\r\n".encode()]
    assert client_side(p, clients[0]) == [default]
    wait_until(lambda: "loopback_tcp_congestion" in p.stderr(), 5, what="the warning")
    log = p.stderr()
    assert log.count("loopback_tcp_congestion: the kernel refused 'nosuchcc'") == 1, log
    assert p.alive
    # A reload to another refused name says so again, once; new clients are still served.
    cfg.write_text("loopback_tcp_congestion: nosuchcc2\n")
    os.kill(p.proc.pid, signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in p.stderr(), 5, what="the reload")
    late = [connect(p.port) for _ in range(3)]
    for c in late:
        assert ask(c, ("GET", "lt:r0")) == [b"$1\r\n0\r\n"]
    wait_until(lambda: "refused 'nosuchcc2'" in p.stderr(), 5, what="the second warning")
    log = p.stderr()
    assert log.count("loopback_tcp_congestion: the kernel refused 'nosuchcc2'") == 1, log
    assert log.count("loopback_tcp_congestion: the kernel refused 'nosuchcc'") == 1, log


def test_bad_name_is_refused_at_start():
    res = run_proxy_once(["--loopback-tcp-congestion", "Not A Name"])
    assert res.returncode == 2
    assert b'config: loopback_tcp_congestion: "Not A Name"' in res.stderr, res.stderr
