"""A fault-injecting HTTP proxy in front of a real `mlflow server`: refuses chosen requests with a 503.

Requests are forwarded unchanged; those whose path contains a refused fragment get
``503 TEMPORARILY_UNAVAILABLE`` instead (the server never sees them), a chosen number of times or
until cleared. The MLflow client retries a 503 as it would a server in trouble.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "content-length"}


class FaultProxy:
    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self._rules: dict[str, int | None] = {}  # path fragment -> refusals left (None: every time)
        self._lock = threading.Lock()
        self.refused: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def refuse(self, fragment: str, times: int | None = None) -> None:
        with self._lock:
            self._rules[fragment] = times

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _should_refuse(self, path: str) -> bool:
        with self._lock:
            for fragment, left in self._rules.items():
                if fragment in path and (left is None or left > 0):
                    if left is not None:
                        self._rules[fragment] = left - 1
                    self.refused.append(path)
                    return True
        return False

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy._should_refuse(self.path):
                    payload = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                                          "message": "refused by the test's fault proxy"}).encode()
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                try:
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                except OSError:
                    self.send_error(502)
                    return
                finally:
                    connection.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler
