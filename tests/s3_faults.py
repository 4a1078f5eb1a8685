"""A real S3-compatible endpoint (a moto server process) and a fault-injecting proxy in front of it.

``MotoServer`` starts ``python -m moto.server`` on 127.0.0.1 in its own process group.
``FaultyS3Proxy`` is a small threaded HTTP proxy on 127.0.0.1 that forwards every request to the
server, except those a ``Fault`` rule matches: for the first ``times`` matching requests it answers
an S3 error status (503 SlowDown, 500 InternalError), resets the connection, or stalls before
forwarding. Clients (pyarrow's S3 filesystem, boto3) point at the proxy through
``AWS_ENDPOINT_URL``, so Ray workers, the driver and MLflow all meet the same faults.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

# moto accepts any credentials; set before any Ray starts so its workers sign requests the same way
for _key, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_key, _value)

_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
           503: ("SlowDown", "Please reduce your request rate.")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """A moto S3 server process on 127.0.0.1; ``stop()`` ends its whole process group."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode} (log: {log_path})")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"moto_server did not answer on {self.url}")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


@dataclass
class Fault:
    """Answer ``times`` requests whose method and path (with query) match with ``action``, after letting
    the first ``after`` of them through. ``key`` is an object key ("dir/date=1/f.json"), matched as the
    SDK sends it (``=`` percent-encoded); ``path`` a regular expression on the raw request path."""
    key: str | None = None
    path: str | None = None
    action: Literal["status", "reset", "stall"] = "status"
    method: str | None = None  # GET, PUT, HEAD, POST, DELETE; None: any
    status: int = 503
    times: int = 1
    after: int = 0
    stall_s: float = 0.0
    hits: list[str] = field(default_factory=list)  # the requests it answered
    passed: int = 0  # matching requests let through (``after``)

    def pattern(self) -> str:
        if self.key is not None:
            return re.escape(self.key).replace("=", "(?:=|%3D)")
        return self.path or ""

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.pattern(), path) is not None


class FaultyS3Proxy:
    """Forwards to ``upstream``; ``add(Fault(...))`` makes chosen requests fail. Every request is logged."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self._read_body()
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault is not None and fault.action == "status":
                    code, message = _ERRORS.get(fault.status, ("InternalError", "injected"))
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>injected</RequestId></Error>").encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if fault is not None and fault.action == "stall":
                    time.sleep(fault.stall_s)
                self._forward(body)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                # a HEAD answer carries the object's length, not its own (empty) body's
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="faulty-s3-proxy", daemon=True)
        self._thread.start()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if len(fault.hits) < fault.times and fault.matches(method, path):
                    if fault.passed < fault.after:
                        fault.passed += 1
                        continue
                    fault.hits.append(f"{method} {path}")
                    return fault
        return None

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def faulty_s3(log_dir: Path, buckets: tuple[str, ...]):
    """A moto server, a proxy in front of it that ``AWS_ENDPOINT_URL`` points at, and ``buckets`` created."""
    log_dir.mkdir(parents=True, exist_ok=True)
    moto = MotoServer(log_dir / "moto.log")
    proxy = FaultyS3Proxy(moto.url)
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = proxy.url  # pyarrow (data_pipeline.paths) and boto3 (MLflow) read it
    try:
        import boto3

        for bucket in buckets:
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield proxy
    finally:
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous
        proxy.stop()
        moto.stop()
