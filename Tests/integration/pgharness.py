"""Helpers for the tenant-proxy integration tests.

Everything here drives real components: a PostgreSQL cluster created with initdb into a temporary
directory, the tenant-proxy binary, and real clients. Waiting is always "poll a condition until a
deadline", never a fixed sleep used as synchronization.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import hmac
import os
import pwd
import random
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN_CANDIDATES = ["/usr/lib/postgresql/15/bin"]


def pg_bin_dir() -> Path:
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env)
    for cand in PG_BIN_CANDIDATES:
        if (Path(cand) / "initdb").exists():
            return Path(cand)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    raise RuntimeError("no PostgreSQL server binaries found (set PG_BIN)")


def proxy_bin() -> Path:
    return Path(os.environ.get("TENANT_PROXY_BIN", REPO_ROOT / ".build" / "debug" / "tenant-proxy"))


def client_bin(name: str) -> str:
    """psql/pgbench: prefer the ones next to the server binaries, else PATH."""
    cand = pg_bin_dir() / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found")
    return found


# --------------------------------------------------------------------------------------------
# small utilities


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range, not handed out before in this run. A port
    from bind(0) is an ephemeral one: between this check and the server's bind, any outgoing
    connection (thousands per run, and their TIME_WAITs) may take it, and the server fails to
    listen; below the range only servers bind."""
    low, high = 20000, _ephemeral_low() - 1
    if high - low >= 1000:
        for _ in range(200):
            port = random.randint(low, high)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Prometheus text from a proxy's metrics endpoint


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def series(text: str) -> dict[str, float]:
    """'name{labels}' -> value, for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def sample(values: dict[str, float], name: str, **labels: str) -> float:
    """The value of one series whose labels include `labels` (0 when absent)."""
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return value
    return 0.0


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll pred() until it returns a truthy value or the deadline passes (then AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            val = pred()
            if val:
                return val
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def tcp_nodelay_by_socket(pid: int) -> dict[str, int]:
    """TCP_NODELAY of each TCP socket process `pid` holds ("local -> peer": 0 or 1)."""
    return {name: values[0] for name, values in
            socket_options_by_socket(pid, [(socket.IPPROTO_TCP, socket.TCP_NODELAY)]).items()}


def socket_options_by_socket(pid: int, options: list[tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    """The values of `options` ((level, name) pairs) on each TCP socket process `pid` holds
    ("local -> peer" or "local (listening)"), read from copies of its descriptors (pidfd_getfd:
    root, or the process is our child)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found: dict[str, int] = {}
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            # A descriptor may close (a departed client's socket) or be reused while we look.
            try:
                if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(entry), 0)   # SYS_pidfd_getfd
            if fd < 0:
                if ctypes.get_errno() == errno.EBADF:
                    continue
                raise OSError(ctypes.get_errno(), f"pidfd_getfd of descriptor {entry}")
            try:
                s = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            try:
                if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                    values = tuple(s.getsockopt(level, name) for level, name in options)
                    with contextlib.suppress(OSError):
                        peer = s.getpeername()
                        found[f"{s.getsockname()} -> {peer}"] = values
                        continue
                    found[f"{s.getsockname()} (listening)"] = values
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return found


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except FileNotFoundError:
        return False
    return True


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def kill_process_group(proc: subprocess.Popen, term_timeout: float = 10.0) -> int | None:
    """SIGTERM the process group, wait, SIGKILL as fallback. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return proc.returncode


def is_root() -> bool:
    return os.geteuid() == 0


def as_postgres_cmd(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: run server commands as the postgres OS user then."""
    if is_root():
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


# --------------------------------------------------------------------------------------------
# PostgreSQL server

ROLE_PASSWORDS = {
    "proxy_scram": "scram-secret-1",
    "proxy_md5": "md5-secret-2",
    "proxy_plain": "plain-secret-3",
}
# the upstream authentication method Postgres uses for each role (pg_hba)
ROLE_METHODS = {"proxy_scram": "scram-sha-256", "proxy_md5": "md5", "proxy_plain": "password"}


class PostgresServer:
    def __init__(self, base: Path | None = None):
        self.bin = pg_bin_dir()
        self.dir = Path(base) if base else Path(tempfile.mkdtemp(prefix="tp-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.logfile = self.dir / "postgres.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.started = False
        self._db_counter = 0

    # -- lifecycle ------------------------------------------------------------------------
    def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(as_postgres_cmd(cmd), check=True, capture_output=True, text=True,
                              timeout=kw.pop("timeout", 120), **kw)

    def init(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if is_root():
            pw = pwd.getpwnam("postgres")
            for p in (self.dir, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o755)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                   "--locale=C", "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sock}'
password_encryption = 'scram-sha-256'
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
shared_buffers = 32MB
""")
        # md5 / password roles need their own lines before the generic host line
        hba = (self.data / "pg_hba.conf").read_text()
        special = ("host all proxy_md5 127.0.0.1/32 md5\n"
                   "host all proxy_plain 127.0.0.1/32 password\n")
        lines = hba.splitlines(keepends=True)
        out, inserted = [], False
        for line in lines:
            if not inserted and line.startswith("host"):
                out.append(special)
                inserted = True
            out.append(line)
        if not inserted:
            out.append(special)
        (self.data / "pg_hba.conf").write_text("".join(out))

    def start(self):
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                   "-w", "-t", "60", "start"])
        self.started = True
        wait_until(lambda: port_accepts(self.host, self.port), 30, "postgres port")

    def stop(self, mode: str = "fast"):
        if self.started:
            subprocess.run(as_postgres_cmd([str(self.bin / "pg_ctl"), "-D", str(self.data),
                                            "-m", mode, "-w", "-t", "60", "stop"]),
                           capture_output=True, text=True, timeout=90)
            self.started = False

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def log_tail(self, n: int = 60) -> str:
        try:
            return "".join(self.logfile.read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""

    # -- admin access (superuser over the unix socket) ------------------------------------
    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.sock} port={self.port} user=postgres dbname={dbname}"

    def admin(self, dbname: str = "postgres"):
        import psycopg
        return psycopg.connect(self.admin_dsn(dbname), autocommit=True)

    def sql(self, query: str, params=None, dbname: str = "postgres"):
        with self.admin(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def setup_roles(self):
        with self.admin() as c:
            c.execute("SET password_encryption = 'scram-sha-256'")
            c.execute(f"CREATE ROLE proxy_scram LOGIN PASSWORD '{ROLE_PASSWORDS['proxy_scram']}'")
            c.execute(f"CREATE ROLE proxy_plain LOGIN PASSWORD '{ROLE_PASSWORDS['proxy_plain']}'")
            c.execute("SET password_encryption = 'md5'")
            c.execute(f"CREATE ROLE proxy_md5 LOGIN PASSWORD '{ROLE_PASSWORDS['proxy_md5']}'")
        self.create_database("app")

    def create_database(self, name: str | None = None) -> str:
        if name is None:
            self._db_counter += 1
            name = f"t{self._db_counter}_{secrets.token_hex(3)}"
        with self.admin() as c:
            c.execute(f'CREATE DATABASE "{name}" OWNER proxy_scram')
            c.execute(f'GRANT ALL ON DATABASE "{name}" TO proxy_md5, proxy_plain')
        with self.admin(name) as c:
            c.execute("GRANT ALL ON SCHEMA public TO proxy_md5, proxy_plain")
        return name

    def active_queries(self, marker: str) -> list[tuple]:
        """(pid, state, wait_event_type, wait_event) of backends whose query contains marker."""
        return self.sql(
            "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
            "WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",))


def start_postgres() -> PostgresServer:
    srv = PostgresServer()
    try:
        srv.init()
        srv.start()
        srv.setup_roles()
    except BaseException:
        log = srv.log_tail()
        srv.destroy()
        if log:
            print("postgres log:\n" + log)
        raise
    return srv


# --------------------------------------------------------------------------------------------
# Endpoint: what a client connects to (direct Postgres or the proxy)


@dataclass
class Endpoint:
    kind: str              # "direct" or "proxy"
    host: str
    port: int
    user: str
    password: str | None
    dbname: str
    watch_pid: int | None = None   # the process that relays bytes (proxy pid / postmaster)
    extra: dict = field(default_factory=dict)

    def dsn(self, **over) -> str:
        params = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname,
                  "sslmode": "prefer", "connect_timeout": 10}
        if self.password is not None:
            params["password"] = self.password
        params.update(over)
        return " ".join(f"{k}={_dsn_quote(v)}" for k, v in params.items() if v is not None)

    def libpq_env(self, **over) -> dict:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("PG"):
                del env[k]
        env.update({"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                    "PGDATABASE": self.dbname, "PGSSLMODE": "prefer", "PGCONNECT_TIMEOUT": "10",
                    "PGCLIENTENCODING": "UTF8", "LC_ALL": "C.UTF-8", "PGAPPNAME": "it"})
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.update({k: str(v) for k, v in over.items() if v is not None})
        for k, v in over.items():
            if v is None:
                env.pop(k, None)
        return env

    def with_db(self, dbname: str) -> "Endpoint":
        return Endpoint(self.kind, self.host, self.port, self.user, self.password, dbname,
                        self.watch_pid, dict(self.extra))

    def with_user(self, user: str, password: str | None) -> "Endpoint":
        return Endpoint(self.kind, self.host, self.port, user, password, self.dbname,
                        self.watch_pid, dict(self.extra))


def _dsn_quote(v) -> str:
    s = str(v)
    if s == "" or any(ch in s for ch in " '\\"):
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return s


# --------------------------------------------------------------------------------------------
# tenant-proxy process

PROXY_USERS = {"alice": "alicepw", "bob": "bobpw"}
_VERIFIER_CACHE: dict[str, str] = {}


def hash_password(password: str, use_stdin: bool = False) -> str:
    binary = proxy_bin()
    if use_stdin:
        res = subprocess.run([str(binary), "hash-password"], input=password + "\n",
                             capture_output=True, text=True, timeout=60)
    else:
        res = subprocess.run([str(binary), "hash-password", "--password", password],
                             capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"hash-password failed ({res.returncode}): {res.stderr}")
    return res.stdout.strip()


def cached_verifier(password: str) -> str:
    if password not in _VERIFIER_CACHE:
        _VERIFIER_CACHE[password] = hash_password(password)
    return _VERIFIER_CACHE[password]


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return toml_str(str(v))


def render_toml(sections: dict[str, dict | list]) -> str:
    """sections: name -> keys, or name -> list of key dicts (an array of tables, [[name]])."""
    out = []
    for name, kv in sections.items():
        if isinstance(kv, list):
            for table in kv:
                out.append(f"[[{name}]]")
                out.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
                out.append("")
            continue
        out.append(f"[{name}]")
        for k, v in kv.items():
            if v is None:
                continue
            out.append(f"{k} = {toml_value(v)}")
        out.append("")
    return "\n".join(out)


def render_users(users: dict[str, str]) -> str:
    """users: name -> SCRAM verifier. A tenant map whose users are global: the foundation tests
    exercise the protocol relay, with no tenant context (tenancy has its own tests)."""
    return "".join(f"[users.{toml_str(u)}]\npassword = {toml_str(v)}\nmode = \"global\"\n\n"
                   for u, v in users.items())


class ProxyProcess:
    def __init__(self, workdir: Path, config: dict[str, dict], users: dict[str, str],
                 env: dict | None = None, files: dict[str, str] | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {}).items():
            (self.dir / name).write_text(content)
        self.config = config
        self.host = config["server"]["listen_host"]
        self.port = config["server"]["listen_port"]
        self.config_path = self.dir / "proxy.toml"
        (self.dir / config["tenancy"]["map_file"]).write_text(render_users(users))
        self.config_path.write_text(render_toml(config))
        self.stderr_path = self.dir / "proxy.stderr"
        self.stdout_path = self.dir / "proxy.stdout"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0, run_as: str | None = None,
              open_files: tuple[int, int] | None = None):
        """run_as: an OS user (the test runs as root) the proxy runs as, like a service's User=;
        the work folder and a copy of the binary are given to that user. open_files: the (soft,
        hard) RLIMIT_NOFILE the proxy starts with."""
        binary = proxy_bin()
        if not binary.exists():
            raise FileNotFoundError(f"tenant-proxy binary not found at {binary} "
                                    "(build it or set TENANT_PROXY_BIN)")
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        identity = {}
        if run_as:
            account = pwd.getpwnam(run_as)
            # The checkout may sit below a folder only root can enter.
            copy = self.dir / "tenant-proxy"
            shutil.copy2(binary, copy)
            binary = copy
            for path in (self.dir, *self.dir.rglob("*")):
                os.chown(path, account.pw_uid, account.pw_gid)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([str(binary), "--config", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     env=env, cwd=self.dir, start_new_session=True, **identity,
                                     preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files))
                                     if open_files else None)

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"tenant-proxy exited with {self.proc.returncode} before "
                                     f"listening; stderr:\n{self.stderr()}")
            if port_accepts(self.host, self.port):
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"tenant-proxy did not listen on {self.port} within "
                                     f"{timeout}s; stderr:\n{self.stderr()}")
            time.sleep(0.02)

    def stderr(self, tail: int = 80) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines(True)
        except OSError:
            return ""
        return "".join(lines[-tail:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 40.0) -> int | None:
        """SIGTERM the proxy and wait for it; SIGKILL the group as a fallback."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.exit_code = kill_process_group(self.proc, term_timeout=1)
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f:
                f.close()
        return self.exit_code

    def dsn(self, dbname: str, user: str = "alice", password: str | None = "alicepw", **over) -> str:
        return self.endpoint(dbname, user, password).dsn(**over)

    def endpoint(self, dbname: str, user: str = "alice", password: str | None = "alicepw"):
        return Endpoint("proxy", self.host, self.port, user, password, dbname, watch_pid=self.pid)


def proxy_config(pg: PostgresServer, *, upstream_user: str = "proxy_scram",
                 upstream_password: str | None = None, password_mode: str = "password",
                 upstream_port: int | None = None, trust_loopback: bool = False,
                 shutdown_timeout: int = 30, database: str = "",
                 max_message_bytes: int = 67108864, log_level: str = "info",
                 extra: dict | None = None) -> tuple[dict, dict, dict]:
    """Returns (config sections, extra env, extra files relative to the config folder).
    password_mode: password | password_file | password_env."""
    pw = upstream_password if upstream_password is not None else ROLE_PASSWORDS[upstream_user]
    upstream = {"host": "127.0.0.1", "port": upstream_port or pg.port, "user": upstream_user,
                "database": database, "connect_timeout_seconds": 5}
    env, files = {}, {}
    if password_mode == "password":
        upstream["password"] = pw
    elif password_mode == "password_file":
        upstream["password_file"] = "upstream.pw"
        files["upstream.pw"] = pw + "\n"
    elif password_mode == "password_env":
        upstream["password_env"] = "TP_TEST_UPSTREAM_PW"
        env["TP_TEST_UPSTREAM_PW"] = pw
    else:
        raise ValueError(password_mode)
    cfg = {
        "server": {"listen_host": "127.0.0.1", "listen_port": free_port(),
                   "max_message_bytes": max_message_bytes, "max_client_connections": 10000,
                   "shutdown_timeout_seconds": shutdown_timeout},
        "auth": {"trust_loopback": trust_loopback, "lockout_failures": 0},
        "tenancy": {"map_file": "users.toml"},
        # The protocol tests run over plain TCP; TLS has its own tests (test_tls_auth.py).
        "tls": {"require": False},
        "upstream": upstream,
        "log": {"level": log_level},
    }
    if extra:
        for sec, kv in extra.items():
            cfg.setdefault(sec, {}).update(kv)
    return cfg, env, files


# --------------------------------------------------------------------------------------------
# Raw wire-protocol client (for tests a driver can't express: slow reading, hostile bytes,
# CancelRequest with a chosen key)

PROTOCOL_3 = 196608
CANCEL_CODE = 80877102
SSL_CODE = 80877103
GSSENC_CODE = 80877104


class PGError(Exception):
    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")


def parse_error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    for k, v in params.items():
        body += k.encode() + b"\x00" + v.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def cancel_packet(pid: int, secret: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_CODE, pid, secret & 0xFFFFFFFF)


def message(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def send_cancel(host: str, port: int, pid: int, secret: int, timeout: float = 10.0) -> bytes:
    """Sends a CancelRequest and waits for the server to close the socket; returns what came back
    (a well-behaved server sends nothing)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(cancel_packet(pid, secret))
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk


class RawConn:
    """Minimal v3 frontend: startup + SCRAM-SHA-256/MD5/cleartext auth + simple Query."""

    def __init__(self, host: str, port: int, timeout: float = 20.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.params: dict[str, str] = {}
        self.backend_pid: int | None = None
        self.backend_secret: int | None = None
        self.auth_codes: list[int] = []   # AuthenticationRequest codes seen during startup

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def recv_some(self, n: int = 65536) -> bytes:
        data = self.sock.recv(n)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def _fill(self, n: int):
        while len(self.buf) < n:
            self.buf += self.recv_some()

    def read_message(self) -> tuple[bytes, bytes]:
        self._fill(5)
        tag = bytes(self.buf[:1])
        (length,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + length)
        body = bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        return tag, body

    def negotiate(self, code: int) -> bytes:
        """Send SSLRequest/GSSENCRequest; returns the one-byte answer."""
        self.send(struct.pack("!II", 8, code))
        while not self.buf:
            self.buf += self.recv_some(1)
        answer = bytes(self.buf[:1])
        del self.buf[:1]
        return answer

    def startup(self, user: str, password: str | None, database: str,
                extra: dict[str, str] | None = None):
        params = {"user": user, "database": database, "client_encoding": "UTF8"}
        params.update(extra or {})
        self.send(startup_packet(params))
        scram = None
        while True:
            tag, body = self.read_message()
            if tag == b"R":
                (code,) = struct.unpack("!I", body[:4])
                self.auth_codes.append(code)
                if code == 0:
                    continue
                if code == 3:
                    self.send(message(b"p", (password or "").encode() + b"\x00"))
                elif code == 5:
                    salt = body[4:8]
                    inner = hashlib.md5((password or "").encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(message(b"p", b"md5" + outer.encode() + b"\x00"))
                elif code == 10:
                    mechs = [m for m in body[4:].split(b"\x00") if m]
                    if b"SCRAM-SHA-256" not in mechs:
                        raise RuntimeError(f"no SCRAM-SHA-256 in {mechs}")
                    scram = ScramClient(password or "")
                    first = scram.client_first().encode()
                    self.send(message(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first))
                                      + first))
                elif code == 11:
                    assert scram is not None
                    self.send(message(b"p", scram.client_final(body[4:].decode()).encode()))
                elif code == 12:
                    assert scram is not None
                    scram.verify_server_final(body[4:].decode())
                else:
                    raise RuntimeError(f"unsupported auth request {code}")
            elif tag == b"E":
                raise PGError(parse_error_fields(body))
            elif tag == b"S":
                k, v, _ = body.split(b"\x00", 2)
                self.params[k.decode()] = v.decode()
            elif tag == b"K":
                self.backend_pid, self.backend_secret = struct.unpack("!II", body)
            elif tag == b"Z":
                return
            elif tag == b"N":
                continue
            else:
                raise RuntimeError(f"unexpected message {tag!r} during startup")

    def query(self, sql: str) -> list[list[str | None]]:
        """Simple query; returns all data rows of all results; raises PGError on error."""
        self.send(message(b"Q", sql.encode() + b"\x00"))
        rows, err = [], None
        while True:
            tag, body = self.read_message()
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
                rows.append(row)
            elif tag == b"E":
                err = PGError(parse_error_fields(body))
            elif tag == b"Z":
                if err:
                    raise err
                return rows

    def terminate(self):
        with contextlib.suppress(OSError):
            self.send(message(b"X"))
        self.close()


class ScramClient:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) without channel binding, as libpq does it."""

    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def client_first(self) -> str:
        return "n,," + self.first_bare

    def client_final(self, server_first: str) -> str:
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        rnonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not rnonce.startswith(self.nonce):
            raise RuntimeError("server nonce does not extend client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={rnonce}"
        self.auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        sig = hmac.new(stored_key, self.auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final: str):
        attrs = dict(a.split("=", 1) for a in server_final.split(","))
        if "e" in attrs:
            raise RuntimeError(f"SCRAM server error {attrs['e']}")
        expected = hmac.new(self.server_key, self.auth_message, hashlib.sha256).digest()
        if base64.b64decode(attrs["v"]) != expected:
            raise RuntimeError("SCRAM server signature mismatch")


def scram_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """A SCRAM-SHA-256 verifier in Postgres' format (used to cross-check hash-password)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def read_until_closed(sock: socket.socket, timeout: float = 20, stop_at_error: bool = False,
                      what=lambda: "") -> bytes:
    """Everything the server sends until it closes the socket (or, with stop_at_error, until an
    ErrorResponse has arrived); fails the test if it does neither within `timeout` seconds."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data
        except socket.timeout:
            raise AssertionError(f"the server neither closed nor answered; got {data[:200]!r} "
                                 f"{what()}")
        if not chunk:
            return data
        data += chunk
        if stop_at_error and error_responses(data):
            return data


def error_responses(data: bytes) -> list[dict[str, str]]:
    """Parse backend messages out of a byte string and return the ErrorResponse field maps.
    Handles a leading single-byte SSL/GSS answer poorly on purpose: callers strip it."""
    errs, off = [], 0
    while off + 5 <= len(data):
        tag = data[off:off + 1]
        (ln,) = struct.unpack("!I", data[off + 1:off + 5])
        if ln < 4 or off + 1 + ln > len(data):
            break
        if tag == b"E":
            errs.append(parse_error_fields(data[off + 5:off + 1 + ln]))
        off += 1 + ln
    return errs


def run(cmd: Iterable[str], env: dict | None = None, cwd: Path | None = None,
        timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, input=input, start_new_session=True)
