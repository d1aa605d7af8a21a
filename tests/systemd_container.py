"""systemd as PID 1 in a container on a test dockerd, to run the unit under a real systemd.

Recipe from ../shared/reference/test-environment.md: this sandbox's capability bounding set lacks
CAP_SYS_RESOURCE, so --privileged and --cap-add ALL fail; every other capability is added by name.
The rootfs is the cached `systemd` chroot of scripts/debian-chroot.sh (it already holds python3 and
docker.io: the container has no network, so apt can install the .deb but fetch nothing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from harness import Dockerd, make_busybox_tar, new_base, unmount_under, wait_for
from packaging_support import SCRIPTS, run

CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
        "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ").split()


class SystemdContainer:
    def __init__(self, dockerd: Dockerd, image: str, name: str, docker_data: Path,
                 volumes: tuple[tuple[Path, str], ...] = ()):
        """`volumes`: (host folder, path inside) pairs, bind-mounted read-only."""
        self.dockerd = dockerd
        self.name = name
        # A dockerd inside needs its data-root off the container's overlay (overlay on overlay fails).
        docker_data.mkdir(parents=True, exist_ok=True)
        args = ["run", "-d", "--name", name, "--hostname", name, "--network", "none",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--device-cgroup-rule=a *:* rmw", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", f"{docker_data}:/var/lib/docker"]
        for host_dir, inside in volumes:
            args += ["-v", f"{host_dir}:{inside}:ro"]
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


@contextmanager
def systemd_host(release: str) -> Iterator[tuple[Dockerd, str, Path]]:
    """A test dockerd with the release's cached `systemd` rootfs imported as an image:
    (dockerd, image, a folder for the containers' volumes)."""
    base = new_base("sd")
    dockerd = Dockerd(base / "d")
    dockerd.base.mkdir()
    dockerd.start()
    try:
        tarball = run([str(SCRIPTS / "debian-chroot.sh"), "tarball", "systemd", release]).stdout.strip()
        image = f"armhf-agent-systemd:{release}"
        dockerd.docker("import", "--change", 'CMD ["/sbin/init"]', tarball, image, timeout=600)
        yield dockerd, image, base
    finally:
        dockerd.stop()
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


# The agent inside: a stand-in payload of Debian's docker.io binaries (as in tests/harness.py), and the
# upgrade handover check (packaging/README.md, "Lifecycle") shared by the .deb and repository tests.
UNIT = "armhf-agent.service"
PAYLOAD_BINARIES = {"dockerd": "/usr/sbin/dockerd", "containerd": "/usr/bin/containerd",
                    "containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2", "runc": "/usr/sbin/runc",
                    "docker-init": "/usr/bin/docker-init", "docker-proxy": "/usr/sbin/docker-proxy",
                    "docker": "/usr/bin/docker"}
INNER_DOCKER = ["/usr/bin/docker", "-H", "unix:///var/run/docker.sock"]   # Debian's client, not the shim


def agent_state(container: SystemdContainer) -> dict:
    return json.loads(container.exec("cat", "/run/armhf-agent/state.json").stdout)


def inner_dockerd_pid(container: SystemdContainer) -> str:
    return container.exec("cat", "/var/run/docker.pid").stdout.strip()


def configure_for_test_dockerd(container: SystemdContainer) -> None:
    """This container's dockerd wants no bridge and no iptables, as every test dockerd here
    (../shared/reference/test-environment.md): a config change, applied by reload."""
    container.exec("sed", "-i", 's/^args = \\[\\]$/args = ["--bridge=none", "--iptables=false"]/',
                   "/etc/armhf-agent/agent.toml")
    assert '"--iptables=false"' in container.exec("cat", "/etc/armhf-agent/agent.toml").stdout
    container.exec("systemctl", "reload", UNIT)


def install_stand_in_payload(container: SystemdContainer) -> None:
    """Debian's docker.io binaries stand in for an armhf payload; the agent picks them up and starts dockerd."""
    container.sh("mkdir -p /opt/docker/bin && cp /usr/sbin/dockerd /opt/docker/bin/dockerd && " + " && ".join(
        f"ln -sf {src} /opt/docker/bin/{name}" for name, src in PAYLOAD_BINARIES.items() if name != "dockerd"))
    container.wait_prop(UNIT, "StatusText", lambda v: v.startswith("dockerd running"), 60)


def import_busybox(container: SystemdContainer, tmp_path: Path) -> None:
    tar = make_busybox_tar(tmp_path / "bb.tar")
    container.exec(*INNER_DOCKER, "import", container.put(tar, "/tmp/img"), "bb:local")


def start_attached_client(container: SystemdContainer) -> None:
    """A `docker run` whose client stays attached for 30 s, logging to /tmp/attached.log."""
    container.sh("""cat > /tmp/attached.sh <<'EOF'
/usr/bin/docker -H unix:///var/run/docker.sock run --rm --network none bb:local \\
    sh -c 'i=0; while [ $i -lt 60 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done'
echo "exit=$?"
EOF""")
    container.exec("sh", "-c", "nohup sh /tmp/attached.sh > /tmp/attached.log 2>&1 &")
    container.sh("for i in $(seq 100); do grep -q 'tick 2' /tmp/attached.log && exit 0; sleep 0.1; done; exit 1")


def assert_handover(container: SystemdContainer, change_package: Callable[[], object], version: str) -> None:
    """`change_package` upgrades or downgrades the .deb to `version` while the client of
    start_attached_client is attached: the old agent hands dockerd over (prerm: SIGUSR2), the new one
    adopts it; the container and its client never notice."""
    detaching = "detaching: leaving dockerd"
    journal = lambda: container.exec("journalctl", "-u", UNIT, "--no-pager").stdout   # noqa: E731
    handovers = journal().count(detaching)
    agent_pid, dockerd_pid = container.prop(UNIT, "MainPID"), inner_dockerd_pid(container)
    change_package()
    assert "exit=" not in container.exec("cat", "/tmp/attached.log").stdout, "the package change outlasted the test container"
    installed = container.exec("dpkg-query", "-W", "-f=${Version}", "armhf-agent").stdout
    assert installed == version, f"armhf-agent {installed} installed, not {version}"
    container.wait_prop(UNIT, "ActiveState", "active", 60)
    assert container.prop(UNIT, "MainPID") != agent_pid
    assert inner_dockerd_pid(container) == dockerd_pid
    container.sh("for i in $(seq 600); do grep -q '^exit=' /tmp/attached.log && exit 0; sleep 0.1; done; exit 1")
    attached = container.exec("cat", "/tmp/attached.log").stdout
    assert "tick 59" in attached and "exit=0" in attached, attached
    assert agent_state(container)["dockerd"]["adopted"] is True
    assert journal().count(detaching) == handovers + 1
    assert container.exec("test", "-e", "/run/systemd/system/armhf-agent.service.d/50-upgrade-handover.conf",
                          check=False).returncode == 1
