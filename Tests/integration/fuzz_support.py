"""Message builders and checks for the seeded structured fuzzing (test_fuzz.py, and the TLS
log-in case in test_tls_auth.py)."""

from __future__ import annotations

import base64
import os
import random
import socket
import struct

import pgharness as h
from pooling_support import ExtConn

SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
ITERS = int(os.environ.get("FUZZ_ITERS", "300"))

SQL = [
    "SELECT 1", "SELECT $1::int", "SELECT $1::text, $2::int", "BEGIN", "COMMIT", "ROLLBACK",
    "PREPARE s1 AS SELECT 1", "EXECUTE s1", "DEALLOCATE s1", "DEALLOCATE ALL",
    "SET TimeZone = 'UTC'", "RESET ALL", "DISCARD ALL", "LISTEN x", "CREATE TEMP TABLE t(a int)",
    "SELECT pg_advisory_lock(1)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "SET nile.tenant_id = '00000000-0000-0000-0000-000000000000'", "RESET nile.tenant_id",
    "SELECT 1; SELECT 2", "BEGIN; SELECT 1", "SELECT count(*) FROM todos", "", ";",
    "COPY (SELECT 1) TO STDOUT", "COPY todos (title) FROM STDIN", "SELECT 1/0", "SAVEPOINT a",
    "SELECT * FROM generate_series(1, 100)", "SET ROLE postgres", "SELECT 'é'",
]
NAMES = [b"", b"s1", b"s2", b"p1", b"x" * 70, b"__tp_1", b"S_1", b"\xff\xfe"]
DAMAGE = [b",", b"=", b"\x00", b"\xff", b"a=b", b",,", b"r=", b"p=", b"\xc3"]


def cstr(b: bytes) -> bytes:
    return b + b"\x00"


def u16(n: int) -> bytes:
    return struct.pack("!H", n & 0xFFFF)


def frontend_body(r: random.Random, t: str) -> bytes:
    if t == "Q":
        return cstr(r.choice(SQL).encode())
    if t == "P":
        count = r.choice([0, 1, 2, 3, 0xFFFF, 40000])
        oids = b"".join(struct.pack("!I", r.choice([0, 23, 25, 0xFFFFFFFF]))
                        for _ in range(min(count, r.choice([0, 1, 2, 3]))))
        return cstr(r.choice(NAMES)) + cstr(r.choice(SQL).encode()) + u16(count) + oids
    if t == "B":
        nfmt = r.choice([0, 1, 2, 0xFFFF])
        fmts = b"".join(struct.pack("!h", r.choice([0, 1, 2, -1]))
                        for _ in range(min(nfmt, r.choice([0, 1, 2]))))
        nparam = r.choice([0, 1, 2, 0xFFFF])
        params = b""
        for _ in range(min(nparam, r.choice([0, 1, 2]))):
            length = r.choice([-1, 0, 1, 4, -2, 0x7FFFFFFF, 100])
            params += struct.pack("!i", length) + b"1" * max(0, min(length, 8))
        nres = r.choice([0, 1, 0xFFFF])
        res = b"".join(struct.pack("!h", r.choice([0, 1, 7]))
                       for _ in range(min(nres, r.choice([0, 1]))))
        return (cstr(r.choice(NAMES)) + cstr(r.choice(NAMES)) + u16(nfmt) + fmts + u16(nparam)
                + params + u16(nres) + res)
    if t == "D":
        return r.choice([b"S", b"P", b"Z", b""]) + cstr(r.choice(NAMES))
    if t == "E":
        return cstr(r.choice(NAMES)) + struct.pack("!i", r.choice([0, 1, -1, 0x7FFFFFFF]))
    if t == "C":
        return r.choice([b"S", b"P", b"Q"]) + cstr(r.choice(NAMES))
    if t == "d":
        return r.randbytes(r.randrange(0, 20))
    if t == "f":
        return cstr(b"no thanks")
    if t == "F":
        return (struct.pack("!IH", r.choice([0, 1598, 0xFFFFFFFF]), 0) + u16(1)
                + struct.pack("!i", 1) + b"1" + struct.pack("!h", 0))
    if t == "p":
        return cstr(b"not-a-password-time")
    return b""   # S, H, c, X


def damaged(r: random.Random, body: bytes, rate: float = 0.16) -> bytes:
    roll = r.random()
    if roll >= rate or not body:
        return body
    if roll < rate * 0.4:
        return body[:r.randrange(len(body))]
    if roll < rate * 0.7:
        i = r.randrange(len(body))
        return body[:i] + bytes([r.randrange(256)]) + body[i + 1:]
    if roll < rate * 0.85:
        i = r.randrange(len(body) + 1)
        return body[:i] + r.choice(DAMAGE) + body[i:]
    return body + r.randbytes(r.randrange(1, 6))


def frontend_frame(r: random.Random, framed: bool = False) -> bytes:
    """A message, damaged or not. framed: its length is right and nothing leaves the server
    waiting for more (no COPY FROM STDIN), so a Sync and a Query after it are answered."""
    t = r.choice("QPBDECSHFXp?" if framed else "QPBDECSHdcfFXp?")
    if t == "?":
        tag = bytes([r.randrange(1, 256)])
        body = r.randbytes(r.randrange(0, 16))
    else:
        tag = t.encode()
        body = damaged(r, frontend_body(r, t))
        if framed and b"FROM STDIN" in body:
            body = cstr(b"SELECT 1")
    length = len(body) + 4
    if not framed and r.random() < 0.03:
        length = r.choice([0, 1, 3, 4, len(body) + 2])
    return tag + struct.pack("!I", length) + body


def assert_well_formed(data: bytes, what):
    """The proxy's bytes are whole backend messages, and each ErrorResponse has a severity, a
    SQLSTATE and a message."""
    offset = 0
    while offset < len(data):
        assert offset + 5 <= len(data), (f"a cut message at byte {offset}", what())
        (length,) = struct.unpack("!I", data[offset + 1:offset + 5])
        assert 4 <= length and offset + 1 + length <= len(data), \
            (f"a bad length at byte {offset}", what())
        if data[offset:offset + 1] == b"E":
            err = h.parse_error_fields(data[offset + 5:offset + 1 + length])
            assert err.get("S") in ("FATAL", "ERROR"), (err, what())
            assert len(err.get("C", "")) == 5, (err, what())
            assert err.get("M"), (err, what())
        offset += 1 + length



START_UP_KEYS = [b"user", b"database", b"options", b"application_name", b"client_encoding",
                 b"TimeZone", b"DateStyle", b"replication", b"_pq_.x", b"nile.tenant_id", b""]
START_UP_VALUES = [b"", b"alice", b"-c x=1", b"UTF8", b"\xff", b"a" * 300, b"true",
                   b"-c nile.tenant_id=1"]


def damaged_log_in(r: random.Random, raw: h.RawConn, user: str, database: str, sent: list,
                   what, *, gs2: bytes = b"n,,", mechanisms=(b"SCRAM-SHA-256",),
                   binding: bytes = b"", half_close: bool = True):
    """One log-in with damaged parts on a connected client (plain or TLS): the start-up packet
    (extra keys and values, the protocol version), the SASL mechanism and its length, the
    client-first message (gs2 header `gs2`) and the client-final one (channel binding data
    `binding` after the header, a random proof), or any message at all in place of an answer
    (cut anywhere, then the stream half-closed; or whole, where a half-close is not possible, as
    over TLS without its closing handshake). What was sent goes into `sent`. The server must
    answer with whole messages and well-formed errors, and never leave the client waiting."""
    params = {b"user": user.encode(), b"database": database.encode()}
    for _ in range(r.choice([0, 0, 1, 2, 3])):
        params[r.choice(START_UP_KEYS)] = r.choice(START_UP_VALUES)
    if r.random() < 0.1:
        del params[b"user"]
    version = (h.PROTOCOL_3 if r.random() < 0.95
               else r.choice([0x00030001, 0x00030002, 0x04D2162F]))
    body = struct.pack("!I", version) + b"".join(k + b"\x00" + v + b"\x00"
                                                 for k, v in params.items())
    body = damaged(r, body + b"\x00", rate=0.2)
    sent.append(body)
    try:
        raw.send(struct.pack("!I", len(body) + 4) + body)
        while True:
            tag, msg = raw.read_message()
            if tag in (b"E", b"Z"):
                assert_well_formed(tag + struct.pack("!I", len(msg) + 4) + msg, what)
                return
            if tag != b"R":
                continue
            (code,) = struct.unpack("!I", msg[:4])
            if code == 0:
                continue
            if r.random() < 0.05 and half_close:
                # Anything at all instead of the answer (its length may be wrong, so the server
                # may wait for more): end the stream and read to the close.
                out = frontend_frame(r)
                sent.append(out)
                raw.send(out)
                raw.sock.shutdown(socket.SHUT_WR)
                rest = h.read_until_closed(raw.sock, 30, what=what)
                assert_well_formed(bytes(raw.buf) + rest, what)
                return
            if r.random() < 0.05:
                out = frontend_frame(r, framed=True)
            elif code == 10:
                first = damaged(r, gs2 + b"n=,r=fuzzfuzzfuzzfuzzfuzzfuzz", rate=0.5)
                mechanism = r.choice(list(mechanisms) * 3 + [b"SCRAM-SHA-256-PLUS", b"X", b""])
                length = r.choice([len(first)] * 3 + [-1, len(first) + 5, 0x7FFFFFFF])
                out = h.message(b"p", mechanism + b"\x00" + struct.pack("!i", length) + first)
            elif code == 11:
                attrs = dict(a.split(b"=", 1) for a in msg[4:].split(b",") if b"=" in a)
                proof = base64.b64encode(r.randbytes(32))
                final = (b"c=" + base64.b64encode(gs2 + binding) + b",r=" + attrs.get(b"r", b"")
                         + b",p=" + proof)
                out = h.message(b"p", damaged(r, final, rate=0.5))
            else:
                out = h.message(b"p", b"whatever\x00")
            sent.append(out)
            raw.send(out)
    except TimeoutError:
        raise AssertionError(f"the server did not answer a whole message: {what()!r}")
    except ConnectionError:
        pass   # closed by the server after its error, or at once


# --------------------------------------------------------------------------------------------
# session state a borrower could leave on a lent connection (test_borrowers_find_nothing_left)

def state_sql(acme: str, globex: str, initech: str) -> list[str]:
    """Statements that would leave state on the connection at session level, in several
    spellings, beside ones that are allowed (transaction-scoped, tracked settings, plain work)."""
    other = [globex, acme, initech, "not-a-uuid", ""]
    sql = [
        # temporary objects
        "CREATE TEMP TABLE lt1(a int)", "create temporary table lt2 as select 1 as a",
        "CREATE TABLE pg_temp.lt3(a int)", "SELECT 1 AS a INTO TEMP lt4",
        "CREATE GLOBAL TEMPORARY TABLE lt5(a int)", "CREATE TEMP VIEW lv1 AS SELECT 1",
        "CREATE TEMP SEQUENCE lq1", "CREATE FUNCTION pg_temp.lf() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE VIEW lv2 AS SELECT * FROM pg_temp.lt1", "EXPLAIN ANALYZE CREATE TEMP TABLE lt6 AS SELECT 1",
        "CREATE TEMP TABLE lt7(a int) ON COMMIT DROP",
        "BEGIN; CREATE TEMP TABLE lt8(a int) ON COMMIT DROP; INSERT INTO lt8 VALUES (1); COMMIT",
        "CREATE TEMP TABLE lt9(a int) ON COMMIT DELETE ROWS",
        # cursors
        "DECLARE lc1 CURSOR WITH HOLD FOR SELECT 1", "BEGIN; DECLARE lc2 CURSOR WITH HOLD FOR SELECT 1; COMMIT",
        "DECLARE lc3 NO SCROLL CURSOR WITH HOLD FOR SELECT 1", "BEGIN; DECLARE lc4 CURSOR FOR SELECT 1",
        "FETCH lc4", "CLOSE ALL",
        # advisory locks
        "SELECT pg_advisory_lock(7)", "SELECT PG_ADVISORY_LOCK(7)", 'SELECT "pg_advisory_lock"(7)',
        "SELECT pg_catalog.pg_advisory_lock(7)", "SELECT pg_try_advisory_lock_shared(8)",
        "SELECT pg_advisory_lock(1, 2)", "BEGIN; SELECT pg_advisory_xact_lock(9); COMMIT",
        "SELECT pg_advisory_unlock_all()",
        # notifications
        "LISTEN lchan", 'LISTEN "LChan"', "UNLISTEN *", "NOTIFY lchan", "SELECT pg_notify('lchan', 'x')",
        # SQL prepared statements
        "PREPARE lp1 AS SELECT 1", "EXECUTE lp1", "DEALLOCATE lp1", "DEALLOCATE ALL",
        "DEALLOCATE PREPARE lp1", "EXPLAIN EXECUTE lp1", "DEALLOCATE ls1", "DEALLOCATE PREPARE ls2",
        # settings, session level and local
        "SET search_path = pg_temp, public", "SET SCHEMA 'pg_catalog'", "SET SESSION search_path TO public",
        "SELECT set_config('search_path', 'pg_catalog', false)", "SELECT set_config('search_path', 'x', true)",
        "BEGIN; SET LOCAL search_path = x; COMMIT", "SET statement_timeout = 1234",
        "SET lock_timeout = '5s'", "SET work_mem = '8MB'", "SET xmloption = content",
        "SET client_min_messages = error", "SELECT set_config('lock_timeout', '6s', false)",
        "RESET statement_timeout", "BEGIN; SET statement_timeout = 4321; ROLLBACK",
        "SET SESSION client_min_messages TO DEFAULT",
        "SET XML OPTION DOCUMENT", 'SET "work_mem" = \'9MB\'', "SET SESSION work_mem = '7MB'",
        "RESET work_mem", "RESET ALL", "DISCARD ALL", "DISCARD TEMP", "DISCARD PLANS",
        "SET default_transaction_read_only = on", "SET default_transaction_isolation = 'serializable'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET TRANSACTION READ ONLY",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT",
        "SET ROLE app_owner", "SET ROLE NONE", "RESET ROLE", "SET SESSION AUTHORIZATION DEFAULT",
        "SET SESSION AUTHORIZATION app_owner", "LOAD 'plpgsql'",
        # tracked settings (restored for every borrower)
        "SET TimeZone = 'Asia/Tokyo'", "SET TIME ZONE 'Europe/Paris'", "RESET TIME ZONE",
        "SET DateStyle = 'German'", "SET datestyle TO 'SQL, DMY'", "SET IntervalStyle = 'iso_8601'",
        "SET application_name = 'fuzz-leftovers'", "SET NAMES 'LATIN1'", "SET client_encoding = 'UTF8'",
        "SET standard_conforming_strings = off", "SET standard_conforming_strings = on",
        "SELECT set_config('TimeZone', 'UTC', false)", "RESET DateStyle",
        # plain work, transactions
        "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT ls", "ROLLBACK TO ls", "SELECT 1", "SELECT 1/0",
        "SELECT count(*) FROM todos", "INSERT INTO todos (title) VALUES ('leftover')",
        "DO $$BEGIN PERFORM set_config('search_path', 'x', false); END$$",
        "do language plpgsql $x$begin execute 'set work_mem = ''3MB'''; end$x$",
    ]
    for tid in other:
        sql += [f"SET nile.tenant_id = '{tid}'", f"SET LOCAL nile.tenant_id = '{tid}'",
                f"SELECT set_config('nile.tenant_id', '{tid}', false)",
                f"BEGIN; SET LOCAL nile.tenant_id = '{tid}'; SELECT count(*) FROM todos",
                f'SET "nile".tenant_id = \'{tid}\'', f"SET SESSION NILE.TENANT_ID TO '{tid}'",
                f"BEGIN; SET nile.tenant_id = '{tid}'; ROLLBACK",
                f"SET nile.tenant_id = '{tid}'; SELECT 1/0"]
    sql += ["RESET nile.tenant_id", "SET nile.user_id = 'cccccccc-0000-4000-8000-000000000002'",
            "RESET nile.user_id"]
    return sql


def state_messages(r: random.Random, sql: list[str]) -> list[bytes]:
    """One to six whole (rarely damaged) messages running statements of `sql`: Query with one to
    three of them, or Parse (named or unnamed), Bind or a Describe of the statement, Execute,
    Sync."""
    out = []
    for _ in range(r.randrange(1, 7)):
        if r.random() < 0.55:
            text = "; ".join(r.choice(sql) for _ in range(r.choice([1, 1, 2, 3])))
            out.append(h.message(b"Q", damaged(r, cstr(text.encode()), rate=0.03)))
            continue
        name = r.choice(["", "ls1", "ls2"])
        if r.random() < 0.1:
            # a statement of an earlier message, or of an earlier borrower
            lone = r.choice(["", "ls1", "ls2", "tp_0"])
            out += [ExtConn.bind(lone, []), ExtConn.execute(), ExtConn.sync()]
            continue
        out.append(ExtConn.parse(name, r.choice(sql)))
        if r.random() < 0.9:
            out.append(ExtConn.bind(name, []))
            if r.random() < 0.3:
                out.append(h.message(b"D", b"P\x00"))
            out.append(ExtConn.execute())
        elif r.random() < 0.5:
            # described, to be bound by a later batch (pgx's describe-exec mode)
            out.append(ExtConn.describe_statement(name))
        if r.random() < 0.8:
            out.append(ExtConn.sync())
    return out
