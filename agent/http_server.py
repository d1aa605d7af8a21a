"""The metrics endpoint: `/metrics` (the agent's own) and `/metrics/dockerd` (dockerd's, proxied).

`/metrics` only renders the registry, whose collectors read in-memory state, so a scrape never waits
on Docker or the disk. `/metrics/dockerd` is the one exception by design: it fetches dockerd's own
metrics from its loopback `--metrics-addr` with a short timeout, so a hung dockerd costs a scrape at
most `DOCKERD_TIMEOUT_SECONDS` and a 503.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("armhf-agent.metrics.http")

DOCKERD_TIMEOUT_SECONDS = 2.0
# A client that connects and sends nothing (or stalls a TLS handshake) gives up its thread after this.
CLIENT_TIMEOUT_SECONDS = 10.0
# dockerd listens on loopback: never send that request through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MetricsServer:
    def __init__(self, listen_host: str, port: int, registry: CollectorRegistry, tls_cert: str, tls_key: str,
                 dockerd_metrics_addr: Callable[[], str | None]):
        handler = _handler(registry, dockerd_metrics_addr)
        server_class = _IPv6Server if ":" in listen_host else _Server
        self._server = server_class((listen_host, port), handler)
        self._tls = bool(tls_cert and tls_key)
        if self._tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
            # The handshake then runs in the request's own thread, so a stalled client cannot block accept().
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._tls else 'http'}://{host}:{port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up or fails the TLS handshake is its own problem, not a traceback on stderr.
        log.debug("metrics http: request from %s failed", client_address, exc_info=True)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, dockerd_metrics_addr: Callable[[], str | None]):
    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT_SECONDS

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(registry))
            elif path == "/metrics/dockerd":
                self._proxy_dockerd()
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /metrics/dockerd\n")

        def _proxy_dockerd(self) -> None:
            addr = dockerd_metrics_addr()
            if not addr:
                self._reply(503, "text/plain; charset=utf-8", b"dockerd metrics unavailable: dockerd not running "
                            b"or started without --metrics-addr\n")
                return
            try:
                with _DIRECT.open(f"http://{addr}/metrics", timeout=DOCKERD_TIMEOUT_SECONDS) as response:
                    body = response.read()
                    content_type = response.headers.get("Content-Type", "text/plain; version=0.0.4")
            except (OSError, urllib.error.URLError) as exc:
                reason = getattr(exc, "reason", exc)
                self._reply(503, "text/plain; charset=utf-8",
                            f"dockerd metrics unavailable at {addr}: {reason}\n".encode())
                return
            self._reply(200, content_type, body)

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
            log.debug("metrics http: %s - %s", self.address_string(), format % args)

    return Handler
