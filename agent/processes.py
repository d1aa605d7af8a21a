"""The process facade: spawning dockerd through the launcher, signalling, and reading /proc.

A child the agent started is reaped through its Popen; an adopted dockerd (started by an earlier agent)
is not our child, so its liveness is judged from /proc/PID/stat: same pid *and* same start time, which
survives pid reuse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .launch import EXIT_PERSONALITY_REFUSED

LAUNCHER = str(Path(__file__).with_name("launch.py"))
# What login shells, cron and systemd services get when nobody sets PATH (Debian's /etc/profile for
# root, systemd's compiled-in default): dockerd's PATH after the payload's folders, and what doctor
# assumes a shell resolves `docker` with.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def launcher_command(*options: str) -> list[str]:
    """The exec helper (agent/launch.py) as a command: isolated (-I) and without site (-S), so it starts
    fast and the same from a checkout and from the packaged venv."""
    return [sys.executable, "-I", "-S", LAUNCHER, *options]


def read_environ(proc_root: str, pid: int) -> dict[str, str] | None:
    """The environment a process was started with (/proc/PID/environ), None when unreadable."""
    try:
        raw = Path(proc_root, str(pid), "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def read_cmdline(proc_root: str, pid: int) -> list[str] | None:
    """A process's argv; None when there is no such process (or it is a zombie: an empty cmdline)."""
    try:
        raw = Path(proc_root, str(pid), "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


@dataclass
class ProcessHandle:
    pid: int
    start_ticks: int                      # /proc/PID/stat field 22: identity across pid reuse
    popen: subprocess.Popen | None = None  # None for an adopted process

    @property
    def adopted(self) -> bool:
        return self.popen is None


class Processes:
    def __init__(self, proc_root: str = "/proc"):
        self.proc = proc_root
        self._btime: float | None = None
        self._clk_tck = os.sysconf("SC_CLK_TCK")

    # -- spawning ------------------------------------------------------------------------------------
    def launch(self, argv: list[str], env: dict[str, str], personality: str, cpuinfo: str | None,
               containerd_state: str | None, namespace_pin: str | None, log_path: str | None) -> ProcessHandle:
        options = []
        if personality == "linux32":
            options += ["--personality", "linux32"]
        if cpuinfo:
            options += ["--cpuinfo", cpuinfo]
        if containerd_state:
            options += ["--containerd-state", containerd_state]
        if namespace_pin:
            options += ["--namespace", namespace_pin]
        cmd = launcher_command(*options, "--", *argv)
        out = open(log_path, "ab") if log_path else None
        try:
            # Own session: a Ctrl-C in the foreground demo reaches the agent, which stops dockerd itself;
            # under systemd KillMode=process only the agent is signalled (the unit relies on it).
            popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True, close_fds=True)
        finally:
            if out:
                out.close()
        return ProcessHandle(pid=popen.pid, start_ticks=self.start_ticks(popen.pid) or 0, popen=popen)

    def probe_personality(self, personality: str) -> str | None:
        """None if the kernel accepts the personality, else the reason."""
        if personality != "linux32":
            return None
        r = subprocess.run(launcher_command("--personality", "linux32", "--probe"), capture_output=True, text=True)
        if r.returncode == 0:
            return None
        return r.stderr.strip() or f"launcher exited {r.returncode}"

    def rebind_cpuinfo(self, handle: ProcessHandle, path: str) -> str | None:
        """Re-binds `path` over /proc/cpuinfo in the mount namespace of the dockerd behind `handle`.
        Its start time goes along: the helper refuses a pid reused by another process since."""
        r = subprocess.run(launcher_command("--rebind", str(handle.pid), "--start-ticks", str(handle.start_ticks),
                                            "--cpuinfo", path), capture_output=True, text=True)
        return None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")

    def pin_namespace(self, handle: ProcessHandle, pin: str) -> str | None:
        """Keeps the mount namespace of the dockerd behind `handle` at `pin` (agent/launch.py pin_running)."""
        r = subprocess.run(launcher_command("--pin", str(handle.pid), "--start-ticks", str(handle.start_ticks),
                                            "--namespace", pin), capture_output=True, text=True)
        return None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")

    def adopt(self, pid: int) -> ProcessHandle | None:
        ticks = self.start_ticks(pid)
        return None if ticks is None else ProcessHandle(pid=pid, start_ticks=ticks)

    # -- liveness ------------------------------------------------------------------------------------
    def poll(self, handle: ProcessHandle) -> int | None:
        """None while running; the exit status once gone (-N for a signal; -1000 unknown: adopted)."""
        if handle.popen is not None:
            return handle.popen.poll()
        ticks = self.start_ticks(handle.pid)
        if ticks is None or ticks != handle.start_ticks or self.state(handle.pid) == "Z":
            return -1000
        return None

    def signal(self, handle: ProcessHandle, sig: int) -> None:
        if self.poll(handle) is not None:
            return
        try:
            os.kill(handle.pid, sig)
        except ProcessLookupError:
            pass

    # -- /proc ---------------------------------------------------------------------------------------
    def _stat_fields(self, pid: int) -> list[str] | None:
        try:
            raw = Path(self.proc, str(pid), "stat").read_text()
        except OSError:
            return None
        # comm may contain spaces and parentheses: split after the last ')'.
        return raw[raw.rindex(")") + 2:].split()

    def state(self, pid: int) -> str | None:
        f = self._stat_fields(pid)
        return f[0] if f else None

    def start_ticks(self, pid: int) -> int | None:
        f = self._stat_fields(pid)
        return int(f[19]) if f else None

    def start_time(self, handle: ProcessHandle) -> float | None:
        """Wall-clock start time (epoch seconds)."""
        if self._btime is None:
            for line in Path(self.proc, "stat").read_text().splitlines():
                if line.startswith("btime "):
                    self._btime = float(line.split()[1])
        return None if self._btime is None else self._btime + handle.start_ticks / self._clk_tck

    def exe(self, pid: int) -> str | None:
        try:
            return os.readlink(Path(self.proc, str(pid), "exe"))
        except OSError:
            return None

    def cmdline(self, pid: int) -> list[str]:
        return read_cmdline(self.proc, pid) or []

    def personality(self, pid: int) -> int | None:
        try:
            return int(Path(self.proc, str(pid), "personality").read_text(), 16)
        except (OSError, ValueError):
            return None

    def environ(self, pid: int) -> dict[str, str] | None:
        return read_environ(self.proc, pid)

    def find_process(self, exe: str, argument: str) -> int | None:
        """A live process running `exe` with `argument` among its arguments: the dockerd an earlier agent
        started, in the moment before it writes its pidfile."""
        try:
            names = [n for n in os.listdir(self.proc) if n.isdigit()]
        except OSError:
            return None
        for name in names:
            pid = int(name)
            if self.exe(pid) == exe and argument in (read_cmdline(self.proc, pid) or ()):
                return pid
        return None

    def mount_ns(self, pid: int | str) -> str | None:
        try:
            return os.readlink(Path(self.proc, str(pid), "ns", "mnt"))
        except OSError:
            return None

    def remove_file(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def read_pidfile(self, path: str) -> int | None:
        try:
            return int(Path(path).read_text().strip())
        except (OSError, ValueError):
            return None


def exit_description(status: int) -> str:
    if status == -1000:
        return "exited (status unknown: adopted process)"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    if status == EXIT_PERSONALITY_REFUSED:
        return "personality(PER_LINUX32) refused"
    return f"exited with status {status}"
