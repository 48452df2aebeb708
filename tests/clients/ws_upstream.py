"""A WebSocket upstream for tests/websocket.rs, on the `websockets` library (a real server:
handshake, masking rules, fragmentation, close handshake).

Prints `{"port": N}` once listening, then one JSON line per connection it accepted
(`{"path", "authorization", "extensions", "protocol"}`) and per connection it saw end
(`{"closed": code}`), so that the test can see what reached it.

Each text message it receives is a command:
- `whoami`: answers `auth=<the Authorization header it got>` (an upstream echoing the
  credential: sidekey must mask it);
- `whoami-fragmented`: the same answer as a message of 3-byte fragments (the credential cut
  across frames);
- `shape`: answers what the Authorization it got looks like, without it (`Bearer jwt:3`);
- `big:N`: answers a binary message of N bytes;
- `close:CODE`: closes the connection with CODE;
- anything else: echoed back. Binary messages are echoed too.
Path `/reject` is refused with 403 before the upgrade.
"""

import argparse
import asyncio
import json
import ssl
import sys

from http import HTTPStatus

from websockets.asyncio.server import serve


def emit(obj):
    print(json.dumps(obj), flush=True)


async def handler(ws):
    auth = ws.request.headers.get("Authorization", "")
    emit(
        {
            "path": ws.request.path,
            "authorization": bool(auth),
            "extensions": ws.request.headers.get("Sec-WebSocket-Extensions"),
            "protocol": ws.subprotocol,
        }
    )
    try:
        async for message in ws:
            if isinstance(message, bytes):
                await ws.send(message)
                continue
            if message == "whoami":
                await ws.send("auth=" + auth)
            elif message == "whoami-fragmented":
                text = "auth=" + auth
                await ws.send([text[i : i + 3] for i in range(0, len(text), 3)])
            elif message == "shape":
                scheme, _, token = auth.partition(" ")
                await ws.send(f"{scheme} jwt:{len(token.split('.'))}")
            elif message.startswith("big:"):
                await ws.send(b"\x00" * int(message[4:]))
            elif message.startswith("close:"):
                await ws.close(int(message[6:]), "asked to")
                break
            else:
                await ws.send(message)
    finally:
        emit({"closed": ws.close_code})


def select_subprotocol(connection, offered):
    """chat.v2 or chat.v1 when offered; none (not a refusal) when the client offers none."""
    return next((p for p in ("chat.v2", "chat.v1") if p in offered), None)


def process_request(connection, request):
    if request.path == "/reject":
        return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
    return None


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        ssl=context,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        max_size=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        emit({"port": port})
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
