"""The metrics endpoint: `/metrics` (the agent's own) and `/metrics/dockerd` (dockerd's, proxied).

The port faces the network, so whatever clients do costs bounded threads, fds, memory and time:
- one event-loop thread (`selectors`) accepts, does the TLS handshakes, reads requests and writes replies;
- at most `max_connections` connections. At the cap, the oldest connection still without a complete
  request is closed to make room, so a new scrape always gets in, however many idle or slow clients
  hold connections;
- every connection is closed `request_timeout` after it was accepted, whatever it is doing (TLS
  handshake, request, reply): a client that dribbles a byte just before each read timeout cannot live
  forever, as it could with a per-read timeout;
- a request head is at most `max_header_bytes` (431 beyond), read into one buffer per connection.

`/metrics` only renders the registry, whose collectors read in-memory state, so it is rendered on the
loop thread and a scrape never waits on Docker or the disk. The two things that block are done off the
loop in small bounded pools: `/metrics/dockerd`, which fetches dockerd's own metrics from its loopback
`--metrics-addr` (at most `DOCKERD_TIMEOUT_SECONDS`, `DOCKERD_MAX_BYTES`; a hung dockerd costs a 503),
and a bcrypt verification of basic-auth credentials not seen before (agent/basic_auth.py).

Each request gets one reply and the connection is closed (`Connection: close`): Prometheus reconnects
at each scrape, and no idle keep-alive connection holds a slot.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import http.client
import logging
import os
import re
import resource
import selectors
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from .clock import SystemClock
from .ratelimit import RateLimitedLog

log = logging.getLogger("armhf-agent.metrics.http")

DOCKERD_TIMEOUT_SECONDS = 2.0
# dockerd's own exposition is ~10-100 KiB (one series per engine metric, not per container); a
# larger one is refused (502) rather than buffered without bound.
DOCKERD_MAX_BYTES = 4 * 2**20
DOCKERD_WORKERS = 2
# dockerd requests queued or running, plus their replies still being written: beyond this, 503 at once.
DOCKERD_MAX_PENDING = 4
AUTH_WORKERS = 1
# Credentials not in the cache waiting for a bcrypt: beyond this, 503 at once (a flood of wrong
# passwords burns at most one core, and Prometheus' cached credentials never wait behind it).
AUTH_MAX_PENDING = 8

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_HEADER_BYTES = 8192
# Renewed TLS files are looked for at a new connection, at most this often (3 stat calls).
TLS_RELOAD_CHECK_SECONDS = 1.0
# fds kept for the rest of the agent (dockerd pipes, inotify, Docker API sockets, the dockerd proxy)
# when the fd limit is lower than the configured cap (the unit sets LimitNOFILE=1048576).
FD_HEADROOM = 256
_RECV_BYTES = 4096
_ACCEPTS_PER_WAKEUP = 64
_ACCEPT_PAUSE_SECONDS = 1.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")

# dockerd listens on loopback: never send that request through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

HANDSHAKE, READING, WAITING, WRITING = "TLS handshake", "request", "waiting", "reply"
_TEXT = "text/plain; charset=utf-8"


class _Conn:
    __slots__ = ("sock", "peer", "deadline", "state", "buf", "out", "events", "closed", "head_only", "dockerd")

    def __init__(self, sock, peer, deadline: float, state: str):
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.state = state
        self.buf = bytearray()
        self.out = memoryview(b"")
        self.events = 0
        self.closed = False
        self.head_only = False
        self.dockerd = 0             # 0: no dockerd job; 1: job running; 2: job done, its slot held until close


class _TlsFiles:
    """The server context, rebuilt when the certificate, key or client CA files change (renewal at the
    same path). A broken renewal keeps the previous context, logged once per broken state."""

    def __init__(self, cert: str, key: str, client_ca: str, errors: RateLimitedLog):
        self.paths = tuple(p for p in (cert, key, client_ca) if p)
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.errors = errors
        self.signature = self._signature()
        self.context = self._build()            # at start a broken file is an error (OSError)
        self._failed = None
        self._checked = time.monotonic()

    def _signature(self) -> tuple:
        out = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError as exc:
                out.append(exc.errno)
        return tuple(out)

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # An encrypted key must fail, not prompt on a terminal from the event loop.
        context.load_cert_chain(self.cert, self.key, password=lambda: b"")
        if self.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.client_ca)
        return context

    def current(self, now: float) -> ssl.SSLContext:
        if now - self._checked >= TLS_RELOAD_CHECK_SECONDS:
            self._checked = now
            signature = self._signature()
            if signature != self.signature and signature != self._failed:
                try:
                    context = self._build()
                except (OSError, ValueError) as exc:      # ssl.SSLError is an OSError
                    self._failed = signature
                    self.errors("tls-reload", logging.WARNING, "metrics: cannot load the changed TLS files "
                                "(%s): %s; still serving the previous certificate", ", ".join(self.paths), exc)
                else:
                    self.context, self.signature, self._failed = context, signature, None
                    self.errors.clear("tls-reload")
                    log.info("metrics: TLS files changed, reloaded %s", ", ".join(self.paths))
        return self.context


class MetricsServer:
    def __init__(self, listen_host: str, port: int, registry: CollectorRegistry, tls_cert: str, tls_key: str,
                 dockerd_metrics_addr: Callable[[], str | None], *, tls_client_ca: str = "",
                 basic_auth_users: dict[str, str] | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES):
        self._registry = registry
        self._dockerd_metrics_addr = dockerd_metrics_addr
        self._errors = RateLimitedLog(log, SystemClock())
        self._timeout = request_timeout
        self._max_header = max_header_bytes
        self._cap = self._fd_bounded(max_connections)
        self._tls = _TlsFiles(tls_cert, tls_key, tls_client_ca, self._errors) if tls_cert and tls_key else None
        self._auth = None
        if basic_auth_users:
            from .basic_auth import BasicAuth
            self._auth = BasicAuth(basic_auth_users)
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((listen_host, port))
            self._listener.listen(self._cap)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: dict[_Conn, None] = {}        # every connection, in accept order (= deadline order)
        self._pending: dict[_Conn, None] = {}      # without a complete request yet, in accept order
        self._done: collections.deque = collections.deque()
        self._dockerd_slots = 0
        self._auth_pending = 0
        self._dockerd_pool = concurrent.futures.ThreadPoolExecutor(DOCKERD_WORKERS, "metrics-dockerd")
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(AUTH_WORKERS, "metrics-auth") if self._auth else None
        self._accept_paused_until = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, section, registry: CollectorRegistry,
                    dockerd_metrics_addr: Callable[[], str | None]) -> "MetricsServer":
        """From the config's [metrics] section (agent/config.py MetricsSection)."""
        return cls(section.host, section.port, registry, section.tls_cert, section.tls_key, dockerd_metrics_addr,
                   tls_client_ca=section.tls_client_ca, basic_auth_users=dict(section.basic_auth_users),
                   max_connections=section.max_connections, request_timeout=section.request_timeout_seconds,
                   max_header_bytes=section.max_header_bytes)

    @staticmethod
    def _fd_bounded(wanted: int) -> int:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and wanted > soft - FD_HEADROOM:
            cap = max(16, soft - FD_HEADROOM)
            log.warning("metrics: max_connections %d lowered to %d: the fd limit is %d (the unit sets "
                        "LimitNOFILE=1048576)", wanted, cap, soft)
            return cap
        return wanted

    # -- public --------------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._tls else 'http'}://{host}:{port}/metrics"

    @property
    def max_connections(self) -> int:
        return self._cap

    def open_connections(self) -> int:
        """Connections held right now (tests and the fault case read it)."""
        return len(self._conns)

    @property
    def auth(self):
        return self._auth

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._thread.start()
        log.debug("metrics http: at most %d connections, %g s per request, %d header bytes%s%s", self._cap,
                  self._timeout, self._max_header, "; basic auth" if self._auth else "",
                  "; client certificates required" if self._tls and self._tls.client_ca else "")

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        for conn in list(self._conns):
            self._close(conn)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._dockerd_pool.shutdown(wait=False, cancel_futures=True)
        if self._auth_pool:
            self._auth_pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                for key, mask in self._sel.select(self._next_timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data is self._wake_r:
                        self._drain_wake()
                    else:
                        self._service(key.data, mask)
                self._finish_jobs()
                now = time.monotonic()
                self._expire(now)
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._sel.register(self._listener, selectors.EVENT_READ, None)
            except Exception:  # noqa: BLE001 - the endpoint must outlive any one bad request
                self._errors("loop", logging.ERROR, "metrics http: unexpected error (serving goes on)", exc_info=True)

    def _next_timeout(self) -> float | None:
        waits = []
        if self._conns:
            waits.append(next(iter(self._conns)).deadline)
        if self._accept_paused_until:
            waits.append(self._accept_paused_until)
        return max(0.0, min(waits) - time.monotonic()) if waits else None

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass                     # already awake, or stopping

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._errors("accept", logging.ERROR, "metrics http: cannot accept: %s (pausing %g s)",
                                 exc, _ACCEPT_PAUSE_SECONDS)
                    self._sel.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_SECONDS
                    return
                continue             # ECONNABORTED and the like: that client is gone
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer) -> None:
        now = time.monotonic()
        sock.setblocking(False)
        if len(self._conns) >= self._cap:
            self._evict()
        if len(self._conns) >= self._cap:
            # Only connections waiting on a bounded pool are left: cannot happen while the cap is larger
            # than DOCKERD_MAX_PENDING + AUTH_MAX_PENDING, kept as a guard.
            sock.close()
            return
        state = READING
        if self._tls is not None:
            try:
                sock = self._tls.current(now).wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                sock.close()
                return
            state = HANDSHAKE
        conn = _Conn(sock, peer, now + self._timeout, state)
        self._conns[conn] = None
        self._pending[conn] = None
        self._want(conn, selectors.EVENT_READ)

    def _evict(self) -> None:
        victim = next(iter(self._pending), None)
        if victim is None:
            victim = next((c for c in self._conns if c.state == WRITING), None)
        if victim is not None:
            self._errors("evict", logging.WARNING, "metrics http: %d connections open (max_connections): closed "
                         "the oldest one still in its %s, from %s", len(self._conns), victim.state, _peer(victim.peer))
            self._close(victim)

    def _expire(self, now: float) -> None:
        while self._conns:
            conn = next(iter(self._conns))
            if conn.deadline > now:
                return
            self._errors("deadline", logging.WARNING, "metrics http: closed the connection from %s: still in its %s "
                         "after request_timeout_seconds=%g", _peer(conn.peer), conn.state, self._timeout)
            self._close(conn)

    def _want(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.events:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.events = 0
        try:
            conn.sock.close()
        except OSError:
            pass
        self._conns.pop(conn, None)
        self._pending.pop(conn, None)
        conn.buf = bytearray()
        conn.out = memoryview(b"")
        if conn.dockerd == 2:
            self._dockerd_slots -= 1
            conn.dockerd = 0

    def _service(self, conn: _Conn, mask: int) -> None:
        if conn.closed:
            return
        try:
            if conn.state == HANDSHAKE:
                self._handshake(conn)
            elif conn.state == READING:
                self._read(conn)
            elif conn.state == WRITING:
                self._write(conn)
        except Exception:  # noqa: BLE001 - one connection's failure is that connection's
            self._errors("conn", logging.ERROR, "metrics http: error on the connection from %s", _peer(conn.peer),
                         exc_info=True)
            self._close(conn)

    # -- one connection ------------------------------------------------------------------------------
    def _handshake(self, conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:
            # Plain HTTP on the TLS port, no or an untrusted client certificate, a port scanner.
            log.debug("metrics http: TLS handshake with %s failed: %s", _peer(conn.peer), exc)
            self._close(conn)
            return
        conn.state = READING
        self._read(conn)

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(_RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError):
                self._close(conn)
                return
            if not data:
                self._close(conn)    # the client hung up before sending a whole request
                return
            conn.buf += data
            end = _HEAD_END.search(conn.buf)
            if end is not None:
                head = bytes(conn.buf[:end.start()])
                conn.buf = bytearray()
                self._pending.pop(conn, None)
                self._want(conn, 0)
                conn.state = WAITING
                self._handle(conn, head)
                return
            if len(conn.buf) > self._max_header:
                self._pending.pop(conn, None)
                self._reply(conn, 431, _TEXT, f"request head larger than max_header_bytes={self._max_header}\n".encode())
                return

    def _write(self, conn: _Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
            except (OSError, ValueError):
                self._close(conn)
                return
            conn.out = conn.out[sent:]
        # Half-close, then drop what the client sent beyond the head (a body): closing with unread
        # input makes the kernel send a RST, which can destroy the reply before the client reads it.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            for _ in range(16):
                if not conn.sock.recv(_RECV_BYTES):
                    break
        except (OSError, ValueError):
            pass
        self._close(conn)

    def _reply(self, conn: _Conn, status: int, content_type: str, body: bytes, headers: tuple[str, ...] = ()) -> None:
        if conn.closed:
            return
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Connection: close", *headers]
        conn.out = memoryview(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if conn.head_only else body))
        conn.state = WRITING
        self._write(conn)

    # -- requests ------------------------------------------------------------------------------------
    def _handle(self, conn: _Conn, head: bytes) -> None:
        request = _parse(head)
        if request is None:
            self._reply(conn, 400, _TEXT, b"malformed request\n")
            return
        method, target, headers = request
        if method not in ("GET", "HEAD"):
            self._reply(conn, 405, _TEXT, b"only GET and HEAD\n", ("Allow: GET, HEAD",))
            return
        conn.head_only = method == "HEAD"
        if self._auth is not None:
            from .basic_auth import parse_basic
            credentials = parse_basic(headers.get("authorization"))
            if credentials is None:
                self._unauthorized(conn)
                return
            if not self._auth.check_cached(*credentials):
                if self._auth_pending >= AUTH_MAX_PENDING:
                    self._reply(conn, 503, _TEXT, b"busy verifying credentials, retry\n", ("Retry-After: 1",))
                    return
                self._auth_pending += 1
                future = self._auth_pool.submit(self._auth.verify, *credentials)
                future.add_done_callback(lambda f: self._post(conn, "auth", f, (target, headers)))
                return
        self._route(conn, target, headers)

    def _unauthorized(self, conn: _Conn) -> None:
        self._reply(conn, 401, _TEXT, b"authentication required\n",
                    ('WWW-Authenticate: Basic realm="armhf-agent", charset="UTF-8"',))

    def _route(self, conn: _Conn, target: str, headers: dict[str, str]) -> None:
        path = target.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            self._reply(conn, 200, content_type, encoder(self._registry))
        elif path == "/metrics/dockerd":
            addr = self._dockerd_metrics_addr()
            if not addr:
                self._reply(conn, 503, _TEXT, b"dockerd metrics unavailable: dockerd not running "
                            b"or started without --metrics-addr\n")
            elif self._dockerd_slots >= DOCKERD_MAX_PENDING:
                self._reply(conn, 503, _TEXT, f"dockerd metrics unavailable: {DOCKERD_MAX_PENDING} requests "
                            f"to dockerd already in progress\n".encode(), ("Retry-After: 1",))
            else:
                self._dockerd_slots += 1
                conn.dockerd = 1
                future = self._dockerd_pool.submit(_fetch_dockerd, addr)
                future.add_done_callback(lambda f: self._post(conn, "dockerd", f, None))
        else:
            self._reply(conn, 404, _TEXT, b"not found: try /metrics or /metrics/dockerd\n")

    # -- results from the pools ----------------------------------------------------------------------
    def _post(self, conn: _Conn, kind: str, future, context) -> None:
        """Runs in a pool thread (or at once if already done): hands the result to the loop."""
        self._done.append((conn, kind, future, context))
        self._wake()

    def _finish_jobs(self) -> None:
        while self._done:
            conn, kind, future, context = self._done.popleft()
            try:
                result = future.result()
            except BaseException as exc:  # noqa: BLE001 - cancelled at stop, or a bug in the job
                if not isinstance(exc, concurrent.futures.CancelledError):
                    self._errors("job", logging.ERROR, "metrics http: %s job failed: %s", kind, exc)
                result = None
            if kind == "auth":
                self._auth_pending -= 1
                if conn.closed:
                    continue
                if result:
                    self._route(conn, *context)
                else:
                    self._unauthorized(conn)
            else:
                if conn.closed:
                    self._dockerd_slots -= 1          # its client is gone (deadline): slot free now
                    conn.dockerd = 0
                    continue
                conn.dockerd = 2                      # the reply's body holds the slot until it is written
                status, content_type, body = result or (500, _TEXT, b"internal error\n")
                self._reply(conn, status, content_type, body)


def _parse(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    lines = head.decode("latin-1").lstrip("\r\n").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


def _fetch_dockerd(addr: str) -> tuple[int, str, bytes]:
    """In a pool thread: dockerd's own metrics, within DOCKERD_TIMEOUT_SECONDS in all and
    DOCKERD_MAX_BYTES (urllib's timeout is per read; a dockerd dribbling bytes is cut too)."""
    deadline = time.monotonic() + DOCKERD_TIMEOUT_SECONDS
    try:
        with _DIRECT.open(f"http://{addr}/metrics", timeout=DOCKERD_TIMEOUT_SECONDS) as response:
            content_type = response.headers.get("Content-Type", "text/plain; version=0.0.4")
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out")
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > DOCKERD_MAX_BYTES:
                    return 502, _TEXT, (f"dockerd metrics at {addr} are larger than {DOCKERD_MAX_BYTES} bytes "
                                        f"(DOCKERD_MAX_BYTES): not served\n").encode()
                chunks.append(chunk)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        reason = str(getattr(exc, "reason", exc)).replace("\n", " ")
        return 503, _TEXT, f"dockerd metrics unavailable at {addr}: {reason}\n".encode()
    return 200, content_type, b"".join(chunks)


def _peer(peer) -> str:
    try:
        host, port = peer[:2]
    except (TypeError, ValueError):
        return str(peer)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
