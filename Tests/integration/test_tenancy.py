"""Tenancy through tenant-proxy: tenant resolution (startup options, user name suffix, database
name), row-level-security isolation, pinned/switch/global users, the guard, RESET ALL /
DISCARD ALL / ROLLBACK, tenants created at run time, tenant map reload, audit.

A cluster of its own (deploy/sql 01..05 applied: tenants acme and globex, `todos`), a tenant-proxy
with a [tenancy] section and a tenant map (tenancy_support.py), real clients: psql, psycopg 3,
asyncpg, and a raw protocol client for exact ErrorResponse fields at connect.

The `test_direct_*` tests talk to Postgres directly: they check the database side and the test
machinery (expected rows, the statement log) and pass without the proxy.

    python3 -m pytest Tests/integration/test_tenancy.py -q
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading

import asyncpg
import psycopg
import pytest

import pgharness as h
import tenancy_support as ts
from tenancy_support import (ACME, ALICE_UID, BOB_UID, GLOBEX, HOOLI, INITECH, OWNER_ROLE,
                             PROXY_ROLE, connect, connect_error, session_state)

ME = {"alice": ("acme", ACME, ALICE_UID), "bob": ("globex", GLOBEX, BOB_UID)}


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tcluster():
    c = ts.TenancyCluster().start()
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def expected(tcluster):
    """tenant id -> set of todo ids, as the superuser sees them (demo data: 3 acme, 2 globex)."""
    exp = {ACME: tcluster.todo_ids(ACME), GLOBEX: tcluster.todo_ids(GLOBEX)}
    assert len(exp[ACME]) == 3 and len(exp[GLOBEX]) == 2, exp
    return exp


@pytest.fixture(scope="module")
def _shared(tcluster):
    holder: dict = {}
    yield holder
    if holder.get("proxy"):
        holder["proxy"].terminate()


@pytest.fixture
def tp(_shared, tcluster, tmp_path_factory):
    """The standard proxy (standard map), shared by the module; restarted if it died."""
    p = _shared.get("proxy")
    if p is None or not p.alive():
        if p is not None:
            p.terminate()
        _shared["proxy"] = None
        p = ts.TenancyProxy(tmp_path_factory.mktemp("tenancy-proxy"), ts.proxy_config(tcluster),
                            ts.default_map()).start()
        _shared["proxy"] = p
    yield p
    assert p.alive(), f"tenant-proxy died during the test; stderr:\n{p.stderr()}"


@pytest.fixture
def make_tproxy(tcluster, tmp_path_factory):
    """Factory for a proxy of the test's own (reload tests change its map)."""
    started: list[ts.TenancyProxy] = []

    def factory(map_text: str | None = None, start: bool = True, **cfg_kw) -> ts.TenancyProxy:
        p = ts.TenancyProxy(tmp_path_factory.mktemp("tenancy-proxy-private"),
                            ts.proxy_config(tcluster, **cfg_kw),
                            map_text if map_text is not None else ts.default_map())
        started.append(p)
        if start:
            p.start()
        return p

    yield factory
    for p in started:
        p.terminate()


# ---------------------------------------------------------------------------------------------
# helpers


def assert_own_view(state: dict, tenant_id: str, expected: dict, user_id: str | None = None):
    assert state["tenant_id"] == tenant_id, state
    assert state["role"] == PROXY_ROLE, state
    assert state["todo_tenants"] <= {tenant_id}, f"rows of another tenant: {state}"
    assert state["todo_ids"] == expected[tenant_id], state
    if user_id is not None:
        assert state["user_id"] == user_id, state


def assert_never_reached_postgres(tcluster, offset: int, sql: str):
    log = tcluster.log_since(offset)
    assert sql not in log, f"the statement reached Postgres (guard did not refuse it):\n{log[-3000:]}"


def error_text(fields: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(fields.items()))


def rows_and_setting(conn) -> tuple[str, int]:
    return conn.execute("SELECT current_setting('nile.tenant_id'), (SELECT count(*) FROM todos)"
                        ).fetchone()


# Statements a pinned user may not run (the guard answers 42501, the session stays usable).
GUARD_CASES = {
    "set": f"SET nile.tenant_id = '{GLOBEX}'",
    "set_mixed_case": f"SeT NILE.Tenant_ID = '{GLOBEX}'",
    "set_quoted_ident": f"SET \"nile\".\"tenant_id\" = '{GLOBEX}'",
    "set_to": f"SET nile.tenant_id TO '{GLOBEX}'",
    "set_session": f"SET SESSION nile.tenant_id = '{GLOBEX}'",
    "set_local": f"SET LOCAL nile.tenant_id = '{GLOBEX}'",
    "reset": "RESET nile.tenant_id",
    "multi_statement": "SELECT 1; SET nile.tenant_id='x'",
    "set_config": f"select set_config('nile.tenant_id', '{GLOBEX}', false)",
    "set_config_qualified_upper": f"SELECT PG_CATALOG.SET_CONFIG('nile.tenant_id', '{GLOBEX}', true)",
    "set_role": "SET ROLE app_owner",
    "set_session_authorization": "SET SESSION AUTHORIZATION app_owner",
    "do_block": f"DO $$ BEGIN EXECUTE 'SET nile.tenant_id = ''{GLOBEX}'''; END $$",
}
# multi-statement strings cannot go through Parse
EXTENDED_CASES = {k: v for k, v in GUARD_CASES.items() if k != "multi_statement"}

# Statements that look like the above but are harmless: must run.
ALLOWED = [
    ("SELECT 'SET nile.tenant_id = 1'", [("SET nile.tenant_id = 1",)]),
    ("SELECT $q$SET nile.tenant_id = 'x'$q$", [("SET nile.tenant_id = 'x'",)]),
    ("SET search_path = public", None),
    ("RESET ALL", None),
    ("DISCARD ALL", None),
]


# ---------------------------------------------------------------------------------------------
# database side and test machinery (no proxy)


def test_direct_database_isolation_baseline(tcluster, expected):
    """As tenant_proxy with SET nile.tenant_id, as the proxy will do it; as app_owner."""
    with tcluster.direct() as c:
        assert c.execute("SELECT count(*) FROM todos").fetchone() == (0,), "fails closed"
        for tid in (ACME, GLOBEX):
            c.execute(f"SET nile.tenant_id = '{tid}'")
            rows = c.execute("SELECT id::text, tenant_id::text FROM todos").fetchall()
            assert {r[0] for r in rows} == expected[tid]
            assert {r[1] for r in rows} == {tid}
            assert c.execute("SELECT id::text FROM tenants").fetchall() == [(tid,)]
        c.execute("RESET ALL")
        assert c.execute("SELECT count(*) FROM todos").fetchone() == (0,)
    with tcluster.direct(OWNER_ROLE) as c:
        assert c.execute("SELECT count(*) FROM todos").fetchone() == (5,)
        assert c.execute("SELECT current_setting('nile.tenant_id', true)").fetchone()[0] in (None, "")


def test_direct_database_refuses_what_the_guard_also_refuses(tcluster):
    """The hardened role already fails set_config/SET ROLE/DO with 42501: that is why the guard
    tests also check the statement log (the guard must stop them before Postgres)."""
    with tcluster.direct() as c:
        for case in ("set_config", "set_role", "set_session_authorization", "do_block"):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(GUARD_CASES[case])
            assert ei.value.sqlstate == "42501", (case, ei.value)
        # while a plain SET of the placeholder works for anyone
        c.execute(GUARD_CASES["set"])
        assert c.execute("SELECT current_setting('nile.tenant_id')").fetchone() == (GLOBEX,)


def test_direct_statement_log_records_statements(tcluster):
    """The guard tests rely on log_statement = all: a statement that reaches Postgres is logged,
    with the simple and the extended protocol."""
    off = tcluster.log_offset()
    marker = "log-marker-" + ts.new_uuid()
    with tcluster.direct() as c:
        c.execute(f"SELECT '{marker}-simple'")
        c.execute(f"SELECT '{marker}-extended'", prepare=True)
        c.execute("SELECT %s::text", [marker + "-params"])
    log = h.wait_until(lambda: (lambda t: t if f"{marker}-extended" in t else None)(
        tcluster.log_since(off)), 10, "statement log lines")
    assert f"{marker}-simple" in log and f"SELECT '{marker}-extended'" in log


def test_direct_psycopg_uses_simple_protocol_without_params(tcluster):
    """psycopg sends a statement without parameters as a simple Query (multi-statement works),
    with prepare=True or parameters through Parse/Bind (multi-statement fails)."""
    with tcluster.direct() as c:
        c.execute("SELECT 1; SELECT 2")
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute("SELECT 1; SELECT 2", prepare=True)


# ---------------------------------------------------------------------------------------------
# the binary understands the configuration


def test_check_config_accepts_tenancy_config(tp):
    r = tp.run_subcommand("check-config", str(tp.config_path))
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# isolation per resolution source


SOURCES = {
    "options": lambda user, name: dict(user=user, options=ts.tenant_option(name)),
    "suffix": lambda user, name: dict(user=f"{user}.{name}"),
    "database": lambda user, name: dict(user=user, dbname=name),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("who", ["alice", "bob"])
def test_isolation_per_source_psycopg(tp, expected, who, source):
    name, tid, uid = ME[who]
    with connect(tp, **SOURCES[source](who, name)) as c:
        assert_own_view(session_state(c), tid, expected, uid)
        # the upstream database is [upstream].database whatever the client asked for
        assert c.execute("SELECT current_database()").fetchone() == (ts.APP_DB,)
        # tenants: only its own row
        assert c.execute("SELECT id::text, name FROM tenants").fetchall() == [(tid, name)]
        # writing another tenant's row is refused by RLS (WITH CHECK), own row is allowed
        other = GLOBEX if tid == ACME else ACME
        with pytest.raises(psycopg.Error) as ei:
            c.execute("INSERT INTO todos (tenant_id, title) VALUES (%s, 'x')", [other])
        assert ei.value.sqlstate == "42501"
        with c.transaction(force_rollback=True):
            c.execute("INSERT INTO todos (tenant_id, title) VALUES (%s, 'temp')", [tid])


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_isolation_psql_pgoptions(tp, expected, who):
    name, tid, _ = ME[who]
    r = ts.psql(tp, who, ["SELECT current_setting('nile.tenant_id')",
                          "SELECT count(*) FROM todos WHERE tenant_id = nile.current_tenant_id()",
                          "SELECT count(*) FROM todos"],
                pgoptions=ts.tenant_option(name))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [tid, str(len(expected[tid])), str(len(expected[tid]))]


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_isolation_asyncpg_user_suffix(tp, expected, who):
    name, tid, uid = ME[who]

    async def go():
        conn = await asyncpg.connect(host=tp.host, port=tp.port, user=f"{who}.{name}",
                                     password=ts.password_of(who), database=ts.APP_DB, ssl=False,
                                     timeout=15, command_timeout=20)
        try:
            setting = await conn.fetchval("SELECT current_setting('nile.tenant_id')")
            user_id = await conn.fetchval("SELECT current_setting('nile.user_id', true)")
            rows = await conn.fetch("SELECT id::text AS id, tenant_id::text AS t FROM todos")
            return setting, user_id, rows
        finally:
            await conn.close()

    setting, user_id, rows = asyncio.run(go())
    assert setting == tid and user_id == uid
    assert {r["t"] for r in rows} == {tid}
    assert {r["id"] for r in rows} == expected[tid]


@pytest.mark.parametrize("kw", [
    dict(user="alice", options="-c nile.tenant_id=acme"),
    dict(user="alice", options=f"-c nile.tenant_id={ACME}"),
    dict(user="alice", options="-c nile.tenant_id=acme-corp"),
    dict(user="alice.acme-corp"),
    dict(user=f"alice.{ACME}"),
    dict(user="carol", options="-c nile.tenant_id=acme"),       # carol lists the alias
    dict(user="carol.acme"),
    dict(user="multi", options="-c nile.tenant_id=acme", dbname="acme"),   # sources agree
    dict(user="multi.acme", dbname="acme"),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_tenant_identifier_forms_all_resolve(tp, expected, kw):
    with connect(tp, **kw) as c:
        assert_own_view(session_state(c), ACME, expected)


def test_user_id_set_only_when_configured(tp):
    with connect(tp, "alice.acme") as c:
        assert session_state(c)["user_id"] == ALICE_UID
        # users.users policy: members of the tenant plus nile.user_id
        assert c.execute("SELECT id::text FROM users.users").fetchall() == [(ALICE_UID,)]
    with connect(tp, "bob.globex") as c:
        assert session_state(c)["user_id"] == BOB_UID
    with connect(tp, "carol.acme") as c:
        assert session_state(c)["user_id"] in (None, "")
    # an upstream connection that served alice must not hand her user id to carol
    for _ in range(3):
        with connect(tp, "alice.acme") as c:
            c.execute("SELECT 1")
        with connect(tp, "carol.acme") as c:
            assert session_state(c)["user_id"] in (None, "")


# ---------------------------------------------------------------------------------------------
# refusals at connect


def test_pinned_user_without_tenant_is_refused(tp):
    """multi may use acme and globex: without an identifier there is no answer."""
    f = connect_error(tp, "multi")
    assert f.get("C") == "28000", error_text(f)
    assert f.get("S") == "FATAL", error_text(f)
    assert "tenant" in f.get("M", "").lower(), error_text(f)
    r = ts.psql(tp, "multi", ["SELECT 1"])
    assert r.returncode != 0 and "tenant" in r.stderr.lower(), r.stdout + r.stderr


def test_pinned_single_tenant_user_is_bound_to_that_tenant(tp, expected):
    """A user pinned to exactly one tenant needs no identifier: the map names its tenant
    (several tenants or "*": refused, see test_pinned_user_without_tenant_is_refused)."""
    with connect(tp, "alice") as c:
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
    # the star user must always name one
    f = connect_error(tp, "star")
    assert f.get("C") == "28000", error_text(f)
    assert "tenant" in f.get("M", "").lower(), error_text(f)
    # a single-tenant user whose tenant is suspended is refused
    f = connect_error(tp, "ivan")
    assert f.get("C") == "28000" and "not active" in f.get("M", ""), error_text(f)


@pytest.mark.parametrize("kw", [
    dict(user="multi.globex", options="-c nile.tenant_id=acme"),
    dict(user="multi", options="-c nile.tenant_id=acme", dbname="globex"),
    dict(user="multi.acme", dbname="globex"),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sources_that_disagree_are_refused(tp, kw):
    f = connect_error(tp, **kw)
    assert f.get("C") == "28000", error_text(f)
    assert "disagree" in f.get("M", "").lower(), error_text(f)


@pytest.mark.parametrize("forbidden,unknown", [
    ("globex", "nosuch"),
    (GLOBEX, "9f1d2c3b-4a5e-4f60-8a7b-1c2d3e4f5a6b"),
    ("globex-inc", "nosuch-inc"),
    ("hooli", "hooly"),
])
def test_unknown_and_forbidden_tenant_give_identical_errors(tp, forbidden, unknown):
    """alice may use acme only: a tenant that exists but is not hers must be indistinguishable
    from one that does not exist (no leak of the map)."""
    f_forbidden = connect_error(tp, "alice", options=ts.tenant_option(forbidden))
    f_unknown = connect_error(tp, "alice", options=ts.tenant_option(unknown))
    assert f_forbidden.get("C") == "28000", error_text(f_forbidden)
    assert f'tenant "{forbidden}" not found' in f_forbidden.get("M", ""), error_text(f_forbidden)
    assert f'tenant "{unknown}" not found' in f_unknown.get("M", ""), error_text(f_unknown)
    norm = lambda f, x: {k: v.replace(x, "<X>") for k, v in f.items()}  # noqa: E731
    assert norm(f_forbidden, forbidden) == norm(f_unknown, unknown)
    # the refused tenant's other names are not disclosed
    # (the identifier the client gave is echoed; "globex" inside "globex-inc" is that echo)
    shown = error_text(f_forbidden).replace(forbidden, "<X>")
    for secret in ("globex", GLOBEX, "hooli", HOOLI):
        if secret != forbidden:
            assert secret not in shown
    # same through the user name suffix
    s_forbidden = connect_error(tp, f"alice.{forbidden}")
    s_unknown = connect_error(tp, f"alice.{unknown}")
    assert norm(s_forbidden, forbidden) == norm(s_unknown, unknown)
    assert s_forbidden.get("C") == "28000"


@pytest.mark.parametrize("kw", [
    dict(user="ivan", options="-c nile.tenant_id=initech"),
    dict(user="ivan.initech"),
    dict(user="ivan", dbname="initech"),
    dict(user="star", options=f"-c nile.tenant_id={INITECH}"),
    dict(user="sam", options="-c nile.tenant_id=initech"),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_suspended_tenant_is_refused_at_connect(tp, kw):
    f = connect_error(tp, **kw)
    assert f.get("C") == "28000", error_text(f)
    assert "not active" in f.get("M", ""), error_text(f)


@pytest.mark.parametrize("kw", [
    dict(user="gina", options="-c nile.tenant_id=acme"),
    dict(user="gina.acme"),
    dict(user="gina", options=f"-c nile.tenant_id={GLOBEX}"),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_global_user_given_a_tenant_is_refused(tp, kw):
    f = connect_error(tp, **kw)
    assert f.get("C") == "28000", error_text(f)


@pytest.mark.parametrize("option", ["-c role=app_owner", "-c session_authorization=app_owner",
                                    "-c nile.tenant_id=acme -c role=app_owner",
                                    "--role=app_owner"])
def test_pinned_user_cannot_change_role_at_startup(tp, tcluster, option):
    off = tcluster.log_offset()
    user = "alice" if "nile.tenant_id" in option else "alice.acme"
    f = connect_error(tp, user, options=option)
    assert f.get("C") in ("28000", "42501"), error_text(f)
    # refused by the proxy, not by Postgres after forwarding the option
    assert "permission denied" not in tcluster.log_since(off)


def test_wrong_password_with_valid_tenant_is_still_refused(tp):
    f = connect_error(tp, "alice.acme", password="wrong")
    assert f.get("C") == "28P01", error_text(f)


# ---------------------------------------------------------------------------------------------
# the guard (pinned users)


@pytest.mark.parametrize("case", sorted(GUARD_CASES))
def test_guard_refuses_psycopg_simple(tp, tcluster, expected, case):
    sql = GUARD_CASES[case]
    with connect(tp, "alice", options="-c nile.tenant_id=acme") as c:
        off = tcluster.log_offset()
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        assert ts.sqlstate_of(ei.value) == "42501", repr(ei.value)
        assert not c.closed
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
        assert_never_reached_postgres(tcluster, off, sql)
        # and again: the guard is not a one-shot
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        assert ts.sqlstate_of(ei.value) == "42501"
        assert rows_and_setting(c) == (ACME, len(expected[ACME]))


@pytest.mark.parametrize("case", sorted(GUARD_CASES))
def test_guard_refuses_psql(tp, tcluster, expected, case):
    sql = GUARD_CASES[case]
    off = tcluster.log_offset()
    r = ts.psql(tp, "alice", [sql, "SELECT current_setting('nile.tenant_id')",
                              "SELECT count(*) FROM todos"],
                pgoptions="-c nile.tenant_id=acme")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR:  42501" in r.stderr, r.stderr
    assert r.stdout.split()[-2:] == [ACME, str(len(expected[ACME]))], r.stdout + r.stderr
    assert_never_reached_postgres(tcluster, off, sql)


def test_guard_refuses_setting_user_id(tp, tcluster, expected):
    """nile.user_id is part of the tenant context too (DESIGN: "the tenant GUCs")."""
    with connect(tp, "alice.acme") as c:
        for sql in (f"SET nile.user_id = '{BOB_UID}'", "RESET nile.user_id",
                    f"select set_config('nile.user_id', '{BOB_UID}', false)"):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql)
            assert ts.sqlstate_of(ei.value) == "42501", (sql, ei.value)
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)


@pytest.mark.parametrize("case", sorted(EXTENDED_CASES))
def test_guard_refuses_psycopg_extended(tp, tcluster, expected, case):
    sql = EXTENDED_CASES[case]
    with connect(tp, "alice.acme") as c:
        off = tcluster.log_offset()
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql, prepare=True)       # Parse/Bind/Execute even without parameters
        assert ts.sqlstate_of(ei.value) == "42501", repr(ei.value)
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
        assert_never_reached_postgres(tcluster, off, sql)


def test_guard_refuses_psycopg_with_parameters(tp, tcluster, expected):
    with connect(tp, "alice.acme") as c:
        for sql, params in [("SELECT set_config('nile.tenant_id', %s, false)", [GLOBEX]),
                            ("SELECT set_config(%s, %s, false)", ["nile.tenant_id", GLOBEX]),
                            ("SELECT %s::text, set_config('nile.tenant_id', %s, true)", ["a", GLOBEX])]:
            off = tcluster.log_offset()
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql, params)
            assert ts.sqlstate_of(ei.value) == "42501", (sql, ei.value)
            assert "set_config" not in tcluster.log_since(off), tcluster.log_since(off)
            assert_own_view(session_state(c), ACME, expected, ALICE_UID)
        # ordinary parameterized statements keep working
        assert c.execute("SELECT count(*) FROM todos WHERE tenant_id = %s", [GLOBEX]).fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM todos WHERE tenant_id = %s", [ACME]).fetchone() == (
            len(expected[ACME]),)


@pytest.mark.parametrize("case", sorted(EXTENDED_CASES))
def test_guard_refuses_asyncpg(tp, tcluster, expected, case):
    sql = EXTENDED_CASES[case]

    async def go():
        conn = await asyncpg.connect(host=tp.host, port=tp.port, user="alice.acme",
                                     password="alicepw", database=ts.APP_DB, ssl=False, timeout=15,
                                     command_timeout=20)
        try:
            off = tcluster.log_offset()
            with pytest.raises(asyncpg.PostgresError) as ei:
                await conn.fetch(sql)
            assert ei.value.sqlstate == "42501", repr(ei.value)
            reached = sql in tcluster.log_since(off)
            with pytest.raises(asyncpg.PostgresError) as ei2:
                await conn.fetch("SELECT set_config('nile.tenant_id', $1, false)", GLOBEX)
            assert ei2.value.sqlstate == "42501", repr(ei2.value)
            setting = await conn.fetchval("SELECT current_setting('nile.tenant_id')")
            ids = {r[0] for r in await conn.fetch("SELECT id::text FROM todos")}
            return reached, setting, ids
        finally:
            await conn.close()

    reached, setting, ids = asyncio.run(go())
    assert not reached, "the statement reached Postgres"
    assert setting == ACME and ids == expected[ACME]


@pytest.mark.parametrize("sql,result", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_guard_allows_harmless_statements(tp, expected, sql, result):
    with connect(tp, "alice.acme") as c:
        cur = c.execute(sql)
        if result is not None:
            assert cur.fetchall() == result
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
    r = ts.psql(tp, "alice.acme", [sql, "SELECT current_setting('nile.tenant_id')"])
    assert r.returncode == 0 and "ERROR" not in r.stderr, r.stderr
    assert r.stdout.split()[-1] == ACME


# ---------------------------------------------------------------------------------------------
# RESET ALL / DISCARD ALL / ROLLBACK


@pytest.mark.parametrize("stmt", ["RESET ALL", "DISCARD ALL", "reset all", "Discard All"])
def test_reset_all_and_discard_all_reapply_the_context(tp, expected, stmt):
    with connect(tp, "alice", options="-c nile.tenant_id=acme") as c:
        c.execute(stmt)
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
        c.execute(stmt)
        c.execute(stmt)
        assert rows_and_setting(c) == (ACME, len(expected[ACME]))
        # the re-applied context must survive a transaction that rolls back
        c.execute(stmt)
        c.execute("BEGIN")
        assert c.execute("SELECT count(*) FROM todos").fetchone() == (len(expected[ACME]),)
        c.execute("ROLLBACK")
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
    with connect(tp, "bob.globex") as c:
        c.execute(stmt)
        assert_own_view(session_state(c), GLOBEX, expected, BOB_UID)


@pytest.mark.parametrize("stmt", ["RESET ALL", "DISCARD ALL"])
def test_reset_all_and_discard_all_psql(tp, expected, stmt):
    r = ts.psql(tp, "bob", [stmt, "SELECT current_setting('nile.tenant_id')",
                            "SELECT current_setting('nile.user_id')",
                            "SELECT count(*) FROM todos"], dbname="globex")
    assert r.returncode == 0 and "ERROR" not in r.stderr, r.stderr
    assert r.stdout.split()[-3:] == [GLOBEX, BOB_UID, str(len(expected[GLOBEX]))]  # after the command tag


def test_rollback_does_not_lose_the_context(tp, expected):
    n = len(expected[ACME])
    # the very first thing the session does is a transaction that rolls back
    r = ts.psql(tp, "alice.acme", ["BEGIN; SELECT count(*) FROM todos; ROLLBACK; "
                                   "SELECT count(*) FROM todos",
                                   "SELECT current_setting('nile.tenant_id')"])
    assert r.returncode == 0 and "ERROR" not in r.stderr, r.stderr
    assert r.stdout.split()[-2:] == [str(n), ACME]
    r = ts.psql(tp, "alice.acme", ["BEGIN", "SELECT 1", "ROLLBACK",
                                   "SELECT count(*) FROM todos"])
    assert r.returncode == 0 and r.stdout.split()[-1] == str(n), r.stdout + r.stderr
    # psycopg, non-autocommit: implicit BEGIN as the first statement, then rollback
    with connect(tp, "alice.acme", autocommit=False) as c:
        assert c.execute("SELECT count(*) FROM todos").fetchone() == (n,)
        c.rollback()
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
        c.rollback()
        # an aborted transaction
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1/0")
        c.rollback()
        assert_own_view(session_state(c), ACME, expected, ALICE_UID)
        c.rollback()


# ---------------------------------------------------------------------------------------------
# switch and global users


def test_switch_user_sets_the_tenant_itself(tp, expected):
    with connect(tp, "sam") as c:
        st = session_state(c)
        assert st["count"] == 0 and st["tenant_id"] in (None, ""), st
        c.execute(f"SET nile.tenant_id = '{ACME}'")
        assert_own_view(session_state(c), ACME, expected)
        c.execute(f"SET nile.tenant_id = '{GLOBEX}'")
        assert_own_view(session_state(c), GLOBEX, expected)
        c.execute(f"SET nile.tenant_id = '{ACME}'")
        assert_own_view(session_state(c), ACME, expected)
        refused = [ts.new_uuid(),      # unknown
                   HOOLI,              # known, active, not in sam's list
                   INITECH,            # in sam's list, suspended
                   "not-a-uuid"]
        for value in refused:
            with pytest.raises(psycopg.Error) as ei:
                c.execute(f"SET nile.tenant_id = '{value}'")
            assert ts.sqlstate_of(ei.value) == "42501", (value, ei.value)
            assert_own_view(session_state(c), ACME, expected)   # unchanged, still usable


def test_switch_user_may_start_with_a_tenant(tp, expected):
    with connect(tp, "sam", options="-c nile.tenant_id=globex") as c:
        assert_own_view(session_state(c), GLOBEX, expected)
        c.execute(f"SET nile.tenant_id = '{ACME}'")
        assert_own_view(session_state(c), ACME, expected)


def test_switch_user_per_transaction_set_local(tp, expected):
    """SET LOCAL by a switch user to an allowed tenant lasts for its transaction."""
    with connect(tp, "sam") as c:
        with c.transaction():
            c.execute(f"SET LOCAL nile.tenant_id = '{GLOBEX}'")
            assert_own_view(session_state(c), GLOBEX, expected)
        assert session_state(c)["count"] == 0


def test_global_user_sees_every_tenant(tp, expected):
    with connect(tp, "gina") as c:
        role, setting = c.execute(
            "SELECT current_user, current_setting('nile.tenant_id', true)").fetchone()
        assert role == OWNER_ROLE and setting in (None, "")
        rows = c.execute("SELECT id::text, tenant_id::text FROM todos").fetchall()
        for tid in (ACME, GLOBEX):
            assert {r[0] for r in rows if r[1] == tid} == expected[tid]
    r = ts.psql(tp, "gina", ["SELECT count(DISTINCT tenant_id) >= 2 FROM todos"])
    assert r.returncode == 0 and r.stdout.strip() == "t", r.stdout + r.stderr


def test_tenant_created_at_run_time(tp, tcluster):
    new_id, other_new, suspended_id = ts.new_uuid(), ts.new_uuid(), ts.new_uuid()
    name = "rt-" + new_id[:8]
    with connect(tp, "gina") as g:
        g.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", [new_id, name])
        g.execute("INSERT INTO todos (tenant_id, title) VALUES (%s, 'rt one'), (%s, 'rt two')",
                  [new_id, new_id])
        g.execute("INSERT INTO tenants (id, name, status) VALUES (%s, %s, 'suspended')",
                  [suspended_id, "rt-susp-" + suspended_id[:8]])
        g.execute("INSERT INTO todos (tenant_id, title) VALUES (%s, 'suspended one')",
                  [suspended_id])
    mine = tcluster.todo_ids(new_id)
    assert len(mine) == 2
    with connect(tp, "star", options=ts.tenant_option(new_id)) as c:
        st = session_state(c)
        assert st["tenant_id"] == new_id and st["todo_tenants"] == {new_id}, st
        assert st["todo_ids"] == mine
        assert c.execute("SELECT id::text FROM tenants").fetchall() == [(new_id,)]
    # again (cached)
    with connect(tp, f"star.{new_id}") as c:
        assert session_state(c)["todo_ids"] == mine
    # a uuid that is nowhere
    f = connect_error(tp, "star", options=ts.tenant_option(other_new))
    assert f.get("C") == "28000" and f'tenant "{other_new}" not found' in f.get("M", ""), \
        error_text(f)
    # a user whose list does not include it
    f = connect_error(tp, "alice", options=ts.tenant_option(new_id))
    assert f.get("C") == "28000" and "not found" in f.get("M", ""), error_text(f)
    # found upstream but suspended
    f = connect_error(tp, "star", options=ts.tenant_option(suspended_id))
    assert f.get("C") == "28000", error_text(f)


# ---------------------------------------------------------------------------------------------
# many clients at once


def _run_concurrent_clients(proxy, expected, threads: int = 20, transactions: int = 20):
    sources = ["options", "suffix", "database"]
    errors: list[str] = []
    barrier = threading.Barrier(threads, timeout=60)

    def worker(i: int) -> int:
        who = "alice" if i % 2 == 0 else "bob"
        name, tid, uid = ME[who]
        kw = SOURCES[sources[(i // 2) % 3]](who, name)
        done = 0
        try:
            c = connect(proxy, autocommit=False, **kw)
        except Exception as exc:
            barrier.abort()
            raise AssertionError(f"client {i} ({who}, {kw}) could not connect: {exc!r}") from exc
        with c:
            barrier.wait()
            for _ in range(transactions):
                with c.transaction():
                    rows = c.execute("SELECT id::text, tenant_id::text FROM todos").fetchall()
                    setting, user_id = c.execute(
                        "SELECT current_setting('nile.tenant_id'), "
                        "current_setting('nile.user_id', true)").fetchone()
                bad = [r for r in rows if r[1] != tid]
                if bad or {r[0] for r in rows} != expected[tid] or setting != tid or user_id != uid:
                    errors.append(f"client {i} ({who}): setting={setting} user={user_id} rows={rows}")
                done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, i) for i in range(threads)]
        concurrent.futures.wait(futures, timeout=110)
        failures = [f.exception() for f in futures if f.done() and f.exception() is not None]
        failures.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
        assert not failures, f"{len(failures)} clients failed; first: {failures[0]!r}"
        total = sum(f.result(timeout=1) for f in futures)
    assert not errors, "\n".join(errors[:20])
    assert total == threads * transactions


def test_many_concurrent_clients_only_see_their_own_rows(tp, expected):
    """20 threads x 20 transactions, alice and bob, every resolution source (session pooling)."""
    _run_concurrent_clients(tp, expected)


@pytest.fixture
def pooled(make_tproxy):
    """Transaction pooling with 2 upstream connections: tenants share upstream connections, so
    the context is switched between transactions."""
    return make_tproxy(extra={"pool": {"mode": "transaction", "size": 2}})


def test_many_concurrent_clients_transaction_pooling(pooled, expected):
    _run_concurrent_clients(pooled, expected)


def test_transaction_pooling_rollback_and_alternating_tenants(pooled, expected):
    alice = connect(pooled, "alice.acme", autocommit=False)
    bob = connect(pooled, "bob.globex", autocommit=False)
    try:
        for _ in range(5):
            assert alice.execute("SELECT count(*) FROM todos").fetchone() == (len(expected[ACME]),)
            alice.rollback()
            assert bob.execute("SELECT count(*) FROM todos").fetchone() == (len(expected[GLOBEX]),)
            bob.rollback()
            alice.commit()
            assert_own_view(session_state(alice), ACME, expected, ALICE_UID)
            alice.commit()
            assert_own_view(session_state(bob), GLOBEX, expected, BOB_UID)
            bob.commit()
    finally:
        alice.close()
        bob.close()


# ---------------------------------------------------------------------------------------------
# reload


def _refused_not_active(proxy, user, **kw):
    f = ts.try_connect(proxy, user, **kw)
    if f is None:
        return None
    assert f.get("C") == "28000", error_text(f)
    return f if "not active" in f.get("M", "") else None


def test_reload_suspends_tenant_under_an_open_session(make_tproxy, expected):
    p = make_tproxy()
    bob = connect(p, "bob.globex")
    alice = connect(p, "alice.acme")
    try:
        assert_own_view(session_state(bob), GLOBEX, expected, BOB_UID)
        assert_own_view(session_state(alice), ACME, expected, ALICE_UID)
        p.write_map(ts.default_map(globex={"status": "suspended"}))
        p.sighup()
        h.wait_until(lambda: _refused_not_active(p, "bob.globex"), 30,
                     "new globex connections to be refused after SIGHUP")
        # the open globex session: FATAL 28000 at its next statement
        with pytest.raises(psycopg.Error) as ei:
            bob.execute("SELECT count(*) FROM todos").fetchall()
        assert ts.sqlstate_of(ei.value) == "28000", repr(ei.value)
        assert "not active" in str(ei.value)
        assert bob.closed or bob.broken
        # acme is unaffected: the open session and new ones
        assert_own_view(session_state(alice), ACME, expected, ALICE_UID)
        with connect(p, "alice", dbname="acme") as c2:
            assert_own_view(session_state(c2), ACME, expected, ALICE_UID)
        # other globex routes are refused as well
        assert _refused_not_active(p, "bob", dbname="globex")
        assert _refused_not_active(p, "bob", options="-c nile.tenant_id=globex")
        assert p.alive()
        # and back
        p.write_map(ts.default_map())
        p.sighup()
        h.wait_until(lambda: ts.try_connect(p, "bob.globex") is None, 30,
                     "globex to be accepted again")
        assert_own_view(session_state(alice), ACME, expected, ALICE_UID)
    finally:
        bob.close()
        alice.close()


def test_reload_picks_up_a_file_change_without_sighup(make_tproxy):
    p = make_tproxy()
    with connect(p, "bob.globex") as bob_ok:
        bob_ok.execute("SELECT 1")
    p.write_map(ts.default_map(globex={"status": "suspended"}))
    h.wait_until(lambda: _refused_not_active(p, "bob.globex"), 30,
                 "the file watcher to apply the suspension")


def test_reload_adds_a_user_and_changes_permissions(make_tproxy, expected):
    p = make_tproxy()
    assert ts.try_connect(p, "alice", options="-c nile.tenant_id=globex") is not None
    with connect(p, "alice.acme") as alice:
        users = dict(ts.USERS)
        users["alice"] = ("alicepw", {"mode": "pinned", "tenants": ["acme", "globex"],
                                      "user_id": ALICE_UID})
        users["dave"] = ("davepw", {"mode": "pinned", "tenants": ["globex"]})
        p.write_map(ts.render_map(ts.TENANTS, users))
        p.sighup()
        h.wait_until(lambda: ts.try_connect(p, "dave.globex", password="davepw") is None, 30,
                     "the new user to be accepted")
        with connect(p, "alice", options="-c nile.tenant_id=globex") as c:
            assert_own_view(session_state(c), GLOBEX, expected, ALICE_UID)
        assert_own_view(session_state(alice), ACME, expected, ALICE_UID)


def test_reload_with_a_bad_edit_keeps_the_old_map(make_tproxy, expected):
    p = make_tproxy()
    alice = connect(p, "alice.acme")
    try:
        off = p.stderr_offset()
        p.write_map(ts.default_map(globex={"status": "suspended"}) + "\n[tenants.broken\nid = \n")
        p.sighup()
        line = h.wait_until(
            lambda: re.search(r"(?im)^.*(tenant map|tenants\.toml|reload).*$", p.stderr_since(off)),
            30, "the proxy to log the failed reload")
        assert not ts.RELOADED_RE.search(p.stderr_since(off)), p.stderr_since(off)
        # connections keep working, new ones still authenticate, the old map is in force
        assert_own_view(session_state(alice), ACME, expected, ALICE_UID)
        with connect(p, "bob.globex") as b:   # globex NOT suspended: the bad file was ignored
            assert_own_view(session_state(b), GLOBEX, expected, BOB_UID)
        with connect(p, "alice", dbname="acme") as a2:
            assert_own_view(session_state(a2), ACME, expected, ALICE_UID)
        assert p.alive(), line.group(0)
        # an unparseable user entry (semantically bad) is refused the same way
        off = p.stderr_offset()
        p.write_map(ts.default_map() + '\n[users.eve]\npassword = "plaintext"\ntenants = ["acme"]\n')
        p.sighup()
        h.wait_until(lambda: re.search(r"(?i)tenant map|tenants\.toml|reload", p.stderr_since(off)),
                     30, "the proxy to log the second failed reload")
        assert ts.try_connect(p, "bob.globex") is None
        # a good edit afterwards is applied
        p.write_map(ts.default_map(globex={"status": "suspended"}))
        p.sighup()
        h.wait_until(lambda: _refused_not_active(p, "bob.globex"), 30,
                     "the good edit to be applied")
        assert_own_view(session_state(alice), ACME, expected, ALICE_UID)
    finally:
        alice.close()


# ---------------------------------------------------------------------------------------------
# audit


def _audit_args(proxy) -> list[str]:
    args = ["audit", "--config", str(proxy.config_path)]
    help_ = proxy.run_subcommand("help", "audit")
    if "--sql-file" in help_.stdout + help_.stderr:
        args += ["--sql-file", str(ts.AUDIT_SQL)]
    return args


def test_audit_is_clean_on_the_demo_database(make_tproxy):
    p = make_tproxy(start=False)
    r = p.run_subcommand(*_audit_args(p))
    assert r.returncode == 0, r.stdout + r.stderr


def test_audit_reports_a_table_created_without_the_event_trigger(make_tproxy, tcluster):
    dbname = "audit_" + ts.new_uuid()[:8]
    tcluster.create_app_database(dbname)
    try:
        p = make_tproxy(start=False, database=dbname)
        r = p.run_subcommand(*_audit_args(p))
        assert r.returncode == 0, r.stdout + r.stderr
        with tcluster.su(dbname) as c:
            c.execute("ALTER EVENT TRIGGER nile_tenant_isolation DISABLE")
            c.execute("SET ROLE app_owner")
            c.execute("CREATE TABLE leaky (id int, tenant_id uuid)")
            c.execute("RESET ROLE")
            c.execute("ALTER EVENT TRIGGER nile_tenant_isolation ENABLE")
        r = p.run_subcommand(*_audit_args(p))
        assert r.returncode == 1, r.stdout + r.stderr
        # rls_disabled and no_policy, each naming the table (output layout not asserted)
        assert "leaky" in r.stdout, r.stdout + r.stderr
        assert "rls_disabled" in r.stdout or "row level security" in r.stdout.lower(), r.stdout
        assert "todos" not in r.stdout, "the isolated demo table is not a finding"
    finally:
        tcluster.drop_database(dbname)


def test_audit_reports_a_weakened_proxy_role(make_tproxy, tcluster):
    dbname = "audit_" + ts.new_uuid()[:8]
    tcluster.create_app_database(dbname)
    try:
        with tcluster.su(dbname) as c:
            c.execute(f'GRANT TEMPORARY ON DATABASE "{dbname}" TO tenant_proxy')
        p = make_tproxy(start=False, database=dbname)
        r = p.run_subcommand(*_audit_args(p))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "TEMP" in r.stdout and "tenant_proxy" in r.stdout, r.stdout
    finally:
        tcluster.drop_database(dbname)


def test_one_pooled_connection_lent_across_tenants_and_users(make_tproxy, expected):
    """One upstream connection, lent in turn to clients with and without a user id, of one
    tenant and of another: each switch resets the previous context before setting the new one,
    so no client sees the previous borrower's tenant or user id."""
    p = make_tproxy(extra={"pool": {"mode": "transaction", "size": 1},
                           "server": {"event_loop_threads": 1}})
    turns = [("alice", ACME, ALICE_UID), ("carol", ACME, None), ("bob", GLOBEX, BOB_UID),
             ("carol", ACME, None), ("alice", ACME, ALICE_UID), ("bob", GLOBEX, BOB_UID),
             ("alice", ACME, ALICE_UID)]
    backends = set()
    for who, tid, uid in turns:
        with ts.connect(p, who) as c:
            state = session_state(c)
            assert state["tenant_id"] == tid, (who, state)
            assert (state["user_id"] or None) == uid, (who, state)
            assert state["todo_tenants"] == {tid} and state["todo_ids"] == expected[tid], (who, state)
            backends.add(c.execute("SELECT pg_backend_pid()").fetchone()[0])
    assert len(backends) == 1, backends


# ---------------------------------------------------------------------------------------------
# isolation = schema and isolation = database


@pytest.mark.parametrize("pooling", ["session", "transaction"])
def test_schema_and_database_isolation(make_tproxy, tcluster, expected, pooling):
    """isolation = schema: the tenant setting and search_path = "<schema>", public;
    isolation = database: the client is routed to the tenant's own upstream database."""
    own_db = f"globex_own_{pooling}"
    tcluster.create_app_database(own_db)
    try:
        with tcluster.su(ts.APP_DB) as c:
            c.execute("CREATE SCHEMA IF NOT EXISTS acme_s")
            c.execute("CREATE TABLE IF NOT EXISTS acme_s.notes (body text)")
            c.execute("TRUNCATE acme_s.notes")
            c.execute("INSERT INTO acme_s.notes VALUES ('in acme_s')")
            c.execute(f"GRANT USAGE ON SCHEMA acme_s TO {ts.PROXY_ROLE}")
            c.execute(f"GRANT SELECT ON acme_s.notes TO {ts.PROXY_ROLE}")
        tenants = {name: dict(t) for name, t in ts.TENANTS.items()}
        tenants["acme"].update({"isolation": "schema", "schema": "acme_s"})
        tenants["globex"].update({"isolation": "database", "database": own_db})
        p = make_tproxy(ts.render_map(tenants, ts.USERS), extra={"pool": {"mode": pooling, "size": 2}})
        for _ in range(2):  # twice: in transaction mode the second runs on a lent connection
            with ts.connect(p, "alice", dbname="acme") as c:
                assert c.execute("SHOW search_path").fetchone()[0] == "acme_s, public"
                assert c.execute("SELECT body FROM notes").fetchall() == [("in acme_s",)]
                assert session_state(c)["todo_tenants"] == {ACME}
            with ts.connect(p, "bob", dbname="globex") as c:
                assert c.execute("SELECT current_database()").fetchone()[0] == own_db
                state = session_state(c)
                assert state["tenant_id"] == GLOBEX and state["todo_tenants"] == {GLOBEX}
            with ts.connect(p, "gina") as c:
                # a global user is on the default database and search_path
                assert c.execute("SELECT current_database()").fetchone()[0] == ts.APP_DB
                assert c.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    finally:
        tcluster.drop_database(own_db)
