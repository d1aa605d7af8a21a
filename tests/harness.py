"""Real components for the tests: a bare dockerd, a stand-in payload, a busybox image, a notify socket.

Recipes from ../shared/reference/test-environment.md (verified on these machines): dockerd with
its own data-root/exec-root/socket, --bridge=none --iptables=false; images from `docker import` of a
busybox-static tree (no registry is reachable); containers always --network none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Payload safety checks refuse folders writable by others, and /tmp is 1777: test payloads and
# state live under a root-owned 0700 folder instead. Unix socket paths must stay < 108 bytes.
TEST_BASE = Path(os.environ.get("ARMHF_AGENT_TEST_BASE", "/var/lib/armhf-agent-tests"))

SYSTEM_BINARIES = {
    "dockerd": "dockerd",
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd-shim-runc-v2",
    "runc": "runc",
    "docker-init": "docker-init",
    "docker-proxy": "docker-proxy",
    "docker": "/usr/bin/docker",   # Debian's client, not whatever sits in /usr/local/bin
}


def which(name: str) -> str:
    if name.startswith("/"):
        return name
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"):
        p = Path(d, name)
        if p.exists():
            return str(p)
    raise FileNotFoundError(name)


def have_docker() -> bool:
    try:
        which("dockerd")
        return os.geteuid() == 0
    except FileNotFoundError:
        return False


def new_base(prefix: str = "t") -> Path:
    TEST_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(TEST_BASE, 0o700)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TEST_BASE))


def unmount_under(path: Path | str) -> None:
    """Detaches every mount at or below `path` in this namespace, deepest first (`umount -R` does nothing
    when `path` itself is not a mount point: the agent's kept namespace and its folder are below it)."""
    root = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].replace("\\040", " ") for line in f}
    for point in sorted((p for p in points if p == root or p.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def make_payload(root: Path, copy_dockerd: bool = True) -> Path:
    """The stand-in for an armhf payload on x86: the system's own Docker binaries in root/bin.
    dockerd is copied (so /proc/PID/exe names the payload, as with a real payload); the rest are
    symlinks to keep it fast."""
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for name, src in SYSTEM_BINARIES.items():
        real = os.path.realpath(which(src))
        dest = bindir / name
        if name == "dockerd" and copy_dockerd:
            shutil.copy2(real, dest)
            os.chmod(dest, 0o755)
        else:
            dest.symlink_to(real)
    return root


def make_busybox_tar(dest: Path) -> Path:
    tree = dest.parent / (dest.name + ".tree")
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    busybox = "/bin/busybox"
    shutil.copy2(busybox, tree / "bin" / "busybox")
    for applet in ("sh", "cat", "uname", "ls", "sleep", "echo", "true", "false", "grep", "head", "wc",
                   "dd", "tail", "mount", "id", "env"):
        (tree / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (tree / d).mkdir(exist_ok=True)
    subprocess.run(["tar", "-C", str(tree), "-cf", str(dest), "."], check=True)
    shutil.rmtree(tree)
    return dest


@dataclass
class Dockerd:
    """A bare dockerd for tests (not supervised by the agent)."""

    base: Path
    proc: subprocess.Popen | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def sock(self) -> str:
        return str(self.base / "d.sock")

    @property
    def host(self) -> str:
        return "unix://" + self.sock

    def args(self, dockerd: str = "dockerd") -> list[str]:
        return [which(dockerd) if not dockerd.startswith("/") else dockerd,
                "-H", self.host, "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
                "--pidfile", str(self.base / "d.pid"), "--bridge=none", "--iptables=false", *self.extra]

    def start(self, timeout: float = 60) -> "Dockerd":
        log = open(self.base / "dockerd.log", "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log, start_new_session=True)
        wait_ping(self.sock, timeout)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def docker(self, *args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return docker_cli(self.sock, *args, check=check, timeout=timeout, **kw)


def docker_cli(sock: str, *args: str, check: bool = True, timeout: float = 120, client: str | None = None,
               env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = [client or which("/usr/bin/docker"), "-H", "unix://" + sock, *args]
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True, env=env, **kw)


def ping(sock: str, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = s.recv(256)
            return b" 200 " in data.split(b"\r\n", 1)[0] + b" "
    except OSError:
        return False


def wait_ping(sock: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(sock, 1.0):
            return
        time.sleep(0.1)
    raise TimeoutError(f"dockerd at {sock} did not answer /_ping within {timeout}s")


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class NotifySocket:
    """A real NOTIFY_SOCKET: an AF_UNIX datagram socket that records every message, read by a
    thread as systemd would (so the sender's queue never fills)."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def drain(self) -> list[str]:
        return [m for _, m in list(self.messages)]

    def wait_for(self, needle: str, timeout: float) -> float:
        """Returns the monotonic time the first message containing `needle` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in list(self.messages):
                if needle in m.split("\n"):
                    return t
            time.sleep(0.05)
        raise TimeoutError(f"no {needle!r} on NOTIFY_SOCKET within {timeout}s; got {self.drain()}")

    def close(self) -> None:
        self._closed = True
        self._reader.join(1)
        self.sock.close()


def read_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
