"""The supervised dockerd: an explicit state machine, advanced one `step()` at a time.

    STOPPED --start--> STARTING --/_ping ok--> RUNNING --exit--> BACKOFF --delay--> STARTING
       ^                  |  \\--exit--> BACKOFF                |  \\--hung / restart--> STOPPING
       |                  \\--start timeout--> STOPPING          |                          |
       +------------------------------------------------ exit --+--------------------------+
    BLOCKED: cannot start (payload missing or unsafe, personality refused); left as soon as the
             cause is gone.

The loop shell (agent.loop) calls `step()` whenever it wakes; step never sleeps, it returns how long
until it next needs to run. Side effects go through the Processes and DockerApi facades and the
clock, so the unit tests drive it with fakes and an injected clock.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

from .backoff import Backoff
from .processes import ProcessHandle, exit_description
from .state import RESTART_REASONS, DockerdState

log = logging.getLogger("armhf-agent.dockerd")

STOPPED, BLOCKED, STARTING, RUNNING, STOPPING, BACKOFF = "stopped", "blocked", "starting", "running", "stopping", "backoff"
# How often to poll while STARTING: a refused connect on a unix socket costs microseconds, and every
# poll interval is added to crash recovery.
START_POLL_SECONDS = 0.02
# moby starts its managed containerd with Pdeathsig=SIGKILL (libcontainerd containerdSysProcAttr): after
# dockerd dies, containerd dies a moment later. A dockerd started in between finds the dying containerd
# "still running" and waits 15 s for it (seen here: crash recovery 16 s instead of 0.3 s). So a start
# after an exit waits, without blocking the loop, until that containerd is gone (bounded).
CONTAINERD_EXIT_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class DockerdSpec:
    """Everything that decides how dockerd is started; a change means a restart."""

    dockerd: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    personality: str
    cpuinfo: str | None          # bind-mounted over /proc/cpuinfo in dockerd's own mount namespace
    socket_path: str
    pidfile: str
    containerd_pidfile: str      # the containerd dockerd manages (<exec-root>/containerd/containerd.pid)


@dataclass
class Timings:
    health_interval: float
    health_timeout: float
    health_failures: int
    start_timeout: float
    stop_timeout: float
    backoff_initial: float
    backoff_max: float
    stable_seconds: float


@dataclass
class _Run:
    """The current dockerd process and what we know of it."""

    handle: ProcessHandle
    spec: DockerdSpec | None      # None when adopted and not (yet) matched against a spec
    began: float                  # monotonic time it was spawned or adopted
    running_since: float | None = None
    failures: int = 0
    next_ping: float = 0.0
    stop_sent: float | None = None
    killed: bool = False


class DockerdSupervisor:
    def __init__(self, timings: Timings, processes, api, clock, log_path: str | None = None):
        self.t = timings
        self.processes = processes
        self.api = api
        self.clock = clock
        self.log_path = log_path
        self.state = STOPPED
        self.reason = ""
        self.spec: DockerdSpec | None = None
        self.blocked: str | None = None
        self.wanted = True
        self.run: _Run | None = None
        self.backoff = Backoff(timings.backoff_initial, timings.backoff_max, timings.stable_seconds)
        self.retry_at = 0.0
        self.orphan_wait_until = 0.0
        self.restart_reason: str | None = None   # set while STOPPING for a restart
        self.restarts = {r: 0 for r in RESTART_REASONS}
        self.last_restart_reason = ""
        self.last_restart_at: float | None = None
        self.ping_ok = False
        self.ping_seconds: float | None = None
        self.foreign_pings = 0
        self.adopted = False

    # -- inputs from the loop ------------------------------------------------------------------------
    def configure(self, spec: DockerdSpec | None, blocked: str | None, timings: Timings | None = None) -> None:
        """The desired dockerd (None with a reason in `blocked` when it cannot be started)."""
        if timings is not None:
            self.t = timings
            self.backoff.initial, self.backoff.cap, self.backoff.stable_seconds = (
                timings.backoff_initial, timings.backoff_max, timings.stable_seconds)
        self.spec = spec
        self.blocked = blocked if spec is None or blocked else None

    def request_restart(self, reason: str) -> None:
        """Graceful restart (reason "update" or "reload"), e.g. the binary or arguments changed."""
        if self.run is not None and self.state in (STARTING, RUNNING):
            self._begin_stop(reason)

    def adopt(self, handle: ProcessHandle, spec_matches: bool) -> None:
        # STOPPED -> RUNNING: adopted only once its socket answered (checked by the caller).
        now = self.clock.monotonic()
        self.run = _Run(handle=handle, spec=self.spec if spec_matches else None, began=now,
                        running_since=now, next_ping=now + self.t.health_interval)
        self.adopted = True
        self.ping_ok = True
        self._to(RUNNING, f"adopted running dockerd pid {handle.pid}")

    def shutdown(self) -> None:
        """Stop for good (agent exit): graceful stop, no restart."""
        self.wanted = False
        if self.run is not None and self.state != STOPPING:
            self._begin_stop(None)

    def detach(self) -> None:
        """Forget the process without touching it (agent upgrade: the next agent adopts it)."""
        self.wanted = False
        self.run = None
        self._to(STOPPED, "detached; dockerd left running for the next agent to adopt")

    # -- the step ------------------------------------------------------------------------------------
    def step(self) -> float:
        """Advance the state machine once. Returns seconds until the next step is needed."""
        now = self.clock.monotonic()
        if self.run is not None:
            status = self.processes.poll(self.run.handle)
            if status is not None:
                self._exited(status, now)
        if self.run is None:
            return self._step_without_process(now)
        if self.state == STARTING:
            return self._step_starting(now)
        if self.state == RUNNING:
            return self._step_running(now)
        if self.state == STOPPING:
            return self._step_stopping(now)
        return self.t.health_interval

    def _step_without_process(self, now: float) -> float:
        if not self.wanted:
            if self.state != STOPPED:
                self._to(STOPPED, "stopped")
            return 3600.0
        if self.spec is None or self.blocked:
            if self.state != BLOCKED or self.reason != self.blocked:
                # STOPPED/BACKOFF -> BLOCKED
                self._to(BLOCKED, self.blocked or "no dockerd to start")
            return self.t.health_interval
        if self.state == BACKOFF and now < self.retry_at:
            return self.retry_at - now
        if now < self.orphan_wait_until and self._managed_containerd_alive():
            return 0.02
        self._start(now)
        return START_POLL_SECONDS

    def _start(self, now: float) -> None:
        spec = self.spec
        assert spec is not None
        try:
            handle = self.processes.launch(list(spec.argv), dict(spec.env), spec.personality, spec.cpuinfo,
                                           self.log_path)
        except OSError as exc:
            # -> BACKOFF: could not even spawn (exec failure is reported by the launcher's exit instead)
            self._schedule_retry(now, "exited", f"cannot spawn {spec.dockerd}: {exc}")
            return
        self.run = _Run(handle=handle, spec=spec, began=now)
        self.adopted = False
        self.ping_ok = False
        # STOPPED/BACKOFF/BLOCKED -> STARTING
        self._to(STARTING, f"started {spec.dockerd} (pid {handle.pid})")

    def _step_starting(self, now: float) -> float:
        run = self.run
        if self._ping(min(self.t.health_timeout, 1.0)):
            run.running_since = now
            run.next_ping = now + self.t.health_interval
            # STARTING -> RUNNING: only a dockerd that answers its API is running.
            self._to(RUNNING, f"pid {run.handle.pid} answers /_ping after {self.clock.monotonic() - run.began:.1f}s")
            return self.t.health_interval
        if now - run.began > self.t.start_timeout:
            self._count_restart("start_timeout")
            # STARTING -> STOPPING
            self._begin_stop("start_timeout", f"no /_ping answer within {self.t.start_timeout:g}s")
            return 0.05
        return START_POLL_SECONDS

    def _step_running(self, now: float) -> float:
        run = self.run
        if run.running_since is not None:
            self.backoff.note_uptime(now - run.running_since)
        if now < run.next_ping:
            return run.next_ping - now
        if self._ping(self.t.health_timeout):
            if run.failures:
                log.info("dockerd: /_ping answers again after %d failure(s)", run.failures)
            run.failures = 0
        else:
            run.failures += 1
            log.warning("dockerd: /_ping failed (%d of %d allowed)", run.failures, self.t.health_failures)
            if run.failures >= self.t.health_failures:
                self._count_restart("hung")
                # RUNNING -> STOPPING: hung (a SIGSTOPped dockerd lands here)
                self._begin_stop("hung", f"{run.failures} consecutive failed pings")
                return 0.05
        after = self.clock.monotonic()
        run.next_ping = after + self.t.health_interval
        return self.t.health_interval

    def _step_stopping(self, now: float) -> float:
        run = self.run
        if not run.killed and run.stop_sent is not None and now - run.stop_sent >= self.t.stop_timeout:
            log.warning("dockerd: pid %d still alive %gs after SIGTERM; sending SIGKILL", run.handle.pid,
                        self.t.stop_timeout)
            self.processes.signal(run.handle, signal.SIGKILL)
            run.killed = True
        return 0.05

    # -- transitions ---------------------------------------------------------------------------------
    def _begin_stop(self, restart_reason: str | None, detail: str = "") -> None:
        run = self.run
        self.restart_reason = restart_reason
        if restart_reason in ("update", "reload"):
            self._count_restart(restart_reason)
        run.stop_sent = self.clock.monotonic()
        self.processes.signal(run.handle, signal.SIGTERM)
        # A SIGSTOPped dockerd keeps SIGTERM pending until continued: continue it so it can shut down
        # cleanly instead of always waiting for SIGKILL.
        self.processes.signal(run.handle, signal.SIGCONT)
        why = restart_reason or "agent stopping"
        # RUNNING/STARTING -> STOPPING
        self._to(STOPPING, f"SIGTERM to pid {run.handle.pid} ({why}{': ' + detail if detail else ''})")

    def _managed_containerd_alive(self) -> bool:
        pid = self.processes.read_pidfile(self.spec.containerd_pidfile)
        state = self.processes.state(pid) if pid else None
        if state == "Z":
            # Dead, but until its new parent reaps it (systemd at once; some inits take seconds) dockerd's
            # kill(pid, 0) would call it "still running". Its pidfile is stale: remove it and go.
            self.processes.remove_file(self.spec.containerd_pidfile)
            return False
        return state is not None

    def _exited(self, status: int, now: float) -> None:
        run = self.run
        self.run = None
        self.orphan_wait_until = now + CONTAINERD_EXIT_WAIT_SECONDS
        self.ping_ok = False
        self.adopted = False
        what = exit_description(status)
        if self.state == STOPPING:
            reason = self.restart_reason
            self.restart_reason = None
            if reason is None or not self.wanted:
                # STOPPING -> STOPPED
                self._to(STOPPED, f"pid {run.handle.pid} {what}")
                return
            if reason in ("update", "reload"):
                # STOPPING -> STOPPED, started again at once by the next step: intended restarts do
                # not count against the crash backoff.
                self._to(STOPPED, f"pid {run.handle.pid} {what}; restarting ({reason})")
                return
            # hung / start_timeout: STOPPING -> BACKOFF (already counted)
            self._schedule_retry(now, None, f"pid {run.handle.pid} {what} after {reason}")
            return
        if not self.wanted:
            self._to(STOPPED, f"pid {run.handle.pid} {what}")
            return
        # RUNNING/STARTING -> BACKOFF: it died on its own
        self._schedule_retry(now, "exited", f"pid {run.handle.pid} {what}")

    def _schedule_retry(self, now: float, count_as: str | None, detail: str) -> None:
        if count_as:
            self._count_restart(count_as)
        delay = self.backoff.next_delay()
        self.retry_at = now + delay
        self._to(BACKOFF, f"{detail}; next start in {delay:g}s")

    def _count_restart(self, reason: str) -> None:
        self.restarts[reason] += 1
        self.last_restart_reason = reason
        self.last_restart_at = self.clock.time()

    def _ping(self, timeout: float) -> bool:
        try:
            latency, answering = self.api.ping(timeout)
        except Exception:  # any failure to answer (refused, timeout, garbage) is a failed probe
            self.ping_ok = False
            return False
        pid = self.run.handle.pid if self.run else None
        if answering != pid:
            # Another daemon (the distribution's docker.service, a leftover dockerd) answers on our
            # socket: that is not our dockerd being healthy.
            self.foreign_pings += 1
            if self.foreign_pings == 1 or self.foreign_pings % 100 == 0:
                log.error("dockerd: pid %s answers on %s, not ours (pid %s): stop it (systemctl disable "
                          "--now docker.service docker.socket?)", answering, self.api.sock_path, pid)
            self.ping_ok = False
            return False
        self.foreign_pings = 0
        self.ping_seconds = latency
        self.ping_ok = True
        return True

    def _to(self, state: str, reason: str) -> None:
        if state != self.state or reason != self.reason:
            log.info("dockerd: %s -> %s: %s", self.state.upper(), state.upper(), reason)
        self.state = state
        self.reason = reason

    # -- outputs -------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.run.handle.pid if self.run else None

    def snapshot(self, platform: dict[str, str] | None = None) -> DockerdState:
        run = self.run
        started_at = self.processes.start_time(run.handle) if run else None
        p = platform or {}
        return DockerdState(
            state=self.state, reason=self.reason, pid=self.pid, started_at=started_at, adopted=self.adopted,
            restarts=dict(self.restarts), last_restart_reason=self.last_restart_reason,
            last_restart_at=self.last_restart_at, ping_ok=self.ping_ok and self.state == RUNNING,
            ping_seconds=self.ping_seconds, backoff_seconds=self.backoff.current(),
            platform_os=p.get("os", ""), platform_arch=p.get("arch", ""), platform_variant=p.get("variant", ""),
            server_version=p.get("version", ""),
        )
