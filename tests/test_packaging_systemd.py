"""The unit under a real systemd: systemd as PID 1 in a container on a test dockerd, the .deb
installed in it with apt, the agent supervising its own dockerd inside (a stand-in payload made
of Debian's docker.io binaries, as in tests/harness.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import systemd_container
from harness import REPO, have_docker, wait_for
from packaging_support import deb_field, release_debs, why_no_chroots
from systemd_container import (INNER_DOCKER, UNIT, SystemdContainer, agent_state, assert_handover,
                               configure_for_test_dockerd, import_busybox, inner_dockerd_pid, install_stand_in_payload,
                               start_attached_client)

RELEASE = "bookworm"            # the release of this machine's dockerd tests; one is enough for the unit

pytestmark = [
    pytest.mark.slow, pytest.mark.chroot, pytest.mark.dockerd,
    pytest.mark.skipif(why_no_chroots() is not None, reason=why_no_chroots() or ""),
    pytest.mark.skipif(not have_docker(), reason="needs root and docker.io (dockerd)"),
]


@pytest.fixture(scope="module")
def systemd_host():
    """A test dockerd with the systemd rootfs imported as an image."""
    with systemd_container.systemd_host(RELEASE) as host:
        yield host


@pytest.fixture
def container(systemd_host):
    dockerd, image, base = systemd_host
    name = f"sd{uuid.uuid4().hex[:6]}"
    box = SystemdContainer(dockerd, image, name, base / f"{name}-docker")
    yield box
    box.remove()


def test_harness_notify_unit_is_active_only_after_ready_and_watchdog_restarts_it(container):
    """The harness itself, on a probe unit: Type=notify gating and the watchdog, as the agent tests use them."""
    container.sh("""cat > /usr/local/bin/probe <<'EOF'
#!/usr/bin/python3
import os, socket, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect(os.environ["NOTIFY_SOCKET"])
while not os.path.exists("/run/probe-go"):
    time.sleep(0.1)
sock.send(b"READY=1")
while True:
    sock.send(b"WATCHDOG=1")
    time.sleep(0.5)
EOF
chmod 755 /usr/local/bin/probe
cat > /etc/systemd/system/probe.service <<'EOF'
[Service]
Type=notify
ExecStart=/usr/local/bin/probe
WatchdogSec=2
TimeoutAbortSec=2
Restart=always
RestartSec=1
EOF
systemctl daemon-reload""")
    container.exec("systemctl", "start", "--no-block", "probe.service")
    container.wait_prop("probe.service", "MainPID", lambda v: v != "0", 10)
    assert container.prop("probe.service", "ActiveState") == "activating"
    container.exec("touch", "/run/probe-go")
    container.wait_prop("probe.service", "ActiveState", "active", 10)

    pid = container.prop("probe.service", "MainPID")
    container.exec("kill", "-STOP", pid)          # hung: no more WATCHDOG=1
    container.wait_prop("probe.service", "NRestarts", "1", 20)
    container.wait_prop("probe.service", "ActiveState", "active", 10)
    assert container.prop("probe.service", "MainPID") != pid
    assert "watchdog timeout" in container.exec("journalctl", "-u", "probe.service", "--no-pager").stdout.lower()


def test_agent_under_systemd(container, tmp_path):
    debs = release_debs(RELEASE)
    v1 = container.put(debs["v1"], "/tmp/debs/v1")
    v2 = container.put(debs["v2"], "/tmp/debs/v2")

    # Install on a host with no payload yet: the agent starts, runs, and says what is missing.
    container.exec("apt-get", "install", "-y", v1)
    assert container.exec("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    container.wait_prop(UNIT, "ActiveState", "active", 60)
    assert container.prop(UNIT, "Type") == "notify"
    container.wait_prop(UNIT, "StatusText", lambda v: "install-docker" in v, 30)
    assert agent_state(container)["payload"]["state"] == "missing"

    # A config change for this container's dockerd, applied by reload.
    agent_pid = container.prop(UNIT, "MainPID")
    configure_for_test_dockerd(container)

    # The payload appears (Debian's docker.io binaries stand in for an armhf one): picked up, no restart.
    install_stand_in_payload(container)
    container.exec(*INNER_DOCKER, "version")
    assert container.prop(UNIT, "MainPID") == agent_pid

    # A restart: `systemctl restart` returns once the unit is active, which for Type=notify means
    # after READY=1, and the agent sends READY only once dockerd answers: the daemon must be up now.
    container.exec("systemctl", "restart", UNIT)
    assert container.prop(UNIT, "ActiveState") == "active"
    assert container.exec(*INNER_DOCKER, "version", "--format", "{{.Server.Version}}").stdout.strip()

    # Reload applies a config change: new dockerd arguments restart dockerd with them, same agent.
    agent_pid, dockerd_pid = container.prop(UNIT, "MainPID"), inner_dockerd_pid(container)
    container.exec("sed", "-i", 's/^args = \\["--bridge=none"/args = ["--label=reloaded=yes", "--bridge=none"/',
                   "/etc/armhf-agent/agent.toml")
    container.exec("systemctl", "reload", UNIT)
    container.wait_prop(UNIT, "MainPID", agent_pid, 5)
    wait_for(lambda: "reloaded=yes" in container.exec(*INNER_DOCKER, "info", "--format", "{{json .Labels}}",
                                                      check=False).stdout, 60, 0.5, "dockerd restarted with the new label")
    assert inner_dockerd_pid(container) != dockerd_pid
    assert container.prop(UNIT, "MainPID") == agent_pid

    # Upgrade with a client attached to a running container: the old agent hands dockerd over
    # (prerm: SIGUSR2), the new one adopts it; the container and its client never notice.
    import_busybox(container, tmp_path)
    start_attached_client(container)
    assert_handover(container, lambda: container.exec("apt-get", "install", "-y", v2), deb_field(debs["v2"], "Version"))

    # `systemctl restart` keeps dockerd and what runs on it (ExecStop sees a restart job: SIGUSR2);
    # the new agent adopts the same dockerd and the container never notices.
    cid = container.exec(*INNER_DOCKER, "run", "-d", "--network", "none", "bb:local", "sleep", "600").stdout.strip()
    agent_pid, dockerd_pid = container.prop(UNIT, "MainPID"), inner_dockerd_pid(container)
    container.exec("systemctl", "restart", UNIT)
    assert container.prop(UNIT, "ActiveState") == "active"
    assert container.prop(UNIT, "MainPID") != agent_pid
    assert inner_dockerd_pid(container) == dockerd_pid
    assert container.exec(*INNER_DOCKER, "inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
    assert "restart: leaving dockerd running" in container.exec("journalctl", "-u", UNIT, "--no-pager").stdout

    # The watchdog: a hung agent (SIGSTOP) is killed and restarted by systemd. WatchdogSec is cut
    # from the unit's 60 s for the test; TimeoutAbortSec bounds the wait for the stopped process.
    container.sh("""mkdir -p /run/systemd/system/armhf-agent.service.d
printf '[Service]\\nWatchdogSec=4\\nTimeoutAbortSec=3\\n' > /run/systemd/system/armhf-agent.service.d/test.conf
systemctl daemon-reload""")
    container.exec("systemctl", "restart", UNIT)
    agent_pid, restarts = container.prop(UNIT, "MainPID"), int(container.prop(UNIT, "NRestarts"))
    dockerd_pid = inner_dockerd_pid(container)
    container.exec("kill", "-STOP", agent_pid)
    container.wait_prop(UNIT, "NRestarts", lambda v: int(v) > restarts, 30)
    container.wait_prop(UNIT, "ActiveState", "active", 60)
    assert container.prop(UNIT, "MainPID") != agent_pid
    assert "watchdog timeout" in container.exec("journalctl", "-u", UNIT, "--no-pager").stdout.lower()
    assert inner_dockerd_pid(container) == dockerd_pid, "dockerd should outlive the killed agent and be adopted"

    # The agent exits on its own (a manual TERM of the main pid). If systemd runs ExecStop then, it does
    # with $MAINPID unset (systemd.service(5)): systemd-stop must succeed doing nothing (it exited 2
    # before: tests/test_cli.py runs it so). Either way the unit must not end failed.
    agent_pid, restarts = container.prop(UNIT, "MainPID"), int(container.prop(UNIT, "NRestarts"))
    since = container.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    container.exec("kill", "-TERM", agent_pid)
    container.wait_prop(UNIT, "NRestarts", lambda v: int(v) > restarts, 60)
    container.wait_prop(UNIT, "ActiveState", "active", 60)
    journal = container.exec("journalctl", "-u", UNIT, "--no-pager", "--since", since).stdout
    told = "\n".join(line for line in journal.splitlines() if "systemd[1]" in line or "systemd-stop" in line)
    assert "Deactivated successfully" in journal, told
    assert "Control process exited" not in journal and "Failed with result" not in journal, told

    # Stop: the agent stops its dockerd.
    container.exec("systemctl", "stop", UNIT)
    assert container.prop(UNIT, "ActiveState") == "inactive"
    assert container.exec("pgrep", "-x", "dockerd", check=False).returncode == 1

    # Remove: the shim goes, config stays.
    container.exec("apt-get", "remove", "-y", "armhf-agent")
    assert container.exec("test", "-e", "/usr/local/bin/docker", check=False).returncode == 1
    assert container.exec("test", "-f", "/etc/armhf-agent/agent.toml", check=False).returncode == 0


def test_host_docker_mode_under_systemd(container, tmp_path):
    """The host's own docker.service (Debian's, under this systemd) wired to the wrapper by `armhf-agent
    host-docker on`: its 32-bit containers, exec'd processes and build steps see themselves 32-bit (i686
    here, where an arm64 host says armv8l) and the ARMv7 cpuinfo; 64-bit ones are untouched; `off`
    restores docker.service exactly. (i386 and amd64 userlands stand in for armhf and arm64 on x86.)"""
    i386_busybox = REPO / ".cache" / "i386" / "bin" / "busybox"
    assert i386_busybox.is_file(), "scripts/setup.sh --test fetches busybox-static:i386"
    v1 = container.put(release_debs(RELEASE)["v1"], "/tmp/debs/v1")
    container.exec("apt-get", "install", "-y", v1)
    container.wait_prop(UNIT, "ActiveState", "active", 60)
    # The agent's own dockerd apart from docker.service's paths (check-config insists), then docker.service.
    container.sh("""sed -i 's|^host = "unix:///var/run/docker.sock"|host = "unix:///run/armhf-docker.sock"|;
s|^data_root = "/var/lib/docker"|data_root = "/var/lib/armhf-docker"|;
s|^exec_root = "/var/run/docker"|exec_root = "/run/armhf-docker"|;
s|^pidfile = "/var/run/docker.pid"|pidfile = "/run/armhf-docker.pid"|;
s|^config_file = ""|config_file = "/etc/armhf-agent/daemon.json"|' /etc/armhf-agent/agent.toml
echo '{}' > /etc/armhf-agent/daemon.json
mkdir -p /etc/docker && printf '{"bridge": "none", "iptables": false}\\n' > /etc/docker/daemon.json
systemctl unmask containerd.service docker.socket docker.service
systemctl start docker.service
systemctl reload armhf-agent""")
    container.wait_prop("docker.service", "ActiveState", "active", 120)
    before = container.exec("systemctl", "cat", "docker.service").stdout
    # Images: the i386 and the amd64 busybox.
    for name, busybox in (("bb32", i386_busybox), ("bb64", Path("/bin/busybox"))):
        tree = tmp_path / name
        (tree / "bin").mkdir(parents=True)
        shutil.copy2(busybox, tree / "bin" / "busybox")
        for applet in ("sh", "uname", "cat", "sleep", "grep", "head"):
            (tree / "bin" / applet).symlink_to("busybox")
        tar = tmp_path / f"{name}.tar"
        subprocess.run(["tar", "-C", str(tree), "-cf", str(tar), "."], check=True)
        container.exec(*INNER_DOCKER, "import", container.put(tar, "/tmp/img"), f"{name}:local")

    def run(image, *cmd):
        return container.exec(*INNER_DOCKER, "run", "--rm", "--network", "none", image, *cmd).stdout

    assert run("bb32:local", "uname", "-m").strip() == "x86_64", "unwired: a 32-bit container sees the 64-bit host"
    on = container.exec("armhf-agent", "host-docker", "on", check=False)
    assert on.returncode == 0, on.stdout + on.stderr
    assert "host-docker on: wiring docker.service; it will be restarted" in on.stdout, on.stdout
    assert container.exec("test", "-f", "/etc/systemd/system/docker.service.d/50-armhf-agent.conf",
                          check=False).returncode == 0
    assert run("bb32:local", "uname", "-m").strip() == "i686"
    assert "CPU architecture: 7" in run("bb32:local", "cat", "/proc/cpuinfo")
    assert run("bb64:local", "uname", "-m").strip() == "x86_64"
    assert "CPU architecture: 7" not in run("bb64:local", "cat", "/proc/cpuinfo")
    # docker exec into a running 32-bit container gets the personality too.
    cid = container.exec(*INNER_DOCKER, "run", "-d", "--network", "none", "bb32:local", "sleep", "600").stdout.strip()
    assert container.exec(*INNER_DOCKER, "exec", cid, "uname", "-m").stdout.strip() == "i686"
    container.exec(*INNER_DOCKER, "rm", "-f", cid)
    # A build step (BuildKit, through dockerd's own runc lookup) of a 32-bit image.
    container.sh("mkdir -p /tmp/ctx && printf 'FROM bb32:local\\nRUN uname -m > /seen\\n' > /tmp/ctx/Dockerfile")
    container.exec("env", "DOCKER_BUILDKIT=1", *INNER_DOCKER, "build", "--network", "none", "-t", "seen32", "/tmp/ctx")
    assert run("seen32", "cat", "/seen").strip() == "i686"
    status = json.loads(container.exec("armhf-agent", "status", "--json", check=False).stdout)
    assert status["host_docker"]["enabled"] and status["host_docker"]["wired"], status["host_docker"]

    off = container.exec("armhf-agent", "host-docker", "off", check=False)
    assert off.returncode == 0, off.stdout + off.stderr
    assert container.exec("test", "-e", "/etc/systemd/system/docker.service.d/50-armhf-agent.conf",
                          check=False).returncode == 1
    assert container.exec("systemctl", "cat", "docker.service").stdout == before, "docker.service restored exactly"
    assert run("bb32:local", "uname", "-m").strip() == "x86_64"
    wait_for(lambda: container.exec("test", "-e", "/var/lib/armhf-agent/host-runtime/runc", check=False).returncode == 1,
             60, 0.5, "the host wrapper removed once docker.service let go of it")
