"""Client authentication (SCRAM-SHA-256 against users.toml), upstream authentication methods,
TLS negotiation answers, hash-password and check-config."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import socket
import struct
import subprocess

import asyncpg
import psycopg
import pytest

import pgharness as h

SCRAM_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


def psql(ep: h.Endpoint, sql: str = "SELECT current_user", **env) -> subprocess.CompletedProcess:
    e = ep.libpq_env(PGPASSFILE="/dev/null", **env)
    return h.run([h.client_bin("psql"), "-X", "-w", "-At", "-c", sql], env=e)


def startup_error(ep: h.Endpoint, user: str, password: str | None) -> h.PGError:
    with h.RawConn(ep.host, ep.port) as raw:
        with pytest.raises(h.PGError) as ei:
            raw.startup(user, password, ep.dbname)
        # after a failed authentication the server closes the connection
        assert h.read_until_closed(raw.sock) == b""
    return ei.value


# ---------------------------------------------------------------------------------------------
# client side


def test_right_password_with_every_client(target):
    r = psql(target)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "proxy_scram"
    with psycopg.connect(target.dsn()) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "proxy_scram", target.dbname)

    async def via_asyncpg():
        conn = await asyncpg.connect(host=target.host, port=target.port, user=target.user,
                                     password=target.password, database=target.dbname, timeout=15)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()
    assert asyncio.run(via_asyncpg()) == "proxy_scram"
    with h.RawConn(target.host, target.port) as raw:
        raw.startup(target.user, target.password, target.dbname)
        assert raw.auth_codes[:1] == [10], "SASL (SCRAM-SHA-256) is what clients are asked for"
        assert raw.query("SELECT 1") == [["1"]]


def test_wrong_password_and_unknown_user_look_the_same(target):
    wrong = startup_error(target, target.user, "definitely-wrong")
    assert wrong.sqlstate == "28P01"
    assert wrong.fields["S"] == "FATAL"
    assert wrong.fields["M"] == f'password authentication failed for user "{target.user}"'
    unknown = startup_error(target, "mallory", "whatever")
    assert unknown.sqlstate == "28P01"
    # no user enumeration: the unknown user gets the very same error
    assert unknown.fields["M"] == 'password authentication failed for user "mallory"'
    assert {k: v for k, v in unknown.fields.items() if k in "SVCMDH"} == {
        k: v.replace(target.user, "mallory") for k, v in wrong.fields.items() if k in "SVCMDH"}
    # and through libpq
    r = psql(target.with_user(target.user, "definitely-wrong"))
    assert r.returncode != 0
    assert f'password authentication failed for user "{target.user}"' in r.stderr
    r = psql(target.with_user("mallory", "whatever"))
    assert r.returncode != 0
    assert 'password authentication failed for user "mallory"' in r.stderr
    # the good password still works afterwards
    assert psql(target).returncode == 0


def test_no_password_is_refused_by_default(target):
    r = psql(target.with_user(target.user, None))
    assert r.returncode != 0
    assert "no password supplied" in r.stderr
    err = startup_error(target, target.user, "")
    assert err.sqlstate == "28P01"


def test_trust_loopback_lets_loopback_clients_in(make_proxy, db):
    p = make_proxy(trust_loopback=True)
    ep = p.endpoint(db, password=None)
    r = psql(ep)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "proxy_scram"
    with h.RawConn(ep.host, ep.port) as raw:
        raw.startup("alice", None, db)
        assert 10 not in raw.auth_codes
        assert raw.query("SELECT 2") == [["2"]]


def non_loopback_ipv4() -> str | None:
    import socket
    # connecting a UDP socket sends nothing; it only picks the outgoing interface's address
    for probe in ("10.255.255.255", "192.0.2.1", "8.8.8.8"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((probe, 9))
            addr = s.getsockname()[0]
        except OSError:
            continue
        finally:
            s.close()
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


def test_trust_loopback_does_not_trust_other_addresses(make_proxy, db):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    p = make_proxy(trust_loopback=True, extra={"server": {"listen_host": "0.0.0.0"}},
                   start=False)
    p.host = "127.0.0.1"  # readiness probe
    p.start()
    ep = h.Endpoint("proxy", addr, p.port, "alice", None, db)
    err = startup_error(ep, "alice", "")
    assert err.sqlstate == "28P01"
    with h.RawConn(addr, p.port) as raw:
        raw.startup("alice", "alicepw", db)
        assert raw.query("SELECT 3") == [["3"]]


# ---------------------------------------------------------------------------------------------
# log-in timeout ([server] login_timeout_seconds) and clients that never speak


def test_clients_that_stall_their_log_in_are_closed(make_proxy, db):
    metrics_port = h.free_port()
    p = make_proxy(extra={"server": {"login_timeout_seconds": 1},
                          "metrics": {"listen_host": "127.0.0.1", "listen_port": metrics_port}})
    ep = p.endpoint(db)
    with psycopg.connect(ep.dsn()) as early:
        # Half a start-up message; a start-up message and no answer to the SCRAM challenge; an
        # SSLRequest answered and then silence.
        half = h.RawConn(ep.host, ep.port, timeout=30)
        half.send(struct.pack("!I", 40) + struct.pack("!I", h.PROTOCOL_3))
        challenged = h.RawConn(ep.host, ep.port, timeout=30)
        challenged.send(h.startup_packet({"user": ep.user, "database": db}))
        tag, body = challenged.read_message()
        assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 10
        negotiated = h.RawConn(ep.host, ep.port, timeout=30)
        assert negotiated.negotiate(h.SSL_CODE) == b"N"
        for raw in (half, challenged, negotiated):
            with raw:
                tag, body = raw.read_message()   # blocks until the proxy gives up on the client
                assert tag == b"E"
                fields = h.parse_error_fields(body)
                assert (fields["S"], fields["C"]) == ("FATAL", "57014"), fields
                assert fields["M"] == "canceling authentication due to timeout"
                assert "server.login_timeout_seconds" in fields["H"]
                assert h.read_until_closed(raw.sock) == b""
        # The client that logged in before them has been idle longer than the limit: untouched.
        assert early.execute("SELECT 1").fetchone() == (1,)
    failures = h.series(h.scrape(metrics_port)[1])
    assert h.sample(failures, "tenant_proxy_auth_failures_total", reason="login_timeout") == 3
    r = psql(ep)
    assert r.returncode == 0, r.stderr


def test_max_client_connections_counts_log_ins_in_progress(make_proxy, pg, db):
    p = make_proxy(extra={"server": {"max_client_connections": 3}})
    ep = p.endpoint(db)
    with h.RawConn(ep.host, ep.port, timeout=30) as one, psycopg.connect(ep.dsn()) as two:
        one.startup(ep.user, ep.password, db)
        with h.RawConn(ep.host, ep.port, timeout=30) as logging_in:
            # Answered, so accepted and counted: two sessions and one log-in make three.
            assert logging_in.negotiate(h.SSL_CODE) == b"N"
            with h.RawConn(ep.host, ep.port, timeout=30) as fourth:
                fourth.send(h.startup_packet({"user": ep.user, "database": db}))
                tag, body = fourth.read_message()
                fields = h.parse_error_fields(body)
                assert tag == b"E" and (fields["S"], fields["C"]) == ("FATAL", "53300"), fields
                assert fields["M"] == "sorry, too many clients already"
                assert h.read_until_closed(fourth.sock) == b""
            # Full, yet a CancelRequest gets through: one's query is cancelled.
            mark = f"cancel_when_full_{secrets.token_hex(4)}"
            one.send(h.message(b"Q", f"SELECT pg_sleep(60) /* {mark} */".encode() + b"\x00"))
            h.wait_until(lambda: pg.active_queries(mark), 30, "the query to run upstream")
            assert h.send_cancel(ep.host, ep.port, one.backend_pid, one.backend_secret) == b""
            error = None
            while (message := one.read_message())[0] != b"Z":
                if message[0] == b"E":
                    error = h.parse_error_fields(message[1])
            assert error and error["C"] == "57014", error
            # The log-in that held the third place finishes and gets it.
            logging_in.startup(ep.user, ep.password, db)
            assert logging_in.query("SELECT 'third'") == [["third"]]
        assert one.query("SELECT 1") == [["1"]]
        assert two.execute("SELECT 2").fetchone() == (2,)


def test_a_client_that_sends_nothing_is_not_accepted(proxy, db):
    """TCP_DEFER_ACCEPT: the kernel keeps a connection that has sent nothing (the server side
    stays SYN-RECV) instead of handing it to the proxy; its first bytes bring it in."""
    ep = proxy.endpoint(db)

    def syn_recv() -> int:
        """Connections to the proxy's port in state SYN_RECV (03), from the kernel's table."""
        rows = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
        return sum(1 for r in rows if int(r[1].split(":")[1], 16) == ep.port and r[3] == "03")

    assert syn_recv() == 0
    with h.RawConn(ep.host, ep.port) as silent:
        assert syn_recv() == 1
        silent.startup(ep.user, ep.password, db)
        assert syn_recv() == 0
        assert silent.query("SELECT 'spoke at last'") == [["spoke at last"]]


class ByteAtATime(h.RawConn):
    """A client whose every byte is a TCP segment of its own (no Nagle)."""

    def __init__(self, host: str, port: int):
        super().__init__(host, port)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes):
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])


def test_log_in_messages_arriving_in_pieces(proxy, db):
    """A start-up packet longer than the proxy's first read (a long application_name), and a
    log-in whose every byte arrives on its own: the proxy kept reading neither (it stopped
    reading a client with half a message before authentication, and the client hung)."""
    ep = proxy.endpoint(db)
    name = "app-" + "x" * 400
    r = psql(ep, "SELECT current_setting('application_name')", PGAPPNAME=name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("app-xxxxxxxxxx"), r.stdout
    with ByteAtATime(ep.host, ep.port) as slow:
        slow.startup(ep.user, ep.password, db, extra={"application_name": name})
        assert slow.query("SELECT 'in pieces'") == [["in pieces"]]


def test_an_oversized_message_before_authentication_is_refused(proxy, db):
    """Before authentication a message may be at most 65,535 bytes (PostgreSQL's limit for
    authentication messages): a longer length is refused at its header, before any body."""
    ep = proxy.endpoint(db)
    with h.RawConn(ep.host, ep.port) as raw:
        raw.send(h.startup_packet({"user": ep.user, "database": db}))
        tag, body = raw.read_message()
        assert (tag, struct.unpack("!I", body[:4])[0]) == (b"R", 10)
        raw.send(b"p" + struct.pack("!I", 65_536 + 4))
        tag, body = raw.read_message()
        assert tag == b"E"
        err = h.parse_error_fields(body)
        assert (err["S"], err["C"]) == ("FATAL", "08P01"), err
        assert h.read_until_closed(raw.sock) == b""
    with h.RawConn(ep.host, ep.port) as raw:
        raw.startup(ep.user, ep.password, db)
        assert raw.query("SELECT 'next one fine'") == [["next one fine"]]


# ---------------------------------------------------------------------------------------------
# TLS / GSS negotiation


def test_sslmode_require_fails_cleanly(target):
    r = psql(target, PGSSLMODE="require")
    assert r.returncode != 0
    assert "server does not support SSL, but SSL was required" in r.stderr
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(target.dsn(sslmode="require")).close()
    assert "does not support SSL" in str(ei.value)
    # sslmode=prefer and disable work
    for mode in ("prefer", "disable", "allow"):
        r = psql(target, PGSSLMODE=mode)
        assert r.returncode == 0, (mode, r.stderr)


def test_ssl_and_gss_requests_answered_n(target):
    with h.RawConn(target.host, target.port) as raw:
        assert raw.negotiate(h.SSL_CODE) == b"N"
        raw.startup(target.user, target.password, target.dbname)
        assert raw.query("SELECT 'after N'") == [["after N"]]
    if target.kind == "proxy":
        # (a Postgres built with GSSAPI may answer 'G' here; the proxy must say 'N')
        with h.RawConn(target.host, target.port) as raw:
            assert raw.negotiate(h.GSSENC_CODE) == b"N"
            assert raw.negotiate(h.SSL_CODE) == b"N"
            raw.startup(target.user, target.password, target.dbname)
            assert raw.query("SELECT 'after GSS N'") == [["after GSS N"]]


# ---------------------------------------------------------------------------------------------
# upstream authentication


def test_direct_roles_use_their_methods(pg, db):
    """The fixture really makes Postgres ask each upstream role for its method."""
    for role, code in (("proxy_scram", 10), ("proxy_md5", 5), ("proxy_plain", 3)):
        with h.RawConn(pg.host, pg.port) as raw:
            raw.startup(role, h.ROLE_PASSWORDS[role], db)
            assert raw.auth_codes[0] == code, role
            assert raw.query("SELECT current_user") == [[role]]
    stored = dict(pg.sql("SELECT rolname, left(rolpassword, 14) FROM pg_authid "
                         "WHERE rolname LIKE 'proxy_%'"))
    assert stored["proxy_md5"].startswith("md5")
    assert stored["proxy_scram"].startswith("SCRAM-SHA-256")


@pytest.mark.parametrize("role,mode", [
    ("proxy_scram", "password"),
    ("proxy_md5", "password"),
    ("proxy_plain", "password"),
    ("proxy_scram", "password_file"),
    ("proxy_md5", "password_env"),
])
def test_upstream_auth_methods(make_proxy, db, role, mode):
    p = make_proxy(upstream_user=role, password_mode=mode)
    ep = p.endpoint(db)
    r = psql(ep, "CREATE TABLE t(x int); INSERT INTO t VALUES (1); SELECT current_user, count(*) FROM t")
    assert r.returncode == 0, r.stderr + p.stderr()
    assert r.stdout.strip().splitlines()[-1] == f"{role}|1"
    with psycopg.connect(p.endpoint(db, "bob", "bobpw").dsn()) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (role,)


def test_upstream_wrong_password_gives_client_an_error(make_proxy, db):
    p = make_proxy(upstream_password="not-the-upstream-password")
    ep = p.endpoint(db)
    with h.RawConn(ep.host, ep.port) as raw:
        with pytest.raises(h.PGError) as ei:
            raw.startup(ep.user, ep.password, db)
    assert ei.value.fields.get("S") in ("FATAL", "ERROR")
    assert ei.value.sqlstate and len(ei.value.sqlstate) == 5
    # no configuration leaks to the client
    assert "not-the-upstream-password" not in str(ei.value.fields)
    assert p.alive()


# ---------------------------------------------------------------------------------------------
# hash-password and check-config


def test_hash_password_makes_working_verifiers(make_proxy, db):
    v1 = h.hash_password("carol pw ü")
    v2 = h.hash_password("carol pw ü", use_stdin=True)
    for v in (v1, v2):
        m = SCRAM_RE.match(v)
        assert m, v
        iterations, salt = int(m.group(1)), base64.b64decode(m.group(2))
        assert iterations >= 4096
        # same salt and iterations -> the verifier Postgres would compute
        assert h.scram_verifier("carol pw ü", iterations, salt) == v
    assert v1 != v2, "each verifier gets a fresh salt"

    users = {"carol": v1, "dave": v2, "erin": h.scram_verifier("erinpw")}
    p = make_proxy(users=users)
    assert psql(p.endpoint(db, "carol", "carol pw ü")).returncode == 0
    assert psql(p.endpoint(db, "dave", "carol pw ü")).returncode == 0
    assert psql(p.endpoint(db, "erin", "erinpw")).returncode == 0
    bad = psql(p.endpoint(db, "carol", "carol pw"))
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    # alice is not in this users file
    bad = psql(p.endpoint(db, "alice", "alicepw"))
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr


def check_config(path) -> subprocess.CompletedProcess:
    return h.run([str(h.proxy_bin()), "check-config", str(path)], timeout=60)


def write_config(tmp_path, pg, users_file_exists=True, **sections):
    cfg, env, files = h.proxy_config(pg)
    for sec, kv in sections.items():
        cfg.setdefault(sec, {}).update(kv)
    (tmp_path / "proxy.toml").write_text(h.render_toml(cfg))
    if users_file_exists:
        (tmp_path / "users.toml").write_text(
            h.render_users({"alice": h.scram_verifier("alicepw")}))
    return tmp_path / "proxy.toml"


def test_check_config_good(tmp_path, pg, proxy_users):
    r = check_config(write_config(tmp_path, pg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize("problem,expect", [
    ({"upstream": {"port": 0}}, ["upstream.port"]),
    ({"server": {"listen_port": 70000}}, ["server.listen_port"]),
    ({"tenancy": {"map_file": "missing-users.toml"}}, ["tenancy.map_file"]),
    ({"server": {"listen_prot": 6432}}, ["server.listen_prot"]),
    ({"upstream": {"port": 0}, "tenancy": {"map_file": "nope.toml"}, "log": {"levle": "info"}},
     ["upstream.port", "tenancy.map_file", "log.levle"]),
], ids=["port-0", "port-too-big", "missing-users-file", "unknown-key", "three-problems"])
def test_check_config_bad(tmp_path, pg, proxy_users, problem, expect):
    path = write_config(tmp_path, pg, **problem)
    r = check_config(path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "OK" not in r.stdout.split()
    problem_lines = [line for line in out.splitlines() if line.strip()]
    for key in expect:
        assert any(key in line for line in problem_lines), f"{key} not named in:\n{out}"
    if len(expect) > 1:
        # one line per problem
        assert len([ln for ln in problem_lines if any(k in ln for k in expect)]) >= len(expect)
    if "upstream.port" in expect:
        assert re.search(r"upstream\.port: .*\(got 0\)", out), out
    # and the proxy refuses to start with it (exits on its own, non-zero, naming the keys)
    run = h.run([str(h.proxy_bin()), "--config", str(path)], timeout=60)
    assert run.returncode != 0
    assert all(key in run.stdout + run.stderr for key in expect)


def test_check_config_unparseable_toml(tmp_path, proxy_users):
    (tmp_path / "proxy.toml").write_text("[server\nlisten_port = = 1\n")
    r = check_config(tmp_path / "proxy.toml")
    assert r.returncode == 1
    assert (r.stdout + r.stderr).strip()
