"""`render-cpuinfo` and `render-shim`: operators see exactly what the agent would write."""

from __future__ import annotations

import os
import subprocess
import sys

from agent import cpuinfo
from agentproc import agent_config, write_config
from harness import REPO, make_payload

FIXTURES = REPO / "tests" / "fixtures" / "cpuinfo"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_render_cpuinfo_from_an_arm64_dump_and_live(base):
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / "huawei-mate-20.txt"))
    assert r.returncode == 0, r.stderr
    assert cpuinfo.check(r.stdout, "v7") == []
    assert cpuinfo.containerd_variant(r.stdout) == "v7"
    assert r.stdout.count("processor\t:") == cpuinfo.online_cpu_count()
    assert "ARMv7 Processor rev" in r.stdout
    live = cli("--config", str(cfg), "render-cpuinfo")
    assert live.returncode == 0 and cpuinfo.check(live.stdout, "v7") == []
    missing = cli("--config", str(cfg), "render-cpuinfo", "--from", str(base / "nope.txt"))
    assert missing.returncode == 1 and "nope.txt" in missing.stderr


def test_render_cpuinfo_v6(base):
    c = agent_config(base)
    c["cpuinfo"]["variant"] = "v6"
    cfg = write_config(base / "a.toml", c)
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / "raspberrypi3.txt"))
    assert r.returncode == 0, r.stderr
    assert cpuinfo.containerd_variant(r.stdout) == "v6"


def test_render_shim_bakes_in_the_payload_client(base):
    make_payload(base / "payload")
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-shim")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!/bin/sh\n")
    assert f"{base}/payload/bin/docker" in r.stdout
    assert f"{base}/hijacked-armhf-cpuinfo" in r.stdout
    assert subprocess.run(["sh", "-n"], input=r.stdout, text=True).returncode == 0


def test_render_shim_without_any_client_says_why(base):
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-shim")
    assert r.returncode == 1 and f"no docker client to exec: none in {base}/payload" in r.stderr
