"""A stand-in for GitHub's REST API as a GitHub App sees it, for tests/github_app.rs.

Plain HTTP on loopback. Implements:

- `POST /app/installations/{id}/access_tokens`: the App JWT in `Authorization: Bearer` is
  verified with the App's public key (`--public-key`, PEM): RS256 only (`none`, HS256 and
  anything else refused), signature, `iss` = `--app-id`, `iat` no more than 60 s in the future,
  `exp` not passed, `exp - iat` at most 10 minutes; the installation must be
  `--installation-id`; `Accept: application/vnd.github+json` and `X-GitHub-Api-Version` must
  be sent. The body's `permissions` (required) and `repositories` (optional) are what the
  token is narrowed to. Answers 201 `{token, expires_at (now + 1 h), permissions,
  repositories, repository_selection}`, with what was asked for (plus `metadata: read`, as
  GitHub does) — or, in over-granting mode (`--overgrant`, or `POST /_mode` with body
  `overgrant`; `normal` sets it back), `administration: write` and a repository `secrets` on
  top, to test that the client fails closed.
- `DELETE /installation/token`: revokes the token it is called with (204), 401 for a token
  unknown, revoked or expired.
- `GET|POST /repos/{owner}/{repo}/{resource}[/...]`: a resource a live token may reach only
  within its narrowing: the repository must be one it was minted for (or any, if minted for
  all), and its permission for the resource (`issues`, `contents`, `pulls` → `pull_requests`)
  must be `read` or more for GET, `write` or more otherwise. The token may come as
  `Authorization: Bearer`, `token`, or Basic `x-access-token:<token>`. 200 with
  `{"ok": true, "repo", "resource"}`, else 401 (no live token) or 403 (outside the narrowing).
  `POST /_reject_next` makes the next resource request a 401 whatever its token (a token
  GitHub stopped taking, as after an App's permissions changed).
- git over HTTPS, as github.com serves it: `/{owner}/{repo}[.git]/info/refs`,
  `git-upload-pack` (permission `contents: read`) and `git-receive-pack` (or `info/refs?service=
  git-receive-pack`: `contents: write`), checked the same way (the answer is JSON, not git's
  protocol).

With `--tls-cert` and `--tls-key` (PEM) it serves HTTPS instead.

Prints one JSON line on stdout per event: `{"event": "ready", "port"}` first, then `minted`
(with `token`, `hashed_token` = base64(SHA-256(token)), `key` (the 0-based index of the
`--public-key` that verified the JWT), the JWT's `alg`, `iss`, `iat`, `exp`,
`installation_id`, `asked` {permissions, repositories}, `granted`), `refused` (with `reason`),
`revoked` (with `hashed_token`), `resource` (with `method`, `path`, `status`, `hashed_token`).

Usage: github_app_server.py --public-key PEM [--public-key PEM…] --app-id N --installation-id N [--overgrant]
"""

import argparse
import base64
import ssl
import hashlib
import json
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

LOCK = threading.Lock()
STATE = {"overgrant": False, "reject_next": 0}
# token -> {"permissions", "repositories" (None: all), "expires", "revoked"}
TOKENS = {}
LEVELS = {"read": 1, "write": 2, "admin": 3}
RESOURCE_PERMISSION = {"issues": "issues", "contents": "contents", "pulls": "pull_requests"}


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def hashed(token):
    return base64.b64encode(hashlib.sha256(token.encode()).digest()).decode()


def b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class Refused(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def verify_app_jwt(jwt, public_keys, app_id):
    """The header, claims and verifying key's index of the App JWT, or Refused(401)."""
    parts = jwt.split(".")
    if len(parts) != 3:
        raise Refused(401, "not a JWT")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except ValueError as e:
        raise Refused(401, f"malformed JWT: {e}")
    if header.get("alg") != "RS256":
        raise Refused(401, f"alg {header.get('alg')!r} is not RS256")
    key = None
    for index, public_key in enumerate(public_keys):
        try:
            public_key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            key = index
            break
        except InvalidSignature:
            continue
    if key is None:
        raise Refused(401, "bad signature")
    now = time.time()
    iss, iat, exp = claims.get("iss"), claims.get("iat"), claims.get("exp")
    if iss != str(app_id):
        raise Refused(401, f"iss {iss!r} is not the App ID {app_id} as a string")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise Refused(401, "iat and exp must be integers")
    if iat > now + 60:
        raise Refused(401, "iat is in the future")
    if exp <= now:
        raise Refused(401, "exp has passed")
    if exp - iat > 600:
        raise Refused(401, "exp is more than 10 minutes after iat")
    return header, claims, key


def token_of(headers):
    value = headers.get("Authorization", "")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() in ("bearer", "token"):
        return rest.strip()
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(rest.strip()).decode().partition(":")
        except ValueError:
            return None
        return password if user == "x-access-token" else None
    return None


def live(token):
    entry = TOKENS.get(token)
    if entry is None or entry["revoked"] or entry["expires"] <= time.time():
        return None
    return entry


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_POST(self):
        body = self.body()
        if self.path == "/_mode":
            STATE["overgrant"] = body.strip() == b"overgrant"
            return self.answer(204)
        if self.path == "/_reject_next":
            with LOCK:
                STATE["reject_next"] += 1
            return self.answer(204)
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", self.path)
        if m:
            return self.mint(int(m.group(1)), body)
        return self.resource("POST")

    def do_GET(self):
        return self.resource("GET")

    def do_DELETE(self):
        if self.path != "/installation/token":
            return self.answer(404, {"message": "Not Found"})
        token = token_of(self.headers)
        with LOCK:
            entry = live(token) if token else None
            if entry is not None:
                entry["revoked"] = True
        if entry is None:
            emit({"event": "refused", "reason": "revocation of an unknown or dead token"})
            return self.answer(401, {"message": "Bad credentials"})
        emit({"event": "revoked", "hashed_token": hashed(token)})
        return self.answer(204)

    def mint(self, installation_id, body):
        try:
            if self.headers.get("Accept") != "application/vnd.github+json":
                raise Refused(415, f"Accept is {self.headers.get('Accept')!r}")
            if not self.headers.get("X-GitHub-Api-Version"):
                raise Refused(400, "no X-GitHub-Api-Version")
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                raise Refused(401, "no bearer JWT")
            header, claims, key = verify_app_jwt(auth[7:], ARGS.keys, ARGS.app_id)
            if installation_id != ARGS.installation_id:
                raise Refused(404, f"installation {installation_id} not found")
            try:
                asked = json.loads(body or b"{}")
            except ValueError:
                raise Refused(400, "body is not JSON")
            permissions = asked.get("permissions")
            repositories = asked.get("repositories")
            if not isinstance(permissions, dict) or not permissions:
                raise Refused(422, "no permissions asked for")
            if any(v not in LEVELS for v in permissions.values()):
                raise Refused(422, "unknown permission level")
            if repositories is not None and (
                not isinstance(repositories, list) or not repositories
            ):
                raise Refused(422, "repositories must be a non-empty list")
        except Refused as e:
            emit({"event": "refused", "reason": e.reason, "status": e.status})
            return self.answer(e.status, {"message": e.reason})
        granted = dict(permissions)
        granted.setdefault("metadata", "read")
        repos = list(repositories) if repositories is not None else None
        if STATE["overgrant"]:
            granted["administration"] = "write"
            repos = (repos or []) + ["secrets"]
        token = "ghs_" + secrets.token_urlsafe(27)
        expires = int(time.time()) + 3600
        with LOCK:
            TOKENS[token] = {
                "permissions": granted,
                "repositories": repos,
                "expires": expires,
                "revoked": False,
            }
        emit(
            {
                "event": "minted",
                "token": token,
                "hashed_token": hashed(token),
                "alg": header.get("alg"),
                "key": key,
                "iss": claims.get("iss"),
                "iat": claims.get("iat"),
                "exp": claims.get("exp"),
                "installation_id": installation_id,
                "asked": {"permissions": permissions, "repositories": repositories},
                "granted": {"permissions": granted, "repositories": repos},
            }
        )
        answer = {
            "token": token,
            "expires_at": datetime.fromtimestamp(expires, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "permissions": granted,
            "repository_selection": "all" if repos is None else "selected",
        }
        if repos is not None:
            answer["repositories"] = [
                {"id": i + 1, "name": r, "full_name": f"acme/{r}"} for i, r in enumerate(repos)
            ]
        return self.answer(201, answer)

    def resource(self, method):
        path, _, query = self.path.partition("?")
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/([a-z_]+)(/.*)?", path)
        git = re.fullmatch(
            r"/([^/]+)/([^/]+?)(?:\.git)?/(info/refs|git-upload-pack|git-receive-pack)", path
        )
        if m:
            repo, resource = m.group(2), m.group(3)
            permission = RESOURCE_PERMISSION.get(resource)
            needed = 1 if method == "GET" else 2
        elif git:
            repo, resource = git.group(2), git.group(3)
            permission = "contents"
            push = resource == "git-receive-pack" or "service=git-receive-pack" in query
            needed = 2 if push else 1
        else:
            return self.answer(404, {"message": "Not Found"})
        token = token_of(self.headers)
        with LOCK:
            entry = live(token) if token else None
        status = 200
        with LOCK:
            rejected = STATE["reject_next"] > 0
            if rejected:
                STATE["reject_next"] -= 1
        if entry is None or rejected:
            status = 401
        else:
            repos = entry["repositories"]
            level = entry["permissions"].get(permission or "", "")
            if repos is not None and repo.lower() not in [r.lower() for r in repos]:
                status = 403
            elif LEVELS.get(level, 0) < needed:
                status = 403
        emit(
            {
                "event": "resource",
                "method": method,
                "path": self.path,
                "status": status,
                "hashed_token": hashed(token) if token else None,
            }
        )
        if status == 200:
            return self.answer(200, {"ok": True, "repo": repo, "resource": resource})
        message = "Bad credentials" if status == 401 else "Resource not accessible by integration"
        return self.answer(status, {"message": message})


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--public-key", required=True, action="append")
    parser.add_argument("--app-id", type=int, required=True)
    parser.add_argument("--installation-id", type=int, required=True)
    parser.add_argument("--overgrant", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    ARGS = parser.parse_args()
    ARGS.keys = []
    for path in ARGS.public_key:
        with open(path, "rb") as f:
            key = serialization.load_pem_public_key(f.read())
        if not isinstance(key, rsa.RSAPublicKey):
            sys.exit("the App's public keys must be RSA")
        ARGS.keys.append(key)
    STATE["overgrant"] = ARGS.overgrant
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    if ARGS.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    emit({"event": "ready", "port": server.server_address[1]})
    server.serve_forever()


if __name__ == "__main__":
    main()
