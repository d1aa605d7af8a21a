"""The agent supervising a real dockerd: readiness, crashes, hangs, adoption, stop, reload, personality.

Every test runs the real agent process (`python -m agent run`) with a real NOTIFY_SOCKET, real
signals and a real dockerd from the stand-in payload (the system's docker.io binaries).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from agentproc import agent_config, pid_alive
from conftest import requires_docker
from harness import docker_cli, ping, wait_for

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def test_ready_status_then_stop_cleanly(agent, busybox_tar):
    # That READY=1 waits for dockerd's answer is proven with a dockerd held mid-start:
    # test_agent_restarts.py test_ready_only_once_dockerd_answers...
    a = agent().start()
    a.notify.wait_for("READY=1", 60)
    # The first STATUS after READY names the running dockerd; dockerd answered before READY.
    pid = a.wait_running()
    assert ping(a.sock)
    started = a.wait_log(r"STARTING -> RUNNING")[0]
    assert "answers /_ping" in started
    messages = a.notify.drain()
    assert messages.index("READY=1") > 0, "a STATUS line precedes READY"
    assert any(m.startswith("STATUS=dockerd running (pid %d" % pid) for m in messages)
    # dockerd must not inherit our notify socket (it would send its own READY=1).
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    assert not any(e.startswith(b"NOTIFY_SOCKET=") for e in env)

    a.signal(signal.SIGTERM)
    assert a.wait_exit(60) == 0
    assert not pid_alive(pid)
    assert "STOPPING=1" in a.notify.drain()


def test_dockerd_sigkill_is_replaced(agent):
    a = agent().start()
    pid = a.wait_running()
    os.kill(pid, signal.SIGKILL)
    new = a.wait_running(other_than=pid, timeout=60)
    assert new != pid and ping(a.sock)
    assert a.state()["dockerd"]["restarts"]["exited"] == 1
    a.wait_log(r"RUNNING -> BACKOFF: pid %d killed by SIGKILL; next start in 0s" % pid)


def test_dockerd_sigstop_is_detected_and_replaced(agent, base):
    cfg = agent_config(base)
    d = cfg["docker"]
    a = agent(config=cfg).start()
    pid = a.wait_running()
    bound = d["health_failures"] * d["health_interval_seconds"] + d["health_timeout_seconds"] + d["stop_timeout_seconds"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        a.wait_log(r"RUNNING -> STOPPING: SIGTERM to pid %d \(hung" % pid, timeout=bound + 5)
        detected = time.monotonic() - t0
        new = a.wait_running(other_than=pid, timeout=60)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    # Slack for a loaded CI machine; bench/ measures the figure itself.
    assert detected <= bound + 3.0, f"hang detected after {detected:.2f}s, bound {bound}s"
    assert new != pid
    assert a.state()["dockerd"]["restarts"]["hung"] == 1


def test_agent_sigkill_then_restart_adopts_dockerd_and_container_survives(agent, busybox_tar):
    a = agent().start()
    pid = a.wait_running()
    docker_cli(a.sock, "import", str(busybox_tar), "bb:local")
    cid = docker_cli(a.sock, "run", "-d", "--network", "none", "bb:local", "sleep", "300").stdout.strip()
    a.proc.kill()
    a.proc.wait()
    assert pid_alive(pid), "dockerd outlives a killed agent"
    b = agent().start()
    b.wait_log(r"STOPPED -> RUNNING: adopted running dockerd pid %d" % pid)
    b.notify.wait_for("READY=1", 30)
    assert b.wait_running() == pid
    running = docker_cli(b.sock, "inspect", "-f", "{{.State.Running}}", cid).stdout.strip()
    assert running == "true"
    assert "STOPPED -> STARTING" not in b.log(), "no second dockerd was started"
    # `sleep` as PID 1 ignores SIGTERM: left running, it outlasts the tests' 5 s stop timeout, dockerd is
    # killed mid-shutdown and its containerd-shim is orphaned on the host.
    docker_cli(b.sock, "rm", "-f", cid)


def test_sighup_with_broken_file_keeps_old_config_then_valid_one_applies(agent, base):
    a = agent().start()
    pid = a.wait_running()
    good = a.config_path.read_text()
    broken = good.replace("health_failures = 2", "health_failures = 0").replace("[docker]\n", "[docker]\nbogus = 1\n")
    a.config_path.write_text(broken)
    a.signal(signal.SIGHUP)
    a.wait_log(r"reload: .* is invalid, keeping the running config")
    # Every problem is listed, each with file:line and key.
    a.wait_log(r"reload:   .*agent.toml:\d+: docker.health_failures: Input should be greater than or equal to 1")
    a.wait_log(r"reload:   .*agent.toml:\d+: docker.bogus: unknown key")
    # state.json is published at the end of the step that logged the rejection.
    wait_for(lambda: a.state()["reloads"]["rejected"] == 1, 10, 0.05, "the rejection counted")
    assert a.dockerd_pid() == pid

    # A valid change to dockerd's arguments is applied with a graceful restart.
    a.config_path.write_text(good.replace('"--iptables=false"]', '"--iptables=false", "--debug"]'))
    a.signal(signal.SIGHUP)
    a.wait_log(r"reload: applied")
    new = a.wait_running(other_than=pid, timeout=60)
    assert "--debug" in open(f"/proc/{new}/cmdline", "rb").read().decode().split("\0")
    st = a.state()
    assert st["reloads"]["applied"] == 1 and st["dockerd"]["restarts"]["reload"] == 1


def test_container_uname_matches_linux32(agent, busybox_tar):
    a = agent().start()
    a.wait_running()
    docker_cli(a.sock, "import", str(busybox_tar), "bb:local")
    inside = docker_cli(a.sock, "run", "--rm", "--network", "none", "bb:local", "uname", "-m").stdout.strip()
    host32 = subprocess.run(["setarch", "linux32", "uname", "-m"], capture_output=True, text=True).stdout.strip()
    assert inside == host32  # i686 here, armv8l on arm64
    pers = docker_cli(a.sock, "run", "--rm", "--network", "none", "bb:local", "cat", "/proc/self/personality").stdout
    assert int(pers, 16) & 0xFF == 0x0008


def test_crash_loop_backoff_grows_and_is_capped(agent, base):
    cfg = agent_config(base)
    cfg["docker"].update(restart_backoff_initial_seconds=0.2, restart_backoff_max_seconds=0.8)
    a = agent(config=cfg)
    # A payload whose dockerd exits at once.
    dockerd = base / "payload" / "bin" / "dockerd"
    dockerd.unlink()
    dockerd.write_text("#!/bin/sh\nexit 3\n")
    dockerd.chmod(0o755)
    a.start()
    lines = a.wait_log(r"-> BACKOFF: .*exited with status 3; next start in", timeout=60, count=7)
    delays = [float(re.search(r"next start in ([0-9.]+)s", l).group(1)) for l in lines[:7]]
    assert delays == [0.0, 0.2, 0.4, 0.8, 0.8, 0.8, 0.8]
    # The agent keeps running and says so; it never gives up.
    assert a.proc.poll() is None
    assert a.state()["dockerd"]["state"] in ("backoff", "starting")


def test_missing_payload_is_reported_ready_and_picked_up_later(agent, base):
    a = agent(payload=False).start()
    a.notify.wait_for("READY=1", 30)
    st = a.state()
    assert st["dockerd"]["state"] == "blocked"
    assert "install-docker" in st["dockerd"]["reason"]
    assert any("STATUS=dockerd blocked: payload" in m for m in a.notify.drain())
    from harness import make_payload

    make_payload(base / "payload")
    pid = a.wait_running(timeout=60)
    assert pid and ping(a.sock)


def test_sigusr2_detaches_leaving_dockerd_running(agent):
    a = agent().start()
    pid = a.wait_running()
    a.signal(signal.SIGUSR2)
    assert a.wait_exit(30) == 0
    assert pid_alive(pid) and ping(a.sock)
    b = agent().start()
    assert b.wait_running() == pid
    b.wait_log(r"adopted running dockerd pid %d" % pid)


def test_watchdog_pings_only_while_the_loop_progresses(agent, base):
    a = agent(extra_env={"WATCHDOG_USEC": "1000000"})   # WatchdogSec=1: ping every 0.5 s
    a.start()
    a.wait_running()
    a.notify.wait_for("WATCHDOG=1", 10)
    t0 = len([m for m in a.notify.drain() if m == "WATCHDOG=1"])
    time.sleep(2.0)
    pings = len([m for m in a.notify.drain() if m == "WATCHDOG=1"]) - t0
    assert 3 <= pings <= 6, pings
    # A stuck loop (here: the whole agent stopped) sends none: that is what systemd's watchdog catches.
    a.signal(signal.SIGSTOP)
    try:
        before = len([m for m in a.notify.drain() if m == "WATCHDOG=1"])
        time.sleep(1.5)
        assert len([m for m in a.notify.drain() if m == "WATCHDOG=1"]) == before
    finally:
        a.signal(signal.SIGCONT)


def test_reload_notifies_reloading_with_monotonic_usec_then_ready(agent):
    a = agent().start()
    a.wait_running()
    a.signal(signal.SIGHUP)
    a.wait_log(r"reload: applied")
    msgs = a.notify.drain()
    i = next(i for i, m in enumerate(msgs) if m.startswith("RELOADING=1"))
    assert re.match(r"RELOADING=1\nMONOTONIC_USEC=\d+$", msgs[i])
    assert "READY=1" in msgs[i + 1:]


def test_unit_file_verifies():
    from pathlib import Path
    import shutil
    import tempfile

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    unit = (Path(__file__).parent.parent / "systemd" / "armhf-agent.service").read_text()
    for needle in ("Type=notify", "WatchdogSec=", "Restart=always", "RestartPreventExitStatus=78",
                   "ExecReload=/bin/kill -HUP $MAINPID", "Delegate=yes", "KillMode=process", "TasksMax=infinity",
                   "LimitNOFILE=1048576", "OOMScoreAdjust=-500"):
        assert needle in unit, needle
    with tempfile.TemporaryDirectory() as d:
        # ExecStart must exist for verify: point it at a real executable.
        path = Path(d, "armhf-agent.service")
        path.write_text(unit.replace("/usr/bin/armhf-agent", "/bin/true"))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "armhf-agent.service" not in r.stderr, r.stderr
