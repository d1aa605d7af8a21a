"""Starts the metrics capability for a running Agent: the collectors, the event follower, the shim
records reader and the HTTP endpoint. The agent only calls `start_metrics`, `on_step` and `stop`."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry

from .container_events import ContainerEventCounter
from .docker_api import DockerApi
from .dockerd import RUNNING
from .http_server import MetricsServer
from .metrics import AgentCollector, ShimMetrics
from .shim_records import ShimRecordReader
from .shimfile import records_path

log = logging.getLogger("armhf-agent.metrics")


class AgentMetrics:
    def __init__(self, agent):
        self.agent = agent
        c = agent.config
        self.registry = CollectorRegistry()
        AgentCollector(lambda: agent.latest, self.registry)
        self.shim = ShimMetrics(self.registry)
        self.records = ShimRecordReader(records_path(c))
        self.socket = c.docker.socket_path
        self.dockerd_pid: int | None = None
        self.events = ContainerEventCounter(self._client_factory(self.socket), time.time, self.registry)
        self.server = MetricsServer.from_config(c.metrics, self.registry, self._dockerd_metrics_addr)

    @staticmethod
    def _client_factory(socket_path: str):
        return lambda: DockerApi(socket_path)

    def _dockerd_metrics_addr(self) -> str | None:
        c = self.agent.config
        if not c.metrics.docker_metrics or self.agent.supervisor.state != RUNNING:
            return None
        return c.metrics.docker_metrics_listen

    def start(self) -> "AgentMetrics":
        self.server.start()
        self.events.start()
        log.info("metrics: serving %s", self.server.url)
        return self

    def on_step(self) -> None:
        socket_path = self.agent.config.docker.socket_path
        if socket_path != self.socket:
            self.socket = socket_path
            self.events.set_client_factory(self._client_factory(socket_path))
        sup = self.agent.supervisor
        if sup.state == RUNNING and sup.pid != self.dockerd_pid:
            self.dockerd_pid = sup.pid
            self.events.kick()
        self.shim.observe(self.records.read_new())

    def stop(self) -> None:
        self.events.stop()
        self.server.stop()
        self.records.close()


def start_metrics(agent) -> AgentMetrics:
    return AgentMetrics(agent).start()
