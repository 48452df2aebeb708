#!/usr/bin/env python3
"""One HTTP request with `requests` or `httpx`, configured like an agent's environment
configures it: the proxy from HTTPS_PROXY/HTTP_PROXY, the CA bundle from REQUESTS_CA_BUNDLE
(requests) or SSL_CERT_FILE (httpx). Redirects are not followed. Prints one JSON object:

  {"status", "http_version", "headers": [[name, value]...], "body", "chunks": [[t, data]...],
   "t_end"}   or   {"error", "error_type"}

Times are seconds since the request started; in --stream mode each chunk is timestamped as it
arrives, so a test can tell a streamed response from a buffered one.
Used by tests/common/clients.rs.
"""

import argparse
import json
import os
import ssl
import sys
import time


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--lib", choices=["requests", "httpx"], required=True)
    p.add_argument("--method", default="GET")
    p.add_argument("--url", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--data", help="request body; @FILE reads it from FILE")
    p.add_argument("--http2", action="store_true")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    return p.parse_args()


def headers_of(args):
    out = []
    for h in args.header:
        k, _, v = h.partition(":")
        out.append((k.strip(), v.strip()))
    return out


def body_of(args):
    if args.data is not None and args.data.startswith("@"):
        with open(args.data[1:], "rb") as f:
            return f.read()
    return args.data


def with_requests(args, start):
    import requests

    s = requests.Session()  # trust_env: proxies and REQUESTS_CA_BUNDLE from the environment
    r = s.request(
        args.method,
        args.url,
        headers=dict(headers_of(args)),
        data=body_of(args),
        allow_redirects=False,
        stream=True,
        timeout=args.timeout,
    )
    chunks = []
    body = b""
    for chunk in r.iter_content(chunk_size=None):
        chunks.append([time.monotonic() - start, chunk.decode("utf-8", "replace")])
        body += chunk
    version = {10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2"}.get(r.raw.version, str(r.raw.version))
    return r.status_code, version, list(r.headers.items()), body, chunks


def with_httpx(args, start):
    import httpx

    # trust_env (the default) picks up HTTPS_PROXY / HTTP_PROXY; the CA comes from
    # SSL_CERT_FILE the way an agent's environment would set it.
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    chunks = []
    body = b""
    with httpx.Client(http2=args.http2, verify=ctx, timeout=args.timeout, follow_redirects=False) as c:
        with c.stream(args.method, args.url, headers=headers_of(args), content=body_of(args)) as r:
            for chunk in r.iter_raw():
                chunks.append([time.monotonic() - start, chunk.decode("utf-8", "replace")])
                body += chunk
            return r.status_code, r.http_version, list(r.headers.multi_items()), body, chunks


def main():
    args = parse_args()
    start = time.monotonic()
    try:
        fn = with_requests if args.lib == "requests" else with_httpx
        status, version, headers, body, chunks = fn(args, start)
    except Exception as e:  # report, don't crash: tests assert on failures too
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__}))
        return 0
    out = {
        "status": status,
        "http_version": version,
        "headers": [[k, v] for k, v in headers],
        "body": body.decode("utf-8", "replace"),
        "t_end": time.monotonic() - start,
    }
    if args.stream:
        out["chunks"] = chunks
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
