"""An OTLP/HTTP trace receiver for benchmarks: it decodes what arrives and counts spans per service.

    python -m bench.otlp_sink PORT

`GET /` answers the counts as JSON. Unlike the test receiver it keeps no span, so a long run does not
grow it. It runs as a process of its own so that decoding spans never competes with the harness.
"""

from __future__ import annotations

import collections
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_spans: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()
_ANSWER = ExportTraceServiceResponse().SerializeToString()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        counts: collections.Counter[str] = collections.Counter()
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), "?"
            )
            counts[service] += sum(len(scope.spans) for scope in resource_spans.scope_spans)
        with _lock:
            _spans.update(counts)
        self._answer("application/x-protobuf", _ANSWER)

    def do_GET(self) -> None:
        with _lock:
            payload = json.dumps(dict(_spans)).encode()
        self._answer("application/json", payload)

    def _answer(self, content_type: str, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
