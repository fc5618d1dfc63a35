"""Authentication and TLS through tenant-proxy (issue 4): TLS to clients (SSLRequest and direct
TLS with ALPN "postgresql", minimum version, SIGHUP reload), TLS to the upstream
(disable/prefer/require/verify-full), every client authentication method with the right and the
wrong credential (SCRAM-SHA-256 and -PLUS with channel binding, md5, password, cert, jwt, trust,
reject; pg_hba-like rules), the failure delay and the lockout, JWT as the password (RS256, ES256,
EdDSA, HS256; JWKS file and URL with rotation; exp/nbf/iss/aud; hostile tokens; nested claims;
user claim -> nile.user_id; the session ends when the token expires), SNI tenant routing, and no
secret in the proxy's log.

Real clients: psql 15 (libpq 15), psycopg 3 (its own libpq, which knows sslnegotiation=direct),
asyncpg, and a raw wire client over Python's ssl module (tls_support.TLSRawConn) for exact
ErrorResponse fields and for what libpq 15 cannot do (direct TLS, SCRAM-PLUS with a forged
channel binding, TLS 1.1).

    python3 -m pytest Tests/integration/test_tls_auth.py -q
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import socket
import ssl
import threading
import time
import uuid

import asyncpg
import psycopg
import pytest

import fuzz_support as fz
import jwt_support as J
import pgharness as h
import tenancy_support as ts
import tls_support as tls
from tenancy_support import ACME, ALICE_UID, BOB_UID, GLOBEX, PROXY_ROLE

pytestmark = [pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]

ISSUER = "https://idp.tenant-proxy.test/"
AUDIENCE = "tenant-proxy-tests"
SNI_DOMAIN = "tenants.example.com"

# user -> password (distinctive strings, so the log check cannot match by accident)
PASSWORDS = {
    "alice": "alice-Pw-7f3a91",
    "bob": "bob-Pw-2c8e44",
    "multi": "multi-Pw-9d1b07",
    "plainu": "plainu-Pw-5e6f12",
    "md5u": "md5u-Pw-3a7c58",
    "pwu": "pwu-Pw-8b2d96",
    "pwrule": "pwrule-Pw-4f9e23",
    "rejected": "rejected-Pw-1c5a77",
    "addrok": "addrok-Pw-6d3b40",
    "addrno": "addrno-Pw-0e8c15",
    "dbrule": "dbrule-Pw-7a2f63",
}
WRONG = "wrong-Pw-000000"


def scram(user: str) -> str:
    return h.cached_verifier(PASSWORDS[user])


def standard_users() -> dict[str, dict]:
    acme = {"mode": "pinned", "tenants": ["acme"]}
    u = {
        "alice": {"password": scram("alice"), **acme, "user_id": ALICE_UID},
        "bob": {"password": scram("bob"), "mode": "pinned", "tenants": ["globex"],
                "user_id": BOB_UID},
        "multi": {"password": scram("multi"), "mode": "pinned", "tenants": ["acme", "globex"]},
        "plainu": {"password": scram("plainu"), **acme, "require_tls": False},
        "md5u": {"md5": tls.md5_verifier(PASSWORDS["md5u"], "md5u"), "auth": "md5", **acme},
        "pwu": {"password": scram("pwu"), "auth": "password", **acme, "require_tls": False},
        "pwrule": {"password": scram("pwrule"), **acme},
        "rejected": {"password": scram("rejected"), **acme},
        "addrok": {"password": scram("addrok"), **acme},
        "addrno": {"password": scram("addrno"), **acme},
        "dbrule": {"password": scram("dbrule"), **acme},
        "certu": {"auth": "cert", "cert_names": ["alice", "svc.example.com"], **acme},
        "certdef": {"auth": "cert", **acme},
        "jwtu": {"auth": "jwt", "mode": "pinned", "tenants": ["*"]},
        "jwtacme": {"auth": "jwt", "mode": "pinned", "tenants": ["acme"]},
        "jwtplain": {"auth": "jwt", "mode": "pinned", "tenants": ["*"], "require_tls": False},
    }
    return u


STANDARD_RULES = [
    {"user": "rejected", "database": "*", "address": "0.0.0.0/0", "method": "reject"},
    {"user": "addrok", "address": "10.0.0.0/8", "method": "reject"},
    {"user": "addrno", "address": "127.0.0.0/8", "method": "reject"},
    {"user": "dbrule", "database": "acme", "method": "reject"},
    {"user": "pwrule", "method": "password"},
]


# ---------------------------------------------------------------------------------------------
# module state: PKI, keys, clusters, proxies started (for the log check at the end)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = tls.PKI(tmp_path_factory.mktemp("pki"))
    yield p
    p.destroy()


@pytest.fixture(scope="module")
def keys():
    return J.KeyRing.create()


@pytest.fixture(scope="module")
def claims():
    return J.Claims(ISSUER, AUDIENCE)


@pytest.fixture(scope="module")
def jwt_files(tmp_path_factory, keys):
    """jwks.json (RSA, EC, Ed25519 public keys) and hs256.secret."""
    d = tmp_path_factory.mktemp("jwt")
    J.write_jwks(d / "jwks.json", keys.rsa, keys.ec, keys.ed)
    (d / "hs256.secret").write_bytes(keys.hs_secret)
    os.chmod(d / "hs256.secret", 0o600)
    return d


@pytest.fixture(scope="module")
def tcluster():
    c = ts.TenancyCluster().start()
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def started():
    """Every proxy started by this module (their stderr is checked for secrets at the end)."""
    procs: list[tls.TLSProxy] = []
    yield procs
    for p in procs:
        p.terminate()


def base_config(cluster, pki, jwt_dir, *, listen_host: str = "127.0.0.1",
                rules: list[dict] | None = None, **sections) -> dict[str, dict]:
    cfg = {
        "server": {"listen_host": listen_host, "listen_port": h.free_port(),
                   "shutdown_timeout_seconds": 5},
        "tls": {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                "client_ca_file": str(pki.ca.cert), "require": True, "min_version": "1.2",
                "sni_domain": SNI_DOMAIN},
        "auth": {"trust_loopback": False, "failure_delay_ms": 50, "lockout_failures": 100000,
                 "lockout_window_seconds": 60, "lockout_seconds": 300,
                 "rules": list(STANDARD_RULES if rules is None else rules)},
        "jwt": {"jwks_file": str(jwt_dir / "jwks.json"),
                "hs256_secret_file": str(jwt_dir / "hs256.secret"),
                "issuer": ISSUER, "audience": AUDIENCE, "leeway_seconds": 5,
                "tenant_claim": "tenant_id", "user_claim": "sub"},
        "tenancy": {"map_file": "tenants.toml", "tenant_setting": "nile.tenant_id",
                    "user_setting": "nile.user_id", "user_separator": ".",
                    "lookup_upstream": True, "lookup_cache_seconds": 30},
        "upstream": {"host": cluster.host, "port": cluster.port, "user": PROXY_ROLE,
                     "password": ts.PROXY_PW, "global_user": ts.OWNER_ROLE,
                     "global_password": ts.OWNER_PW, "database": ts.APP_DB},
        "log": {"level": "debug"},
    }
    for sec, kv in sections.items():
        if kv is None:
            cfg.pop(sec, None)
            continue
        cfg.setdefault(sec, {}).update(kv)
    return cfg


@pytest.fixture
def make_tlsproxy(tcluster, pki, jwt_files, started, tmp_path_factory):
    """Factory: a proxy of the test's own. make_tlsproxy(users=..., cluster=..., env=...,
    start=True, **config sections to merge)."""
    mine: list[tls.TLSProxy] = []

    def factory(*, users: dict | None = None, cluster=None, env: dict | None = None,
                start: bool = True, listen_host: str = "127.0.0.1",
                rules: list[dict] | None = None, **sections) -> tls.TLSProxy:
        cfg = base_config(cluster or tcluster, pki, jwt_files, listen_host=listen_host,
                          rules=rules, **sections)
        p = tls.TLSProxy(tmp_path_factory.mktemp("tlsproxy"), cfg,
                         tls.render_map(ts.TENANTS, users if users is not None
                                        else standard_users()), env=env)
        started.append(p)
        mine.append(p)
        if start:
            p.start()
        return p

    yield factory
    for p in mine:
        p.terminate()


@pytest.fixture(scope="module")
def _shared_holder(started):
    return {}


@pytest.fixture
def tp(_shared_holder, tcluster, pki, jwt_files, started, tmp_path_factory):
    """The standard proxy (standard config and map), shared by the module."""
    p = _shared_holder.get("proxy")
    if p is None or not p.alive():
        if p is not None:
            p.terminate()
        cfg = base_config(tcluster, pki, jwt_files)
        p = tls.TLSProxy(tmp_path_factory.mktemp("tlsproxy-shared"), cfg,
                         tls.render_map(ts.TENANTS, standard_users()))
        started.append(p)
        p.start()
        _shared_holder["proxy"] = p
    yield p
    assert p.alive(), f"tenant-proxy died during the test; stderr:\n{p.stderr()}"


# ---------------------------------------------------------------------------------------------
# client helpers


class Refused(Exception):
    """A login that did not produce a session: fields of the ErrorResponse, or the TLS/socket
    error that ended the attempt."""

    def __init__(self, fields: dict | None = None, exc: BaseException | None = None):
        self.fields = fields or {}
        self.exc = exc
        super().__init__(f"{self.fields or ''} {exc!r}")

    @property
    def sqlstate(self):
        return self.fields.get("C")


def tls_conn(proxy, pki, *, cert=None, sni: str | None = "localhost", mode: str = "ssl_request",
             alpn=None, verify: bool = True, **ctx_kw) -> tls.TLSRawConn:
    if mode == "direct" and alpn is None:
        alpn = ["postgresql"]
    ctx = tls.client_context(pki.ca.cert if verify else None, cert, alpn=alpn or None, **ctx_kw)
    return tls.TLSRawConn(proxy.connect_host, proxy.port, ctx, mode=mode, server_hostname=sni)


def login(proxy, pki, user: str, password: str | None, *, db: str = ts.APP_DB,
          options: str | None = None, plain: bool = False, **tls_kw) -> h.RawConn:
    """Log in with the raw client (TLS unless plain). Returns the open connection, or raises
    Refused (ErrorResponse fields, or the TLS/socket error)."""
    extra = {"options": options} if options else None
    try:
        conn = (h.RawConn(proxy.connect_host, proxy.port) if plain
                else tls_conn(proxy, pki, **tls_kw))
    except (ssl.SSLError, ConnectionError, OSError) as e:
        raise Refused(exc=e) from e
    try:
        conn.startup(user, password, db, extra)
    except h.PGError as e:
        conn.close()
        raise Refused(e.fields) from e
    except (ssl.SSLError, ConnectionError, OSError) as e:
        conn.close()
        raise Refused(exc=e) from e
    return conn


def refusal(proxy, pki, user, password, **kw) -> Refused:
    try:
        conn = login(proxy, pki, user, password, **kw)
    except Refused as r:
        return r
    try:
        state = conn.query("SELECT current_setting('nile.tenant_id', true), current_user")
    finally:
        conn.terminate()
    raise AssertionError(f"login as {user!r} ({kw}) was accepted; session: {state}")


def assert_auth_failed(r: Refused, user: str):
    """The uniform bad-credential answer: FATAL 28P01, no detail about why."""
    assert r.fields, f"expected an ErrorResponse, got {r.exc!r}"
    assert r.fields.get("S") == "FATAL", r.fields
    assert r.sqlstate == "28P01", r.fields
    assert r.fields.get("M") == f'password authentication failed for user "{user}"', r.fields
    text = " ".join(v for k, v in r.fields.items() if k in "MDH").lower()
    for why in ("expired", "signature", "issuer", "audience", "not valid yet", "algorithm", "kid",
                "unknown key", "malformed", "claim"):
        assert why not in text, f"the error says why ({why!r}): {r.fields}"


def tenant_of(conn: h.RawConn) -> tuple:
    (row,) = conn.query("SELECT current_setting('nile.tenant_id', true), "
                        "current_setting('nile.user_id', true), current_user")
    return tuple(row)


def session_ok(proxy, pki, user, password, **kw) -> tuple:
    conn = login(proxy, pki, user, password, **kw)
    try:
        return tenant_of(conn)
    finally:
        conn.terminate()


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGPASSFILE": "/dev/null", "PGCONNECT_TIMEOUT": "10", "LC_ALL": "C.UTF-8",
                "PGAPPNAME": "it-tls"})
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def psql(proxy, user: str, sql: list[str] | str, *, password: str | None = None,
         **params) -> "h.subprocess.CompletedProcess":
    """psql -X -w -At with a conninfo string (host 127.0.0.1 unless given); the password goes
    through PGPASSWORD."""
    conn = {"host": "127.0.0.1", "port": proxy.port, "user": user, "dbname": ts.APP_DB,
            "sslmode": "require"}
    conn.update(params)
    conninfo = " ".join(f"{k}={h._dsn_quote(v)}" for k, v in conn.items() if v is not None)
    cmd = [h.client_bin("psql"), "-X", "-w", "-At", "-d", conninfo]
    for s in [sql] if isinstance(sql, str) else sql:
        cmd += ["-c", s]
    return h.run(cmd, env=clean_env(PGPASSWORD=password))


TENANT_SQL = ("SELECT current_setting('nile.tenant_id', true) || '|' || "
              "coalesce(current_setting('nile.user_id', true), '') || '|' || current_user")


def psycopg_params(proxy, user, password, **kw) -> dict:
    p = dict(host="127.0.0.1", port=proxy.port, user=user, password=password, dbname=ts.APP_DB,
             sslmode="require", connect_timeout=10, autocommit=True)
    p.update(kw)
    return p


def next_error(conn: h.RawConn, sql: str) -> dict:
    """Send a Query and return the first ErrorResponse's fields (the server may have sent it
    before the Query, and may close the connection after it)."""
    try:
        conn.send(h.message(b"Q", sql.encode() + b"\x00"))
    except OSError:
        pass
    while True:
        try:
            tag, body = conn.read_message()
        except (ConnectionError, OSError, ssl.SSLError) as e:
            raise AssertionError(f"connection ended without an ErrorResponse ({e!r})") from e
        if tag == b"E":
            return h.parse_error_fields(body)
        if tag == b"Z":
            raise AssertionError(f"{sql!r} completed without error")


# =============================================================================================
# TLS to clients


def test_ssl_request_answered_s_and_plain_refused_when_required(tp, pki):
    with h.RawConn(tp.connect_host, tp.port) as raw:
        assert raw.negotiate(h.SSL_CODE) == b"S"
    # a GSSENCRequest (libpq's gssencmode=prefer) is declined, then SSLRequest still works
    with h.RawConn(tp.connect_host, tp.port) as raw:
        assert raw.negotiate(h.GSSENC_CODE) == b"N"
        assert raw.negotiate(h.SSL_CODE) == b"S"
    r = refusal(tp, pki, "alice", PASSWORDS["alice"], plain=True)
    assert r.fields.get("S") == "FATAL" and r.sqlstate == "28000", r.fields
    assert "TLS is required" in r.fields.get("M", ""), r.fields
    # psql with sslmode=disable: the same refusal
    res = psql(tp, "alice", "SELECT 1", password=PASSWORDS["alice"], sslmode="disable")
    assert res.returncode != 0 and "TLS is required" in res.stderr, res.stderr


def test_psql_sslmode_require(tp):
    res = psql(tp, "alice", [TENANT_SQL, "\\conninfo"], password=PASSWORDS["alice"],
               sslmode="require")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{ACME}|{ALICE_UID}|{PROXY_ROLE}", res.stdout
    assert "SSL connection (protocol: TLSv1." in res.stdout, res.stdout


def test_psql_sslmode_verify_full(tp, pki):
    ok = psql(tp, "alice", TENANT_SQL, password=PASSWORDS["alice"], sslmode="verify-full",
              sslrootcert=str(pki.ca.cert), host="localhost", hostaddr="127.0.0.1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{ACME}|{ALICE_UID}|{PROXY_ROLE}"
    # the proxy's certificate does not chain to another CA ...
    bad_ca = psql(tp, "alice", "SELECT 1", password=PASSWORDS["alice"], sslmode="verify-full",
                  sslrootcert=str(pki.evil_ca.cert), host="localhost", hostaddr="127.0.0.1")
    assert bad_ca.returncode != 0 and "certificate verify failed" in bad_ca.stderr, bad_ca.stderr
    # ... and does not name another host
    bad_name = psql(tp, "alice", "SELECT 1", password=PASSWORDS["alice"], sslmode="verify-full",
                    sslrootcert=str(pki.ca.cert), host="db.elsewhere.example.org",
                    hostaddr="127.0.0.1")
    assert bad_name.returncode != 0 and "does not match host name" in bad_name.stderr, \
        bad_name.stderr


def test_psycopg_over_tls(tp, pki, tcluster):
    params = psycopg_params(tp, "alice", PASSWORDS["alice"], host="localhost",
                            hostaddr="127.0.0.1", sslmode="verify-full",
                            sslrootcert=str(pki.ca.cert))
    with psycopg.connect(**params) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(TENANT_SQL).fetchone()[0] == f"{ACME}|{ALICE_UID}|{PROXY_ROLE}"
        ids = {r[0] for r in conn.execute("SELECT id::text FROM todos").fetchall()}
        assert ids == tcluster.todo_ids(ACME)


def test_psycopg_direct_tls_negotiation(tp, pki):
    """libpq >= 17 sslnegotiation=direct: the TLS ClientHello (ALPN postgresql) comes first."""
    if psycopg.pq.version() < 170000:
        pytest.skip(f"psycopg's libpq {psycopg.pq.version()} has no sslnegotiation=direct")
    params = psycopg_params(tp, "alice", PASSWORDS["alice"], host="localhost",
                            hostaddr="127.0.0.1", sslmode="verify-full",
                            sslrootcert=str(pki.ca.cert), sslnegotiation="direct")
    with psycopg.connect(**params) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ACME


def test_asyncpg_over_tls(tp, pki):
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))

    async def go():
        conn = await asyncpg.connect(host="127.0.0.1", port=tp.port, user="bob",
                                     password=PASSWORDS["bob"], database=ts.APP_DB, ssl=ctx,
                                     timeout=15)
        try:
            return (await conn.fetchval("SELECT current_setting('nile.tenant_id')"),
                    await conn.fetchval("SELECT count(*) FROM todos"))
        finally:
            await conn.close()

    tid, n = asyncio.run(go())
    assert tid == GLOBEX
    assert n >= 1


def test_per_user_require_tls_false_allows_plain(tp, pki):
    res = psql(tp, "plainu", TENANT_SQL, password=PASSWORDS["plainu"], sslmode="disable")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(f"{ACME}|"), res.stdout
    conn = login(tp, pki, "plainu", PASSWORDS["plainu"], plain=True)
    try:
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()
    # the same user over TLS works too
    assert session_ok(tp, pki, "plainu", PASSWORDS["plainu"])[0] == ACME
    # and the override is per user: alice still may not connect in plain
    assert refusal(tp, pki, "alice", PASSWORDS["alice"], plain=True).sqlstate == "28000"


def test_direct_tls_with_alpn(tp, pki):
    conn = tls_conn(tp, pki, mode="direct")
    try:
        assert conn.sock.selected_alpn_protocol() == "postgresql"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        conn.startup("alice", PASSWORDS["alice"], ts.APP_DB)
        assert tenant_of(conn)[0] == ACME
        assert conn.query("SELECT 40 + 2") == [["42"]]
    finally:
        conn.terminate()


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "alpn-http1.1"])
def test_direct_tls_without_postgresql_alpn_refused(tp, pki, alpn):
    ctx = tls.client_context(pki.ca.cert, alpn=alpn)
    got_session = False
    try:
        conn = tls.TLSRawConn(tp.connect_host, tp.port, ctx, mode="direct",
                              server_hostname="localhost")
    except (ssl.SSLError, ConnectionError, OSError):
        return  # handshake refused: what we want
    try:
        assert conn.sock.selected_alpn_protocol() != "postgresql"
        try:
            conn.startup("alice", PASSWORDS["alice"], ts.APP_DB)
            got_session = True
        except h.PGError as e:
            assert e.sqlstate in ("08P01", "28000"), e.fields
        except (ssl.SSLError, ConnectionError, OSError):
            pass
    finally:
        conn.close()
    assert not got_session, "direct TLS without ALPN postgresql got a session"


def test_tls_1_1_client_refused_1_2_accepted(tp, pki):
    old = dict(min_version=ssl.TLSVersion.TLSv1, max_version=ssl.TLSVersion.TLSv1_1,
               seclevel0=True)
    # control: this client context really speaks TLS 1.1 to a server that allows it
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    sctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    sctx.minimum_version = ssl.TLSVersion.TLSv1
    result = {}
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)

        def serve():
            a, _ = lsock.accept()
            try:
                with sctx.wrap_socket(a, server_side=True) as w:
                    result["server"] = w.version()
            except Exception as e:  # noqa: BLE001
                result["server"] = repr(e)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with tls.client_context(pki.ca.cert, **old).wrap_socket(
                socket.create_connection(lsock.getsockname(), timeout=10),
                server_hostname="localhost") as c:
            assert c.version() == "TLSv1.1"
        t.join(10)
    assert result.get("server") == "TLSv1.1", result
    # the proxy refuses it (SSLRequest answered 'S', then the handshake fails)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c = tls_conn(tp, pki, **old)
        try:
            c.startup("alice", PASSWORDS["alice"], ts.APP_DB)
        finally:
            c.close()
    # a TLS 1.2-only client is fine
    conn = login(tp, pki, "alice", PASSWORDS["alice"], min_version=ssl.TLSVersion.TLSv1_2,
                 max_version=ssl.TLSVersion.TLSv1_2)
    try:
        assert conn.sock.version() == "TLSv1.2"
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()


def test_min_version_1_3(make_tlsproxy, pki):
    p = make_tlsproxy(tls={"min_version": "1.3"})
    r = refusal(p, pki, "alice", PASSWORDS["alice"], max_version=ssl.TLSVersion.TLSv1_2)
    assert r.exc is not None and not r.fields, f"expected a TLS handshake failure: {r}"
    conn = login(p, pki, "alice", PASSWORDS["alice"])
    try:
        assert conn.sock.version() == "TLSv1.3"
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()


def test_certificate_reloaded_on_sighup(make_tlsproxy, pki, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    os.chmod(key, 0o600)
    p = make_tlsproxy(tls={"cert_file": str(cert), "key_file": str(key)})
    first = login(p, pki, "alice", PASSWORDS["alice"])
    assert first.peer_cert_der == pki.server.der()
    # replace certificate and key (atomic renames), then SIGHUP
    for src, dst in ((pki.server2.cert, cert), (pki.server2.key, key)):
        tmp = dst.with_suffix(".new")
        shutil.copy(src, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dst)
    p.sighup()

    def served_cert():
        c = tls_conn(p, pki)
        try:
            return c.peer_cert_der
        finally:
            c.close()

    h.wait_until(lambda: served_cert() == pki.server2.der(), 30,
                 "the proxy to serve the new certificate after SIGHUP")
    # new sessions work with it; the session opened before the reload is untouched
    assert session_ok(p, pki, "alice", PASSWORDS["alice"])[0] == ACME
    try:
        assert tenant_of(first)[0] == ACME
    finally:
        first.terminate()
    assert p.alive()


# =============================================================================================
# SCRAM-SHA-256 and SCRAM-SHA-256-PLUS


def test_scram_plus_psql_channel_binding(tp):
    ok = psql(tp, "alice", TENANT_SQL, password=PASSWORDS["alice"], sslmode="require",
              channel_binding="require")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(f"{ACME}|")
    wrong = psql(tp, "alice", "SELECT 1", password=WRONG, sslmode="require",
                 channel_binding="require")
    assert wrong.returncode != 0
    assert 'password authentication failed for user "alice"' in wrong.stderr, wrong.stderr
    # channel binding cannot exist without TLS: libpq refuses, nothing is downgraded
    plain = psql(tp, "plainu", "SELECT 1", password=PASSWORDS["plainu"], sslmode="disable",
                 channel_binding="require")
    assert plain.returncode != 0, plain.stdout
    assert "channel binding" in plain.stderr, plain.stderr


def test_scram_plus_offered_over_tls_only(tp, pki):
    c = tls_conn(tp, pki)
    try:
        mechs = tls.sasl_mechanisms(c, "alice", ts.APP_DB)
    finally:
        c.close()
    assert "SCRAM-SHA-256-PLUS" in mechs and "SCRAM-SHA-256" in mechs, mechs
    with h.RawConn(tp.connect_host, tp.port) as raw:
        mechs = tls.sasl_mechanisms(raw, "plainu", ts.APP_DB)
    assert mechs == ["SCRAM-SHA-256"], mechs


@pytest.mark.timeout_s(300)
def test_damaged_log_ins_over_tls(tp, pki):
    """The log-in fuzzing of test_fuzz.py over TLS (SSLRequest or direct TLS): damaged start-up
    packets, SASL mechanisms and lengths, SCRAM-SHA-256-PLUS messages with the connection's
    channel binding data and without. Only whole messages and well-formed errors come back, the
    server never leaves the client waiting, and a real log-in works afterwards."""
    r = random.Random(f"{fz.SEED}-tls-log-in")
    for i in range(max(1, fz.ITERS // 2)):
        sent: list[bytes] = []

        def what():
            return f"seed {fz.SEED} iteration {i}: {sent!r}\n--- proxy stderr ---\n{tp.stderr()}"

        conn = tls_conn(tp, pki, mode=r.choice(["ssl_request", "direct"]))
        try:
            if r.random() < 0.6:
                binding = tls.tls_server_end_point(conn.peer_cert_der)
                fz.damaged_log_in(r, conn, "alice", ts.APP_DB, sent, what,
                                  gs2=b"p=tls-server-end-point,,", binding=binding,
                                  mechanisms=(b"SCRAM-SHA-256-PLUS",), half_close=False)
            else:
                fz.damaged_log_in(r, conn, "alice", ts.APP_DB, sent, what,
                                  gs2=r.choice([b"n,,", b"y,,"]), half_close=False)
        except ssl.SSLError:
            pass   # a damaged stream inside TLS: the TLS layer ends it
        finally:
            conn.close()
        assert tp.alive(), what()
    assert session_ok(tp, pki, "alice", PASSWORDS["alice"])[0] == ACME


def test_scram_plus_channel_binding_is_checked(tp, pki):
    c = tls_conn(tp, pki)
    try:
        c.startup_plus("alice", PASSWORDS["alice"], ts.APP_DB)
        assert tenant_of(c)[0] == ACME
    finally:
        c.terminate()
    # binding data of another certificate (a man in the middle's view) -> refused
    c = tls_conn(tp, pki)
    try:
        with pytest.raises(h.PGError) as ei:
            c.startup_plus("alice", PASSWORDS["alice"], ts.APP_DB,
                           cbind_data=tls.tls_server_end_point(pki.evil_server.der()))
        assert ei.value.fields["S"] == "FATAL"
        assert ei.value.sqlstate in ("28000", "28P01", "08P01"), ei.value.fields
    finally:
        c.close()
    # 'y' (client supports binding, thinks the server does not) while PLUS was offered ->
    # a downgrade (RFC 5802 6): refused
    c = tls_conn(tp, pki)
    try:
        with pytest.raises(h.PGError) as ei:
            c.startup_plus("alice", PASSWORDS["alice"], ts.APP_DB, flag="y")
        assert ei.value.sqlstate in ("28000", "28P01", "08P01"), ei.value.fields
    finally:
        c.close()
    # a wrong password with PLUS: the uniform answer
    c = tls_conn(tp, pki)
    try:
        with pytest.raises(h.PGError) as ei:
            c.startup_plus("alice", WRONG, ts.APP_DB)
        assert_auth_failed(Refused(ei.value.fields), "alice")
    finally:
        c.close()


def test_scram_right_and_wrong_over_tls(tp, pki):
    conn = login(tp, pki, "bob", PASSWORDS["bob"])
    try:
        assert conn.auth_codes[0] == 10
        assert tenant_of(conn) == (GLOBEX, BOB_UID, PROXY_ROLE)
    finally:
        conn.terminate()
    assert_auth_failed(refusal(tp, pki, "bob", WRONG), "bob")
    assert_auth_failed(refusal(tp, pki, "nosuchuser", WRONG), "nosuchuser")


# =============================================================================================
# md5, password


def test_md5_user(tp, pki):
    conn = login(tp, pki, "md5u", PASSWORDS["md5u"])
    try:
        assert conn.auth_codes == [5, 0], conn.auth_codes
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()
    res = psql(tp, "md5u", TENANT_SQL, password=PASSWORDS["md5u"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{ACME}|")
    assert_auth_failed(refusal(tp, pki, "md5u", WRONG), "md5u")
    res = psql(tp, "md5u", "SELECT 1", password=WRONG)
    assert res.returncode != 0 and 'password authentication failed for user "md5u"' in res.stderr


def test_password_method_over_tls(tp, pki):
    conn = login(tp, pki, "pwu", PASSWORDS["pwu"])
    try:
        assert conn.auth_codes == [3, 0], conn.auth_codes
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()
    res = psql(tp, "pwu", TENANT_SQL, password=PASSWORDS["pwu"])
    assert res.returncode == 0, res.stderr
    assert_auth_failed(refusal(tp, pki, "pwu", WRONG), "pwu")


def test_password_method_refused_on_plain(tp, pki):
    """pwu has require_tls = false, but a cleartext password never crosses a plain connection:
    refused with 28000 before the password is asked for."""
    with h.RawConn(tp.connect_host, tp.port) as raw:
        with pytest.raises(h.PGError) as ei:
            raw.startup("pwu", PASSWORDS["pwu"], ts.APP_DB)
        assert 3 not in raw.auth_codes, "the proxy asked for a cleartext password without TLS"
    assert ei.value.fields["S"] == "FATAL" and ei.value.sqlstate == "28000", ei.value.fields
    res = psql(tp, "pwu", "SELECT 1", password=PASSWORDS["pwu"], sslmode="disable")
    assert res.returncode != 0


def test_rule_chooses_password_method(tp, pki):
    conn = login(tp, pki, "pwrule", PASSWORDS["pwrule"])
    try:
        assert conn.auth_codes == [3, 0], "the rule's method (password) was not used"
    finally:
        conn.terminate()
    assert_auth_failed(refusal(tp, pki, "pwrule", WRONG), "pwrule")


# =============================================================================================
# client certificates


def test_cert_login_by_cn(tp, pki):
    conn = login(tp, pki, "certu", None, cert=pki.clients["alice"])
    try:
        assert conn.auth_codes == [0], f"a password was asked for: {conn.auth_codes}"
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()
    c = pki.clients["alice"]
    res = psql(tp, "certu", TENANT_SQL, sslmode="verify-full", host="localhost",
               hostaddr="127.0.0.1", sslrootcert=str(pki.ca.cert), sslcert=str(c.cert),
               sslkey=str(c.key))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{ACME}|")


def test_cert_login_by_san(tp, pki):
    conn = login(tp, pki, "certu", None, cert=pki.clients["svc"])
    try:
        assert conn.auth_codes == [0]
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()


def test_cert_names_default_to_user_name(tp, pki):
    conn = login(tp, pki, "certdef", None, cert=pki.clients["certdef"])
    conn.terminate()
    r = refusal(tp, pki, "certdef", None, cert=pki.clients["alice"])
    assert r.sqlstate in ("28000", "28P01"), r


def test_cert_from_untrusted_ca_refused(tp, pki):
    # CN alice, same issuer name as the test CA, other key
    r = refusal(tp, pki, "certu", None, cert=pki.evil_alice)
    if r.fields:
        assert r.sqlstate in ("28000", "28P01"), r.fields
    res = psql(tp, "certu", "SELECT 1", sslmode="require", sslcert=str(pki.evil_alice.cert),
               sslkey=str(pki.evil_alice.key))
    assert res.returncode != 0, res.stdout


def test_cert_cn_not_in_cert_names_refused(tp, pki):
    r = refusal(tp, pki, "certu", None, cert=pki.clients["mallory"])
    assert r.sqlstate in ("28000", "28P01"), r
    assert r.fields.get("S") == "FATAL"


def test_cert_user_without_certificate_refused(tp, pki):
    c = tls_conn(tp, pki)
    try:
        with pytest.raises(h.PGError) as ei:
            c.startup("certu", "some-password", ts.APP_DB)
        assert ei.value.sqlstate in ("28000", "28P01"), ei.value.fields
        assert 3 not in c.auth_codes and 10 not in c.auth_codes, \
            f"a cert user was asked for a password: {c.auth_codes}"
    finally:
        c.close()


def test_certificate_does_not_replace_a_password(tp, pki):
    """A verified certificate with CN alice does not log in the SCRAM user alice."""
    c = tls_conn(tp, pki, cert=pki.clients["alice"])
    try:
        mechs = tls.sasl_mechanisms(c, "alice", ts.APP_DB)
        assert "SCRAM-SHA-256" in mechs
    finally:
        c.close()
    assert_auth_failed(refusal(tp, pki, "alice", WRONG, cert=pki.clients["alice"]), "alice")


# =============================================================================================
# rules, trust


def test_reject_rule(tp, pki):
    r = refusal(tp, pki, "rejected", PASSWORDS["rejected"])
    assert r.fields.get("S") == "FATAL" and r.sqlstate == "28000", r
    res = psql(tp, "rejected", "SELECT 1", password=PASSWORDS["rejected"])
    assert res.returncode != 0


def test_rule_address_cidr(tp, pki):
    # rule for 10.0.0.0/8 does not match a loopback client: the user's own method applies
    assert session_ok(tp, pki, "addrok", PASSWORDS["addrok"])[0] == ACME
    # rule for 127.0.0.0/8 matches
    r = refusal(tp, pki, "addrno", PASSWORDS["addrno"])
    assert r.sqlstate == "28000", r


def test_rule_database(tp, pki):
    assert session_ok(tp, pki, "dbrule", PASSWORDS["dbrule"], db=ts.APP_DB)[0] == ACME
    r = refusal(tp, pki, "dbrule", PASSWORDS["dbrule"], db="acme")
    assert r.sqlstate == "28000", r


TRUST_USERS = {"trustu": {"auth": "trust", "mode": "pinned", "tenants": ["acme"]}}


def test_trust_only_on_loopback_when_configured(make_tlsproxy, pki):
    ip = tls.non_loopback_ipv4()
    users = {**standard_users(), **TRUST_USERS}
    p = make_tlsproxy(users=users, listen_host="0.0.0.0", auth={"trust_loopback": True},
                      rules=[])
    conn = login(p, pki, "trustu", None)
    try:
        assert conn.auth_codes == [0]
        assert tenant_of(conn)[0] == ACME
    finally:
        conn.terminate()
    if ip is None:
        pytest.skip("no non-loopback address to connect from (loopback part passed)")
    p.connect_host = ip
    try:
        r = refusal(p, pki, "trustu", None, sni=None, verify=False)
        assert r.sqlstate in ("28000", "28P01"), r
    finally:
        p.connect_host = "127.0.0.1"


def test_trust_refused_without_trust_loopback(make_tlsproxy, pki):
    users = {**standard_users(), **TRUST_USERS}
    p = make_tlsproxy(users=users, auth={"trust_loopback": False}, start=False)
    chk = p.check_config()
    if chk.returncode != 0:
        # refused as a configuration problem: acceptable, as long as it says why
        assert "trust" in (chk.stdout + chk.stderr).lower(), chk.stdout + chk.stderr
        return
    p.start()
    r = refusal(p, pki, "trustu", None)
    assert r.sqlstate in ("28000", "28P01"), r


# =============================================================================================
# failure delay, lockout


def test_failure_delay_is_a_lower_bound(make_tlsproxy, pki, keys, claims):
    delay_ms = 600
    p = make_tlsproxy(auth={"failure_delay_ms": delay_ms})
    bad_token = keys.remember(keys.rogue_rsa.sign(claims.make(ACME, "x")))
    cases = {
        "wrong password": lambda: refusal(p, pki, "alice", WRONG),
        "unknown user": lambda: refusal(p, pki, "nobody", WRONG),
        "reject rule": lambda: refusal(p, pki, "rejected", PASSWORDS["rejected"]),
        "bad token": lambda: refusal(p, pki, "jwtu", bad_token),
        "wrong certificate": lambda: refusal(p, pki, "certu", None, cert=pki.clients["mallory"]),
        "md5 wrong": lambda: refusal(p, pki, "md5u", WRONG),
    }
    for name, fn in cases.items():
        elapsed, res = tls.monotonic_elapsed(fn)
        assert isinstance(res, Refused), f"{name}: {res!r}"
        assert elapsed >= delay_ms / 1000.0, f"{name} was answered after {elapsed:.3f}s"


def test_lockout_after_failures(make_tlsproxy, pki):
    p = make_tlsproxy(listen_host="0.0.0.0",
                      auth={"failure_delay_ms": 0, "lockout_failures": 3,
                            "lockout_window_seconds": 60, "lockout_seconds": 300})
    for _ in range(3):
        assert_auth_failed(refusal(p, pki, "alice", WRONG), "alice")
    for user in ("alice", "bob"):   # the address is locked, whoever logs in
        r = refusal(p, pki, user, PASSWORDS[user])
        assert r.fields.get("S") == "FATAL" and r.sqlstate == "28000", r
        assert "too many failed logins" in r.fields.get("M", ""), r.fields
    # still locked (no expiry within the test)
    assert "too many failed logins" in refusal(p, pki, "alice", PASSWORDS["alice"]
                                               ).fields.get("M", "")
    ip = tls.non_loopback_ipv4()
    if ip is None:
        return
    # another client address is not affected
    p.connect_host = ip
    try:
        assert session_ok(p, pki, "bob", PASSWORDS["bob"], sni=None, verify=False)[0] == GLOBEX
    finally:
        p.connect_host = "127.0.0.1"


# =============================================================================================
# JWT as the password

ALGS = ["RS256", "ES256", "EdDSA", "HS256"]


def key_for(keys, alg):
    return {"RS256": keys.rsa, "ES256": keys.ec, "EdDSA": keys.ed, "HS256": keys.hs}[alg]


@pytest.mark.parametrize("alg", ALGS)
def test_jwt_psql_verify_full(tp, pki, keys, claims, alg):
    token = keys.remember(key_for(keys, alg).sign(claims.make("acme", ALICE_UID)))
    res = psql(tp, "jwtu", [TENANT_SQL, "SELECT count(*) FROM todos"], password=token,
               sslmode="verify-full", sslrootcert=str(pki.ca.cert), host="localhost",
               hostaddr="127.0.0.1")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{ACME}|{ALICE_UID}|{PROXY_ROLE}", res.stdout
    assert int(lines[1]) >= 1


@pytest.mark.parametrize("alg", ALGS)
def test_jwt_psycopg(tp, keys, claims, alg):
    token = keys.remember(key_for(keys, alg).sign(claims.make(GLOBEX, BOB_UID)))
    with psycopg.connect(**psycopg_params(tp, "jwtu", token)) as conn:
        assert conn.execute(TENANT_SQL).fetchone()[0] == f"{GLOBEX}|{BOB_UID}|{PROXY_ROLE}"
        rows = conn.execute("SELECT DISTINCT tenant_id::text FROM todos").fetchall()
        assert rows == [(GLOBEX,)], rows


def hostile_tokens(keys, claims) -> dict[str, str]:
    good = claims.make("acme", ALICE_UID)
    signed = keys.rsa.sign(good)
    rsa_pem = keys.rsa.public_pem()
    return {
        "expired": keys.rsa.sign(claims.make("acme", ALICE_UID, exp_in=-600)),
        "not_yet_valid": keys.rsa.sign(claims.make("acme", ALICE_UID, nbf_in=600)),
        "wrong_issuer": keys.rsa.sign(claims.make("acme", ALICE_UID, iss="https://evil.test/")),
        "no_issuer": keys.rsa.sign(claims.make("acme", ALICE_UID, iss=None)),
        "wrong_audience": keys.ec.sign(claims.make("acme", ALICE_UID, aud="another-service")),
        "no_expiry": keys.rsa.sign(claims.make("acme", ALICE_UID, exp_in=None)),
        "wrong_key_known_kid": keys.rogue_rsa.sign(good),            # kid rsa-1, other key
        "wrong_key_unknown_kid": keys.rogue_rsa.sign(good, kid="rsa-unknown"),
        "wrong_hs256_secret": J.hs256_with_secret(good, secrets.token_bytes(48)),
        "alg_none": J.unsigned_token(good),
        "alg_none_with_kid": J.unsigned_token(good, {"kid": "rsa-1"}),
        "alg_none_uppercase": J.unsigned_token(good, {"alg": "NONE"}),
        "hs256_with_rsa_public_pem": J.hs256_with_secret(good, rsa_pem, {"kid": "rsa-1"}),
        "hs256_with_rsa_public_pem_no_kid": J.hs256_with_secret(good, rsa_pem),
        "tampered_payload": J.tamper_payload(signed, tenant_id="globex"),
        "tampered_exp": J.tamper_payload(keys.rsa.sign(claims.make("acme", ALICE_UID,
                                                                   exp_in=-600)),
                                         exp=int(time.time()) + 3600),
        "alg_header_swapped": J.replace_header(signed, alg="ES256"),
        "ec_signature_under_rsa_kid": keys.ec.sign(good, kid="rsa-1"),
        "stripped_signature": signed.rsplit(".", 1)[0] + ".",
        "garbage": "not-a-jwt",
        "empty": "",
    }


HOSTILE = ["expired", "not_yet_valid", "wrong_issuer", "no_issuer", "wrong_audience", "no_expiry",
           "wrong_key_known_kid", "wrong_key_unknown_kid", "wrong_hs256_secret", "alg_none",
           "alg_none_with_kid", "alg_none_uppercase", "hs256_with_rsa_public_pem",
           "hs256_with_rsa_public_pem_no_kid", "tampered_payload", "tampered_exp",
           "alg_header_swapped", "ec_signature_under_rsa_kid", "stripped_signature", "garbage",
           "empty"]


@pytest.mark.parametrize("name", HOSTILE)
def test_jwt_hostile_token_refused(tp, pki, keys, claims, name):
    token = hostile_tokens(keys, claims)[name]
    if token:
        keys.remember(token)
    r = refusal(tp, pki, "jwtu", token)
    assert_auth_failed(r, "jwtu")
    if token:
        for v in r.fields.values():
            assert token not in v, "the token was echoed in the error"


def test_jwt_hostile_tokens_with_psql(tp, pki, keys, claims):
    toks = hostile_tokens(keys, claims)
    for name in ("alg_none", "hs256_with_rsa_public_pem", "expired", "tampered_payload"):
        res = psql(tp, "jwtu", "SELECT 1", password=toks[name], sslmode="verify-full",
                   sslrootcert=str(pki.ca.cert), host="localhost", hostaddr="127.0.0.1")
        assert res.returncode != 0, f"{name}: {res.stdout}"
        assert 'password authentication failed for user "jwtu"' in res.stderr, res.stderr


def test_jwt_tenant_the_user_may_not_use(tp, pki, keys, claims):
    token = keys.remember(keys.rsa.sign(claims.make("globex", BOB_UID)))
    r = refusal(tp, pki, "jwtacme", token)
    assert r.fields.get("S") == "FATAL" and r.sqlstate == "28000", r
    assert "not found" in r.fields.get("M", ""), r.fields
    # the same token is fine for a user who may use any tenant, and jwtacme with an acme token
    assert session_ok(tp, pki, "jwtu", token)[0] == GLOBEX
    ok = keys.remember(keys.rsa.sign(claims.make("acme-corp", ALICE_UID)))   # by alias
    assert session_ok(tp, pki, "jwtacme", ok)[0] == ACME
    unknown = keys.remember(keys.rsa.sign(claims.make("no-such-tenant", ALICE_UID)))
    r = refusal(tp, pki, "jwtu", unknown)
    assert r.sqlstate == "28000" and "not found" in r.fields.get("M", ""), r


def test_jwt_user_must_be_a_jwt_user(tp, pki, keys, claims):
    """A valid token is not a password for a SCRAM user."""
    token = keys.remember(keys.rsa.sign(claims.make("acme", ALICE_UID)))
    assert_auth_failed(refusal(tp, pki, "alice", token), "alice")


def test_jwt_refused_on_plain_connection(tp, pki, keys, claims):
    token = keys.remember(keys.rsa.sign(claims.make("acme", ALICE_UID)))
    with h.RawConn(tp.connect_host, tp.port) as raw:
        with pytest.raises(h.PGError) as ei:
            raw.startup("jwtplain", token, ts.APP_DB)
        assert 3 not in raw.auth_codes, "the token was asked for on a plain connection"
    assert ei.value.sqlstate == "28000", ei.value.fields
    assert session_ok(tp, pki, "jwtplain", token)[0] == ACME


def test_jwt_tenant_conflicts(tp, pki, keys, claims):
    token = keys.remember(keys.rsa.sign(claims.make("acme", ALICE_UID)))
    for kw in ({"options": "-c nile.tenant_id=globex"},
               {"db": "globex"},
               {"sni": f"globex.{SNI_DOMAIN}"}):
        r = refusal(tp, pki, "jwtu", token, **kw)
        assert r.fields.get("S") == "FATAL" and r.sqlstate == "28000", (kw, r)
        assert "disagree" in r.fields.get("M", ""), (kw, r.fields)
    r = refusal(tp, pki, "jwtu.globex", token)
    assert r.sqlstate in ("28000", "28P01"), r
    # agreeing sources are fine
    assert session_ok(tp, pki, "jwtu", token, options=f"-c nile.tenant_id={ACME}")[0] == ACME
    assert session_ok(tp, pki, "jwtu", token, sni=f"acme.{SNI_DOMAIN}")[0] == ACME


def test_jwt_user_claim_sets_user_id_for_members_only(tp, pki, keys, claims):
    member = keys.remember(keys.ec.sign(claims.make("acme", ALICE_UID)))
    assert session_ok(tp, pki, "jwtu", member) == (ACME, ALICE_UID, PROXY_ROLE)
    # BOB is a member of globex, not of acme: no nile.user_id
    stranger = keys.remember(keys.ec.sign(claims.make("acme", BOB_UID)))
    tid, uid, _ = session_ok(tp, pki, "jwtu", stranger)
    assert tid == ACME and uid in (None, ""), uid
    unknown = keys.remember(keys.ec.sign(claims.make("acme", str(uuid.uuid4()))))
    tid, uid, _ = session_ok(tp, pki, "jwtu", unknown)
    assert tid == ACME and uid in (None, ""), uid
    # and the user claim is not a way to inject SQL
    evil = keys.remember(keys.ec.sign(claims.make("acme", "x'; DROP TABLE todos; --")))
    try:
        tid, uid, _ = session_ok(tp, pki, "jwtu", evil)
        assert tid == ACME and uid in (None, ""), uid
    except Refused as r:
        assert r.sqlstate in ("28000", "28P01"), r


def test_jwt_nested_claims_and_secret_from_env(make_tlsproxy, pki, keys, claims):
    p = make_tlsproxy(jwt={"tenant_claim": "org.tenant", "user_claim": "profile.uid",
                           "hs256_secret_file": None, "hs256_secret_env": "TP_TEST_HS256"},
                      env={"TP_TEST_HS256": keys.hs_secret.decode()})
    c = claims.make("globex", None, tenant_claim="org.tenant",
                    extra={"profile": {"uid": BOB_UID}})
    c["org"]["name"] = "Globex"
    for k in (keys.rsa, keys.hs):
        token = keys.remember(k.sign(c))
        assert session_ok(p, pki, "jwtu", token) == (GLOBEX, BOB_UID, PROXY_ROLE)
    # the top-level tenant_id claim is not the configured one
    flat = keys.remember(keys.rsa.sign(claims.make("acme", ALICE_UID)))
    r = refusal(p, pki, "jwtu", flat)
    assert r.sqlstate in ("28000", "28P01"), r


def test_jwks_url_with_rotation(make_tlsproxy, pki, keys, claims):
    server = J.JWKSServer()
    try:
        key_a = J.SigningKey.generate("RS256", "rot-a")
        key_b = J.SigningKey.generate("ES256", "rot-b")
        server.set_keys(key_a)
        p = make_tlsproxy(jwt={"jwks_file": None, "jwks_url": server.url,
                               "jwks_refresh_seconds": 3600, "unknown_kid_refetch_seconds": 1})
        token_a = keys.remember(key_a.sign(claims.make("acme", ALICE_UID)))
        # the first fetch may still be on its way: poll
        h.wait_until(lambda: session_ok(p, pki, "jwtu", token_a)[0] == ACME, 30,
                     "a token signed with the served key A to be accepted")
        assert server.hit_count() >= 1
        # rotate: the IdP now serves only key B (new kid)
        server.set_keys(key_b)
        token_b = keys.remember(key_b.sign(claims.make("globex", BOB_UID)))

        def b_accepted():
            try:
                return session_ok(p, pki, "jwtu", token_b)[0] == GLOBEX
            except Refused as r:
                assert_auth_failed(r, "jwtu")   # until the refetch: the uniform answer
                return False

        h.wait_until(b_accepted, 60, "a token signed with the rotated-in key B to be accepted",
                     interval=0.5)
        # key A is gone from the served set: its tokens no longer log in
        assert_auth_failed(refusal(p, pki, "jwtu", token_a), "jwtu")
        keys.secrets_extra = [key_a.private_marker(), key_b.private_marker()]
    finally:
        server.close()


def test_jwks_file_must_not_accept_symmetric_keys_as_hs256(make_tlsproxy, pki, keys, claims,
                                                           tmp_path):
    """An 'oct' key in the JWKS is not a way to get HS256 accepted (HS256 only with the
    configured shared secret): with no shared secret configured, HS256 is refused."""
    oct_secret = secrets.token_bytes(48)
    jwks = J.jwks(keys.rsa)
    jwks["keys"].append({"kty": "oct", "kid": "oct-1", "alg": "HS256",
                         "k": J.b64url(oct_secret)})
    f = tmp_path / "jwks-oct.json"
    f.write_text(__import__("json").dumps(jwks))
    p = make_tlsproxy(jwt={"jwks_file": str(f), "hs256_secret_file": None})
    token = keys.remember(J.hs256_with_secret(claims.make("acme", ALICE_UID), oct_secret,
                                              {"kid": "oct-1"}))
    assert_auth_failed(refusal(p, pki, "jwtu", token), "jwtu")
    ok = keys.remember(keys.rsa.sign(claims.make("acme", ALICE_UID)))
    assert session_ok(p, pki, "jwtu", ok)[0] == ACME
    hs = keys.remember(keys.hs.sign(claims.make("acme", ALICE_UID)))
    assert_auth_failed(refusal(p, pki, "jwtu", hs), "jwtu")


@pytest.mark.timeout_s(90)
def test_jwt_session_ends_at_transaction_boundary_after_expiry(make_tlsproxy, pki, keys, claims):
    p = make_tlsproxy(jwt={"leeway_seconds": 0})
    exp = int(time.time()) + 4
    token = keys.remember(keys.rsa.sign(claims.make("acme", ALICE_UID, exp_in=None,
                                                    extra={"exp": exp})))
    conn = login(p, pki, "jwtu", token)
    try:
        assert tenant_of(conn)[0] == ACME
        conn.query("BEGIN")
        n = 0
        # condition wait: keep the transaction busy until the token is surely past exp
        while time.time() < exp + 1.5:
            assert conn.query("SELECT 1") == [["1"]], "a statement failed inside the transaction"
            n += 1
            time.sleep(0.05)
        assert n > 0
        assert conn.query("SELECT 2") == [["2"]]
        conn.query("COMMIT")    # the open transaction finishes normally
        fields = next_error(conn, "SELECT 1")
        assert fields.get("S") == "FATAL", fields
        assert fields.get("C") in ("28000", "08006"), fields
        assert "token expired" in fields.get("M", ""), fields
    finally:
        conn.close()
    # a new login with the expired token is refused
    assert_auth_failed(refusal(p, pki, "jwtu", token), "jwtu")


def connect_with_expiring_token(make_tlsproxy, keys, claims, seconds: int = 3):
    """A psycopg session through a proxy without JWT leeway, its token (globex) expiring
    `seconds` from now; and that exp."""
    p = make_tlsproxy(jwt={"leeway_seconds": 0})
    exp = int(time.time()) + seconds
    token = keys.remember(keys.hs.sign(claims.make("globex", BOB_UID, exp_in=None,
                                                   extra={"exp": exp})))
    return psycopg.connect(**psycopg_params(p, "jwtu", token)), exp


@pytest.mark.timeout_s(90)
def test_jwt_session_ends_after_expiry_psycopg(make_tlsproxy, keys, claims):
    conn, exp = connect_with_expiring_token(make_tlsproxy, keys, claims)
    try:
        assert conn.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == GLOBEX
        deadline = time.monotonic() + 40
        err = None
        while time.monotonic() < deadline:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as e:
                err = e
                break
            time.sleep(0.1)
        assert err is not None, "the session outlived its token"
        assert time.time() >= exp, "the session ended before the token expired"
        assert ts.sqlstate_of(err) in ("28000", "08006"), repr(err)
        assert "token expired" in str(err), str(err)
    finally:
        conn.close()


@pytest.mark.timeout_s(90)
def test_jwt_expiry_during_a_query_is_the_next_querys_error_psycopg(make_tlsproxy, keys, claims):
    """The token expires while a query runs: the query's result arrives whole, and the session's
    end is the answer to the next query (28000 with its text), not an error libpq reads right
    behind the ReadyForQuery, while idle, and reports only as a notice."""
    conn, exp = connect_with_expiring_token(make_tlsproxy, keys, claims)
    try:
        # the query is in flight when the token expires: it still gets its answer
        started = time.time()
        assert conn.execute("SELECT pg_sleep(%s), 1", (exp - started + 1,)).fetchone()[1] == 1
        assert started < exp <= time.time()
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT 1")
        assert ts.sqlstate_of(caught.value) == "28000", repr(caught.value)
        assert "token expired" in str(caught.value), str(caught.value)
    finally:
        conn.close()


# =============================================================================================
# SNI


def test_sni_selects_tenant(tp, pki):
    for name, tid in (("acme", ACME), ("globex", GLOBEX), ("acme-corp", ACME), (GLOBEX, GLOBEX)):
        res = psql(tp, "multi", TENANT_SQL, password=PASSWORDS["multi"], sslmode="verify-full",
                   sslrootcert=str(pki.ca.cert), host=f"{name}.{SNI_DOMAIN}",
                   hostaddr="127.0.0.1")
        assert res.returncode == 0, (name, res.stderr)
        assert res.stdout.strip().startswith(f"{tid}|"), (name, res.stdout)
    params = psycopg_params(tp, "multi", PASSWORDS["multi"], host=f"globex.{SNI_DOMAIN}",
                            hostaddr="127.0.0.1", sslmode="require")
    with psycopg.connect(**params) as conn:
        assert conn.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == GLOBEX
    # without SNI under the domain the user (two tenants) names none: tenant missing
    r = refusal(tp, pki, "multi", PASSWORDS["multi"], sni="localhost")
    assert r.sqlstate == "28000", r


def test_sni_conflicts_and_unknown(tp, pki):
    sni = f"acme.{SNI_DOMAIN}"
    r = refusal(tp, pki, "multi", PASSWORDS["multi"], sni=sni, options="-c nile.tenant_id=globex")
    assert r.sqlstate == "28000" and "disagree" in r.fields.get("M", ""), r
    res = psql(tp, "multi", "SELECT 1", password=PASSWORDS["multi"], sslmode="require",
               host=sni, hostaddr="127.0.0.1", options="-c nile.tenant_id=globex")
    assert res.returncode != 0 and "disagree" in res.stderr, res.stderr
    r = refusal(tp, pki, "multi.globex", PASSWORDS["multi"], sni=sni)
    assert r.sqlstate == "28000" and "disagree" in r.fields.get("M", ""), r
    # agreeing sources
    assert session_ok(tp, pki, "multi", PASSWORDS["multi"], sni=sni,
                      options="-c nile.tenant_id=acme-corp")[0] == ACME
    # unknown tenant, and a tenant the user may not use: the same "not found"
    for name, user in (("nope", "multi"), ("globex", "alice")):
        r = refusal(tp, pki, user, PASSWORDS[user], sni=f"{name}.{SNI_DOMAIN}")
        assert r.sqlstate == "28000" and "not found" in r.fields.get("M", ""), (name, r)


def test_sni_outside_the_domain_is_not_a_tenant(tp, pki):
    # "globex.evil.example.com" is not under tenants.example.com: no tenant from SNI
    r = refusal(tp, pki, "multi", PASSWORDS["multi"], sni="globex.evil.example.com",
                verify=False)
    assert r.sqlstate == "28000" and "disagree" not in r.fields.get("M", ""), r
    # a name that merely ends with the domain's text is not under it either
    r = refusal(tp, pki, "multi", PASSWORDS["multi"], sni="globex.eviltenants.example.com",
                verify=False)
    assert r.sqlstate == "28000", r
    # pinned alice is unaffected by a foreign SNI
    assert session_ok(tp, pki, "alice", PASSWORDS["alice"], sni="db.other.example.org",
                      verify=False)[0] == ACME


# =============================================================================================
# TLS to the upstream


@pytest.fixture(scope="module")
def tls_cluster(pki):
    c = tls.TLSTenancyCluster(pki.server).start()
    yield c
    c.destroy()


def upstream_ssl(proxy, pki) -> bool:
    conn = login(proxy, pki, "alice", PASSWORDS["alice"])
    try:
        (row,) = conn.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert tenant_of(conn)[0] == ACME
        return row[0] == "t"
    finally:
        conn.terminate()


def test_upstream_cluster_requires_tls(tls_cluster, pki):
    """The test's own premise: the TLS cluster refuses tenant_proxy without TLS."""
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host="127.0.0.1", port=tls_cluster.port, user=PROXY_ROLE,
                        password=ts.PROXY_PW, dbname=ts.APP_DB, sslmode="disable",
                        connect_timeout=10).close()
    with psycopg.connect(host="localhost", hostaddr="127.0.0.1", port=tls_cluster.port,
                         user=PROXY_ROLE, password=ts.PROXY_PW, dbname=ts.APP_DB,
                         sslmode="verify-full", sslrootcert=str(pki.ca.cert)) as c:
        assert c.pgconn.ssl_in_use


def test_upstream_tls_disable_fails(make_tlsproxy, tls_cluster, pki):
    p = make_tlsproxy(cluster=tls_cluster, upstream={"tls": "disable"})
    r = refusal(p, pki, "alice", PASSWORDS["alice"])
    assert p.alive(), f"the proxy died; stderr:\n{p.stderr(30)}"
    assert r.sqlstate == "08006", r
    # and it keeps serving
    assert refusal(p, pki, "alice", PASSWORDS["alice"]).sqlstate == "08006"


@pytest.mark.parametrize("mode", ["prefer", "require"])
def test_upstream_tls_prefer_and_require(make_tlsproxy, tls_cluster, pki, mode):
    p = make_tlsproxy(cluster=tls_cluster, upstream={"tls": mode})
    assert upstream_ssl(p, pki)


def test_upstream_tls_require_against_plain_server_fails(make_tlsproxy, pki):
    p = make_tlsproxy(upstream={"tls": "require"})    # tcluster has no TLS
    r = refusal(p, pki, "alice", PASSWORDS["alice"])
    assert r.sqlstate == "08006", r
    # prefer falls back to plain there
    q = make_tlsproxy(upstream={"tls": "prefer"})
    assert upstream_ssl(q, pki) is False


def test_upstream_tls_verify_full(make_tlsproxy, tls_cluster, pki):
    good = make_tlsproxy(cluster=tls_cluster,
                         upstream={"tls": "verify-full", "tls_ca_file": str(pki.ca.cert)})
    assert upstream_ssl(good, pki)
    named = make_tlsproxy(cluster=tls_cluster,
                          upstream={"tls": "verify-full", "tls_ca_file": str(pki.ca.cert),
                                    "tls_server_name": "localhost"})
    assert upstream_ssl(named, pki)
    untrusted = make_tlsproxy(cluster=tls_cluster,
                              upstream={"tls": "verify-full",
                                        "tls_ca_file": str(pki.evil_ca.cert)})
    r = refusal(untrusted, pki, "alice", PASSWORDS["alice"])
    assert r.sqlstate == "08006", r


def test_upstream_tls_server_name_is_verified(make_tlsproxy, tls_cluster, pki):
    """tls_server_name is the name verified: a certificate that does not name it is refused,
    even though it carries an IP SAN equal to the upstream's address (libpq verify-full with a
    host name checks DNS names only)."""
    wrong_name = make_tlsproxy(cluster=tls_cluster,
                               upstream={"tls": "verify-full", "tls_ca_file": str(pki.ca.cert),
                                         "tls_server_name": "db.elsewhere.example.org"})
    r = refusal(wrong_name, pki, "alice", PASSWORDS["alice"])
    assert r.sqlstate == "08006", r


# =============================================================================================
# secrets never in the log (runs last in this module)


def test_zz_no_secret_in_proxy_logs(started, keys, pki):
    assert started, "no proxy ran"
    secrets_list = list(PASSWORDS.values()) + [WRONG, ts.PROXY_PW, ts.OWNER_PW]
    secrets_list += keys.secrets() + getattr(keys, "secrets_extra", [])
    secrets_list += pki.private_key_markers()
    secrets_list += [tls.md5_verifier(PASSWORDS["md5u"], "md5u")]
    # SCRAM verifiers are secret-equivalent: their StoredKey:ServerKey part
    secrets_list += [scram(u).rsplit("$", 1)[1] for u in PASSWORDS]
    secrets_list = [s for s in secrets_list if s and len(s) >= 8]
    for p in started:
        log = p.full_stderr() + (p.stdout_path.read_text(errors="replace")
                                 if p.stdout_path.exists() else "")
        for s in secrets_list:
            assert s not in log, (f"a secret ({s[:6]}...) appears in the log of the proxy in "
                                  f"{p.dir}")
