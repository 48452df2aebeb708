#!/usr/bin/env python3
"""Verifies a JWT's signature against a JWKS document, the way an upstream API would.

Usage: jwtverify.py JWKS_JSON TOKEN
Prints {"valid": bool, "header": {...}, "payload": {...}, "error": str|null}.
Supports EdDSA (OKP/Ed25519) and ES256 (EC/P-256) keys, chosen by the token's `kid`.
Used by tests/common/clients.rs.
"""

import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify(jwks, token):
    head_b64, payload_b64, sig_b64 = token.split(".")
    header = json.loads(b64url(head_b64))
    raw = b64url(payload_b64)
    try:
        payload = json.loads(raw)
    except ValueError:  # a JWS need not carry JSON; a JWT does, and the tests check that
        payload = raw.decode("utf-8", "replace")
    out = {"valid": False, "header": header, "payload": payload, "error": None}
    keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
    if not keys:
        out["error"] = f"no key with kid {header.get('kid')!r} in JWKS"
        return out
    key = keys[0]
    signing_input = f"{head_b64}.{payload_b64}".encode()
    sig = b64url(sig_b64)
    try:
        if header.get("alg") == "EdDSA" and key.get("kty") == "OKP" and key.get("crv") == "Ed25519":
            Ed25519PublicKey.from_public_bytes(b64url(key["x"])).verify(sig, signing_input)
        elif header.get("alg") == "ES256" and key.get("kty") == "EC" and key.get("crv") == "P-256":
            pub = ec.EllipticCurvePublicNumbers(
                int.from_bytes(b64url(key["x"]), "big"),
                int.from_bytes(b64url(key["y"]), "big"),
                ec.SECP256R1(),
            ).public_key()
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            pub.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
        else:
            out["error"] = f"unsupported alg {header.get('alg')!r} / key {key}"
            return out
    except InvalidSignature:
        out["error"] = "invalid signature"
        return out
    out["valid"] = True
    return out


def main():
    jwks = json.loads(sys.argv[1])
    try:
        out = verify(jwks, sys.argv[2])
    except Exception as e:
        out = {"valid": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
