"""Agent restarts at the worst moments, a second agent, a foreign pidfile holder, readiness: against a real
dockerd and the real agent process (issue 12).

A dockerd is held in mid-start by giving it a FIFO as its `--config-file`: dockerd reads its config
before it writes its pidfile or opens its socket, and the read blocks until the test writes `{}`. So
"an agent restarted while dockerd starts" is reproduced exactly, for as long as the test wants.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentproc import AgentProcess, agent_config, pid_alive, wait_gone
from conftest import requires_docker
from harness import REPO, Dockerd, ping, wait_for

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def fifo_config(base: Path, **overrides) -> tuple[dict, Path]:
    fifo = base / "daemon.json.fifo"
    os.mkfifo(fifo, 0o600)
    cfg = agent_config(base, **overrides)
    cfg["docker"]["args"] = ["--bridge=none", "--iptables=false", "--config-file", str(fifo)]
    return cfg, fifo


def release(fifo: Path) -> None:
    """Lets a dockerd blocked on its config FIFO go on (one writer, `{}`, closed)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"{}\n")
    finally:
        os.close(fd)


def started_pid(a: AgentProcess) -> int:
    line = a.wait_log(r"STOPPED -> STARTING: started .* \(pid \d+\)")[-1]
    return int(line.rsplit("(pid ", 1)[1].rstrip(")"))


def kill_agent(a: AgentProcess) -> None:
    a.proc.kill()
    a.proc.wait()


def test_agent_restarted_while_dockerd_starts_adopts_it_instead_of_starting_another(agent, base):
    cfg, fifo = fifo_config(base)
    a = agent(config=cfg).start()
    pid = started_pid(a)
    time.sleep(1)
    assert pid_alive(pid) and not ping(a.sock) and not Path(cfg["docker"]["pidfile"]).exists(), \
        "dockerd should be held before its pidfile and socket"
    kill_agent(a)                                      # systemctl restart / an upgrade, mid-start
    b = agent(config=cfg).start()
    b.wait_log(r"STOPPED -> STARTING: adopted dockerd pid %d, not answering yet" % pid)
    release(fifo)
    b.wait_log(r"STARTING -> RUNNING: pid %d answers /_ping" % pid)
    assert b.wait_running() == pid
    assert "started" not in " ".join(line for line in b.log().splitlines() if "STOPPED -> STARTING" in line), \
        "a second dockerd was started"
    assert b.state()["dockerd"]["adopted"] is True


def test_agent_restarted_while_dockerd_hangs_replaces_it_after_the_hang_rule(agent, base):
    # Before: the pidfile's dockerd was ours but silent, so it was neither adopted nor stopped, and every
    # new dockerd exited on the pidfile ("foreign daemon"), for ever.
    cfg = agent_config(base, docker__start_timeout_seconds=3.0)
    a = agent(config=cfg).start()
    pid = a.wait_running()
    os.kill(pid, signal.SIGSTOP)
    kill_agent(a)
    time.sleep(3.5)                                    # older than the start timeout: it answered once
    b = agent(config=cfg).start()
    try:
        b.wait_log(r"STOPPED -> RUNNING: adopted dockerd pid %d, not answering" % pid)
        b.wait_log(r"RUNNING -> STOPPING: SIGTERM to pid %d \(hung" % pid, timeout=30)
        new = b.wait_running(60, other_than=pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    wait_gone(pid)
    assert new != pid and ping(b.sock)
    assert b.state()["dockerd"]["restarts"]["hung"] == 1


def test_a_sigstopped_young_dockerd_is_adopted_as_starting_and_kept_when_it_answers(agent, base):
    cfg = agent_config(base, docker__start_timeout_seconds=120.0)
    a = agent(config=cfg).start()
    pid = a.wait_running()
    os.kill(pid, signal.SIGSTOP)
    kill_agent(a)
    b = agent(config=cfg).start()
    try:
        b.wait_log(r"STOPPED -> STARTING: adopted dockerd pid %d, not answering yet" % pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    b.wait_log(r"STARTING -> RUNNING: pid %d answers" % pid)
    assert b.wait_running() == pid


def test_a_second_agent_on_the_same_folders_is_refused_and_the_first_keeps_its_dockerd(agent, base):
    a = agent().start()
    pid = a.wait_running()
    second = subprocess.run([sys.executable, "-m", "agent", "--config", str(a.config_path), "run", "--no-metrics"],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert second.returncode == 75, second.stderr
    assert f"another armhf-agent (pid {a.proc.pid}) already runs on {base / 'run'}" in second.stderr
    assert "Traceback" not in second.stderr
    assert a.dockerd_pid() == pid and pid_alive(pid) and ping(a.sock)
    assert a.proc.poll() is None


def test_ready_only_once_dockerd_answers_and_the_start_timeout_is_extended_meanwhile(agent, base):
    cfg, fifo = fifo_config(base)
    a = agent(config=cfg).start()
    pid = started_pid(a)
    # systemd is asked for more time (EXTEND_TIMEOUT_USEC) while dockerd starts; READY is not sent.
    a.notify.wait_for(f"EXTEND_TIMEOUT_USEC={int((30.0 + 30.0) * 1e6)}", 30)
    time.sleep(2)
    assert "READY=1" not in a.notify.drain() and not ping(a.sock)
    t_release = time.monotonic()
    release(fifo)
    t_ready = a.notify.wait_for("READY=1", 60)
    assert t_ready >= t_release, "READY=1 came before dockerd could answer"
    a.wait_log(r"STARTING -> RUNNING: pid %d answers /_ping" % pid)


def test_ready_while_dockerd_crash_loops_so_the_unit_start_does_not_time_out(agent, base):
    from harness import make_payload

    make_payload(base / "payload")
    dockerd = base / "payload" / "bin" / "dockerd"
    dockerd.unlink()
    dockerd.write_text("#!/bin/sh\necho 'this dockerd cannot start' >&2\nexit 3\n")
    dockerd.chmod(0o755)
    a = agent().start()
    a.notify.wait_for("READY=1", 30)
    a.wait_log(r"-> BACKOFF: pid \d+ exited with status 3")
    assert any(m.startswith("STATUS=dockerd backoff") for m in a.notify.drain())


def test_a_foreign_dockerd_on_the_pidfile_is_reported_not_fought(agent, base):
    other = Dockerd(base / "other")
    other.base.mkdir()
    cfg = agent_config(base)
    pidfile = cfg["docker"]["pidfile"]
    # A dockerd of another payload (the system's) holding the agent's pidfile.
    other.extra = []
    args = other.args()
    args[args.index("--pidfile") + 1] = pidfile
    log = open(other.base / "dockerd.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: ping(other.sock), 60, 0.1, "the foreign dockerd")
        a = agent(config=cfg).start()
        a.wait_log(r"-> BLOCKED: pidfile %s is held by another dockerd \(pid %d" % (pidfile, proc.pid))
        a.notify.wait_for("READY=1", 30)
        assert "STOPPED -> STARTING: started" not in a.log() and proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
    a.wait_running(60)
    assert a.state()["dockerd"]["state"] == "running"
