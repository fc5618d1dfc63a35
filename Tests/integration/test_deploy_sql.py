"""Integration tests for deploy/sql: schema, tenant context, RLS, role hardening, audit.

Self-contained: starts its own throwaway PostgreSQL (initdb into a temp dir, loopback,
random port; run as the `postgres` OS user when the tests run as root), applies the
scripts with psql and checks isolation as the hardened proxy role with psycopg 3.

    python3 -m pytest Tests/integration/test_deploy_sql.py -q

Environment: PG_BINDIR (default /usr/lib/postgresql/15/bin).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")
from psycopg import errors  # noqa: E402

import pgharness as h  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "deploy" / "sql"
SCRIPTS = sorted(SQL_DIR.glob("0*.sql"))
AUDIT = SQL_DIR / "audit.sql"
PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))

ACME = "11111111-1111-4111-8111-111111111111"
GLOBEX = "22222222-2222-4222-8222-222222222222"
PROXY_ROLE, PROXY_PASSWORD = "tenant_proxy", "proxy-secret"
OWNER_ROLE, OWNER_PASSWORD = "app_owner", "owner-secret"

_db_counter = itertools.count()


class Cluster:
    def __init__(self, base: Path, port: int, as_postgres: bool):
        self.base, self.port, self.as_postgres = base, port, as_postgres
        self.data = base / "data"
        self.sock = str(base)

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--"] if self.as_postgres else []) + list(args)

    def start(self) -> None:
        subprocess.run(
            self._cmd(str(PG_BINDIR / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True)
        subprocess.run(
            self._cmd(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w",
                      "-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                      "start"),
            check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(self._cmd(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
                       capture_output=True)

    # connections -------------------------------------------------------------------
    def su(self, dbname: str = "postgres") -> "psycopg.Connection":
        return psycopg.connect(host=self.sock, port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def proxy(self, dbname: str) -> "psycopg.Connection":
        return psycopg.connect(host="127.0.0.1", port=self.port, user=PROXY_ROLE, password=PROXY_PASSWORD,
                               dbname=dbname, autocommit=True)

    def owner(self, dbname: str) -> "psycopg.Connection":
        return psycopg.connect(host="127.0.0.1", port=self.port, user=OWNER_ROLE, password=OWNER_PASSWORD,
                               dbname=dbname, autocommit=True)

    # scripts -----------------------------------------------------------------------
    def psql_file(self, dbname: str, path: Path, **variables: str) -> subprocess.CompletedProcess:
        args = [str(PG_BINDIR / "psql"), "-X", "-q", "-h", self.sock, "-p", str(self.port), "-U", "postgres",
                "-d", dbname, "-v", "ON_ERROR_STOP=1", "-f", str(path)]
        for k, v in variables.items():
            args[1:1] = ["-v", f"{k}={v}"]
        return subprocess.run(args, capture_output=True, text=True)

    def apply_all(self, dbname: str, **variables: str) -> None:
        variables = {"proxy_password": PROXY_PASSWORD, "owner_password": OWNER_PASSWORD, **variables}
        for script in SCRIPTS:
            res = self.psql_file(dbname, script, **variables)
            assert res.returncode == 0, f"{script.name} failed:\n{res.stderr}"
            assert "ERROR" not in res.stderr, res.stderr

    def new_db(self, apply: bool = True, **variables: str) -> str:
        name = f"t{next(_db_counter)}"
        with self.su() as c:
            c.execute(f'create database "{name}"')
        if apply:
            self.apply_all(name, **variables)
        return name


@pytest.fixture(scope="module")
def sqlpg():
    if not (PG_BINDIR / "initdb").exists() or shutil.which("psql") is None and not (PG_BINDIR / "psql").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BINDIR}")
    as_postgres = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="tp-sqlpg-"))
    if as_postgres:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no postgres OS user")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    cluster = Cluster(base, h.free_port(), as_postgres)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_db(sqlpg) -> str:
    """A database with all scripts applied twice (idempotence is part of the set-up)."""
    name = sqlpg.new_db()
    sqlpg.apply_all(name)
    return name


@pytest.fixture
def fresh_db(sqlpg) -> str:
    """A private database for tests that change or break things."""
    return sqlpg.new_db()


def rows(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def set_tenant(conn, tenant: str | None) -> None:
    if tenant is None:
        conn.execute("reset nile.tenant_id")
    else:
        conn.execute(f"set nile.tenant_id = '{tenant}'")  # plain SET, as the proxy does


# ----------------------------------------------------------------------------------------
# audit helpers

def audit_checks() -> list[tuple[str, str]]:
    text = AUDIT.read_text()
    parts = re.split(r"(?m)^-- check: (\S+)[ \t]*$", text)
    return list(zip(parts[1::2], parts[2::2]))


def run_audit(conn) -> dict[str, list[tuple[str, str, str]]]:
    found: dict[str, list[tuple[str, str, str]]] = {}
    for name, query in audit_checks():
        with conn.cursor() as cur:
            cur.execute(query)
            result = cur.fetchall()
        if result:
            found[name] = result
    return found


# ----------------------------------------------------------------------------------------
# scripts

def test_scripts_apply_cleanly_twice(sqlpg):
    db = sqlpg.new_db(apply=False)
    sqlpg.apply_all(db)
    with sqlpg.su(db) as c:
        before = rows(c, "select (select count(*) from pg_policy), (select count(*) from todos),"
                         " (select count(*) from tenants), (select count(*) from pg_event_trigger)")
    sqlpg.apply_all(db)
    with sqlpg.su(db) as c:
        after = rows(c, "select (select count(*) from pg_policy), (select count(*) from todos),"
                        " (select count(*) from tenants), (select count(*) from pg_event_trigger)")
    assert before == after
    assert after[0][1] == 5 and after[0][2] == 2 and after[0][3] == 1


def test_schema_is_nile_shaped(sqlpg, demo_db):
    with sqlpg.su(demo_db) as c:
        cols = dict(rows(c, """select table_schema || '.' || table_name, array_agg(column_name::text order by column_name)
                                 from information_schema.columns
                                where (table_schema, table_name) in (('public','tenants'),('users','users'),('users','tenant_users'))
                                group by 1"""))
        assert {"id", "name", "created", "updated", "deleted", "compute_id", "status"} <= set(cols["public.tenants"])
        assert {"id", "created", "updated", "deleted", "name", "family_name", "given_name", "email", "picture",
                "email_verified"} <= set(cols["users.users"])
        assert {"tenant_id", "user_id", "created", "updated", "deleted", "roles", "email"} <= set(cols["users.tenant_users"])
        with pytest.raises(errors.CheckViolation):
            c.execute("update tenants set status = 'gone' where name = 'acme'")
        assert rows(c, "select provolatile from pg_proc where oid = 'nile.current_tenant_id'::regproc") == [("s",)]


# ----------------------------------------------------------------------------------------
# isolation as the hardened proxy role

def test_tenant_sees_only_its_rows(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        set_tenant(c, ACME)
        got = rows(c, "select tenant_id::text, title from todos order by title")
        assert len(got) == 3 and {t for t, _ in got} == {ACME}
        set_tenant(c, GLOBEX)
        got = rows(c, "select tenant_id::text from todos")
        assert len(got) == 2 and {t for (t,) in got} == {GLOBEX}
        # an explicit filter for the other tenant does not help
        assert rows(c, "select * from todos where tenant_id = %s", (ACME,)) == []


@pytest.mark.parametrize("setting", [None, "", "reset"])
def test_no_tenant_context_sees_nothing(sqlpg, demo_db, setting):
    with sqlpg.proxy(demo_db) as c:
        if setting == "reset":
            set_tenant(c, ACME)
            c.execute("reset nile.tenant_id")
        elif setting is not None:
            c.execute("set nile.tenant_id = ''")
        assert rows(c, "select count(*) from todos") == [(0,)]
        assert rows(c, "select count(*) from tenants") == [(0,)]
        assert rows(c, "select count(*) from users.tenant_users") == [(0,)]
        assert rows(c, "select count(*) from users.users") == [(0,)]
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("insert into todos (tenant_id, title) values (%s, 'x')", (ACME,))


def test_non_uuid_tenant_fails_closed(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        c.execute("set nile.tenant_id = 'acme'")
        with pytest.raises(errors.InvalidTextRepresentation):
            c.execute("select * from todos")


def test_write_for_another_tenant_is_refused(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        set_tenant(c, ACME)
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            c.execute("insert into todos (tenant_id, title) values (%s, 'evil')", (GLOBEX,))
        assert exc.value.sqlstate == "42501"
        with c.transaction(force_rollback=True):
            c.execute("insert into todos (tenant_id, title) values (%s, 'mine')", (ACME,))
            # moving an own row to another tenant fails the WITH CHECK as well
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute("update todos set tenant_id = %s where title = 'mine'", (GLOBEX,))
        # updates/deletes cannot reach the other tenant's rows
        assert c.execute("update todos set complete = true where tenant_id = %s", (GLOBEX,)).rowcount == 0
        assert c.execute("delete from todos where tenant_id = %s", (GLOBEX,)).rowcount == 0


def test_tenants_rows_per_context(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        set_tenant(c, ACME)
        assert rows(c, "select id::text, name from tenants") == [(ACME, "acme")]
        set_tenant(c, GLOBEX)
        assert rows(c, "select id::text, name from tenants") == [(GLOBEX, "globex")]
        # a tenant cannot un-suspend itself, nor create tenants
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("update tenants set status = 'active'")
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("insert into tenants (name) values ('new')")
        # users: only members of the current tenant
        assert rows(c, "select email from users.users") == [("hank@globex.example",)]
    with sqlpg.owner(demo_db) as c:   # the global role sees every tenant
        assert rows(c, "select count(*) from tenants") == [(2,)]
        assert rows(c, "select count(*) from todos") == [(5,)]


def test_shared_table_visible_to_all_writable_by_none(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        assert rows(c, "select count(*) from plans") == [(3,)]
        set_tenant(c, ACME)
        assert rows(c, "select count(*) from plans") == [(3,)]
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("update plans set price_cents = 0")


def test_table_created_later_is_isolated(sqlpg, fresh_db):
    with sqlpg.owner(fresh_db) as o:
        o.execute("create table notes (id int, tenant_id uuid, body text)")
        o.execute("insert into notes values (1, %s, 'acme note'), (2, %s, 'globex note')", (ACME, GLOBEX))
        # other ways to get a tenant table: CREATE TABLE AS, SELECT INTO, ADD COLUMN later
        o.execute("create table notes_copy as select * from notes")
        o.execute("select * into notes_into from notes")
        o.execute("create table later (id int, body text)")
        o.execute("insert into later values (1, 'x')")
        o.execute("alter table later add column tenant_id uuid")
        o.execute("update later set tenant_id = %s", (ACME,))
        o.execute("create table parted (id int, tenant_id uuid) partition by list (tenant_id)")
        o.execute(f"create table parted_acme partition of parted for values in ('{ACME}')")
        o.execute("insert into parted values (1, %s)", (ACME,))
        flags = rows(o, """select relname, relrowsecurity, relforcerowsecurity,
                                  exists (select 1 from pg_policy p where p.polrelid = c.oid and p.polname = 'tenant_isolation')
                             from pg_class c where relname in ('notes','notes_copy','notes_into','later','parted','parted_acme')""")
        assert len(flags) == 6 and all(f[1] and f[2] and f[3] for f in flags), flags
    with sqlpg.proxy(fresh_db) as c:
        set_tenant(c, ACME)
        assert rows(c, "select body from notes") == [("acme note",)]
        assert rows(c, "select body from notes_copy") == [("acme note",)]
        assert rows(c, "select body from notes_into") == [("acme note",)]
        assert rows(c, "select count(*) from later") == [(1,)]
        assert rows(c, "select count(*) from parted_acme") == [(1,)]
        set_tenant(c, GLOBEX)
        assert rows(c, "select body from notes") == [("globex note",)]
        assert rows(c, "select count(*) from later") == [(0,)]
        assert rows(c, "select count(*) from parted") == [(0,)]
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("insert into notes values (3, %s, 'x')", (ACME,))


def test_text_tenant_id_column(sqlpg, fresh_db):
    with sqlpg.owner(fresh_db) as o:
        o.execute("create table tagged (tenant_id text, v int)")
        o.execute("insert into tagged values (%s, 1), (%s, 2)", (ACME, GLOBEX))
    with sqlpg.proxy(fresh_db) as c:
        set_tenant(c, GLOBEX)
        assert rows(c, "select v from tagged") == [(2,)]


def test_disabling_rls_is_undone_by_the_trigger(sqlpg, fresh_db):
    with sqlpg.owner(fresh_db) as o:
        o.execute("alter table todos disable row level security")
        o.execute("alter table todos no force row level security")
        assert rows(o, "select relrowsecurity, relforcerowsecurity from pg_class where relname = 'todos'") == [(True, True)]


def test_new_view_over_tenant_table_is_security_invoker(sqlpg, fresh_db):
    with sqlpg.owner(fresh_db) as o:
        o.execute("create view open_todos as select title from todos where not complete")
        o.execute("create view open_todos2 as select * from open_todos")
        o.execute("create view plan_names as select name from plans")
        opts = dict(rows(o, "select relname, reloptions::text from pg_class where relname in ('open_todos','open_todos2','plan_names')"))
        assert "security_invoker=true" in opts["open_todos"] and "security_invoker=true" in opts["open_todos2"]
        assert opts["plan_names"] is None
        o.execute("alter view open_todos reset (security_invoker)")   # re-asserted by the trigger
        assert "security_invoker=true" in rows(o, "select reloptions::text from pg_class where relname = 'open_todos'")[0][0]
        o.execute("grant select on open_todos, open_todos2 to tenant_proxy")
    with sqlpg.proxy(fresh_db) as c:
        set_tenant(c, GLOBEX)
        assert len(rows(c, "select * from open_todos2")) == 1
        c.execute("reset nile.tenant_id")
        assert rows(c, "select * from open_todos") == []


# ----------------------------------------------------------------------------------------
# hardening of the proxy role

def test_proxy_role_is_hardened(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        assert rows(c, "select rolsuper, rolbypassrls, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user") \
            == [(False, False, False, False)]
        assert rows(c, "select count(*) from pg_class where relowner = (select oid from pg_roles where rolname = current_user)") == [(0,)]
        for stmt in ["create table public.mine (tenant_id uuid)",
                     "create temp table scratch (a int)",
                     "create schema mine",
                     "create function public.f() returns int language sql as 'select 1'",
                     "truncate todos",
                     "select set_config('nile.tenant_id', %s, false)",
                     "do $$ begin execute 'set nile.tenant_id = ''x'''; end $$",
                     "set role app_owner",
                     "alter table todos disable row level security"]:
            with pytest.raises(errors.InsufficientPrivilege) as exc:
                c.execute(stmt, (GLOBEX,) if "%s" in stmt else None)
            assert exc.value.sqlstate == "42501", stmt
        # still usable after the refusals
        set_tenant(c, ACME)
        assert rows(c, "select count(*) from todos") == [(3,)]


def test_optional_revokes_can_be_turned_off(sqlpg):
    db = sqlpg.new_db(revoke_set_config="off", revoke_plpgsql="off")
    with sqlpg.proxy(db) as c:
        c.execute("select set_config('nile.tenant_id', %s, false)", (ACME,))
        c.execute("do $$ begin end $$")
        found = run_audit(c)
    assert set(found) == {"role_set_config", "role_plpgsql"}
    # turning them back on restores the clean state
    sqlpg.apply_all(db)
    with sqlpg.proxy(db) as c:
        assert run_audit(c) == {}


# ----------------------------------------------------------------------------------------
# audit

def test_audit_file_format():
    checks = audit_checks()
    names = [n for n, _ in checks]
    assert len(names) == len(set(names)) >= 10
    assert ";" not in AUDIT.read_text().split("-- check:", 1)[0]
    for name, body in checks:
        assert body.count(";") == 1 and body.rstrip().endswith(";"), name
        # no psql variables (:name, :'name', :"name"); casts (::type) are fine
        unquoted = re.sub(r"'(?:[^']|'')*'", "''", body)
        assert not re.search(r"(?<!:):(?!:)['\"]?[A-Za-z_]", unquoted), f"psql variable in {name}"


def test_audit_columns_are_three_text(sqlpg, demo_db):
    with sqlpg.su(demo_db) as c:
        for name, query in audit_checks():
            with c.cursor() as cur:
                cur.execute(query)
                assert [d.name for d in cur.description] == ["object", "problem", "fix"], name
                assert [d.type_code for d in cur.description] == [25, 25, 25], name


def test_audit_clean_on_hardened_demo(sqlpg, demo_db):
    with sqlpg.proxy(demo_db) as c:
        assert run_audit(c) == {}


def test_audit_as_superuser_reports_superuser(sqlpg, demo_db):
    with sqlpg.su(demo_db) as c:
        found = run_audit(c)
    assert set(found) == {"role_attributes"}
    assert "superuser" in found["role_attributes"][0][1]


BREAKS = {
    "disable_rls": (
        ["alter event trigger nile_tenant_isolation disable",
         "alter table todos disable row level security",
         "alter event trigger nile_tenant_isolation enable"],
        {"rls_disabled": "public.todos"}),
    "no_force": (
        ["alter event trigger nile_tenant_isolation disable",
         "alter table todos no force row level security",
         "alter event trigger nile_tenant_isolation enable"],
        {"rls_not_forced": "public.todos"}),
    "table_created_while_trigger_disabled": (
        ["alter event trigger nile_tenant_isolation disable",
         "set role app_owner",
         "create table leaky (id int, tenant_id uuid)",
         "reset role",
         "alter event trigger nile_tenant_isolation enable"],
        {"rls_disabled": "public.leaky", "no_policy": "public.leaky"}),
    "trigger_disabled": (
        ["alter event trigger nile_tenant_isolation disable"],
        {"event_trigger": "nile_tenant_isolation"}),
    "trigger_dropped": (
        ["drop event trigger nile_tenant_isolation"],
        {"event_trigger": "nile_tenant_isolation"}),
    "volatile_function": (
        ["alter function nile.current_tenant_id() volatile"],
        {"tenant_function": "nile.current_tenant_id()"}),
    "immutable_function": (
        ["alter function nile.current_tenant_id() immutable"],
        {"tenant_function": "nile.current_tenant_id()"}),
    "permissive_policy_without_context": (
        ["create policy see_all on todos for select using (true)"],
        {"policy_without_tenant_context": "see_all"}),
    "grant_temp": (
        ["grant temporary on database {db} to tenant_proxy"],
        {"role_database_privileges": "tenant_proxy"}),
    "grant_temp_public": (
        ["grant temporary on database {db} to public"],
        {"role_database_privileges": "tenant_proxy"}),
    "grant_create_db": (
        ["grant create on database {db} to tenant_proxy"],
        {"role_database_privileges": "tenant_proxy"}),
    "grant_create_public": (
        ["grant create on schema public to public"],
        {"role_schema_create": "tenant_proxy"}),
    "bypassrls": (
        ["alter role tenant_proxy bypassrls"],
        {"role_attributes": "tenant_proxy"}),
    "member_of_owner": (
        ["grant app_owner to tenant_proxy"],
        # membership also inherits every privilege of the owner role
        {"role_membership": "app_owner", "role_database_privileges": "tenant_proxy",
         "role_schema_create": "tenant_proxy", "role_table_privileges": "tenant_proxy",
         "role_set_config": "tenant_proxy", "role_plpgsql": "tenant_proxy"}),
    "truncate": (
        ["grant truncate on todos to tenant_proxy"],
        {"role_table_privileges": "tenant_proxy"}),
    "set_config": (
        ["grant execute on function set_config(text, text, boolean) to tenant_proxy"],
        {"role_set_config": "tenant_proxy"}),
    "plpgsql": (
        ["grant usage on language plpgsql to public"],
        {"role_plpgsql": "tenant_proxy"}),
    "security_definer": (
        ["set role app_owner",
         "create function public.all_todos() returns bigint language sql security definer as 'select count(*) from todos'",
         "reset role"],
        {"security_definer_bypass": "all_todos"}),
    "view_not_invoker": (
        ["alter event trigger nile_tenant_isolation disable",   # else the trigger marks it security_invoker
         "set role app_owner",
         "create view all_titles as select title from todos",
         "grant select on all_titles to tenant_proxy",
         "reset role",
         "alter event trigger nile_tenant_isolation enable"],
        {"views_bypassing_rls": "all_titles"}),
    "other_login_role_with_bypassrls": (
        ["create role reporting login bypassrls"],
        {"role_attributes": "reporting"}),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_audit_detects(sqlpg, fresh_db, case):
    statements, expected = BREAKS[case]
    try:
        with sqlpg.su(fresh_db) as c:
            for stmt in statements:
                c.execute(stmt.format(db=fresh_db))
        with sqlpg.proxy(fresh_db) as c:
            found = run_audit(c)
        assert set(found) == set(expected), found
        for check, needle in expected.items():
            assert any(needle in obj or needle in problem for obj, problem, _ in found[check]), found[check]
            assert all(fix.strip() for _, _, fix in found[check])
        leaks = {"disable_rls": "select count(*) from todos",
                 "view_not_invoker": "select count(*) from all_titles",
                 "security_definer": "select public.all_todos()"}
        if case in leaks:
            # and the leak is real: without a tenant context the proxy role sees every tenant's rows
            with sqlpg.proxy(fresh_db) as c:
                assert rows(c, leaks[case]) == [(5,)]
        # re-running the scripts repairs the database-side findings
        if case not in ("other_login_role_with_bypassrls", "permissive_policy_without_context",
                        "security_definer", "view_not_invoker", "table_created_while_trigger_disabled",
                        "truncate"):
            sqlpg.apply_all(fresh_db)
            with sqlpg.proxy(fresh_db) as c:
                assert run_audit(c) == {}
    finally:
        with sqlpg.su() as c:   # cluster-wide changes must not leak into other tests
            c.execute("alter role tenant_proxy nobypassrls")
            c.execute("drop role if exists reporting")
            with contextlib.suppress(Exception):
                c.execute("revoke app_owner from tenant_proxy")
