"""Operations: the admin console (every command through psql), per-tenant statistics after a known
workload, pause/suspend/kill/reload under load, moving a tenant between two real PostgreSQL
servers while its clients run transactions, cancel requests across two proxy instances, and a
rolling restart of instances sharing one port (SO_REUSEPORT) with every committed row counted.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest

import ops_support as ops
import pgharness as h
from pgharness import sample, scrape, series
import pooling_support as ps
import tenancy_support as ts
from tenancy_support import ACME, GLOBEX


@pytest.fixture(scope="module")
def ocluster():
    c = ts.TenancyCluster().start()
    yield c
    c.destroy()


@pytest.fixture
def oproxy(ocluster, tmp_path_factory):
    """Factory: a started proxy over ocluster with [admin] users = ["gina"] (kwargs: pool mode,
    extra sections, map text, peers, listen_port, start)."""
    started: list[ts.TenancyProxy] = []

    def factory(*, mode: str = "transaction", size: int = 4, map_text: str | None = None,
                start: bool = True, cluster: ts.TenancyCluster | None = None, peers=None,
                listen_port: int | None = None, **sections) -> ts.TenancyProxy:
        server = {"event_loop_threads": 2, **sections.pop("server", {})}
        extra = ops.admin_extra(pool={"mode": mode, "size": size}, server=server, **sections)
        p = ops.make_proxy(cluster or ocluster, tmp_path_factory.mktemp("ops-proxy"), map_text=map_text,
                           extra=extra, peers=peers, listen_port=listen_port)
        started.append(p)
        if start:
            p.start()
        return p

    yield factory
    for p in started:
        p.terminate()


def sqlstate(exc: BaseException) -> str | None:
    return ts.sqlstate_of(exc)


# --------------------------------------------------------------------------------------------
# the console itself


def test_console_is_for_admin_users_only(oproxy):
    p = oproxy()
    err = ts.connect_error(p, "alice", dbname="proxy")
    assert err["C"] == "28000" and "admin" in err["M"], err
    assert "H" in err
    res = ops.admin(p, "SHOW VERSION")
    assert res.stdout.startswith("tenant-proxy "), res.stdout


def test_show_commands_return_result_sets(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        alice.execute("SELECT 1")
        bob.execute("SELECT 1")
        with alice.transaction():
            alice.execute("SELECT 2")
            clients = ops.show(p, "CLIENTS")
            servers = ops.show(p, "SERVERS")
        by_tenant = {c["tenant_id"]: c for c in clients if c["type"] == "client"}
        assert by_tenant[ACME]["user"] == "alice" and by_tenant[ACME]["state"] == "active"
        assert by_tenant[GLOBEX]["user"] == "bob" and by_tenant[GLOBEX]["state"] == "idle"
        assert any(c["type"] == "admin" and c["user"] == ops.ADMIN for c in clients)
        active = [s for s in servers if s["state"] == "active"]
        assert [s["tenant_id"] for s in active] == [ACME], servers
        assert active[0]["client"] == by_tenant[ACME]["session"]
        assert int(active[0]["backend_pid"]) > 0

        tenants = {t["name"]: t for t in ops.show(p, "TENANTS")}
        assert tenants["acme"]["id"] == ACME and tenants["acme"]["clients"] == "1"
        assert tenants["initech"]["status"] == "suspended"
        assert tenants["acme"]["cluster"] == "default" and tenants["acme"]["paused"] == "no"

        pools = ops.show(p, "POOLS")
        pool = [r for r in pools if r["user"] == ts.PROXY_ROLE]
        assert pool and pool[0]["pool_mode"] == "transaction" and pool[0]["database"] == ts.APP_DB
        assert int(pool[0]["sv_open"]) >= 1

        config = {r["key"]: r for r in ops.show(p, "CONFIG")}
        assert config["pool.mode"]["value"] == "transaction"
        assert config["pool.mode"]["changeable"] == "yes"
        assert config["upstream.password"]["value"] == "(set)"
        all_config = ops.admin(p, "SHOW CONFIG").stdout
        assert ts.PROXY_PW not in all_config and ts.OWNER_PW not in all_config

        stats = {s["tenant"]: s for s in ops.show(p, "STATS")}
        assert int(stats["acme"]["total_xact_count"]) >= 2


def test_unknown_command_is_an_error_and_the_console_stays_usable(oproxy):
    p = oproxy()
    with h.RawConn(p.host, p.port) as raw:
        raw.startup(ops.ADMIN, ts.password_of(ops.ADMIN), "proxy")
        with pytest.raises(h.PGError) as ei:
            raw.query("FROB THE KNOBS")
        assert ei.value.sqlstate == "42601" and "H" in ei.value.fields
        with pytest.raises(h.PGError) as ei:
            raw.query("PAUSE no_such_tenant")
        assert ei.value.sqlstate == "42704"
        with pytest.raises(h.PGError) as ei:
            raw.query("RESUME acme")
        assert ei.value.sqlstate == "55000"
        assert raw.query("SHOW VERSION")[0][0].startswith("tenant-proxy")
        # several commands in one Query message run in order
        assert raw.query("SHOW VERSION; SHOW VERSION") == raw.query("SHOW VERSION") * 2
        raw.terminate()


def test_stats_count_a_known_workload_per_tenant(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        for n in range(7):
            alice.execute("SELECT %s::int", (n,))
        with alice.transaction():
            alice.execute("SELECT count(*) FROM todos")
        bob.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            bob.execute("SELECT 1/0")
    stats = {s["tenant_id"]: s for s in ops.show(p, "STATS")}
    # alice: 7 statements + BEGIN, SELECT, COMMIT = 10 queries in 8 transactions
    assert stats[ACME]["total_xact_count"] == "8" and stats[ACME]["total_query_count"] == "10"
    assert stats[ACME]["total_errors"] == "0"
    assert stats[GLOBEX]["total_xact_count"] == "2" and stats[GLOBEX]["total_errors"] == "1"
    assert int(stats[ACME]["total_received"]) > 0 and int(stats[ACME]["total_sent"]) > 0


# --------------------------------------------------------------------------------------------
# pause, resume, suspend, activate, kill


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def client_state(p, tenant_id: str) -> list[str]:
    return [c["state"] for c in ops.show(p, "CLIENTS") if c["tenant_id"] == tenant_id]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_pause_holds_a_tenant_and_resume_lets_it_continue(oproxy, mode):
    p = oproxy(mode=mode)
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        alice.execute("SELECT 1")
        ops.admin(p, "PAUSE acme")
        assert {t["name"]: t["paused"] for t in ops.show(p, "TENANTS")}["acme"] == "yes"
        t, out = run_in_thread(lambda: alice.execute("SELECT 'after resume'").fetchone())
        ps.wait_until(lambda: client_state(p, ACME) == ["paused"], 20, "alice to be held")
        # other tenants are not paused
        assert bob.execute("SELECT 'bob'").fetchone() == ("bob",)
        assert t.is_alive()
        ops.admin(p, "RESUME acme")
        t.join(20)
        assert out.get("value") == ("after resume",), out


def test_pause_returns_only_when_the_tenants_transactions_are_done(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as alice:
        alice.execute("BEGIN")
        alice.execute("SELECT 1")
        t, out = run_in_thread(lambda: ops.admin(p, "PAUSE acme"))
        ps.wait_until(lambda: {x["name"]: x["paused"] for x in ops.show(p, "TENANTS")}["acme"] == "yes",
                      20, "the pause to be registered")
        # alice's transaction is open: PAUSE cannot have returned
        assert t.is_alive()
        alice.execute("COMMIT")
        t.join(30)
        assert not t.is_alive() and "error" not in out, out
        ops.admin(p, "RESUME acme")
        assert alice.execute("SELECT 3").fetchone() == (3,)


def test_pause_all_and_cluster_then_resume(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        ops.admin(p, "PAUSE")
        t1, out1 = run_in_thread(lambda: alice.execute("SELECT 'a'").fetchone())
        t2, out2 = run_in_thread(lambda: bob.execute("SELECT 'b'").fetchone())
        ps.wait_until(lambda: sorted(c["state"] for c in ops.show(p, "CLIENTS") if c["type"] == "client")
                      == ["paused", "paused"], 20, "both clients to be held")
        ops.admin(p, "RESUME")
        for t in (t1, t2):
            t.join(20)
        assert out1.get("value") == ("a",) and out2.get("value") == ("b",)

        ops.admin(p, "PAUSE CLUSTER default")
        t3, out3 = run_in_thread(lambda: bob.execute("SELECT 'c'").fetchone())
        ps.wait_until(lambda: client_state(p, GLOBEX) == ["paused"], 20, "bob to be held")
        assert {r["cluster"]: r["paused"] for r in ops.show(p, "POOLS")}["default"] == "yes"
        ops.admin(p, "RESUME CLUSTER default")
        t3.join(20)
        assert out3.get("value") == ("c",)


def test_suspend_ends_sessions_and_refuses_logins_until_activate(oproxy):
    p = oproxy(mode="session")
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        alice.execute("SELECT 1")
        ops.admin(p, "SUSPEND acme")
        with pytest.raises(psycopg.OperationalError) as ei:
            alice.execute("SELECT 1")
        assert sqlstate(ei.value) == "28000", ei.value
        err = ts.connect_error(p, "alice")
        assert err["C"] == "28000"
        assert bob.execute("SELECT 'bob still here'").fetchone() == ("bob still here",)
        assert {t["name"]: t["status"] for t in ops.show(p, "TENANTS")}["acme"] == "suspended (console)"
    ops.admin(p, "ACTIVATE acme")
    with ts.connect(p, "alice") as alice:
        assert alice.execute("SELECT current_setting('nile.tenant_id')").fetchone() == (ACME,)
    res = ops.admin(p, "ACTIVATE acme", check=False)
    assert res.returncode != 0 and "55000" in res.stderr


def test_kill_closes_one_tenants_clients_only(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as a1, ts.connect(p, "alice") as a2, ts.connect(p, "bob") as bob:
        a2.execute("BEGIN")
        a2.execute("SELECT 1")
        res = ops.admin(p, "KILL acme")
        assert res.stdout.strip() == "KILL 2", res.stdout
        for conn in (a1, a2):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert bob.execute("SELECT 'ok'").fetchone() == ("ok",)
    with ts.connect(p, "alice") as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_reload_applies_config_and_map_and_keeps_the_old_on_error(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as alice:
        # the map gains an alias; the config a bigger pool
        p.write_map(ts.default_map(acme={"aliases": ["acme-corp", "roadrunner"]}))
        p.config["pool"]["size"] = 6
        p.config_path.write_text(h.render_toml(p.config))
        ops.admin(p, "RELOAD")
        assert {r["key"]: r["value"] for r in ops.show(p, "CONFIG")}["pool.size"] == "6"
        with ts.connect(p, "star", options=ts.tenant_option("roadrunner")) as star:
            assert star.execute("SELECT current_setting('nile.tenant_id')").fetchone() == (ACME,)
        # a broken config: RELOAD reports it, what is in force stays
        p.config_path.write_text(p.config_path.read_text() + "\n[pool]\nsize = \"many\"\n")
        res = ops.admin(p, "RELOAD", check=False)
        assert res.returncode != 0 and "F0000" in res.stderr, res.stderr
        assert {r["key"]: r["value"] for r in ops.show(p, "CONFIG")}["pool.size"] == "6"
        assert alice.execute("SELECT 1").fetchone() == (1,)


def test_shutdown_drains_and_exits(oproxy):
    p = oproxy()
    with ts.connect(p, "alice") as alice:
        alice.execute("SELECT 1")
        ops.admin(p, "SHUTDOWN")
        assert p.proc.wait(timeout=40) == 0, p.stderr()
        with pytest.raises(psycopg.OperationalError):
            alice.execute("SELECT 1")


# --------------------------------------------------------------------------------------------
# under load


def test_reload_and_suspension_under_load_lose_nothing(oproxy, ocluster):
    ops.clear_workload_rows(ocluster)
    p = oproxy(size=4)
    acme = ops.Workload(lambda: ts.connect(p, "alice"), ACME, clients=4).start()
    globex = ops.Workload(lambda: ts.connect(p, "bob"), GLOBEX, clients=2).start()
    try:
        ps.wait_until(lambda: acme.committed >= 50 and globex.committed >= 20, 60, "workload to run")
        for _ in range(3):
            ops.admin(p, "RELOAD")
            p.sighup()
        ops.admin(p, "SUSPEND globex")
        seen = acme.committed
        ps.wait_until(lambda: acme.committed >= seen + 50, 60, "acme to go on while globex is suspended")
        ps.wait_until(lambda: globex.errors, 30, "globex clients to be refused")
    finally:
        acme.stop()
        globex.stop()
        ops.admin(p, "ACTIVATE globex")
    assert acme.errors == [], acme.errors[:3]
    assert globex.mid_transaction_errors == [], globex.mid_transaction_errors[:3]
    # at the next statement (28000), then at each reconnect (FATAL 28000 during log-in)
    assert all(sqlstate(e) == "28000" or "is not active" in str(e) for e in globex.boundary_errors), \
        globex.boundary_errors[:3]
    # every row a client saw committed is there, and nothing else
    assert ops.todo_ids(ocluster, ACME) == acme.confirmed
    assert ops.todo_ids(ocluster, GLOBEX) == globex.confirmed


@pytest.fixture(scope="module")
def second_cluster():
    c = ts.TenancyCluster().start()
    yield c
    c.destroy()


def test_move_a_tenant_between_two_postgres_servers_under_load(oproxy, ocluster, second_cluster):
    """PAUSE acme, copy its rows to the second server, place it there, RELOAD, RESUME: its
    clients wait and go on against the new server; every committed row is on exactly one
    server, and it is the new one."""
    ops.clear_workload_rows(ocluster)
    ops.clear_workload_rows(second_cluster)
    clusters = {"clusters.second": {"host": second_cluster.host, "port": second_cluster.port,
                                    "user": ts.PROXY_ROLE, "password": ts.PROXY_PW,
                                    "global_user": ts.OWNER_ROLE, "global_password": ts.OWNER_PW,
                                    "database": ts.APP_DB}}
    p = oproxy(size=4, **clusters)
    work = ops.Workload(lambda: ts.connect(p, "alice"), ACME, clients=4).start()
    bob = ops.Workload(lambda: ts.connect(p, "bob"), GLOBEX, clients=1).start()
    try:
        ps.wait_until(lambda: work.committed >= 40, 60, "workload to commit on the first server")
        ops.admin(p, "PAUSE acme")
        before = work.committed
        # operator's copy while acme is paused
        rows = ocluster.srv.sql("SELECT id, tenant_id, title FROM todos WHERE tenant_id = %s "
                                "AND title LIKE 'workload%%'", (ACME,), dbname=ts.APP_DB)
        with second_cluster.su(ts.APP_DB) as conn:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO todos (id, tenant_id, title) VALUES (%s, %s, %s)", rows)
        with ocluster.su(ts.APP_DB) as conn:
            conn.execute("DELETE FROM todos WHERE tenant_id = %s AND title LIKE 'workload%%'", (ACME,))
        p.write_map(ts.default_map(acme={"upstream": "second"}))
        ops.admin(p, "RELOAD")
        assert {t["name"]: t["cluster"] for t in ops.show(p, "TENANTS")}["acme"] == "second"
        assert work.committed == before, "no acme transaction may commit while paused"
        ops.admin(p, "RESUME acme")
        ps.wait_until(lambda: work.committed >= before + 40, 60, "workload to go on on the second server")
        servers = ops.show(p, "SERVERS")
        assert any(s["cluster"] == "second" and s["tenant_id"] == ACME for s in servers), servers
    finally:
        work.stop()
        bob.stop()
    assert work.errors == [], work.errors[:3]
    assert bob.errors == [], bob.errors[:3]
    on_second = ops.todo_ids(second_cluster, ACME)
    on_first = ops.todo_ids(ocluster, ACME)
    assert on_first == set(), "acme rows written to the old server after the move"
    assert on_second == work.confirmed, (len(on_second), len(work.confirmed))
    assert ops.todo_ids(ocluster, GLOBEX) == bob.confirmed


# --------------------------------------------------------------------------------------------
# several instances


def test_cancel_request_reaches_the_instance_that_issued_the_key(oproxy, ocluster):
    port1, port2 = h.free_port(), h.free_port()
    p1 = oproxy(listen_port=port1, server={"instance_id": 1},
                peers=[{"instance_id": 2, "host": "127.0.0.1", "port": port2}])
    p2 = oproxy(listen_port=port2, server={"instance_id": 2},
                peers=[{"instance_id": 1, "host": "127.0.0.1", "port": port1}])
    with h.RawConn(p1.host, p1.port) as raw:
        raw.startup("alice", ts.password_of("alice"), ts.APP_DB)
        assert (raw.backend_pid >> 23) & 0xFF == 1, raw.backend_pid
        mark = f"peer_cancel_{os.urandom(3).hex()}"
        t, out = run_in_thread(lambda: raw.query(f"SELECT pg_sleep(60) /* {mark} */"))
        # inside pg_sleep: a cancel that reached the backend before it read the query would be
        # dropped by Postgres, and the sleep would run its 60 s
        ps.wait_until(lambda: [r for r in ocluster.srv.active_queries(mark) if r[3] == "PgSleep"], 20,
                      "the query to run")
        assert client_state(p1, ACME) == ["active"]
        # a wrong secret sent to the peer cancels nothing
        h.send_cancel(p2.host, p2.port, raw.backend_pid, raw.backend_secret ^ 1)
        assert client_state(p1, ACME) == ["active"]
        assert t.is_alive()
        h.send_cancel(p2.host, p2.port, raw.backend_pid, raw.backend_secret)
        t.join(30)
        assert isinstance(out.get("error"), h.PGError) and out["error"].sqlstate == "57014", out
        assert raw.query("SELECT 'still usable'") == [["still usable"]]
        raw.terminate()


def test_cancel_between_instances_sharing_one_port_goes_through_cancel_ports(oproxy, ocluster):
    """Two instances on one port (SO_REUSEPORT), each with a cancel port of its own: a cancel
    request sent to the shared port lands on either one, and reaches the query either way (one
    hop at most: the cancel ports never forward)."""
    port, c1, c2 = h.free_port(), h.free_port(), h.free_port()
    oproxy(listen_port=port, server={"instance_id": 1, "reuse_port": True, "cancel_port": c1},
           peers=[{"instance_id": 2, "host": "127.0.0.1", "port": c2}])
    oproxy(listen_port=port, server={"instance_id": 2, "reuse_port": True, "cancel_port": c2},
           peers=[{"instance_id": 1, "host": "127.0.0.1", "port": c1}])
    for n in range(6):
        mark = f"cancel_{n}_{os.urandom(3).hex()}"
        with h.RawConn("127.0.0.1", port) as raw:
            raw.startup("alice", ts.password_of("alice"), ts.APP_DB)
            assert (raw.backend_pid >> 23) & 0xFF in (1, 2)
            t, out = run_in_thread(lambda: raw.query(f"SELECT pg_sleep(60) /* {mark} */"))
            ps.wait_until(lambda: ocluster.srv.sql(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f"%{mark}%",)), 20, "the query to run")
            h.send_cancel("127.0.0.1", port, raw.backend_pid, raw.backend_secret)
            t.join(30)
            assert isinstance(out.get("error"), h.PGError) and out["error"].sqlstate == "57014", out
            raw.terminate()


@pytest.mark.timeout_s(120)
def test_cancel_follows_the_borrower_of_a_shared_connection(oproxy, ocluster):
    """Transaction mode, one upstream connection lent in turn to two clients of two tenants: a
    cancel request ends only the query of the client whose key it carries, and only while that
    client holds the connection; the client that used the connection just before cannot cancel
    the next borrower's query. tenant_proxy_cancel_requests_total says where each one went."""
    port = h.free_port()
    # one event loop: the clients share the one connection itself, not just the budget for it
    p = oproxy(size=1, metrics={"listen_port": port}, server={"event_loop_threads": 1})

    def cancels(outcome: str) -> float:
        return sample(series(scrape(port)[1]), "tenant_proxy_cancel_requests_total", outcome=outcome)

    with h.RawConn(p.host, p.port) as a, h.RawConn(p.host, p.port) as b:
        a.startup("alice", ts.password_of("alice"), ts.APP_DB)
        b.startup("bob", ts.password_of("bob"), ts.APP_DB)
        upstream = a.query("SELECT pg_backend_pid()")
        assert b.query("SELECT pg_backend_pid()") == upstream, "pool size 1: one upstream connection"
        mark = f"borrower_cancel_{os.urandom(3).hex()}"
        t, out = run_in_thread(lambda: b.query(f"SELECT pg_sleep(60) /* {mark} */"))

        def sleeping():
            return [r for r in ocluster.srv.active_queries(mark) if r[3] == "PgSleep"]

        ps.wait_until(sleeping, 20, "bob's query to run")
        # alice's key: she used this very connection last, but holds none now
        assert h.send_cancel(p.host, p.port, a.backend_pid, a.backend_secret) == b""
        ps.wait_until(lambda: cancels("idle") == 1, 20, "the proxy to route alice's cancel request")
        # bob's process id with a wrong secret
        assert h.send_cancel(p.host, p.port, b.backend_pid, b.backend_secret ^ 1) == b""
        ps.wait_until(lambda: cancels("unknown_key") == 1, 20, "the proxy to route the wrong key")
        assert cancels("upstream") == 0
        assert sleeping() and t.is_alive(), f"bob's query ended: {out!r}"
        # bob's own key ends his query
        h.send_cancel(p.host, p.port, b.backend_pid, b.backend_secret)
        t.join(30)
        assert isinstance(out.get("error"), h.PGError) and out["error"].sqlstate == "57014", out
        assert cancels("upstream") == 1
        assert a.query("SELECT 'alice after'") == [["alice after"]]
        assert b.query("SELECT 'bob after'") == [["bob after"]]
        a.terminate()
        b.terminate()


def test_rolling_restart_on_one_port_loses_no_committed_transaction(oproxy, ocluster):
    """Three instances take turns on one port (SO_REUSEPORT): start the next, SIGTERM the old.
    Clients of a closing instance get an error only between transactions, reconnect, and every
    transaction a client saw committed is in the database, and nothing else is."""
    ops.clear_workload_rows(ocluster)
    port = h.free_port()
    common = dict(mode="session", listen_port=port, server={"reuse_port": True, "shutdown_timeout_seconds": 30})
    first = oproxy(**common)
    work = ops.Workload(lambda: ts.connect(first, "alice"), ACME, clients=4).start()
    try:
        previous = first
        for _ in range(2):
            ps.wait_until(lambda: work.committed >= 30, 60, "workload to commit")
            following = oproxy(**common)
            os.kill(previous.pid, signal.SIGTERM)
            assert previous.proc.wait(timeout=60) == 0, previous.stderr()
            seen = work.committed
            ps.wait_until(lambda: work.committed >= seen + 30, 60, "workload to go on with the next instance")
            previous = following
    finally:
        work.stop()
    assert work.mid_transaction_errors == [], work.mid_transaction_errors[:3]
    assert ops.todo_ids(ocluster, ACME) == work.confirmed
    assert work.boundary_errors, "the closing instances told their clients (57P01)"


def listening_sockets(pid: int, port: int) -> int:
    """How many TCP sockets of process `pid` listen on `port` (from /proc: the process's socket
    inodes against the LISTEN rows of /proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                    count += 1
    return count


def test_each_event_loop_listens_and_a_taken_port_refuses_a_second_instance(oproxy):
    """The client port is listened on with one socket per event loop (a SO_REUSEPORT group: each
    loop accepts its own connections). A second instance on the same port without reuse_port
    exits with an error that names the port and the setting, instead of joining the group and
    taking a share of the first one's connections; the first one keeps serving."""
    port = h.free_port()
    first = oproxy(listen_port=port)
    # Ready means the port accepts, which the first loop's socket does before the second binds.
    h.wait_until(lambda: listening_sockets(first.pid, port) == 2, 30, "a listening socket per loop")
    second = oproxy(listen_port=port, start=False)
    res = subprocess.run([str(h.proxy_bin()), "--config", str(second.config_path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stderr   # an error, not a crash (debug builds crashed here)
    assert f"cannot listen on {first.host}:{port}" in res.stderr, res.stderr
    assert "reuse_port" in res.stderr, res.stderr
    for _ in range(8):
        with ts.connect(first, "alice") as conn:
            assert conn.execute("SELECT 'first'").fetchone()[0] == "first"
    assert first.alive()


# --------------------------------------------------------------------------------------------
# metrics and logs


def test_metrics_after_a_known_workload(oproxy):
    port = h.free_port()
    p = oproxy(size=2, metrics={"listen_port": port, "max_tenant_labels": 1})
    # The metrics endpoint is up before the client port (which the harness waited for); /readyz
    # turns ready once every client listener is bound, a moment after the first accepts.
    assert scrape(port, "/healthz") == (200, "ok\n")
    ps.wait_until(lambda: scrape(port, "/readyz") == (200, "ready\n"), 20, "/readyz to report ready")
    assert scrape(port, "/nope")[0] == 404
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        for _ in range(5):
            alice.execute("SELECT 1")
        bob.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute("SET nile.tenant_id = %s", (GLOBEX,))
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            alice.execute("LISTEN somewhere")
        err = ts.connect_error(p, "alice", password="wrong")
        assert err["C"] == "28P01"
        status, text = scrape(port)
        assert status == 200
        values = series(text)
        # one tenant label allowed: acme came first, globex is summed under _other
        assert sample(values, "tenant_proxy_transactions_total", tenant=ACME) == 5
        assert sample(values, "tenant_proxy_transactions_total", tenant="_other") == 1
        assert sample(values, "tenant_proxy_tenant_clients", tenant=ACME) == 1
        assert sample(values, "tenant_proxy_clients", state="idle") == 2
        assert sample(values, "tenant_proxy_auth_failures_total", reason="bad_credentials") == 1
        assert sample(values, "tenant_proxy_guard_refusals_total", tenant=ACME, kind="context") == 1
        assert sample(values, "tenant_proxy_guard_refusals_total", tenant=ACME, kind="session_state") == 1
        assert sample(values, "tenant_proxy_upstream_connections", state="idle") >= 1
        assert "tenant_proxy_pool_wait_seconds_bucket" in text
        assert GLOBEX not in text
        # counters only grow between scrapes
        alice.execute("SELECT 1")
        later = series(scrape(port)[1])
        assert sample(later, "tenant_proxy_transactions_total", tenant=ACME) == 6


def test_context_switches_are_counted(oproxy):
    # One loop and one connection: each change of tenant on it is a switch, a repeat is not.
    port = h.free_port()
    p = oproxy(size=1, metrics={"listen_port": port}, server={"event_loop_threads": 1})
    with ts.connect(p, "alice") as alice, ts.connect(p, "bob") as bob:
        assert sample(series(scrape(port)[1]), "tenant_proxy_context_switches_total") == 0
        alice.execute("SELECT 1")
        bob.execute("SELECT 1")
        alice.execute("SELECT 1")
        alice.execute("SELECT 1")
        assert sample(series(scrape(port)[1]), "tenant_proxy_context_switches_total") == 2
        assert alice.execute("SELECT current_setting('nile.tenant_id')").fetchone()[0] == ACME


def test_readyz_fails_while_draining(oproxy):
    port = h.free_port()
    p = oproxy(metrics={"listen_port": port}, server={"shutdown_timeout_seconds": 60})
    with ts.connect(p, "alice") as alice:
        alice.execute("BEGIN")
        os.kill(p.pid, signal.SIGTERM)
        ps.wait_until(lambda: scrape(port, "/readyz")[0] == 503, 20, "/readyz to report draining")
        assert scrape(port, "/healthz")[0] == 200
        alice.execute("COMMIT")
    assert p.proc.wait(timeout=40) == 0


def test_json_logs_carry_tenant_user_client_and_session(oproxy):
    import json
    p = oproxy(log={"level": "debug", "format": "json"})
    with ts.connect(p, "alice") as alice:
        alice.execute("SELECT 1")
    ts.connect_error(p, "bob", password="wrong-password-xyz")
    ps.wait_until(lambda: "refused client" in p.stderr(500), 20, "the refusal to be logged")
    lines = [line for line in p.stderr_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]   # every line is one JSON object
    assert all({"ts", "level", "msg"} <= r.keys() for r in records)
    session_lines = [r for r in records if r.get("user") == "alice" and "session" in r]
    assert session_lines, records[-5:]
    for r in session_lines:
        assert r["tenant"] == "acme" and r["client"].startswith("127.0.0.1:"), r
    text = "\n".join(lines)
    assert "wrong-password-xyz" not in text and ts.PROXY_PW not in text and ts.OWNER_PW not in text


def test_tenant_map_behind_a_swapped_symlink_is_reloaded(oproxy):
    """Kubernetes updates a mounted ConfigMap as tenants.toml -> ..data/tenants.toml with ..data
    a symlink to a fresh directory that it swaps: the file the proxy names never changes, only
    where its chain of links ends. The watcher follows the chain."""
    p = oproxy(start=False)
    v1, v2 = p.dir / "..2026_v1", p.dir / "..2026_v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "tenants.toml").write_text(ts.default_map())
    (v2 / "tenants.toml").write_text(ts.default_map(acme={"aliases": ["acme-corp", "wile-e"]}))
    data = p.dir / "..data"
    data.symlink_to(v1.name)
    p.map_path.unlink()
    p.map_path.symlink_to("..data/tenants.toml")
    p.start()
    assert ts.try_connect(p, "star", options=ts.tenant_option("wile-e")) is not None
    tmp = p.dir / "..data_tmp"
    tmp.symlink_to(v2.name)
    os.replace(tmp, data)
    ps.wait_until(lambda: ts.try_connect(p, "star", options=ts.tenant_option("wile-e")) is None, 30,
                  "the swapped map to be loaded")


def test_session_mode_client_of_a_moved_tenant_ends_at_its_next_statement(oproxy, ocluster):
    """Session mode: the client's connection is on the old cluster, so after a move it ends with
    57P01 at its next statement outside a transaction, and reconnects to the new cluster."""
    same_server = {"clusters.second": {"host": ocluster.host, "port": ocluster.port, "user": ts.PROXY_ROLE,
                                       "password": ts.PROXY_PW, "database": ts.APP_DB}}
    p = oproxy(mode="session", **same_server)
    with ts.connect(p, "alice") as alice:
        alice.execute("BEGIN")
        alice.execute("SELECT 1")
        p.write_map(ts.default_map(acme={"upstream": "second"}))
        ops.admin(p, "RELOAD")
        # inside its transaction it goes on
        assert alice.execute("SELECT 2").fetchone() == (2,)
        alice.execute("COMMIT")
        with pytest.raises(psycopg.OperationalError) as ei:
            alice.execute("SELECT 3")
        assert sqlstate(ei.value) == "57P01" and "moved" in str(ei.value), ei.value
    with ts.connect(p, "alice") as again:
        assert again.execute("SELECT current_setting('nile.tenant_id')").fetchone() == (ACME,)
        assert [s["cluster"] for s in ops.show(p, "SERVERS") if s["tenant_id"] == ACME] == ["second"]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_proxy_running_as_an_unprivileged_user_serves_clients(pg, db, proxy_users, mode):
    """Deployed as a service user (systemd User=tenant-proxy, Kubernetes runAsUser: 10001) the
    proxy accepts clients and connects upstream: a socket option only root may set (SO_DEBUG,
    which TCP_NODELAY set at the socket level instead of the TCP level amounts to) failed every
    accepted and every upstream connection there, while the tests, run as root, passed."""
    cfg, env, files = h.proxy_config(pg, extra={"pool": {"mode": mode, "size": 2}})
    workdir = Path(tempfile.mkdtemp(prefix="tp-unprivileged-"))
    p = h.ProxyProcess(workdir, cfg, proxy_users, env=env, files=files)
    try:
        p.start(run_as="nobody" if h.is_root() else None)
        assert os.stat(f"/proc/{p.pid}").st_uid != 0
        for _ in range(2):   # the second borrows the pooled connection the first left
            with psycopg.connect(p.dsn(db), connect_timeout=10) as conn:
                assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
                # Every TCP socket of the proxy (listener, this client, its upstream) has Nagle off.
                sockets = h.tcp_nodelay_by_socket(p.pid)
                assert sum(1 for name in sockets if "->" in name) >= 2, sockets
                assert all(sockets.values()), sockets
    finally:
        p.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


KEEPALIVE_OPTIONS = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                     (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT)]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_client_and_upstream_sockets_keep_alive(pg, db, make_proxy, mode):
    """[server] tcp_keepalive_* (as PostgreSQL's tcp_keepalives_*): the client's socket (set on
    the listener, inherited) and the upstream one carry SO_KEEPALIVE and the timings given, so a
    peer that vanished without a FIN is found; tcp_keepalive = false leaves both without."""
    timings = {"tcp_keepalive_idle_seconds": 45, "tcp_keepalive_interval_seconds": 7,
               "tcp_keepalive_count": 4}
    for server, expected in (({**timings}, (1, 45, 7, 4)), ({"tcp_keepalive": False}, (0,))):
        p = make_proxy(extra={"server": server, "pool": {"mode": mode, "size": 2}})
        with psycopg.connect(p.dsn(db), connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            sockets = h.socket_options_by_socket(p.pid, KEEPALIVE_OPTIONS)
            connected = {name: values for name, values in sockets.items() if "->" in name}
            upstream = [name for name in connected if name.endswith(f", {pg.port})")]
            assert upstream and len(connected) > len(upstream), sockets
            for name, values in sockets.items():
                assert values[:len(expected)] == expected, (name, values, server)
        p.terminate()


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return tuple(resource.RLIM_INFINITY if v == "unlimited" else int(v) for v in line.split()[3:5])
    raise AssertionError("no open-files line")


def test_open_file_limit_is_raised_for_the_client_limit(pg, make_proxy):
    """Started from a shell's 1024 files, the proxy raises its soft limit to what
    max_client_connections needs: two sockets per client and 128 more (within the hard limit
    the tests run under, which an unprivileged process cannot raise)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    clients = 5000 if hard == resource.RLIM_INFINITY else min(5000, (hard - 128) // 2)
    assert clients > 1000, f"hard open-file limit {hard} too low for this test"
    p = make_proxy(start=False, extra={"server": {"max_client_connections": clients}})
    p.start(open_files=(1024, hard))
    assert open_files_limit(p.pid) == (clients * 2 + 128, hard)
    assert "raised the open-file limit" in p.stderr()
    assert "too low" not in p.stderr()


def test_open_file_limit_short_of_the_need_is_a_warning_with_the_fix(pg, db, make_proxy):
    p = make_proxy(start=False, extra={"server": {"max_client_connections": 10000}})
    p.start(open_files=(512, 2048))
    assert open_files_limit(p.pid) == (2048, 2048)
    log = p.stderr()
    assert "the open-file limit is too low for server.max_client_connections" in log, log
    assert "clients_allowed=960" in log and "LimitNOFILE" in log, log
    with psycopg.connect(p.dsn(db), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
