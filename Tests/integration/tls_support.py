"""Helpers for test_tls_auth.py: a throwaway PKI made with the `openssl` CLI, TLS client contexts,
a raw wire client over TLS (SSLRequest or direct TLS with ALPN "postgresql"), a SCRAM-SHA-256-PLUS
client, a PostgreSQL cluster with ssl=on that accepts the proxy's role only over TLS, and a
tenant-proxy process whose config may hold arrays of tables ([[auth.rules]]).

Reuses pgharness and tenancy_support; waiting is always "poll a condition until a deadline".
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pgharness as h
import tenancy_support as ts

# ---------------------------------------------------------------------------------------------
# PKI (openssl CLI)


def _openssl(*args: str, cwd: Path):
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr}")
    return res


@dataclass
class CertPair:
    cert: Path
    key: Path

    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())

    def sha256(self) -> str:
        return hashlib.sha256(self.der()).hexdigest()


class PKI:
    """Files in `dir`:
    ca            the test CA (trusted by clients, the proxy's client_ca_file, the TLS Postgres)
    server        CN=localhost, SAN DNS:localhost, IP:127.0.0.1, DNS:*.tenants.example.com
    server2       the same names, another key (for the SIGHUP reload test)
    evil_ca       an untrusted CA; evil_server / evil_alice are signed by it
    clients[...]  client certificates signed by the test CA (see CLIENTS)
    """

    CLIENTS = {
        # name: (CN, SAN or None)
        "alice": ("alice", None),
        "svc": ("mallory-svc", "DNS:svc.example.com"),
        "certdef": ("certdef", None),
        "mallory": ("mallory", None),
    }

    def __init__(self, base: Path):
        self.dir = Path(base)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self._make_ca("ca", "tenant-proxy test CA")
        self.evil_ca = self._make_ca("evil_ca", "tenant-proxy test CA")   # same name, other key
        san = "DNS:localhost,IP:127.0.0.1,DNS:*.tenants.example.com"
        self.server = self._issue("server", "localhost", san, self.ca, server=True)
        self.server2 = self._issue("server2", "localhost", san, self.ca, server=True)
        self.evil_server = self._issue("evil_server", "localhost", san, self.evil_ca, server=True)
        self.clients = {name: self._issue(f"client_{name}", cn, s, self.ca, server=False)
                        for name, (cn, s) in self.CLIENTS.items()}
        self.evil_alice = self._issue("evil_client_alice", "alice", None, self.evil_ca,
                                      server=False)

    def _make_ca(self, name: str, cn: str) -> CertPair:
        key, crt = self.dir / f"{name}.key", self.dir / f"{name}.crt"
        _openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                 "-keyout", key.name, "-out", crt.name, "-days", "30", "-subj", f"/CN={cn}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        os.chmod(key, 0o600)
        return CertPair(crt, key)

    def _issue(self, name: str, cn: str, san: str | None, ca: CertPair, server: bool) -> CertPair:
        key, csr, crt = (self.dir / f"{name}.key", self.dir / f"{name}.csr",
                         self.dir / f"{name}.crt")
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}"]
        if san:
            lines.append(f"subjectAltName={san}")
        ext.write_text("\n".join(lines) + "\n")
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name,
                 "-out", csr.name, "-subj", f"/CN={cn}", cwd=self.dir)
        _openssl("x509", "-req", "-in", csr.name, "-CA", str(ca.cert), "-CAkey", str(ca.key),
                 "-set_serial", str(secrets.randbits(63)), "-days", "30", "-sha256",
                 "-extfile", ext.name, "-out", crt.name, cwd=self.dir)
        os.chmod(key, 0o600)
        return CertPair(crt, key)

    def private_key_markers(self) -> list[str]:
        """A line of base64 from each private key (none may ever show up in a log)."""
        out = []
        for p in sorted(self.dir.glob("*.key")):
            body = [ln for ln in p.read_text().splitlines() if ln and not ln.startswith("-----")]
            out.append(body[1] if len(body) > 1 else body[0])
        return out

    def destroy(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# TLS client side


def client_context(ca: Path | None = None, cert: CertPair | None = None, *,
                   check_hostname: bool | None = None, alpn: list[str] | None = None,
                   min_version: ssl.TLSVersion | None = None,
                   max_version: ssl.TLSVersion | None = None,
                   seclevel0: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.check_hostname = True if check_hostname is None else check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if seclevel0:
        # let this client offer old protocol versions at all (so a refusal is the server's)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


class TLSRawConn(h.RawConn):
    """pgharness.RawConn over TLS. mode "ssl_request": SSLRequest, expect 'S', then handshake;
    mode "direct": the TLS ClientHello is the first byte sent (PostgreSQL 17 sslnegotiation=direct),
    ALPN "postgresql" unless alpn says otherwise. Handshake errors propagate (ssl.SSLError,
    ConnectionError)."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, *, mode: str = "ssl_request",
                 server_hostname: str | None = None, timeout: float = 20.0):
        super().__init__(host, port, timeout=timeout)
        self.ssl_answer: bytes | None = None
        try:
            if mode == "ssl_request":
                self.ssl_answer = self.negotiate(h.SSL_CODE)
                if self.ssl_answer != b"S":
                    raise ConnectionError(f"SSLRequest answered {self.ssl_answer!r}")
            elif mode != "direct":
                raise ValueError(mode)
            self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        except BaseException:
            self.close()
            raise

    @property
    def peer_cert_der(self) -> bytes:
        return self.sock.getpeercert(binary_form=True)

    def startup_plus(self, user: str, password: str, database: str,
                     extra: dict[str, str] | None = None, *, cbind_data: bytes | None = None,
                     flag: str = "p"):
        """Startup with SCRAM-SHA-256-PLUS (tls-server-end-point). cbind_data overrides the
        channel-binding data (default: computed from the server certificate); flag "y" sends the
        client's 'I support channel binding but you did not offer it' header instead."""
        params = {"user": user, "database": database, "client_encoding": "UTF8"}
        params.update(extra or {})
        self.send(h.startup_packet(params))
        scram = None
        while True:
            tag, body = self.read_message()
            if tag == b"R":
                (code,) = struct.unpack("!I", body[:4])
                self.auth_codes.append(code)
                if code == 0:
                    continue
                if code == 10:
                    mechs = [m.decode() for m in body[4:].split(b"\x00") if m]
                    self.sasl_mechanisms = mechs
                    if flag == "p":
                        mech = "SCRAM-SHA-256-PLUS"
                        data = cbind_data if cbind_data is not None else \
                            tls_server_end_point(self.peer_cert_der)
                        scram = ScramPlusClient(password, "p=tls-server-end-point", data)
                    else:
                        mech = "SCRAM-SHA-256"
                        scram = ScramPlusClient(password, "y", b"")
                    first = scram.client_first().encode()
                    self.send(h.message(b"p", mech.encode() + b"\x00"
                                        + struct.pack("!i", len(first)) + first))
                elif code == 11:
                    self.send(h.message(b"p", scram.client_final(body[4:].decode()).encode()))
                elif code == 12:
                    scram.verify_server_final(body[4:].decode())
                else:
                    raise RuntimeError(f"unexpected auth request {code}")
            elif tag == b"E":
                raise h.PGError(h.parse_error_fields(body))
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


def sasl_mechanisms(conn: h.RawConn, user: str, database: str,
                    extra: dict[str, str] | None = None) -> list[str]:
    """Send a startup packet and return the mechanisms of the AuthenticationSASL answer (the
    connection is then abandoned)."""
    params = {"user": user, "database": database}
    params.update(extra or {})
    conn.send(h.startup_packet(params))
    tag, body = conn.read_message()
    if tag == b"E":
        raise h.PGError(h.parse_error_fields(body))
    assert tag == b"R", (tag, body)
    (code,) = struct.unpack("!I", body[:4])
    assert code == 10, f"expected AuthenticationSASL, got code {code}"
    return [m.decode() for m in body[4:].split(b"\x00") if m]


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 tls-server-end-point: hash of the server certificate with its signature's hash
    (MD5/SHA-1 -> SHA-256). The test PKI signs with SHA-256."""
    return hashlib.sha256(cert_der).digest()


class ScramPlusClient:
    def __init__(self, password: str, gs2_flag: str, cbind_data: bytes):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.gs2 = f"{gs2_flag},,"
        self.cbind = base64.b64encode(self.gs2.encode() + cbind_data).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def client_first(self) -> str:
        return self.gs2 + self.first_bare

    def client_final(self, server_first: str) -> str:
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        rnonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not rnonce.startswith(self.nonce):
            raise RuntimeError("server nonce does not extend client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={self.cbind},r={rnonce}"
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


def md5_verifier(password: str, user: str) -> str:
    """As pg_authid stores it: 'md5' + md5(password + username)."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# PostgreSQL with ssl=on that refuses the proxy's roles without TLS


class TLSTenancyCluster(ts.TenancyCluster):
    """deploy/sql applied (as TenancyCluster); ssl = on with the given server certificate;
    pg_hba: hostssl for tenant_proxy and app_owner, hostnossl ... reject for them."""

    def __init__(self, server_cert: CertPair):
        super().__init__()
        self.server_cert = server_cert

    def start(self) -> "TLSTenancyCluster":
        srv = self.srv
        try:
            srv.init()
            data = srv.data
            shutil.copy(self.server_cert.cert, data / "server.crt")
            shutil.copy(self.server_cert.key, data / "server.key")
            os.chmod(data / "server.key", 0o600)
            if h.is_root():
                pw = pwd.getpwnam("postgres")
                for f in ("server.crt", "server.key"):
                    os.chown(data / f, pw.pw_uid, pw.pw_gid)
            with open(data / "postgresql.conf", "a") as f:
                f.write("\nlog_statement = 'all'\nmax_connections = 100\n"
                        "log_line_prefix = '%m [%p] %u@%d '\n"
                        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                        "log_connections = on\n")
            hba = (data / "pg_hba.conf").read_text()
            special = "".join(
                f"hostssl all {role} 127.0.0.1/32 scram-sha-256\n"
                f"hostnossl all {role} 0.0.0.0/0 reject\n"
                for role in (ts.PROXY_ROLE, ts.OWNER_ROLE))
            out, inserted = [], False
            for line in hba.splitlines(keepends=True):
                if not inserted and line.startswith("host"):
                    out.append(special)
                    inserted = True
                out.append(line)
            if not inserted:
                out.append(special)
            (data / "pg_hba.conf").write_text("".join(out))
            srv.start()
            with self.su() as c:
                c.execute(f'CREATE DATABASE "{ts.APP_DB}"')
            self.apply_scripts(ts.APP_DB)
        except BaseException:
            log = srv.log_tail()
            srv.destroy()
            if log:
                print("postgres log:\n" + log)
            raise
        return self


# ---------------------------------------------------------------------------------------------
# tenant-proxy with TLS/auth/JWT config


def _toml(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return h.toml_value(v)


def render_config(sections: dict[str, dict]) -> str:
    """Like pgharness.render_toml, plus lists and arrays of tables: a value that is a list of
    dicts (auth.rules) is written as [[section.key]] tables after the section's plain keys."""
    out = []
    for name, kv in sections.items():
        out.append(f"[{name}]")
        tables = {}
        for k, v in kv.items():
            if v is None:
                continue
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                tables[k] = v
                continue
            out.append(f"{k} = {_toml(v)}")
        out.append("")
        for k, rows in tables.items():
            for row in rows:
                out.append(f"[[{name}.{k}]]")
                for rk, rv in row.items():
                    out.append(f"{rk} = {_toml(rv)}")
                out.append("")
    return "\n".join(out)


def render_map(tenants: dict[str, dict], users: dict[str, dict]) -> str:
    """users: name -> keys as written in the map (password is a verifier, md5 an md5 hash)."""
    out = []
    for name, t in tenants.items():
        out.append(f"[tenants.{h.toml_str(name)}]")
        out += [f"{k} = {_toml(v)}" for k, v in t.items()]
        out.append("")
    for name, u in users.items():
        out.append(f"[users.{h.toml_str(name)}]")
        out += [f"{k} = {_toml(v)}" for k, v in u.items() if v is not None]
        out.append("")
    return "\n".join(out)


class TLSProxy(ts.TenancyProxy):
    """A TenancyProxy whose config is rendered with render_config and that may get extra env."""

    def __init__(self, workdir: Path, config: dict[str, dict], map_text: str,
                 env: dict[str, str] | None = None):
        super().__init__(workdir, config, map_text)
        self.config_path.write_text(render_config(config))
        self.env = env or {}
        self.connect_host = "127.0.0.1"

    def start(self, timeout: float = 30.0) -> "TLSProxy":
        binary = h.proxy_bin()
        if not binary.exists():
            raise FileNotFoundError(f"tenant-proxy binary not found at {binary}")
        env = dict(os.environ)
        env.update(self.env)
        self._out = open(self.stdout_path, "ab")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([str(binary), "--config", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     cwd=self.dir, env=env, start_new_session=True)
        ok = True
        try:
            h.wait_until(lambda: self.proc.poll() is not None
                         or h.port_accepts(self.connect_host, self.port), timeout,
                         "tenant-proxy to listen")
        except AssertionError:
            ok = False
        if not ok or not self.alive():
            rc = self.proc.poll()
            self.terminate()
            raise AssertionError(f"tenant-proxy did not start (exit {rc}); stderr:\n{self.stderr()}")
        return self

    def check_config(self) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.update(self.env)
        return h.run([str(h.proxy_bin()), "check-config", str(self.config_path)], cwd=self.dir,
                     env=env)

    def full_stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def free_port() -> int:
    return h.free_port()


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback and that we can connect to
    ourselves (the client address is then that address), or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                             timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for ip in out:
        if ":" in ip or ip.startswith("127."):
            continue
        try:
            with socket.socket() as srv:
                srv.bind((ip, 0))
                srv.listen(1)
                with socket.create_connection((ip, srv.getsockname()[1]), timeout=2):
                    a, addr = srv.accept()
                    a.close()
                    if addr[0] == ip:
                        return ip
        except OSError:
            continue
    return None


def monotonic_elapsed(fn) -> tuple[float, object]:
    t0 = time.monotonic()
    try:
        res = fn()
    except BaseException as e:  # noqa: BLE001 - returned to the caller
        res = e
    return time.monotonic() - t0, res


@contextlib.contextmanager
def suppress_all():
    try:
        yield
    except Exception:  # noqa: BLE001
        pass
