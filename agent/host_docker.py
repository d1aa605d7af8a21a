"""The host's own Docker, every platform native (issue 17; opt-in: `[host_docker] enabled`,
`armhf-agent host-docker on|off`).

An AArch32-capable arm64 host's own arm64 dockerd already runs arm/v7 and arm/v6 code natively (BuildKit
advertises them); what it gets wrong is what the 32-bit containers see: `uname -m` aarch64 and the arm64
cpuinfo (moby#42732). The runtime wrapper in mode `host` (agent/runtime.py, agent/runtime_exec.py) fixes
that per container: a 32-bit userland runs under PER_LINUX32 with the ARMv7 cpuinfo (ARMv6 for an ARMv6
build), everything 64-bit is left exactly as it is. This module wires it into the host's docker.service
without touching the unit or daemon.json: a systemd drop-in (PATH with the wrapper's folder first, and
DOCKER_BUILDKIT_RUNC_COMMAND naming it, read by Docker >= 26), kept in place like the agent's other
files. Distribution and Docker packages run dockerd against the system containerd.service
(`--containerd=/run/containerd/containerd.sock`), whose shims look `runc` up in *containerd's* PATH
(../shared/reference/runtime.md, "What is not reached"): its unit gets a drop-in too (PATH only). The agent restarts docker.service only when the mode changed by a reload (which `armhf-agent
host-docker on|off` does), never on its own: a repaired drop-in waits for the next restart, and status
says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from .config import DEFAULT_DAEMON_JSON
from .processes import DEFAULT_PATH, read_environ
from .runtime import BUILDKIT_RUNC_ENV, WRAPPER_NAME

DROPIN_NAME = "50-armhf-agent.conf"
# In every drop-in the agent writes: tells ours from an operator's file of the same name.
DROPIN_MARKER = b"host-docker drop-in installed by armhf-agent"
CPUINFO_V7, CPUINFO_V6 = "cpuinfo-armv7", "cpuinfo-armv6"
# Docker's own defaults (dockerd --help): the agent's daemon must not share any with docker.service.
DOCKER_DEFAULTS = {"host": "/var/run/docker.sock", "data_root": "/var/lib/docker", "exec_root": "/var/run/docker",
                   "pidfile": "/var/run/docker.pid"}
_DAEMON_JSON_KEYS = {"data_root": "data-root", "exec_root": "exec-root", "pidfile": "pidfile"}


def dropin_path(config, unit: str | None = None) -> str:
    h = config.host_docker
    return os.path.join(h.systemd_dir, f"{unit or h.unit}.d", DROPIN_NAME)


def containerd_dropin_path(config) -> str:
    return dropin_path(config, config.host_docker.containerd_unit or "containerd.service")


def units(config) -> tuple[str, ...]:
    """The units the mode wires and restarts: containerd's first (its shims run the containers)."""
    h = config.host_docker
    return (h.containerd_unit, h.unit) if h.containerd_unit else (h.unit,)


def wrapper_path(config) -> str:
    return os.path.join(config.host_docker.runtime_dir, WRAPPER_NAME)


def cpuinfo_path(config, name: str) -> str:
    return os.path.join(config.host_docker.runtime_dir, name)


def host_runc(config) -> str | None:
    """The host daemon's own runc: `[host_docker] runc`, else the first on the PATH a unit gets."""
    if config.host_docker.runc:
        return config.host_docker.runc
    for folder in DEFAULT_PATH.split(":"):
        candidate = os.path.join(folder, "runc")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def render_dropin(config, agent_version: str, containerd: bool = False) -> str:
    wrapper_dir = config.host_docker.runtime_dir
    text = (f"# {DROPIN_MARKER.decode()} {agent_version}: `armhf-agent host-docker off` removes it.\n"
            "# 32-bit Arm containers and build steps of this daemon run under PER_LINUX32 and read an ARMv7\n"
            "# (or ARMv6) cpuinfo; the runtime wrapper first in PATH does it. 64-bit ones are left alone.\n"
            "[Service]\n"
            f'Environment="PATH={wrapper_dir}:{DEFAULT_PATH}"\n')
    if not containerd:
        text += f'Environment="{BUILDKIT_RUNC_ENV}={os.path.join(wrapper_dir, WRAPPER_NAME)}"\n'
    return text


def service_paths(config) -> dict[str, str]:
    """The paths the host's dockerd uses: Docker's defaults, overridden by daemon.json (a daemon.json
    that cannot be read is reported by doctor; the defaults stand here)."""
    paths = dict(DOCKER_DEFAULTS)
    try:
        with open(config.host_docker.daemon_json, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError):
        settings = {}
    if isinstance(settings, dict):
        for key, name in _DAEMON_JSON_KEYS.items():
            if isinstance(settings.get(name), str):
                paths[key] = settings[name]
        hosts = settings.get("hosts")
        if isinstance(hosts, list):
            unix = [h[len("unix://"):] for h in hosts if isinstance(h, str) and h.startswith("unix://")]
            if unix:
                paths["host"] = unix[0]
    return paths


def _same(a: str, b: str) -> bool:
    def norm(p: str) -> str:
        p = os.path.normpath(p)
        return "/run" + p[len("/var/run"):] if p == "/var/run" or p.startswith("/var/run/") else p
    return norm(a) == norm(b)


def conflicts(config) -> list[str]:
    """Where the agent's own dockerd would share a socket or a folder with the host's docker.service:
    both can run on one host only apart."""
    if not config.host_docker.enabled:
        return []
    theirs = service_paths(config)
    ours = {"host": config.docker.socket_path, "data_root": config.docker.data_root,
            "exec_root": config.docker.exec_root, "pidfile": config.docker.pidfile}
    key = {"host": "docker.host", "data_root": "docker.data_root", "exec_root": "docker.exec_root",
           "pidfile": "docker.pidfile"}
    problems = [f"{key[k]} {ours[k]!r} is also {config.host_docker.unit}'s ({theirs[k]}): with host_docker on, "
                "the agent's own dockerd needs a path of its own" for k in ours if _same(ours[k], theirs[k])]
    # Both dockerds read /etc/docker/daemon.json unless told otherwise: the host's "hosts", "data-root" or
    # containerd image store would then reach the agent's dockerd too (and clash with its flags).
    ours_json = config.docker.config_file or DEFAULT_DAEMON_JSON
    if _same(ours_json, config.host_docker.daemon_json):
        problems.append(f"docker.config_file {config.docker.config_file!r} means {ours_json}, which "
                        f"{config.host_docker.unit} reads too: with host_docker on, give the agent's own dockerd a "
                        "daemon.json of its own (or an empty one)")
    return problems


class Systemctl:
    """The systemd facade for the host's unit (a fake in unit tests)."""

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout)

    def daemon_reload(self) -> str | None:
        try:
            r = self.run("daemon-reload")
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")

    def restart(self, *unit: str) -> str | None:
        # --no-block: the agent's loop never waits on docker.service's stop and start.
        try:
            r = self.run("restart", "--no-block", *unit)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")

    def main_pid(self, unit: str) -> int | None:
        try:
            r = self.run("show", "-p", "MainPID", "--value", unit, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        value = r.stdout.strip()
        return int(value) if value.isdigit() and value != "0" else None


@dataclass(frozen=True)
class Wiring:
    """What the host's dockerd runs with right now (read from its own environment)."""

    pid: int | None
    wired: bool            # the wrapper's folder first in its PATH and BuildKit's runc named
    uses_wrapper: bool     # the wrapper's folder anywhere in its PATH (it still needs the files)

    def describe(self, unit: str) -> str:
        if self.pid is None:
            return f"{unit} not running"
        return f"{unit} (dockerd pid {self.pid}) " + ("runs with the wrapper" if self.wired else "runs without the wrapper")


def wiring(config, systemctl, proc_root: str = "/proc") -> Wiring:
    """Wired: dockerd has the wrapper first in PATH and names it for BuildKit, and so has the system
    containerd it uses (when there is one). Still using: either has the folder anywhere in its PATH."""
    h = config.host_docker
    pid = systemctl.main_pid(h.unit)
    env = read_environ(proc_root, pid) if pid else None
    if env is None:
        return Wiring(pid, False, False)
    wrapper_dir = h.runtime_dir
    path = env.get("PATH", "").split(":")
    wired = path[:1] == [wrapper_dir] and env.get(BUILDKIT_RUNC_ENV) == wrapper_path(config)
    using = wrapper_dir in path or env.get(BUILDKIT_RUNC_ENV) == wrapper_path(config)
    if h.containerd_unit:
        cpid = systemctl.main_pid(h.containerd_unit)
        cenv = read_environ(proc_root, cpid) if cpid else None
        cpath = (cenv or {}).get("PATH", "").split(":")
        wired = wired and cpath[:1] == [wrapper_dir]
        using = using or wrapper_dir in cpath
    return Wiring(pid, wired, using)


def with_enabled(text: str, enabled: bool) -> str:
    """The config text with `[host_docker] enabled` set, everything else (comments, order) as it was."""
    value = "true" if enabled else "false"
    lines = text.splitlines(keepends=True)
    section = None
    header_at = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and "]" in stripped:
            section = stripped[1:stripped.index("]")].strip()
            if section == "host_docker":
                header_at = i
            continue
        if section == "host_docker":
            key, sep, rest = line.partition("=")
            if sep and key.strip() == "enabled":
                comment = rest[rest.index("#"):] if "#" in rest else ""
                indent = line[:len(line) - len(line.lstrip())]
                lines[i] = f"{indent}enabled = {value}" + (f"  {comment.rstrip()}" if comment else "") + "\n"
                return "".join(lines)
    if header_at is not None:
        lines.insert(header_at + 1, f"enabled = {value}\n")
        return "".join(lines)
    return text + ("" if text.endswith("\n") or not text else "\n") + f"\n[host_docker]\nenabled = {value}\n"
