"""Hostile HTTP clients for the metrics endpoint, all driven by one thread (so hundreds cost the
load generator almost nothing): each connects and then, by its mode,
- "silent": sends nothing (a port scanner, or a stalled TLS handshake on an HTTPS port);
- "dribble": sends a request head that never ends, one byte every `dribble_seconds` (slowloris:
  just under the old per-read timeout of 10 s, so a per-read timeout never fires);
- "partial": sends a request line and one header line, then nothing;
- "fat": sends 8000 bytes of a request head at once (just under the 8 KiB limit), then nothing: the
  most a connection can make the server buffer.

Each connection's lifetime until the server closed it is recorded. With `reconnect`, a closed client
connects again at once: the population stays at `count`, as an attacker would keep it.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import selectors
import socket
import threading
import time
from dataclasses import dataclass

MODES = ("silent", "dribble", "partial", "fat")
_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
_FAT = (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Fat: " + b"a" * 8000)[:8000]


@dataclass
class Cut:
    mode: str
    lifetime: float        # connect to the server's close, seconds


class _Client:
    __slots__ = ("sock", "mode", "started", "sent", "index")

    def __init__(self, sock, mode, started, index):
        self.sock, self.mode, self.started, self.sent, self.index = sock, mode, started, 0, index


class SlowClients:
    def __init__(self, address: tuple[str, int], count: int, modes: tuple[str, ...] = MODES,
                 dribble_seconds: float = 9.0, reconnect: bool = False):
        self.address = address
        self.count = count
        self.modes = modes
        self.dribble_seconds = dribble_seconds
        self.reconnect = reconnect
        self.cuts: list[Cut] = []
        self.connect_failures = 0
        self._sel = selectors.DefaultSelector()
        self._clients: dict[int, _Client] = {}
        self._timers: list[tuple[float, int, int]] = []        # (when, seq, client index)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    # -- control -------------------------------------------------------------------------------------
    def start(self) -> "SlowClients":
        for i in range(self.count):
            self._connect(i)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        self._sel.close()

    def connected(self) -> int:
        with self._lock:
            return len(self._clients)

    def lifetimes(self) -> list[Cut]:
        with self._lock:
            return list(self.cuts)

    # -- the thread ----------------------------------------------------------------------------------
    def _connect(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.connect_failures += 1
            return
        client = _Client(sock, self.modes[index % len(self.modes)], time.monotonic(), index)
        with self._lock:
            self._clients[index] = client
        self._sel.register(sock, selectors.EVENT_READ, client)
        if client.mode != "silent":
            heapq.heappush(self._timers, (time.monotonic() + 0.05, next(self._seq), index))

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.2
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            for key, _ in self._sel.select(timeout):
                self._readable(key.data)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, index = heapq.heappop(self._timers)
                client = self._clients.get(index)
                if client is not None:
                    self._send(client, now)

    def _send(self, client: _Client, now: float) -> None:
        try:
            if client.mode == "partial":
                client.sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                return
            if client.mode == "fat":
                client.sock.send(_FAT)
                return
            client.sock.send(_HEAD[client.sent % len(_HEAD):][:1])
            client.sent += 1
        except BlockingIOError:
            pass                    # not connected yet: try again at the next tick
        except OSError:
            self._cut(client)
            return
        heapq.heappush(self._timers, (now + self.dribble_seconds, next(self._seq), client.index))

    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._cut(client)
        # Data (a 408/431 or similar reply) is read and dropped; the close follows.

    def _cut(self, client: _Client) -> None:
        with self._lock:
            if self._clients.get(client.index) is not client:
                return
            del self._clients[client.index]
            self.cuts.append(Cut(client.mode, time.monotonic() - client.started))
        self._sel.unregister(client.sock)
        client.sock.close()
        if self.reconnect and not self._stop.is_set():
            self._connect(client.index)
