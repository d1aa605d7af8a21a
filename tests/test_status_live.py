"""`armhf-agent status` against a real running agent: healthy, degraded, not running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from agentproc import AgentProcess, agent_config
from conftest import requires_docker
from harness import REPO, wait_for

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def status(a: AgentProcess, *args):
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(a.config_path), "status", *args],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_status_healthy_degraded_and_not_running(base):
    # Ten failed pings half a second apart before the hang rule acts: a window of seconds in which a
    # `status` (a fresh interpreter, ~0.3 s) must see the hung dockerd, however loaded the machine.
    a = AgentProcess(base, config=agent_config(base, docker__health_failures=10)).start()
    try:
        pid = a.wait_running()
        r = status(a)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"dockerd: running (pid {pid}" in r.stdout
        doc = json.loads(status(a, "--json").stdout)
        assert doc["dockerd"]["pid"] == pid and doc["status"] == "healthy"

        # dockerd hung (SIGSTOP): degraded while the agent counts failed pings, then it is replaced.
        os.kill(pid, signal.SIGSTOP)

        def degraded():
            r = status(a)
            return r if r.returncode == 1 else None

        r = wait_for(degraded, 30, 0.02, "status exit 1 while dockerd hangs")
        assert "degraded: dockerd not answering /_ping" in r.stdout, r.stdout
        new = a.wait_running(60, other_than=pid)
        wait_for(lambda: status(a).returncode == 0, 60, 0.2, "healthy again")
        assert json.loads(status(a, "--json").stdout)["dockerd"]["pid"] == new
    finally:
        a.stop()
    r = status(a)
    assert r.returncode == 3, r.stdout
