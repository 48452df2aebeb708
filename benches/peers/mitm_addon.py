"""mitmproxy doing sidekey's work: inject the token for api.bench.test, refuse other hosts.

The benchmark host names resolve to loopback here (mitmproxy has no resolve override): in
`request` for plain HTTP (absolute-form), in `server_connect` for a CONNECT's target.

Plain HTTP must be pinned in `request`, not only in `server_connect`: mitmproxy reuses an upstream
connection only for a request whose host and port equal the connection's address. Rewritten in
`server_connect` alone, the connection's address (127.0.0.1) never matched the next request's
(api.bench.test), so every request opened one more upstream connection, and mitmproxy allows at
most 5 per client connection and address: the 6th request on a keep-alive connection waited
forever (the bench's 1, 16 and 128 req/s were 5 requests per connection, then nothing). Inside a
CONNECT tunnel requests already take the connection's (rewritten) address.
"""
import json

from mitmproxy import http

TOKEN = "@TOKEN@"
ALLOWED = "api.bench.test"
PINNED = {"api.bench.test", "tunnel.bench.test"}


class Bench:
    def server_connect(self, data):
        host, port = data.server.address
        if host in PINNED:
            data.server.address = ("127.0.0.1", port)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host != ALLOWED:
            body = json.dumps({"error": "host_not_allowed"}).encode()
            flow.response = http.Response.make(403, body, {"content-type": "application/json"})
            return
        flow.request.headers["authorization"] = "Bearer " + TOKEN
        if flow.request.host in PINNED:
            host_header = flow.request.host_header  # the setter below rewrites it
            flow.request.host = "127.0.0.1"
            flow.request.host_header = host_header


addons = [Bench()]
