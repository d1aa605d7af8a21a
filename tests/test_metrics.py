"""The collectors and the HTTP endpoint, without Docker: snapshot-driven health metrics, shim
metrics, the container-event counter's pure steps, HTTP/HTTPS/OpenMetrics and the dockerd proxy."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.error

import pytest
from prometheus_client import CollectorRegistry

from agent.container_events import ContainerEventCounter, classify, rfc3339_ns, since_param
from agent.http_server import DOCKERD_TIMEOUT_SECONDS, MetricsServer
from agent.metrics import AgentCollector, ShimMetrics
from agent.state import DOCKERD_STATES, REPAIR_REASONS, RESTART_REASONS, Snapshot
from metrics_support import PROMTOOL_MISSING, Record, promtool, realistic_snapshot, samples, scrape, value

NOW = 1_800_000_000.0
NS = 1_000_000_000


def collect_text(registry: CollectorRegistry) -> dict:
    from prometheus_client import generate_latest
    return samples(generate_latest(registry).decode())


# -- AgentCollector --------------------------------------------------------------------------------

def test_health_metrics_follow_the_latest_snapshot():
    current = {"snap": realistic_snapshot(NOW)}
    registry = CollectorRegistry()
    AgentCollector(lambda: current["snap"], registry)
    s = collect_text(registry)
    assert value(s, "armhf_agent_build_info", version="0.1.0", python=__import__("platform").python_version()) == 1
    assert value(s, "armhf_agent_start_time_seconds") == NOW - 3600
    assert value(s, "armhf_agent_last_step_timestamp_seconds") == NOW - 2
    assert value(s, "armhf_agent_dockerd_up") == 1
    assert [st for st in DOCKERD_STATES if value(s, "armhf_agent_dockerd_state", state=st) == 1] == ["running"]
    assert value(s, "armhf_agent_dockerd_restarts_total", reason="exited") == 1
    assert value(s, "armhf_agent_dockerd_restarts_total", reason="reload") == 0
    assert value(s, "armhf_agent_dockerd_start_time_seconds") == NOW - 1800
    assert value(s, "armhf_agent_dockerd_ping_latency_seconds") == 0.004
    assert value(s, "armhf_agent_dockerd_platform_info", os="linux", arch="arm", variant="v7") == 1
    assert value(s, "armhf_agent_payload_info", version="20.10.24", arch="arm") == 1
    assert value(s, "armhf_agent_payload_updates_total", result="applied") == 1
    assert value(s, "armhf_agent_payload_updates_total", result="rolled_back") == 0
    assert value(s, "armhf_agent_file_ok", file="cpuinfo") == 1
    assert value(s, "armhf_agent_file_ok", file="shim") == 0
    assert value(s, "armhf_agent_file_repairs_total", file="cpuinfo", reason="missing") == 2
    assert value(s, "armhf_agent_file_repairs_total", file="shim", reason="content") == 1
    assert value(s, "armhf_agent_config_reloads_total", result="applied") == 1
    assert value(s, "armhf_agent_config_reloads_total", result="rejected") == 0
    assert value(s, "armhf_agent_exec_mode", mode="native") == 1
    assert value(s, "armhf_agent_exec_mode", mode="emulated") == 0

    # The next scrape reads the next snapshot: dockerd hung and restarted, nothing read from elsewhere.
    snap = current["snap"]
    current["snap"] = Snapshot(**{**snap.__dict__, "dockerd": type(snap.dockerd)(
        **{**snap.dockerd.__dict__, "state": "backoff", "ping_ok": False, "restarts": {"exited": 1, "hung": 2}})})
    s = collect_text(registry)
    assert value(s, "armhf_agent_dockerd_up") == 0
    assert value(s, "armhf_agent_dockerd_state", state="backoff") == 1
    assert value(s, "armhf_agent_dockerd_state", state="running") == 0
    assert value(s, "armhf_agent_dockerd_restarts_total", reason="hung") == 2


def test_a_fresh_snapshot_already_exports_every_counter_label_at_zero():
    registry = CollectorRegistry()
    AgentCollector(Snapshot, registry)
    s = collect_text(registry)
    for reason in RESTART_REASONS:
        assert value(s, "armhf_agent_dockerd_restarts_total", reason=reason) == 0
    for file in ("cpuinfo", "shim"):
        for reason in REPAIR_REASONS:
            assert value(s, "armhf_agent_file_repairs_total", file=file, reason=reason) == 0
    assert value(s, "armhf_agent_exec_mode", mode="unknown") == 1
    assert value(s, "armhf_agent_dockerd_up") == 0
    # Unknown facts are absent, not zero: a 0 epoch or a 0 s ping would be a lie.
    names = {name for name, _ in s}
    assert "armhf_agent_dockerd_start_time_seconds" not in names
    assert "armhf_agent_dockerd_ping_latency_seconds" not in names
    assert "armhf_agent_dockerd_platform_info" not in names


# -- ShimMetrics ------------------------------------------------------------------------------------

def test_shim_records_count_invocations_and_builds():
    registry = CollectorRegistry()
    shim = ShimMetrics(registry)
    shim.observe([Record(NOW, "run", True), Record(NOW, "run", True), Record(NOW, "exec", False),
                  Record(NOW, "build", True, exit_code=0, duration_seconds=42.0),
                  Record(NOW, "build", True, exit_code=1, duration_seconds=3.0),
                  Record(NOW, "build", False, exit_code=None, duration_seconds=None),
                  Record(NOW, "login", False), Record(NOW, "unresolved", False)])
    shim.observe([Record(NOW, "build", True, exit_code=0, duration_seconds=400.0)])
    s = collect_text(registry)
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "run", "injected": "true"}) == 2
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "exec", "injected": "false"}) == 1
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "build", "injected": "true"}) == 3
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "build", "injected": "false"}) == 1
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "other", "injected": "false"}) == 1
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "create", "injected": "true"}) == 0
    assert value(s, "armhf_agent_shim_invocations_total", **{"class": "unresolved", "injected": "false"}) == 1
    assert value(s, "armhf_agent_image_builds_total", result="success") == 2
    assert value(s, "armhf_agent_image_builds_total", result="failure") == 1
    assert value(s, "armhf_agent_image_build_duration_seconds_count") == 3
    assert value(s, "armhf_agent_image_build_duration_seconds_sum") == 445.0
    assert value(s, "armhf_agent_image_build_duration_seconds_bucket", le="5.0") == 1
    assert value(s, "armhf_agent_image_build_duration_seconds_bucket", le="60.0") == 2
    assert value(s, "armhf_agent_image_build_duration_seconds_bucket", le="300.0") == 2
    assert value(s, "armhf_agent_image_build_duration_seconds_bucket", le="900.0") == 3
    assert value(s, "armhf_agent_image_build_duration_seconds_bucket", le="+Inf") == 3


# -- ContainerEventCounter: the pure steps -------------------------------------------------------------

def event(action: str, cid: str, t: float, **attributes: str) -> dict:
    return {"Type": "container", "Action": action, "status": action, "id": cid, "timeNano": int(t * NS),
            "time": int(t), "Actor": {"ID": cid, "Attributes": {"name": "x", **attributes}}}


def inspected(cid: str, started: float | None, finished: float | None, running: bool, exit_code: int = 0,
              oom: bool = False) -> dict:
    def stamp(t):
        if t is None:
            return "0001-01-01T00:00:00Z"
        whole = int(t)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{round((t - whole) * NS):09d}Z"
    return {"Id": cid, "State": {"Running": running, "ExitCode": exit_code, "OOMKilled": oom,
                                 "StartedAt": stamp(started), "FinishedAt": stamp(finished)}}


def new_counter() -> tuple[ContainerEventCounter, CollectorRegistry]:
    registry = CollectorRegistry()
    return ContainerEventCounter(lambda: None, lambda: NOW, registry), registry


def exits(registry) -> dict[str, float]:
    s = collect_text(registry)
    return {dict(labels)["result"]: v for (name, labels), v in s.items() if name == "armhf_agent_containers_exited_total"}


def started(registry) -> float:
    return value(collect_text(registry), "armhf_agent_containers_started_total")


def test_exit_results_are_classified_as_documented():
    assert classify(0, oom=False, kill_requested=False) == "success"
    assert classify(3, oom=False, kill_requested=False) == "failure"
    assert classify(139, oom=False, kill_requested=False) == "failure"       # SIGSEGV nobody asked for
    assert classify(137, oom=True, kill_requested=False) == "oom"
    assert classify(137, oom=False, kill_requested=False) == "killed"
    assert classify(143, oom=False, kill_requested=False) == "killed"
    assert classify(130, oom=False, kill_requested=True) == "killed"
    assert classify(0, oom=False, kill_requested=True) == "success"


def test_events_count_each_run_once_with_its_duration():
    counter, registry = new_counter()
    for e in [event("create", "a", NOW), event("start", "a", NOW + 1), event("start", "a", NOW + 1),  # replayed
              event("die", "a", NOW + 3.5, exitCode="0"), event("die", "a", NOW + 3.5, exitCode="0"),
              event("start", "b", NOW + 4), event("oom", "b", NOW + 5), event("die", "b", NOW + 5, exitCode="137"),
              event("start", "c", NOW + 6), event("kill", "c", NOW + 7, signal="15"),
              event("die", "c", NOW + 8, exitCode="143"),
              event("start", "d", NOW + 9), event("die", "d", NOW + 10, exitCode="3"),
              event("die", "never-started", NOW + 11, exitCode="1"),
              {"Type": "network", "Action": "connect", "id": "n", "timeNano": int((NOW + 12) * NS)}]:
        counter.handle(e)
    assert started(registry) == 4
    assert exits(registry) == {"success": 1, "failure": 1, "oom": 1, "killed": 1, "unknown": 0}
    s = collect_text(registry)
    assert value(s, "armhf_agent_container_run_duration_seconds_count") == 4
    assert value(s, "armhf_agent_container_run_duration_seconds_sum") == pytest.approx(2.5 + 1 + 2 + 1)
    assert counter.tracked() == 0


class InspectingClient:
    """What ContainerEventCounter asks of a DockerApi when a run dies of a SIGKILL nobody asked for."""

    def __init__(self, states: dict[str, dict]):
        self.states, self.asked = states, []

    def inspect_container(self, cid: str, timeout: float = 30) -> dict:
        self.asked.append(cid)
        if cid not in self.states:
            raise OSError(f"404 no such container {cid}")       # a --rm container, gone before we asked
        return self.states[cid]


def test_a_sigkill_without_an_oom_event_is_oom_when_docker_says_so():
    # Issue 12: on cgroup setups without OOM notifications dockerd sends no `oom` event, yet
    # State.OOMKilled is true. The oracle is the inspected state the fake client hands out.
    client = InspectingClient({"oomed": {"State": {"OOMKilled": True}}, "killed": {"State": {"OOMKilled": False}},
                               "odd": {"State": None}})
    registry = CollectorRegistry()
    counter = ContainerEventCounter(lambda: client, lambda: NOW, registry)
    for i, cid in enumerate(["oomed", "killed", "gone", "odd"]):
        counter.handle(event("start", cid, NOW + i))
        counter.handle(event("die", cid, NOW + i + 0.5, exitCode="137"))
    counter.handle(event("start", "stopped", NOW + 10))
    counter.handle(event("kill", "stopped", NOW + 10.1, signal="9"))
    counter.handle(event("die", "stopped", NOW + 10.2, exitCode="137"))
    counter.handle(event("start", "failed", NOW + 11))
    counter.handle(event("die", "failed", NOW + 11.5, exitCode="1"))
    assert exits(registry) == {"success": 0, "failure": 1, "oom": 1, "killed": 4, "unknown": 0}
    assert client.asked == ["oomed", "killed", "gone", "odd"], "asked only for SIGKILLs nobody requested"


def test_a_restarted_container_counts_as_a_new_run():
    counter, registry = new_counter()
    for e in [event("start", "a", NOW), event("die", "a", NOW + 1, exitCode="1"),
              event("start", "a", NOW + 2), event("die", "a", NOW + 3, exitCode="0")]:
        counter.handle(e)
    assert started(registry) == 2
    assert exits(registry)["failure"] == 1 and exits(registry)["success"] == 1


def test_relisting_after_a_gap_counts_what_was_missed_and_nothing_twice():
    counter, registry = new_counter()
    # First connect at NOW: "old" runs since before the agent (adopted, start not counted).
    counter.reconcile([inspected("old", NOW - 100, None, True), inspected("gone-before", NOW - 50, NOW - 40, False)],
                      boundary_ns=int(NOW * NS))
    assert started(registry) == 0 and counter.tracked() == 1
    for e in [event("start", "live", NOW + 1), event("start", "rm", NOW + 2), event("start", "restarted", NOW + 3),
              event("start", "dies-late", NOW + 4)]:
        counter.handle(e)
    assert started(registry) == 4
    # The stream drops at NOW + 5; the re-list happens at NOW + 20.
    counter.reconcile([
        inspected("old", NOW - 100, NOW + 10, False, exit_code=137),          # dockerd's restart killed it
        inspected("live", NOW + 1, None, True),                              # still running
        inspected("restarted", NOW + 15, None, True),                        # ended unseen, began again
        inspected("gap-ok", NOW + 6, NOW + 7, False, exit_code=0),           # whole run inside the gap
        inspected("gap-oom", NOW + 8, NOW + 9, False, exit_code=137, oom=True),
        inspected("gap-running", NOW + 11, None, True),
        inspected("dies-late", NOW + 4, NOW + 20.5, False, exit_code=2),     # exit after the boundary: streamed
        inspected("after", NOW + 20.2, None, True),                          # started after the boundary: streamed
        inspected("gone-before", NOW - 50, NOW - 40, False),
        # Began and ended just before the boundary; dockerd logs its `start` after the boundary.
        inspected("gap-race", NOW + 19.99, NOW + 19.995, False, exit_code=0),
    ], boundary_ns=int((NOW + 20) * NS))                                     # "rm" was removed meanwhile
    assert started(registry) == 4 + 4 + 1          # gap-ok, gap-oom, gap-running, gap-race; restarted's new run
    assert exits(registry) == {"success": 2, "failure": 0, "oom": 1, "killed": 1, "unknown": 2}
    # The replay from the boundary on: what the list already accounted for is ignored.
    for e in [event("start", "after", NOW + 20.2), event("start", "gap-running", NOW + 20.01),
              event("die", "dies-late", NOW + 20.5, exitCode="2"),
              event("start", "gap-race", NOW + 20.001), event("die", "gap-race", NOW + 20.002, exitCode="0")]:
        counter.handle(e)
    assert started(registry) == 10
    assert exits(registry) == {"success": 2, "failure": 1, "oom": 1, "killed": 1, "unknown": 2}
    s = collect_text(registry)
    # Durations: old 110 s, gap-ok 1 s, gap-oom 1 s, gap-race 5 ms, dies-late 16.5 s; unknown exits have none.
    assert value(s, "armhf_agent_container_run_duration_seconds_count") == 5
    assert value(s, "armhf_agent_container_run_duration_seconds_sum") == pytest.approx(110 + 1 + 1 + 0.005 + 16.5)
    # Live: live, restarted, gap-running, after (+ z); the settled ids are dropped once the stream moves on.
    counter.handle(event("start", "z", NOW + 30))
    assert counter.tracked() == 5


def test_memory_stays_flat_over_ten_thousand_events():
    counter, registry = new_counter()
    sizes = []
    for i in range(2500):
        cid = f"{i:064x}"
        t = NOW + i
        for e in (event("start", cid, t), event("oom", cid, t + 0.1) if i % 7 == 0 else event("kill", cid, t + 0.1),
                  event("die", cid, t + 0.5, exitCode="137" if i % 7 == 0 else "0"),
                  event("destroy", cid, t + 0.6)):
            counter.handle(e)
        if i % 100 == 0:
            counter.reconcile([], boundary_ns=int((t + 0.7) * NS))
        sizes.append(counter.tracked())
    assert max(sizes) == 0
    assert started(registry) == 2500
    assert exits(registry)["oom"] == 358 and exits(registry)["success"] == 2500 - 358


def test_timestamps_and_since_parameter():
    assert rfc3339_ns("2026-11-28T01:56:29.389075093Z") - rfc3339_ns("2026-11-28T01:56:29Z") == 389075093
    assert rfc3339_ns("2026-11-28T02:56:29.5+01:00") == rfc3339_ns("2026-11-28T01:56:29.500Z")
    assert rfc3339_ns("0001-01-01T00:00:00Z") is None
    assert since_param(1_795_830_979_000_000_123) == "1795830979.000000123"


def test_the_thread_survives_a_missing_daemon_and_stops_promptly(tmp_path):
    from agent.docker_api import DockerApi
    registry = CollectorRegistry()
    factory_calls = []

    def factory():
        factory_calls.append(1)
        return DockerApi(f"{tmp_path}/absent.sock")

    counter = ContainerEventCounter(factory, time.time, registry)
    counter.start()
    deadline = time.monotonic() + 5
    while len(factory_calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(factory_calls) >= 3                     # retried with backoff, not dead
    assert value(collect_text(registry), "armhf_agent_docker_events_connected") == 0
    t0 = time.monotonic()
    counter.stop()
    assert time.monotonic() - t0 < 3
    assert not any(t.name == "container-events" for t in threading.enumerate())


# -- HTTP -----------------------------------------------------------------------------------------

@pytest.fixture
def registry():
    registry = CollectorRegistry()
    AgentCollector(lambda: realistic_snapshot(time.time()), registry)
    ShimMetrics(registry)
    ContainerEventCounter(lambda: None, time.time, registry)
    return registry


def serve(registry, dockerd_addr=lambda: None, cert="", key=""):
    server = MetricsServer("127.0.0.1", 0, registry, cert, key, dockerd_addr)
    server.start()
    return server


def test_metrics_over_http_in_both_formats(registry):
    server = serve(registry)
    try:
        content_type, text = scrape(server.url)
        assert content_type.startswith("text/plain; version=0.0.4")
        assert value(samples(text), "armhf_agent_dockerd_up") == 1
        content_type, text = scrape(server.url, accept="application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
        assert "# TYPE armhf_agent_build info" in text
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(server.url.replace("/metrics", "/nope"))
        assert err.value.code == 404
    finally:
        server.stop()


def test_promtool_check_metrics_is_clean(registry):
    tool = promtool()
    if tool is None:
        pytest.skip(PROMTOOL_MISSING)
    server = serve(registry)
    try:
        _, text = scrape(server.url)
    finally:
        server.stop()
    result = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_dockerd_proxy_answers_503_quickly_when_dockerd_is_absent_or_hung(registry):
    # A listener that accepts and never answers: a hung dockerd.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    current = {"addr": None}
    server = serve(registry, dockerd_addr=lambda: current["addr"])
    try:
        for addr, expected in ((None, "dockerd not running"), ("127.0.0.1:%d" % hung.getsockname()[1], "timed out")):
            current["addr"] = addr
            t0 = time.monotonic()
            with pytest.raises(urllib.error.HTTPError) as err:
                scrape(server.url + "/dockerd")
            assert err.value.code == 503
            body = err.value.read().decode()
            assert expected in body and body.count("\n") == 1
            assert time.monotonic() - t0 < DOCKERD_TIMEOUT_SECONDS + 1
        # /metrics is not held up by a scrape waiting on the hung dockerd.
        stuck = threading.Thread(target=lambda: pytest.raises(urllib.error.HTTPError, scrape, server.url + "/dockerd"))
        stuck.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        scrape(server.url)
        assert time.monotonic() - t0 < 1
        stuck.join()
    finally:
        server.stop()
        hung.close()


def test_https_scrape_with_a_self_signed_certificate(registry, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = serve(registry, cert=str(cert), key=str(key))
    stallers = []
    try:
        assert server.url.startswith("https://127.0.0.1:")
        # A client that connects and stalls the handshake does not block other scrapes.
        staller = socket.create_connection(server.address)
        stallers.append(staller)
        _, text = scrape(server.url, cafile=str(cert))
        assert value(samples(text), "armhf_agent_dockerd_up") == 1
        with pytest.raises(urllib.error.URLError):
            scrape(server.url)                                   # not trusted without the CA
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            scrape(server.url.replace("https:", "http:"))        # no plain HTTP on a TLS port
    finally:
        for staller in stallers:
            staller.close()
        server.stop()
