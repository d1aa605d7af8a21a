"""The hijacked cpuinfo as this host needs it: reads the live kernel and renders through agent.cpuinfo.

On arm64 the kernel shows a PER_LINUX32 reader its compat layout (../shared/reference/platform.md,
arch/arm64/kernel/cpuinfo.c c_show), so the compat view is read by a child started under linux32.
The result is regenerated when the number of online CPUs changes (`grep -c processor /proc/cpuinfo`
drives `make -j` in many builds).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from . import cpuinfo
from .processes import launcher_command


def read_compat_view() -> str | None:
    r = subprocess.run(launcher_command("--personality", "linux32", "--", "/bin/cat", "/proc/cpuinfo"),
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def read_native_view() -> str:
    return Path("/proc/cpuinfo").read_text()


class CpuinfoSource:
    def __init__(self, variant: str, processes=None, sys_root: str = "/sys", machine: str | None = None,
                 read_native=read_native_view, read_compat=read_compat_view):
        self.variant = variant
        self.sys_root = sys_root
        self.machine = machine or os.uname().machine
        self.read_native = read_native
        self.read_compat = read_compat
        self._cache: tuple[int, bytes] | None = None

    def render(self) -> bytes:
        online = cpuinfo.online_cpu_count(self.sys_root)
        if self._cache is None or self._cache[0] != online:
            text = cpuinfo.render_for_host(self.machine, online, self.variant, self.read_native, self.read_compat)
            self._cache = (online, text.encode())
        return self._cache[1]


def containerd_variant_of_pid(pid: int | None, proc_root: str = "/proc") -> str:
    """The variant containerd inside dockerd will pick: it parses the /proc/cpuinfo of its own mount
    namespace, which /proc/PID/root reaches."""
    if not pid:
        return ""
    try:
        text = Path(proc_root, str(pid), "root", "proc", "cpuinfo").read_text()
    except OSError:
        return ""
    return cpuinfo.containerd_variant(text)


def daemon_view_stale(path: str, pid: int, proc_root: str = "/proc") -> bool:
    """dockerd's bind mount pins an inode: after any rewrite of the file (regenerated, repaired, or
    written while an adopted dockerd was running) dockerd would keep seeing the old one. True when
    what dockerd sees at /proc/cpuinfo (through /proc/PID/root) is not the file at `path`, and `path`
    is a regular file a re-bind could take (tampered again since the check, a directory or a
    symlink, it is not: the next repair comes first)."""
    try:
        ours = os.lstat(path)
        seen = os.stat(f"{proc_root}/{pid}/root/proc/cpuinfo")
    except OSError:
        return False
    return stat.S_ISREG(ours.st_mode) and (ours.st_dev, ours.st_ino) != (seen.st_dev, seen.st_ino)
