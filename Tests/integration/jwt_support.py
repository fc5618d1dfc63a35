"""JWT helpers for test_tls_auth.py: signing keys (RS256, ES256, EdDSA, HS256), good and hostile
tokens, JWKS documents written to files or served from a loopback HTTP server whose document can
be swapped (key rotation)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

warnings.filterwarnings("ignore", message=".*EdDSA.*")
try:  # joserfc warns about EdDSA (RFC 9864); that is what we test
    from joserfc.errors import SecurityWarning  # type: ignore
    warnings.filterwarnings("ignore", category=SecurityWarning)
except Exception:  # noqa: BLE001
    pass


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass
class SigningKey:
    alg: str           # RS256 | ES256 | EdDSA | HS256
    kid: str | None
    key: object        # joserfc key

    @staticmethod
    def generate(alg: str, kid: str | None, secret: bytes | None = None) -> "SigningKey":
        if alg == "RS256":
            k = RSAKey.generate_key(2048)
        elif alg == "ES256":
            k = ECKey.generate_key("P-256")
        elif alg == "EdDSA":
            k = OKPKey.generate_key("Ed25519")
        elif alg == "HS256":
            k = OctKey.import_key(secret if secret is not None else secrets.token_bytes(48))
        else:
            raise ValueError(alg)
        return SigningKey(alg, kid, k)

    def public_jwk(self) -> dict:
        d = dict(self.key.as_dict(private=False))
        if self.kid is not None:
            d["kid"] = self.kid
        d["alg"] = self.alg
        d["use"] = "sig"
        return d

    def public_pem(self) -> bytes:
        return self.key.as_pem(private=False)

    def private_marker(self) -> str:
        """A piece of the private key material (must never appear in a log)."""
        d = self.key.as_dict(private=True)
        return d.get("d") or d.get("k")

    def sign(self, claims: dict, *, header_extra: dict | None = None, kid: str | None = "self",
             alg: str | None = None) -> str:
        header = {"alg": alg or self.alg, "typ": "JWT"}
        use_kid = self.kid if kid == "self" else kid
        if use_kid is not None:
            header["kid"] = use_kid
        header.update(header_extra or {})
        return jwt.encode(header, claims, self.key, algorithms=[header["alg"]])


def jwks(*keys: SigningKey) -> dict:
    return {"keys": [k.public_jwk() for k in keys if k.alg != "HS256"]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(jwks(*keys), indent=2))
    tmp.replace(path)
    return path


@dataclass
class Claims:
    issuer: str
    audience: str

    def make(self, tenant=None, sub=None, *, exp_in: float | None = 600, nbf_in: float | None = None,
             iat: bool = True, iss: str | None = "default", aud: object = "default",
             extra: dict | None = None, tenant_claim: str = "tenant_id") -> dict:
        now = int(time.time())
        c: dict = {}
        if iss is not None:
            c["iss"] = self.issuer if iss == "default" else iss
        if aud is not None:
            c["aud"] = self.audience if aud == "default" else aud
        if sub is not None:
            c["sub"] = sub
        if iat:
            c["iat"] = now
        if exp_in is not None:
            c["exp"] = now + int(exp_in)
        if nbf_in is not None:
            c["nbf"] = now + int(nbf_in)
        if tenant is not None:
            # dotted path -> nested objects
            parts = tenant_claim.split(".")
            node = c
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = tenant
        c.update(extra or {})
        return c


# ---------------------------------------------------------------------------------------------
# hostile token construction (no library would produce these)


def unsigned_token(claims: dict, header: dict | None = None) -> str:
    """alg: none, empty signature."""
    hdr = {"alg": "none", "typ": "JWT"}
    hdr.update(header or {})
    return f"{b64url_json(hdr)}.{b64url_json(claims)}."


def hs256_with_secret(claims: dict, secret: bytes, header: dict | None = None) -> str:
    """HS256 over the compact form with an arbitrary secret (e.g. an RSA public key's PEM:
    the classic RS256->HS256 key-confusion attack)."""
    hdr = {"alg": "HS256", "typ": "JWT"}
    hdr.update(header or {})
    signing_input = f"{b64url_json(hdr)}.{b64url_json(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def tamper_payload(token: str, **changes) -> str:
    """Change claims of a signed token, keeping its header and signature."""
    h, p, s = token.split(".")
    claims = json.loads(b64url_decode(p))
    claims.update(changes)
    return f"{h}.{b64url_json(claims)}.{s}"


def replace_header(token: str, **changes) -> str:
    h, p, s = token.split(".")
    hdr = json.loads(b64url_decode(h))
    hdr.update(changes)
    return f"{b64url_json(hdr)}.{p}.{s}"


# ---------------------------------------------------------------------------------------------
# JWKS over HTTP (loopback)


class JWKSServer:
    """A loopback HTTP server answering GET /jwks.json with the current document. set_keys()
    swaps it atomically; `hits` counts requests (so a test can wait for the proxy's refetch)."""

    def __init__(self):
        self._doc = json.dumps({"keys": []}).encode()
        self._lock = threading.Lock()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                with outer._lock:
                    outer.hits += 1
                    doc = outer._doc
                if self.path.split("?")[0] != "/jwks.json":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(doc)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(doc)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def set_keys(self, *keys: SigningKey):
        doc = json.dumps(jwks(*keys)).encode()
        with self._lock:
            self._doc = doc

    def hit_count(self) -> int:
        with self._lock:
            return self.hits

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@dataclass
class KeyRing:
    """The keys a test run uses; secrets() lists everything that must never be logged."""
    rsa: SigningKey
    ec: SigningKey
    ed: SigningKey
    hs: SigningKey
    hs_secret: bytes
    rogue_rsa: SigningKey          # not in any JWKS
    tokens: list[str] = field(default_factory=list)

    @staticmethod
    def create() -> "KeyRing":
        secret = secrets.token_urlsafe(40).encode()   # ASCII, >= 32 bytes
        return KeyRing(
            rsa=SigningKey.generate("RS256", "rsa-1"),
            ec=SigningKey.generate("ES256", "ec-1"),
            ed=SigningKey.generate("EdDSA", "ed-1"),
            hs=SigningKey.generate("HS256", None, secret),
            hs_secret=secret,
            rogue_rsa=SigningKey.generate("RS256", "rsa-1"),
        )

    def remember(self, token: str) -> str:
        self.tokens.append(token)
        return token

    def secrets(self) -> list[str]:
        out = [self.hs_secret.decode()]
        for k in (self.rsa, self.ec, self.ed, self.rogue_rsa):
            out.append(k.private_marker())
        # a token is a secret: its signature part is the distinctive piece
        out += [t for t in self.tokens]
        out += [t.split(".")[2] for t in self.tokens if t.count(".") == 2 and t.split(".")[2]]
        return out
