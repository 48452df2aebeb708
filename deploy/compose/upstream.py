#!/usr/bin/env python3
"""The demo API of the compose stack: answers every request with what it got, in JSON.

It never echoes a credential: of `Authorization` it tells only whether there was one, its
scheme, and the first 12 hex characters of the SHA-256 of what follows the scheme (compare
with the secret in OpenBao). Standard library only.

    python3 upstream.py --listen 0.0.0.0:8080
"""

import argparse
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization")
        scheme, _, value = (auth or "").partition(" ")
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "authorization": auth is not None,
            "scheme": scheme or None,
            "sha256_12": hashlib.sha256(value.encode()).hexdigest()[:12] if value else None,
        }).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, fmt, *args):  # no request lines (they would carry nothing secret,
        pass                             # but the audit trail is sidekey's job)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="0.0.0.0:8080")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"upstream listening on {a.listen}", flush=True)
    server.serve_forever()
