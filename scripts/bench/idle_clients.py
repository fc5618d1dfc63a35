#!/usr/bin/env python3
"""Open N PostgreSQL client connections that complete authentication, then hold them idle.

Used by scripts/bench/bench.py to measure the resident memory a pooler spends per idle client.
Raw asyncio sockets (no driver): startup packet, SCRAM-SHA-256 / MD5 / cleartext, wait for
ReadyForQuery, then nothing. The salted password of SCRAM is cached per (salt, iterations), so
10,000 log-ins against the same verifier cost one PBKDF2.

Protocol with the parent: prints "READY <ok> <failed> <first error>" on stdout once every
connection has finished its log-in (or failed), then holds them until stdin reaches EOF (or a
line arrives), then sends Terminate on each and exits.

usage: idle_clients.py --host H --port P --user U[,U2,...] --password PW --dbname DB --count N
       (several users are used round-robin, e.g. bench.t01,...,bench.t10 to spread tenants)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import resource
import secrets
import struct
import sys

PROTOCOL_3 = 196608
_SALTED: dict[tuple[bytes, bytes, int], bytes] = {}


def _msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def _startup(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    for k, v in params.items():
        body += k.encode() + b"\x00" + v.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def _salted(password: bytes, salt: bytes, iters: int) -> bytes:
    key = (password, salt, iters)
    if key not in _SALTED:
        _SALTED[key] = hashlib.pbkdf2_hmac("sha256", password, salt, iters)
    return _SALTED[key]


async def _read_msg(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!I", head[1:5])
    return head[:1], await reader.readexactly(length - 4)


async def login(host: str, port: int, user: str, password: str, dbname: str):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_startup({"user": user, "database": dbname, "application_name": "idle-bench",
                               "client_encoding": "UTF8"}))
        await writer.drain()
        pw = password.encode()
        nonce = first_bare = auth_message = server_key = None
        while True:
            tag, body = await _read_msg(reader)
            if tag == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 0:
                    continue
                if code == 3:
                    writer.write(_msg(b"p", pw + b"\x00"))
                elif code == 5:
                    inner = hashlib.md5(pw + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    writer.write(_msg(b"p", b"md5" + outer.encode() + b"\x00"))
                elif code == 10:
                    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
                    first_bare = f"n=,r={nonce}"
                    first = ("n,," + first_bare).encode()
                    writer.write(_msg(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first))
                                      + first))
                elif code == 11:
                    server_first = body[4:].decode()
                    attrs = dict(a.split("=", 1) for a in server_first.split(","))
                    rnonce = attrs["r"]
                    if not rnonce.startswith(nonce):
                        raise RuntimeError("SCRAM: server nonce does not extend ours")
                    salted = _salted(pw, base64.b64decode(attrs["s"]), int(attrs["i"]))
                    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
                    stored_key = hashlib.sha256(client_key).digest()
                    without_proof = f"c=biws,r={rnonce}"
                    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
                    sig = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
                    proof = bytes(a ^ b for a, b in zip(client_key, sig))
                    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
                    writer.write(_msg(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}"
                                      .encode()))
                elif code == 12:
                    attrs = dict(a.split("=", 1) for a in body[4:].decode().split(","))
                    expected = hmac.new(server_key, auth_message, hashlib.sha256).digest()
                    if base64.b64decode(attrs.get("v", "")) != expected:
                        raise RuntimeError("SCRAM: server signature mismatch")
                else:
                    raise RuntimeError(f"unsupported authentication request {code}")
                await writer.drain()
            elif tag == b"E":
                fields = {chr(p[0]): p[1:].decode("utf-8", "replace")
                          for p in body.split(b"\x00") if p}
                raise RuntimeError(f"{fields.get('C')}: {fields.get('M')}")
            elif tag == b"Z":
                return reader, writer
            # S (ParameterStatus), K (BackendKeyData), N (notice): ignore
    except BaseException:
        writer.close()
        raise


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True, help="comma-separated: used round-robin")
    ap.add_argument("--password", required=True)
    ap.add_argument("--dbname", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=64, help="log-ins in flight at once")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.count + 256) if hard != resource.RLIM_INFINITY else args.count + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    users = [u for u in args.user.split(",") if u]
    sem = asyncio.Semaphore(args.concurrency)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def one(i: int):
        async with sem:
            try:
                conns.append(await asyncio.wait_for(
                    login(args.host, args.port, users[i % len(users)], args.password, args.dbname),
                    timeout=60))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i) for i in range(args.count)))
    first = errors[0].replace("\n", " ") if errors else ""
    print(f"READY {len(conns)} {len(errors)} {first}", flush=True)

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)   # hold until the parent says so

    for _, w in conns:
        try:
            w.write(_msg(b"X", b""))
            w.close()
        except Exception:  # noqa: BLE001
            pass
    await asyncio.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
