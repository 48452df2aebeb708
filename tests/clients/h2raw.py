#!/usr/bin/env python3
"""Raw HTTP/2 requests through sidekey's forward listener, for the adversarial tests.

Well-behaved clients (curl, httpx, undici) refuse to send malformed HTTP/2: this one uses the
`h2` library with header validation and normalisation switched off, so a test can send exactly
the header block it wants (CRLF in values, upper-case names, duplicated or misplaced
pseudo-headers, connection-specific headers, a content-length that disagrees with the DATA).

Usage: h2raw.py PROXY_HOST:PORT CA_PEM CASES_JSON_FILE

CASES_JSON_FILE holds a list of cases; each is run on its own CONNECT tunnel:
  {"connect": "api.test.local:443", "sni": "api.test.local",
   "headers": [[name, value], ...],            # sent in this order, as given
   "data": ["chunk", ...],                      # DATA frames (optional)
   "end_stream": true}                          # END_STREAM on the last frame (default)
Prints a JSON list of results, one per case:
  {"connect_status": int, "status": int|null, "headers": [[k, v]...], "body": str,
   "reset": error-code-int|null, "goaway": error-code-int|null, "closed": bool, "error": str|null}
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

TIMEOUT = 10


def connect_tunnel(proxy, authority):
    host, port = proxy.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"proxy closed during CONNECT: {head!r}")
        head += chunk
    status = int(head.split(b" ", 2)[1])
    return sock, status


def run_case(proxy, ca, case):
    result = {"connect_status": None, "status": None, "headers": [], "body": "",
              "reset": None, "goaway": None, "closed": False, "error": None}
    sock, status = connect_tunnel(proxy, case["connect"])
    result["connect_status"] = status
    if status != 200:
        sock.close()
        return result
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname=case.get("sni", case["connect"].rsplit(":", 1)[0]))
    if tls.selected_alpn_protocol() != "h2":
        result["error"] = f"ALPN chose {tls.selected_alpn_protocol()!r}"
        return result
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in case["headers"]]
    data = [d.encode("latin-1") for d in case.get("data", [])]
    end_stream = case.get("end_stream", True)
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers, end_stream=end_stream and not data)
    for i, chunk in enumerate(data):
        last = i == len(data) - 1
        conn.send_data(stream_id, chunk, end_stream=end_stream and last)
    tls.sendall(conn.data_to_send())
    body = b""
    done = False
    while not done:
        try:
            raw = tls.recv(65536)
        except (socket.timeout, TimeoutError):
            result["error"] = "timeout"
            break
        except (ConnectionError, ssl.SSLError) as e:
            result["closed"] = True
            result["error"] = repr(e)
            break
        if not raw:
            result["closed"] = True
            break
        try:
            events = conn.receive_data(raw)
        except Exception as e:  # a protocol error on our side: report, stop
            result["error"] = repr(e)
            break
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == stream_id:
                for k, v in ev.headers:
                    k = k.decode("latin-1") if isinstance(k, bytes) else k
                    v = v.decode("latin-1") if isinstance(v, bytes) else v
                    if k == ":status":
                        result["status"] = int(v)
                    else:
                        result["headers"].append([k, v])
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == stream_id:
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream_id:
                done = True
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == stream_id:
                result["reset"] = int(ev.error_code)
                done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                result["goaway"] = int(ev.error_code)
                done = True
        out = conn.data_to_send()
        if out:
            try:
                tls.sendall(out)
            except (ConnectionError, ssl.SSLError):
                pass
    result["body"] = body.decode("latin-1")
    try:
        tls.close()
    except Exception:
        pass
    return result


def main():
    proxy, ca, cases_file = sys.argv[1:4]
    with open(cases_file) as f:
        cases = json.load(f)
    results = []
    for case in cases:
        try:
            results.append(run_case(proxy, ca, case))
        except Exception as e:
            results.append({"connect_status": None, "status": None, "headers": [], "body": "",
                            "reset": None, "goaway": None, "closed": True, "error": repr(e)})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
