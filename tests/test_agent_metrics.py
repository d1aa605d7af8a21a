"""The whole metrics path through the real agent: containers and builds run through the real shim,
counted from dockerd's events stream and the shim's records, scraped over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.request

import pytest

from agentproc import AgentProcess, agent_config
from conftest import requires_docker
from harness import docker_cli, wait_for

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def value(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (m.group(2) or "{}")[1:-1].split(",") if p))
        if got == want:
            return float(m.group(3))
    raise KeyError(f"{name}{{{want}}} not in scrape")


@pytest.fixture
def metered(base, busybox_tar):
    port, dport = free_port(), free_port()
    cfg = agent_config(base)
    cfg["metrics"] = {"listen": f"127.0.0.1:{port}", "docker_metrics": True,
                      "docker_metrics_listen": f"127.0.0.1:{dport}"}
    a = AgentProcess(base, config=cfg, metrics=True).start()
    a.wait_running()
    docker_cli(a.sock, "import", str(busybox_tar), "bb:local")
    a.url = f"http://127.0.0.1:{port}"
    yield a
    a.stop()


def shim(a: AgentProcess, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a.base / "bin" / "docker"), "-H", f"unix://{a.sock}", *args],
                          capture_output=True, text=True, timeout=120, **kw)


def test_containers_builds_and_shim_calls_are_counted_exactly(metered):
    a = metered
    assert shim(a, "run", "--rm", "--network", "none", "bb:local", "true").returncode == 0
    assert shim(a, "run", "--rm", "--network", "none", "bb:local", "sh", "-c", "exit 3").returncode == 3
    ok = shim(a, "build", "-t", "ok:1", "-", input="FROM bb:local\nRUN true\n")
    bad = shim(a, "build", "-t", "bad:1", "-", input="FROM bb:local\nRUN false\n")
    assert ok.returncode == 0 and bad.returncode != 0
    assert shim(a, "version").returncode == 0

    def counted():
        t = scrape(a.url + "/metrics")
        try:
            done = (value(t, "armhf_agent_containers_exited_total", result="success") >= 2
                    and value(t, "armhf_agent_image_builds_total", result="failure") == 1)
        except KeyError:
            return None
        return t if done else None

    t = wait_for(counted, 30, 0.2, "counts in the scrape")
    # Two `docker run`s plus the build steps' containers (classic builder: one per RUN).
    assert value(t, "armhf_agent_containers_exited_total", result="failure") == 2   # exit 3 and RUN false
    assert value(t, "armhf_agent_containers_exited_total", result="success") == 2   # true and RUN true
    assert value(t, "armhf_agent_containers_started_total") == 4
    assert value(t, "armhf_agent_image_builds_total", result="success") == 1
    assert value(t, "armhf_agent_image_builds_total", result="failure") == 1
    assert value(t, "armhf_agent_shim_invocations_total", **{"class": "run", "injected": "true"}) == 2
    assert value(t, "armhf_agent_shim_invocations_total", **{"class": "build", "injected": "false"}) == 2
    assert value(t, "armhf_agent_shim_invocations_total", **{"class": "other", "injected": "false"}) >= 1
    assert value(t, "armhf_agent_dockerd_up") == 1
    assert value(t, "armhf_agent_build_info", version=__import__("agent").__version__,
                 python=".".join(map(str, __import__("sys").version_info[:3]))) == 1

    # dockerd's own metrics through the agent.
    d = scrape(a.url + "/metrics/dockerd")
    assert "engine_daemon_engine_info" in d


def test_counters_survive_a_dockerd_crash(metered):
    a = metered
    assert shim(a, "run", "--rm", "--network", "none", "bb:local", "true").returncode == 0
    t = wait_for(lambda: (t := scrape(a.url + "/metrics")) and
                 value(t, "armhf_agent_containers_exited_total", result="success") == 1 and t, 30, 0.2, "first count")
    pid = a.dockerd_pid()
    os.kill(pid, signal.SIGKILL)
    a.wait_running(other_than=pid, timeout=60)
    assert shim(a, "run", "--rm", "--network", "none", "bb:local", "true").returncode == 0
    t = wait_for(lambda: (t := scrape(a.url + "/metrics")) and
                 value(t, "armhf_agent_containers_exited_total", result="success") == 2 and t, 30, 0.2, "second count")
    assert value(t, "armhf_agent_dockerd_restarts_total", reason="exited") == 1
    assert value(t, "armhf_agent_containers_started_total") == 2
