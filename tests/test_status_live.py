"""`armhf-agent status` against a real running agent: healthy, degraded, not running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from agentproc import AgentProcess
from conftest import requires_docker
from harness import REPO, wait_for

pytestmark = [requires_docker]


def status(a: AgentProcess, *args):
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(a.config_path), "status", *args],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_status_healthy_degraded_and_not_running(base):
    a = AgentProcess(base).start()
    try:
        pid = a.wait_running()
        r = status(a)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"dockerd: running (pid {pid}" in r.stdout
        doc = json.loads(status(a, "--json").stdout)
        assert doc["dockerd"]["pid"] == pid and doc["status"] == "healthy"

        # dockerd stopped (SIGSTOP: the agent notices the hang, replaces it): degraded meanwhile.
        os.kill(pid, signal.SIGKILL)

        def degraded():
            r = status(a)
            return r if r.returncode == 1 else None

        r = wait_for(degraded, 30, 0.02, "status exit 1 while dockerd is replaced")
        assert "dockerd" in r.stdout
        wait_for(lambda: status(a).returncode == 0, 60, 0.2, "healthy again")
    finally:
        a.stop()
    r = status(a)
    assert r.returncode == 3, r.stdout
