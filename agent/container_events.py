"""Containers started and exited, counted from dockerd's events stream.

Results of an exit, in order of precedence:
  oom      an `oom` event was seen for the run before its `die` (or, for an exit found by a re-list,
           the daemon's State.OOMKilled);
  success  exit code 0;
  killed   exit code 137 or 143 (128 + SIGKILL / SIGTERM: `docker kill`, `docker stop`, a dockerd
           restart stopping its containers), or any non-zero exit after a `kill` event for the run
           (`docker kill -s ...`, `docker rm -f`);
  failure  any other non-zero exit (including deaths by other signals nobody asked for, e.g. SIGSEGV);
  unknown  a run whose end was never observable: the container was removed, or restarted by its
           restart policy, while the stream was down. Counted so started - exited stays the number
           of running containers; no duration is observed for it.

The stream is not trusted across gaps (../shared/reference/platform.md: dockerd replays only its
last 256 events and loses them when it restarts). On every (re)connect the counter takes a
boundary time B, re-lists (and inspects) the containers to account for everything that happened
before B, then follows the stream from `since=B`; dockerd replays what happened during the list
itself. A run is never counted twice: a `start` for a run already tracked and a `die`/`oom`/`kill`
for a run not tracked are ignored. The only state kept is one small record per live container
(dropped at its `die`) plus, until the stream has moved `SETTLE_SECONDS` past them, the ids of runs a
re-list has already counted as exited; memory stays flat however many containers come and go.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agent.clock import SystemClock
from agent.docker_api import DockerApi, NotFound
from agent.ratelimit import RateLimitedLog
from agent.metrics import PREFIX, Histogram, counter

log = logging.getLogger("armhf-agent.events")

RESULTS = ("success", "failure", "oom", "killed", "unknown")
KILLED_EXIT_CODES = (128 + 9, 128 + 15)
RECONNECT_INITIAL_SECONDS = 0.5
RECONNECT_CAP_SECONDS = 15.0
ERROR_LOG_INTERVAL_SECONDS = 60.0
# How long after a re-listed run's exit its own `start` event may still arrive through the stream:
# dockerd logs `start` after the process is running, so a very short run can exit first.
SETTLE_SECONDS = 2.0
NS = 1_000_000_000


@dataclass
class _Run:
    started_ns: int
    oom: bool = False
    kill_requested: bool = False


def classify(exit_code: int, oom: bool, kill_requested: bool) -> str:
    if oom:
        return "oom"
    if exit_code == 0:
        return "success"
    if exit_code in KILLED_EXIT_CODES or kill_requested:
        return "killed"
    return "failure"


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def rfc3339_ns(text: str) -> int | None:
    """dockerd's StartedAt/FinishedAt as nanoseconds since epoch; None for its zero time
    (0001-01-01T00:00:00Z = never)."""
    m = _RFC3339.match(text or "")
    if not m or text.startswith("0001-"):
        return None
    offset = "+00:00" if m.group(3) == "Z" else m.group(3)
    seconds = int(datetime.fromisoformat(m.group(1) + offset).timestamp())
    return seconds * NS + int((m.group(2) or "0").ljust(9, "0"))


def since_param(ns: int) -> str:
    return f"{ns // NS}.{ns % NS:09d}"


class ContainerEventCounter(Collector):
    """Follows dockerd's container events in a thread; exports started/exited counts and run durations.

    `client_factory` returns a DockerApi (agent/docker_api.py) for the current dockerd socket; making
    one never talks to the daemon. `clock` returns wall-clock seconds since epoch, the clock dockerd
    stamps its events with.
    """

    def __init__(self, client_factory: Callable[[], DockerApi], clock: Callable[[], float],
                 registry: CollectorRegistry):
        self._client_factory = client_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream = None
        # Everything that happened before this time (ns) has been accounted for; None = never connected.
        self._watermark: int | None = None
        self._live: dict[str, _Run] = {}
        self._settled: dict[str, int] = {}          # id -> FinishedAt (ns) of a run a re-list counted
        self._started = 0
        self._exited: dict[str, int] = {}
        self._durations = Histogram()
        self._connected = False
        self._resyncs = 0
        self._errors = RateLimitedLog(log, SystemClock(), ERROR_LOG_INTERVAL_SECONDS)
        registry.register(self)

    # -- the pure steps (tests drive these directly) --------------------------------------------

    def handle(self, event: dict[str, Any]) -> None:
        """Accounts for one decoded event of the stream."""
        if event.get("Type") != "container":
            return
        exited = self._handle(event)
        if exited is None:
            return
        code, run, duration, cid = exited
        oom = run.oom
        if not oom and code == 128 + 9 and not run.kill_requested:
            # A SIGKILL nobody asked for: often the kernel's OOM killer, but dockerd emits no `oom` event
            # where the cgroup setup gives it no OOM notification (issue 12: this CI machine's), while
            # the container's State.OOMKilled still says so. A --rm container may be gone already:
            # then it stays "killed".
            oom = self._oom_killed(cid)
        with self._lock:
            self._count_exit(classify(code, oom, run.kill_requested), duration)

    def _oom_killed(self, cid: str) -> bool:
        try:
            return bool(((self._client_factory().inspect_container(cid, 5.0) or {}).get("State") or {}).get("OOMKilled"))
        except Exception:  # noqa: BLE001 - gone (--rm), daemon busy: counted as killed, never a lost exit
            return False

    def _handle(self, event: dict[str, Any]):
        """The bookkeeping under the lock; a container's exit is returned (exit code, its run, its
        duration, its id) to be counted once the lock is released."""
        action = event.get("Action", "")
        cid = event.get("id") or event.get("Actor", {}).get("ID", "")
        t = event.get("timeNano") or int(event.get("time", 0)) * NS
        with self._lock:
            self._watermark = max(self._watermark or 0, t)
            if self._settled:
                self._settled = {k: f for k, f in self._settled.items() if t <= f + SETTLE_SECONDS * NS}
            run = self._live.get(cid)
            if action == "start":
                if run is None and cid not in self._settled:
                    self._live[cid] = _Run(started_ns=t)
                    self._started += 1
            elif run is None:
                return
            elif action == "oom":
                run.oom = True
            elif action == "kill":
                run.kill_requested = True
            elif action == "die":
                del self._live[cid]
                try:
                    code = int(event.get("Actor", {}).get("Attributes", {}).get("exitCode", ""))
                except ValueError:
                    code = -1
                return code, run, (t - run.started_ns) / NS, cid
        return None

    def reconcile(self, containers: Iterable[dict[str, Any]], boundary_ns: int) -> None:
        """Accounts for what happened before `boundary_ns` from inspected containers (the output of
        `inspect_container` for each listed container); the stream replays from the boundary on."""
        with self._lock:
            seen = set()
            watermark = boundary_ns if self._watermark is None else self._watermark
            self._settled = {}
            for c in containers:
                cid, st = c["Id"], c["State"]
                seen.add(cid)
                started, finished = rfc3339_ns(st.get("StartedAt", "")), rfc3339_ns(st.get("FinishedAt", ""))
                if started is None or started >= boundary_ns:
                    continue              # never started, or started after the boundary: the stream's
                exited = not st.get("Running") and finished is not None and finished < boundary_ns
                run = self._live.get(cid)
                if run is not None and started > run.started_ns:
                    # The tracked run ended unseen and a new one began (dockerd stamps StartedAt before
                    # it logs `start`, so the tracked run's own StartedAt is never later than our record).
                    del self._live[cid]
                    self._count_exit("unknown", None)
                    run = None
                if run is None and started < watermark:
                    if st.get("Running"):
                        # Running since before we first looked: its exit is counted, its start is not
                        # (counters count what happened since the agent started).
                        self._live[cid] = _Run(started_ns=started)
                    continue
                if run is None:
                    self._started += 1    # began during the gap
                    run = _Run(started_ns=started)
                if exited:
                    self._live.pop(cid, None)
                    self._settled[cid] = finished
                    result = classify(st.get("ExitCode", -1), bool(st.get("OOMKilled")) or run.oom,
                                      run.kill_requested)
                    self._count_exit(result, (finished - run.started_ns) / NS)
                else:
                    self._live[cid] = run   # running, or exited after the boundary: its die is streamed
            for cid in [cid for cid in self._live if cid not in seen]:
                del self._live[cid]       # removed while we were not watching
                self._count_exit("unknown", None)
            self._watermark = boundary_ns
            self._resyncs += 1

    def _count_exit(self, result: str, duration: float | None) -> None:
        self._exited[result] = self._exited.get(result, 0) + 1
        if duration is not None:
            self._durations.observe(max(duration, 0.0))

    def tracked(self) -> int:
        """Per-container records held (live runs plus recently settled ids)."""
        with self._lock:
            return len(self._live) + len(self._settled)

    # -- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="container-events", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """A new dockerd is up (the supervisor knows before our backoff does): reconnect now."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._close_stream()
        if self._thread is not None:
            self._thread.join(timeout)

    def set_client_factory(self, client_factory: Callable[[], DockerApi]) -> None:
        """For a dockerd restarted on another socket: the current stream is closed and the thread
        reconnects (and re-lists) through the new factory."""
        with self._lock:
            self._client_factory = client_factory
        self._close_stream()

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - the socket may already be gone; closing is best effort
                pass

    def _run(self) -> None:
        delay = RECONNECT_INITIAL_SECONDS
        while not self._stopping.is_set():
            try:
                if self._follow():
                    delay = RECONNECT_INITIAL_SECONDS
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything the daemon does
                self._log_error(exc)
            if self._set_connected(False):
                log.info("docker events: disconnected; reconnecting (backoff up to %.0fs), "
                         "will re-list containers", RECONNECT_CAP_SECONDS)
            if self._wake.wait(delay):
                self._wake.clear()
                delay = RECONNECT_INITIAL_SECONDS
            else:
                delay = min(delay * 2, RECONNECT_CAP_SECONDS)
            if self._stopping.is_set():
                break

    def _follow(self) -> bool:
        """One connection: re-list, then follow until the stream ends. True if it connected."""
        with self._lock:
            factory = self._client_factory
        # Outside the lock: building the client may talk to dockerd, and a scrape (collect) must
        # never wait on Docker.
        client = factory()
        boundary = int(self._clock() * NS)
        inspected = []
        for summary in client.containers(all=True):
            if summary.get("State") == "created":
                continue                  # never started: nothing to account for yet
            try:
                inspected.append(client.inspect_container(summary["Id"]))
            except NotFound:
                continue                  # removed between list and inspect
        self.reconcile(inspected, boundary)
        stream = client.events(since=since_param(boundary), filters={"type": ["container"]})
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():
            self._close_stream()
            return True
        if self._set_connected(True):
            log.info("docker events: connected; %d containers tracked", self.tracked())
        for event in stream:
            self.handle(event)
        return True

    def _set_connected(self, connected: bool) -> bool:
        """Returns True when this changes the state."""
        with self._lock:
            changed, self._connected = self._connected != connected, connected
            return changed

    def _log_error(self, exc: Exception) -> None:
        # One key: while dockerd is down every reconnect fails, each time with another errno or text.
        self._errors("events", logging.WARNING, "docker events: %s: %s", type(exc).__name__, exc)

    # -- the exporter ---------------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        with self._lock:
            started = CounterMetricFamily(PREFIX + "containers_started", "Containers started since the agent started")
            started.add_metric([], self._started)
            connected = GaugeMetricFamily(PREFIX + "docker_events_connected",
                                          "1 while the agent follows dockerd's events stream", value=int(self._connected))
            resyncs = CounterMetricFamily(PREFIX + "docker_events_resyncs",
                                          "Re-lists of containers after (re)connecting to the events stream")
            resyncs.add_metric([], self._resyncs)
            return [
                started,
                counter("containers_exited_total", "Containers exited by result", "result", RESULTS, self._exited),
                self._durations.family("container_run_duration_seconds", "Run time of containers, start to exit"),
                connected,
                resyncs,
            ]
