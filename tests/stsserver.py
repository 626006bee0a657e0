"""An MTA-STS policy served over real HTTPS on a loopback address's port 443 (RFC 8461 §3.3)."""

from __future__ import annotations

import http.server
import random
import ssl
import threading
from typing import Any

import pytest


class PolicyServer:
    """HTTPS on ADDRESS:443 serving one policy for `host`, its certificate issued by `ca`.

    Port 443 is fixed by RFC 8461, so each server takes a loopback address of its own
    (tests run as root; elsewhere the test is skipped). `requests` counts the fetches.
    """

    def __init__(self, ca: Any, host: str, policy: str) -> None:
        body = policy.encode()
        owner = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path == "/.well-known/mta-sts.txt" and self.headers["Host"] == host
                owner.requests += 1
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                if found:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.address = (
            f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        )
        try:
            self.httpd = http.server.HTTPServer((self.address, 443), Handler)
        except OSError as exc:
            pytest.skip(f"cannot listen on {self.address}:443: {exc}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(host).configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
