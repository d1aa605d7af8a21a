"""Starts the metrics capability: the collectors, the event follower, the shim records reader and the
HTTP endpoint. The agent hands it the config and a way to read its latest Snapshot, and calls
`on_step(snapshot)`, `reconfigure(config)` and `stop`: the metrics never reach into the agent."""

from __future__ import annotations

import logging
import time
from typing import Callable

from prometheus_client import CollectorRegistry

from .container_events import ContainerEventCounter
from .docker_api import DockerApi
from .http_server import MetricsServer
from . import runtime
from .metrics import AgentCollector, RuntimeWrapperMetrics, ShimMetrics
from .shim_records import ShimRecordReader, records_path
from .state import RUNNING, Snapshot

log = logging.getLogger("armhf-agent.metrics")


class AgentMetrics:
    def __init__(self, config, latest: Callable[[], Snapshot | None]):
        self.config = config
        self._latest = latest
        self.registry = CollectorRegistry()
        AgentCollector(latest, self.registry)
        self.shim = ShimMetrics(self.registry)
        self.records = ShimRecordReader(records_path(config))
        self.wrapper = RuntimeWrapperMetrics(self.registry)
        self.wrapper_records = ShimRecordReader(runtime.records_path(config), parse=runtime.parse_record)
        self.socket = config.docker.socket_path
        self.dockerd_pid: int | None = None
        self.events = ContainerEventCounter(self._client_factory(self.socket), time.time, self.registry)
        self.server = self._make_server(config)

    def _make_server(self, config) -> MetricsServer:
        return MetricsServer.from_config(config.metrics, self.registry, self._dockerd_metrics_addr)

    @property
    def url(self) -> str:
        return self.server.url

    @staticmethod
    def _client_factory(socket_path: str):
        return lambda: DockerApi(socket_path)

    def _dockerd_metrics_addr(self) -> str | None:
        snap = self._latest()
        c = self.config
        if not c.metrics.docker_metrics or snap is None or snap.dockerd.state != RUNNING:
            return None
        return c.metrics.docker_metrics_listen

    def start(self) -> "AgentMetrics":
        self.server.start()
        self.events.start()
        log.info("metrics: serving %s", self.server.url)
        return self

    def reconfigure(self, config) -> None:
        """A reloaded config: a new dockerd socket is followed from the next step; a new listener (address,
        TLS) replaces the server. The counters live in the collectors and are kept."""
        old, self.config = self.config, config
        if config.docker.socket_path != self.socket:
            self.socket = config.docker.socket_path
            self.events.set_client_factory(self._client_factory(self.socket))
        if config.metrics != old.metrics:
            self.server.stop()
            self.server = self._make_server(config)
            self.server.start()
            log.info("metrics: serving %s", self.server.url)
        if records_path(config) != records_path(old):
            self.records.close()
            self.records = ShimRecordReader(records_path(config))
            self.wrapper_records.close()
            self.wrapper_records = ShimRecordReader(runtime.records_path(config), parse=runtime.parse_record)

    def on_step(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            d = snapshot.dockerd
            if d.state == RUNNING and d.pid != self.dockerd_pid:
                self.dockerd_pid = d.pid
                self.events.kick()
        self.shim.observe(self.records.read_new())
        self.wrapper.observe(self.wrapper_records.read_new())

    def stop(self) -> None:
        self.events.stop()
        self.server.stop()
        self.records.close()
        self.wrapper_records.close()


def start_metrics(config, latest: Callable[[], Snapshot | None]) -> AgentMetrics:
    return AgentMetrics(config, latest).start()
