"""Seeded structured fuzzing of the proxy's protocol handling, after log-in and during it.

Each iteration is one raw client that sends a few frontend messages built from the protocol's
shapes (Query, Parse, Bind, Describe, Execute, Close, Sync, Flush, COPY messages, FunctionCall,
Terminate, a password message, unknown types), some of them damaged: cut short, a byte changed,
bytes added, counts that promise more than follows, a frame length that disagrees with the body.
Then the client either half-closes its socket and reads until the proxy closes it, or (whole
messages only) sends a Sync, a ROLLBACK and a marker query and reads until the marker's answer.
In both pool modes the proxy must send only whole messages and well-formed ErrorResponses, never
hang and never crash, and every tenth iteration well-behaved clients of two tenants must find
their own tenant context, no open transaction, and only their tenant's rows, on the connections
the fuzzing clients borrowed before them.

The log-in variant damages the start-up packet, the SASL mechanism and lengths, and the SCRAM
client-first and client-final messages.

`FUZZ_SEED` and `FUZZ_ITERS` (environment) change the seed and the number of iterations:

    FUZZ_SEED=7 FUZZ_ITERS=2000 python3 -m pytest Tests/integration/test_fuzz.py -q
"""

from __future__ import annotations

import base64
import os
import random
import socket
import struct

import pytest

import pgharness as h
import pooling_support as ps
import tenancy_support as ts
from pooling_support import ALL_TENANTS, make_pool_tproxy, pool_tcluster  # noqa: F401

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


def check_neighbour(p, user: str, tenant: str, what):
    """A well-behaved client after the fuzzing ones: its own context, a connection outside any
    transaction, only its own tenant's rows."""
    own = ALL_TENANTS[tenant]
    with ps.tconnect(p, user) as conn:
        tid, in_txn, foreign = conn.execute(
            "SELECT current_setting('nile.tenant_id'), "
            "pg_current_xact_id_if_assigned() IS NOT NULL, "
            "count(*) FILTER (WHERE tenant_id::text <> current_setting('nile.tenant_id')) "
            "FROM todos").fetchone()
        assert (tid, in_txn, foreign) == (own, False, 0), what()


def read_until_marker_or_closed(raw: h.RawConn, what) -> bytes:
    """Everything up to the ReadyForQuery after the marker query's row, or to the close."""
    raw.sock.settimeout(30)
    data = bytes(raw.buf)
    raw.buf.clear()
    seen_marker = False
    while True:
        offset = 0
        while offset + 5 <= len(data):
            (length,) = struct.unpack("!I", data[offset + 1:offset + 5])
            if length < 4 or offset + 1 + length > len(data):
                break
            tag, body = data[offset:offset + 1], data[offset + 5:offset + 1 + length]
            seen_marker = seen_marker or (tag == b"D" and MARKER in body)
            offset += 1 + length
            if tag == b"Z" and seen_marker:
                return data[:offset]
        try:
            chunk = raw.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data
        except socket.timeout:
            raise AssertionError(f"the proxy neither answered the marker nor closed: {what()!r}")
        if not chunk:
            return data
        data += chunk


MARKER = b"fuzz-marker-4f2a"


@pytest.mark.timeout_s(600)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("ending", ["half-close", "answered"])
def test_damaged_messages_after_log_in(make_pool_tproxy, mode, ending):
    """ending: half-close: the client ends its stream after the messages (which may be cut
    anywhere) and reads to the close; answered: whole messages, then a Sync, a ROLLBACK and a
    query whose answer the client waits for, unless the proxy closes the connection."""
    p = make_pool_tproxy(mode=mode, size=2)
    r = random.Random(f"{SEED}-{mode}-{ending}")
    for i in range(ITERS):
        framed = ending == "answered"
        frames = [frontend_frame(r, framed) for _ in range(r.randrange(1, 10))]
        if framed:
            # ROLLBACK first: a failed transaction would answer the marker with an error.
            frames += [h.message(b"S"), h.message(b"Q", b"ROLLBACK\x00"),
                       h.message(b"Q", b"SELECT '" + MARKER + b"'\x00")]
        elif r.random() < 0.7:
            frames.append(h.message(b"S"))

        def what():
            return f"seed {SEED} iteration {i}: {frames!r}\n--- proxy stderr ---\n{p.stderr()}"

        with h.RawConn(p.host, p.port) as raw:
            raw.startup("alice", ps.password_of("alice"), ts.APP_DB)
            try:
                raw.send(b"".join(frames))
                if not framed:
                    raw.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass   # the proxy closed first: fine
            if framed:
                assert_well_formed(read_until_marker_or_closed(raw, what), what)
            else:
                rest = h.read_until_closed(raw.sock, 30, what=what)
                assert_well_formed(bytes(raw.buf) + rest, what)
        assert p.alive(), what()
        if i % 10 == 9:
            check_neighbour(p, "bob", "globex", what)
            check_neighbour(p, "alice", "acme", what)


@pytest.mark.timeout_s(600)
def test_damaged_log_ins(make_pool_tproxy):
    p = make_pool_tproxy(mode="transaction", size=2)
    r = random.Random(f"{SEED}-log-in")
    keys = [b"user", b"database", b"options", b"application_name", b"client_encoding",
            b"TimeZone", b"DateStyle", b"replication", b"_pq_.x", b"nile.tenant_id", b""]
    values = [b"", b"alice", b"-c x=1", b"UTF8", b"\xff", b"a" * 300, b"true",
              b"-c nile.tenant_id=1"]
    for i in range(ITERS):
        params = {b"user": b"alice", b"database": ts.APP_DB.encode()}
        for _ in range(r.choice([0, 0, 1, 2, 3])):
            params[r.choice(keys)] = r.choice(values)
        if r.random() < 0.1:
            del params[b"user"]
        version = (h.PROTOCOL_3 if r.random() < 0.95
                   else r.choice([0x00030001, 0x00030002, 0x04D2162F]))
        body = struct.pack("!I", version) + b"".join(k + b"\x00" + v + b"\x00"
                                                     for k, v in params.items())
        body = damaged(r, body + b"\x00", rate=0.2)
        sent = [body]

        def what():
            return f"seed {SEED} iteration {i}: {sent!r}\n--- proxy stderr ---\n{p.stderr()}"

        with h.RawConn(p.host, p.port) as raw:
            try:
                raw.send(struct.pack("!I", len(body) + 4) + body)
                while True:
                    tag, msg = raw.read_message()
                    if tag in (b"E", b"Z"):
                        assert_well_formed(tag + struct.pack("!I", len(msg) + 4) + msg, what)
                        break
                    if tag != b"R":
                        continue
                    (code,) = struct.unpack("!I", msg[:4])
                    if code == 0:
                        continue
                    if r.random() < 0.05:
                        # Anything at all instead of the answer (its length may be wrong, so
                        # the proxy may wait for more): end the stream and read to the close.
                        out = frontend_frame(r)
                        sent.append(out)
                        raw.send(out)
                        raw.sock.shutdown(socket.SHUT_WR)
                        rest = h.read_until_closed(raw.sock, 30, what=what)
                        assert_well_formed(bytes(raw.buf) + rest, what)
                        break
                    if code == 10:
                        first = damaged(r, b"n,,n=,r=fuzzfuzzfuzzfuzzfuzzfuzz", rate=0.5)
                        mechanism = r.choice([b"SCRAM-SHA-256"] * 3
                                             + [b"SCRAM-SHA-256-PLUS", b"X", b""])
                        length = r.choice([len(first)] * 3 + [-1, len(first) + 5, 0x7FFFFFFF])
                        out = h.message(b"p", mechanism + b"\x00"
                                        + struct.pack("!i", length) + first)
                    elif code == 11:
                        attrs = dict(a.split(b"=", 1) for a in msg[4:].split(b",") if b"=" in a)
                        proof = base64.b64encode(r.randbytes(32))
                        final = b"c=biws,r=" + attrs.get(b"r", b"") + b",p=" + proof
                        out = h.message(b"p", damaged(r, final, rate=0.5))
                    else:
                        out = h.message(b"p", b"whatever\x00")
                    sent.append(out)
                    raw.send(out)
            except TimeoutError:
                raise AssertionError(f"the proxy did not answer a whole message: {what()!r}")
            except ConnectionError:
                pass   # closed by the proxy after its error, or at once
        assert p.alive(), what()
        if i % 10 == 9:
            check_neighbour(p, "bob", "globex", what)
