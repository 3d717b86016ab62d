"""A real S3-protocol server on loopback for tests, and a fault-injecting proxy in front of it.

``MotoServer`` runs moto's server (``python -m moto.server``) in a subprocess on a free
port. ``FaultProxy`` forwards HTTP requests to it and answers some of them itself with
an error, so retry behaviour is tested against real S3 traffic, not a mocked client.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REGION = "eu-west-1"  # moto refuses an explicit us-east-1 LocationConstraint


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``moto_server`` on 127.0.0.1; always terminated by ``stop()``."""

    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"moto server on port {self.port} not ready after {timeout_s} s")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._log.close()


def storage_options(endpoint: str) -> dict[str, Any]:
    """s3fs options for the test server; the client's own retries off so reshard's are tested."""
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": REGION},
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
    }


def create_bucket(endpoint: str, bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**storage_options(endpoint), skip_instance_cache=True)
    fs.mkdir(bucket, region_name=REGION)


_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>injected by the test proxy</Message><RequestId>0</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te",
               "upgrade"}

# A policy sees (method, path, range header) and returns None to forward, or (status, code).
Policy = Callable[[str, str, str], "tuple[int, str] | None"]


class FaultProxy:
    """An HTTP proxy to ``upstream_port`` that fails the requests ``policy`` picks."""

    def __init__(self, upstream_port: int, policy: Policy) -> None:
        self.policy = policy
        self.requests = 0
        self.failures = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self._read_body()
                with proxy._lock:
                    proxy.requests += 1
                    decision = proxy.policy(self.command, self.path, self.headers.get("Range", ""))
                    if decision is not None:
                        proxy.failures += 1
                if decision is not None:
                    status, code = decision
                    data = _ERROR_BODY.format(code=code).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                self._forward(body)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def fail_each_request_once(status: int = 503, code: str = "ServiceUnavailable") -> Policy:
    """A policy failing the first try of every distinct request (method, path, range)."""
    seen: set[tuple[str, str, str]] = set()

    def policy(method: str, path: str, range_: str) -> tuple[int, str] | None:
        key = (method, path, range_)
        if key in seen:
            return None
        seen.add(key)
        return (status, code)

    return policy


def fail_always(status: int, code: str) -> Policy:
    return lambda method, path, range_: (status, code)
