#!/usr/bin/env python3
"""TLS probes with exact control over what OpenSSL (through Python's ssl module) offers, for
tests/tls_*.rs. Two modes:

  client: CONNECT through the forward proxy, then a TLS handshake with the chosen SNI (or none)
          and TLS version range, then one GET. Prints one JSON object:
          {"connect_status", "handshake": "ok"|"failed", "version", "error", "status", "body"}
  old-server: an HTTPS server that speaks only TLS 1.0/1.1 (the test CA's leaf and key from
          files); prints {"port": N} and serves until killed, answering 200 to anything.

OpenSSL 3 refuses TLS < 1.2 at its default security level; both modes lower it to 0 for the
old versions, so the only side refusing is sidekey.
"""

import argparse
import json
import socket
import ssl
import sys
import threading
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def client(args):
    out = {"connect_status": 0, "handshake": "failed"}
    proxy_host, proxy_port = args.proxy.rsplit(":", 1)
    raw = socket.create_connection((proxy_host, int(proxy_port)), timeout=15)
    raw.sendall(f"CONNECT {args.connect} HTTP/1.1\r\nHost: {args.connect}\r\n\r\n".encode())
    head = read_head(raw).decode("latin-1")
    out["connect_status"] = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    if out["connect_status"] != 200:
        print(json.dumps(out))
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.cafile:
        ctx.load_verify_locations(args.cafile)
        ctx.check_hostname = args.sni not in (None, "none")
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = VERSIONS[args.min_version]
    ctx.maximum_version = VERSIONS[args.max_version]
    if args.min_version in ("1.0", "1.1"):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    sni = None if args.sni in (None, "none") else args.sni
    try:
        tls = ctx.wrap_socket(raw, server_hostname=sni)
    except (ssl.SSLError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out))
        return
    out["handshake"] = "ok"
    out["version"] = tls.version()
    tls.sendall(
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n".encode()
    )
    data = b""
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ssl.SSLError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    if head.startswith("HTTP/"):
        out["status"] = int(head.split(" ", 2)[1])
        out["head"] = head
        out["body"] = body
    print(json.dumps(out))


def old_server(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.load_cert_chain(args.cert, args.key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)

    def serve(conn):
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
            read_head(tls)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            tls.close()
        except (ssl.SSLError, OSError) as e:
            print(json.dumps({"handshake_error": str(e)}), flush=True)
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("client")
    c.add_argument("--proxy", required=True, help="host:port of the forward listener")
    c.add_argument("--connect", required=True, help="CONNECT authority, host:port")
    c.add_argument("--sni", help="server name to send; 'none' (or absent) sends no SNI")
    c.add_argument("--host", required=True, help="Host header of the GET")
    c.add_argument("--path", default="/echo/probe")
    c.add_argument("--cafile", help="verify against this CA (else no verification)")
    c.add_argument("--min-version", default="1.2", choices=VERSIONS)
    c.add_argument("--max-version", default="1.3", choices=VERSIONS)
    s = sub.add_parser("old-server")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    args = p.parse_args()
    if args.mode == "client":
        client(args)
    else:
        old_server(args)


if __name__ == "__main__":
    sys.exit(main())
