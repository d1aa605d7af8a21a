"""Health and build metrics, built at scrape time from in-memory state only.

A scrape never waits on Docker or the disk: `AgentCollector` reads the latest `Snapshot` the loop
published, `ShimMetrics` and the container-events counter (agent/container_events.py) keep plain
counts that their own threads update. Every label takes its values from a closed set (agent/state.py
and the tuples below) and every value of that set is emitted from the first scrape on, as 0 when
nothing happened yet, so `rate()` and `increase()` see the first event.

Counters count since the agent started: an agent restart resets them (normal Prometheus counter
reset); a dockerd restart does not, because they live in the agent.
"""

from __future__ import annotations

import bisect
import math
import platform
import threading
from typing import Callable, Iterable, Iterator, Mapping, Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from agent.managed import MANAGED_FILES
from agent.runtime import RESULTS as RUNTIME_RESULTS
from agent.shim_records import SHIM_CLASSES
from agent.state import (
    DOCKERD_STATES,
    EXEC_MODES,
    RELOAD_RESULTS,
    REPAIR_REASONS,
    RESTART_REASONS,
    RUNNING,
    UPDATE_RESULTS,
    Snapshot,
)

PREFIX = "armhf_agent_"
BUILD_RESULTS = ("success", "failure")
# Seconds; from a `docker run --rm alpine true` to a multi-hour emulated compile.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)


def closed_set(known: Iterable[str], seen: Iterable[str]) -> tuple[str, ...]:
    """The known label values, then any value the code produced that the tuple does not list yet
    (still bounded: values come from the agent's code, never from outside)."""
    known = tuple(known)
    return known + tuple(sorted(set(seen) - set(known)))


def counter(name: str, documentation: str, label: str, values: Iterable[str],
            counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
    for value in closed_set(values, counts):
        family.add_metric([value], counts.get(value, 0))
    return family


def one_hot(name: str, documentation: str, label: str, values: Iterable[str], current: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=[label])
    for value in closed_set(values, [current]):
        family.add_metric([value], 1 if value == current else 0)
    return family


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


class Histogram:
    """Cumulative bucket counts and a sum; the caller serialises access (one lock per owner)."""

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # last slot: above the largest bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
        return HistogramMetricFamily(PREFIX + name, documentation, buckets=buckets, sum_value=self.total)


class AgentCollector(Collector):
    """Health metrics from the latest Snapshot; registers itself in `registry`."""

    def __init__(self, snapshot: Callable[[], Snapshot], registry: CollectorRegistry):
        self._snapshot = snapshot
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:        # scraped before the agent's first step: nothing to say yet
            return
        d, payload = snap.dockerd, snap.payload

        build = InfoMetricFamily(PREFIX + "build", "The agent's version and Python", labels=["version", "python"])
        build.add_metric([snap.version, platform.python_version()], {})
        yield build
        yield gauge("start_time_seconds", "When the agent started (seconds since epoch)", snap.started_at)
        yield gauge("last_step_timestamp_seconds",
                    "When the agent last completed a loop step (seconds since epoch); stale = agent stuck",
                    snap.last_step_at)
        yield one_hot("exec_mode", "How this host executes armhf code (1 = current mode)", "mode", EXEC_MODES,
                      snap.exec_mode)
        yield counter("config_reloads_total", "Config reloads by result", "result", RELOAD_RESULTS, snap.reloads)

        yield gauge("dockerd_up", "1 when dockerd is running and answered its last /_ping",
                    1 if d.state == RUNNING and d.ping_ok else 0)
        yield one_hot("dockerd_state", "The supervisor's dockerd state (1 = current state)", "state",
                      DOCKERD_STATES, d.state)
        yield counter("dockerd_restarts_total", "dockerd restarts by reason", "reason", RESTART_REASONS, d.restarts)
        if d.started_at is not None:
            yield gauge("dockerd_start_time_seconds", "When the current dockerd process started (seconds since epoch)",
                        d.started_at)
        if d.ping_seconds is not None:
            yield gauge("dockerd_ping_latency_seconds", "Latency of the last successful /_ping", d.ping_seconds)
        if d.platform_os:
            info = InfoMetricFamily(PREFIX + "dockerd_platform", "The platform dockerd reports for itself",
                                    labels=["os", "arch", "variant"])
            info.add_metric([d.platform_os, d.platform_arch, d.platform_variant], {})
            yield info

        info = InfoMetricFamily(PREFIX + "payload", "The Docker payload in docker.root", labels=["version", "arch"])
        info.add_metric([payload.version, payload.arch], {})
        yield info
        yield counter("payload_updates_total", "Payload updates by result", "result", UPDATE_RESULTS, payload.updates)

        files = {f.name: f for f in snap.files}
        ok = GaugeMetricFamily(PREFIX + "file_ok", "1 when the managed file is in place and correct", labels=["file"])
        repairs = CounterMetricFamily(PREFIX + "file_repairs", "Managed file repairs by reason",
                                      labels=["file", "reason"])
        for name in closed_set((spec.name for spec in MANAGED_FILES), files):
            state = files.get(name)
            if state is not None:
                ok.add_metric([name], 1 if state.ok else 0)
            counts = state.repairs if state is not None else {}
            for reason in closed_set(REPAIR_REASONS, counts):
                repairs.add_metric([name, reason], counts.get(reason, 0))
        yield ok
        yield repairs
        if snap.host_docker.enabled:
            yield gauge("host_docker_wired", "1 when the host's own docker.service runs with the runtime wrapper "
                        "first in its PATH (host_docker mode on)", 1 if snap.host_docker.wired else 0)


class ShimRecordLike(Protocol):
    """What ShimMetrics reads from a shim record (agent/shim_records.py's ShimRecord has these)."""

    time: float
    klass: str
    injected: bool
    exit_code: int | None
    duration_seconds: float | None


class ShimMetrics(Collector):
    """Invocations of the docker shim and the image builds it ran, from the shim's records.

    A build counts once its record carries an exit code (0 = success, anything else = failure); a
    build record without one (the shim was killed before the client returned) counts as an
    invocation only. Classes outside SHIM_CLASSES count as "other".
    """

    def __init__(self, registry: CollectorRegistry):
        self._lock = threading.Lock()
        self._invocations: dict[tuple[str, str], int] = {}
        self._builds: dict[str, int] = {}
        self._durations = Histogram()
        registry.register(self)

    def observe(self, records: Iterable[ShimRecordLike]) -> None:
        with self._lock:
            for record in records:
                klass = record.klass if record.klass in SHIM_CLASSES else "other"
                key = (klass, "true" if record.injected else "false")
                self._invocations[key] = self._invocations.get(key, 0) + 1
                if klass == "build" and record.exit_code is not None:
                    result = "success" if record.exit_code == 0 else "failure"
                    self._builds[result] = self._builds.get(result, 0) + 1
                    if record.duration_seconds is not None:
                        self._durations.observe(record.duration_seconds)

    def collect(self) -> list[Metric]:
        invocations = CounterMetricFamily(PREFIX + "shim_invocations",
                                          "docker client invocations through the shim, by command class and whether "
                                          "the hijacked cpuinfo was injected", labels=["class", "injected"])
        with self._lock:
            for klass in SHIM_CLASSES:
                for injected in ("true", "false"):
                    invocations.add_metric([klass, injected], self._invocations.get((klass, injected), 0))
            return [
                invocations,
                counter("image_builds_total", "Image builds through the shim by result", "result", BUILD_RESULTS,
                        self._builds),
                self._durations.family("image_build_duration_seconds", "Wall time of image builds through the shim"),
            ]


class RuntimeWrapperMetrics(Collector):
    """What the runtime wrapper did with each container's and build step's spec (its records,
    agent/runtime.py): injected the cpuinfo, left it (own_mount: the spec mounts its own; arm64: a
    64-bit Arm userland), or failed (the container started anyway, without the cpuinfo)."""

    LABELS = tuple(result.replace("-", "_") for result in RUNTIME_RESULTS)

    def __init__(self, registry: CollectorRegistry):
        self._lock = threading.Lock()
        self._runs: dict[str, int] = {}
        registry.register(self)

    def observe(self, records) -> None:
        with self._lock:
            for record in records:
                label = record.result.replace("-", "_")
                self._runs[label] = self._runs.get(label, 0) + 1

    def collect(self) -> list[Metric]:
        with self._lock:
            return [counter("runtime_wrapper_runs_total",
                            "Container and build-step specs the runtime wrapper saw, by what it did", "result",
                            self.LABELS, self._runs)]
