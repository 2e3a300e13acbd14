"""busy_poll_us: after moving requests or replies a worker polls without sleeping for that
long, so a request arriving within it is not held up by a wake-up. What a user relies on:
answers are the same; while traffic keeps coming the worker does not go to sleep between
requests (it spins), once traffic stops it sleeps, so an idle proxy costs nothing; the
default (0) sleeps whenever there is nothing to do; SIGHUP turns it on and off.

Sleeping is read off the worker thread itself (/proc/PID/task/TID/status): every time it
waits in epoll_wait and is woken it counts a voluntary context switch, while a thread that
polls with a zero timeout counts none, however loaded the machine is (preemption counts as
involuntary). CPU time is only used for the idle check, where it does not depend on load."""

import os
import signal
import threading
import time
from pathlib import Path

from fixtures import HOST, SLOWDOWN, Proxy, wait_until

TICK = os.sysconf("SC_CLK_TCK")


def worker_task(pid):
    """/proc path of the proxy's only worker thread (the workers are named kp-worker-N).
    The worker names itself once it runs, which may be after the port accepts connections."""
    def workers():
        return [t for t in Path(f"/proc/{pid}/task").iterdir()
                if (t / "comm").read_text().strip().startswith("kp-worker")]
    wait_until(workers, 5 * SLOWDOWN, what="the worker thread to be named")
    tasks = workers()
    assert len(tasks) == 1, [(t.name, (t / "comm").read_text()) for t in tasks]
    return tasks[0]


def sleeps(task):
    for line in (task / "status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in {task}/status")


def cpu_seconds(task):
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sparse_traffic(client, tag, count, gap=0.01):
    """`count` exchanges, each a SET and a GET of the same key, `gap` s apart; returns the
    wrong answers."""
    wrong = []
    for i in range(count):
        key, value = f"bp:{tag}:{i % 20}", f"{tag}-{i}"
        if client.set(key, value) is not True:
            wrong.append(("SET", key))
        got = client.get(key)
        if got != value.encode():
            wrong.append((key, got, value))
        time.sleep(gap)
    return wrong


def write_config(path, port, cluster, busy_poll_us):
    path.write_text(f"listen: {HOST}:{port}\n"
                    f"primary: {HOST}:{cluster.primary.port}\n"
                    f"replicas: [{', '.join(f'{HOST}:{r.port}' for r in cluster.replicas)}]\n"
                    # One worker: all of the traffic lands on the thread that is watched.
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
        task = worker_task(proxy.proc.pid)
        c = proxy.client()
        # Short: a spinning worker takes a core from whatever test runs beside this one.
        n = 25
        # Default 0: the worker sleeps between requests and while a backend answers, so it
        # is woken at least once per request (two per exchange).
        before = sleeps(task)
        assert sparse_traffic(c, "off", n) == []
        off = sleeps(task) - before
        assert off >= n, f"busy_poll_us 0: only {off} sleeps in {n} exchanges"

        # 100 ms of busy polling after each exchange, exchanges 10 ms apart: the worker has
        # no reason to sleep until the traffic stops.
        write_config(cfg, proxy.port, cluster, 100000)
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded: busy_poll_us" in proxy.stderr(),
                   5 * SLOWDOWN, what="the reload of busy_poll_us")
        c.ping()  # the first exchange after the reload starts the window
        before = sleeps(task)
        assert sparse_traffic(c, "on", n) == []
        on = sleeps(task) - before
        # A gap stretched past 100 ms by a loaded machine lets it sleep once; a few of those
        # are fine, a sleep per request is what busy polling is there to avoid.
        assert on <= n // 5, f"busy_poll_us 100000: {on} sleeps in {n} exchanges (off: {off})"

        # Traffic stops: past the window the worker sleeps again and costs no CPU.
        time.sleep(0.3)
        cpu0 = cpu_seconds(task)
        time.sleep(1.5)
        idle = cpu_seconds(task) - cpu0
        assert idle < 0.15, f"an idle worker with busy_poll_us spent {idle:.2f} s of CPU"

        # Back to 0 by reload: a wake-up per request again.
        write_config(cfg, proxy.port, cluster, 0)
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: proxy.stderr().count("configuration reloaded: busy_poll_us") == 2,
                   5 * SLOWDOWN, what="the second reload")
        before = sleeps(task)
        assert sparse_traffic(c, "again", n) == []
        again = sleeps(task) - before
        assert again >= n, f"busy_poll_us back to 0: only {again} sleeps in {n} exchanges"
        assert proxy.alive
    finally:
        proxy.stop()


def test_busy_poll_pipelines_from_many_clients_at_once_answer_right(cluster, make_proxy):
    """Zero-timeout polls change when the worker looks, never what it answers: pipelined
    batches from eight clients at once come back complete and in order."""
    p = make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
                   extra_args=["--workers", "1", "--busy-poll-us", "1000"])
    results, errors = {}, []

    def run(n):
        try:
            c = p.client()
            c.delete(f"bp:pipe:{n}:ctr")
            pipe = c.pipeline(transaction=False)
            for i in range(300):
                pipe.set(f"bp:pipe:{n}:{i}", f"{n}-{i}")
                pipe.get(f"bp:pipe:{n}:{i}")
                pipe.incr(f"bp:pipe:{n}:ctr")
            results[n] = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any client-visible failure counts
            errors.append((n, repr(exc)))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30 * SLOWDOWN)
    assert errors == []
    for n in range(8):
        want = []
        for i in range(300):
            want += [True, f"{n}-{i}".encode(), i + 1]
        assert results.get(n) == want, n
