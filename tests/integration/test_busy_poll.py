"""busy_poll_us: after moving requests or replies a worker polls without sleeping for that
long, so a request arriving within it is not held up by a wake-up. What a user relies on:
answers are the same; the proxy spins (spends CPU) while traffic keeps coming and sleeps once
it stops, so an idle proxy costs nothing; the default (0) never spins; SIGHUP turns it on and
off. CPU is read from /proc/PID/stat, with wide margins: these are not timing tests."""

import os
import signal
import time

from fixtures import HOST, SLOWDOWN, Proxy, free_port, wait_until

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sparse_traffic(client, tag, seconds, gap=0.05):
    """A SET and a GET of the same key every `gap` s for `seconds`; returns wrong answers."""
    wrong = []
    i = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        key, value = f"bp:{tag}:{i % 20}", f"{tag}-{i}"
        if client.set(key, value) is not True:
            wrong.append(("SET", key))
        got = client.get(key)
        if got != value.encode():
            wrong.append((key, got, value))
        i += 1
        time.sleep(gap)
    assert i > 5, i
    return wrong


def cpu_during(pid, fn):
    before = cpu_seconds(pid)
    result = fn()
    return cpu_seconds(pid) - before, result


def write_config(path, port, cluster, busy_poll_us):
    path.write_text(f"listen: {HOST}:{port}\n"
                    f"primary: {HOST}:{cluster.primary.port}\n"
                    f"replicas: [{', '.join(f'{HOST}:{r.port}' for r in cluster.replicas)}]\n"
                    # One worker: all of the traffic lands on the thread that spins.
                    "workers: 1\n"
                    f"busy_poll_us: {busy_poll_us}\n")


def test_busy_poll_spins_while_traffic_comes_and_sleeps_after(cluster, tmp_path):
    cfg = tmp_path / "busy.yaml"
    proxy = Proxy(tmp_path, extra_args=["--config", str(cfg)], use_base_args=False)
    i = proxy.args.index("--listen")
    del proxy.args[i:i + 2]
    write_config(cfg, proxy.port, cluster, 0)
    proxy.start()
    try:
        pid = proxy.proc.pid
        c = proxy.client()
        # Default 0: a request every 50 ms costs next to nothing.
        off, wrong = cpu_during(pid, lambda: sparse_traffic(c, "off", 1.5))
        assert wrong == []
        assert off < 0.3, f"busy_poll_us 0 spent {off:.2f} s of CPU on sparse traffic"

        # 100 ms of busy polling after each exchange: with a request every 50 ms the worker
        # never sleeps, so it spends about as much CPU as time passes.
        write_config(cfg, proxy.port, cluster, 100000)
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded: busy_poll_us" in proxy.stderr(),
                   5 * SLOWDOWN, what="the reload of busy_poll_us")
        on, wrong = cpu_during(pid, lambda: sparse_traffic(c, "on", 1.5))
        assert wrong == []
        assert on > 0.4, f"busy_poll_us 100000 spent only {on:.2f} s of CPU in 1.5 s"
        assert on > 2 * off, (on, off)

        # Traffic stops: past the window the worker sleeps again.
        time.sleep(0.3)
        idle, _ = cpu_during(pid, lambda: time.sleep(1.5))
        assert idle < 0.15, f"an idle proxy with busy_poll_us spent {idle:.2f} s of CPU"

        # Back to 0 by reload: sparse traffic is cheap again.
        write_config(cfg, proxy.port, cluster, 0)
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: proxy.stderr().count("configuration reloaded: busy_poll_us") == 2,
                   5 * SLOWDOWN, what="the second reload")
        again, wrong = cpu_during(pid, lambda: sparse_traffic(c, "again", 1.0))
        assert wrong == []
        assert again < 0.3, f"busy_poll_us back to 0 still spent {again:.2f} s"
        assert proxy.alive
    finally:
        proxy.stop()


def test_busy_poll_pipelines_and_many_clients_answer_as_without(cluster, make_proxy):
    """Zero-timeout polls change when the worker looks, never what it answers: pipelined
    batches from several clients at once come back complete and in order."""
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--workers", "1", "--busy-poll-us", "1000"])
    clients = [p.client() for _ in range(8)]
    for n, c in enumerate(clients):
        pipe = c.pipeline(transaction=False)
        for i in range(300):
            pipe.set(f"bp:pipe:{n}:{i}", f"{n}-{i}")
            pipe.get(f"bp:pipe:{n}:{i}")
            pipe.incr(f"bp:pipe:{n}:ctr")
        got = pipe.execute()
        want = []
        for i in range(300):
            want += [True, f"{n}-{i}".encode(), i + 1]
        assert got == want, n
    assert clients[0].get("bp:pipe:7:299") == b"7-299"
