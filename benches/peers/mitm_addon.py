"""mitmproxy doing sidekey's work: inject the token for api.bench.test, refuse other hosts.

The benchmark host names resolve to loopback here (mitmproxy has no resolve override).
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


addons = [Bench()]
