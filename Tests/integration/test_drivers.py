"""Real drivers (psycopg 3, asyncpg) and a raw protocol client through the target."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import secrets
import threading
import uuid
from decimal import Decimal

import asyncpg
import psycopg
import pytest
from psycopg import errors as pgerr

import pgharness as h


def connect(ep: h.Endpoint, **kw) -> psycopg.Connection:
    return psycopg.connect(ep.dsn(), **kw)


def marker() -> str:
    return "mark_" + secrets.token_hex(6)


# ---------------------------------------------------------------------------------------------
# psycopg 3


VALUES = [
    ("int", 42, "int"),
    ("bigint", -(2 ** 62), "bigint"),
    ("text", "héllo 'quoted' \"wörld\" 🐘", "text"),
    ("empty text", "", "text"),
    ("bytea", bytes(range(256)) * 3, "bytea"),
    ("numeric", Decimal("12345678901234567890.000000001"), "numeric"),
    ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone.utc),
     "timestamptz"),
    ("date", dt.date(1999, 12, 31), "date"),
    ("bool", True, "bool"),
    ("float", 1.5e300, "float8"),
    ("uuid", uuid.UUID("6f1c1b7e-8a7e-4c55-9d3f-6a2b8f0e2f11"), "uuid"),
    ("int array", [1, None, 3], "int[]"),
    ("text array", ["a", "b,c", None, "ü"], "text[]"),
    ("null", None, "text"),
]


@pytest.mark.parametrize("binary", [False, True], ids=["text-format", "binary-format"])
def test_psycopg_parameters_roundtrip(target, binary):
    with connect(target) as conn:
        cur = conn.cursor(binary=binary)
        for name, value, typ in VALUES:
            cur.execute(f"SELECT %s::{typ}, pg_typeof(%s::{typ})::text, %s::{typ} IS NULL",
                        (value, value, value))
            got, typname, isnull = cur.fetchone()
            assert got == value, name
            assert isnull == (value is None), name
        # the same statement executed many times gets prepared server side by psycopg
        for i in range(8):
            cur.execute("SELECT %s::int * 2, %s::text", (i, str(i)), prepare=True)
            assert cur.fetchone() == (i * 2, str(i))
        cur.execute("SELECT g, g::text FROM generate_series(1, %s) g", (1000,))
        rows = cur.fetchall()
        assert rows[0] == (1, "1") and rows[-1] == (1000, "1000") and len(rows) == 1000


def test_psycopg_executemany_and_transactions(target):
    with connect(target) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v text, b bytea)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO kv VALUES (%s, %s, %s)",
                            [(i, f"v{i}", bytes([i % 256]) * i) for i in range(200)])
            assert cur.rowcount == 200
            cur.executemany("SELECT %s::int + 1", [(1,), (2,), (3,)], returning=True)
            got = []
            while True:
                got.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
            assert got == [2, 3, 4]
        conn.commit()
        with conn.transaction():
            conn.execute("UPDATE kv SET v = 'changed' WHERE k < 10")
            with pytest.raises(pgerr.UniqueViolation):
                with conn.transaction():  # savepoint
                    conn.execute("INSERT INTO kv VALUES (1, 'dup', NULL)")
        assert conn.execute("SELECT count(*) FROM kv WHERE v = 'changed'").fetchone()[0] == 10
        assert conn.execute("SELECT sum(length(b)) FROM kv").fetchone()[0] == sum(range(200))
        conn.rollback()


@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipeline"])
def test_psycopg_errors_keep_sqlstate_and_connection(target, pipeline):
    with connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE u (id int PRIMARY KEY)")
        conn.execute("INSERT INTO u VALUES (1)")
        cases = [
            ("INSERT INTO u VALUES (%s)", (1,), pgerr.UniqueViolation, "23505"),
            ("SELECT 1 / %s", (0,), pgerr.DivisionByZero, "22012"),
            ("SELECT * FROM no_such_table WHERE x = %s", (1,), pgerr.UndefinedTable, "42P01"),
            ("SELECT %s::int", ("not a number",), pgerr.InvalidTextRepresentation, "22P02"),
            ("SELEC %s", (1,), pgerr.SyntaxError, "42601"),
        ]
        for sql, params, exc, state in cases:
            if pipeline:
                with pytest.raises(exc) as ei:
                    with conn.pipeline():
                        conn.execute("SELECT 1")
                        conn.execute(sql, params)
            else:
                with pytest.raises(exc) as ei:
                    conn.execute(sql, params)
            assert ei.value.sqlstate == state
            assert ei.value.diag.sqlstate == state
            assert ei.value.diag.message_primary
            assert conn.execute("SELECT %s::text", ("still usable",)).fetchone() == ("still usable",)
        # error inside an explicit transaction: 25P02 until rollback
        conn.autocommit = False
        with pytest.raises(pgerr.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(pgerr.InFailedSqlTransaction) as ei:
            conn.execute("SELECT 1")
        assert ei.value.sqlstate == "25P02"
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM u").fetchone() == (1,)


def test_psycopg_notices(target):
    with connect(target, autocommit=True) as conn:
        seen = []
        conn.add_notice_handler(lambda d: seen.append((d.severity_nonlocalized, d.sqlstate,
                                                       d.message_primary, d.message_hint)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'n one'; "
                     "RAISE WARNING 'w two' USING HINT = 'h'; END $$")
        assert seen == [("NOTICE", "00000", "n one", None), ("WARNING", "01000", "w two", "h")]


@pytest.mark.parametrize("binary", [False, True], ids=["text-copy", "binary-copy"])
def test_psycopg_copy_in_out(target, binary):
    fmt = " (FORMAT BINARY)" if binary else ""
    rows = [(i, f"row {i} ✓", None if i % 7 == 0 else Decimal(i) / 4, bytes([i % 256, 0, 255]))
            for i in range(5000)]
    with connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE c (id int, t text, n numeric, b bytea)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY c FROM STDIN{fmt}") as copy:
                if binary:
                    copy.set_types(["int4", "text", "numeric", "bytea"])
                for r in rows:
                    copy.write_row(r)
            assert cur.rowcount == 5000
            out = []
            with cur.copy(f"COPY (SELECT * FROM c ORDER BY id) TO STDOUT{fmt}") as copy:
                if binary:
                    copy.set_types(["int4", "text", "numeric", "bytea"])
                for r in copy.rows():
                    out.append(r)
        if not binary:
            out = [(int(a), b, None if c is None else Decimal(c), bytes.fromhex(d[2:]))
                   for a, b, c, d in out]
        assert out == rows
        # raw block copy out, then a COPY that fails midway keeps the session usable
        with conn.cursor() as cur:
            buf = b""
            with cur.copy("COPY (SELECT id FROM c WHERE id < 3 ORDER BY id) TO STDOUT") as copy:
                for block in copy:
                    buf += bytes(block)
            assert buf == b"0\n1\n2\n"
            with pytest.raises(pgerr.InvalidTextRepresentation):
                with cur.copy("COPY c (id) FROM STDIN") as copy:
                    copy.write(b"1\n2\nnot-int\n")
            assert conn.execute("SELECT count(*) FROM c").fetchone() == (5000,)


def test_psycopg_server_side_cursor_and_stream(target):
    with connect(target) as conn:
        with conn.cursor(name="big_cur") as cur:
            cur.itersize = 500
            cur.execute("SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g")
            n = total = 0
            for g, s in cur:
                n += 1
                total += g
                assert len(s) == 200
            assert n == 20000 and total == 20000 * 20001 // 2
        n = 0
        for row in conn.cursor().stream("SELECT g FROM generate_series(1, 30000) g"):
            n += 1
            assert row[0] == n
        assert n == 30000


def test_psycopg_listen_notify(target):
    with connect(target, autocommit=True) as listener, connect(target, autocommit=True) as sender:
        listener.execute("LISTEN chan_a")
        listener.execute('LISTEN "Chan B"')
        sender.execute("NOTIFY chan_a, 'hello ü'")
        sender.execute("SELECT pg_notify('Chan B', %s)", ("second payload",))
        sender.execute("NOTIFY unrelated, 'nobody listens'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=20, stop_after=2)]
        assert got == [("chan_a", "hello ü"), ("Chan B", "second payload")]
        # a notification in a transaction is delivered at commit only
        with sender.transaction():
            sender.execute("NOTIFY chan_a, 'after commit'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=20, stop_after=1)]
        assert got == [("chan_a", "after commit")]


class QueryRunner(threading.Thread):
    """Runs one statement on conn in a thread and records the outcome."""

    def __init__(self, conn, sql):
        super().__init__(daemon=True)
        self.conn, self.sql = conn, sql
        self.error: BaseException | None = None
        self.result = None
        self.correct_cancel_sent = threading.Event()
        self.error_after_correct_cancel: bool | None = None

    def run(self):
        try:
            self.result = self.conn.execute(self.sql).fetchall()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self.error_after_correct_cancel = self.correct_cancel_sent.is_set()


def wait_active(pg: h.PostgresServer, mark: str, runner: QueryRunner | None = None):
    """Waits until the backend running the pg_sleep query marked `mark` is inside pg_sleep.
    'active' alone is not enough: asyncpg prepares with Parse/Describe/Flush, and the backend
    shows the statement as 'active' (waiting on ClientRead) between that and the Bind. A task
    cancelled there never sends the Bind, so there is no running query for a cancel to end."""
    def sleeping():
        if runner is not None and not runner.is_alive():
            raise AssertionError(f"query ended early: {runner.error!r}")
        return [r for r in pg.active_queries(mark) if r[1] == "active" and r[3] == "PgSleep"]
    return h.wait_until(sleeping, 30, f"query {mark} sleeping in pg_stat_activity")


@pytest.mark.timeout_s(90)
def test_psycopg_cancel(target, pg):
    mark = marker()
    with connect(target, autocommit=True) as conn:
        if target.kind == "proxy":
            # the client holds the proxy's own BackendKeyData, not the upstream backend's
            upstream_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert conn.info.backend_pid != upstream_pid
        runner = QueryRunner(conn, f"SELECT pg_sleep(60) /* {mark} */")
        runner.start()
        wait_active(pg, mark, runner)
        runner.correct_cancel_sent.set()
        conn.cancel_safe(timeout=20)
        runner.join(60)
        assert not runner.is_alive()
        assert isinstance(runner.error, pgerr.QueryCanceled), runner.error
        assert runner.error.sqlstate == "57014"
        assert runner.error_after_correct_cancel
        assert conn.execute("SELECT 'usable after cancel'").fetchone() == ("usable after cancel",)
        # the legacy PQcancel path (no SSL negotiation on the cancel connection) works too
        mark2 = marker()
        runner = QueryRunner(conn, f"SELECT pg_sleep(60) /* {mark2} */")
        runner.start()
        wait_active(pg, mark2, runner)
        conn.cancel()
        runner.join(60)
        assert isinstance(runner.error, pgerr.QueryCanceled), runner.error


@pytest.mark.timeout_s(90)
def test_wrong_key_cancel_cancels_nothing(target, pg):
    mark = marker()
    with connect(target, autocommit=True) as conn, connect(target, autocommit=True) as other:
        runner = QueryRunner(conn, f"SELECT pg_sleep(60) /* {mark} */")
        runner.start()
        wait_active(pg, mark, runner)
        pid = conn.info.backend_pid
        # wrong secret for the right pid; and the other session's pid with a random secret
        for bad_pid in (pid, other.info.backend_pid, 1):
            reply = h.send_cancel(target.host, target.port, bad_pid, secrets.randbits(32))
            assert reply == b"", f"a CancelRequest gets no reply, got {reply!r}"
        # the other client is served while the query keeps running
        assert other.execute("SELECT 'other ok'").fetchone() == ("other ok",)
        with h.RawConn(target.host, target.port) as raw:
            raw.startup(target.user, target.password, target.dbname)
            assert raw.query("SELECT 7") == [["7"]]
            raw.terminate()
        assert [r for r in pg.active_queries(mark) if r[1] == "active"], "query was cancelled"
        assert runner.is_alive() and runner.error is None
        # now the right key: the query fails with 57014 only after that
        runner.correct_cancel_sent.set()
        conn.cancel_safe(timeout=20)
        runner.join(60)
        assert isinstance(runner.error, pgerr.QueryCanceled), runner.error
        assert runner.error_after_correct_cancel is True
        assert other.execute("SELECT 1").fetchone() == (1,)


def test_parameter_status_and_backend_key(target, pg, direct):
    """ParameterStatus as Postgres reports them (the proxy replays them)."""
    with h.RawConn(direct.host, direct.port) as raw:
        raw.startup(direct.user, direct.password, direct.dbname)
        expected = dict(raw.params)
        raw.terminate()
    with h.RawConn(target.host, target.port) as a, h.RawConn(target.host, target.port) as b:
        a.startup(target.user, target.password, target.dbname)
        b.startup(target.user, target.password, target.dbname)
        for k in ("server_version", "server_encoding", "client_encoding", "DateStyle",
                  "integer_datetimes", "standard_conforming_strings", "TimeZone",
                  "IntervalStyle", "is_superuser", "session_authorization"):
            assert a.params.get(k) == expected[k], k
        assert a.params["session_authorization"] == "proxy_scram"
        assert a.backend_pid is not None and a.backend_secret is not None
        assert (a.backend_pid, a.backend_secret) != (b.backend_pid, b.backend_secret)
        assert a.query("SHOW server_version") == [[expected["server_version"]]]
        a.terminate()
        b.terminate()


@pytest.mark.timeout_s(120)
def test_large_result_backpressure(target, pg):
    """~100 MB result to a client that reads slowly: the relay must not buffer it (bounded RSS,
    the upstream backend ends up blocked writing), and every byte arrives in the end."""
    mark = marker()
    rows, width = 100_000, 1000
    with h.RawConn(target.host, target.port, rcvbuf=64 * 1024, timeout=60) as raw:
        raw.startup(target.user, target.password, target.dbname)
        if target.kind == "proxy":
            watch = target.watch_pid
        else:
            watch = raw.backend_pid  # the backend serving us is what buffers if anything does
        baseline = h.rss_kb(watch)
        raw.send(h.message(b"Q", f"SELECT repeat('x', {width}) /* {mark} */ "
                                 f"FROM generate_series(1, {rows})".encode() + b"\x00"))
        got = 0
        while got < 1_000_000:
            chunk = raw.recv_some(65536)
            raw.buf += chunk
            got += len(chunk)
        peak = [h.rss_kb(watch)]

        def backend_blocked():
            peak[0] = max(peak[0], h.rss_kb(watch))
            states = pg.active_queries(mark)
            assert states, "query finished while the client had read only ~1 MB (buffered)"
            _, state, wtype, wevent = states[0]
            assert state == "active", f"query state {state} while client read ~1 MB"
            return wevent == "ClientWrite"

        h.wait_until(backend_blocked, 60, "upstream backend blocked on ClientWrite")
        peak[0] = max(peak[0], h.rss_kb(watch))
        growth_mb = (peak[0] - baseline) / 1024
        print(f"backpressure: {target.kind} baseline {baseline} kB, peak growth {growth_mb:.1f} MB")
        assert growth_mb < 64, f"relay RSS grew by {growth_mb:.1f} MB while client read 1 MB"

        n = nbytes = 0
        while True:
            tag, body = raw.read_message()
            if tag == b"D":
                n += 1
                nbytes += len(body) - 6
            elif tag == b"C":
                assert body == b"SELECT %d\x00" % rows
            elif tag == b"E":
                raise h.PGError(h.parse_error_fields(body))
            elif tag == b"Z":
                break
        assert (n, nbytes) == (rows, rows * width)
        assert raw.query("SELECT 'after big'") == [["after big"]]
        raw.terminate()


# ---------------------------------------------------------------------------------------------
# asyncpg


def arun(coro):
    return asyncio.run(asyncio.wait_for(coro, 80))


async def aconnect(ep: h.Endpoint) -> asyncpg.Connection:
    return await asyncpg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password,
                                 database=ep.dbname, timeout=15)


def test_asyncpg_fetch_and_prepared(target):
    async def body():
        conn = await aconnect(target)
        try:
            row = await conn.fetchrow(
                "SELECT $1::int AS i, $2::text AS t, $3::bytea AS b, $4::numeric AS n, "
                "$5::timestamptz AS ts, $6::int[] AS arr, $7::text AS nul",
                7, "ü text", b"\x00\x01\xff", Decimal("1.25"),
                dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), [1, None, 2], None)
            assert dict(row) == {"i": 7, "t": "ü text", "b": b"\x00\x01\xff",
                                 "n": Decimal("1.25"),
                                 "ts": dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                                 "arr": [1, None, 2], "nul": None}
            stmt = await conn.prepare("SELECT $1::int + g FROM generate_series(1, 3) g")
            for i in range(20):
                assert [r[0] for r in await stmt.fetch(i)] == [i + 1, i + 2, i + 3]
            assert [a.name for a in stmt.get_attributes()] == ["?column?"]
            await conn.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
            await conn.executemany("INSERT INTO a VALUES ($1, $2)", [(i, str(i)) for i in range(100)])
            assert await conn.fetchval("SELECT count(*) FROM a") == 100
            with pytest.raises(asyncpg.UniqueViolationError) as ei:
                await conn.execute("INSERT INTO a VALUES (1, 'dup')")
            assert ei.value.sqlstate == "23505"
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            async with conn.transaction():
                await conn.execute("UPDATE a SET v = 'x' WHERE id < 5")
            assert await conn.fetchval("SELECT count(*) FROM a WHERE v = 'x'") == 5
            # cursors need a transaction
            async with conn.transaction():
                total = 0
                async for r in conn.cursor("SELECT g FROM generate_series(1, 5000) g", prefetch=100):
                    total += r[0]
                assert total == 5000 * 5001 // 2
        finally:
            await conn.close()
    arun(body())


def test_asyncpg_copy(target):
    async def body():
        conn = await aconnect(target)
        try:
            await conn.execute("CREATE TABLE cp (id int, t text)")
            src = io.BytesIO("".join(f"{i}\tline {i} ü\n" for i in range(3000)).encode())
            res = await conn.copy_to_table("cp", source=src)
            assert res == "COPY 3000"
            res = await conn.copy_records_to_table("cp", records=[(i, None) for i in range(3000, 3500)])
            assert res == "COPY 500"
            out = io.BytesIO()
            res = await conn.copy_from_query("SELECT * FROM cp WHERE id >= 2998 ORDER BY id LIMIT 4",
                                             output=out)
            assert res == "COPY 4"
            assert out.getvalue() == "2998\tline 2998 ü\n2999\tline 2999 ü\n3000\t\\N\n3001\t\\N\n".encode()
            out = io.BytesIO()
            await conn.copy_from_table("cp", output=out, format="csv")
            assert out.getvalue().count(b"\n") == 3500
        finally:
            await conn.close()
    arun(body())


def test_asyncpg_listen_notify(target):
    async def body():
        listener, sender = await aconnect(target), await aconnect(target)
        try:
            got: asyncio.Queue = asyncio.Queue()
            await listener.add_listener("events", lambda c, pid, ch, payload: got.put_nowait((ch, payload)))
            await sender.execute("SELECT pg_notify('events', 'payload ' || $1::text)", "1")
            await sender.execute("NOTIFY events, 'payload 2'")
            assert await asyncio.wait_for(got.get(), 20) == ("events", "payload 1")
            assert await asyncio.wait_for(got.get(), 20) == ("events", "payload 2")
        finally:
            await listener.close()
            await sender.close()
    arun(body())


@pytest.mark.timeout_s(90)
def test_asyncpg_task_cancel_cancels_query(target, pg):
    mark = marker()

    async def body():
        conn = await aconnect(target)
        try:
            task = asyncio.ensure_future(conn.fetch(f"SELECT pg_sleep(60) /* {mark} */"))
            await asyncio.to_thread(wait_active, pg, mark)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the cancel reached Postgres: the sleep ends long before its 60 s
            await asyncio.to_thread(
                h.wait_until, lambda: not [r for r in pg.active_queries(mark) if r[1] == "active"],
                30, "sleep query to be cancelled")
            assert await conn.fetchval("SELECT 'after cancel'") == "after cancel"
        finally:
            await conn.close()
    arun(body())
