"""Helpers for the metrics tests: promtool, scraping, a realistic snapshot, PromQL metric names."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.state import DockerdState, FileState, HostDockerState, PayloadState, Snapshot

REPO = Path(__file__).resolve().parent.parent


def promtool() -> str | None:
    """promtool from $PROMTOOL, PATH, or .cache/promtool (Debian's `prometheus` package extracted
    there by `apt-get download prometheus && dpkg -x prometheus_*.deb .cache/promtool`)."""
    candidates = [os.environ.get("PROMTOOL"), shutil.which("promtool"),
                  str(REPO / ".cache/promtool/usr/bin/promtool")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


PROMTOOL_MISSING = ("promtool not found: set PROMTOOL, put it on PATH, or run `apt-get download prometheus && "
                    "dpkg -x prometheus_*.deb .cache/promtool` in the repository")


def scrape(url: str, accept: str | None = None, cafile: str | None = None) -> tuple[str, str]:
    """Returns (content type, body) of a GET."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset of label items): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples[(name, frozenset(labels.items()))]


def sample_names(text: str) -> set[str]:
    return {name for name, _ in samples(text)}


def realistic_snapshot(now: float) -> Snapshot:
    return Snapshot(
        version="0.1.0", pid=4242, state="running", started_at=now - 3600, last_step_at=now - 2, steps=700,
        exec_mode="native", reloads={"applied": 1},
        dockerd=DockerdState(state="running", pid=812, started_at=now - 1800, restarts={"exited": 1, "hung": 1},
                             ping_ok=True, ping_seconds=0.004, platform_os="linux", platform_arch="arm",
                             platform_variant="v7", server_version="20.10.24"),
        payload=PayloadState(root="/opt/docker", state="ok", version="20.10.24", arch="arm", updates={"applied": 1}),
        files=(FileState(name="cpuinfo", path="/hijacked-armhf-cpuinfo", ok=True, repairs={"missing": 2}),
               FileState(name="shim", path="/usr/local/bin/docker", ok=False, problem="content differs",
                         repairs={"content": 1})),
        host_docker=HostDockerState(enabled=True, unit="docker.service", wired=True, pid=640),
    )


@dataclass(frozen=True)
class Record:
    """Stands for agent/shim_records.ShimRecord (same fields)."""

    time: float
    klass: str
    injected: bool
    exit_code: int | None = None
    duration_seconds: float | None = None


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, label names
    in grouping clauses or matchers, strings, durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                       # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                                  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                 # range selectors
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                                # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if m.group(2) or m.group(1) in _PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def live_sample_names() -> set[str]:
    """Sample names of a real scrape over HTTP of every collector the agent registers, the health
    collector fed a realistic snapshot."""
    import time

    from prometheus_client import CollectorRegistry

    from agent.container_events import ContainerEventCounter
    from agent.http_server import MetricsServer
    from agent.metrics import AgentCollector, RuntimeWrapperMetrics, ShimMetrics

    registry = CollectorRegistry()
    AgentCollector(lambda: realistic_snapshot(time.time()), registry)
    ShimMetrics(registry)
    RuntimeWrapperMetrics(registry)
    ContainerEventCounter(lambda: None, time.time, registry)
    server = MetricsServer("127.0.0.1", 0, registry, "", "", lambda: None)
    server.start()
    try:
        return sample_names(scrape(server.url)[1])
    finally:
        server.stop()
