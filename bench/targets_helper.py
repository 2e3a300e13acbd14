#!/usr/bin/env python3
"""Helpers of bench/targets.sh (standard library only).

  set-value HOST PORT KEY SIZE
      SET KEY to SIZE bytes of 'x' (one RESP request).
  slow-reader HOST PORT KEY SIZE PID CHUNK DELAY_MS
      GET KEY through the proxy at HOST:PORT with a small socket receive buffer and read the
      reply CHUNK bytes at a time, DELAY_MS apart; the proxy's (PID) peak RSS is reset
      (/proc/PID/clear_refs, 5) just before. Prints: rss_before_kb hwm_after_kb
      max_sampled_rss_kb seconds hwm_reset(1/0).
  idle-clients HOST PORT COUNT PID
      Open COUNT connections, send one PING on each, read every +PONG, then print the proxy's
      VmRSS before and after (kB): before_kb after_kb.
  eval SECTION RAW VERDICTS TICK N ROUNDS
      Judge one section from the raw measurements (RAW, tab-separated) and append its verdict
      rows to VERDICTS; prints the details and the verdict lines.
  table VERDICTS
      The compact table of every verdict; exit status 1 when any is MISS.
"""
import os
import resource
import selectors
import socket
import statistics
import sys
import time


def proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def read_reply_line(sock, buf):
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    line, _, rest = buf.partition(b"\r\n")
    return line, rest


def set_value(host, port, key, size):
    value = b"x" * size
    req = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, size) + value + b"\r\n"
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(req)
        line, _ = read_reply_line(s, b"")
        if line != b"+OK":
            raise SystemExit(f"SET answered {line!r}")


def slow_reader(host, port, key, size, pid, chunk, delay_ms):
    # Warm the client path with a small request first.
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        line, _ = read_reply_line(s, b"")
        if line != b"+PONG":
            raise SystemExit(f"PING answered {line!r}")
    time.sleep(0.3)
    rss_before = proc_kb(pid, "VmRSS")
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        reset = 1
    except OSError:
        reset = 0
    s = socket.socket()
    # A small receive buffer, so the kernel does not take the reply off the proxy's hands.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, chunk)
    s.settimeout(60)
    s.connect((host, port))
    t0 = time.monotonic()
    s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
    want = len(b"$%d\r\n" % size) + size + 2
    got = 0
    peak = rss_before
    while got < want:
        data = s.recv(min(chunk, want - got))
        if not data:
            raise SystemExit(f"connection closed after {got} of {want} bytes")
        if got == 0 and not data.startswith(b"$%d\r\n" % size):
            raise SystemExit(f"unexpected reply start {data[:40]!r}")
        got += len(data)
        peak = max(peak, proc_kb(pid, "VmRSS"))
        time.sleep(delay_ms / 1000.0)
    seconds = time.monotonic() - t0
    s.close()
    hwm = proc_kb(pid, "VmHWM")
    print(rss_before, hwm, peak, f"{seconds:.2f}", reset)


def idle_clients(host, port, count, pid):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    with socket.create_connection((host, port), timeout=30) as s:  # warm-up
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        read_reply_line(s, b"")
    time.sleep(0.3)
    before = proc_kb(pid, "VmRSS")
    socks = []
    deadline = time.monotonic() + 120
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=30)
        socks.append(s)
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    pending = len(socks)
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"{pending} of {count} PINGs unanswered after 120 s")
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            data = s.recv(64)
            if not data:
                raise SystemExit("the proxy closed an idle connection (max clients?)")
            bufs[s] += data
            if bufs[s].endswith(b"\r\n"):
                if bufs[s] != b"+PONG\r\n":
                    raise SystemExit(f"PING answered {bufs[s]!r}")
                sel.unregister(s)
                pending -= 1
    time.sleep(0.5)
    after = proc_kb(pid, "VmRSS")
    print(before, after)
    for s in socks:
        s.close()


# -- judging ------------------------------------------------------------------------------
def load(raw):
    rows = []
    with open(raw) as f:
        for line in f:
            rows.append(line.rstrip("\n").split("\t"))
    return rows


class Verdicts:
    def __init__(self, path):
        self.path = path

    def add(self, section, name, measured, goal, ratio, verdict):
        with open(self.path, "a") as f:
            f.write("\t".join([str(section), name, measured, goal, ratio, verdict]) + "\n")
        print(f"  [{verdict}] {section}. {name}: {measured}  (target {goal}; {ratio})")


def fmt_ops(x):
    return f"{x / 1000:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"


PEER_ORDER = ("nutcracker", "haproxy", "predixy")
# Printed beside the peers, judged against none: bench/floor_forwarder.c.
SHOWN = PEER_ORDER + ("floor",)


# Fewer clock ticks than this (10 ms each) cannot give a ratio worth judging: 20 ticks is
# a 5 % step.
MIN_TICKS = 20


def cpu_budget(v, m, p, test, tick):
    """What every process of a run spent per request (redis-servers, proxy, redis-benchmark):
    with two cores shared by all of them, throughput follows their sum, so this says why a
    throughput ratio is what it is. Printed as INFO: no target."""
    budget = {}
    for r in m:
        if r[3] == p and r[4] == test and len(r) > 11 and r[2] in ("direct", "proxy"):
            b = budget.setdefault(r[2], [0, 0, 0, 0])
            b[0] += int(r[6])   # the proxy's ticks (0 for direct)
            b[1] += int(r[10])  # primary + replica ticks
            b[2] += int(r[11])  # redis-benchmark ms
            b[3] += int(r[9])   # requests
    if "direct" not in budget or "proxy" not in budget:
        return

    def parts(t):
        own, redis, client_ms, reqs = budget[t]
        return redis / tick / reqs * 1e6, own / tick / reqs * 1e6, client_ms / 1e3 / reqs * 1e6

    d, x = parts("direct"), parts("proxy")
    print(f"  CPU per request, all processes, P={p} {test} (us): direct: redis {d[0]:.1f} + "
          f"client {d[2]:.1f} = {sum(d):.1f}; proxy: redis {x[0]:.1f} + proxy {x[1]:.1f} + "
          f"client {x[2]:.1f} = {sum(x):.1f}")
    v.add(2, f"CPU of all processes/request {test} P={p}",
          f"{sum(x):.1f} vs direct {sum(d):.1f} us", "none",
          f"{sum(x) / sum(d):.2f}x", "INFO")


def judge(section, raw, verdicts, tick, n, rounds):
    rows = load(raw)
    v = Verdicts(verdicts)
    med = statistics.median
    if section == "1":
        m = [r for r in rows if r[0] == "m"]
        for p in ("1", "16"):
            for test in ("GET", "SET"):
                cpu = {}
                for r in m:
                    if r[3] == p and r[4] == test and r[2] != "direct":
                        cpu.setdefault(r[2], [0, 0])
                        cpu[r[2]][0] += int(r[6])
                        cpu[r[2]][1] += int(r[9])
                us = {t: ticks / tick / reqs * 1e6 for t, (ticks, reqs) in cpu.items() if reqs}
                if "proxy" not in us:
                    continue
                detail = ", ".join(f"{t} {us[t]:.2f}" for t in ("proxy",) + SHOWN if t in us)
                ticks = {t: cpu[t][0] for t in cpu}
                print(f"  CPU per request P={p} {test} (us, {cpu['proxy'][1]} requests each; ticks: "
                      + ", ".join(f"{t} {ticks[t]}" for t in ("proxy",) + SHOWN if t in ticks)
                      + f"): {detail}")
                if "floor" in us:
                    v.add(1, f"CPU/request {test} P={p} vs floor forwarder",
                          f"{us['proxy']:.2f} us vs {us['floor']:.2f} us", "none",
                          f"{us['proxy'] / us['floor']:.2f}x", "INFO")
                peers = {t: x for t, x in us.items() if t in PEER_ORDER}
                name = f"CPU/request {test} P={p}"
                if not peers:
                    v.add(1, name, f"proxy {us['proxy']:.2f} us", "<= 0.8x cheapest peer",
                          "no peer", "SKIP")
                    continue
                cheap = min(peers, key=peers.get)
                few = min(ticks["proxy"], ticks[cheap])
                if few < MIN_TICKS:
                    v.add(1, name, f"{few} CPU ticks", "<= 0.8x cheapest peer",
                          f"< {MIN_TICKS} ticks: raise N", "SKIP")
                    continue
                ratio = us["proxy"] / peers[cheap]
                v.add(1, name, f"{us['proxy']:.2f} us vs {cheap} {peers[cheap]:.2f} us",
                      "<= 0.8x cheapest peer", f"{ratio:.2f}x", "PASS" if ratio <= 0.8 else "MISS")
    elif section == "2":
        m = [r for r in rows if r[0] == "m"]
        for p in ("1", "16"):
            for test in ("GET", "SET"):
                ops = {}
                for r in m:
                    if r[3] == p and r[4] == test:
                        ops.setdefault(r[2], []).append(float(r[5]))
                if "proxy" not in ops or "direct" not in ops:
                    continue
                mo = {t: med(x) for t, x in ops.items()}
                print(f"  ops/s P={p} {test} (median of {len(ops['proxy'])}): "
                      + ", ".join(f"{t} {fmt_ops(mo[t])}" for t in ("direct", "proxy") + SHOWN
                                  if t in mo))
                goal = 1.0 if p == "1" else 0.8
                r_d = mo["proxy"] / mo["direct"]
                v.add(2, f"ops/s {test} P={p} vs direct",
                      f"{fmt_ops(mo['proxy'])} vs {fmt_ops(mo['direct'])}", f">= {goal:.1f}x direct",
                      f"{r_d:.2f}x", "PASS" if r_d >= goal else "MISS")
                cpu_budget(v, m, p, test, tick)
                if "floor" in mo:
                    v.add(2, f"ops/s {test} P={p} vs floor forwarder",
                          f"{fmt_ops(mo['proxy'])} vs {fmt_ops(mo['floor'])}", "none",
                          f"{mo['proxy'] / mo['floor']:.2f}x", "INFO")
                peers = {t: x for t, x in mo.items() if t in PEER_ORDER}
                if not peers:
                    v.add(2, f"ops/s {test} P={p} vs best peer", fmt_ops(mo["proxy"]),
                          ">= 1.1x best peer", "no peer", "SKIP")
                    continue
                best = max(peers, key=peers.get)
                r_p = mo["proxy"] / peers[best]
                v.add(2, f"ops/s {test} P={p} vs best peer",
                      f"{fmt_ops(mo['proxy'])} vs {best} {fmt_ops(peers[best])}",
                      ">= 1.1x best peer", f"{r_p:.2f}x", "PASS" if r_p >= 1.1 else "MISS")
    elif section == "3":
        lat = [r for r in rows if r[0] == "l"]
        for test in ("GET", "SET"):
            p50 = {}
            for r in lat:
                if r[3] == test:
                    p50.setdefault(r[2], []).append(float(r[5]) * 1000)
            if "proxy" in p50 and "direct" in p50:
                d, x = med(p50["direct"]), med(p50["proxy"])
                print(f"  1 client P=1 {test} p50 (us, median of {len(p50['proxy'])}; per round "
                      f"direct {p50['direct']}, proxy {p50['proxy']}"
                      + (f", proxy-bp {p50['proxy-bp']}" if "proxy-bp" in p50 else "") + ")")
                v.add(3, f"p50 1 client {test}", f"{x:.0f} us vs direct {d:.0f} us",
                      "<= direct + 20 us", f"+{x - d:.0f} us", "PASS" if x - d <= 20 else "MISS")
                # The opt-in busy polling: INFO, since the target is about the defaults (and
                # busy polling costs CPU under load: README, Benchmarks).
                if "proxy-bp" in p50:
                    b = med(p50["proxy-bp"])
                    v.add(3, f"p50 1 client {test}, busy_poll_us (opt-in)",
                          f"{b:.0f} us vs direct {d:.0f} us", "<= direct + 20 us",
                          f"+{b - d:.0f} us ({'within' if b - d <= 20 else 'over'} the goal)",
                          "INFO")
                # What the least proxy (the floor forwarder) and the peers add, measured in
                # the same rounds: the part of the gap any extra hop costs on this machine.
                shown = [t for t in SHOWN if t in p50]
                if shown:
                    v.add(3, f"p50 1 client {test}, others (added to direct)",
                          " / ".join(f"{t} +{med(p50[t]) - d:.0f}" for t in shown) + " us",
                          "none", "-", "INFO")
        m = [r for r in rows if r[0] == "m" and r[3] == "1"]
        for test in ("GET", "SET"):
            p99 = {}
            for r in m:
                if r[4] == test and r[2] in ("direct", "proxy"):
                    p99.setdefault(r[2], []).append(float(r[8]) * 1000)
            if "proxy" in p99 and "direct" in p99:
                d, x = med(p99["direct"]), med(p99["proxy"])
                ratio = x / d if d else float("inf")
                v.add(3, f"p99 50 clients {test}", f"{x:.0f} us vs direct {d:.0f} us",
                      "<= 1.5x direct", f"{ratio:.2f}x", "PASS" if ratio <= 1.5 else "MISS")
    elif section == "4":
        b = [r for r in rows if r[0] == "b"]
        sizes = sorted({int(r[3]) for r in b})
        for size in sizes:
            for test in ("GET", "SET"):
                ops = {}
                for r in b:
                    if int(r[3]) == size and r[4] == test:
                        ops.setdefault(r[2], []).append(float(r[5]))
                if "proxy" not in ops or "direct" not in ops:
                    continue
                d, x = med(ops["direct"]), med(ops["proxy"])
                mb = size / 1048576
                print(f"  {test} {mb:g} MB values ops/s per round: direct {ops['direct']}, "
                      f"proxy {ops['proxy']}")
                ratio = x / d
                v.add(4, f"throughput {test} {mb:g} MB values",
                      f"{x * mb:.0f} vs direct {d * mb:.0f} MB/s",
                      ">= 0.9x direct", f"{ratio:.2f}x", "PASS" if ratio >= 0.9 else "MISS")
        for r in rows:
            if r[0] == "s":
                _, size, before, hwm, peak, secs, reset, bound_mb = r
                growth = (int(hwm) - int(before)) / 1024
                mb = int(size) / 1048576
                print(f"  slow reader: {mb:g} MB reply read in {secs} s; proxy VmRSS before "
                      f"{int(before) / 1024:.1f} MB, VmHWM after {int(hwm) / 1024:.1f} MB, highest "
                      f"sampled VmRSS {int(peak) / 1024:.1f} MB"
                      + ("" if reset == "1" else " (VmHWM could not be reset: it includes start-up)"))
                v.add(4, f"peak RSS growth, slow reader of {mb:g} MB",
                      f"{growth:.1f} MB", f"<= {bound_mb} MB", f"{growth / float(bound_mb):.2f}x bound",
                      "PASS" if growth <= float(bound_mb) else "MISS")
    elif section == "5":
        for r in rows:
            if r[0] == "i":
                _, count, before, after = r
                per = (int(after) - int(before)) / int(count)
                print(f"  {count} idle clients: proxy VmRSS {int(before) / 1024:.1f} MB -> "
                      f"{int(after) / 1024:.1f} MB")
                v.add(5, f"RSS per idle client ({count})", f"{per:.2f} KB", "<= 2 KB",
                      f"{per / 2:.2f}x bound", "PASS" if per <= 2 else "MISS")
    elif section == "6":
        w = [r for r in rows if r[0] == "w"]
        cpu, ops = {}, {}
        for r in w:
            cpu.setdefault(r[2], [0, 0])
            cpu[r[2]][0] += int(r[4])
            cpu[r[2]][1] += int(r[5])
            ops.setdefault(r[2], []).append(float(r[3]))
        if "1" in cpu and "2" in cpu:
            us = {k: t / tick / q * 1e6 for k, (t, q) in cpu.items()}
            print(f"  P=16 GET: --workers 1 {us['1']:.3f} us/request ({cpu['1'][0]} ticks), "
                  f"{fmt_ops(med(ops['1']))} ops/s; --workers 2 {us['2']:.3f} us/request "
                  f"({cpu['2'][0]} ticks), {fmt_ops(med(ops['2']))} ops/s")
            if min(cpu["1"][0], cpu["2"][0]) < MIN_TICKS:
                v.add(6, "CPU/request GET P=16, 2 vs 1 workers",
                      f"{min(cpu['1'][0], cpu['2'][0])} CPU ticks", "<= 1.15x",
                      f"< {MIN_TICKS} ticks: raise N", "SKIP")
            else:
                ratio = us["2"] / us["1"]
                v.add(6, "CPU/request GET P=16, 2 vs 1 workers",
                      f"{us['2']:.3f} vs {us['1']:.3f} us", "<= 1.15x", f"{ratio:.3f}x",
                      "PASS" if ratio <= 1.15 else "MISS")
            # Why: sleeping and waking (a context switch each) costs the kernel more than
            # the request itself on a small machine; the columns were added later, so old
            # raw files lack them.
            sw = {k: sum(int(r[6]) for r in w if r[2] == k and len(r) > 6) for k in cpu}
            if sw.get("1") and sw.get("2"):
                per = {k: sw[k] / cpu[k][1] * 1000 for k in sw}
                v.add(6, "context switches/1000 requests, 2 vs 1 workers",
                      f"{per['2']:.1f} vs {per['1']:.1f}", "none", f"{per['2'] / per['1']:.2f}x",
                      "INFO")
        # perf samples of one more run each, split by code: the proxy's own (its binary,
        # libuv, libstdc++) against libc and the kernel.
        split = {}
        for r in rows:
            if r[0] == "wp":
                _, workers, part, samples, reqs, hz = r
                split.setdefault(workers, {})[part] = int(samples) / int(hz) / int(reqs) * 1e6
        if "1" in split and "2" in split:
            for part in ("own", "libc", "kernel"):
                a, b = split["1"].get(part, 0.0), split["2"].get(part, 0.0)
                if a > 0:
                    v.add(6, f"perf: {part} code CPU/request, 2 vs 1 workers",
                          f"{b:.3f} vs {a:.3f} us", "none", f"{b / a:.2f}x", "INFO")
    elif section == "7":
        for r in rows:
            if r[0] == "c":
                _, p, gets, ir_load, ir_base, secs = r
                per = (int(ir_load) - int(ir_base)) / int(gets)
                print(f"  callgrind P={p}: {int(ir_load):,} Ir with {gets} GETs in {secs} s, "
                      f"{int(ir_base):,} Ir idle for as long")
                v.add(7, f"instructions per GET P={p} (callgrind Ir)", f"{per:.0f} Ir",
                      "none (before/after)", "-", "INFO")
    else:
        raise SystemExit(f"unknown section {section}")


def table(verdicts):
    rows = load(verdicts) if os.path.exists(verdicts) else []
    head = ("#", "target", "measured", "goal", "ratio", "verdict")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    for r in rows:
        print(line.format(*r))
    counts = {k: sum(1 for r in rows if r[5] == k) for k in ("PASS", "MISS", "SKIP", "INFO")}
    print(", ".join(f"{counts[k]} {k}" for k in counts))
    return 1 if counts["MISS"] else 0


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "set-value":
        set_value(argv[2], int(argv[3]), argv[4].encode(), int(argv[5]))
    elif cmd == "slow-reader":
        slow_reader(argv[2], int(argv[3]), argv[4].encode(), int(argv[5]), int(argv[6]),
                    int(argv[7]), float(argv[8]))
    elif cmd == "idle-clients":
        idle_clients(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif cmd == "eval":
        judge(argv[2], argv[3], argv[4], float(argv[5]), int(argv[6]), int(argv[7]))
    elif cmd == "table":
        return table(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
