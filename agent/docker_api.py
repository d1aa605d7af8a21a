"""The Docker API facade: the few calls the agent makes to the dockerd it supervises.

`/_ping` is spoken directly over the unix socket: it is unversioned, so it works against any payload
(Docker 29 refuses API versions below 1.44 on versioned paths), and it never imports or constructs the
SDK client on the hot path. Everything else goes through the docker SDK, created lazily because
`APIClient(version="auto")` calls /version in its constructor and raises when dockerd is down
(../shared/reference/packaging-and-systemd.md).
"""

from __future__ import annotations

import json
import socket
import time


class DockerApiError(Exception):
    pass


def _http_get(sock_path: str, path: str, timeout: float, limit: int = 1 << 20) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
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

    def ping(self, timeout: float) -> float:
        """Latency in seconds; raises DockerApiError/OSError on failure or timeout."""
        t0 = time.monotonic()
        status, body = _http_get(self.sock_path, "/_ping", timeout, limit=4096)
        if status != 200:
            raise DockerApiError(f"/_ping answered HTTP {status}")
        return time.monotonic() - t0

    def version(self, timeout: float) -> dict:
        status, body = _http_get(self.sock_path, "/version", timeout)
        if status != 200:
            raise DockerApiError(f"/version answered HTTP {status}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DockerApiError(f"/version: {exc}") from None

    def sdk_client(self, timeout: float = 60):
        import docker  # deferred: only the event follower needs the SDK

        return docker.APIClient(base_url="unix://" + self.sock_path, version="auto", timeout=timeout)
