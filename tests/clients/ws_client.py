"""A WebSocket agent for tests/websocket.rs, on the `websockets` library: connects (through an
HTTP proxy with --proxy, which it tunnels with CONNECT; trusting --cacert for wss), runs the
steps of --steps (JSON) and prints one JSON object: the handshake's status, the subprotocol,
what it received and how the connection closed.

Steps: ["send", text], ["send_bytes", n], ["recv"], ["close", code], ["wait_closed"].
"""

import argparse
import asyncio
import json
import ssl

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--proxy")
    parser.add_argument("--cacert")
    parser.add_argument("--protocol", action="append", default=[])
    parser.add_argument("--steps", default="[]")
    args = parser.parse_args()
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context(cafile=args.cacert)
    out = {"received": []}
    try:
        ws = await connect(
            args.url,
            proxy=args.proxy,
            ssl=context,
            subprotocols=args.protocol or None,
            max_size=None,
            ping_interval=None,
            open_timeout=20,
        )
    except InvalidStatus as e:
        out["status"] = e.response.status_code
        out["error"] = str(e)
        print(json.dumps(out))
        return
    out["status"] = ws.response.status_code
    out["protocol"] = ws.subprotocol
    out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
    out["request_id"] = ws.response.headers.get("x-sidekey-request-id")
    try:
        for step in json.loads(args.steps):
            kind = step[0]
            if kind == "send":
                await ws.send(step[1])
            elif kind == "send_bytes":
                await ws.send(b"\x01" * step[1])
            elif kind == "recv":
                message = await asyncio.wait_for(ws.recv(), 20)
                if isinstance(message, bytes):
                    out["received"].append({"bytes": len(message)})
                else:
                    out["received"].append({"text": message})
            elif kind == "close":
                await ws.close(step[1], "done")
            elif kind == "wait_closed":
                await asyncio.wait_for(ws.wait_closed(), 20)
    except ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    out["close_code"] = rcvd.code if rcvd else None
    out["close_reason"] = rcvd.reason if rcvd else None
    await ws.close()
    print(json.dumps(out))


asyncio.run(main())
