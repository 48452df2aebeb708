#!/usr/bin/env python3
"""A WebSocket over HTTP/2 (RFC 8441 extended CONNECT) through sidekey's forward listener, for
tests/websocket.rs: CONNECT tunnel, TLS with ALPN h2 (trusting sidekey's CA), then on one h2
stream `:method CONNECT`, `:protocol websocket`, and WebSocket frames in DATA frames.

Usage: ws_h2.py PROXY_HOST:PORT CA_PEM AUTHORITY PATH MESSAGE...
Sends each MESSAGE as a masked text frame and reads one answer for each, then a Close 1000.
Prints one JSON object: {"enable_connect_protocol", "status", "headers", "received",
"close_code", "error"}.
"""

import json
import os
import ssl
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

from h2raw import connect_tunnel  # tests/clients/, next to this script


def client_frame(opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_frames(buf):
    """Whole server frames at the start of buf: ([(fin, opcode, payload)], rest)."""
    frames = []
    while len(buf) >= 2:
        fin, opcode, n = buf[0] & 0x80, buf[0] & 0x0F, buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + n:
            break
        frames.append((bool(fin), opcode, buf[at : at + n]))
        buf = buf[at + n :]
    return frames, buf


def main():
    proxy, ca, authority, path, *messages = sys.argv[1:]
    out = {"enable_connect_protocol": None, "status": None, "headers": {}, "received": [],
           "close_code": None, "error": None}
    sock, status = connect_tunnel(proxy, f"{authority}:443")
    if status != 200:
        out["error"] = f"CONNECT answered {status}"
        print(json.dumps(out))
        return
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname=authority)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                         validate_outbound_headers=False))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    stream_id = None
    pending = list(messages)
    buf = b""
    message = b""
    sent_close = False
    done = False
    while not done:
        raw = tls.recv(65536)
        if not raw:
            out["error"] = out["error"] or "connection closed"
            break
        for ev in conn.receive_data(raw):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                setting = ev.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                if setting is not None:
                    out["enable_connect_protocol"] = setting.new_value
                if stream_id is None:
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, [
                        (":method", "CONNECT"), (":protocol", "websocket"),
                        (":scheme", "https"), (":path", path), (":authority", authority),
                        ("sec-websocket-version", "13"), ("sec-websocket-protocol", "chat.v1"),
                    ])
            elif isinstance(ev, h2.events.ResponseReceived):
                for k, v in ev.headers:
                    if k == ":status":
                        out["status"] = int(v)
                    else:
                        out["headers"][k] = v
                if out["status"] != 200:
                    done = True
                elif pending:
                    conn.send_data(stream_id, client_frame(0x1, pending.pop(0).encode()))
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                frames, buf = parse_frames(buf + ev.data)
                for fin, opcode, payload in frames:
                    if opcode == 0x8:
                        out["close_code"] = struct.unpack("!H", payload[:2])[0] if payload else None
                        conn.end_stream(stream_id)
                        done = True
                        break
                    if opcode in (0x0, 0x1, 0x2):
                        message += payload
                        if not fin:
                            continue
                        out["received"].append(message.decode("utf-8", "replace"))
                        message = b""
                        if pending:
                            conn.send_data(stream_id, client_frame(0x1, pending.pop(0).encode()))
                        elif not sent_close:
                            conn.send_data(stream_id, client_frame(0x8, struct.pack("!H", 1000)))
                            sent_close = True
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out["error"] = f"GOAWAY {ev.error_code}"
                done = True
        data = conn.data_to_send()
        if data:
            tls.sendall(data)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
