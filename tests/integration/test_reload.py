"""SIGHUP reloads the configuration without dropping a client or failing a request: replicas
added and removed, timeout and log level changed while clients run; an invalid file is
refused and the running configuration stays; settings that cannot change live are kept and
said so; SIGHUP is never fatal, not even before the configuration has loaded."""

import os
import signal
import subprocess
import threading
import time

from fixtures import (HOST, REGISTRY, SLOWDOWN, Proxy, free_port, http_get, metric,
                      port_accepts, wait_until)


def write_config(path, listen_port, primary, replicas, admin_port, extra=""):
    path.write_text(
        f"listen: {HOST}:{listen_port}\n"
        f"primary: {HOST}:{primary.port}\n"
        f"replicas: [{', '.join(f'{HOST}:{r.port}' for r in replicas)}]\n"
        f"admin_listen: {HOST}:{admin_port}\n"
        "health_check_interval: 0.1\n"
        "timeout: 1\n"
        "workers: 2\n" + extra)


class Load:
    """A writer (INCR, then GET of its own counter) and a reader of fixed keys, through the
    proxy, counting errors and wrong values until stopped."""

    def __init__(self, proxy, keys):
        self.proxy, self.keys = proxy, keys
        self.errors, self.wrong, self.ops = [], [], 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._writer, daemon=True),
                         threading.Thread(target=self._reader, daemon=True)]

    def _writer(self):
        c = self.proxy.client(timeout=10)
        n = c.incr("reload:ctr")
        while not self._stop.is_set() and self.ops < 200_000:
            try:
                n2 = c.incr("reload:ctr")
                got = c.get("reload:ctr")
                if n2 != n + 1 or int(got) != n2:
                    self.wrong.append(("ctr", n, n2, got))
                n = n2
            except Exception as exc:  # noqa: BLE001 - any client-visible failure counts
                self.errors.append(repr(exc))
            self.ops += 1

    def _reader(self):
        c = self.proxy.client(timeout=10)
        i = 0
        while not self._stop.is_set() and self.ops < 200_000:
            key, want = self.keys[i % len(self.keys)]
            i += 1
            try:
                got = c.get(key)
                if got != want:
                    self.wrong.append((key, got, want))
            except Exception as exc:  # noqa: BLE001
                self.errors.append(repr(exc))
            self.ops += 1

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def serves_reads(admin, server):
    return metric(http_get(admin, "/metrics")[1],
                  f'kompress_replica_serves_reads{{backend="{HOST}:{server.port}"}}')


def reloads(admin, result):
    return metric(http_get(admin, "/metrics")[1],
                  f'kompress_config_reloads_total{{result="{result}"}}')


def test_sighup_reload_under_load(fresh_cluster, tmp_path):
    c = fresh_cluster
    r1, r2 = c.replicas
    p = c.primary.client()
    p.mset({f"reload:{i}": f"v{i}" for i in range(50)})
    c.wait_replicated()
    keys = [(f"reload:{i}", f"v{i}".encode()) for i in range(50)]
    cfg = tmp_path / "proxy.yaml"
    proxy = Proxy(tmp_path, extra_args=["--config", str(cfg)], use_base_args=False)
    # Everything from the file, so that a change of `listen` there is a change to refuse.
    i = proxy.args.index("--listen")
    del proxy.args[i:i + 2]
    port, admin = proxy.port, free_port()
    write_config(cfg, port, c.primary, [r1], admin)
    proxy.start()
    try:
        wait_until(lambda: serves_reads(admin, r1) == 1, 10 * SLOWDOWN, what="r1 serves reads")
        with Load(proxy, keys) as load:
            time.sleep(0.5)
            # Swap the replicas, raise the timeout, turn on debug logging.
            write_config(cfg, port, c.primary, [r2], admin, "log_level: debug\n")
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_until(lambda: reloads(admin, "ok") == 1, 5 * SLOWDOWN, what="reload counted")
            wait_until(lambda: serves_reads(admin, r2) == 1, 5 * SLOWDOWN,
                       what="the added replica serves reads")
            time.sleep(0.3)
            before = {r.name: r.calls("get") for r in (r1, r2)}
            time.sleep(1.0)
            after = {r.name: r.calls("get") for r in (r1, r2)}
            # An invalid file: refused, the running configuration stays.
            cfg.write_text(cfg.read_text() + "timeout: -3s\n")
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_until(lambda: reloads(admin, "failed") == 1, 5 * SLOWDOWN,
                       what="failed reload counted")
            time.sleep(0.5)
        assert load.errors == [] and load.wrong == [], (load.errors[:5], load.wrong[:5])
        assert load.ops > 200, load.ops
        assert after["replica2"] > before["replica2"], (before, after)
        assert after["replica1"] == before["replica1"], "a removed replica still got reads"
        text = proxy.stderr()
        assert "configuration reloaded: replicas, log_level" in text, text[-2000:]
        assert "reload refused, the running configuration stays: config: " in text
        assert " debug " in text  # the new log level took effect
        assert proxy.alive
        # A setting that cannot change live is kept, and said so.
        write_config(cfg, free_port(), c.primary, [r2], admin)
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: reloads(admin, "ok") == 2, 5 * SLOWDOWN, what="second reload")
        assert "reload: listen cannot change without a restart" in proxy.stderr()
        assert proxy.client().ping() is True
    finally:
        proxy.stop()


def test_sighup_before_the_config_has_loaded_is_not_fatal(cluster, tmp_path):
    """SIGHUP while the proxy is still reading its configuration (here held up on a FIFO
    that no one has written yet) does not end it; it then starts normally."""
    fifo = tmp_path / "proxy.yaml"
    os.mkfifo(fifo)
    proxy = Proxy(tmp_path, cluster.primary.port, [r.port for r in cluster.replicas],
                  extra_args=["--config", str(fifo)], name="early")
    proxy._log = open(proxy.log_path, "wb")
    proxy.proc = subprocess.Popen(proxy.args, stdin=subprocess.DEVNULL, stdout=proxy._log,
                                  stderr=proxy._log, env=proxy.env)
    REGISTRY.add(proxy.proc)
    try:
        # Blocked opening the FIFO (the kernel's wait_for_partner), inside main(): past process
        # start-up, before the configuration.
        def blocked_on_fifo():
            with open(f"/proc/{proxy.proc.pid}/wchan") as f:
                return f.read().strip() == "wait_for_partner"
        wait_until(blocked_on_fifo, 10 * SLOWDOWN, interval=0.01, what="proxy blocked on the FIFO")
        for _ in range(3):
            os.kill(proxy.proc.pid, signal.SIGHUP)
            time.sleep(0.05)
        assert proxy.proc.poll() is None, f"SIGHUP killed the proxy: {proxy.stderr()}"
        with open(fifo, "w") as f:
            f.write("log_level: info\n")
        wait_until(lambda: proxy.proc.poll() is not None or port_accepts(proxy.port),
                   15 * SLOWDOWN, what="proxy to accept connections")
        assert proxy.proc.poll() is None, f"the proxy exited: {proxy.stderr()}"
        assert proxy.client().ping() is True
    finally:
        proxy.stop()
