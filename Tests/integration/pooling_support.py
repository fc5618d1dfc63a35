"""Helpers and fixtures for test_pooling.py (transaction pooling).

Reuses pgharness (the conftest `pg` cluster and `make_proxy`) for pooling without tenancy (global
users, upstream role proxy_scram), and tenancy_support (a cluster of its own with deploy/sql
01..05 applied, TenancyProxy) for tenant-aware pooling.

Waiting is always "poll a condition until a deadline" (pgharness.wait_until), never a sleep used
as synchronization.
"""

from __future__ import annotations

import contextlib
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest

import pgharness as h
import tenancy_support as ts

UPSTREAM_ROLE = "proxy_scram"   # the role make_proxy's proxies log in as upstream


_TLS_EXTRA: dict | None = None


def tls_extra() -> dict:
    """{"tls": {"require": False}} when the binary has a [tls] section (plain connections are
    then refused unless require = false), else {} (an unknown key would be a config error).
    Asked once, with `tenant-proxy check-config`."""
    global _TLS_EXTRA
    if _TLS_EXTRA is None:
        with tempfile.TemporaryDirectory(prefix="tp-tlsprobe-") as d:
            conf = Path(d) / "probe.conf"
            (Path(d) / "tenants.toml").write_text("")
            conf.write_text('[upstream]\nuser = "x"\npassword = "y"\n[tls]\nrequire = false\n')
            res = h.run([str(h.proxy_bin()), "check-config", str(conf)], timeout=60)
            out = res.stdout + res.stderr
            _TLS_EXTRA = {} if "tls.require: unknown key" in out else {"tls": {"require": False}}
    return {k: dict(v) for k, v in _TLS_EXTRA.items()}


def pool_extra(*, mode: str = "transaction", size: int = 3, threads: int | None = 1,
               **pool) -> dict:
    """`extra` for make_proxy / ts.proxy_config: a [pool] section (and event_loop_threads, so
    that `size` is the exact number of upstream connections per (role, database)), plus
    tls_extra()."""
    extra = {"pool": {"mode": mode, "size": size, **pool}, **tls_extra()}
    if threads is not None:
        extra["server"] = {"event_loop_threads": threads}
    return extra


def psycopg_connect(ep_or_proxy, dbname: str, user: str = "alice", password: str = "alicepw",
                    **kw):
    import psycopg
    params = dict(host=ep_or_proxy.host, port=ep_or_proxy.port, user=user, password=password,
                  dbname=dbname, sslmode="disable", connect_timeout=10, autocommit=True)
    params.update(kw)
    return psycopg.connect(**params)


def backend_count(srv: h.PostgresServer, role: str, dbname: str) -> int:
    """Client backends of `role` on `dbname`, as a superuser sees them."""
    return srv.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = %s "
                   "AND backend_type = 'client backend'", (role, dbname))[0][0]


def backend_pids(srv: h.PostgresServer, role: str, dbname: str) -> set[int]:
    return {r[0] for r in srv.sql(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = %s "
        "AND backend_type = 'client backend'", (role, dbname))}


class BackendMonitor:
    """Polls backend_count in a thread while a workload runs; records every sample."""

    def __init__(self, count_fn):
        self.count_fn = count_fn
        self.samples: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.count_fn())
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
            self._stop.wait(0.02)   # a polling interval, not synchronization

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def max(self) -> int:
        return max(self.samples) if self.samples else -1


def sqlstate_of(exc: BaseException) -> str | None:
    return ts.sqlstate_of(exc)


def error_message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    if diag is not None and getattr(diag, "message_primary", None):
        return diag.message_primary
    return str(exc)


# --------------------------------------------------------------------------------------------
# extended-protocol raw client (exact control over Parse / Bind / Close / Sync batches)


class ExtConn(h.RawConn):
    """RawConn plus the extended protocol, one batch (ending in Sync) at a time. The message
    builders are static: `ExtConn.bind(...)` builds a Bind without a connection."""

    @staticmethod
    def parse(name: str, sql: str) -> bytes:
        return h.message(b"P", name.encode() + b"\x00" + sql.encode() + b"\x00" + struct.pack("!H", 0))

    @staticmethod
    def bind(stmt: str, params: list[str | None], portal: str = "") -> bytes:
        body = portal.encode() + b"\x00" + stmt.encode() + b"\x00" + struct.pack("!H", 0)
        body += struct.pack("!H", len(params))
        for p in params:
            if p is None:
                body += struct.pack("!i", -1)
            else:
                b = p.encode()
                body += struct.pack("!i", len(b)) + b
        body += struct.pack("!H", 0)
        return h.message(b"B", body)

    @staticmethod
    def execute(portal: str = "") -> bytes:
        return h.message(b"E", portal.encode() + b"\x00" + struct.pack("!I", 0))

    @staticmethod
    def describe_statement(name: str) -> bytes:
        return h.message(b"D", b"S" + name.encode() + b"\x00")

    @staticmethod
    def close_statement(name: str) -> bytes:
        return h.message(b"C", b"S" + name.encode() + b"\x00")

    @staticmethod
    def sync() -> bytes:
        return h.message(b"S")

    def batch(self, *msgs: bytes) -> dict:
        """Sends the messages and a Sync; reads to ReadyForQuery. Returns tags seen, data rows,
        errors (field maps), command tags and the transaction status."""
        self.send(b"".join(msgs) + self.sync())
        return self.read_batch()

    def read_batch(self) -> dict:
        """The replies up to the next ReadyForQuery, as `batch` returns them."""
        out = {"tags": [], "rows": [], "errors": [], "commands": [], "status": None}
        while True:
            tag, body = self.read_message()
            out["tags"].append(tag)
            if tag == b"D":
                (n,) = struct.unpack("!H", body[:2])
                off, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", body[off:off + 4])
                    off += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[off:off + ln].decode())
                        off += ln
                out["rows"].append(row)
            elif tag == b"E":
                out["errors"].append(h.parse_error_fields(body))
            elif tag == b"C":
                out["commands"].append(body.rstrip(b"\x00").decode())
            elif tag == b"Z":
                out["status"] = body[:1].decode()
                return out

    def run_prepared(self, name: str, params: list[str | None]) -> dict:
        return self.batch(self.bind(name, params), self.execute())


# --------------------------------------------------------------------------------------------
# tenancy cluster (deploy/sql applied) for tenant-aware pooling

@contextlib.contextmanager
def ext_clients(proxy, *users: str):
    """One logged-in ExtConn per user name (to the app database), closed at the end."""
    with contextlib.ExitStack() as stack:
        conns = []
        for user in users:
            conn = stack.enter_context(ExtConn(proxy.host, proxy.port))
            conn.startup(user, password_of(user), ts.APP_DB)
            conns.append(conn)
        yield conns


EXTRA_TENANTS = {   # name -> id; added to public.tenants and the map
    "umbrella": "55555555-5555-4555-8555-555555555555",
    "cyberdyne": "66666666-6666-4666-8666-666666666666",
    "tyrell": "77777777-7777-4777-8777-777777777777",
    "wonka": "88888888-8888-4888-8888-888888888888",
}
ALL_TENANTS = {"acme": ts.ACME, "globex": ts.GLOBEX, **EXTRA_TENANTS}

POOL_USERS = dict(ts.USERS)
POOL_USERS.update({
    # several pinned users of the same tenant (limits are per tenant, not per user)
    "alice2": ("alice2pw", {"mode": "pinned", "tenants": ["acme"]}),
})


def pool_map(more: dict[str, str] | None = None) -> str:
    """The tenant map: the tenancy tests' tenants, EXTRA_TENANTS and `more` (name -> id)."""
    tenants = {name: dict(t) for name, t in ts.TENANTS.items()}
    for name, tid in {**EXTRA_TENANTS, **(more or {})}.items():
        tenants[name] = {"id": tid, "status": "active", "isolation": "rls"}
    return ts.render_map(tenants, POOL_USERS)


def add_tenants(cluster: ts.TenancyCluster, tenants: dict[str, str]):
    """Rows in public.tenants (name -> id), kept if already there."""
    with cluster.su(ts.APP_DB) as conn:
        for name, tid in tenants.items():
            conn.execute("INSERT INTO public.tenants (id, name) VALUES (%s, %s) "
                         "ON CONFLICT (id) DO NOTHING", (tid, name))


def password_of(user: str) -> str:
    base = user.rsplit(".", 1)[0] if user not in POOL_USERS else user
    return POOL_USERS[base][0]


def tconnect(proxy: ts.TenancyProxy, user: str, **kw):
    return ts.connect(proxy, user, password=password_of(user), **kw)


@pytest.fixture(scope="module")
def pool_tcluster():
    """A cluster with deploy/sql 01..05 and four more tenants in public.tenants."""
    c = ts.TenancyCluster().start()
    try:
        add_tenants(c, EXTRA_TENANTS)
        yield c
    finally:
        c.destroy()


@pytest.fixture
def make_pool_tproxy(pool_tcluster, tmp_path_factory):
    """Factory: a TenancyProxy over pool_tcluster with pool settings (pool_extra kwargs)."""
    started: list[ts.TenancyProxy] = []

    def factory(**pool_kw) -> ts.TenancyProxy:
        cfg = ts.proxy_config(pool_tcluster, extra=pool_extra(**pool_kw))
        p = ts.TenancyProxy(tmp_path_factory.mktemp("pool-tproxy"), cfg, pool_map())
        started.append(p)
        p.start()
        return p

    yield factory
    for p in started:
        p.terminate()


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    return h.wait_until(pred, timeout, what, interval)


@contextlib.contextmanager
def closing_all(conns: list):
    try:
        yield conns
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()


def monotonic() -> float:
    return time.monotonic()
