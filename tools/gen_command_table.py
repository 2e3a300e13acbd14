#!/usr/bin/python3
# gen_command_table.py: regenerates proxy/command_table_data.inc, the built-in command table,
# from the COMMAND reply of a real redis-server started just for this on a free loopback port.
#
# Usage: tools/gen_command_table.py [--redis-server PATH] [--output PATH]
# Needs Debian's python3-redis (hence /usr/bin/python3, not whatever python3 is first on PATH).
#
# The table is taken from a live server rather than from Redis's src/commands/*.json because
# COMMAND is what a primary will answer at start-up too (CommandTable::FromCommandReply), so
# both paths see the same names, flags and key positions.

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis

# COMMAND flag name -> CommandFlag enumerator in proxy/command_table.h. Must match
# FlagFromName() in proxy/command_table.cpp. Names Redis reports that are not here become 0
# and are printed as a warning so a new Redis version's flags get noticed.
FLAG_NAMES = {
    "write": "kCmdWrite",
    "readonly": "kCmdReadonly",
    "denyoom": "kCmdDenyOom",
    "admin": "kCmdAdmin",
    "pubsub": "kCmdPubsub",
    "noscript": "kCmdNoscript",
    "blocking": "kCmdBlocking",
    "loading": "kCmdLoading",
    "stale": "kCmdStale",
    "skip_monitor": "kCmdSkipMonitor",
    "skip_slowlog": "kCmdSkipSlowlog",
    "fast": "kCmdFast",
    "no_auth": "kCmdNoAuth",
    "may_replicate": "kCmdMayReplicate",
    "no_mandatory_keys": "kCmdNoMandatoryKeys",
    "no_multi": "kCmdNoMulti",
    "movablekeys": "kCmdMovableKeys",
    "allow_busy": "kCmdAllowBusy",
    "no_async_loading": "kCmdNoAsyncLoading",
    "sentinel": "kCmdSentinel",
    "only_sentinel": "kCmdOnlySentinel",
    "protected": "kCmdProtected",
    "module": "kCmdModule",
}

OUTPUT_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "proxy",
                              "command_table_data.inc")


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def free_port():
    # The port is released before redis-server binds it; start_server retries if another
    # process grabs it in between.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, workdir):
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", workdir],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break  # most likely the port was taken; try another one
            try:
                conn = redis.Connection(host="127.0.0.1", port=port, socket_timeout=10)
                conn.connect()
                return proc, conn
            except redis.ConnectionError:
                time.sleep(0.05)
        stop_server(proc)
    sys.exit("gen_command_table: could not start " + binary)


def stop_server(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def query(binary):
    with tempfile.TemporaryDirectory(prefix="gen_command_table.") as workdir:
        proc, conn = start_server(binary, workdir)
        try:
            # Raw send/read: redis-py's COMMAND callback would reshape the reply and drop
            # the subcommands.
            conn.send_command("INFO", "server")
            info = text(conn.read_response())
            conn.send_command("COMMAND")
            reply = conn.read_response()
            conn.disconnect()
        finally:
            stop_server(proc)
    version = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("redis_version:")), None)
    if version is None:
        sys.exit("gen_command_table: INFO server has no redis_version")
    return version, reply


class Row:
    def __init__(self, entry, warnings):
        self.name = text(entry[0]).lower()
        self.arity = int(entry[1])
        self.flags = []
        for flag in entry[2]:
            flag = text(flag).lower()
            if flag in FLAG_NAMES:
                self.flags.append(FLAG_NAMES[flag])
            else:
                warnings.setdefault(flag, []).append(self.name)
        self.first_key, self.last_key, self.key_step = (int(v) for v in entry[3:6])
        subs = entry[9] if len(entry) > 9 and entry[9] else []
        self.subcommands = sorted((Row(s, warnings) for s in subs), key=lambda r: r.name)
        self.first_sub = 0

    def cpp(self):
        flags = " | ".join(self.flags) if self.flags else "0"
        # Rows without subcommands say {0, 0} rather than a running index, so that adding
        # a subcommand to one parent changes as few lines as possible.
        first_sub = self.first_sub if self.subcommands else 0
        fields = ['"%s"' % self.name, str(self.arity), flags, str(self.first_key),
                  str(self.last_key), str(self.key_step), str(first_sub),
                  str(len(self.subcommands))]
        return "    {" + ", ".join(fields) + "},"


def render(version, commands):
    subs = []
    for cmd in commands:
        cmd.first_sub = len(subs)
        subs.extend(cmd.subcommands)
    out = [
        "// GENERATED by tools/gen_command_table.py from redis-server %s — do not edit." % version,
        "// Included by proxy/command_table.cpp in an unnamed namespace inside kp, where CommandRow is",
        "//   {name, arity, flags, first_key, last_key, key_step, first_sub, num_subs}.",
        "// A parent's subcommands are kSubcommandRows[first_sub .. first_sub + num_subs);",
        "// subcommand rows are named \"parent|sub\" like Redis and have {0, 0} there.",
        "// %d commands, %d subcommands." % (len(commands), len(subs)),
        "// clang-format off",
        "",
        'constexpr char kCommandTableRedisVersion[] = "%s";' % version,
        "",
        "constexpr CommandRow kCommandRows[] = {",
    ]
    out += [cmd.cpp() for cmd in commands]
    out += ["};", "", "constexpr CommandRow kSubcommandRows[] = {"]
    out += [sub.cpp() for sub in subs]
    out += ["};", "", "// clang-format on", ""]
    return "\n".join(out), len(subs)


def main():
    parser = argparse.ArgumentParser(
        description="Regenerate proxy/command_table_data.inc from a live redis-server.")
    parser.add_argument("--redis-server", default=shutil.which("redis-server"),
                        help="redis-server binary (default: from PATH)")
    parser.add_argument("--output", default=OUTPUT_DEFAULT, help="file to write")
    args = parser.parse_args()
    if not args.redis_server:
        sys.exit("gen_command_table: redis-server not found; pass --redis-server")

    version, reply = query(args.redis_server)
    warnings = {}
    commands = sorted((Row(e, warnings) for e in reply), key=lambda r: r.name)
    for flag, names in sorted(warnings.items()):
        print("warning: unknown COMMAND flag %r (mapped to 0) on: %s" % (flag, ", ".join(names)),
              file=sys.stderr)
    source, num_subs = render(version, commands)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(source)
    print("wrote %s: %d commands, %d subcommands from redis-server %s" %
          (os.path.relpath(args.output), len(commands), num_subs, version))


if __name__ == "__main__":
    main()
