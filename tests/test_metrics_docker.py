"""Container metrics against a real dockerd, scraped over real HTTP: exact counts by result,
plausible durations, a dockerd SIGKILL and restart mid-way, promtool on the live scrape, and
dockerd's own metrics through /metrics/dockerd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid

from agent.docker_api import DockerApi
import pytest
from prometheus_client import CollectorRegistry

from agent.container_events import ContainerEventCounter
from agent.http_server import MetricsServer
from agent.metrics import AgentCollector, ShimMetrics
from conftest import requires_docker
from harness import Dockerd, wait_for
from metrics_support import PROMTOOL_MISSING, promtool, realistic_snapshot, samples, scrape, value

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_dockerd(base, busybox_tar):
    """A bare dockerd serving its own metrics on a loopback port."""
    addr = f"127.0.0.1:{free_port()}"
    d = Dockerd(base / f"d{uuid.uuid4().hex[:6]}", extra=["--metrics-addr", addr])
    d.base.mkdir()
    d.start()
    d.docker("import", str(busybox_tar), "bb:local")
    d.metrics_addr = addr
    yield d
    d.stop()


@pytest.fixture
def exporter(metrics_dockerd):
    d = metrics_dockerd
    registry = CollectorRegistry()
    AgentCollector(lambda: realistic_snapshot(time.time()), registry)
    ShimMetrics(registry)
    counter = ContainerEventCounter(lambda: DockerApi(d.sock),
                                    time.time, registry)
    alive = {"dockerd": True}
    server = MetricsServer("127.0.0.1", 0, registry, "", "", lambda: d.metrics_addr if alive["dockerd"] else None)
    counter.start()
    server.start()
    yield d, server, alive
    counter.stop()
    server.stop()


def current(server) -> dict:
    return samples(scrape(server.url)[1])


def wait_value(server, expected: float, name: str, timeout: float = 60, **labels) -> dict:
    def check():
        s = current(server)
        return s if s.get((name, frozenset(labels.items()))) == expected else None
    return wait_for(check, timeout, interval=0.2, what=f"{name}{labels} == {expected}")


def run(d, *args, check=False):
    return d.docker("run", "--network", "none", *args, check=check)


def test_container_results_and_durations_survive_a_dockerd_kill(exporter):
    d, server, alive = exporter
    wait_value(server, 1, "armhf_agent_docker_events_connected")
    assert run(d, "bb:local", "true").returncode == 0
    assert run(d, "bb:local", "sh", "-c", "exit 3").returncode == 3
    # 8 MiB and no swap: `tail` buffers /dev/zero (one endless line) until the cgroup's OOM killer
    # fires. Whether dockerd *knows* it was the OOM killer (an `oom` event, State.OOMKilled) depends on
    # the host's cgroup OOM notifications (seen both ways on this machine): the truth is Docker's own.
    oomed = run(d, "--name", "oomed", "--memory", "8m", "--memory-swap", "8m", "bb:local", "tail", "/dev/zero")
    assert oomed.returncode == 137
    oom = 1 if d.docker("inspect", "-f", "{{.State.OOMKilled}}", "oomed").stdout.strip() == "true" else 0
    d.docker("rm", "oomed")
    victim = run(d, "-d", "bb:local", "sleep", "100", check=True).stdout.strip()
    d.docker("kill", victim)
    s = wait_value(server, 4, "armhf_agent_container_run_duration_seconds_count")
    assert value(s, "armhf_agent_containers_started_total") == 4
    for result, count in {"success": 1, "failure": 1, "oom": oom, "killed": 2 - oom, "unknown": 0}.items():
        assert value(s, "armhf_agent_containers_exited_total", result=result) == count, result
    assert value(s, "armhf_agent_container_run_duration_seconds_bucket", le="5.0") == 4
    assert 0 < value(s, "armhf_agent_container_run_duration_seconds_sum") < 20

    # Mid-way: one container will exit 5 while dockerd is dead, one runs until the restarted dockerd
    # stops it (no live-restore: dockerd kills what it finds running, 1 s after SIGTERM here).
    run(d, "-d", "bb:local", "sh", "-c", "sleep 3; exit 5", check=True)
    run(d, "-d", "--stop-timeout", "1", "bb:local", "sleep", "100", check=True)
    wait_value(server, 6, "armhf_agent_containers_started_total")
    killed_at = time.monotonic()
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    alive["dockerd"] = False
    wait_value(server, 0, "armhf_agent_docker_events_connected")
    time.sleep(max(0.0, 5 - (time.monotonic() - killed_at)))           # the `exit 5` happens in the dark
    d.start()
    alive["dockerd"] = True
    wait_value(server, 2, "armhf_agent_docker_events_resyncs_total")
    s = wait_value(server, 1, "armhf_agent_docker_events_connected")
    assert value(s, "armhf_agent_containers_started_total") == 6
    for result, count in {"success": 1, "failure": 2, "oom": oom, "killed": 3 - oom, "unknown": 0}.items():
        assert value(s, "armhf_agent_containers_exited_total", result=result) == count, result

    # The stream works again, and nothing from before the restart is counted a second time.
    assert run(d, "bb:local", "true").returncode == 0
    s = wait_value(server, 7, "armhf_agent_container_run_duration_seconds_count")
    time.sleep(1)
    s = current(server)
    assert value(s, "armhf_agent_containers_started_total") == 7
    for result, count in {"success": 2, "failure": 2, "oom": oom, "killed": 3 - oom, "unknown": 0}.items():
        assert value(s, "armhf_agent_containers_exited_total", result=result) == count, result
    # Five short runs (< 1 s), the `sleep 3; exit 5` run (3-5 s), the one dockerd's restart stopped (> 5 s:
    # dockerd stayed dead for 5 s).
    assert value(s, "armhf_agent_container_run_duration_seconds_bucket", le="1.0") == 5
    assert value(s, "armhf_agent_container_run_duration_seconds_bucket", le="5.0") == 6
    assert value(s, "armhf_agent_container_run_duration_seconds_bucket", le="+Inf") == 7


def test_live_scrape_passes_promtool_and_serves_dockerds_own_metrics(exporter):
    d, server, alive = exporter
    wait_value(server, 1, "armhf_agent_docker_events_connected")
    run(d, "bb:local", "true")
    wait_value(server, 1, "armhf_agent_containers_exited_total", result="success")
    content_type, text = scrape(server.url + "/dockerd")
    assert "engine_daemon_engine_info" in text and "engine_daemon_container_states_containers" in text
    tool = promtool()
    if tool is None:
        pytest.skip(PROMTOOL_MISSING)
    # Only our own exposition is held to promtool's lint (dockerd's has gauges named *_total).
    result = subprocess.run([tool, "check", "metrics"], input=scrape(server.url)[1], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_a_new_client_factory_reconnects_and_stop_closes_a_live_stream(metrics_dockerd):
    d = metrics_dockerd
    registry = CollectorRegistry()
    made = []

    def factory():
        made.append(1)
        return DockerApi(d.sock)

    counter = ContainerEventCounter(factory, time.time, registry)
    server = MetricsServer("127.0.0.1", 0, registry, "", "", lambda: None)
    server.start()
    counter.start()
    try:
        wait_value(server, 1, "armhf_agent_docker_events_resyncs_total")
        wait_value(server, 1, "armhf_agent_docker_events_connected")
        counter.set_client_factory(factory)
        wait_value(server, 2, "armhf_agent_docker_events_resyncs_total")
        s = wait_value(server, 1, "armhf_agent_docker_events_connected")
        assert len(made) == 2
        run(d, "bb:local", "sh", "-c", "exit 4")
        s = wait_value(server, 1, "armhf_agent_containers_exited_total", result="failure")
        assert value(s, "armhf_agent_containers_started_total") == 1
        t0 = time.monotonic()
        counter.stop()
        assert time.monotonic() - t0 < 2                  # the blocked read was closed, not waited out
        assert value(current(server), "armhf_agent_docker_events_connected") == 0
    finally:
        counter.stop()
        server.stop()
