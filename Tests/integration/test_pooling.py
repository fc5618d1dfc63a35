"""Transaction pooling through tenant-proxy ([pool] mode = "transaction").

Many clients over few upstream connections, tenants interleaved on shared connections (also
2,000 asyncpg clients of 24 tenants at once, each checking that every row it reads is its own), the
statements refused in transaction mode (0A000) and the transaction-scoped ones allowed, tracked
settings restored on every lent connection, named prepared statements across lent connections
(psycopg, asyncpg, a raw extended-protocol client, pgbench -M prepared), pool and tenant limits
(53300), upstream restart and terminated backends, idle timeout.

Two back ends: the conftest `pg` cluster with `make_proxy` (global users, upstream proxy_scram)
for pooling as such, and a cluster of this module's own with deploy/sql applied
(pooling_support.pool_tcluster) for tenant-aware pooling.

    python3 -m pytest Tests/integration/test_pooling.py -q
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import asyncpg
import psycopg
import pytest

import pgharness as h
import pooling_support as ps
import tenancy_support as ts
from pooling_support import (ALL_TENANTS, UPSTREAM_ROLE, make_pool_tproxy,  # noqa: F401
                             pool_tcluster)


def param_status(conn, name: str) -> str | None:
    v = conn.info.parameter_status(name)
    return v.decode() if isinstance(v, bytes) else v


def proxy_info(p) -> str:
    return f"\n--- proxy stderr ---\n{p.stderr()}"


def run_threads(fn, args: list, max_workers: int | None = None) -> list:
    """Runs fn(arg) for every arg in its own thread; returns the exceptions raised (with arg)."""
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or len(args)) as pool:
        futures = {pool.submit(fn, a): a for a in args}
        for fut in concurrent.futures.as_completed(futures):
            exc = fut.exception()
            if exc is not None:
                failures.append((futures[fut], exc))
    return failures


# ---------------------------------------------------------------------------------------------
# 1. many clients, few connections


@pytest.mark.timeout_s(240)
def test_many_clients_few_upstream_connections(make_proxy, pg, db):
    p = make_proxy(extra=ps.pool_extra(size=3))
    with ps.psycopg_connect(p, db) as c:
        c.execute("CREATE TABLE items (client int, n int, kind text)")

    def worker(i: int):
        with ps.psycopg_connect(p, db) as conn:
            for n in range(20):
                if n % 2 == 0:
                    with conn.transaction():
                        conn.execute("INSERT INTO items VALUES (%s, %s, 'txn')", (i, n))
                        cnt = conn.execute("SELECT count(*) FROM items WHERE client = %s",
                                           (i,)).fetchone()[0]
                        assert cnt == n + 1, (i, n, cnt)
                else:
                    conn.execute("INSERT INTO items VALUES (%s, %s, 'auto')", (i, n))
                    got = conn.execute("SELECT max(n) FROM items WHERE client = %s",
                                       (i,)).fetchone()[0]
                    assert got == n, (i, n, got)

    with ps.BackendMonitor(lambda: ps.backend_count(pg, UPSTREAM_ROLE, db)) as mon:
        failures = run_threads(worker, list(range(30)))
    assert not failures, f"{len(failures)} clients failed, first: {failures[0]!r}" + proxy_info(p)
    assert not mon.errors, mon.errors[:3]
    assert len(mon.samples) >= 3, f"the monitor sampled only {len(mon.samples)} times"
    assert 1 <= mon.max <= 3, (f"upstream client backends of {UPSTREAM_ROLE}: max {mon.max} "
                               f"(pool size 3); samples {sorted(set(mon.samples))}")
    assert ps.backend_count(pg, UPSTREAM_ROLE, db) <= 3
    assert pg.sql("SELECT count(*), count(DISTINCT (client, n)) FROM items",
                  dbname=db) == [(600, 600)]


@pytest.mark.timeout_s(120)
def test_a_size_below_the_loop_count_serves_every_loop(make_proxy, db):
    """[pool] size 1 on two event loops, clients on both (each loop accepts on its own socket
    and the kernel spreads connections by address: with eight clients all land on one loop once
    in 128 runs): the one connection moves to the loop whose client waits for it. It used to stay
    with the loop that opened it while the other loop's clients waited into 53300."""
    p = make_proxy(extra=ps.pool_extra(size=1, threads=2, max_client_wait_seconds=5))
    conns = [ps.psycopg_connect(p, db) for _ in range(8)]
    with ps.closing_all(conns):
        for n in range(5):
            for i, conn in enumerate(conns):
                assert conn.execute("SELECT %s::int", (n * 10 + i,)).fetchone()[0] == n * 10 + i
    assert p.alive()


@pytest.mark.timeout_s(120)
def test_concurrent_logins_on_cold_pool(make_proxy, db):
    """The first clients of a (role, database) log in at once while the pool has no connection
    yet (the proxy borrows one to learn the server's parameters): all get in, the proxy lives."""
    p = make_proxy(extra=ps.pool_extra(size=1))

    def worker(i: int):
        with ps.psycopg_connect(p, db) as conn:
            assert conn.execute("SELECT %s::int", (i,)).fetchone()[0] == i

    failures = run_threads(worker, list(range(10)))
    if failures:
        with contextlib.suppress(Exception):   # a crashing process may still be dumping core
            p.proc.wait(timeout=10)
    assert not failures, (f"{len(failures)} of 10 clients failed (proxy exit status "
                          f"{p.proc.poll()}), first: {failures[0]!r}" + proxy_info(p))
    assert p.alive()


def prime(connect):
    """One client alone first, so that the pool knows the server's parameters (concurrent
    logins on a cold pool have their own test)."""
    with connect() as c:
        c.execute("SELECT 1")


# ---------------------------------------------------------------------------------------------
# 2. tenants interleaved on shared connections

# (user, options, tenant name): pinned users by their only tenant, by alias, by user-name
# suffix and by startup options
TENANT_CLIENTS = [
    ("alice", None, "acme"),
    ("alice2", None, "acme"),
    ("carol", None, "acme"),
    ("bob", None, "globex"),
    ("star.globex", None, "globex"),
    ("star.umbrella", None, "umbrella"),
    ("star.cyberdyne", None, "cyberdyne"),
    ("star", ts.tenant_option(ALL_TENANTS["tyrell"]), "tyrell"),
    ("star", ts.tenant_option("wonka"), "wonka"),
]


@pytest.mark.timeout_s(240)
def test_tenants_interleaved_on_shared_connections(make_pool_tproxy, pool_tcluster):
    p = make_pool_tproxy(size=2)
    prime(lambda: ps.tconnect(p, "alice"))
    clients = [(k, *c) for k in range(3) for c in TENANT_CLIENTS]   # 27 clients, 6 tenants
    marker = f"pool-{ts.new_uuid()[:8]}"

    def worker(client):
        k, user, options, tenant = client
        own = ALL_TENANTS[tenant]
        with ps.tconnect(p, user, options=options) as conn:
            for n in range(12):
                title = f"{marker}:{tenant}:{user}:{k}:{n}"
                if n % 3 == 2:
                    tid, cnt, others = conn.execute(
                        "SELECT current_setting('nile.tenant_id'), count(*), "
                        "count(*) FILTER (WHERE tenant_id::text <> current_setting('nile.tenant_id')) "
                        "FROM todos").fetchone()
                    assert tid == own and others == 0, (client, n, tid, others)
                    continue
                with conn.transaction():
                    tid = conn.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0]
                    assert tid == own, f"{client} txn {n}: context {tid}, expected {own}"
                    conn.execute("INSERT INTO todos (tenant_id, title) VALUES (%s, %s)",
                                 (own, title))
                    rows = conn.execute("SELECT tenant_id::text, title FROM todos").fetchall()
                    foreign = [r for r in rows if r[0] != own]
                    assert not foreign, f"{client} txn {n} read rows of other tenants: {foreign[:5]}"
                    assert (own, title) in rows, f"{client} txn {n}: its own insert is not visible"
                    tid2 = conn.execute("SELECT nile.current_tenant_id()::text").fetchone()[0]
                    assert tid2 == own

    with ps.BackendMonitor(lambda: ps.backend_count(pool_tcluster.srv, ts.PROXY_ROLE,
                                                    ts.APP_DB)) as mon:
        failures = run_threads(worker, clients)
    try:
        assert not failures, (f"{len(failures)} clients failed, first: {failures[0]!r}"
                              + proxy_info(p))
        assert 1 <= mon.max <= 2, (mon.max, sorted(set(mon.samples)))
        # ownership, checked directly: every row carries the tenant named in its title
        with pool_tcluster.su(ts.APP_DB) as c:
            rows = c.execute("SELECT tenant_id::text, title FROM todos WHERE title LIKE %s",
                             (marker + ":%",)).fetchall()
        per_tenant: dict[str, int] = {}
        for tid, title in rows:
            tenant = title.split(":")[1]
            assert tid == ALL_TENANTS[tenant], f"row {title!r} belongs to {tid}"
            per_tenant[tenant] = per_tenant.get(tenant, 0) + 1
        # 8 transactions with an insert per client (n % 3 != 2 for n in 0..11)
        expected: dict[str, int] = {}
        for _, _, _, tenant in clients:
            expected[tenant] = expected.get(tenant, 0) + 8
        assert per_tenant == expected
    finally:
        with pool_tcluster.su(ts.APP_DB) as c:
            c.execute("DELETE FROM todos WHERE title LIKE %s", (marker + ":%",))


# 2,000 clients of 24 tenants at once on 8 upstream connections: every client logs in (SCRAM),
# all are connected together, then each runs transactions that insert and read its tenant's rows
# through asyncpg's named statements; every row any client reads must be its own tenant's.
SCALE_TENANTS = {f"scale{n:02d}": f"5ca1e000-0000-4000-8000-{n:012d}" for n in range(1, 25)}
SCALE_CLIENTS = 2000
SCALE_TRANSACTIONS = 3


@pytest.mark.timeout_s(420)
def test_thousands_of_clients_many_tenants(pool_tcluster, tmp_path):
    ps.add_tenants(pool_tcluster, SCALE_TENANTS)
    size = 8
    cfg = ts.proxy_config(pool_tcluster, log_level="warning", extra=ps.pool_extra(size=size))
    p = ts.TenancyProxy(tmp_path / "scale-proxy", cfg, ps.pool_map(SCALE_TENANTS))
    p.start()
    marker = f"scale-{ts.new_uuid()[:8]}"
    names = list(SCALE_TENANTS)

    async def client(i: int, connected: asyncio.Event, count: list[int], gate: asyncio.Semaphore):
        tenant = names[i % len(names)]
        own = SCALE_TENANTS[tenant]
        try:
            async with gate:   # log-ins 100 at a time; the transactions below all run together
                conn = await asyncpg.connect(host=p.host, port=p.port, user=f"star.{tenant}",
                                             password=ps.password_of("star"),
                                             database=ts.APP_DB, ssl=False, timeout=60)
        except BaseException:
            connected.set()   # the others need not wait for a client that will not come
            raise
        try:
            count[0] += 1
            if count[0] == SCALE_CLIENTS:
                connected.set()
            await asyncio.wait_for(connected.wait(), 240)
            for n in range(SCALE_TRANSACTIONS):
                title = f"{marker}:{tenant}:{i}:{n}"
                async with conn.transaction():
                    setting = await conn.fetchval("SELECT current_setting('nile.tenant_id')")
                    assert setting == own, f"client {i} ({tenant}) txn {n}: context {setting}"
                    await conn.execute("INSERT INTO todos (tenant_id, title) VALUES ($1, $2)",
                                       own, title)
                    rows = await conn.fetch("SELECT tenant_id::text AS t, title FROM todos "
                                            "WHERE title LIKE $1", marker + ":%")
                read = [tuple(r) for r in rows]
                foreign = [r for r in read if r[0] != own]
                assert not foreign, f"client {i} ({tenant}) txn {n} read {foreign[:3]}"
                assert (own, title) in read, \
                    f"client {i} ({tenant}) txn {n}: its own insert is not visible"
        finally:
            await conn.close()

    async def main():
        connected, count, gate = asyncio.Event(), [0], asyncio.Semaphore(100)
        return await asyncio.gather(*(client(i, connected, count, gate)
                                      for i in range(SCALE_CLIENTS)), return_exceptions=True)

    try:
        with ps.BackendMonitor(lambda: ps.backend_count(pool_tcluster.srv, ts.PROXY_ROLE,
                                                        ts.APP_DB)) as mon:
            results = asyncio.run(main())
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, (f"{len(errors)} of {SCALE_CLIENTS} clients failed, first: "
                            f"{errors[0]!r}" + proxy_info(p))
        assert p.alive(), "the proxy died" + proxy_info(p)
        assert 1 <= mon.max <= size, (mon.max, sorted(set(mon.samples)))
        # every row carries the tenant its writer named in the title, and nothing is missing
        with pool_tcluster.su(ts.APP_DB) as c:
            rows = c.execute("SELECT tenant_id::text, title FROM todos WHERE title LIKE %s",
                             (marker + ":%",)).fetchall()
        assert len(rows) == SCALE_CLIENTS * SCALE_TRANSACTIONS
        for tid, title in rows:
            assert tid == SCALE_TENANTS[title.split(":")[1]], f"row {title!r} belongs to {tid}"
    finally:
        p.terminate()
        with pool_tcluster.su(ts.APP_DB) as c:
            c.execute("DELETE FROM todos WHERE title LIKE %s", (marker + ":%",))


@pytest.mark.timeout_s(120)
@pytest.mark.timeout_s(120)
def test_switch_users_rolled_back_set_is_not_taken_for_the_connections_context(make_pool_tproxy):
    """sam (switch) sets globex, then sets acme in a transaction that rolls back (ROLLBACK, or
    an error in the implicit transaction of a multi-statement Query): the server is back on
    globex. The proxy had recorded acme for the connection, and lent it to alice2 (pinned to
    acme, no user id: the same context as sam's acme) without a switch: alice2 ran as globex
    and read globex's rows."""
    p = make_pool_tproxy(mode="transaction", size=1)
    with ps.tconnect(p, "sam") as sam:
        for rolled_back in (["BEGIN", f"SET nile.tenant_id = '{ts.ACME}'", "ROLLBACK"],
                            [f"SET nile.tenant_id = '{ts.ACME}'; SELECT 1/0"]):
            sam.execute(f"SET nile.tenant_id = '{ts.GLOBEX}'")
            for sql in rolled_back:
                sam.pgconn.exec_(sql.encode())   # simple protocol; an error is a result here
            with ps.tconnect(p, "alice2") as alice2:
                tid, tenants = alice2.execute(
                    "SELECT current_setting('nile.tenant_id'), "
                    "(SELECT array_agg(DISTINCT tenant_id::text) FROM todos)").fetchone()
            assert (tid, tenants) == (ts.ACME, [ts.ACME]), (rolled_back, tid, tenants)


def test_switch_user_context_survives_lending(make_pool_tproxy):
    """A switch user's own SET nile.tenant_id is the context restored on every lent connection,
    while pinned clients of another tenant use the same (single) upstream connection."""
    p = make_pool_tproxy(size=1)
    with ps.tconnect(p, "sam") as sam, ps.tconnect(p, "alice") as alice:
        sam.execute(f"SET nile.tenant_id = '{ts.GLOBEX}'")
        for n in range(5):
            with alice.transaction():
                assert alice.execute("SELECT current_setting('nile.tenant_id')"
                                     ).fetchone()[0] == ts.ACME
                apid = alice.execute("SELECT pg_backend_pid()").fetchone()[0]
            with sam.transaction():
                tid, spid = sam.execute("SELECT current_setting('nile.tenant_id'), "
                                        "pg_backend_pid()").fetchone()
                tenants = {r[0] for r in sam.execute("SELECT tenant_id::text FROM todos")}
            assert apid == spid, "pool size 1: both clients must share the connection"
            assert tid == ts.GLOBEX, f"round {n}: sam's context is {tid}" + proxy_info(p)
            assert tenants <= {ts.GLOBEX}, tenants
        # switching again takes effect on the next transactions
        sam.execute(f"SET nile.tenant_id = '{ts.ACME}'")
        alice.execute("SELECT 1")
        assert sam.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.ACME


# ---------------------------------------------------------------------------------------------
# 3. isolation between borrowers: refused in transaction mode (0A000), session usable


def _no_advisory_locks(pg, db, conn):
    return pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]


def _no_temp_tables(pg, db, conn):
    return pg.sql("SELECT count(*) FROM pg_class WHERE relpersistence = 't' "
                  "AND relname LIKE 'pool_tt%%'", dbname=db) == [(0,)]


def _no_listen(pg, db, conn):
    return conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()[0] == 0


def _no_prepared_pp(pg, db, conn):
    return conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 'pool_pp'"
                        ).fetchone()[0] == 0


def _no_hold_cursor(pg, db, conn):
    return conn.execute("SELECT count(*) FROM pg_cursors WHERE name = 'pool_c'").fetchone()[0] == 0


def _maintenance_work_mem_unchanged(pg, db, conn):
    return conn.execute("SHOW maintenance_work_mem").fetchone()[0] == "64MB"


def _work_mem_unchanged(pg, db, conn):
    return conn.execute("SHOW work_mem").fetchone()[0] == "4MB"


def _search_path_unchanged(pg, db, conn):
    return conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'


REFUSED = {
    "create_temp_table": ("CREATE TEMP TABLE pool_tt1 (a int)", _no_temp_tables),
    "create_temporary_table_as": ("CREATE TEMPORARY TABLE pool_tt2 AS SELECT 1 AS a",
                                  _no_temp_tables),
    "create_local_temp": ("create local temporary table pool_tt3 (a int)", _no_temp_tables),
    "select_into_temp": ("SELECT 1 AS a INTO TEMP pool_tt4", _no_temp_tables),
    "create_table_pg_temp": ("CREATE TABLE pg_temp.pool_tt5 (a int)", _no_temp_tables),
    "temp_table_on_commit_delete": ("CREATE TEMP TABLE pool_tt6 (a int) ON COMMIT DELETE ROWS",
                                    _no_temp_tables),
    "declare_with_hold": ("DECLARE pool_c CURSOR WITH HOLD FOR SELECT 1", _no_hold_cursor),
    "advisory_lock": ("SELECT pg_advisory_lock(4242)", _no_advisory_locks),
    "advisory_lock_shared": ("SELECT pg_advisory_lock_shared(4242)", _no_advisory_locks),
    "try_advisory_lock": ("select PG_TRY_ADVISORY_LOCK(1, 2)", _no_advisory_locks),
    "advisory_lock_qualified": ("SELECT pg_catalog.pg_advisory_lock(4242)", _no_advisory_locks),
    "advisory_lock_quoted": ('SELECT "pg_advisory_lock"(4242)', _no_advisory_locks),
    "listen": ("LISTEN pool_chan", _no_listen),
    "sql_prepare": ("PREPARE pool_pp AS SELECT 1", _no_prepared_pp),
    "sql_execute": ("EXECUTE pool_pp", _no_prepared_pp),
    # (statement_timeout and the other pool.track_extra_parameters are allowed: read back)
    "set_untracked": ("SET maintenance_work_mem = '99MB'", _maintenance_work_mem_unchanged),
    "set_session_untracked": ("SET SESSION work_mem = '8MB'", _work_mem_unchanged),
    "set_search_path": ("SET search_path = pg_catalog", _search_path_unchanged),
    "set_schema": ("SET SCHEMA 'pg_catalog'", _search_path_unchanged),
    "reset_untracked": ("RESET maintenance_work_mem", _maintenance_work_mem_unchanged),
    "set_config_session": ("SELECT set_config('maintenance_work_mem', '99MB', false)",
                           _maintenance_work_mem_unchanged),
    "load": ("LOAD 'auto_explain'", None),
}
MULTI_ONLY = {"multi_statement": ("SELECT 1; SELECT pg_advisory_lock(4242)", _no_advisory_locks)}


@pytest.fixture
def txn_proxy(make_proxy):
    return make_proxy(extra=ps.pool_extra(size=2))


def _expect_refused(conn, sql: str, extended: bool):
    with pytest.raises(psycopg.Error) as ei:
        if extended:
            conn.cursor().execute(sql, binary=True)    # Parse/Bind/Execute
        else:
            conn.execute(sql)                           # simple Query
    return ei.value


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("case", sorted(REFUSED) + sorted(MULTI_ONLY))
def test_refused_in_transaction_mode_global(txn_proxy, pg, db, case, protocol):
    sql, check = REFUSED.get(case) or MULTI_ONLY[case]
    if case in MULTI_ONLY and protocol == "extended":
        pytest.skip("several statements cannot go through Parse")
    with ps.psycopg_connect(txn_proxy, db) as conn:
        # (sql_execute: nothing named pool_pp exists; the refusal must come first, not 26000)
        err = _expect_refused(conn, sql, protocol == "extended")
        assert ps.sqlstate_of(err) == "0A000", (f"{sql!r}: {ps.sqlstate_of(err)} {err}"
                                                + proxy_info(txn_proxy))
        assert not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
        if check is not None:
            assert check(pg, db, conn), f"{sql!r} left state behind"
        # and in a transaction the session is usable afterwards too
        with conn.transaction():
            assert conn.execute("SELECT 2").fetchone()[0] == 2


@pytest.mark.parametrize("case", ["create_temp_table", "declare_with_hold", "advisory_lock",
                                  "listen", "sql_prepare", "set_untracked", "load"])
def test_refused_in_transaction_mode_pinned(make_pool_tproxy, case):
    p = make_pool_tproxy(size=2)
    sql, _ = REFUSED[case]
    with ps.tconnect(p, "alice") as conn:
        err = _expect_refused(conn, sql, extended=False)
        state = ps.sqlstate_of(err)
        # LOAD is refused by the tenancy guard too (42501); either refusal is fine for it
        allowed = {"0A000", "42501"} if case == "load" else {"0A000"}
        assert state in allowed, f"{sql!r}: {state} {err}" + proxy_info(p)
        assert conn.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.ACME


@pytest.mark.timeout_s(120)
def test_transaction_scoped_state_is_allowed(txn_proxy, pg, db):
    with ps.psycopg_connect(txn_proxy, db) as conn:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE pool_scratch (a int) ON COMMIT DROP")
            conn.execute("INSERT INTO pool_scratch SELECT generate_series(1, 5)")
            assert conn.execute("SELECT sum(a) FROM pool_scratch").fetchone()[0] == 15
        assert pg.sql("SELECT count(*) FROM pg_class WHERE relname = 'pool_scratch'",
                      dbname=db) == [(0,)]

        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 1234")
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
            conn.execute("SET LOCAL work_mem = '8MB'")
            assert conn.execute("SHOW work_mem").fetchone()[0] == "8MB"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"

        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(1)")
            assert conn.execute("SELECT pg_try_advisory_xact_lock(2)").fetchone()[0] is True
            held = pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0]
            assert held == 2
        assert pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]

        # set_config with is_local = true is SET LOCAL
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', '777', true)")
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "777ms"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"

        # NOTIFY is fine (no session state)
        conn.execute("NOTIFY pool_chan, 'x'")
        # Unlocking and UNLISTEN only remove state (drivers' reset queries send them)
        conn.execute("SELECT pg_advisory_unlock_all()")
        conn.execute("UNLISTEN *")


# ---------------------------------------------------------------------------------------------
# 4. tracked settings restored on every lent connection


@pytest.fixture
def one_conn_proxy(make_proxy):
    return make_proxy(extra=ps.pool_extra(size=1))


def _direct_default(pg, db, setting: str) -> str:
    with psycopg.connect(host=pg.host, port=pg.port, user=UPSTREAM_ROLE,
                         password=h.ROLE_PASSWORDS[UPSTREAM_ROLE], dbname=db,
                         sslmode="disable") as c:
        return c.execute(f"SHOW {setting}").fetchone()[0]


TRACKED = {
    # parameter: (SET statement, probe query, value A expects from the probe)
    "TimeZone": ("SET TimeZone = 'Asia/Tokyo'", "SHOW TimeZone", "Asia/Tokyo"),
    "TimeZone_spelled": ("SET TIME ZONE 'Asia/Tokyo'", "SHOW TimeZone", "Asia/Tokyo"),
    "DateStyle": ("SET DateStyle = 'German, DMY'", "SELECT DATE '2024-03-05'::text",
                  "05.03.2024"),
    "IntervalStyle": ("SET IntervalStyle = 'iso_8601'", "SELECT interval '1 day 2 hours'::text",
                      "P1DT2H"),
    "application_name": ("SET application_name = 'pool-set-A'", "SHOW application_name",
                         "pool-set-A"),
    "standard_conforming_strings": ("SET standard_conforming_strings = off",
                                    "SHOW standard_conforming_strings", "off"),
}


@pytest.mark.parametrize("param", sorted(TRACKED))
def test_tracked_setting_restored(one_conn_proxy, pg, db, param):
    set_sql, probe, a_value = TRACKED[param]
    with ps.psycopg_connect(pg, db, user=UPSTREAM_ROLE,
                            password=h.ROLE_PASSWORDS[UPSTREAM_ROLE]) as d:
        default = d.execute(probe).fetchone()[0]
    assert default != a_value
    p = one_conn_proxy
    with ps.psycopg_connect(p, db) as a, ps.psycopg_connect(p, db) as b:
        a.execute(set_sql)
        pids = set()
        for n in range(4):
            assert a.execute(probe).fetchone()[0] == a_value, f"A round {n}" + proxy_info(p)
            pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            assert b.execute(probe).fetchone()[0] == default, f"B round {n}" + proxy_info(p)
            with b.transaction():
                assert b.execute(probe).fetchone()[0] == default
                pids.add(b.execute("SELECT pg_backend_pid()").fetchone()[0])
            with a.transaction():
                assert a.execute(probe).fetchone()[0] == a_value
        assert len(pids) == 1, f"pool size 1 but several backends: {pids}"
        # A resets the parameter: back to what it had at log-in
        a.execute(f"RESET {param.split('_spelled')[0]}")
        b.execute(set_sql)   # and now B is the one that changed it
        assert a.execute(probe).fetchone()[0] == default, proxy_info(p)
        assert b.execute(probe).fetchone()[0] == a_value


def test_timezone_parameter_status_per_client(one_conn_proxy, db):
    """The TimeZone a driver believes (ParameterStatus) stays each client's own."""
    p = one_conn_proxy
    with ps.psycopg_connect(p, db) as a, ps.psycopg_connect(p, db) as b:
        default = param_status(b, "TimeZone")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        for _ in range(3):
            a.execute("SELECT 1")
            b.execute("SELECT 1")
            assert param_status(a, "TimeZone") == "Asia/Tokyo"
            assert param_status(b, "TimeZone") == default, proxy_info(p)
            # timestamptz rendering follows each client's zone
            assert a.execute("SELECT '2024-01-01 00:00:00+00'::timestamptz::text"
                             ).fetchone()[0] == "2024-01-01 09:00:00+09"


def test_log_in_reports_each_clients_own_parameters(one_conn_proxy, db):
    """The ParameterStatus messages of a log-in carry the client's own startup values over the
    pool's, also for later clients of the same settings (the proxy encodes them once per
    settings) and after clients of other settings."""
    p = one_conn_proxy
    prime(lambda: ps.psycopg_connect(p, db))
    tokyo = dict(application_name="alpha", options="-c TimeZone=Asia/Tokyo")
    plain = dict(application_name="beta")
    seen = []
    for kw in (tokyo, plain, tokyo, plain, tokyo):
        with ps.psycopg_connect(p, db, **kw) as c:
            seen.append((param_status(c, "application_name"), param_status(c, "TimeZone"),
                         param_status(c, "server_version"), param_status(c, "DateStyle")))
            assert c.execute("SHOW TimeZone").fetchone()[0] == seen[-1][1]
    default_zone = seen[1][1]
    assert default_zone != "Asia/Tokyo"
    assert [s[:2] for s in seen] == [("alpha", "Asia/Tokyo"), ("beta", default_zone)] * 2 + \
        [("alpha", "Asia/Tokyo")]
    assert len({s[2:] for s in seen}) == 1 and seen[0][2] and seen[0][3], seen


EXTRA = ("client_min_messages", "statement_timeout", "lock_timeout")


def test_settings_the_server_does_not_report_follow_their_client(one_conn_proxy, pg, db):
    """Rails' connection set-up (`SET client_min_messages TO 'warning'`) and timeouts set at
    session level: [pool] track_extra_parameters (these by default) lets them through, reads the
    value back after the transaction, and restores it on every connection lent to that client
    and to no other, also when it is set through a prepared statement, rolled back, reset, or
    when the client leaves right after setting it."""
    p = one_conn_proxy
    defaults = tuple(_direct_default(pg, db, name) for name in EXTRA)
    show = "SELECT " + ", ".join(f"current_setting('{n}')" for n in EXTRA)
    with ps.psycopg_connect(p, db) as a, ps.psycopg_connect(p, db) as b:
        # what Rails' PostgreSQL adapter sends when it connects (configure_connection)
        for sql in ("SET client_min_messages TO 'warning'", "SET standard_conforming_strings = on",
                    "SET intervalstyle = iso_8601", "SET SESSION timezone TO 'UTC'"):
            a.execute(sql)
        assert a.execute("SHOW intervalstyle").fetchone()[0] == "iso_8601"
        a.execute("SET SESSION statement_timeout = '7s'")
        for _ in range(2):
            assert b.execute(show).fetchone() == defaults, proxy_info(p)
            assert a.execute(show).fetchone() == ("warning", "7s", defaults[2]), proxy_info(p)
        # rolled back: not the client's; committed: the client's
        with a.transaction(force_rollback=True):
            a.execute("SET lock_timeout = '3s'")
            assert a.execute("SHOW lock_timeout").fetchone()[0] == "3s"
        assert a.execute("SHOW lock_timeout").fetchone()[0] == defaults[2]
        with a.transaction():
            a.execute("SELECT set_config('lock_timeout', '4s', false)")
        assert b.execute(show).fetchone() == defaults
        assert a.execute(show).fetchone() == ("warning", "7s", "4s")
        # back to the default: nothing of the client's is left to restore
        a.execute("RESET statement_timeout")
        a.execute("SET lock_timeout TO DEFAULT")
        assert b.execute(show).fetchone() == defaults
        assert a.execute(show).fetchone() == ("warning", defaults[1], defaults[2])
        # a setting not in the list stays refused
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute("SET work_mem = '1MB'")
    # a prepared SET runs again at each Bind, on whichever connection is lent
    with ps.ExtConn(p.host, p.port) as c, ps.psycopg_connect(p, db) as b:
        c.startup("alice", "alicepw", db)
        assert c.batch(c.parse("st", "SET statement_timeout = '2s'"))["errors"] == []
        assert c.run_prepared("st", [])["errors"] == []
        assert c.query("SHOW statement_timeout") == [["2s"]]
        assert b.execute("SHOW statement_timeout").fetchone()[0] == defaults[1]
        assert c.query("RESET statement_timeout") == []
        assert b.execute("SHOW statement_timeout").fetchone()[0] == defaults[1]
        assert c.query("SHOW statement_timeout") == [[defaults[1]]]
        assert c.run_prepared("st", [])["errors"] == []
        assert b.execute("SHOW statement_timeout").fetchone()[0] == defaults[1]
        assert c.query("SHOW statement_timeout") == [["2s"]]
    # a client that leaves right after its SET, answered or not
    for wait in (True, False):
        with ps.ExtConn(p.host, p.port) as c:
            c.startup("alice", "alicepw", db)
            c.send(h.message(b"Q", b"SET statement_timeout = '9s'; SET client_min_messages = error\x00"))
            if wait:
                c.read_batch()
        with ps.psycopg_connect(p, db) as b:
            assert b.execute(show).fetchone() == defaults, (wait, proxy_info(p))


def test_read_back_settings_and_a_reset_in_the_same_batch(one_conn_proxy, pg, db):
    """RESET ALL or DISCARD ALL makes the proxy re-apply the client's settings before the
    client's next message; a read-back setting changed in the same batch is neither lost (SET
    after the RESET ALL) nor carried to the next borrower when the client leaves at once (the
    fuzzer's exact sequences that did carry one are in test_fuzz.py)."""
    p = one_conn_proxy
    defaults = tuple(_direct_default(pg, db, name) for name in EXTRA)
    show = "SELECT " + ", ".join(f"current_setting('{n}')" for n in EXTRA)
    with ps.ExtConn(p.host, p.port) as c:
        c.startup("alice", "alicepw", db)
        assert c.query("RESET ALL; SET lock_timeout = '5s'") == []
        assert c.query("SHOW lock_timeout") == [["5s"]]
    for leaving in ([b"RESET ALL; SET lock_timeout = '5s'; SET TRANSACTION READ ONLY"],
                    [b"SET client_min_messages = error", b"SELECT 1; DISCARD ALL"],
                    [b"SET client_min_messages = error", b"SELECT 1/0; DISCARD ALL"]):
        with ps.ExtConn(p.host, p.port) as c:
            c.startup("alice", "alicepw", db)
            c.send(b"".join(h.message(b"Q", q + b"\x00") for q in leaving) + h.message(b"X"))
            h.read_until_closed(c.sock, 30)
        with ps.psycopg_connect(p, db) as b:
            assert b.execute(show).fetchone() == defaults, (leaving, proxy_info(p))


def test_settings_list_can_be_emptied(make_proxy, db):
    p = make_proxy(extra={**ps.pool_extra(size=1, track_extra_parameters=[])})
    with ps.psycopg_connect(p, db) as a:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
            a.execute("SET client_min_messages TO 'warning'")
        assert "transaction pool mode" in str(ei.value)


def test_application_name_startup_parameter_restored(one_conn_proxy, db):
    p = one_conn_proxy
    with ps.psycopg_connect(p, db, application_name="pool-app-A") as a, \
            ps.psycopg_connect(p, db, application_name="pool-app-B") as b, \
            ps.psycopg_connect(p, db) as c:
        c_reported = param_status(c, "application_name") or ""
        assert c_reported not in ("pool-app-A", "pool-app-B")
        probe = ("SELECT current_setting('application_name'), "
                 "(SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())")
        for n in range(4):
            assert a.execute(probe).fetchone() == ("pool-app-A", "pool-app-A"), proxy_info(p)
            assert b.execute(probe).fetchone() == ("pool-app-B", "pool-app-B"), proxy_info(p)
            got = c.execute(probe).fetchone()
            assert got == (c_reported, c_reported), (n, got)
            with a.transaction():
                assert a.execute("SHOW application_name").fetchone()[0] == "pool-app-A"


def test_options_setting_restored(one_conn_proxy, db):
    p = one_conn_proxy
    with ps.psycopg_connect(p, db, options="-c statement_timeout=1234 -c work_mem=5MB") as d, \
            ps.psycopg_connect(p, db) as e:
        for n in range(4):
            assert d.execute("SHOW statement_timeout").fetchone()[0] == "1234ms", (
                f"round {n}" + proxy_info(p))
            assert e.execute("SHOW statement_timeout").fetchone()[0] == "0", f"round {n}"
            with d.transaction():
                assert d.execute("SELECT current_setting('statement_timeout'), "
                                 "current_setting('work_mem')").fetchone() == ("1234ms", "5MB")
            with e.transaction():
                assert e.execute("SELECT current_setting('statement_timeout'), "
                                 "current_setting('work_mem')").fetchone() == ("0", "4MB")


# ---------------------------------------------------------------------------------------------
# 5. prepared statements across lent connections

PREP_Q = "SELECT %s::int * 2, pg_backend_pid()"


@pytest.mark.timeout_s(120)
def test_prepared_statement_runs_on_another_connection(make_proxy, db):
    """Deterministic: the statement is prepared on backend X, then executed while X is held by
    another client, so it must run (re-prepared) on backend Y."""
    p = make_proxy(extra=ps.pool_extra(size=2))
    with ps.psycopg_connect(p, db) as c, ps.psycopg_connect(p, db) as h1, \
            ps.psycopg_connect(p, db) as h2:
        v, x = c.execute(PREP_Q, (1,), prepare=True).fetchone()
        assert v == 2
        v, x2 = c.execute(PREP_Q, (2,), prepare=True).fetchone()
        assert v == 4
        # both holders in a transaction: the pool's two connections are lent
        h1.execute("BEGIN")
        p1 = h1.execute("SELECT pg_backend_pid()").fetchone()[0]
        h2.execute("BEGIN")
        p2 = h2.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert p1 != p2
        assert x in (p1, p2)
        keep, free = (h1, h2) if p1 == x else (h2, h1)
        free.execute("COMMIT")
        v, y = c.execute(PREP_Q, (21,), prepare=True).fetchone()
        assert v == 42
        assert y != x, "the only free backend is not X"
        # and describe-only (cursor.description) plus several executions there
        for n in range(5):
            v, _ = c.execute(PREP_Q, (n,), prepare=True).fetchone()
            assert v == 2 * n
        keep.execute("COMMIT")
        # back and forth
        for n in range(10):
            assert c.execute(PREP_Q, (n,), prepare=True).fetchone()[0] == 2 * n
            assert h1.execute(PREP_Q, (n + 1,), prepare=True).fetchone()[0] == 2 * n + 2


@pytest.mark.timeout_s(180)
def test_prepared_statements_many_clients_psycopg(make_proxy, db):
    p = make_proxy(extra=ps.pool_extra(size=2))
    prime(lambda: ps.psycopg_connect(p, db))
    seen_pids: dict[int, set[int]] = {}

    def worker(i: int):
        pids = seen_pids.setdefault(i, set())
        with ps.psycopg_connect(p, db, prepare_threshold=0) as conn:
            for n in range(30):
                if n % 4 == 3:
                    with conn.transaction():
                        a = conn.execute("SELECT %s::int + %s::int", (i, n)).fetchone()[0]
                        b = conn.execute("SELECT %s::text || '-' || %s::text",
                                         (f"c{i}", n)).fetchone()[0]
                    assert (a, b) == (i + n, f"c{i}-{n}")
                else:
                    v, pid = conn.execute(PREP_Q, (i * 100 + n,), prepare=True).fetchone()
                    assert v == 2 * (i * 100 + n)
                    pids.add(pid)

    failures = run_threads(worker, list(range(8)))
    assert not failures, f"{failures[0]!r}" + proxy_info(p)
    assert set().union(*seen_pids.values()) and len(set().union(*seen_pids.values())) <= 2


@pytest.mark.timeout_s(180)
def test_prepared_statements_asyncpg(make_proxy, db):
    p = make_proxy(extra=ps.pool_extra(size=2))
    prime(lambda: ps.psycopg_connect(p, db))

    async def client(i: int):
        conn = await asyncpg.connect(host=p.host, port=p.port, user="alice", password="alicepw",
                                     database=db, ssl=False)
        try:
            stmt = await conn.prepare("SELECT $1::int + 1 AS v, $2::text AS t")
            for n in range(25):
                rows = await stmt.fetch(i * 1000 + n, f"c{i}")
                assert [tuple(r) for r in rows] == [(i * 1000 + n + 1, f"c{i}")]
                if n % 5 == 0:
                    async with conn.transaction():
                        assert await conn.fetchval("SELECT $1::int * 3", n) == 3 * n
                        assert await stmt.fetchval(n, "x") == n + 1
                # asyncpg's own statement cache (named statements) for ad-hoc queries
                assert await conn.fetchval("SELECT $1::text || 'z'", str(n)) == f"{n}z"
            # a statement prepared, dropped, prepared again
            s2 = await conn.prepare("SELECT 7")
            assert await s2.fetchval() == 7
            await conn.reset()
            assert await conn.fetchval("SELECT $1::int", 5) == 5
        finally:
            await conn.close()

    async def main():
        return await asyncio.gather(*(client(i) for i in range(6)), return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{errors[0]!r}" + proxy_info(p)


@pytest.mark.timeout_s(180)
def test_asyncpg_without_its_statement_cache(make_proxy, db):
    """statement_cache_size=0, what drivers' docs advise behind a transaction pooler: unnamed
    statements, each Parse+Describe+Flush answered before its Bind+Execute+Sync, five clients
    on one upstream connection."""
    p = make_proxy(extra=ps.pool_extra(size=1))
    prime(lambda: ps.psycopg_connect(p, db))

    async def client(i: int):
        conn = await asyncpg.connect(host=p.host, port=p.port, user="alice", password="alicepw",
                                     database=db, ssl=False, statement_cache_size=0)
        try:
            for n in range(30):
                assert await conn.fetchval("SELECT $1::int * 2", i * 100 + n) == 2 * (i * 100 + n)
                rows = await conn.fetch("SELECT g, $1::text FROM generate_series(1, 3) g", f"c{i}")
                assert [tuple(r) for r in rows] == [(g, f"c{i}") for g in (1, 2, 3)]
                if n % 3 == 0:
                    async with conn.transaction():
                        assert await conn.fetchval("SELECT $1::int + 1", n) == n + 1
                        total = 0
                        async for r in conn.cursor("SELECT g FROM generate_series(1, $1::int) g",
                                                   50, prefetch=7):
                            total += r[0]
                        assert total == 50 * 51 // 2
                stmt = await conn.prepare("SELECT $1::int - 1")
                assert await stmt.fetchval(n) == n - 1
                await asyncio.sleep(0)
        finally:
            await conn.close()

    async def main():
        return await asyncio.gather(*(client(i) for i in range(5)), return_exceptions=True)

    errors = [r for r in asyncio.run(main()) if isinstance(r, BaseException)]
    assert not errors, f"{errors[0]!r}" + proxy_info(p)


@pytest.mark.timeout_s(120)
def test_parse_close_deallocate_raw(make_proxy, db):
    p = make_proxy(extra=ps.pool_extra(size=2))
    with ps.ExtConn(p.host, p.port) as c, ps.ExtConn(p.host, p.port) as other:
        c.startup("alice", "alicepw", db)
        other.startup("alice", "alicepw", db)
        # Parse+Sync between transactions (the proxy may answer it itself)
        r = c.batch(c.parse("s1", "SELECT $1::int + 100"))
        assert r["errors"] == [] and r["tags"] == [b"1", b"Z"] and r["status"] == "I", r
        r = c.batch(c.parse("s2", "SELECT 'two'::text"))
        assert r["errors"] == [], r
        # the other client may use the same names: statements are per client
        r = other.batch(other.parse("s1", "SELECT 'other'::text"))
        assert r["errors"] == [], r
        for n in range(3):
            assert c.run_prepared("s1", [str(n)])["rows"] == [[str(100 + n)]]
            assert other.run_prepared("s1", [])["rows"] == [["other"]]
        # Describe of a statement
        r = c.batch(c.describe_statement("s1"))
        assert r["errors"] == [] and b"t" in r["tags"] and b"T" in r["tags"], r
        # Close
        r = c.batch(c.close_statement("s1"))
        assert r["errors"] == [] and b"3" in r["tags"], r
        r = c.run_prepared("s1", ["1"])
        assert [e.get("C") for e in r["errors"]] == ["26000"], r
        assert other.run_prepared("s1", [])["rows"] == [["other"]]
        # the name can be used again after Close
        assert c.batch(c.parse("s1", "SELECT $1::int - 1"))["errors"] == []
        assert c.run_prepared("s1", ["10"])["rows"] == [["9"]]
        # DEALLOCATE name (simple query)
        assert c.query("DEALLOCATE s1") == []
        assert [e.get("C") for e in c.run_prepared("s1", ["1"])["errors"]] == ["26000"]
        assert c.run_prepared("s2", [])["rows"] == [["two"]]
        # DEALLOCATE of an unknown name: 26000 as in Postgres
        with pytest.raises(h.PGError) as ei:
            c.query("DEALLOCATE nosuch")
        assert ei.value.sqlstate == "26000"
        # DEALLOCATE ALL
        assert c.batch(c.parse("s3", "SELECT 3"))["errors"] == []
        assert c.query("DEALLOCATE ALL") == []
        for name in ("s2", "s3"):
            assert [e.get("C") for e in c.run_prepared(name, [])["errors"]] == ["26000"], name
        assert other.run_prepared("s1", [])["rows"] == [["other"]]
        # names are free again; and a statement prepared inside a transaction survives it
        assert c.query("BEGIN") == []
        assert c.batch(c.parse("s2", "SELECT 'again'::text"))["errors"] == []
        assert c.run_prepared("s2", [])["rows"] == [["again"]]
        assert c.query("COMMIT") == []
        assert other.query("BEGIN") == []   # hold a connection so c may get the other one
        assert c.run_prepared("s2", [])["rows"] == [["again"]]
        assert other.query("COMMIT") == []
        assert c.query("SELECT 1") == [["1"]]


def test_parse_duplicate_statement_name_raw(make_proxy, db):
    """Parse of a name the client already prepared fails as in Postgres (42P05 duplicate
    prepared statement) and leaves the first statement in place."""
    p = make_proxy(extra=ps.pool_extra(size=2))
    with ps.ExtConn(p.host, p.port) as c:
        c.startup("alice", "alicepw", db)
        assert c.batch(c.parse("s1", "SELECT $1::int + 100"))["errors"] == []
        assert c.run_prepared("s1", ["1"])["rows"] == [["101"]]
        r = c.batch(c.parse("s1", "SELECT 1"))
        assert [e.get("C") for e in r["errors"]] == ["42P05"], r
        assert c.run_prepared("s1", ["1"])["rows"] == [["101"]]
        # also when Parse travels with Bind/Execute in one batch
        r = c.batch(c.parse("s1", "SELECT 2"), c.bind("s1", ["1"]), c.execute())
        assert [e.get("C") for e in r["errors"]] == ["42P05"], r
        assert c.run_prepared("s1", ["2"])["rows"] == [["102"]]


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_query_inside_a_failed_extended_batch(make_pool_tproxy, mode):
    """After an extended message fails, PostgreSQL discards everything up to the Sync, a Query
    in the middle of the batch included: that Query gets no ReadyForQuery. The proxy waited for
    one: it held the client after a batch whose Parse reset the context (DISCARD ALL) and hung,
    and otherwise kept counting one cycle too many, so a transaction-mode connection was never
    given back while the client stayed."""
    p = make_pool_tproxy(mode=mode, size=1)
    skipped = h.message(b"Q", b"SELECT 'skipped'\x00")
    with ps.ExtConn(p.host, p.port) as c:
        c.startup("alice", ps.password_of("alice"), ts.APP_DB)
        # a Parse that fails (two commands), after the proxy saw DISCARD ALL in it
        r = c.batch(c.parse("", "DISCARD ALL; SELECT 1"), skipped)
        assert [e.get("C") for e in r["errors"]] == ["42601"] and r["rows"] == [], r
        assert r["status"] == "I", r
        # the error already came back (Flush) when the client sends its Query: dropped too
        c.send(c.parse("", "SELEC 1") + h.message(b"H"))
        tag, body = c.read_message()
        assert tag == b"E" and h.parse_error_fields(body)["C"] == "42601"
        r = c.batch(skipped)
        assert r["errors"] == [] and r["rows"] == [] and r["tags"] == [b"Z"], r
        # a Bind that fails, with a Query and an Execute behind it
        r = c.batch(c.bind("no_such_statement", []), skipped, c.execute())
        assert [e.get("C") for e in r["errors"]] == ["26000"] and r["rows"] == [], r
        assert c.query("SELECT current_setting('nile.tenant_id')") == [[ts.ACME]]
        if mode == "transaction":
            # the only connection went back to the pool between transactions
            with ps.tconnect(p, "bob") as bob:
                assert bob.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.GLOBEX
        assert c.query("SELECT 'still here'") == [["still here"]]


@pytest.mark.timeout_s(120)
def test_prepared_statements_in_pipelined_and_failed_batches(make_pool_tproxy):
    """The Parse the proxy adds to prepare a statement on the connection is tracked until its
    ParseComplete: in a second batch sent behind the first (before its ReadyForQuery) it was
    forgotten at the first ReadyForQuery and its ParseComplete reached the client. And a Parse
    the server skipped (an earlier message of the batch failed) or refused prepared nothing: the
    proxy took the connection to have the statement (the client's next use failed with 26000
    naming the proxy's statement), and a client's refused Parse kept its name taken (42P05)."""
    p = make_pool_tproxy(mode="transaction", size=1)
    with ps.ExtConn(p.host, p.port) as c:
        c.startup("alice", ps.password_of("alice"), ts.APP_DB)
        for name, sql in (("s1", "SELECT 1"), ("s2", "SELECT 2"), ("div", "SELECT 1 / $1::int"),
                          ("s4", "SELECT 4")):
            assert c.batch(c.parse(name, sql))["errors"] == []
        assert c.run_prepared("s1", [])["rows"] == [["1"]]
        # two batches in one write, the second needing the proxy's Parse of s2
        c.send(c.bind("s1", []) + c.execute() + c.sync() + c.bind("s2", []) + c.execute() + c.sync())
        tags = []
        while tags.count(b"Z") < 2:
            tags.append(c.read_message()[0])
        assert tags == [b"2", b"D", b"C", b"Z", b"2", b"D", b"C", b"Z"], tags
        # a batch whose first Execute fails: the Parse of s4 behind it is skipped
        r = c.batch(c.bind("div", ["0"]), c.execute(), c.bind("s4", []), c.execute())
        assert [e.get("C") for e in r["errors"]] == ["22012"] and r["rows"] == [], r
        assert c.run_prepared("s4", [])["rows"] == [["4"]]
        # a client's own Parse refused by the server inside a transaction leaves its name free
        assert c.query("BEGIN") == []
        r = c.batch(c.parse("s5", "SELEC 5"))
        assert [e.get("C") for e in r["errors"]] == ["42601"], r
        assert c.query("ROLLBACK") == []
        assert c.batch(c.parse("s5", "SELECT 5"))["errors"] == []
        assert c.run_prepared("s5", [])["rows"] == [["5"]]
        # a Bind pipelined behind the batch whose Parse of it the server skipped fails under
        # the client's name (it went out under the proxy's before the skip was known)
        c.send(c.bind("div", ["0"]) + c.execute() + c.parse("s6", "SELECT 6") + c.sync()
               + c.bind("s6", []) + c.execute() + c.sync())
        r = c.read_batch()
        assert [e.get("C") for e in r["errors"]] == ["22012"], r
        r = c.read_batch()
        assert [e.get("M") for e in r["errors"]] == ['prepared statement "s6" does not exist'], r
    with ps.tconnect(p, "bob") as bob:
        assert bob.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.GLOBEX


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_context_after_a_reset_in_a_refused_batch_or_a_later_bind(make_pool_tproxy, mode):
    """RESET ALL or DISCARD ALL by Parse resets the tenant context when it is executed, and the
    proxy re-applies the context after the batch's Sync. It did not when it refused a later
    message of the same batch (the Sync answered the refusal and went no further), nor when a
    named or the unnamed statement holding it was bound again in a later batch: the session,
    and in transaction mode every later borrower of that connection's assumed context, ran with
    no tenant (found by test_fuzz's borrowers case)."""
    p = make_pool_tproxy(mode=mode, size=1)

    def tenant(c) -> str:
        return c.query("SELECT current_setting('nile.tenant_id')")[0][0]

    with ps.ExtConn(p.host, p.port) as c:
        c.startup("alice", ps.password_of("alice"), ts.APP_DB)
        # the reset goes upstream, then a Parse the guard refuses: the batch answers 42501
        r = c.batch(c.parse("", "RESET ALL"), c.bind("", []), c.execute(),
                    c.parse("x", f"SET nile.tenant_id = '{ts.GLOBEX}'"))
        assert [e.get("C") for e in r["errors"]] == ["42501"], r
        assert tenant(c) == ts.ACME
        # a named statement that resets, prepared once and bound again later
        for sql in ("RESET ALL", "DISCARD ALL"):
            assert c.batch(c.parse("again", sql))["errors"] == []
            assert c.run_prepared("again", [])["errors"] == [] or sql == "DISCARD ALL"
            assert tenant(c) == ts.ACME, sql
            r = c.batch(c.close_statement("again"))
            # DISCARD ALL took the statement with it, as it does on PostgreSQL
            assert r["errors"] == [], r
    if mode == "transaction":
        with ps.tconnect(p, "alice") as alice:
            assert alice.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.ACME


@pytest.mark.timeout_s(120)
def test_statements_left_by_earlier_borrowers_are_not_reachable(make_pool_tproxy):
    """Transaction mode, one connection, two clients of one user (so no context switch, whose
    queries would drop the unnamed statement, comes between them): what the first prepared stays
    on the connection (its unnamed statement, its named one under its proxy name). The second's
    Bind and Describe of them are answered as on a connection of its own (26000, its names), its
    Close of the proxy name closes nothing; forwarded, they ran or closed the first's statements."""
    p = make_pool_tproxy(mode="transaction", size=1)
    with ps.ext_clients(p, "alice", "alice") as (first, second):
        assert first.batch(first.parse("mine", "SELECT 'first-named'"))["errors"] == []
        assert first.run_prepared("mine", [])["rows"] == [["first-named"]]
        proxy_name = first.query("SELECT name FROM pg_prepared_statements")[0][0]
        assert proxy_name.startswith("tp"), proxy_name
        # (after the Query, which drops the unnamed statement)
        r = first.batch(first.parse("", "SELECT 'first-unnamed'"), first.bind("", []), first.execute())
        assert r["rows"] == [["first-unnamed"]], r

        r = second.batch(second.bind("", []), second.execute())
        assert r["rows"] == [] and [e.get("C") for e in r["errors"]] == ["26000"], r
        assert r["errors"][0]["M"] == "unnamed prepared statement does not exist"
        assert "transaction" in r["errors"][0]["H"]
        for msg in (second.bind(proxy_name, []), second.describe_statement(proxy_name)):
            r = second.batch(msg, second.execute())
            assert r["rows"] == [] and [e.get("M") for e in r["errors"]] == [
                f'prepared statement "{proxy_name}" does not exist'], r
        assert second.batch(second.close_statement(proxy_name))["errors"] == []
        # nor can a DEALLOCATE by Parse (a Query's is answered by the proxy) drop it
        r = second.batch(second.parse("", f'DEALLOCATE "{proxy_name}"'), second.bind("", []),
                         second.execute())
        assert [e.get("M") for e in r["errors"]] == [f'prepared statement "{proxy_name}" does not exist'], r
        # its own unnamed statement, in one transaction with its Bind, is its own
        r = second.batch(second.parse("", "SELECT 'second-unnamed'"), second.bind("", []), second.execute())
        assert r["rows"] == [["second-unnamed"]], r

        assert first.run_prepared("mine", [])["rows"] == [["first-named"]]
        # its own statement, deallocated by Parse (as psycopg's pipeline mode evicts): gone
        r = first.batch(first.parse("", "DEALLOCATE mine"), first.bind("", []), first.execute())
        assert r["errors"] == [] and r["commands"] == ["DEALLOCATE"], r
        r = first.run_prepared("mine", [])
        assert [e.get("M") for e in r["errors"]] == ['prepared statement "mine" does not exist'], r


@pytest.mark.timeout_s(120)
def test_a_discard_that_did_not_run_leaves_others_statements_usable(make_pool_tproxy):
    """A DISCARD ALL (by Parse, or in a Query) inside a transaction block fails on the server, so
    the connection keeps every statement; the proxy had taken them all as gone, prepared bob's
    again for his next Bind and that failed: 42P05, under his name or the proxy's. The proxy
    now makes the connection agree (its own DEALLOCATE ALL before the next borrower)."""
    p = make_pool_tproxy(mode="transaction", size=1)
    with ps.ext_clients(p, "bob", "alice") as (bob, alice):
        assert bob.batch(bob.parse("mine", "SELECT 'bob'"))["errors"] == []
        assert bob.run_prepared("mine", [])["rows"] == [["bob"]]
        for discard in (alice.parse("", "DISCARD ALL") + alice.bind("", []) + alice.execute()
                        + alice.sync(), h.message(b"Q", b"DISCARD ALL\x00")):
            assert alice.query("BEGIN") == []
            alice.send(discard)
            r = alice.read_batch()
            assert [e.get("C") for e in r["errors"]] == ["25001"], r
            assert alice.query("ROLLBACK") == []
            r = bob.run_prepared("mine", [])
            assert r["rows"] == [["bob"]] and r["errors"] == [], r


@pytest.mark.timeout_s(120)
def test_unnamed_statement_prepared_on_its_own(make_pool_tproxy):
    """PQprepare with an empty name, then PQexecPrepared (Parse+Sync, later Bind+Execute+Sync)
    between transactions: the proxy answers the Parse and prepares the statement on the
    connection lent for the Bind, whatever another client of the same user left there
    meanwhile. A Query drops it, as on PostgreSQL."""
    p = make_pool_tproxy(mode="transaction", size=1)
    with ps.ext_clients(p, "alice", "alice") as (c, other):
        r = c.batch(c.parse("", "SELECT 'mine ' || $1::text"))
        assert r["tags"] == [b"1", b"Z"] and r["errors"] == [], r
        r = other.batch(other.parse("", "SELECT 'other'"), other.bind("", []), other.execute())
        assert r["rows"] == [["other"]], r
        for n in range(2):
            assert c.run_prepared("", [str(n)])["rows"] == [[f"mine {n}"]]
            r = c.batch(c.describe_statement(""))
            assert r["errors"] == [] and b"t" in r["tags"], r
        assert other.batch(other.bind("", []), other.execute())["errors"][0]["C"] == "26000"
        assert c.query("SELECT 1") == [["1"]]
        r = c.run_prepared("", ["x"])
        assert [e.get("M") for e in r["errors"]] == ["unnamed prepared statement does not exist"], r


def test_unnamed_statement_described_then_bound(make_pool_tproxy):
    """Go's lib/pq (any query with parameters) and pgx's QueryExecModeDescribeExec:
    Parse+Describe+Sync of the unnamed statement between
    transactions, then Bind+Execute+Sync in a second round trip, on whichever connection the
    pool lends then (another client's unnamed statement may be there). A Parse the server
    refused leaves no statement; a Query drops it, as on PostgreSQL."""
    p = make_pool_tproxy(mode="transaction", size=1)
    with ps.ext_clients(p, "alice", "alice") as (c, other):
        for n in range(3):
            r = c.batch(c.parse("", "SELECT 'mine ' || $1::text AS v"), c.describe_statement(""))
            assert r["tags"] == [b"1", b"t", b"T", b"Z"] and r["errors"] == [], r
            r = other.batch(other.parse("", "SELECT 'other'"), other.bind("", []), other.execute())
            assert r["rows"] == [["other"]], r
            assert c.run_prepared("", [str(n)])["rows"] == [[f"mine {n}"]]
            assert c.run_prepared("", [str(n + 10)])["rows"] == [[f"mine {n + 10}"]]
            r = c.batch(c.describe_statement(""))
            assert r["errors"] == [] and r["tags"] == [b"t", b"T", b"Z"], r
        # a Parse the server refuses: no unnamed statement afterwards (not the bad SQL again)
        r = c.batch(c.parse("", "SELEC 1"), c.describe_statement(""))
        assert [e.get("C") for e in r["errors"]] == ["42601"], r
        r = c.run_prepared("", [])
        assert [e.get("M") for e in r["errors"]] == ["unnamed prepared statement does not exist"], r
        # a Query drops it
        r = c.batch(c.parse("", "SELECT 7"), c.describe_statement(""))
        assert r["errors"] == [], r
        assert c.query("SELECT 1") == [["1"]]
        r = c.run_prepared("", [])
        assert [e.get("M") for e in r["errors"]] == ["unnamed prepared statement does not exist"], r


GO_PACKAGES = {"github.com/lib/pq": "golang-github-lib-pq-dev",
               "github.com/jackc/pgx/v4": "golang-github-jackc-pgx-v4-dev"}


@pytest.fixture(scope="module")
def go_client(tmp_path_factory):
    """Tests/integration/goclient built with Debian's Go, lib/pq and pgx (.ci/run installs them)."""
    missing = [pkg for path, pkg in GO_PACKAGES.items()
               if not Path("/usr/share/gocode/src", path).is_dir()]
    if shutil.which("go") is None or missing:
        pytest.skip(f"needs golang-go and {', '.join(GO_PACKAGES.values())}")
    out = tmp_path_factory.mktemp("goclient")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
           "GOCACHE": str(out / "cache"), "GOFLAGS": ""}
    res = subprocess.run(["go", "build", "-o", str(out / "go-client"), "."],
                         cwd=Path(__file__).parent / "goclient", env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return out / "go-client"


@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("driver,options,prepare", [
    ("postgres", "", True),                                 # lib/pq
    ("pgx", "", True),                                      # pgx: named prepared statements
    # pgx: unnamed statements, each described once. (Its database/sql Prepare fails in this
    # mode directly against PostgreSQL too: pgx 4.15 parses the statement's name as SQL.)
    ("pgx", " statement_cache_mode=describe", False),
    ("pgx", " prefer_simple_protocol=true", True),
], ids=["lib-pq", "pgx", "pgx-describe", "pgx-simple"])
def test_go_clients_of_two_tenants_on_one_connection(make_pool_tproxy, go_client, driver, options,
                                                     prepare):
    """Go's lib/pq runs each query with parameters in two round trips (the unnamed statement's
    Parse+Describe+Sync, then Bind+Execute+Sync), pgx prepares its named statements so; behind
    a transaction pooler the second round trip may go to a connection another client used in
    between. Two programs of two tenants, three connections each, over one upstream
    connection: every answer right, every row their own."""
    p = make_pool_tproxy(mode="transaction", size=1)
    procs = {}
    for user, tenant in (("alice", ts.ACME), ("bob", ts.GLOBEX)):
        dsn = (f"host={p.host} port={p.port} user={user} password={ps.password_of(user)} "
               f"dbname={ts.APP_DB} sslmode=disable" + options)
        procs[user] = subprocess.Popen([str(go_client), "-driver", driver, "-dsn", dsn,
                                        "-tenant", tenant, "-n", "40",
                                        f"-prepare={str(prepare).lower()}"], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    for user, proc in procs.items():
        out, _ = proc.communicate(timeout=200)
        assert proc.returncode == 0 and out.strip() == "ok", f"{user}: {out}" + proxy_info(p)


def test_a_name_parsed_again_in_the_same_pipeline(make_pool_tproxy):
    """A Parse of a name whose earlier Parse is still unanswered (both in one pipeline): taken
    or free depends on that answer, and the proxy leaves the answer to the server, as a client
    sees it without a pooler: after a refused Parse the name is free, after a good one it is
    taken (42P05 under the client's name). Nothing reaches the client under a proxy name, also
    for a Bind pipelined ahead of a DEALLOCATE ALL that the proxy answers itself."""
    p = make_pool_tproxy(mode="transaction", size=1)
    x = ps.ExtConn
    with ps.ext_clients(p, "alice", "alice") as (c, other):
        def pipeline(*batches):
            c.send(b"".join(b"".join(batch) + x.sync() for batch in batches))
            return [c.read_batch() for _ in batches]
        # (each first Parse with a Describe: a Parse+Sync alone the proxy answers itself)
        # the first Parse refused: the second takes the name
        first, second = pipeline([x.parse("n1", "SELEC 1"), x.describe_statement("n1")],
                                 [x.parse("n1", "SELECT 'second'"), x.bind("n1", []), x.execute()])
        assert [e["C"] for e in first["errors"]] == ["42601"], first
        assert second["errors"] == [] and second["rows"] == [["second"]], second
        assert other.query("SELECT 1") == [["1"]]   # another client between: a later lend
        assert c.run_prepared("n1", [])["rows"] == [["second"]]
        # the first Parse good: the second is refused by the server, under the client's name
        first, second, third = pipeline([x.parse("n2", "SELECT 'first'"), x.describe_statement("n2")],
                                        [x.parse("n2", "SELECT 'second'"), x.bind("n2", []),
                                         x.execute()],
                                        [x.bind("n2", []), x.execute()])
        assert first["errors"] == [], first
        assert [(e["C"], e["M"]) for e in second["errors"]] == [
            ("42P05", 'prepared statement "n2" already exists')], second
        assert third["rows"] == [["first"]], third
        assert c.run_prepared("n2", [])["rows"] == [["first"]]
        # the name closed behind the contender: gone whatever the server answered
        pipeline([x.parse("n3", "SELEC 3"), x.describe_statement("n3")],
                 [x.parse("n3", "SELECT 3"), x.describe_statement("n3")], [x.close_statement("n3")])
        assert [e["M"] for e in c.run_prepared("n3", [])["errors"]] == [
            'prepared statement "n3" does not exist']
        # a Bind of a statement whose Parse the server refused, behind which DEALLOCATE ALL
        # (answered by the proxy) empties the client's statements before the Bind fails
        c.send(x.parse("n4", "SELEC 4") + x.describe_statement("n4") + x.sync() + x.bind("n4", [])
               + x.execute() + x.sync() + h.message(b"Q", b"DEALLOCATE ALL\x00"))
        replies = [c.read_batch() for _ in range(3)]
        raw = repr(replies)
        assert not re.search(r"tp[0-9]+_[0-9]+", raw), raw
        assert replies[2]["commands"] == ["DEALLOCATE ALL"], replies


def test_psycopg_deallocate_all(make_proxy, db):
    p = make_proxy(extra=ps.pool_extra(size=2))
    with ps.psycopg_connect(p, db, prepare_threshold=0) as conn:
        for n in range(3):
            assert conn.execute("SELECT %s::int + 1", (n,)).fetchone()[0] == n + 1
        conn.execute("DEALLOCATE ALL")
        for n in range(3):
            assert conn.execute("SELECT %s::int + 1", (n,)).fetchone()[0] == n + 1, proxy_info(p)
        conn.execute("DISCARD ALL")
        assert conn.execute("SELECT %s::int + 1", (5,)).fetchone()[0] == 6, proxy_info(p)


def _pgbench(ep: h.Endpoint, *args: str, timeout: float = 300) -> str:
    res = h.run([h.client_bin("pgbench"), *args], env=ep.libpq_env(), timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"pgbench {' '.join(args)} exited {res.returncode}:\n{out}"
    return out


def _check_pgbench(out: str, expected: int):
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2))) == (expected, expected), out
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m and int(m.group(1)) == 0, out


@pytest.mark.timeout_s(400)
def test_pgbench_prepared_transaction_mode(make_proxy, pg, db):
    p = make_proxy(extra=ps.pool_extra(size=3))
    ep = p.endpoint(db)
    out = _pgbench(ep, "-i", "-s", "1", "-q")
    assert "done in" in out, out
    with ps.BackendMonitor(lambda: ps.backend_count(pg, UPSTREAM_ROLE, db)) as mon:
        out = _pgbench(ep, "-M", "prepared", "-S", "-c", "10", "-j", "2", "-t", "50", "-n")
        _check_pgbench(out, 500)
        before = pg.sql("SELECT count(*) FROM pgbench_history", dbname=db)[0][0]
        out = _pgbench(ep, "-M", "prepared", "-c", "10", "-j", "2", "-t", "50", "-n")
        _check_pgbench(out, 500)
    after = pg.sql("SELECT count(*) FROM pgbench_history", dbname=db)[0][0]
    assert after - before == 500
    sums = pg.sql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                  "(SELECT sum(bbalance) FROM pgbench_branches), "
                  "(SELECT sum(tbalance) FROM pgbench_tellers), "
                  "(SELECT sum(delta) FROM pgbench_history)", dbname=db)[0]
    assert len(set(sums)) == 1, sums
    assert 1 <= mon.max <= 3, (mon.max, sorted(set(mon.samples)))


# ---------------------------------------------------------------------------------------------
# 6. pool exhaustion and limits

WAIT_RE = re.compile(r"no upstream connection became free within 2 seconds")


def _assert_pool_timeout(exc: BaseException, p):
    assert ps.sqlstate_of(exc) == "53300", f"{ps.sqlstate_of(exc)}: {exc}" + proxy_info(p)
    assert WAIT_RE.search(str(exc)), f"{exc}" + proxy_info(p)


@pytest.mark.timeout_s(120)
def test_pool_exhausted_client_times_out(make_proxy, db):
    p = make_proxy(extra=ps.pool_extra(size=1, max_client_wait_seconds=2))
    a = ps.psycopg_connect(p, db)
    b = ps.psycopg_connect(p, db)
    with ps.closing_all([a, b]):
        a.execute("BEGIN")
        assert a.execute("SELECT 1").fetchone()[0] == 1
        with pytest.raises(psycopg.OperationalError) as ei:
            b.execute("SELECT 1")
        _assert_pool_timeout(ei.value, p)
        # FATAL: B's session is over
        assert b.closed or b.info.status == psycopg.pq.ConnStatus.BAD
        # A is still in its transaction and unaffected
        assert a.execute("SELECT 2").fetchone()[0] == 2
        a.execute("COMMIT")
        with ps.psycopg_connect(p, db) as c:
            assert c.execute("SELECT 3").fetchone()[0] == 3
        assert a.execute("SELECT 4").fetchone()[0] == 4


@pytest.mark.timeout_s(120)
def test_pool_waiter_served_when_connection_frees(make_proxy, db):
    """A waiting client is served as soon as the holder commits (it does not fail)."""
    p = make_proxy(extra=ps.pool_extra(size=1, max_client_wait_seconds=60))
    a = ps.psycopg_connect(p, db)
    b = ps.psycopg_connect(p, db)
    with ps.closing_all([a, b]):
        a.execute("BEGIN")
        apid, a_start = a.execute("SELECT pg_backend_pid(), now()").fetchone()
        sent = threading.Event()

        def b_query():
            sent.set()
            return b.execute("SELECT pg_backend_pid(), now()").fetchone()

        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(b_query)
            assert sent.wait(10)
            assert a.execute("SELECT 2").fetchone()[0] == 2
            a.execute("COMMIT")
            bpid, b_start = fut.result(timeout=30)
        # same (only) backend, but not inside A's transaction
        assert bpid == apid
        assert b_start != a_start, "B's statement ran inside A's transaction" + proxy_info(p)


@pytest.mark.timeout_s(120)
def test_tenant_max_connections(make_pool_tproxy):
    p = make_pool_tproxy(size=4, tenant_max_connections=1, max_client_wait_seconds=2)
    a1 = ps.tconnect(p, "alice")
    a2 = ps.tconnect(p, "alice2")     # same tenant (acme), another user
    b = ps.tconnect(p, "bob")         # globex
    with ps.closing_all([a1, a2, b]):
        a1.execute("BEGIN")
        assert a1.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.ACME
        # another tenant is served while acme's one connection is lent
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(lambda: a2.execute("SELECT 1").fetchone())
            for _ in range(3):
                with b.transaction():
                    assert b.execute("SELECT current_setting('nile.tenant_id')"
                                     ).fetchone()[0] == ts.GLOBEX
            with pytest.raises(psycopg.OperationalError) as ei:
                fut.result(timeout=30)
        _assert_pool_timeout(ei.value, p)
        a1.execute("COMMIT")
        with ps.tconnect(p, "carol") as c:   # acme again, now free
            assert c.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ts.ACME
        assert a1.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout_s(120)
def test_tenant_max_clients(make_pool_tproxy):
    p = make_pool_tproxy(size=4, tenant_max_clients=2)
    a1 = ps.tconnect(p, "alice")
    a2 = ps.tconnect(p, "carol")
    with ps.closing_all([a1, a2]):
        fields = ts.connect_error(p, "alice2", password=ps.password_of("alice2"))
        assert fields.get("C") == "53300", fields
        assert fields.get("S") == "FATAL", fields
        assert "too many connections for this tenant" in fields.get("M", ""), fields
        # another tenant is not affected
        with ps.tconnect(p, "bob") as b, ps.tconnect(p, "star.globex") as b2, \
                ps.tconnect(p, "star.umbrella") as u:
            for c in (b, b2, u):
                assert c.execute("SELECT 1").fetchone()[0] == 1
        # the first two still work; after one leaves, a new acme client gets in
        assert a1.execute("SELECT 1").fetchone()[0] == 1
        a2.close()

        def third_gets_in():
            return ts.try_connect(p, "alice2", password=ps.password_of("alice2")) is None
        ps.wait_until(third_gets_in, 15, "a new acme client to be admitted")


# ---------------------------------------------------------------------------------------------
# 7. upstream broken: restart, terminated backends

class Looper(threading.Thread):
    """A client that runs transactions until stopped, reconnecting after errors."""

    def __init__(self, p, dbname: str, i: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.p, self.dbname, self.i, self.stop = p, dbname, i, stop
        self.phase = "before"
        self.ok: dict[str, int] = {}
        self.errors: list[tuple[str, str | None, str]] = []   # (phase, sqlstate, text)
        self.lock = threading.Lock()
        self.n = 0

    def count_ok(self, phase):
        with self.lock:
            return self.ok.get(phase, 0)

    def count_errors(self, phase):
        with self.lock:
            return sum(1 for e in self.errors if e[0] == phase)

    def run(self):
        conn = None
        while not self.stop.is_set():
            phase = self.phase
            try:
                if conn is None or conn.closed:
                    conn = ps.psycopg_connect(self.p, self.dbname, connect_timeout=5)
                self.n += 1
                with conn.transaction():
                    conn.execute("INSERT INTO ticks VALUES (%s, %s)", (self.i, self.n))
                    got = conn.execute("SELECT count(*) FROM ticks WHERE client = %s AND n = %s",
                                       (self.i, self.n)).fetchone()[0]
                    assert got == 1
                with self.lock:
                    self.ok[phase] = self.ok.get(phase, 0) + 1
            except psycopg.Error as exc:
                with self.lock:   # the phase when the error arrived (the outage may start mid-way)
                    self.errors.append((self.phase, ps.sqlstate_of(exc), str(exc)[:200]))
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
                self.stop.wait(0.05)   # back-off between attempts, not synchronization
        if conn is not None:
            conn.close()


@pytest.mark.timeout_s(240)
def test_upstream_restart_mid_run(make_proxy, private_pg):
    p = make_proxy(pg_server=private_pg, extra=ps.pool_extra(size=3))
    with ps.psycopg_connect(p, "app") as c:   # (also primes the pool)
        c.execute("CREATE TABLE ticks (client int, n int)")
    stop = threading.Event()
    loopers = [Looper(p, "app", i, stop) for i in range(6)]
    for lp in loopers:
        lp.start()
    try:
        ps.wait_until(lambda: all(lp.count_ok("before") >= 5 for lp in loopers), 60,
                      "every client to run transactions")
        for lp in loopers:
            lp.phase = "outage"
        private_pg.stop("fast")
        ps.wait_until(lambda: all(lp.count_errors("outage") >= 1 for lp in loopers), 60,
                      "every client to see an error during the outage")
        private_pg.start()
        for lp in loopers:
            lp.phase = "after"
        try:
            ps.wait_until(lambda: all(lp.count_ok("after") >= 5 for lp in loopers), 90,
                          "every client to run transactions again after the restart")
        except AssertionError as exc:
            report = "\n".join(f"client {lp.i}: ok={lp.ok} last errors={lp.errors[-2:]}"
                               for lp in loopers)
            raise AssertionError(f"{exc}\n{report}" + proxy_info(p)) from None
    finally:
        stop.set()
        for lp in loopers:
            lp.join(timeout=30)
    assert p.alive(), "the proxy died" + proxy_info(p)
    errors = [e for lp in loopers for e in lp.errors]
    before_errors = [e for e in errors if e[0] == "before"]
    assert not before_errors, before_errors[:5]
    states = {e[1] for e in errors if e[0] == "outage"}
    # what a client may see while Postgres is down or shutting down
    acceptable = {"08006", "57P01", "08001", "08003", "08P01", "57P03", "53300", None}
    assert states <= acceptable, (sorted(states, key=str),
                                  [e for e in errors if e[1] not in acceptable][:5])
    # through the same proxy process, a new client works
    with ps.psycopg_connect(p, "app") as c:
        assert c.execute("SELECT count(*) > 0 FROM ticks").fetchone()[0] is True
    assert ps.backend_count(private_pg, UPSTREAM_ROLE, "app") <= 3


@pytest.mark.timeout_s(120)
def test_terminated_idle_backends_are_replaced(make_proxy, pg, db):
    p = make_proxy(extra=ps.pool_extra(size=3))
    clients = [ps.psycopg_connect(p, db) for _ in range(3)]
    with ps.closing_all(clients):
        # open all three upstream connections: three transactions at once
        for c in clients:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in clients}
        assert len(pids) == 3
        for c in clients:
            c.execute("COMMIT")
        assert ps.backend_pids(pg, UPSTREAM_ROLE, db) == pids
        # kill them while idle in the pool
        pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s "
               "AND datname = %s", (UPSTREAM_ROLE, db))
        ps.wait_until(lambda: ps.backend_count(pg, UPSTREAM_ROLE, db) == 0, 30,
                      "terminated backends to be gone")
        # the clients' next transactions run on new connections
        new_pids = set()
        for n in range(3):
            for c in clients:
                with c.transaction():
                    new_pids.add(c.execute("SELECT pg_backend_pid()").fetchone()[0])
                assert c.execute("SELECT %s::int", (n,)).fetchone()[0] == n
        assert new_pids and not (new_pids & pids)
        with ps.psycopg_connect(p, db) as d:
            assert d.execute("SELECT 1").fetchone()[0] == 1
        assert ps.backend_count(pg, UPSTREAM_ROLE, db) <= 3
    assert p.alive()


@pytest.mark.timeout_s(120)
def test_backend_terminated_mid_transaction(make_proxy, pg, db):
    """A client whose transaction's backend dies gets an error; its next transaction works."""
    p = make_proxy(extra=ps.pool_extra(size=2))
    with ps.psycopg_connect(p, db) as c:
        c.execute("BEGIN")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg.sql("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 1")
        assert ps.sqlstate_of(ei.value) in ("57P01", "08006", None), ei.value
    with ps.psycopg_connect(p, db) as d:
        for _ in range(3):
            with d.transaction():
                assert d.execute("SELECT pg_backend_pid()").fetchone()[0] != pid


# ---------------------------------------------------------------------------------------------
# 8. idle timeout


@pytest.mark.timeout_s(120)
def test_idle_upstream_connections_closed(make_proxy, pg, db):
    p = make_proxy(extra=ps.pool_extra(size=3, idle_timeout_seconds=1))
    clients = [ps.psycopg_connect(p, db) for _ in range(3)]
    with ps.closing_all(clients):
        for c in clients:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        assert ps.backend_count(pg, UPSTREAM_ROLE, db) == 3
        for c in clients:
            c.execute("COMMIT")
        # the clients stay connected; their upstream connections go away
        ps.wait_until(lambda: ps.backend_count(pg, UPSTREAM_ROLE, db) == 0, 30,
                      "idle upstream connections to be closed")
        for c in clients:
            with c.transaction():
                assert c.execute("SELECT 5").fetchone()[0] == 5
        ps.wait_until(lambda: ps.backend_count(pg, UPSTREAM_ROLE, db) == 0, 30,
                      "idle upstream connections to be closed again")


# ---------------------------------------------------------------------------------------------
# 9. idle-in-transaction timeout and server lifetime


def _raw_client(p, db):
    raw = h.RawConn(p.host, p.port, timeout=30)
    raw.startup("alice", "alicepw", db)
    return raw


def _unsolicited_error(raw) -> dict[str, str]:
    """The ErrorResponse the proxy sends without being asked, then the connection's end."""
    tag, body = raw.read_message()
    assert tag == b"E", (tag, body)
    fields = h.parse_error_fields(body)
    with pytest.raises((ConnectionError, OSError)):
        raw.read_message()
    return fields


def _assert_idle_transaction_fatal(fields: dict[str, str], seconds: int):
    assert fields.get("S") == "FATAL", fields
    assert fields.get("C") == "25P03", fields
    assert fields.get("M") == "terminating connection due to idle-in-transaction timeout", fields
    assert f"for {seconds} second" in fields.get("D", ""), fields
    assert "pool.idle_transaction_timeout_seconds" in fields.get("H", ""), fields


@pytest.mark.timeout_s(120)
def test_idle_in_transaction_client_ended_and_its_connection_freed(make_proxy, pg, db):
    """A client that holds the only pooled connection inside a transaction and sends nothing is
    ended with FATAL 25P03; its transaction is rolled back (its lock freed) and the client that
    waited gets a connection. A client idle between transactions for as long is not touched."""
    metrics_port = h.free_port()
    p = make_proxy(extra={**ps.pool_extra(size=1, max_client_wait_seconds=60,
                                          idle_transaction_timeout_seconds=1),
                          "metrics": {"listen_port": metrics_port}})
    between = ps.psycopg_connect(p, db)
    with contextlib.closing(between), _raw_client(p, db) as holder:
        assert between.execute("SELECT 1").fetchone()[0] == 1
        holder.query("BEGIN")
        holder_pid = int(holder.query("SELECT pg_backend_pid()")[0][0])
        holder.query("SELECT pg_advisory_xact_lock(4242)")
        waiter = ps.psycopg_connect(p, db)
        with contextlib.closing(waiter), concurrent.futures.ThreadPoolExecutor(1) as ex:
            # Waits for the one connection, which the holder keeps until it is ended.
            fut = ex.submit(lambda: waiter.execute(
                "SELECT pg_try_advisory_xact_lock(4242), pg_backend_pid()").fetchone())
            _assert_idle_transaction_fatal(_unsolicited_error(holder), 1)
            locked, waiter_pid = fut.result(timeout=60)
        assert locked is True, "the ended transaction's lock was released"
        assert waiter_pid != holder_pid, "the connection left inside a transaction is never lent"
        ps.wait_until(lambda: holder_pid not in ps.backend_pids(pg, UPSTREAM_ROLE, db), 30,
                      "the ended client's server connection to close")
        # idle for as long, but between transactions: still served
        assert between.execute("SELECT 2").fetchone()[0] == 2
    assert "ended client idle in transaction" in p.stderr(), proxy_info(p)
    status, text = h.scrape(metrics_port)
    assert status == 200
    assert h.sample(h.series(text), "tenant_proxy_idle_transaction_timeouts_total", tenant="_global") == 1


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_idle_transaction_timeout_spares_running_statements(make_proxy, pg, db, mode):
    """A statement that runs longer than the timeout inside a transaction is not idleness; a
    failed transaction (status E) left idle is ended as an open one is; in both pool modes."""
    p = make_proxy(extra=ps.pool_extra(mode=mode, size=2, idle_transaction_timeout_seconds=1))
    with ps.psycopg_connect(p, db) as busy, _raw_client(p, db) as failed:
        with busy.transaction():
            assert busy.execute("SELECT 7 FROM pg_sleep(2.5)").fetchone()[0] == 7
            assert busy.execute("SELECT 8").fetchone()[0] == 8
        failed.query("BEGIN")
        with pytest.raises(h.PGError) as ei:
            failed.query("SELECT 1/0")
        assert ei.value.sqlstate == "22012"
        _assert_idle_transaction_fatal(_unsolicited_error(failed), 1)
        assert busy.execute("SELECT 9").fetchone()[0] == 9


@pytest.mark.timeout_s(120)
def test_idle_transaction_timeout_off_by_default(make_proxy, pg, db):
    """Default 0: a transaction left idle is kept for as long as a client that is ended with
    the timeout on waits (the same test's other proxy shows the sweep ran meanwhile). psycopg
    reports the end as PostgreSQL's own timeout (IdleInTransactionSessionTimeout, 25P03)."""
    off = make_proxy(extra=ps.pool_extra(size=1))
    on = make_proxy(extra=ps.pool_extra(size=1, idle_transaction_timeout_seconds=1))
    with _raw_client(off, db) as kept, ps.psycopg_connect(on, db) as ended:
        kept.query("BEGIN")
        kept.query("SELECT 1")
        ended.execute("BEGIN")
        ended.execute("SELECT 1")
        ps.wait_until(lambda: "ended client idle in transaction" in on.stderr(), 30,
                      "the idle transaction to be ended")
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout) as ei:
            ended.execute("SELECT 2")
        assert "pool.idle_transaction_timeout_seconds" in str(ei.value)
        assert kept.query("SELECT 5") == [["5"]]
        kept.query("COMMIT")


@pytest.mark.timeout_s(120)
def test_server_lifetime_closes_old_connections_between_transactions(make_proxy, pg, db):
    """[pool] server_lifetime_seconds: a connection past its lifetime finishes the transaction it
    is lent for, then closes when it comes back; the next transaction gets a new one."""
    p = make_proxy(extra=ps.pool_extra(size=1, server_lifetime_seconds=1))
    with ps.psycopg_connect(p, db) as c:
        c.execute("BEGIN")
        first = c.execute("SELECT pg_backend_pid()").fetchone()[0]

        def age() -> float:
            rows = pg.sql("SELECT extract(epoch FROM now() - backend_start) FROM pg_stat_activity "
                          "WHERE pid = %s", (first,))
            return float(rows[0][0]) if rows else 0.0

        ps.wait_until(lambda: age() > 1.2, 30, "the connection to outlive server_lifetime_seconds")
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] == first, "never mid-transaction"
        c.execute("COMMIT")
        ps.wait_until(lambda: first not in ps.backend_pids(pg, UPSTREAM_ROLE, db), 30,
                      "the old connection to close once returned")
        second = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert second != first


# ---------------------------------------------------------------------------------------------
# 10. pool mode per user and per database


def _users_map(proxy_users: dict[str, str], pool_modes: dict[str, str]) -> str:
    text = ""
    for name, verifier in proxy_users.items():
        text += f"[users.{h.toml_str(name)}]\npassword = {h.toml_str(verifier)}\nmode = \"global\"\n"
        if name in pool_modes:
            text += f"pool_mode = {h.toml_str(pool_modes[name])}\n"
        text += "\n"
    return text


def _pool_rows(p, db_names: set[str]) -> set[tuple[str, str]]:
    """(database, pool_mode) of SHOW POOLS rows for these databases (alice is an admin)."""
    with h.RawConn(p.host, p.port) as admin:
        admin.startup("alice", "alicepw", "proxy")
        return {(row[1], row[9]) for row in admin.query("SHOW POOLS") if row[1] in db_names}


@pytest.mark.timeout_s(180)
def test_pool_mode_per_user_and_per_database(make_proxy, pg, db, proxy_users):
    """[pool] mode = transaction, bob's pool_mode = session (tenant map), and a database listed
    in [pool.database_modes] as session: each client gets its user's mode, else its database's,
    else the pool's, in one proxy over one upstream role; a reload changes the mode of new
    sessions only."""
    reports = pg.create_database()
    extra = ps.pool_extra(size=1, max_client_wait_seconds=60)
    extra["pool.database_modes"] = {reports: "session"}
    extra["admin"] = {"users": ["alice"]}
    p = make_proxy(extra=extra, start=False)
    map_path = p.dir / p.config["tenancy"]["map_file"]
    map_path.write_text(_users_map(proxy_users, {"bob": "session"}))
    p.start()

    def pid(conn) -> int:
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    a1 = ps.psycopg_connect(p, db)
    a2 = ps.psycopg_connect(p, db)
    bob = ps.psycopg_connect(p, db, user="bob", password="bobpw")
    reporter = ps.psycopg_connect(p, reports)
    with ps.closing_all([a1, a2, bob, reporter]):
        # alice on db: transaction mode, both clients on the one pooled connection
        shared = pid(a1)
        assert pid(a2) == shared
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a1.execute("CREATE TEMP TABLE scratch (x int)")
        # bob: session mode by his user, whatever the database; a connection of his own
        bob.execute("CREATE TEMP TABLE scratch (x int)")
        bob.execute("INSERT INTO scratch VALUES (7)")
        bob.execute("LISTEN bob_channel")
        own = pid(bob)
        assert own != shared
        assert bob.execute("SELECT x FROM scratch").fetchone()[0] == 7 and pid(bob) == own
        # alice on the database listed as session: session mode
        reporter.execute("CREATE TEMP TABLE scratch (y int)")
        assert reporter.execute("SELECT count(*) FROM scratch").fetchone()[0] == 0
        assert pid(a1) == shared and pid(a2) == shared, "the pooled clients still share one"
        assert _pool_rows(p, {db, reports}) >= {(db, "transaction"), (db, "session"), (reports, "session")}

        # bob's mode changed in the map: his new sessions pool per transaction, his old one keeps
        # its mode (and its temporary table)
        map_path.write_text(_users_map(proxy_users, {"bob": "transaction"}))
        os.kill(p.pid, signal.SIGHUP)
        ps.wait_until(lambda: "tenant map reloaded" in p.stderr(), 30, "the map reload")
        with ps.psycopg_connect(p, db, user="bob", password="bobpw") as bob2:
            assert pid(bob2) == shared
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                bob2.execute("CREATE TEMP TABLE scratch2 (x int)")
        assert bob.execute("SELECT x FROM scratch").fetchone()[0] == 7 and pid(bob) == own


# ---------------------------------------------------------------------------------------------
# 11. upstream over a Unix-domain socket


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_upstream_by_unix_domain_socket(make_proxy, pg, db, mode):
    """[upstream] host = a socket directory (libpq's rule: a leading "/"): the proxy reaches
    PostgreSQL through `<dir>/.s.PGSQL.<port>`, in both modes, and a cancel request travels the
    same way to the backend running the query."""
    extra = ps.pool_extra(mode=mode, size=2)
    extra["upstream"] = {"host": str(pg.sock)}
    p = make_proxy(extra=extra)
    with ps.psycopg_connect(p, db) as c, ps.psycopg_connect(p, db) as other:
        row = c.execute("SELECT client_addr IS NULL, client_port FROM pg_stat_activity "
                        "WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True, -1), "a Unix-domain socket connection has no address or port"
        marker = f"unix_cancel_{mode}"
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(lambda: c.execute(f"SELECT pg_sleep(60) /* {marker} */"))
            ps.wait_until(lambda: any(q[1] == "active" for q in pg.active_queries(marker)), 30,
                          "the query to run")
            c.cancel()
            with pytest.raises(psycopg.errors.QueryCanceled):
                fut.result(timeout=60)
        assert c.execute("SELECT 3").fetchone()[0] == 3
        assert other.execute("SELECT 4").fetchone()[0] == 4
