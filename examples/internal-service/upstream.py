#!/usr/bin/env python3
"""A tiny internal service that trusts sidekey's `local` issuer.

Every request must carry `Authorization: Bearer <JWT>` signed by a key in sidekey's JWKS
(`/.well-known/jwks.json` on its admin listener), with the expected `iss` and `aud`, and
within `nbf`..`exp`. The answer says what it verified:

    200 {"verified": true, "sub": ..., "aud": ..., "iss": ..., "jti": ..., "method": ..., "path": ...}
    401 {"verified": false, "error": "..."}

Keys are fetched by `kid` and fetched again when a token names an unknown one (sidekey makes a
new key at every start). EdDSA (Ed25519) and ES256 (P-256), the local issuer's two algorithms.

    pip install cryptography
    python3 upstream.py --listen 127.0.0.1:18080 \
        --jwks-url http://127.0.0.1:15090/.well-known/jwks.json \
        --issuer sidekey-local --audience reports-api
"""

import argparse
import base64
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

LEEWAY = 30  # seconds of clock skew accepted on exp/nbf


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Keys:
    """sidekey's public keys by kid, fetched from its JWKS (again for an unknown kid)."""

    def __init__(self, url):
        self.url, self.keys, self.lock = url, {}, threading.Lock()

    def get(self, kid):
        with self.lock:
            if kid not in self.keys:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.keys = {k["kid"]: k for k in json.load(r)["keys"]}
            return self.keys.get(kid)


def verify(token, keys, issuer, audience):
    """The token's claims if it is valid, else raises ValueError."""
    try:
        head_b64, payload_b64, sig_b64 = token.split(".")
        header, claims = json.loads(b64url(head_b64)), json.loads(b64url(payload_b64))
    except ValueError as e:
        raise ValueError(f"not a JWT: {e}")
    key = keys.get(header.get("kid"))
    if key is None:
        raise ValueError(f"no key {header.get('kid')!r} in sidekey's JWKS")
    signed, sig = f"{head_b64}.{payload_b64}".encode(), b64url(sig_b64)
    try:
        if header.get("alg") == "EdDSA" and key.get("crv") == "Ed25519":
            Ed25519PublicKey.from_public_bytes(b64url(key["x"])).verify(sig, signed)
        elif header.get("alg") == "ES256" and key.get("crv") == "P-256":
            pub = ec.EllipticCurvePublicNumbers(
                int.from_bytes(b64url(key["x"]), "big"),
                int.from_bytes(b64url(key["y"]), "big"),
                ec.SECP256R1(),
            ).public_key()
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            pub.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
        else:
            raise ValueError(f"unexpected alg {header.get('alg')!r} for key {key.get('kid')!r}")
    except InvalidSignature:
        raise ValueError("bad signature")
    now = time.time()
    if claims.get("iss") != issuer:
        raise ValueError(f"iss {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise ValueError(f"aud {aud!r} does not name {audience!r}")
    if not now < claims.get("exp", 0) + LEEWAY:
        raise ValueError("expired")
    if claims.get("nbf", 0) > now + LEEWAY:
        raise ValueError("not yet valid")
    return claims


def handler(keys, issuer, audience):
    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            auth = self.headers.get("authorization", "")
            try:
                if not auth.startswith("Bearer "):
                    raise ValueError("no bearer token")
                claims = verify(auth[len("Bearer "):], keys, issuer, audience)
                status = 200
                body = {"verified": True, "method": self.command, "path": self.path}
                body.update({k: claims.get(k) for k in ("sub", "aud", "iss", "jti", "exp")})
            except ValueError as e:
                status, body = 401, {"verified": False, "error": str(e)}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

        def log_message(self, fmt, *args):
            sys.stderr.write("upstream: " + fmt % args + "\n")

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:18080")
    p.add_argument("--jwks-url", default="http://127.0.0.1:15090/.well-known/jwks.json")
    p.add_argument("--issuer", default="sidekey-local")
    p.add_argument("--audience", default="reports-api")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler(Keys(a.jwks_url), a.issuer, a.audience))
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
