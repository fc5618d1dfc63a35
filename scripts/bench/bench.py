#!/usr/bin/env python3
"""tenant-proxy benchmark: direct PostgreSQL, PgBouncer and tenant-proxy side by side, one run.

Started by scripts/bench.sh (which builds the release binary and passes its path). Starts a
throwaway PostgreSQL, PgBouncer (Debian's package) and tenant-proxy twice (session mode and
transaction mode), runs pgbench against each, measures idle memory per client connection, and
prints one markdown table (also written to BENCH_OUT). Everything it starts is stopped on exit,
including Ctrl-C and SIGTERM. Settings come from environment variables (see scripts/bench.sh).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import math
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SQL_DIR = REPO / "deploy" / "sql"

PROXY_ROLE, PROXY_PW = "tenant_proxy", "bench-proxy-secret"
OWNER_ROLE, OWNER_PW = "app_owner", "bench-owner-secret"
BENCH_USER, BENCH_USER_PW = "bench", "bench-client-secret"
DB = "bench"


# --------------------------------------------------------------------------------------------
# settings

def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name: str, default: float) -> float:
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


def env_list(name: str, default: list[str], allowed: list[str] | None = None) -> list[str]:
    """A comma-separated setting; `none` stands for an empty list. With `allowed`, any other
    value stops the script before it starts anything."""
    v = os.environ.get(name, "").strip()
    values = [x.strip() for x in v.split(",") if x.strip()] if v else default
    if values == ["none"]:
        return []
    if allowed is not None:
        unknown = [x for x in values if x not in allowed]
        if unknown:
            sys.exit(f"{name}: unknown {', '.join(unknown)} (one or more of {', '.join(allowed)}, or none)")
    return values


QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
SECONDS = env_int("BENCH_SECONDS", 3 if QUICK else 10)
CLIENTS = [int(x) for x in env_list("BENCH_CLIENTS", ["1", "20"] if QUICK else ["1", "20", "100"])]
PROTOCOLS = env_list("BENCH_PROTOCOLS", ["simple", "extended", "prepared"],
                     allowed=["simple", "extended", "prepared"])
SCRIPTS = env_list("BENCH_SCRIPTS", ["select-only", "tpcb-like"], allowed=["select-only", "tpcb-like"])
TENANTS = env_int("BENCH_TENANTS", 10)
SCALE = env_int("BENCH_SCALE", 10)
RLS_ROWS = env_int("BENCH_RLS_ROWS", 100_000)          # rows per tenant in the RLS table
IDLE = env_int("BENCH_IDLE", 1000)
POOL_SIZE = env_int("BENCH_POOL_SIZE", 20)
SAMPLING = env_float("BENCH_SAMPLING", 0.2)           # share of transactions logged (for p99)
CONNECT_CLIENTS = env_int("BENCH_CONNECT_CLIENTS", 20)   # 0: no -C row
RLS_CELLS = os.environ.get("BENCH_RLS", "1") != "0"      # 0: no rls-select rows
WARMUP = env_int("BENCH_WARMUP_SECONDS", 2 if QUICK else 5)
TARGET_FILTER = env_list("BENCH_TARGETS", [])          # e.g. pgbouncer,proxy-tx
OUT = Path(os.environ.get("BENCH_OUT") or (REPO / ".build-bench" / "bench-results.md"))
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")
# BENCH_PROFILE=proxy-tx,pgbouncer: perf record each cell of those targets (implies BENCH_KEEP).
PROFILE = [t for t in os.environ.get("BENCH_PROFILE", "").split(",") if t]
# BENCH_PERF_STAT=1: with BENCH_PROFILE, measure CPU time (perf stat task-clock) instead of
# sampling; the log then shows each profiled cell's CPU microseconds per transaction, and its
# page faults, context switches and CPU migrations per transaction.
PERF_STAT = os.environ.get("BENCH_PERF_STAT", "") not in ("", "0")
# BENCH_SYSCALLS=1: with BENCH_PROFILE, count system calls instead (strace -c -f); the log then
# shows each profiled cell's system calls per transaction, by call. strace slows the target
# several times over: the counts are what this is for, not the TPS.
SYSCALLS = os.environ.get("BENCH_SYSCALLS", "") not in ("", "0")
KEEP = KEEP or bool(PROFILE)
# BENCH_CALLGRIND=N: run tenant-proxy (transaction mode) under valgrind --tool=callgrind and give
# each of its cells N transactions per client (pgbench -t) instead of -T: the table then gets the
# proxy's user-space instructions per transaction (deterministic, unlike times on a shared
# machine). Other targets run as usual. Slow: use with BENCH_TARGETS=proxy-tx and few cells.
CALLGRIND = env_int("BENCH_CALLGRIND", 0)
# BENCH_ROUNDS=N: every cell runs N times, its targets taking turns (round 1: each target once,
# then round 2, ...), so a ratio compares runs a few seconds apart. The main table shows, per
# target, the round with the median TPS; a second table lists each round's ratio to PgBouncer
# (same round) and their median. On a shared VM single cells swing by ±10%: use this to judge
# a target, not one run.
ROUNDS = max(1, env_int("BENCH_ROUNDS", 1))
PROXY_THREADS = env_int("BENCH_PROXY_THREADS", 0)   # tenant-proxy event_loop_threads (0 = one per core)
# BENCH_UPSTREAM_SOCKET=1: both poolers reach PostgreSQL through its Unix-domain socket (as when
# they run on the database host) instead of TCP on 127.0.0.1.
UPSTREAM_SOCKET = os.environ.get("BENCH_UPSTREAM_SOCKET", "") not in ("", "0")
RUN_PGBENCH = os.environ.get("BENCH_PGBENCH", "1") != "0"   # 0: idle memory only
PROXY_BIN = Path(os.environ.get("TENANT_PROXY_BIN", REPO / ".build-bench" / "release" / "tenant-proxy"))


def log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# process bookkeeping: every process we start is recorded (pid file read by bench.sh's trap too)

class Procs:
    def __init__(self, workdir: Path):
        self.pidfile = workdir / "pids"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.cleanups: list[Callable[[], None]] = []

    def _write(self):
        # The postmaster is not listed: bench.sh stops it from its own postmaster.pid (SIGQUIT).
        pids = [p.pid for _, p in self.procs if p.poll() is None]
        self.pidfile.write_text("".join(f"{pid}\n" for pid in pids))

    def add(self, name: str, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append((name, proc))
        self._write()
        return proc

    def forget(self, proc: subprocess.Popen):
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        self._write()

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.forget(proc)

    def stop_all(self):
        """Children first (pgbench, idle clients, proxies, PgBouncer), then PostgreSQL."""
        for _, p in list(reversed(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(p, timeout=5)
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()
        self._write()


def pg_user():
    return pwd.getpwnam("postgres")


def as_postgres_kwargs() -> dict:
    """Popen arguments that run a command as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return {}
    pw = pg_user()
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": {**clean_env(), "HOME": pw.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}}


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"})
    env.update(extra)
    return env


def chown_pg(path: Path):
    if os.geteuid() == 0:
        pw = pg_user()
        os.chown(path, pw.pw_uid, pw.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: port {port} not accepting after {timeout}s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of a process (all its threads), plus that of its waited-for children."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])          # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])     # cutime, cstime
    return ticks / CLK_TCK


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of a process (all its threads), apart."""
    fields = stat_fields(pid)
    return (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK) if fields else (0.0, 0.0)


def schedstat(pid: int) -> tuple[int, int] | None:
    """A process's scheduler accounting summed over its threads (/proc/PID/task/*/schedstat, whose
    fields are ns on a CPU, ns runnable but waiting for one, times scheduled in): the last two."""
    waited = runs = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                _, wait_ns, slices = (task / "schedstat").read_text().split()[:3]
                waited += int(wait_ns)
                runs += int(slices)
    except OSError:
        return None
    return (waited, runs) if runs else None


def postmaster_children(postmaster: int):
    """(/proc entry, stat fields) of each live child of the postmaster."""
    for entry in Path("/proc").glob("[0-9]*"):
        fields = stat_fields(entry.name)
        if fields is not None and int(fields[1]) == postmaster:   # ppid
            yield entry, fields


def postgres_cpu_seconds(postmaster: int) -> float:
    """The whole cluster: postmaster, every live child, and the children that have exited."""
    total = cpu_seconds(postmaster, children=True)
    for _, fields in postmaster_children(postmaster):
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def backend_runtimes(postmaster: int) -> dict[int, int]:
    """Each live child of the postmaster: nanoseconds on a CPU so far (/proc/PID/schedstat)."""
    times = {}
    for entry, _ in postmaster_children(postmaster):
        try:
            times[int(entry.name)] = int((entry / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return times


def busiest_processes(before: dict[int, int], after: dict[int, int], share: float = 0.9) -> int:
    """How many processes ran `share` of the CPU time gained between two backend_runtimes."""
    gains = sorted((ns - before.get(pid, 0) for pid, ns in after.items()), reverse=True)
    total, done, count = sum(gains), 0, 0
    for gain in gains:
        if done >= share * total:
            break
        done += gain
        count += 1
    return count


def pg_bin() -> Path:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    cands = [Path("/usr/lib/postgresql/15/bin")] + sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                                          reverse=True)
    for c in cands:
        if (c / "initdb").exists():
            return c
    raise RuntimeError("PostgreSQL server binaries not found (set PG_BIN)")


def run(cmd: list[str], *, check: bool = True, timeout: float = 600, postgres: bool = False,
        env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    kw = as_postgres_kwargs() if postgres else {}
    if env is not None:
        kw["env"] = {**kw.get("env", clean_env()), **env}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                         cwd="/", **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


# --------------------------------------------------------------------------------------------
# PostgreSQL

class Postgres:
    def __init__(self, work: Path, procs: Procs, max_connections: int):
        self.bin = pg_bin()
        self.dir = work / "pg"
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.port = free_port()
        self.procs = procs
        self.max_connections = max_connections
        self.started = False

    def psql(self, sql: str | None = None, *, db: str = DB, file: Path | None = None,
             vars: dict | None = None, user: str = "postgres") -> str:
        cmd = [str(self.bin / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
               "-h", str(self.sock), "-p", str(self.port), "-U", user, "-d", db]
        for k, v in (vars or {}).items():
            cmd += ["-v", f"{k}={v}"]
        cmd += ["-f", str(file)] if file else ["-c", sql]
        return run(cmd, env=clean_env()).stdout.strip()

    def sessions(self) -> int | None:
        """Sessions PostgreSQL has opened (pg_stat_database.sessions, all databases), this
        query's own included."""
        try:
            return int(self.psql("SELECT sum(sessions) FROM pg_stat_database") or 0)
        except (subprocess.CalledProcessError, ValueError):
            return None

    def start(self):
        self.dir.mkdir(parents=True)
        self.sock.mkdir()
        for p in (self.dir, self.sock):
            chown_pg(p)
        run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            postgres=True)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"""
# tenant-proxy benchmark: durability off, this measures the proxies, not the disk
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sock}'
password_encryption = 'scram-sha-256'
max_connections = {self.max_connections}
shared_buffers = 512MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
checkpoint_timeout = 30min
logging_collector = off
log_min_messages = warning
""")
        run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "postgres.log"),
             "-w", "-t", "120", "start"], postgres=True)
        self.started = True
        self.postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        self.procs.cleanups.append(self.stop)
        wait_port(self.port, 60, what="postgres")

    def stop(self):
        if self.started:
            run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                 "stop"], postgres=True, check=False, timeout=90)
            self.started = False


# --------------------------------------------------------------------------------------------
# tenants

def tenant_names() -> list[str]:
    return [f"t{i:02d}" for i in range(1, TENANTS + 1)]


def tenant_uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012x}"


def setup_database(pg: Postgres):
    bin_ = pg.bin
    pg.psql(f"create database {DB}", db="postgres")
    log(f"pgbench -i -s {SCALE}")
    run([str(bin_ / "pgbench"), "-i", "-q", "-s", str(SCALE), "-h", str(pg.sock), "-p",
         str(pg.port), "-U", "postgres", DB], env=clean_env(), timeout=1800)
    log("deploy/sql 01..04 (schema, tenant context, RLS, roles)")
    for name in ("01_nile_schema.sql", "02_tenant_context.sql", "03_rls.sql", "04_roles.sql"):
        pg.psql(file=SQL_DIR / name, vars={"proxy_password": PROXY_PW, "owner_password": OWNER_PW})
    values = ",".join(f"('{tenant_uuid(i)}', 't{i:02d}')" for i in range(1, TENANTS + 1))
    log(f"{TENANTS} tenants; RLS table bench_rls_accounts ({RLS_ROWS} rows per tenant)")
    # Created by the owner role after 03_rls.sql: the event trigger isolates it (tenant_id column).
    pg.psql(f"""
insert into public.tenants (id, name) values {values} on conflict do nothing;
set role {OWNER_ROLE};
create table bench_rls_accounts (
    tenant_id uuid not null references public.tenants (id),
    aid       integer not null,
    abalance  integer not null default 0,
    filler    char(84),
    primary key (tenant_id, aid));
insert into bench_rls_accounts (tenant_id, aid)
    select t.id, g from public.tenants t, generate_series(1, {RLS_ROWS}) g
     where t.name ~ '^t[0-9]+$';
reset role;
""")
    pg.psql("vacuum analyze bench_rls_accounts, pgbench_accounts, pgbench_branches, pgbench_tellers")
    forced = pg.psql("select relrowsecurity and relforcerowsecurity from pg_class "
                     "where oid = 'bench_rls_accounts'::regclass")
    if forced != "t":
        raise RuntimeError("bench_rls_accounts did not get RLS from the event trigger")


def reset_tpcb(pg: Postgres):
    pg.psql("truncate pgbench_history")
    pg.psql("vacuum pgbench_branches, pgbench_tellers")


# --------------------------------------------------------------------------------------------
# PgBouncer

class PgBouncer:
    def __init__(self, work: Path, procs: Procs, pg: Postgres, max_clients: int, session_pool: int):
        self.dir = work / "pgbouncer"
        self.port = free_port()
        self.procs = procs
        self.pg = pg
        self.max_clients = max_clients
        self.session_pool = session_pool
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def start(self):
        self.dir.mkdir()
        chown_pg(self.dir)
        # The proxy role's SCRAM verifier, as stored by Postgres: PgBouncer authenticates clients
        # with it (no PBKDF2 per log-in) and passes the client's SCRAM keys on to the server.
        verifier = self.pg.psql(f"select rolpassword from pg_authid where rolname = '{PROXY_ROLE}'",
                                db="postgres")
        (self.dir / "userlist.txt").write_text(f'"{PROXY_ROLE}" "{verifier}"\n')
        host = self.pg.sock if UPSTREAM_SOCKET else "127.0.0.1"
        base = f"host={host} port={self.pg.port} dbname={DB}"
        dbs = [f"bench_tx = {base} pool_mode=transaction pool_size={POOL_SIZE}",
               f"bench_session = {base} pool_mode=session pool_size={self.session_pool}"]
        per_tenant = max(1, POOL_SIZE // TENANTS)
        for i, t in enumerate(tenant_names(), 1):
            dbs.append(f"bench_rls_{t} = {base} pool_mode=transaction pool_size={per_tenant} "
                       f"connect_query='SET nile.tenant_id = \"{tenant_uuid(i)}\"'")
        (self.dir / "pgbouncer.ini").write_text(f"""[databases]
{chr(10).join(dbs)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.dir / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = {self.max_clients}
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
server_idle_timeout = 600
query_wait_timeout = 60
""")
        for f in ("userlist.txt", "pgbouncer.ini"):
            chown_pg(self.dir / f)
        kw = as_postgres_kwargs()
        self.proc = self.procs.add("pgbouncer", subprocess.Popen(
            ["pgbouncer", str(self.dir / "pgbouncer.ini")], stdout=open(self.dir / "stdout", "w"),
            stderr=subprocess.STDOUT, start_new_session=True, cwd="/", **kw))
        wait_port(self.port, 30, self.proc, "pgbouncer")
        self.pid = self.proc.pid


# --------------------------------------------------------------------------------------------
# tenant-proxy

def hash_password(pw: str) -> str:
    return run([str(PROXY_BIN), "hash-password", "--password", pw]).stdout.strip()


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class TenantProxy:
    def __init__(self, work: Path, procs: Procs, pg: Postgres | None, name: str, mode: str,
                 map_text: str, max_clients: int):
        self.dir = work / name
        self.name = name
        self.mode = mode
        self.port = free_port()
        # /metrics: tenant_proxy_context_switches_total, read before and after each cell.
        self.metrics_port = free_port()
        self.procs, self.pg = procs, pg
        self.map_text = map_text
        self.max_clients = max_clients
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def config_text(self) -> str:
        pool = ""
        if self.mode == "transaction":
            pool = f"""
[pool]
mode = "transaction"
size = {POOL_SIZE}
max_client_wait_seconds = 30
idle_timeout_seconds = 300
"""
        return f"""[server]
listen_host = "127.0.0.1"
listen_port = {self.port}
max_client_connections = {self.max_clients}
shutdown_timeout_seconds = 2
event_loop_threads = {PROXY_THREADS}

[auth]
trust_loopback = false
lockout_failures = 0

[tls]
require = false

[tenancy]
map_file = "tenants.toml"
lookup_upstream = false

[upstream]
host = {toml_str(str(self.pg.sock) if self.pg and UPSTREAM_SOCKET else "127.0.0.1")}
port = {self.pg.port if self.pg else 5432}
user = {toml_str(PROXY_ROLE)}
password = {toml_str(PROXY_PW)}
database = ""
{pool}
[metrics]
listen_host = "127.0.0.1"
listen_port = {self.metrics_port}

[log]
level = "warning"
"""

    def write(self) -> Path:
        self.dir.mkdir(exist_ok=True)
        (self.dir / "tenants.toml").write_text(self.map_text)
        path = self.dir / "proxy.conf"
        path.write_text(self.config_text())
        return path

    def check(self) -> tuple[bool, str]:
        res = run([str(PROXY_BIN), "check-config", str(self.write())], check=False)
        return res.returncode == 0, (res.stdout + res.stderr).strip()

    @property
    def under_callgrind(self) -> bool:
        return CALLGRIND > 0 and self.mode == "transaction"

    def start(self):
        conf = self.write()
        command = [str(PROXY_BIN), "run", "--config", str(conf)]
        if self.under_callgrind:
            # valgrind cannot read the DWARF of Swift 6 binaries: a copy without it (symbols stay).
            stripped = self.dir / "tenant-proxy-stripped"
            shutil.copy(PROXY_BIN, stripped)
            run(["strip", "-g", str(stripped)])
            command = ["valgrind", "--tool=callgrind", "--dump-instr=no",
                       f"--callgrind-out-file={self.dir}/callgrind.out.%p", str(stripped)] + command[1:]
        self.proc = self.procs.add(self.name, subprocess.Popen(
            command, stdout=open(self.dir / "stdout", "w"),
            stderr=open(self.dir / "stderr", "w"), start_new_session=True, cwd=str(self.dir),
            env=clean_env()))
        wait_port(self.port, 120 if self.under_callgrind else 30, self.proc, self.name)
        self.pid = self.proc.pid

    def callgrind_instructions(self, label: str) -> int | None:
        """Dumps the counts since the last zeroing; returns their total (Ir)."""
        before = set(self.dir.glob("callgrind.out.*"))
        run(["callgrind_control", "-d", label, str(self.pid)], check=False)
        fresh = sorted(set(self.dir.glob("callgrind.out.*")) - before, key=lambda f: f.stat().st_mtime)
        for line in (fresh[-1].read_text().splitlines() if fresh else []):
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
        return None


def tenant_map(verifier: str) -> str:
    out = []
    for i, t in enumerate(tenant_names(), 1):
        out.append(f'[tenants.{t}]\nid = "{tenant_uuid(i)}"\nstatus = "active"\nisolation = "rls"\n')
    tl = ", ".join(f'"{t}"' for t in tenant_names())
    out.append(f'[users.{BENCH_USER}]\npassword = {toml_str(verifier)}\nmode = "pinned"\n'
               f"tenants = [{tl}]\n")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# targets and pgbench cells

@dataclass
class Target:
    key: str               # direct | pgbouncer | proxy-session | proxy-tx
    label: str
    port: int
    user: Callable[[int], str]       # process index -> user name
    password: str
    dbname: Callable[[int, str, str], str]   # (process index, protocol, script) -> database
    options: Callable[[int, str], str | None] = lambda i, s: None   # PGOPTIONS
    label_for: Callable[[str, str], str] | None = None              # (protocol, script) -> label
    pid: int | None = None                                           # the pooler: CPU, schedstat, BENCH_PROFILE
    metrics_port: int | None = None                                  # tenant-proxy's /metrics

    def row_label(self, protocol: str, script: str) -> str:
        return self.label_for(protocol, script) if self.label_for else self.label


@dataclass
class Cell:
    target: str
    script: str
    protocol: str
    clients: int
    connect: bool = False
    tps: float | None = None
    avg_ms: float | None = None
    p99_ms: float | None = None
    processed: int = 0
    error: str | None = None
    label: str = ""
    group: tuple = ()
    note: str = ""
    instructions: float | None = None   # BENCH_CALLGRIND: the proxy's per transaction
    cpu_us: tuple | None = None         # CPU µs per transaction: (pooler, postgres, pgbench)
    switches_pct: float | None = None   # tenant-proxy: context switches per 100 transactions
    sched: tuple | None = None          # pooler: (times scheduled in, µs waiting for a CPU) per transaction
    backends: int | None = None         # PostgreSQL processes that ran 90% of its CPU in the cell
    sessions: float | None = None       # PostgreSQL sessions opened per 1000 transactions


SCRIPT_ARGS = {"select-only": ["-b", "select-only"], "tpcb-like": ["-b", "tpcb-like"]}
TPS_RE = re.compile(r"^tps = ([0-9.]+)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
PROC_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
FAIL_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)


def layout(clients: int) -> list[int]:
    """Clients per pgbench process: one process per tenant (at most TENANTS), clients spread."""
    k = max(1, min(TENANTS, clients))
    return [clients // k + (1 if i < clients % k else 0) for i in range(k)]


def percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))   # nearest rank
    return float(sorted_vals[idx])


def context_switches(metrics_port: int) -> float | None:
    """tenant_proxy_context_switches_total from the proxy's /metrics (None if unreadable)."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(r"^tenant_proxy_context_switches_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def log_syscalls(key: str, data: Path, processed: int) -> None:
    """Logs strace -c's summary in data as system calls per transaction, by call."""
    counts = []
    for line in data.read_text().splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            counts.append((int(parts[3]), parts[-1]))
    total = sum(n for n, _ in counts)
    detail = ", ".join(f"{name} {n / processed:.2f}" for n, name in sorted(counts, reverse=True)
                       if n / processed >= 0.01)
    log(f"syscalls {key}: {total / processed:.2f} per transaction ({detail})")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cell(work: Path, target: Target, script: str, protocol: str, clients: int,
             connect: bool, rls_script: Path, procs: Procs, callgrind: "TenantProxy | None" = None,
             pg: "Postgres | None" = None) -> Cell:
    pg_postmaster = pg.postmaster if pg else None
    cell = Cell(target.key, script, protocol, clients, connect,
                label=target.row_label(protocol, script))
    logdir = Path(tempfile.mkdtemp(prefix="log-", dir=work))
    per = layout(clients)
    pgbench = str(pg_bin() / "pgbench")
    running = []
    profiler = None
    if PROFILE and target.key in PROFILE and target.pid:
        # perf samples the target's process for the whole cell; the data stays in the work dir.
        data = work / f"perf-{target.key}-{script}-{protocol}-{clients}{'-C' if connect else ''}.data"
        if SYSCALLS:
            command = ["strace", "-c", "-f", "-p", str(target.pid), "-o", str(data)]
        elif PERF_STAT:
            command = ["perf", "stat", "-x", ",", "-e", "task-clock,page-faults,context-switches,cpu-migrations",
                       "-p", str(target.pid), "-o", str(data)]
        else:
            command = ["perf", "record", "-F", "999", "-g", "-p", str(target.pid), "-o", str(data)]
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"profiling {target.key} into {data}")
    # Read before callgrind's counters are zeroed and after they are dumped: a scrape is not the
    # cell's work.
    switches_before = context_switches(target.metrics_port) if target.metrics_port else None
    sessions_before = pg.sessions() if pg else None
    if callgrind:
        run(["callgrind_control", "-z", str(callgrind.pid)], check=False)
    # CPU time of each party over the cell, from /proc: the pooler's process, the cluster, and
    # pgbench (its processes are waited for below, so they count as this process's children).
    def cpu_now() -> tuple[float, float, float]:
        return (cpu_seconds(target.pid) if target.pid else 0.0,
                postgres_cpu_seconds(pg_postmaster) if pg_postmaster else 0.0,
                children_cpu_seconds())
    cpu_before = cpu_now()
    # Direct connections' backends end with their clients, and so do those of tenant-proxy in
    # session mode: only a pool's are still there to be counted.
    count_backends = bool(pg_postmaster) and not callgrind and target.key not in ("direct", "proxy-session")
    backends_before = backend_runtimes(pg_postmaster) if count_backends else {}
    split_before = user_system_seconds(target.pid) if PERF_STAT and target.pid else None
    sched_before = schedstat(target.pid) if target.pid else None
    for i, c in enumerate(per):
        length = ["-t", str(CALLGRIND)] if callgrind else ["-T", str(SECONDS)]
        args = [pgbench, "-n", *length, "-c", str(c),
                "-j", str(min(2, c) if len(per) == 1 else 1), "-M", protocol,
                "-l", f"--log-prefix={logdir}/p{i}", f"--sampling-rate={SAMPLING}"]
        args += ["-f", str(rls_script)] if script == "rls-select" else SCRIPT_ARGS[script]
        if connect:
            args.append("-C")
        env = clean_env(PGHOST="127.0.0.1", PGPORT=str(target.port), PGUSER=target.user(i),
                        PGPASSWORD=target.password, PGDATABASE=target.dbname(i, protocol, script),
                        PGSSLMODE="disable", PGCONNECT_TIMEOUT="30")
        opts = target.options(i, script)
        if opts:
            env["PGOPTIONS"] = opts
        out = open(logdir / f"out{i}", "w+")
        p = procs.add(f"pgbench{i}", subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                                      env=env, cwd=str(logdir),
                                                      start_new_session=True))
        running.append((p, out))
    tps, lat_sum, processed, failed, errors = 0.0, 0.0, 0, 0, []
    deadline = time.monotonic() + (3600 if callgrind else SECONDS + 120)
    for p, out in running:
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs.stop(p, sig=signal.SIGINT)
            errors.append("timed out")
        procs.forget(p)
        out.seek(0)
        text = out.read()
        out.close()
        m_tps, m_lat, m_proc, m_fail = (r.search(text) for r in (TPS_RE, LAT_RE, PROC_RE, FAIL_RE))
        if p.returncode != 0 or not (m_tps and m_proc):
            all_lines = text.strip().splitlines()
            bad = [ln for ln in all_lines if re.search(r"error|fatal|abort|could not", ln, re.I)]
            errors.append(bad[0] if bad else (all_lines[-1] if all_lines
                                              else f"pgbench exited {p.returncode}"))
            continue
        n = int(m_proc.group(1))
        tps += float(m_tps.group(1))
        processed += n
        if m_lat:
            lat_sum += float(m_lat.group(1)) * n
        if m_fail:
            failed += int(m_fail.group(1))
    if processed and backends_before:
        cell.backends = busiest_processes(backends_before, backend_runtimes(pg_postmaster))
    if processed and not callgrind:
        cell.cpu_us = tuple((a - b) * 1e6 / processed for a, b in zip(cpu_now(), cpu_before))
        sched_after = schedstat(target.pid) if sched_before else None
        if sched_after:
            cell.sched = ((sched_after[1] - sched_before[1]) / processed,
                          (sched_after[0] - sched_before[0]) / 1000 / processed)
    if profiler:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()
        if SYSCALLS and processed:
            log_syscalls(target.key, data, processed)
        elif PERF_STAT and processed:
            events = []
            for line in data.read_text().splitlines():
                parts = line.split(",")
                if len(parts) <= 2:
                    continue
                with contextlib.suppress(ValueError):
                    if parts[2].startswith("task-clock"):
                        log(f"perf stat {target.key}: {float(parts[0]) * 1000 / processed:.2f} CPU µs per transaction")
                    else:
                        events.append(f"{parts[2]} {float(parts[0]) / processed:.2f}")
            if events:
                log(f"perf stat {target.key} per transaction: {', '.join(events)}")
            if split_before:
                user, system = (a - b for a, b in zip(user_system_seconds(target.pid), split_before))
                log(f"{target.key}: user {user * 1e6 / processed:.2f} µs, system {system * 1e6 / processed:.2f} µs per transaction")
    if callgrind and processed:
        total = callgrind.callgrind_instructions(f"{script}-{protocol}-{clients}{'-C' if connect else ''}")
        if total:
            cell.instructions = total / processed
            log(f"callgrind {target.key}: {cell.instructions:,.0f} instructions per transaction")
    if processed and sessions_before is not None:
        sessions_after = pg.sessions()
        if sessions_after is not None:
            # Less the session of the first count's own query. Backends report their start to the
            # statistics within about a second, so a count can lag by that much of a cell.
            cell.sessions = (sessions_after - sessions_before - 1) * 1000 / processed
    if processed and switches_before is not None:
        switches_after = context_switches(target.metrics_port)
        if switches_after is not None:
            cell.switches_pct = (switches_after - switches_before) * 100 / processed
    if errors:
        cell.error = errors[0].strip()[:160]
    elif failed:
        cell.error = f"{failed} failed transactions"
    else:
        cell.tps = tps
        cell.processed = processed
        cell.avg_ms = lat_sum / processed if processed else None
        lats = []
        for f in glob.glob(f"{logdir}/p*"):
            if "out" in Path(f).name:
                continue
            with open(f) as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 3 and parts[2].isdigit():
                        lats.append(int(parts[2]))
        lats.sort()
        if lats:
            cell.p99_ms = percentile(lats, 0.99) / 1000.0
    shutil.rmtree(logdir, ignore_errors=True)
    return cell


# --------------------------------------------------------------------------------------------
# idle memory

def idle_memory(label: str, mode: str, pid: int, port: int, users: list[str], password: str,
                dbname: str, count: int, warm: Callable[[], None], procs: Procs) -> dict:
    warm()
    time.sleep(0.5)
    before = rss_kib(pid)
    p = procs.add("idle-clients", subprocess.Popen(
        [sys.executable, str(HERE / "idle_clients.py"), "--port", str(port), "--user",
         ",".join(users), "--password", password, "--dbname", dbname, "--count", str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=clean_env(), start_new_session=True))
    result = {"label": label, "mode": mode, "count": count, "before": before}
    try:
        line = ""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line or line.startswith("READY"):
                break
        parts = line.split(maxsplit=3)
        if len(parts) < 3 or parts[0] != "READY":
            raise RuntimeError(f"idle client opener failed: {line or p.stdout.read()}")
        ok, failed = int(parts[1]), int(parts[2])
        time.sleep(1.0)
        after = rss_kib(pid)
        result.update(ok=ok, failed=failed, after=after,
                      first_error=parts[3].strip() if len(parts) > 3 else "",
                      per_client=(after - before) / ok if ok else None)
    finally:
        with contextlib.suppress(Exception):
            p.stdin.write("done\n")
            p.stdin.flush()
            p.stdin.close()
        procs.stop(p, timeout=60)
    time.sleep(1.0)
    return result


# --------------------------------------------------------------------------------------------
# report

def fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def versions(pg: Postgres) -> dict:
    def first_line(cmd):
        with contextlib.suppress(Exception):
            return run(cmd, check=False).stdout.strip().splitlines()[0]
        return "?"
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                check=False).stdout.strip()
    cpu = "?"
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"postgres": first_line([str(pg.bin / "postgres"), "--version"]),
            "pgbouncer": first_line(["pgbouncer", "--version"]),
            "pgbench": first_line([str(pg.bin / "pgbench"), "--version"]),
            "commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "cpu": f"{os.cpu_count()} × {cpu}", "kernel": platform.release()}


def median_cell(runs: list[Cell]) -> Cell:
    """The run with the median TPS (the lower middle of an even count); errors sort last."""
    ordered = sorted(runs, key=lambda c: (c.error is not None, c.tps or 0))
    measured = [c for c in ordered if not c.error]
    return measured[(len(measured) - 1) // 2] if measured else ordered[0]


def round_ratios(rounds: dict[tuple, list[dict[str, Cell]]]) -> list[str]:
    """Per cell and target: each round's TPS as a ratio of PgBouncer's in the same round, and
    the median of those ratios (BENCH_ROUNDS)."""
    lines = ["", f"Rounds (BENCH_ROUNDS={ROUNDS}, targets taking turns within each round): TPS as a "
             "ratio of PgBouncer's in the same round, and the median of the rounds' ratios.", "",
             "| target | script | protocol | clients | " + " | ".join(f"round {i + 1}" for i in range(ROUNDS))
             + " | median |", "|---|---|---|---:|" + "---:|" * (ROUNDS + 1)]
    for (script, proto, clients, connect), runs in rounds.items():
        keys = [k for k in runs[0] if k != "pgbouncer"]
        for key in keys:
            ratios = []
            for r in runs:
                mine, ref = r.get(key), r.get("pgbouncer")
                ok = mine and ref and mine.tps and ref.tps and not mine.error and not ref.error
                ratios.append(mine.tps / ref.tps if ok else None)
            measured = [x for x in ratios if x is not None]
            median = statistics.median(measured) if measured else None
            lines.append(f"| {runs[0][key].label} | {script}{' -C' if connect else ''} | {proto} | {clients} | "
                         + " | ".join(fmt(x) if x is not None else "—" for x in ratios)
                         + f" | {fmt(median)} |")
    return lines


def render(cells: list[Cell], memory: list[dict], info: dict, notes: list[str],
           rounds: dict[tuple, list[dict[str, Cell]]]) -> str:
    refs = {}
    for c in cells:
        if c.target == "pgbouncer" and c.tps:
            refs[c.group] = c.tps
    lines = [
        f"### tenant-proxy benchmark, {info['date']}",
        "",
        f"Machine: {info['cpu']}, Linux {info['kernel']}. {info['postgres']}; {info['pgbouncer']}; "
        f"{info['pgbench']}; tenant-proxy {info['commit']} (release build).",
        f"Each cell: pgbench -T {SECONDS} (pgbench -i -s {SCALE}); "
        f"{'quick mode; ' if QUICK else ''}TPS summed over the pgbench processes of the cell"
        + (f"; each cell ran {ROUNDS} times, targets taking turns, and each row is the target's "
           "run with the median TPS." if ROUNDS > 1 else "."),
        "",
        "| target | script | protocol | clients | TPS | avg latency ms | p99 ms | TPS vs PgBouncer "
        "| CPU µs per transaction: pooler · postgres · pgbench |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        ref = refs.get(c.group)
        ratio = f"{c.tps / ref:.2f}" if (c.tps and ref) else "—"
        script = c.script + (" -C (new connection per transaction)" if c.connect else "")
        if c.error:
            lines.append(f"| {c.label} | {script} | {c.protocol} | {c.clients} | error: "
                         f"{c.error.replace('|', '/')} | | | | |")
        else:
            cpu = ("—" if not c.cpu_us else
                   " · ".join("—" if (i == 0 and c.target == "direct") else f"{v:.1f}"
                              for i, v in enumerate(c.cpu_us)))
            lines.append(f"| {c.label} | {script} | {c.protocol} | {c.clients} | {fmt(c.tps, 0)} | "
                         f"{fmt(c.avg_ms, 3)} | {fmt(c.p99_ms, 3)} | {ratio} | {cpu} |")
    def per_cell(caption: str, column: str, value: Callable[[Cell], float | None], digits: str,
                 by_target: bool = False):
        """A small table of one figure per cell (for the cells that have it), with a target
        column when several targets have the figure."""
        rows = [c for c in cells if value(c) is not None and not c.error]
        if not rows:
            return
        target_head, target_rule = ("| target ", "|---") if by_target else ("", "")
        lines.extend(["", caption, "", f"{target_head}| script | protocol | clients | {column} |",
                      f"{target_rule}|---|---|---:|---:|"])
        for c in rows:
            script = c.script + (" -C" if c.connect else "")
            target = f"| {c.label} " if by_target else ""
            lines.append(f"{target}| {script} | {c.protocol} | {c.clients} | {value(c):{digits}} |")

    if rounds:
        lines += round_ratios(rounds)
    per_cell(f"tenant-proxy under callgrind (BENCH_CALLGRIND: pgbench -t {CALLGRIND} per client; its "
             "TPS above is valgrind's, not the proxy's): user-space instructions per transaction, "
             "log-ins of the cell's clients included.",
             "instructions per transaction", lambda c: c.instructions, ",.0f")
    per_cell("tenant-proxy transaction mode, tenant context switches (tenant_proxy_context_switches_total): "
             "transactions whose pooled connection carried another tenant's context, reset and set "
             "again first (two more statements upstream).",
             "switches per 100 transactions", lambda c: c.switches_pct, ".2f")
    per_cell("PostgreSQL sessions opened during each cell, per 1000 transactions "
             "(pg_stat_database.sessions before and after): a pooler that keeps its server "
             "connections opens none; each one opened costs PostgreSQL a backend and a log-in.",
             "sessions per 1000 transactions", lambda c: c.sessions, ".2f", by_target=True)
    per_cell("PostgreSQL processes that ran 90% of the cluster's CPU time in each cell "
             "(/proc/PID/schedstat of the postmaster's children; those that exited during the "
             "cell are left out): how many server connections shared the queries.",
             "processes", lambda c: c.backends, "d", by_target=True)
    rows = [c for c in cells if c.sched and not c.error]   # never set on a callgrind cell
    if rows:
        lines += ["", "Poolers' threads and the scheduler (/proc/PID/task/*/schedstat over each cell): how "
                  "often a thread of the pooler was put on a CPU, and how long its threads were "
                  "runnable but waiting for one, per transaction. Every wait adds to the latency of "
                  "the clients whose bytes that thread holds.", "",
                  "| target | script | protocol | clients | scheduled in per transaction "
                  "| µs waiting for a CPU per transaction | µs per wait |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for c in rows:
            script = c.script + (" -C" if c.connect else "")
            runs, wait = c.sched
            lines.append(f"| {c.label} | {script} | {c.protocol} | {c.clients} | {runs:.2f} | "
                         f"{wait:.1f} | {fmt(wait / runs if runs else None, 1)} |")
    if memory:
        lines += ["", "Idle memory per client connection (authenticated, idle, VmRSS of the process "
                  "before and after opening them):", "",
                  "| target | mode | idle clients | RSS before MiB | RSS after MiB | KiB per client |",
                  "|---|---|---:|---:|---:|---:|"]
        for m in memory:
            if "after" not in m:
                lines.append(f"| {m['label']} | {m['mode']} | {m['count']} | error: "
                             f"{m.get('error', '?')} | | |")
                continue
            opened = f"{m['ok']}" + (f" ({m['failed']} failed: {m['first_error'][:80]})"
                                     if m["failed"] else "")
            lines.append(f"| {m['label']} | {m['mode']} | {opened} | {m['before'] / 1024:.1f} | "
                         f"{m['after'] / 1024:.1f} | {fmt(m['per_client'], 2)} |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# main

def main() -> int:
    work = Path(os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="tp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    procs = Procs(work)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    try:
        return bench(work, procs)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        procs.stop_all()
        if not KEEP:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept work directory {work}")


def bench(work: Path, procs: Procs) -> int:
    started = time.monotonic()
    if not PROXY_BIN.exists():
        raise SystemExit(f"{PROXY_BIN} missing (scripts/bench.sh builds it)")
    if not shutil.which("pgbouncer"):
        raise SystemExit("pgbouncer not found (apt-get install -y pgbouncer)")
    notes: list[str] = []

    verifier = hash_password(BENCH_USER_PW)
    map_text = tenant_map(verifier)
    max_clients = max(IDLE + 1000, max(CLIENTS + [CONNECT_CLIENTS]) * 2 + 100)
    proxy_s = TenantProxy(work, procs, None, "proxy-session", "session", map_text, max_clients)
    proxy_t = TenantProxy(work, procs, None, "proxy-tx", "transaction", map_text, max_clients)

    # Transaction pooling: supported when check-config accepts the [pool] keys.
    tx_ok, tx_msg = proxy_t.check()
    if not tx_ok:
        log(f"tenant-proxy does not accept [pool] mode = \"transaction\": skipping that target\n{tx_msg}")
        notes.append("tenant-proxy transaction mode: skipped, `check-config` refused the [pool] "
                     f"section ({tx_msg.splitlines()[0] if tx_msg else 'no message'}).")

    idle_on_session = not tx_ok
    idle_proxy_count = min(IDLE, 300) if idle_on_session else IDLE
    max_conn = 400 + (idle_proxy_count + 20 if idle_on_session else 0)

    log(f"PostgreSQL (max_connections={max_conn}, fsync=off, synchronous_commit=off)")
    pg = Postgres(work, procs, max_conn)
    pg.start()
    setup_database(pg)
    proxy_s.pg = proxy_t.pg = pg

    session_pool = max(CLIENTS + [CONNECT_CLIENTS]) + 10
    log("PgBouncer")
    bouncer = PgBouncer(work, procs, pg, max(IDLE + 1000, 2000), session_pool)
    bouncer.start()
    log("tenant-proxy, session mode")
    proxy_s.start()
    if tx_ok:
        log("tenant-proxy, transaction mode")
        proxy_t.start()

    bench_users = [f"{BENCH_USER}.{t}" for t in tenant_names()]
    tenants = tenant_names()
    targets = [
        Target("direct", "postgres (direct)", pg.port, lambda i: PROXY_ROLE, PROXY_PW,
               lambda i, proto, s: DB,
               options=lambda i, s: (f"-c nile.tenant_id={tenant_uuid(i % TENANTS + 1)}"
                                     if s == "rls-select" else None)),
        Target("pgbouncer", "pgbouncer (transaction)", bouncer.port, lambda i: PROXY_ROLE, PROXY_PW,
               lambda i, proto, s: (f"bench_rls_{tenants[i % TENANTS]}" if s == "rls-select"
                                    else "bench_session" if proto == "prepared" else "bench_tx"),
               label_for=lambda proto, s: ("pgbouncer (session)¹" if proto == "prepared"
                                           else "pgbouncer (transaction)"), pid=bouncer.pid),
        Target("proxy-session", "tenant-proxy (session)", proxy_s.port,
               lambda i: bench_users[i % TENANTS], BENCH_USER_PW, lambda i, proto, s: DB, pid=proxy_s.pid),
    ]
    if tx_ok:
        targets.append(Target("proxy-tx", "tenant-proxy (transaction)", proxy_t.port,
                              lambda i: bench_users[i % TENANTS], BENCH_USER_PW,
                              lambda i, proto, s: DB, pid=proxy_t.pid, metrics_port=proxy_t.metrics_port))
    if TARGET_FILTER:
        targets = [t for t in targets if t.key in TARGET_FILTER or t.key == "pgbouncer"]

    # Sanity: each path works, and through the proxy a tenant sees only its rows of the RLS table.
    psql = str(pg.bin / "psql")
    for t in targets:
        res = run([psql, "-X", "-At", "-c", "select count(*) from bench_rls_accounts"], check=False,
                  env=clean_env(PGHOST="127.0.0.1", PGPORT=str(t.port), PGUSER=t.user(0),
                                PGPASSWORD=t.password, PGDATABASE=t.dbname(0, "simple", "rls-select"),
                                PGSSLMODE="disable",
                                **({"PGOPTIONS": t.options(0, "rls-select")}
                                   if t.options(0, "rls-select") else {})))
        seen = res.stdout.strip()
        log(f"check {t.key}: tenant t01 sees {seen or res.stderr.strip()} rows of bench_rls_accounts "
            f"({RLS_ROWS} expected)")
        if seen != str(RLS_ROWS):
            raise RuntimeError(f"{t.key}: expected {RLS_ROWS} rows for one tenant, got "
                               f"{seen!r} {res.stderr.strip()}")

    # Idle memory first, on fresh processes (before the load grows their heaps).
    memory = []
    if IDLE > 0:
        def warm(port, user, pw, db):
            return lambda: run([psql, "-X", "-At", "-c", "select 1"], env=clean_env(
                PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=user, PGPASSWORD=pw, PGDATABASE=db,
                PGSSLMODE="disable"))
        log(f"idle memory: {IDLE} clients on PgBouncer")
        memory.append(idle_memory("pgbouncer", "transaction", bouncer.pid, bouncer.port,
                                  [PROXY_ROLE], PROXY_PW, "bench_tx", IDLE,
                                  warm(bouncer.port, PROXY_ROLE, PROXY_PW, "bench_tx"), procs))
        px = proxy_s if idle_on_session else proxy_t
        log(f"idle memory: {idle_proxy_count} clients on tenant-proxy ({px.mode} mode)")
        try:
            memory.append(idle_memory("tenant-proxy", px.mode, px.pid, px.port, bench_users,
                                      BENCH_USER_PW, DB, idle_proxy_count,
                                      warm(px.port, bench_users[0], BENCH_USER_PW, DB), procs))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            memory.append({"label": "tenant-proxy", "mode": px.mode, "count": idle_proxy_count,
                           "error": str(exc)[:120]})
        if idle_on_session:
            notes.append(f"Idle memory of tenant-proxy measured in session mode (transaction mode "
                         f"unsupported): each idle client also holds an upstream connection, so "
                         f"only {idle_proxy_count} clients.")

    # Warm-up: load the tables into shared buffers and the OS cache.
    if RUN_PGBENCH:
        log(f"warm-up {WARMUP}s")
        run([str(pg.bin / "pgbench"), "-n", "-S", "-T", str(WARMUP), "-c", "4", "-j", "2",
             "-h", str(pg.sock), "-p", str(pg.port), "-U", "postgres", DB], env=clean_env(),
            timeout=WARMUP + 120)

    rls_script = work / "rls-select.sql"
    rls_script.write_text(f"\\set aid random(1, {RLS_ROWS})\n"
                          "SELECT abalance FROM bench_rls_accounts WHERE aid = :aid;\n")

    plan: list[tuple[str, str, int, bool]] = []
    for script in SCRIPTS:
        for proto in PROTOCOLS:
            for clients in CLIENTS:
                if QUICK and script == "tpcb-like" and (proto != "simple" or clients == 1):
                    continue
                plan.append((script, proto, clients, False))
    if CONNECT_CLIENTS > 0:
        plan.append(("select-only", "simple", CONNECT_CLIENTS, True))
    rls_protocols = [] if not RLS_CELLS else ["simple"] if QUICK else ["simple", "extended"]
    for proto in rls_protocols:
        plan.append(("rls-select", proto, 20, False))

    if not RUN_PGBENCH:
        plan = []

    cells: list[Cell] = []
    rounds: dict[tuple, list[dict[str, Cell]]] = {}   # per cell group: each round's cell per target
    total = len(plan) * len(targets) * ROUNDS
    n = 0
    for (script, proto, clients, connect), round_no, t in (
            (cell, r, t) for cell in plan for r in range(ROUNDS) for t in targets):
        n += 1
        if script == "tpcb-like":
            reset_tpcb(pg)
        cell = run_cell(work, t, script, proto, clients, connect, rls_script, procs,
                        callgrind=proxy_t if t.key == "proxy-tx" and proxy_t.under_callgrind else None,
                        pg=pg)
        cell.group = (script, proto, clients, connect)
        runs = rounds.setdefault(cell.group, [])
        if round_no == len(runs):
            runs.append({})
        runs[round_no][t.key] = cell
        status = (f"error: {cell.error}" if cell.error else
                  f"{cell.tps:,.0f} tps, avg {fmt(cell.avg_ms, 3)} ms, p99 {fmt(cell.p99_ms, 3)} ms")
        if cell.cpu_us:
            status += " (CPU µs/txn pooler {:.1f}, postgres {:.1f}, pgbench {:.1f})".format(*cell.cpu_us)
        if cell.sched:
            status += " (pooler per txn: scheduled in {:.2f} times, {:.1f} µs waiting for a CPU)".format(*cell.sched)
        log(f"[{n}/{total}] {cell.label:28} {script:11} {proto:8} c={clients:<3}"
            f"{' -C' if connect else '   '}{f' round {round_no + 1}' if ROUNDS > 1 else ''} {status}")
    for runs in rounds.values():
        for t in targets:
            cells.append(median_cell([r[t.key] for r in runs if t.key in r]))

    for p in (proxy_s, proxy_t):
        if p.proc is not None and p.proc.poll() is not None:
            notes.append(f"{p.name} exited during the run (code {p.proc.returncode}).")
    if any(c.error for c in cells) or any("error" in m for m in memory):
        # Help find the cause: the tail of each server's log (console only, not the table).
        for name, f in (("pgbouncer", bouncer.dir / "pgbouncer.log"),
                        ("tenant-proxy session", proxy_s.dir / "stderr"),
                        ("tenant-proxy transaction", proxy_t.dir / "stderr"),
                        ("postgres", pg.dir / "postgres.log")):
            with contextlib.suppress(OSError):
                tail = f.read_text(errors="replace").splitlines()[-15:]
                if tail:
                    log(f"last lines of the {name} log ({f}):\n  " + "\n  ".join(tail))

    notes += [
        "¹ PgBouncer 1.18 (Debian's) does not support prepared statements in transaction mode, so "
        f"its prepared-protocol rows use a session-mode pool (pool_size {session_pool}, one server "
        "connection per client). Every other PgBouncer row is transaction mode.",
        f"Pools: PgBouncer transaction pool_size {POOL_SIZE}; tenant-proxy transaction mode "
        f"[pool] size {POOL_SIZE}; tenant-proxy session mode holds one upstream connection per "
        "client. Both proxies and direct connections log in upstream as the hardened "
        f"`{PROXY_ROLE}` role (deploy/sql/04_roles.sql); clients authenticate with SCRAM-SHA-256 "
        "everywhere (PgBouncer's auth_file holds the role's SCRAM verifier).",
        f"Tenants: each cell runs min(clients, {TENANTS}) pgbench processes in parallel (clients "
        "spread evenly; -j 2 when one process, else -j 1 each), TPS summed, latency averaged "
        f"over all transactions. Through tenant-proxy, process i logs in as `bench.tNN`, so "
        f"{TENANTS} tenants (t01..t{TENANTS:02d}) interleave at 20+ clients and the proxy injects "
        "`SET nile.tenant_id` for each. The same process layout is used for every target.",
        "select-only and tpcb-like use pgbench's tables, which have no tenant_id column (shared "
        "tables, no RLS): these rows measure the proxies. The rls-select rows read "
        f"`bench_rls_accounts` ({TENANTS} tenants × {RLS_ROWS} rows, FORCE ROW LEVEL SECURITY "
        "from deploy/sql's event trigger): direct connections set the tenant with "
        "PGOPTIONS=-c nile.tenant_id=..., PgBouncer through one database alias per tenant with "
        f"connect_query (pool_size {max(1, POOL_SIZE // TENANTS)} each), tenant-proxy by injection. "
        "Before the runs, each target was checked to show one tenant exactly its own rows.",
        "-C rows: a new connection (with SCRAM authentication) for every transaction; TPS is "
        "connections per second.",
        f"p99 from pgbench's per-transaction logs (--sampling-rate {SAMPLING}); average latency "
        "from pgbench's own figure.",
        "PostgreSQL runs with fsync=off, synchronous_commit=off, full_page_writes=off and "
        "shared_buffers=512MB: the benchmark measures the proxies, not the disk.",
        "PostgreSQL, both poolers and pgbench share the machine's cores; absolute figures vary "
        "from run to run (compare ratios within one run).",
    ]
    info = versions(pg)
    info["date"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = render(cells, memory, info, notes, rounds if ROUNDS > 1 else {})
    print()
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    log(f"results written to {OUT} (total {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
