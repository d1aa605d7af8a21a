"""Managed files (the hijacked cpuinfo, the docker shim): each has check / repair / describe.

`check` says what is wrong (one of state.REPAIR_REASONS) without changing anything; `repair` puts the
desired content in place atomically and moves whatever was there to the displaced store; `describe`
gives the FileState the loop publishes. The table of what is managed (name, path, mode, marker) is
`MANAGED_FILES` below, the one place the loop, the CLI and the metrics read it from.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable

from . import fsops, host_docker, runtime
from .fsops import DisplacedStore
from .state import REPAIR_REASONS, FileState

log = logging.getLogger("armhf-agent.files")

WRITE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class ManagedSpec:
    """One managed file: its name (a metrics label), where the config puts it, its mode, and the marker
    every version the agent writes contains (it tells "ours, edited" from "a foreign file")."""

    name: str
    mode: int
    marker: bytes
    path_of: Callable[[object], str]


# Every file we render starts with processor 0: an edited copy still has it ("content").
CPUINFO_MARKER = b"processor\t: 0"
# The shim's header line (agent/shim.py): present in every shim the agent renders.
SHIM_MARKER = b"installed by armhf-agent"

CPUINFO = ManagedSpec("cpuinfo", 0o644, CPUINFO_MARKER, lambda config: config.cpuinfo.path)
SHIM = ManagedSpec("shim", 0o755, SHIM_MARKER, lambda config: config.shim.path)
RUNTIME_WRAPPER = ManagedSpec("runtime-wrapper", 0o755, runtime.WRAPPER_MARKER, runtime.wrapper_path)
# The host's docker.service (host_docker mode): its own wrapper, the two cpuinfo views it mounts, the drop-in.
HOST_WRAPPER = ManagedSpec("host-runtime-wrapper", 0o755, runtime.WRAPPER_MARKER, host_docker.wrapper_path)
HOST_CPUINFO_V7 = ManagedSpec("host-cpuinfo-v7", 0o644, CPUINFO_MARKER,
                              lambda c: host_docker.cpuinfo_path(c, host_docker.CPUINFO_V7))
HOST_CPUINFO_V6 = ManagedSpec("host-cpuinfo-v6", 0o644, CPUINFO_MARKER,
                              lambda c: host_docker.cpuinfo_path(c, host_docker.CPUINFO_V6))
HOST_DROPIN = ManagedSpec("host-docker-dropin", 0o644, host_docker.DROPIN_MARKER, host_docker.dropin_path)
HOST_CONTAINERD_DROPIN = ManagedSpec("host-containerd-dropin", 0o644, host_docker.DROPIN_MARKER,
                                     host_docker.containerd_dropin_path)
HOST_DROPINS = (HOST_DROPIN, HOST_CONTAINERD_DROPIN)
HOST_FILES = (HOST_WRAPPER, HOST_CPUINFO_V7, HOST_CPUINFO_V6, *HOST_DROPINS)
MANAGED_FILES = (CPUINFO, SHIM, RUNTIME_WRAPPER, *HOST_FILES)


def in_force(config) -> tuple[ManagedSpec, ...]:
    """The files this config keeps in place: the runtime wrapper while it is on, the host docker.service's
    while host_docker is (the others are kept absent)."""
    return tuple(spec for spec in MANAGED_FILES
                 if not (spec is RUNTIME_WRAPPER and not config.runtime.wrapper)
                 and not (spec in HOST_FILES and not config.host_docker.enabled)
                 and not (spec is HOST_CONTAINERD_DROPIN and not config.host_docker.containerd_unit))


@dataclass(frozen=True)
class Problem:
    reason: str     # one of REPAIR_REASONS
    detail: str


class ManagedFile:
    def __init__(self, spec: ManagedSpec, path: str, store: DisplacedStore, clock, fs=fsops):
        self.spec = spec
        self.name = spec.name
        self.path = path
        self.mode = spec.mode
        self.marker = spec.marker
        self.store = store
        self.clock = clock
        self.fs = fs                   # atomic_write, fix_owner_and_mode, read_nofollow (agent.fsops)
        self.desired: bytes | None = None
        self.unavailable = ""          # why there is no desired content (e.g. no docker client to exec)
        self.absent = False            # with no desired content: our file must not stay either
        self.render_error = ""         # the last attempt to compute the content failed (the old one stays)
        self.repairs = {r: 0 for r in REPAIR_REASONS}
        self.last_repair_reason = ""
        self.last_repair_at: float | None = None
        self.last_problem: Problem | None = None
        self.write_error = ""
        self.retry_at = 0.0            # after a failed write: not before this (monotonic)
        self.was_right = False         # repairs count only drift: putting a file in place the first time is installing
        self.ever_right = False

    def retarget(self, path: str, store: DisplacedStore) -> None:
        """A reload moved the file: the same resource (its counters stay), checked at its new path."""
        if path != self.path:
            self.path = path
            self.was_right = self.ever_right = False
            self.last_problem = None
        self.store = store

    def set_desired(self, data: bytes | None, unavailable: str = "", absent: bool = False) -> None:
        """The content this file must have; None with `unavailable` saying why there is none. With
        `absent`, a file of ours found there is removed (and a displaced original put back), for a
        file that would do harm, such as a shim that execs a client this host must not run."""
        if data != self.desired:
            # New desired content (config, CPU count or client changed): rewriting is an update, not drift.
            self.was_right = False
        self.desired = data
        self.unavailable = "" if data is not None else unavailable
        self.absent = data is None and absent
        self.render_error = ""

    def set_render_error(self, reason: str) -> None:
        """Computing the content failed this time: what is in place stays (it was right before), and the
        file is reported not ok with the reason until a render succeeds."""
        self.render_error = reason

    def check(self) -> Problem | None:
        if self.desired is None:
            return None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return Problem("missing", f"{self.path} does not exist")
        except OSError as exc:
            return Problem("missing", f"{self.path}: {exc.strerror}")
        if stat.S_ISLNK(st.st_mode):
            return Problem("symlink", f"{self.path} is a symlink to {os.readlink(self.path)}")
        if stat.S_ISDIR(st.st_mode):
            return Problem("directory", f"{self.path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            return Problem("replaced", f"{self.path} is not a regular file")
        content = self.fs.read_nofollow(self.path, len(self.desired))
        if content != self.desired:
            if content is not None and self.marker in content:
                return Problem("content", f"{self.path} was edited")
            size = st.st_size
            kind = "an ELF binary" if content and content.startswith(b"\x7fELF") else "a foreign file"
            return Problem("replaced", f"{self.path} was replaced by {kind} ({size} bytes)")
        if st.st_uid != 0 or st.st_gid != 0:
            return Problem("owner", f"{self.path} is owned by {st.st_uid}:{st.st_gid}, not root")
        if stat.S_IMODE(st.st_mode) != self.mode:
            return Problem("mode", f"{self.path} has mode {stat.S_IMODE(st.st_mode):04o}, not {self.mode:04o}")
        return None

    def repair(self, problem: Problem) -> bool:
        """Returns True when the file is right afterwards."""
        assert self.desired is not None
        if problem.reason in ("owner", "mode"):
            # The content is right: fix the same inode in place. A new inode would race with runc,
            # which refuses a bind source replaced while it mounts it ("possibly malicious path ...
            # (deleted)", seen with 50 concurrent `docker run` during mode drift).
            try:
                self.fs.fix_owner_and_mode(self.path, self.mode)
            except OSError as exc:
                self.write_error = f"cannot fix owner/mode of {self.path}: {exc.strerror or exc}"
                raise
            self._count(problem, "")
            return True
        moved_to: list[str] = []

        def move_aside() -> None:
            if problem.reason in ("content", "replaced", "directory", "symlink") and os.path.lexists(self.path):
                # Only what stood there before we first put our file in place is "the original" that
                # uninstall puts back; a later foreign file is tampering, kept under a dated name.
                moved_to.append(self.store.displace(self.name, self.path, problem.reason,
                                                    keep_as_original=problem.reason == "replaced"
                                                    and not self.ever_right))

        try:
            self.fs.atomic_write(self.path, self.desired, self.mode, before_rename=move_aside)
        except OSError as exc:
            self.write_error = f"cannot write {self.path}: {exc.strerror or exc}"
            raise
        self._count(problem, f"; old kept at {moved_to[0]}" if moved_to else "")
        return True

    def _count(self, problem: Problem, kept: str) -> None:
        self.write_error = ""
        if not self.was_right:
            log.info("%s: installed %s (%s%s)", self.name, self.path, problem.detail, kept)
            return
        self.repairs[problem.reason] += 1
        self.last_repair_reason = problem.reason
        self.last_repair_at = self.clock.time()
        log.warning("%s: repaired %s (%s: %s%s)", self.name, self.path, problem.reason, problem.detail, kept)

    def ensure(self) -> Problem | None:
        """check, then repair if needed. Returns the problem that remains (None = file is right)."""
        if self.desired is None and self.absent:
            self._ensure_absent()
            return None
        problem = self.check()
        if problem is not None:
            if self.clock.monotonic() < self.retry_at:
                self.last_problem = problem
                return problem
            try:
                self.repair(problem)
            except OSError:
                # A failed write creates and removes a temp file in the watched folder, which wakes the
                # loop again: without a pause a full disk would be retried in a tight loop.
                self.retry_at = self.clock.monotonic() + WRITE_RETRY_SECONDS
                self.last_problem = problem
                return problem
            problem = self.check()
        self.last_problem = problem
        if problem is None and self.desired is not None:
            self.was_right = self.ever_right = True
        return problem

    def _ensure_absent(self) -> None:
        content = self.fs.read_nofollow(self.path, 1 << 20)
        if content is None or self.marker not in content:
            return
        try:
            log.warning("%s: removing %s (%s): %s", self.name, self.path, self.unavailable, self.remove())
        except OSError as exc:
            self.write_error = f"cannot remove {self.path}: {exc.strerror or exc}"

    def remove(self) -> str:
        """Uninstall: remove our file (only if it is ours) and put a displaced original back. Raises
        OSError naming the path when either cannot be done; a second run finishes what the first left."""
        done = []
        content = self.fs.read_nofollow(self.path, 1 << 20)
        if content is not None and self.marker in content:
            os.unlink(self.path)
            done.append(f"removed {self.path}")
        original = self.store.original(self.name)
        if os.path.lexists(original) and not os.path.lexists(self.path):
            self.store.restore(original, self.path)
            done.append(f"restored {self.path} from {original}")
        return "; ".join(done) or f"{self.path}: nothing to do"

    def describe(self) -> FileState:
        problem = self.last_problem
        text = self.unavailable or self.render_error or self.write_error or (problem.detail if problem else "")
        return FileState(name=self.name, path=self.path,
                         ok=self.desired is not None and problem is None and not self.render_error,
                         problem=text, repairs=dict(self.repairs), last_repair_reason=self.last_repair_reason,
                         last_repair_at=self.last_repair_at)
