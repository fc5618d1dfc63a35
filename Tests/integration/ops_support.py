"""Helpers for test_operations.py: proxies over the deploy/sql cluster with an admin user, the
admin console through psql, and a transactional workload that records every commit it saw.

Waiting is always "poll a condition until a deadline" (pgharness.wait_until), never a sleep used
as synchronization.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import dataclass, field

import psycopg

import pgharness as h
import pooling_support as ps
import tenancy_support as ts

ADMIN = "gina"   # a global user of the standard tenant map, listed in [admin] users


def admin_extra(**sections: dict) -> dict:
    extra = {"admin": {"users": [ADMIN]}, "auth": {"failure_delay_ms": 0, "lockout_failures": 0},
             **ps.tls_extra()}
    for sec, kv in sections.items():
        extra.setdefault(sec, {}).update(kv)
    return extra


def make_proxy(cluster: ts.TenancyCluster, workdir, *, map_text: str | None = None,
               extra: dict | None = None, listen_port: int | None = None,
               peers: list[dict] | None = None) -> ts.TenancyProxy:
    cfg = ts.proxy_config(cluster, listen_port=listen_port, extra=extra or admin_extra())
    if peers:
        cfg["peers"] = peers
    return ts.TenancyProxy(workdir, cfg, map_text or ts.default_map())


def admin(proxy, *commands: str, check: bool = True, user: str = ADMIN, timeout: float = 60):
    """Runs admin commands through psql (one -c each); returns rows as lists of strings
    (psql -At output split on '|'). check: raise on a non-zero exit."""
    res = ts.psql(proxy, user, list(commands), dbname="proxy", timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"psql {commands!r} failed ({res.returncode}): {res.stdout}{res.stderr}")
    return res


def rows(res) -> list[list[str]]:
    return [line.split("|") for line in res.stdout.splitlines() if line]


def show(proxy, what: str) -> list[dict[str, str]]:
    """SHOW <what> as dicts (psql -A with headers)."""
    env_res = admin_with_header(proxy, f"SHOW {what}")
    lines = [line for line in env_res.stdout.splitlines() if line and not line.startswith("(")]
    header = lines[0].split("|")
    return [dict(zip(header, line.split("|"))) for line in lines[1:]]


def admin_with_header(proxy, command: str):
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGHOST": proxy.host, "PGPORT": str(proxy.port), "PGUSER": ADMIN,
                "PGDATABASE": "proxy", "PGPASSWORD": ts.password_of(ADMIN), "PGSSLMODE": "disable",
                "PGCONNECT_TIMEOUT": "10", "PGPASSFILE": "/dev/null", "LC_ALL": "C.UTF-8"})
    res = h.run([h.client_bin("psql"), "-X", "-w", "-A", "-c", command], env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@dataclass
class Workload:
    """Clients that each run INSERT transactions for one tenant in a loop and record the ids the
    server confirmed committed (COMMIT returned). On an error they reconnect and go on, until
    stopped. Errors are sorted by where they struck: at connect or BEGIN (between transactions:
    nothing was in flight) or inside a transaction (the proxy promises this never happens on a
    drain, pause, reload or move)."""
    connect: callable
    tenant: str
    clients: int = 4
    confirmed: set = field(default_factory=set)
    boundary_errors: list = field(default_factory=list)
    mid_transaction_errors: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def errors(self) -> list:
        with self._lock:
            return self.boundary_errors + self.mid_transaction_errors

    def start(self) -> "Workload":
        for n in range(self.clients):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def committed(self) -> int:
        with self._lock:
            return len(self.confirmed)

    def _run(self, n: int):
        conn = None
        while not self._stop.is_set():
            inside = False
            try:
                if conn is None:
                    conn = self.connect()
                row_id = str(uuid.uuid4())
                with conn.transaction():
                    inside = True
                    conn.execute("INSERT INTO todos (id, tenant_id, title) VALUES (%s, %s, %s)",
                                 (row_id, self.tenant, f"workload {n}"))
                    conn.execute("SELECT count(*) FROM todos WHERE id = %s", (row_id,))
                with self._lock:
                    self.confirmed.add(row_id)
            except (psycopg.Error, OSError) as exc:
                with self._lock:
                    (self.mid_transaction_errors if inside else self.boundary_errors).append(exc)
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "workload threads did not stop"


def clear_workload_rows(cluster: ts.TenancyCluster):
    with cluster.su(ts.APP_DB) as conn:
        conn.execute("DELETE FROM todos WHERE title LIKE 'workload%'")


def todo_ids(cluster: ts.TenancyCluster, tenant: str, title_prefix: str = "workload") -> set[str]:
    with cluster.su(ts.APP_DB) as conn:
        return {r[0] for r in conn.execute(
            "SELECT id::text FROM todos WHERE tenant_id = %s AND title LIKE %s",
            (tenant, title_prefix + "%")).fetchall()}
