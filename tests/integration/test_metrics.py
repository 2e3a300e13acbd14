"""The operator's view checked with the real tools: `promtool check metrics` on a live scrape
taken while a replica is down, `promtool check rules` and `promtool test rules` on the
shipped alerting rules, and the shipped Grafana dashboard only asks for series the proxy
exports."""

import json
import re
import shutil
import subprocess

from fixtures import HOST, REPO_ROOT, SLOWDOWN, free_port, http_get, metric, wait_until

RULES = REPO_ROOT / "docker" / "prometheus" / "kompress-alerts.yml"
RULES_TEST = REPO_ROOT / "docker" / "prometheus" / "kompress-alerts-test.yml"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "kompress-dashboard.json"


def promtool(*args, stdin=None):
    tool = shutil.which("promtool")
    assert tool, "promtool not found (Debian package prometheus; scripts/test.sh installs it)"
    return subprocess.run([tool, *args], input=stdin, capture_output=True, timeout=60)


def test_promtool_accepts_a_scrape_during_a_replica_failure(fresh_cluster, make_proxy):
    admin = free_port()
    p = make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas],
                   extra_args=["--admin-listen", f"{HOST}:{admin}"])
    c = p.client()
    c.set("m:k", "v")
    for _ in range(20):
        c.get("m:k")
    dead = fresh_cluster.replicas[0]
    dead.kill9()
    series = f'kompress_backend_up{{backend="{HOST}:{dead.port}",role="replica"}}'
    wait_until(lambda: metric(http_get(admin, "/metrics")[1], series) == 0, 5 * SLOWDOWN,
               what="the dead replica shown down")
    status, text = http_get(admin, "/metrics")
    assert status == 200
    r = promtool("check", "metrics", stdin=text.encode())
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_alert_rules_check_and_fire_as_intended():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    r = promtool("test", "rules", str(RULES_TEST))
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_dashboard_asks_only_for_exported_series(cluster, make_proxy):
    admin = free_port()
    make_proxy(cluster.primary.port, [r.port for r in cluster.replicas],
               extra_args=["--admin-listen", f"{HOST}:{admin}"])
    exported = {line.split("{")[0].split(" ")[0]
                for line in http_get(admin, "/metrics")[1].splitlines()
                if line and not line.startswith("#")}
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"kompress_[a-z_]+", expr):
            # Sentinel series exist only with Sentinel configured.
            if name.startswith("kompress_sentinel"):
                continue
            assert name in exported, f"dashboard asks for {name}, not exported: {expr}"
