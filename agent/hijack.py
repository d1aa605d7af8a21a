"""The hijacked cpuinfo as this host needs it: reads the live kernel and renders through agent.cpuinfo.

On arm64 the kernel shows a PER_LINUX32 reader its compat layout (../shared/reference/platform.md,
arch/arm64/kernel/cpuinfo.c c_show), so the compat view is read by a child started under linux32.
The result is regenerated when the number of online CPUs changes (`grep -c processor /proc/cpuinfo`
drives `make -j` in many builds).

Every failure to read or render (an unreadable or FIFO-swapped /sys/devices/system/cpu/online, an
unparsable line, a profile the host cannot run) comes out of `CpuinfoSource.render` as CpuinfoError
with a message naming the culprit, so the loop can mark the file "not ok" and carry on.
"""

from __future__ import annotations

import os
import stat
import subprocess

from . import cpuinfo
from .cpuinfo import CpuinfoError
from .processes import launcher_command
from .state import CpuinfoState

# Reading /proc/cpuinfo takes milliseconds; a child stuck longer than this is not going to answer.
COMPAT_READ_TIMEOUT_SECONDS = 30


def read_compat_view() -> str | None:
    """/proc/cpuinfo as a PER_LINUX32 task reads it; None when it cannot be read that way (the
    caller then builds the view from the native one)."""
    try:
        r = subprocess.run(launcher_command("--personality", "linux32", "--", "/bin/cat", "/proc/cpuinfo"),
                           capture_output=True, timeout=COMPAT_READ_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0 or len(r.stdout) > cpuinfo.MAX_DUMP_BYTES:
        return None
    return cpuinfo.decode(r.stdout, "/proc/cpuinfo (read under linux32)")


def read_native_view() -> str:
    return cpuinfo.read_text_file("/proc/cpuinfo")


class CpuinfoSource:
    """The hijacked file's content for the configured profile ("host" or a device profile's name)."""

    def __init__(self, profile: str = cpuinfo.HOST, processes=None, sys_root: str = "/sys",
                 machine: str | None = None, read_native=read_native_view, read_compat=read_compat_view,
                 profiles_dir=None):
        self.profile = profile
        self.sys_root = sys_root
        self.machine = machine or os.uname().machine
        self.read_native = read_native
        self.read_compat = read_compat
        self.profiles_dir = profiles_dir
        self._cache: tuple[int, bytes] | None = None
        self._state = CpuinfoState(profile=profile)

    def reconfigure(self, profile: str) -> None:
        """A reloaded config: a new profile renders anew at the next full check."""
        if profile != self.profile:
            self.profile, self._cache = profile, None
            self._state = CpuinfoState(profile=profile)

    def render(self) -> bytes:
        try:
            return self._render()
        except CpuinfoError:
            raise
        except (OSError, UnicodeError, ValueError, subprocess.SubprocessError) as exc:
            # Injected readers (and anything below them) may raise these; the loop expects one type.
            raise CpuinfoError(f"cannot render the hijacked cpuinfo: {exc}") from None

    def _render(self) -> bytes:
        online = cpuinfo.online_cpu_count(self.sys_root)
        if self._cache is None or self._cache[0] != online:
            profile = cpuinfo.get_profile(self.profile, self.profiles_dir)
            host = self.host_view()
            text = cpuinfo.hijack(host, profile, online)
            self._state = describe(self.profile, profile, host)
            self._cache = (online, text.encode())
        return self._cache[1]

    def host_view(self) -> str:
        return cpuinfo.host_view(self.machine, self.read_native, self.read_compat)

    def exceeding(self) -> tuple[list[str], tuple[str, ...]]:
        """(the profile's features this host cannot run, the host's 32-bit features), read live.
        CpuinfoError when the profile is unknown or the host cannot be read."""
        profile = cpuinfo.get_profile(self.profile, self.profiles_dir)
        try:
            host = cpuinfo.host_features(self.host_view())
        except (OSError, UnicodeError, subprocess.SubprocessError) as exc:
            raise CpuinfoError(f"cannot read this host's cpuinfo: {exc}") from None
        return (cpuinfo.exceeding(profile.features, host) if profile else []), host

    def describe(self) -> CpuinfoState:
        """What the last rendered file shows (for status and metrics readers)."""
        return self._state


def describe(name: str, profile: cpuinfo.Profile | None, host_text: str) -> CpuinfoState:
    host = cpuinfo.host_features(host_text)
    if profile is None:
        return CpuinfoState(profile=name, variant="v7", features=host, hidden_features=())
    return CpuinfoState(profile=name, variant=profile.variant, features=profile.features,
                        hidden_features=tuple(cpuinfo.hidden(profile.features, host)))


def containerd_variant_of_pid(pid: int | None, proc_root: str = "/proc") -> str:
    """The variant containerd inside dockerd will pick: it parses the /proc/cpuinfo of its own mount
    namespace, which /proc/PID/root reaches."""
    if not pid:
        return ""
    try:
        text = cpuinfo.read_text_file(os.path.join(proc_root, str(pid), "root", "proc", "cpuinfo"))
    except CpuinfoError:
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
