"""The Docker API facade: the few calls the agent makes to the dockerd it supervises, spoken as plain
HTTP/1.0 over its unix socket.

- Unversioned paths: they work against any payload (Docker 29 refuses API versions below 1.44 on
  versioned paths) with no version negotiation, and nothing talks to dockerd until a call is made (the
  SDK's `APIClient(version="auto")` calls /version in its constructor and raises when dockerd is down,
  ../shared/reference/packaging-and-systemd.md).
- Not the docker SDK: importing it (requests, urllib3, ...) costs the long-running agent about 7 MB of
  its ~45 MB budget (docs/PERFORMANCE.md), for four GET requests.
- HTTP/1.0: the answer is never chunked and ends when dockerd closes the connection, so the event
  stream is simply one JSON object per line until EOF.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.parse


class DockerApiError(Exception):
    pass


class NotFound(DockerApiError):
    pass


def peer_pid(sock: socket.socket) -> int:
    """SO_PEERCRED on a connected unix socket: the pid of the process that listens on it."""
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))
    return pid


def _http_get(sock_path: str, path: str, timeout: float, limit: int = 1 << 20,
              peer: list | None = None) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        if peer is not None:
            peer.append(peer_pid(s))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks = []
        total = 0
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if total > limit:
                raise DockerApiError(f"response to {path} larger than {limit} bytes")
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise DockerApiError(f"malformed HTTP response to {path}") from None
    return status, body


class DockerApi:
    def __init__(self, sock_path: str):
        self.sock_path = sock_path

    def ping(self, timeout: float) -> tuple[float, int]:
        """(latency in seconds, pid of the process answering); raises DockerApiError/OSError on failure
        or timeout."""
        t0 = time.monotonic()
        peer: list[int] = []
        status, body = _http_get(self.sock_path, "/_ping", timeout, limit=4096, peer=peer)
        if status != 200:
            raise DockerApiError(f"/_ping answered HTTP {status}")
        return time.monotonic() - t0, peer[0]

    def version(self, timeout: float) -> dict:
        return self._json("/version", timeout)

    def _json(self, path: str, timeout: float):
        status, body = _http_get(self.sock_path, path, timeout, limit=64 << 20)
        if status == 404:
            raise NotFound(f"{path}: not found")
        if status != 200:
            raise DockerApiError(f"{path} answered HTTP {status}: {body[:200]!r}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DockerApiError(f"{path}: {exc}") from None

    # The three calls the container event follower makes (named as the docker SDK names them).
    def containers(self, all: bool = False, timeout: float = 30) -> list[dict]:
        return self._json("/containers/json?all=1" if all else "/containers/json", timeout)

    def inspect_container(self, container_id: str, timeout: float = 30) -> dict:
        return self._json(f"/containers/{urllib.parse.quote(container_id)}/json", timeout)

    def events(self, since: str | None = None, filters: dict | None = None, connect_timeout: float = 10) -> "EventStream":
        query = {}
        if since is not None:
            query["since"] = since
        if filters:
            query["filters"] = json.dumps(filters)
        return EventStream(self.sock_path, "/events?" + urllib.parse.urlencode(query), connect_timeout)


class EventStream:
    """Iterates decoded events until dockerd closes the stream; `close()` from another thread ends it."""

    def __init__(self, sock_path: str, path: str, connect_timeout: float):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(connect_timeout)
            self._sock.connect(sock_path)
            self._sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            self._buffer = b""
            head = self._read_until(b"\r\n\r\n")
        except BaseException:
            self._sock.close()
            raise
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"]:
            self._sock.close()
            raise DockerApiError(f"/events answered {head.splitlines()[0][:100]!r}")
        self._sock.settimeout(None)     # events arrive whenever containers change

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                raise DockerApiError("dockerd closed the connection")
            self._buffer += data
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def __iter__(self):
        while True:
            while b"\n" not in self._buffer:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self._buffer += data
            line, _, self._buffer = self._buffer.partition(b"\n")
            if line.strip():
                yield json.loads(line)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
