"""pytest fixtures for the integration suite (see fixtures.py for the process helpers).

Module-scoped `cluster`/`proxy` where start-up cost matters and tests do not disturb the
servers; function-scoped `fresh_cluster`/`fresh_proxy` for tests that kill, stop or restart
servers. Teardown always stops every process by PID, including after failures.
"""

import atexit
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fixtures  # noqa: E402
from fixtures import Cluster, Proxy  # noqa: E402

atexit.register(fixtures.REGISTRY.stop_all)


_require_proxy_bin = fixtures.require_proxy_bin
_dump_proxy_log = fixtures.dump_proxy_log


@pytest.fixture(scope="session", autouse=True)
def _stop_everything_at_exit():
    yield
    fixtures.REGISTRY.stop_all()
    # Proxies that outlived their tests (module scope) have exited now: leaks show here.
    reports = [r for r in map(fixtures.sanitizer_report, fixtures.ALL_PROXIES) if r]
    assert not reports, "sanitizer report in proxy stderr:\n" + reports[0]


@pytest.fixture(autouse=True)
def _no_sanitizer_reports():
    """Fails the test whose proxies (run under ASan/UBSan in CI) reported an error."""
    first = len(fixtures.ALL_PROXIES)
    yield
    for p in fixtures.ALL_PROXIES[first:]:
        report = fixtures.sanitizer_report(p)
        assert report is None, f"sanitizer report in {p.name} stderr:\n{report}"



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def proxy(cluster, tmp_path_factory):
    _require_proxy_bin()
    p = Proxy(tmp_path_factory.mktemp("proxy"), cluster.primary.port,
              [r.port for r in cluster.replicas])
    try:
        p.start()
        yield p
    finally:
        p.stop()
        _dump_proxy_log(p)


@pytest.fixture
def fresh_cluster(tmp_path):
    c = Cluster(tmp_path / "cluster")
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def make_proxy(tmp_path):
    """Factory: make_proxy(primary_port, replica_ports, extra_args=(), env=None, ...)."""
    started = []

    def make(*args, **kwargs):
        _require_proxy_bin()
        kwargs.setdefault("name", f"proxy{len(started)}")
        p = Proxy(tmp_path / "proxy", *args, **kwargs)
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.stop()
        _dump_proxy_log(p)


@pytest.fixture
def fresh_proxy(fresh_cluster, make_proxy):
    return make_proxy(fresh_cluster.primary.port, [r.port for r in fresh_cluster.replicas])
