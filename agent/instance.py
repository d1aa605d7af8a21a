"""One agent per state and run folder.

Two agents on the same folders would supervise one dockerd twice: a hand-started `armhf-agent run`
adopted the service's dockerd, and its Ctrl-C stopped production (issue 12). Each agent holds an
exclusive flock on `agent.lock` in its run and state folders for as long as it runs; the lock dies with
the process (crash, SIGKILL), so a stale file never blocks a restart. The file records the holder's pid
for the refusal message. Its descriptor is close-on-exec: dockerd must not inherit (and keep) it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

LOCK_FILE = "agent.lock"
# An upgrade or `systemctl restart` starts the new agent as the old one exits: a short wait covers the
# handover; a second agent started by hand is refused once it is over.
WAIT_SECONDS = 5.0


class InstanceLocked(Exception):
    pass


class InstanceLock:
    def __init__(self, fds: list[int]):
        self._fds = fds

    @classmethod
    def acquire(cls, folders: list[str], wait: float = WAIT_SECONDS) -> "InstanceLock":
        fds: list[int] = []
        try:
            for folder in dict.fromkeys(folders):        # the same folder twice is locked once
                fds.append(cls._lock(os.path.join(folder, LOCK_FILE), wait))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(fds)

    @staticmethod
    def _lock(path: str, wait: float) -> int:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise InstanceLocked(
                        f"another armhf-agent (pid {holder}) already runs on {os.path.dirname(path)} "
                        f"(lock {path}); stop it first (systemctl stop armhf-agent), or give this one its own "
                        "agent.run_dir and agent.state_dir") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
