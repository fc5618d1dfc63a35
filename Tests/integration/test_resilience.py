"""Failures around the proxy: upstream down or dropped, hostile bytes, shutdown."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct

import psycopg
import pytest

import pgharness as h


def collect_errors_until_closed(raw: h.RawConn, timeout: float = 20) -> tuple[list[dict], bool]:
    """Read what the server sends until it closes; returns (ErrorResponse fields, closed)."""
    raw.sock.settimeout(timeout)
    errors = []
    try:
        while True:
            tag, body = raw.read_message()
            if tag == b"E":
                errors.append(h.parse_error_fields(body))
    except (ConnectionError, OSError):
        return errors, True


# ---------------------------------------------------------------------------------------------
# upstream unreachable / dropped


def test_upstream_unreachable_gives_08006(make_proxy, db):
    closed_port = h.free_port()
    p = make_proxy(upstream_port=closed_port)
    ep = p.endpoint(db)
    for _ in range(3):
        with h.RawConn(ep.host, ep.port) as raw:
            with pytest.raises(h.PGError) as ei:
                raw.startup(ep.user, ep.password, db)
            err = ei.value
            assert err.sqlstate == "08006", err.fields
            assert err.fields["S"] in ("FATAL", "ERROR")
            assert len(err.fields.get("M", "")) > 10
            # no configuration (upstream address) leaks to the client
            assert str(closed_port) not in " ".join(err.fields.values())
        assert p.alive()
    r = h.run([h.client_bin("psql"), "-X", "-w", "-c", "SELECT 1"], env=ep.libpq_env())
    assert r.returncode != 0 and r.stderr.strip()
    # wrong password still is an auth failure, not an upstream error (client auth comes first)
    with h.RawConn(ep.host, ep.port) as raw:
        with pytest.raises(h.PGError) as ei:
            raw.startup(ep.user, "wrong", db)
        assert ei.value.sqlstate == "28P01"
    assert p.alive()


def test_backend_terminated_mid_session(target, pg):
    with psycopg.connect(target.dsn(), autocommit=True) as other, \
            h.RawConn(target.host, target.port) as raw:
        raw.startup(target.user, target.password, target.dbname)
        (upstream_pid,), = raw.query("SELECT pg_backend_pid()")
        other_pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pg.sql("SELECT pg_terminate_backend(%s)", (int(upstream_pid),)) == [(True,)]
        h.wait_until(lambda: not pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                        (int(upstream_pid),)), 20, "backend gone")
        try:
            raw.send(h.message(b"Q", b"SELECT 'after terminate'\x00"))
        except OSError:
            pass
        errors, closed = collect_errors_until_closed(raw)
        assert errors, "the client is told why its session ended"
        assert errors[0]["C"] in ("57P01", "08006"), errors
        assert closed
        # the other session is untouched, and new clients are served
        assert other.execute("SELECT pg_backend_pid()").fetchone()[0] == other_pid
        with psycopg.connect(target.dsn()) as fresh:
            assert fresh.execute("SELECT 'new client'").fetchone() == ("new client",)
    if target.kind == "proxy":
        assert target.extra["proxy"].alive()


def test_backend_terminated_psycopg_sees_error(target, pg):
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg.sql("SELECT pg_terminate_backend(%s)", (pid,))
        h.wait_until(lambda: not pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
                     20, "backend gone")
        with pytest.raises(psycopg.OperationalError) as ei:
            conn.execute("SELECT 1")
        assert ei.value.sqlstate in (None, "57P01", "08006"), ei.value
    with psycopg.connect(target.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.timeout_s(180)
def test_postgres_stopped_and_restarted(private_pg, make_proxy):
    pgs = private_pg
    p = make_proxy(pg_server=pgs)
    ep = p.endpoint("app")
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE survive (x int)")
        conn.execute("INSERT INTO survive VALUES (1)")
        pgs.stop("fast")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert p.alive()
    # while Postgres is down: a clear 08006 at connect
    with h.RawConn(ep.host, ep.port) as raw:
        with pytest.raises(h.PGError) as ei:
            raw.startup(ep.user, ep.password, "app")
        assert ei.value.sqlstate == "08006"
    pgs.start()
    assert p.alive()
    with psycopg.connect(ep.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM survive").fetchone() == (1,)
    # and immediate-mode stop (no goodbye from the backend) is survived too
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        pgs.stop("immediate")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    pgs.start()
    with psycopg.connect(ep.dsn()) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert p.alive()


# ---------------------------------------------------------------------------------------------
# hostile bytes

rng = random.Random(20240229)
GARBAGE = bytes(rng.getrandbits(8) for _ in range(4096))

# name -> (bytes sent before authentication or None, bytes sent after a good startup or None,
#          half-close after sending)
HOSTILE = {
    "random-garbage": (GARBAGE, None, True),
    "huge-startup-length": (struct.pack("!II", 0x7FFFFFFF, h.PROTOCOL_3), None, False),
    "negative-startup-length": (struct.pack("!iI", -8, h.PROTOCOL_3), None, False),
    "tiny-startup-length": (struct.pack("!I", 3) + b"\x00" * 16, None, False),
    "protocol-2": (h.startup_packet({"user": "alice"})[:4] + struct.pack("!I", 0x00020000)
                   + h.startup_packet({"user": "alice"})[8:], None, False),
    "startup-without-terminator": (
        struct.pack("!II", 8 + len(b"user\x00alice\x00database"), h.PROTOCOL_3)
        + b"user\x00alice\x00database", None, True),
    "truncated-startup": (struct.pack("!II", 5000, h.PROTOCOL_3) + b"user\x00", None, True),
    "cancel-wrong-length": (struct.pack("!III", 12, h.CANCEL_CODE, 1), None, True),
    "2gb-query-after-startup": (None, b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT", False),
    "negative-length-after-startup": (None, b"Q" + struct.pack("!i", -1), False),
    "zero-length-after-startup": (None, b"\x00" * 64, False),
    "garbage-after-startup": (None, GARBAGE, True),
    # over the proxy's max_message_bytes (64 MiB) but under Postgres' own 1 GB limit
    "parse-over-limit-after-startup": (None, b"P" + struct.pack("!I", 80 * 1024 * 1024), False),
}
PROXY_ONLY = {"parse-over-limit-after-startup"}


def expect_closed_or_error(sock: socket.socket, timeout: float = 20):
    """The server must close the socket or send an ErrorResponse, not hang."""
    return h.read_until_closed(sock, timeout, stop_at_error=True)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bytes(target, name):
    if name in PROXY_ONLY and target.kind != "proxy":
        pytest.skip("Postgres itself waits for messages up to 1 GB")
    before, after, half_close = HOSTILE[name]
    watch = target.watch_pid
    with psycopg.connect(target.dsn(), autocommit=True) as good:
        assert good.execute("SELECT 1").fetchone() == (1,)
        raw = h.RawConn(target.host, target.port)
        try:
            if after is not None:
                raw.startup(target.user, target.password, target.dbname)
                payload = after
            else:
                payload = before
            try:
                raw.send(payload)
                if half_close:
                    raw.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already closed by the server: fine
            data = bytes(raw.buf) + expect_closed_or_error(raw.sock)
            for err in h.error_responses(data):
                assert err.get("S") in ("FATAL", "ERROR"), err
                assert len(err.get("C", "")) == 5, err
        finally:
            raw.close()
        assert h.pid_alive(watch)
        assert good.execute("SELECT 'still fine'").fetchone() == ("still fine",)
    with psycopg.connect(target.dsn()) as fresh:
        assert fresh.execute("SELECT 2").fetchone() == (2,)


def test_many_abrupt_disconnects(target):
    """Clients that vanish at every stage leave the relay serving."""
    startup = h.startup_packet({"user": target.user, "database": target.dbname})
    for cut in (0, 3, 8, len(startup) - 1, len(startup)):
        s = socket.create_connection((target.host, target.port), timeout=10)
        s.sendall(startup[:cut])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        s.close()
    for _ in range(3):
        raw = h.RawConn(target.host, target.port)
        raw.startup(target.user, target.password, target.dbname)
        raw.send(h.message(b"Q", b"SELECT pg_sleep(0) FROM generate_series(1, 1000)\x00"))
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
    assert h.pid_alive(target.watch_pid)
    with psycopg.connect(target.dsn()) as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)


# ---------------------------------------------------------------------------------------------
# shutdown


def refuses_new_clients(p: h.ProxyProcess, db: str) -> bool:
    try:
        raw = h.RawConn(p.host, p.port, timeout=5)
    except OSError:
        return True
    try:
        raw.startup("alice", "alicepw", db)
    except (h.PGError, ConnectionError, OSError):
        return True
    finally:
        raw.close()
    return False


@pytest.mark.timeout_s(120)
def test_sigterm_drains_open_session_then_exits_0(make_proxy, db):
    p = make_proxy(shutdown_timeout=60)
    with psycopg.connect(p.endpoint(db).dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        os.kill(p.pid, signal.SIGTERM)
        h.wait_until(lambda: refuses_new_clients(p, db), 20, "proxy to stop accepting clients")
        # Idle between statements, the session may be ended at once (57P01), and the proxy then
        # exits 0 at once: it is alive, or gone with 0 (well before shutdown_timeout).
        assert p.alive() or p.proc.poll() == 0, p.stderr()
        # an idle session may be served or told the proxy is going away (57P01), nothing else
        try:
            assert conn.execute("SELECT 'draining'").fetchone() == ("draining",)
        except psycopg.errors.AdminShutdown as exc:
            assert exc.sqlstate == "57P01"
    # once the session has ended, the proxy exits 0 (well before shutdown_timeout)
    assert p.proc.wait(timeout=40) == 0, p.stderr()


@pytest.mark.timeout_s(120)
def test_sigterm_lets_running_statement_finish(make_proxy, pg, db):
    """A statement in flight when SIGTERM arrives completes and its result reaches the client;
    the client's next statement is told the proxy is going away (57P01)."""
    p = make_proxy(shutdown_timeout=60)
    mark = "drain_" + os.urandom(4).hex()
    with pg.admin(db) as blocker, psycopg.connect(p.endpoint(db).dsn(), autocommit=True) as conn:
        blocker.execute("SELECT pg_advisory_lock(4242)")
        result: dict = {}

        def run():
            try:
                result["rows"] = conn.execute(
                    f"SELECT pg_advisory_lock(4242), 'finished' /* {mark} */").fetchall()
            except BaseException as exc:  # noqa: BLE001
                result["error"] = exc

        import threading
        t = threading.Thread(target=run, daemon=True)
        t.start()
        h.wait_until(lambda: [r for r in pg.active_queries(mark) if r[2] == "Lock"], 20,
                     "statement waiting on the advisory lock")
        os.kill(p.pid, signal.SIGTERM)
        h.wait_until(lambda: refuses_new_clients(p, db), 20, "proxy to stop accepting clients")
        assert p.alive()
        blocker.execute("SELECT pg_advisory_unlock(4242)")
        t.join(30)
        assert not t.is_alive()
        assert "error" not in result, result.get("error")
        assert result["rows"] == [("", "finished")]
        # the session ends at that boundary, as the answer to its next statement
        with pytest.raises(psycopg.errors.AdminShutdown) as ended:
            conn.execute("SELECT 1")
        assert ended.value.sqlstate == "57P01", repr(ended.value)
    assert p.proc.wait(timeout=40) == 0, p.stderr()


@pytest.mark.timeout_s(120)
def test_sigterm_closes_idle_session_after_timeout(make_proxy, pg, db):
    p = make_proxy(shutdown_timeout=2)
    with psycopg.connect(p.endpoint(db).dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        os.kill(p.pid, signal.SIGTERM)
        assert p.proc.wait(timeout=60) == 0, p.stderr()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert not h.port_accepts(p.host, p.port)
    # the upstream backend of that session is gone as well
    h.wait_until(lambda: not pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,)),
                 20, "upstream backends of the closed session to go away")


def test_sigterm_without_sessions_exits_0(make_proxy):
    # SIGTERM the moment the port accepts: the handlers must already be in place then (a signal
    # that early once met the default action and the proxy died of it, exit -15). Several
    # starts, since the window was a few microseconds wide.
    for _ in range(5):
        p = make_proxy()
        os.kill(p.pid, signal.SIGTERM)
        assert p.proc.wait(timeout=40) == 0, p.stderr()
        assert not h.port_accepts(p.host, p.port)
