"""Fixtures for the tenant-proxy integration tests (real PostgreSQL, real proxy, real clients)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgharness as h  # noqa: E402

DEFAULT_TEST_TIMEOUT = int(os.environ.get("TP_TEST_TIMEOUT", "120"))


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_s(seconds): per-test wall-clock limit")


class _TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A hung test must not hang the suite: SIGALRM after the per-test limit (main thread)."""
    marker = item.get_closest_marker("timeout_s")
    limit = int(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise _TestTimeout(f"test exceeded {limit}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def pg():
    """One cluster for the session: roles proxy_scram (SCRAM), proxy_md5 (md5), proxy_plain
    (cleartext 'password'), database app. Superuser via unix socket as postgres."""
    srv = h.start_postgres()
    yield srv
    srv.destroy()


@pytest.fixture
def private_pg():
    """A cluster of this test's own, for tests that stop or restart Postgres."""
    srv = h.start_postgres()
    yield srv
    srv.destroy()


@pytest.fixture
def db(pg):
    """A fresh database (owned by proxy_scram, writable by the other roles) for this test."""
    name = pg.create_database()
    yield name
    try:
        with pg.admin() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:  # noqa: BLE001 - the cluster may be gone; cleanup is best effort
        pass


# ---------------------------------------------------------------------------------------------
# tenant-proxy


@pytest.fixture(scope="session")
def proxy_users():
    """users.toml content for the default users, verifiers made by the binary's hash-password."""
    if not h.proxy_bin().exists():
        pytest.fail(f"tenant-proxy binary not found at {h.proxy_bin()} "
                    "(run `swift build` or set TENANT_PROXY_BIN)")
    return {u: h.cached_verifier(p) for u, p in h.PROXY_USERS.items()}


@pytest.fixture
def make_proxy(pg, proxy_users, tmp_path_factory):
    """Factory: make_proxy(upstream_user=..., trust_loopback=..., ...) starts a proxy and returns
    a ProxyProcess. All started proxies are SIGTERMed (SIGKILL fallback) at teardown."""
    started: list[h.ProxyProcess] = []

    def factory(*, users: dict[str, str] | None = None, start: bool = True,
                pg_server: h.PostgresServer | None = None, **kw) -> h.ProxyProcess:
        cfg, env, files = h.proxy_config(pg_server or pg, **kw)
        workdir = tmp_path_factory.mktemp("proxy")
        p = h.ProxyProcess(workdir, cfg, users if users is not None else proxy_users, env=env,
                           files=files)
        started.append(p)
        if start:
            p.start()
        return p

    yield factory
    for p in started:
        p.terminate(timeout=40)


@pytest.fixture
def proxy(make_proxy):
    """The default proxy: upstream proxy_scram, trust_loopback off."""
    return make_proxy()


# ---------------------------------------------------------------------------------------------
# run the same test against Postgres directly and through the proxy


def endpoint_for(kind: str, pg: h.PostgresServer, dbname: str, request) -> h.Endpoint:
    if kind == "direct":
        return h.Endpoint("direct", pg.host, pg.port, "proxy_scram",
                          h.ROLE_PASSWORDS["proxy_scram"], dbname, watch_pid=pg.postmaster_pid())
    make_proxy = request.getfixturevalue("make_proxy")
    p = make_proxy()
    ep = p.endpoint(dbname)
    ep.extra["proxy"] = p
    return ep


@pytest.fixture(params=["direct", "proxy"])
def target(request, pg, db):
    """An Endpoint for a fresh database, either Postgres itself (as proxy_scram) or the proxy
    (as alice, upstream proxy_scram)."""
    return endpoint_for(request.param, pg, db, request)


@pytest.fixture
def direct(pg, db):
    return endpoint_for("direct", pg, db, None)
