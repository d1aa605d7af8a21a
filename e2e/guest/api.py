#!/usr/bin/env python3
"""A container through the Engine API alone (no docker CLI, no shim): create, start, wait, logs, remove.
Prints the container's output. Usage: api.py SOCKET [--privileged] [--bind SRC:DST] [--env K=V]
[--detach] IMAGE CMD...; with --detach it prints the container's id once started and leaves it running
(a docker:dind-style daemon)."""

import json
import socket
import sys


def call(sock_path: str, method: str, path: str, body=None) -> tuple[int, bytes]:
    payload = json.dumps(body).encode() if body is not None else b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(300)
        s.connect(sock_path)
        s.sendall(f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def main(sock_path: str, args: list) -> int:
    host, env, detach = {"NetworkMode": "none"}, [], False
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt == "--privileged":
            host["Privileged"] = True
        elif opt == "--bind":
            host.setdefault("Binds", []).append(args.pop(0))
        elif opt == "--env":
            env.append(args.pop(0))
        elif opt == "--detach":
            detach = True
        else:
            sys.stderr.write(f"api.py: unknown option {opt}\n")
            return 2
    image, cmd = args[0], args[1:]
    status, body = call(sock_path, "POST", "/containers/create",
                        {"Image": image, "Cmd": cmd, "Env": env, "HostConfig": host})
    if status != 201:
        sys.stderr.write(f"create: HTTP {status}: {body.decode(errors='replace')}\n")
        return 1
    cid = json.loads(body)["Id"]
    if detach:
        status, body = call(sock_path, "POST", f"/containers/{cid}/start")
        if status >= 300:
            sys.stderr.write(f"start: HTTP {status}: {body.decode(errors='replace')}\n")
            call(sock_path, "DELETE", f"/containers/{cid}?force=1")
            return 1
        print(cid)
        return 0
    try:
        for method, path in (("POST", f"/containers/{cid}/start"), ("POST", f"/containers/{cid}/wait")):
            status, body = call(sock_path, method, path)
            if status >= 300:
                sys.stderr.write(f"{path}: HTTP {status}: {body.decode(errors='replace')}\n")
                return 1
        status, logs = call(sock_path, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
        # The multiplexed stream: 8-byte frame headers (stream, 3 zeros, big-endian length).
        out, at = b"", 0
        while at + 8 <= len(logs):
            size = int.from_bytes(logs[at + 4:at + 8], "big")
            out += logs[at + 8:at + 8 + size]
            at += 8 + size
        sys.stdout.write(out.decode(errors="replace"))
        return 0
    finally:
        call(sock_path, "DELETE", f"/containers/{cid}?force=1")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
