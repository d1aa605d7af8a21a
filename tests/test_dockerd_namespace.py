"""Every dockerd the agent starts shares one kept mount namespace, so a successor (after a crash, a hang,
an update) reaches the containers its predecessor left running with --live-restore.

Without it the successor, in a fresh namespace, sees none of their rootfs mounts, and its clean-up
rmdirs their mount points, detaching the mounts in the old namespace as well: `docker exec` into a
survivor then fails with "fork/exec /proc/self/exe: no such file or directory" (found here: the e2e
probe only checked that the container kept running).
"""

from __future__ import annotations

import os
import signal

import pytest

from agentproc import agent_config
from conftest import requires_docker
from harness import docker_cli, wait_for

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def live_restore(base):
    cfg = agent_config(base)
    cfg["docker"]["args"] = ["--bridge=none", "--iptables=false", "--live-restore"]
    return cfg


def ns_of(pid):
    return os.readlink(f"/proc/{pid}/ns/mnt")


def reachable(sock, cid):
    wait_for(lambda: docker_cli(sock, "inspect", "-f", "{{.State.Running}}", cid, check=False).stdout.strip() == "true",
             30, 0.5, f"{cid[:12]} running")
    r = docker_cli(sock, "exec", cid, "cat", "/proc/self/comm", check=False)
    assert r.returncode == 0 and r.stdout.strip() == "cat", r.stderr


def test_a_successor_joins_the_namespace_and_reaches_the_survivors(agent, base, busybox_tar):
    a = agent(config=live_restore(base)).start()
    pid = a.wait_running(60)
    docker_cli(a.sock, "import", str(busybox_tar), "bb:local")
    cid = docker_cli(a.sock, "run", "-d", "--network", "none", "bb:local", "sleep", "600").stdout.strip()
    ns = ns_of(pid)
    for _ in range(2):       # twice: the namespace outlives more than one dockerd
        os.kill(pid, signal.SIGKILL)
        pid = a.wait_running(60, other_than=pid)
        assert ns_of(pid) == ns
        reachable(a.sock, cid)
    with open("/proc/self/mountinfo") as f:
        leaked = [line for line in f if str(base / "data") in line.split()[4]]
    assert not leaked, f"container mounts reached the host's namespace: {leaked}"
    docker_cli(a.sock, "rm", "-f", cid)


def test_a_dockerd_adopted_from_an_agent_that_did_not_keep_its_namespace_is_kept(agent, base, busybox_tar):
    from agent.launch import release_pin

    cfg = live_restore(base)
    first = agent(config=cfg).start()
    pid = first.wait_running(60)
    docker_cli(first.sock, "import", str(busybox_tar), "bb:local")
    cid = docker_cli(first.sock, "run", "-d", "--network", "none", "bb:local", "sleep", "600").stdout.strip()
    first.signal(signal.SIGUSR2)                  # exit, leave dockerd running (the package upgrade's handover)
    assert first.wait_exit(60) == 0
    pin = str(base / "run" / "ns" / "dockerd")
    assert release_pin(pin), "the first agent kept it"
    second = agent(config=cfg).start()
    assert second.wait_running(60) == pid
    second.wait_log(r"adopted running dockerd pid %d" % pid)
    from agent.launch import open_pin
    wait_for(lambda: open_pin(pin) is not None, 10, 0.1, "the adopted dockerd's namespace kept")
    fd = open_pin(pin)
    assert os.fstat(fd).st_ino == os.stat(f"/proc/{pid}/ns/mnt").st_ino
    os.close(fd)
    ns = ns_of(pid)
    os.kill(pid, signal.SIGKILL)
    new = second.wait_running(60, other_than=pid)
    assert ns_of(new) == ns
    reachable(second.sock, cid)
    docker_cli(second.sock, "rm", "-f", cid)
