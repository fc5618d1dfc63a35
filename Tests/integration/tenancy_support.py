"""Helpers for test_tenancy.py: a PostgreSQL cluster of its own with deploy/sql applied, a
tenant-proxy process configured with a [tenancy] section and a tenant map, and client helpers.

Reuses pgharness (PostgresServer lifecycle, port helpers, RawConn, hash-password); it does not
use the conftest `pg` cluster because 04_roles.sql changes cluster-wide roles.

Waiting is always "poll a condition until a deadline" (pgharness.wait_until), never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pgharness as h

REPO = h.REPO_ROOT
SQL_DIR = REPO / "deploy" / "sql"
SCRIPTS = [SQL_DIR / f for f in ("01_nile_schema.sql", "02_tenant_context.sql", "03_rls.sql",
                                 "04_roles.sql", "05_demo.sql")]
AUDIT_SQL = SQL_DIR / "audit.sql"

# --- fixed identities (05_demo.sql) -------------------------------------------------------------
ACME = "11111111-1111-4111-8111-111111111111"
GLOBEX = "22222222-2222-4222-8222-222222222222"
# only in the tenant map (not in public.tenants)
INITECH = "33333333-3333-4333-8333-333333333333"   # suspended
HOOLI = "44444444-4444-4444-8444-444444444444"     # active, nobody but star may use it
ALICE_UID = "cccccccc-0000-4000-8000-000000000001"  # users.users rows from 05_demo.sql
BOB_UID = "cccccccc-0000-4000-8000-000000000002"

PROXY_ROLE, PROXY_PW = "tenant_proxy", "tp-proxy-secret"
OWNER_ROLE, OWNER_PW = "app_owner", "tp-owner-secret"
APP_DB = "app"

TENANTS = {
    "acme": {"id": ACME, "aliases": ["acme-corp"], "status": "active", "isolation": "rls",
             "databases": ["acme"]},
    "globex": {"id": GLOBEX, "aliases": ["globex-inc"], "status": "active", "isolation": "rls",
               "databases": ["globex"]},
    "initech": {"id": INITECH, "status": "suspended", "isolation": "rls",
                "databases": ["initech"]},
    "hooli": {"id": HOOLI, "status": "active", "isolation": "rls"},
}

# user -> (password, settings)
USERS = {
    "alice": ("alicepw", {"mode": "pinned", "tenants": ["acme"], "user_id": ALICE_UID}),
    "bob": ("bobpw", {"mode": "pinned", "tenants": ["globex"], "user_id": BOB_UID}),
    # listed by alias, no user_id
    "carol": ("carolpw", {"mode": "pinned", "tenants": ["acme-corp"]}),
    # may use both (listed by name and by id): for "sources disagree"
    "multi": ("multipw", {"mode": "pinned", "tenants": ["acme", GLOBEX]}),
    "ivan": ("ivanpw", {"mode": "pinned", "tenants": ["initech"]}),
    "sam": ("sampw", {"mode": "switch", "tenants": ["acme", "globex", "initech"]}),
    "gina": ("ginapw", {"mode": "global"}),
    "star": ("starpw", {"mode": "pinned", "tenants": ["*"]}),
}


def password_of(user: str) -> str:
    """Password for a user name as a client types it (alice.acme -> alice's)."""
    if user in USERS:
        return USERS[user][0]
    base = user.rsplit(".", 1)[0]
    return USERS[base][0]


# --------------------------------------------------------------------------------------------
# TOML rendering


def _toml_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return h.toml_value(v)


def render_map(tenants: dict[str, dict], users: dict[str, tuple[str, dict]],
               verifier=h.cached_verifier) -> str:
    out = []
    for name, t in tenants.items():
        out.append(f"[tenants.{h.toml_str(name)}]")
        for k, v in t.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    for name, (pw, u) in users.items():
        out.append(f"[users.{h.toml_str(name)}]")
        out.append(f"password = {h.toml_str(verifier(pw))}")
        for k, v in u.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


def default_map(**tenant_overrides: dict) -> str:
    """The standard map; tenant_overrides: name -> dict of keys to change (e.g. status)."""
    tenants = {name: dict(t) for name, t in TENANTS.items()}
    for name, over in tenant_overrides.items():
        tenants[name].update(over)
    return render_map(tenants, USERS)


# --------------------------------------------------------------------------------------------
# PostgreSQL with deploy/sql applied


class TenancyCluster:
    """A throwaway cluster (initdb as the postgres OS user when root), database `app` with
    01..05 applied. log_statement = all, so tests can prove a statement never reached Postgres."""

    def __init__(self):
        self.srv = h.PostgresServer()

    @property
    def port(self) -> int:
        return self.srv.port

    @property
    def host(self) -> str:
        return self.srv.host

    def start(self) -> "TenancyCluster":
        try:
            self.srv.init()
            with open(self.srv.data / "postgresql.conf", "a") as f:
                f.write("\nlog_statement = 'all'\nmax_connections = 300\n"
                        "log_line_prefix = '%m [%p] %u@%d '\n")
            self.srv.start()
            with self.su() as c:
                c.execute(f'CREATE DATABASE "{APP_DB}"')
            self.apply_scripts(APP_DB)
        except BaseException:
            log = self.srv.log_tail()
            self.srv.destroy()
            if log:
                print("postgres log:\n" + log)
            raise
        return self

    def destroy(self):
        self.srv.destroy()

    def su(self, dbname: str = "postgres"):
        return self.srv.admin(dbname)

    def psql_file(self, dbname: str, path: Path, **variables: str) -> subprocess.CompletedProcess:
        args = [h.client_bin("psql"), "-X", "-q", "-h", str(self.srv.sock), "-p", str(self.port),
                "-U", "postgres", "-d", dbname, "-v", "ON_ERROR_STOP=1"]
        for k, v in variables.items():
            args += ["-v", f"{k}={v}"]
        args += ["-f", str(path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)

    def apply_scripts(self, dbname: str):
        for script in SCRIPTS:
            res = self.psql_file(dbname, script, proxy_password=PROXY_PW, owner_password=OWNER_PW)
            if res.returncode != 0 or "ERROR" in res.stderr:
                raise RuntimeError(f"{script.name} failed on {dbname}:\n{res.stderr}")

    def create_app_database(self, name: str) -> str:
        with self.su() as c:
            c.execute(f'CREATE DATABASE "{name}"')
        self.apply_scripts(name)
        return name

    def drop_database(self, name: str):
        with contextlib.suppress(Exception), self.su() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def todo_ids(self, tenant_id: str, dbname: str = APP_DB) -> set[str]:
        """The todos of a tenant as the superuser sees them (the expected answer)."""
        with self.su(dbname) as c:
            return {r[0] for r in c.execute(
                "SELECT id::text FROM public.todos WHERE tenant_id = %s", (tenant_id,)).fetchall()}

    # -- the server log, to prove what did (not) reach Postgres ----------------------------
    def log_offset(self) -> int:
        try:
            return self.srv.logfile.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.srv.logfile, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def direct(self, user: str = PROXY_ROLE, dbname: str = APP_DB, **kw):
        import psycopg
        pw = PROXY_PW if user == PROXY_ROLE else OWNER_PW
        return psycopg.connect(host=self.host, port=self.port, user=user, password=pw,
                               dbname=dbname, autocommit=True, connect_timeout=10, **kw)


# --------------------------------------------------------------------------------------------
# tenant-proxy with [tenancy]


def proxy_config(cluster: TenancyCluster, *, listen_port: int | None = None,
                 database: str = APP_DB, lookup_upstream: bool = True,
                 lookup_cache_seconds: int = 30, log_level: str = "info",
                 extra: dict | None = None) -> dict[str, dict]:
    cfg = {
        "server": {"listen_host": "127.0.0.1", "listen_port": listen_port or h.free_port(),
                   "shutdown_timeout_seconds": 5},
        "auth": {"trust_loopback": False},
        "tenancy": {"map_file": "tenants.toml", "tenant_setting": "nile.tenant_id",
                    "user_setting": "nile.user_id", "user_separator": ".",
                    "lookup_upstream": lookup_upstream,
                    "lookup_cache_seconds": lookup_cache_seconds},
        "upstream": {"host": cluster.host, "port": cluster.port, "user": PROXY_ROLE,
                     "password": PROXY_PW, "global_user": OWNER_ROLE,
                     "global_password": OWNER_PW, "database": database},
        "log": {"level": log_level},
    }
    # Keys newer builds know; dropped again (adapt_config) when the binary reports them unknown.
    for (sec, key), value in OPTIONAL_KEYS.items():
        cfg.setdefault(sec, {})[key] = value
    for sec, kv in (extra or {}).items():
        cfg.setdefault(sec, {}).update(kv)
    return cfg


OPTIONAL_KEYS = {
    ("tls", "require"): False,            # newer builds require TLS unless told otherwise
    ("auth", "failure_delay_ms"): 0,      # refusals are the point of many tests: no delay,
    ("auth", "lockout_failures"): 0,      # and no lockout of alice after 20 of them
}


def adapt_config(config_path: Path, config: dict[str, dict]) -> dict[str, dict]:
    """Run `check-config`; drop OPTIONAL_KEYS that this build reports as unknown, rewrite."""
    res = h.run([str(h.proxy_bin()), "check-config", str(config_path)], timeout=60)
    out = res.stdout + res.stderr
    changed = False
    for (sec, key) in OPTIONAL_KEYS:
        if sec in config and key in config[sec] and (
                re.search(rf"\b{sec}\.{key}: unknown key", out)
                or re.search(rf": {sec}: unknown section", out)):
            del config[sec][key]
            if not config[sec]:
                del config[sec]
            changed = True
    if changed:
        config_path.write_text(h.render_toml(config))
    return config


class TenancyProxy:
    def __init__(self, workdir: Path, config: dict[str, dict], map_text: str):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.host = config["server"]["listen_host"]
        self.port = config["server"]["listen_port"]
        self.config_path = self.dir / "proxy.conf"
        self.map_path = self.dir / config["tenancy"]["map_file"]
        self.config_path.write_text(h.render_toml(config))
        self.write_map(map_text)
        if h.proxy_bin().exists():
            self.config = adapt_config(self.config_path, config)
        self.stderr_path = self.dir / "proxy.stderr"
        self.stdout_path = self.dir / "proxy.stdout"
        self.proc: subprocess.Popen | None = None
        self._out = self._err = None

    # -- files -----------------------------------------------------------------------------
    def write_map(self, text: str):
        """Atomic replace, so a file watcher never sees a half-written map."""
        tmp = self.map_path.with_name(self.map_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.map_path)

    # -- process ---------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> "TenancyProxy":
        binary = h.proxy_bin()
        if not binary.exists():
            raise FileNotFoundError(f"tenant-proxy binary not found at {binary} "
                                    "(build it or set TENANT_PROXY_BIN)")
        self._out = open(self.stdout_path, "ab")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([str(binary), "--config", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     cwd=self.dir, start_new_session=True)
        deadline_hit = False
        try:
            h.wait_until(lambda: self._ready(), timeout, "tenant-proxy to listen")
        except AssertionError:
            deadline_hit = True
        if deadline_hit or not self.alive():
            rc = self.proc.poll()
            self.terminate()
            raise AssertionError(f"tenant-proxy did not start (exit {rc}); stderr:\n{self.stderr()}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            return True   # stop polling; start() reports the exit
        return h.port_accepts(self.host, self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sighup(self):
        os.kill(self.pid, signal.SIGHUP)

    def terminate(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        rc = h.kill_process_group(self.proc, term_timeout=1)
        for f in (self._out, self._err):
            if f:
                f.close()
        self._out = self._err = None
        return rc

    def stderr(self, tail: int = 80) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines(True)
        except OSError:
            return ""
        return "".join(lines[-tail:])

    def stderr_offset(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except OSError:
            return 0

    def stderr_since(self, offset: int) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- subcommands -----------------------------------------------------------------------
    def run_subcommand(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return h.run([str(h.proxy_bin()), *args], cwd=self.dir, timeout=timeout)


# --------------------------------------------------------------------------------------------
# clients


def connect(proxy: TenancyProxy, user: str, *, dbname: str = APP_DB, options: str | None = None,
            password: str | None = None, autocommit: bool = True, **kw):
    import psycopg
    params = dict(host=proxy.host, port=proxy.port, user=user,
                  password=password if password is not None else password_of(user),
                  dbname=dbname, sslmode="disable", connect_timeout=10, autocommit=autocommit)
    if options:
        params["options"] = options
    params.update(kw)
    return psycopg.connect(**params)


def tenant_option(identifier: str, setting: str = "nile.tenant_id") -> str:
    return f"-c {setting}={identifier}"


def connect_error(proxy: TenancyProxy, user: str, *, dbname: str = APP_DB,
                  options: str | None = None, password: str | None = None) -> dict[str, str]:
    """Startup with the raw client; returns the ErrorResponse fields. AssertionError if the
    connection is accepted."""
    extra = {"options": options} if options else None
    with h.RawConn(proxy.host, proxy.port) as raw:
        try:
            raw.startup(user, password if password is not None else password_of(user), dbname,
                        extra)
        except h.PGError as e:
            return e.fields
        raw.terminate()
    raise AssertionError(f"connection as {user!r} db={dbname!r} options={options!r} was accepted")


def try_connect(proxy: TenancyProxy, user: str, **kw) -> dict[str, str] | None:
    """None when the connection is accepted, else the ErrorResponse fields."""
    try:
        return connect_error(proxy, user, **kw)
    except AssertionError:
        return None


def session_state(conn) -> dict:
    """What a session sees: its tenant setting, user setting, role and todos."""
    tid, uid, role = conn.execute(
        "SELECT current_setting('nile.tenant_id', true), current_setting('nile.user_id', true), "
        "current_user").fetchone()
    rows = conn.execute("SELECT id::text, tenant_id::text FROM todos").fetchall()
    return {"tenant_id": tid, "user_id": uid, "role": role,
            "todo_ids": {r[0] for r in rows}, "todo_tenants": {r[1] for r in rows},
            "count": len(rows)}


def psql(proxy: TenancyProxy, user: str, commands: list[str], *, dbname: str = APP_DB,
         pgoptions: str | None = None, password: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    """psql -X -At -v VERBOSITY=verbose -c ... -c ... (each -c is one simple Query message);
    errors print as `ERROR:  <sqlstate>: <message>`. Options go through PGOPTIONS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGHOST": proxy.host, "PGPORT": str(proxy.port), "PGUSER": user,
                "PGDATABASE": dbname, "PGPASSWORD": password if password is not None
                else password_of(user), "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10",
                "PGPASSFILE": "/dev/null", "LC_ALL": "C.UTF-8"})
    if pgoptions:
        env["PGOPTIONS"] = pgoptions
    cmd = [h.client_bin("psql"), "-X", "-w", "-At", "-v", "VERBOSITY=verbose"]
    for c in commands:
        cmd += ["-c", c]
    return h.run(cmd, env=env, timeout=timeout)


def new_uuid() -> str:
    return str(uuid.uuid4())


def sqlstate_of(exc: BaseException) -> str | None:
    s = getattr(exc, "sqlstate", None)
    if s:
        return s
    diag = getattr(exc, "diag", None)
    return getattr(diag, "sqlstate", None) if diag is not None else None


RELOADED_RE = re.compile(r"tenant map reloaded", re.I)
