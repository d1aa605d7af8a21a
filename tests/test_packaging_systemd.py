"""The unit under a real systemd: systemd as PID 1 in a container on a test dockerd, the .deb
installed in it with apt, the agent supervising its own dockerd inside (a stand-in payload made
of Debian's docker.io binaries, as in tests/harness.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from harness import Dockerd, have_docker, make_busybox_tar, new_base, wait_for
from packaging_support import SCRIPTS, deb_field, release_debs, run, why_no_chroots
from systemd_container import SystemdContainer

RELEASE = "bookworm"            # the release of this machine's dockerd tests; one is enough for the unit
UNIT = "armhf-agent.service"
PAYLOAD_BINARIES = {"dockerd": "/usr/sbin/dockerd", "containerd": "/usr/bin/containerd",
                    "containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2", "runc": "/usr/sbin/runc",
                    "docker-init": "/usr/bin/docker-init", "docker-proxy": "/usr/sbin/docker-proxy",
                    "docker": "/usr/bin/docker"}
INNER_DOCKER = ["/usr/bin/docker", "-H", "unix:///var/run/docker.sock"]   # Debian's client, not the shim

pytestmark = [
    pytest.mark.slow, pytest.mark.chroot, pytest.mark.dockerd,
    pytest.mark.skipif(why_no_chroots() is not None, reason=why_no_chroots() or ""),
    pytest.mark.skipif(not have_docker(), reason="needs root and docker.io (dockerd)"),
]


@pytest.fixture(scope="module")
def systemd_host():
    """A test dockerd with the systemd rootfs imported as an image."""
    base = new_base("sd")
    dockerd = Dockerd(base / "d")
    dockerd.base.mkdir()
    dockerd.start()
    tarball = run([str(SCRIPTS / "debian-chroot.sh"), "tarball", "systemd", RELEASE]).stdout.strip()
    image = f"armhf-agent-systemd:{RELEASE}"
    dockerd.docker("import", "--change", 'CMD ["/sbin/init"]', tarball, image, timeout=600)
    yield dockerd, image, base
    dockerd.stop()
    subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


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


def state(container: SystemdContainer) -> dict:
    return json.loads(container.exec("cat", "/run/armhf-agent/state.json").stdout)


def inner_dockerd_pid(container: SystemdContainer) -> str:
    return container.exec("cat", "/var/run/docker.pid").stdout.strip()


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
    assert state(container)["payload"]["state"] == "missing"

    # This container's dockerd wants no bridge and no iptables, as every test dockerd here
    # (../shared/reference/test-environment.md): a config change, applied by reload.
    agent_pid = container.prop(UNIT, "MainPID")
    container.exec("sed", "-i", 's/^args = \\[\\]$/args = ["--bridge=none", "--iptables=false"]/',
                   "/etc/armhf-agent/agent.toml")
    assert '"--iptables=false"' in container.exec("cat", "/etc/armhf-agent/agent.toml").stdout
    container.exec("systemctl", "reload", UNIT)

    # The payload appears (Debian's docker.io binaries stand in for an armhf one): picked up, no restart.
    container.sh("mkdir -p /opt/docker/bin && cp /usr/sbin/dockerd /opt/docker/bin/dockerd && " + " && ".join(
        f"ln -sf {src} /opt/docker/bin/{name}" for name, src in PAYLOAD_BINARIES.items() if name != "dockerd"))
    container.wait_prop(UNIT, "StatusText", lambda v: v.startswith("dockerd running"), 60)
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
    tar = make_busybox_tar(tmp_path / "bb.tar")
    container.exec(*INNER_DOCKER, "import", container.put(tar, "/tmp/img"), "bb:local")
    container.sh("""cat > /tmp/attached.sh <<'EOF'
/usr/bin/docker -H unix:///var/run/docker.sock run --rm --network none bb:local \\
    sh -c 'i=0; while [ $i -lt 60 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done'
echo "exit=$?"
EOF""")
    container.exec("sh", "-c", "nohup sh /tmp/attached.sh > /tmp/attached.log 2>&1 &")
    container.sh("for i in $(seq 100); do grep -q 'tick 2' /tmp/attached.log && exit 0; sleep 0.1; done; exit 1")
    agent_pid, dockerd_pid = container.prop(UNIT, "MainPID"), inner_dockerd_pid(container)
    container.exec("apt-get", "install", "-y", v2)
    assert "exit=" not in container.exec("cat", "/tmp/attached.log").stdout, "the upgrade outlasted the test container"
    assert container.exec("dpkg-query", "-W", "-f=${Version}", "armhf-agent").stdout == deb_field(debs["v2"], "Version")
    container.wait_prop(UNIT, "ActiveState", "active", 60)
    assert container.prop(UNIT, "MainPID") != agent_pid
    assert inner_dockerd_pid(container) == dockerd_pid
    container.sh("for i in $(seq 600); do grep -q '^exit=' /tmp/attached.log && exit 0; sleep 0.1; done; exit 1")
    attached = container.exec("cat", "/tmp/attached.log").stdout
    assert "tick 59" in attached and "exit=0" in attached, attached
    assert state(container)["dockerd"]["adopted"] is True
    assert "detaching: leaving dockerd" in container.exec("journalctl", "-u", UNIT, "--no-pager").stdout
    assert container.exec("test", "-e", "/run/systemd/system/armhf-agent.service.d/50-upgrade-handover.conf",
                          check=False).returncode == 1

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

    # Stop: the agent stops its dockerd.
    container.exec("systemctl", "stop", UNIT)
    assert container.prop(UNIT, "ActiveState") == "inactive"
    assert container.exec("pgrep", "-x", "dockerd", check=False).returncode == 1

    # Remove: the shim goes, config stays.
    container.exec("apt-get", "remove", "-y", "armhf-agent")
    assert container.exec("test", "-e", "/usr/local/bin/docker", check=False).returncode == 1
    assert container.exec("test", "-f", "/etc/armhf-agent/agent.toml", check=False).returncode == 0
