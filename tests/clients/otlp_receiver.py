"""A small OTLP/HTTP traces receiver for the tests (tests/otlp.rs).

Decodes what it gets with the OpenTelemetry project's own protobuf definitions
(`opentelemetry-proto`), as a collector would: `POST /v1/traces` with
`Content-Type: application/x-protobuf` (gzip accepted), body an
`ExportTraceServiceRequest`. For every span it prints one JSON line on stdout:

    {"resource": {...attributes...}, "scope": {"name", "version"}, "span": {...}}

where `span` is the protobuf message as JSON (IDs as lower-case hex, attributes as a flat
`{key: value}` map, kind and status code as their enum names). A request it cannot decode gets
400 and a `{"error": ...}` line; anything else than `POST /v1/traces` gets 404. With
`--fail N` the first N exports are answered 503 (a collector that is down for a moment), each
printed as `{"event": "refused"}`; `POST /_fail` with a number as body sets N again.

Usage: otlp_receiver.py [--port P] [--fail N]; prints `{"event": "ready", "port": P}` first.
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()
FAILURES = {"left": 0}


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_json(span):
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "trace_state": span.trace_state,
        "flags": span.flags,
        "name": span.name,
        "kind": trace_pb2.Span.SpanKind.Name(span.kind),
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": attributes(span.attributes),
        "status": {
            "code": trace_pb2.Status.StatusCode.Name(span.status.code),
            "message": span.status.message,
        },
        "events": len(span.events),
        "links": len(span.links),
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("otlp_receiver: " + (fmt % args) + "\n")

    def answer(self, status, body=b"", content_type="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path == "/_fail":
            with LOCK:
                FAILURES["left"] = int(body)
            return self.answer(204, content_type="text/plain")
        if self.path != "/v1/traces":
            emit({"error": f"unexpected path {self.path}"})
            return self.answer(404, b"not found", "text/plain")
        with LOCK:
            if FAILURES["left"] > 0:
                FAILURES["left"] -= 1
                failing = True
            else:
                failing = False
        if failing:
            emit({"event": "refused", "bytes": len(body)})
            return self.answer(503, b"unavailable", "text/plain")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            emit({"error": f"content type {self.headers.get('Content-Type')}"})
            return self.answer(415, b"want application/x-protobuf", "text/plain")
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the sender's
            emit({"error": f"undecodable: {e}"})
            return self.answer(400, b"bad protobuf", "text/plain")
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                scope = {"name": ss.scope.name, "version": ss.scope.version}
                for span in ss.spans:
                    emit({"resource": resource, "scope": scope, "span": span_json(span)})
        response = trace_service_pb2.ExportTraceServiceResponse()
        # Round-trip check of the encoder too: the answer is what a collector sends.
        json_format.MessageToDict(response)
        return self.answer(200, response.SerializeToString())

    def do_GET(self):
        self.answer(404, b"not found", "text/plain")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail", type=int, default=0)
    args = parser.parse_args()
    FAILURES["left"] = args.fail
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    emit({"event": "ready", "port": server.server_address[1]})
    server.serve_forever()


if __name__ == "__main__":
    main()
