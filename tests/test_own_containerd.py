"""The agent's dockerd runs the payload's containerd even where the host runs one of its own.

dockerd joins a system containerd whenever /run/containerd/containerd.sock exists (moby
initContainerd: a bare Lstat), so on a host with docker.io or containerd.io installed the armhf dockerd
would share the host's "moby" namespace and run its containers with the host's runc. Each test runs the
agent in a mount namespace of its own whose /run/containerd holds a containerd.sock that is not a
containerd (the host's /run/containerd is never touched): a dockerd that looks at it never answers.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from agentproc import agent_config
from conftest import requires_docker
from harness import docker_cli, wait_for

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]

# A private /run/containerd with a dead socket file in it, then the agent (exec: same pid).
SYSTEM_CONTAINERD = ("unshare", "-m", "--propagation", "private", "--", "sh", "-c",
                     "mount -t tmpfs -o mode=0711 system-containerd /run/containerd && "
                     ": > /run/containerd/containerd.sock && exec \"$@\"", "sh")


def in_ns(pid: int, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", str(pid), "-m", *cmd], capture_output=True, text=True, timeout=30)


def child_comms(pid: int) -> list[str]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):      # a child is listed under the thread that forked it
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return [open(f"/proc/{k}/comm").read().strip() for k in kids]


@pytest.fixture
def shadowed_agent(agent, base):
    # The host's /run/containerd must exist for the tmpfs above; containerd's own mode.
    os.makedirs("/run/containerd", mode=0o711, exist_ok=True)
    cfg = agent_config(base)
    cfg["docker"]["args"] = ["--bridge=none", "--iptables=false", "--live-restore"]
    return agent(config=cfg, prefix=SYSTEM_CONTAINERD)


def test_a_system_containerd_is_not_joined_and_live_restore_finds_the_shims_again(shadowed_agent, base, busybox_tar):
    a = shadowed_agent.start()
    pid = a.wait_running(60)
    assert "containerd" in child_comms(pid), "dockerd manages a containerd of its own"
    seen = in_ns(pid, "ls", "-A", "/run/containerd").stdout.split()
    assert "containerd.sock" not in seen, f"dockerd's /run/containerd is the agent's folder, not the host's: {seen}"
    agent_ns_view = in_ns(a.proc.pid, "ls", "-A", "/run/containerd").stdout.split()
    assert "containerd.sock" in agent_ns_view, "the 'system' containerd's folder is untouched"

    docker_cli(a.sock, "import", str(busybox_tar), "bb:local")
    cid = docker_cli(a.sock, "run", "-d", "--network", "none", "bb:local", "sleep", "600").stdout.strip()
    own = base / "run" / "containerd"
    # The shims' sockets are in the agent's folder (one host folder at every launch), none in the host's.
    assert any((own / "s").iterdir()), f"no shim socket in {own}/s"
    assert "s" not in in_ns(a.proc.pid, "ls", "-A", "/run/containerd").stdout.split()

    # A new dockerd (a new mount namespace) finds the running container's shim again.
    ns = os.readlink(f"/proc/{pid}/ns/mnt")
    os.kill(pid, signal.SIGKILL)
    new = a.wait_running(60, other_than=pid)
    assert os.readlink(f"/proc/{new}/ns/mnt") == ns, "the successor joined the kept namespace"
    assert "containerd.sock" not in in_ns(new, "ls", "-A", "/run/containerd").stdout.split()
    assert wait_for(lambda: docker_cli(a.sock, "inspect", "-f", "{{.State.Running}}", cid, check=False)
                    .stdout.strip() == "true", 30, 0.5, "the container still running under the new dockerd")
    r = docker_cli(a.sock, "exec", cid, "echo", "reached", check=False)
    assert r.stdout.strip() == "reached", r.stderr
    docker_cli(a.sock, "rm", "-f", cid)


def test_a_containerd_named_in_the_args_is_used(base):
    # The unit view of the same rule: `--containerd` in docker.args means "use that one", so no folder is
    # bound over /run/containerd and dockerd is left to dial it.
    from agent.config import AgentConfig
    from agent.dockerd import DockerdSpec

    class Payload:
        dockerd = "/opt/docker/dockerd"

        @staticmethod
        def path_dirs():
            return ("/opt/docker",)

    for args, expected in ((["--containerd=/run/containerd/containerd.sock"], None),
                           (["--containerd", "/run/x.sock"], None),
                           (["--containerd-namespace=armhf"], "/run/armhf-agent/containerd"),
                           ([], "/run/armhf-agent/containerd")):
        config = AgentConfig(docker={"args": args})
        spec = DockerdSpec.from_config(config, Payload, {})
        assert spec.containerd_state == expected, args
        assert spec.private_namespace
