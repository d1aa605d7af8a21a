"""systemd as PID 1 in a container on a test dockerd, to run the unit under a real systemd.

Recipe from ../shared/reference/test-environment.md: this sandbox's capability bounding set lacks
CAP_SYS_RESOURCE, so --privileged and --cap-add ALL fail; every other capability is added by name.
The rootfs is the cached `systemd` chroot of scripts/debian-chroot.sh (it already holds python3 and
docker.io: the container has no network, so apt can install the .deb but fetch nothing).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness import Dockerd, wait_for

CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
        "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ").split()


class SystemdContainer:
    def __init__(self, dockerd: Dockerd, image: str, name: str, docker_data: Path):
        self.dockerd = dockerd
        self.name = name
        # A dockerd inside needs its data-root off the container's overlay (overlay on overlay fails).
        docker_data.mkdir(parents=True, exist_ok=True)
        args = ["run", "-d", "--name", name, "--hostname", name, "--network", "none",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--device-cgroup-rule=a *:* rmw", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", f"{docker_data}:/var/lib/docker"]
        for cap in CAPS:
            args += ["--cap-add", cap]
        dockerd.docker(*args, image, "/sbin/init")
        wait_for(self._booted, 90, 0.5, f"systemd in {name} to finish booting")

    def _booted(self) -> bool:
        state = self.exec("systemctl", "is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def exec(self, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.dockerd.docker("exec", self.name, *cmd, check=check, timeout=timeout)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.exec("/bin/sh", "-euc", script, check=check)

    def put(self, host_file: Path, inside_dir: str) -> str:
        self.exec("mkdir", "-p", inside_dir)
        self.dockerd.docker("cp", str(host_file), f"{self.name}:{inside_dir}/")
        return f"{inside_dir}/{host_file.name}"

    def prop(self, unit: str, name: str) -> str:
        return self.exec("systemctl", "show", f"--property={name}", "--value", unit).stdout.strip()

    def wait_prop(self, unit: str, name: str, want, timeout: float) -> str:
        """Waits until the property satisfies `want` (a value or a predicate); returns it."""
        check = want if callable(want) else (lambda v: v == want)
        deadline = time.monotonic() + timeout
        while True:
            value = self.prop(unit, name)
            if check(value):
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{unit} {name}={value!r} after {timeout}s; journal:\n"
                                   + self.exec("journalctl", "-u", unit, "--no-pager", "-n", "50", check=False).stdout)
            time.sleep(0.2)

    def remove(self) -> None:
        self.dockerd.docker("rm", "-f", "-v", self.name, check=False)
