"""The supervised dockerd: an explicit state machine, advanced one `step()` at a time.

    STOPPED --start--> STARTING --/_ping ok--> RUNNING --exit--> BACKOFF --delay--> STARTING
       ^                  |  \\--exit--> BACKOFF                |  \\--hung / restart--> STOPPING
       |                  \\--start timeout--> STOPPING          |                          |
       +------------------------------------------------ exit --+--------------------------+
    BLOCKED: cannot start (payload missing or unsafe, personality refused, a foreign dockerd holds
             the pidfile); left as soon as the cause is gone.
    adopt:   at agent start, the pidfile's dockerd of this payload becomes ours: RUNNING once it answers,
             STARTING while it may still be starting (younger than the start timeout), else RUNNING with
             its pings failing, so a hung one is replaced by the hang rule (never left unsupervised).

The loop shell (agent.loop) calls `step()` whenever it wakes; step never sleeps, it returns how long
until it next needs to run. Side effects go through the Processes and DockerApi facades and the
clock, so the unit tests drive it with fakes and an injected clock.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from .backoff import Backoff
from .launch import PER_LINUX32, PER_MASK
from .processes import DEFAULT_PATH, ProcessHandle, exit_description
from .ratelimit import RateLimitedLog
from .state import BACKOFF, BLOCKED, RESTART_REASONS, RUNNING, STARTING, STOPPED, STOPPING, DockerdState

log = logging.getLogger("armhf-agent.dockerd")

__all__ = ["BACKOFF", "BLOCKED", "RUNNING", "STARTING", "STOPPED", "STOPPING", "DockerdSpec", "DockerdSupervisor",
           "Timings"]
# How often to poll while STARTING: a refused connect on a unix socket costs microseconds, and every
# poll interval is added to crash recovery.
START_POLL_SECONDS = 0.02
# moby starts its managed containerd with Pdeathsig=SIGKILL (libcontainerd containerdSysProcAttr): after
# dockerd dies, containerd dies a moment later. A dockerd started in between finds the dying containerd
# "still running" and waits 15 s for it (seen here: crash recovery 16 s instead of 0.3 s). So a start
# after an exit waits, without blocking the loop, until that containerd is gone (bounded).
CONTAINERD_EXIT_WAIT_SECONDS = 5.0


# Variables that must not reach dockerd: with NOTIFY_SOCKET set it sends its own READY=1/STOPPING=1
# to our unit (../shared/reference/packaging-and-systemd.md).
SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# Variables only the agent sets for dockerd: one inherited from the agent's own environment would
# otherwise survive turning the wrapper off.
_OURS = ("DOCKER_BUILDKIT_RUNC_COMMAND",)


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
    # Bound over /run/containerd in dockerd's namespace so it manages its own containerd (agent/launch.py
    # hide_system_containerd); None when docker.args name a containerd to use (--containerd).
    containerd_state: str | None = None
    # Where dockerd's mount namespace is kept, for the next dockerd to join (agent/launch.py enter_namespace).
    namespace_pin: str | None = None

    @classmethod
    def from_config(cls, config, payload, environ: dict[str, str], path_first: tuple[str, ...] = (),
                    extra_env: dict[str, str] | None = None) -> "DockerdSpec":
        """dockerd's argv and environment for this config and payload. `path_first`: folders put before
        the payload's on PATH, and `extra_env`: variables, both for the runtime wrapper (agent.runtime)."""
        d = config.docker
        argv = [payload.dockerd, "-H", d.host, "--data-root", d.data_root, "--exec-root", d.exec_root,
                "--pidfile", d.pidfile]
        if d.config_file:
            argv += ["--config-file", d.config_file]
        if config.metrics.docker_metrics:
            argv += ["--metrics-addr", config.metrics.docker_metrics_listen]
        argv += list(d.args)
        env = {k: v for k, v in environ.items() if k not in SCRUBBED_ENV and k not in _OURS}
        env.update(extra_env or {})
        # The payload's folders first: dockerd finds containerd, runc, docker-init, docker-proxy on PATH.
        env["PATH"] = ":".join([*path_first, *payload.path_dirs(), env.get("PATH") or DEFAULT_PATH])
        system_containerd = any(a == "--containerd" or a.startswith("--containerd=") for a in d.args)
        return cls(dockerd=payload.dockerd, argv=tuple(argv), env=tuple(sorted(env.items())),
                   personality=d.personality, cpuinfo=config.cpuinfo.path if config.cpuinfo.daemon else None,
                   socket_path=d.socket_path, pidfile=d.pidfile,
                   containerd_pidfile=os.path.join(d.exec_root, "containerd", "containerd.pid"),
                   containerd_state=None if system_containerd else os.path.join(config.agent.run_dir, "containerd"),
                   namespace_pin=namespace_pin(config))

    @property
    def private_namespace(self) -> bool:
        return self.cpuinfo is not None or self.containerd_state is not None

    def environ(self) -> dict[str, str]:
        return dict(self.env)


def namespace_pin(config) -> str:
    """Where dockerd's mount namespace is kept between dockerds (agent/launch.py enter_namespace)."""
    return os.path.join(config.agent.run_dir, "ns", "dockerd")


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

    @classmethod
    def from_config(cls, config) -> "Timings":
        d = config.docker
        return cls(health_interval=d.health_interval_seconds, health_timeout=d.health_timeout_seconds,
                   health_failures=d.health_failures, start_timeout=d.start_timeout_seconds,
                   stop_timeout=d.stop_timeout_seconds, backoff_initial=d.restart_backoff_initial_seconds,
                   backoff_max=d.restart_backoff_max_seconds, stable_seconds=d.restart_stable_seconds)


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
    # Why an adopted dockerd is not the one the config asks for (None: it is, or not adopted):
    # "binary" (its executable was replaced: an update), "arguments", "personality", "namespace",
    # "environment". The loop decides what to do about it (agent.loop, one owner of restarts).
    mismatch: str | None = None


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
        self.errors = RateLimitedLog(log, clock)
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

    def adopt_existing(self, pidfile: str, expected_exe: str | None) -> bool:
        """At agent start, before anything is launched: the dockerd a previous agent left running
        (named by the pidfile, or, while it has not written one yet, found by its executable and
        --pidfile argument) becomes ours if it runs `expected_exe`, the payload's dockerd. A restarted
        agent never kills, duplicates or abandons a running daemon; whatever it finds it supervises:
        answering -> RUNNING; silent and younger than the start timeout -> STARTING (an agent restarted
        while dockerd started); silent and older -> RUNNING with a failed ping counted, so the hang
        rule replaces it. How it differs from the config is recorded in run.mismatch for the loop."""
        pid = self.processes.read_pidfile(pidfile)
        if pid is None and expected_exe:
            pid = self.processes.find_process(os.path.realpath(expected_exe), pidfile)
        if not pid:
            return False
        exe = self.processes.exe(pid) or ""
        replaced = exe.endswith(" (deleted)")
        exe = exe.removesuffix(" (deleted)")
        if not expected_exe or os.path.realpath(expected_exe) != exe:
            log.info("pidfile %s names pid %d (%s), not this payload's dockerd: not adopting", pidfile, pid,
                     exe or "not running")
            return False
        handle = self.processes.adopt(pid)
        if handle is None:
            return False
        now = self.clock.monotonic()
        started = self.processes.start_time(handle)
        age = max(0.0, self.clock.time() - started) if started is not None else self.t.start_timeout
        mismatch = "binary" if replaced else self._mismatch(pid)
        run = self.run = _Run(handle=handle, spec=self.spec if mismatch is None else None, began=now - age,
                              mismatch=mismatch)
        self.adopted = True
        if self._ping(self.t.health_timeout):
            run.running_since, run.next_ping = now, now + self.t.health_interval
            # STOPPED -> RUNNING
            self._to(RUNNING, f"adopted running dockerd pid {pid}")
        elif age < self.t.start_timeout:
            # STOPPED -> STARTING: its start timeout counts from its own start, not from the adoption.
            self._to(STARTING, f"adopted dockerd pid {pid}, not answering yet (up {age:.0f}s; start timeout "
                               f"{self.t.start_timeout:g}s)")
        else:
            run.running_since, run.failures, run.next_ping = now, 1, now + self.t.health_interval
            # STOPPED -> RUNNING: old enough to have answered before; a hung one is stopped by the hang rule.
            self._to(RUNNING, f"adopted dockerd pid {pid}, not answering (up {age:.0f}s): replaced if it stays "
                              f"silent for {self.t.health_failures} pings")
        if mismatch:
            log.info("dockerd: adopted pid %d differs from the config (%s)", pid, mismatch)
        self._keep_namespace(handle)
        return True

    def _keep_namespace(self, handle: ProcessHandle) -> None:
        """An adopted dockerd's mount namespace is kept for its successor (agent/launch.py: why), also
        when an agent that did not keep it started that dockerd."""
        spec = self.spec
        if spec is None or spec.namespace_pin is None \
                or self.processes.mount_ns(handle.pid) in (None, self.processes.mount_ns("self")):
            return
        err = self.processes.pin_namespace(handle, spec.namespace_pin)
        if err:
            log.warning("dockerd: cannot keep the mount namespace of pid %d at %s (its successor gets a new one): "
                        "%s", handle.pid, spec.namespace_pin, err)

    def _mismatch(self, pid: int) -> str | None:
        """How a running dockerd differs from the spec: what restarting it would change."""
        spec = self.spec
        if spec is None:
            return None       # nothing to compare with (blocked): it keeps running on what it loaded
        if self.processes.cmdline(pid) != list(spec.argv):
            return "arguments"
        persona = self.processes.personality(pid)
        if persona is not None and ((persona & PER_MASK) == PER_LINUX32) != (spec.personality == "linux32"):
            return "personality"
        private = self.processes.mount_ns(pid) != self.processes.mount_ns("self")
        if private != spec.private_namespace:
            return "namespace"
        env = self.processes.environ(pid)
        wanted = spec.environ().get("PATH", "")
        if env is not None and env.get("PATH", "") != wanted:
            return "environment"
        return None

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
        held = self._pidfile_holder()
        if held:
            if self.state != BLOCKED or self.reason != held:
                # STOPPED/BACKOFF -> BLOCKED: a dockerd started now would only exit on the pidfile.
                self._to(BLOCKED, held)
            return self.t.health_interval
        self._start(now)
        return START_POLL_SECONDS

    def _pidfile_holder(self) -> str | None:
        """Why the pidfile keeps our dockerd from starting, or None. dockerd refuses to start while its
        pidfile names a live process, whatever that process is: another dockerd is a conflict to report
        (never ours to kill); any other program there is a reused pid, and the stale file is removed."""
        pid = self.processes.read_pidfile(self.spec.pidfile)
        if not pid or self.processes.state(pid) in (None, "Z"):
            return None
        exe = (self.processes.exe(pid) or "").removesuffix(" (deleted)")
        if os.path.basename(exe).startswith("dockerd"):
            return (f"pidfile {self.spec.pidfile} is held by another dockerd (pid {pid}, {exe}): stop it, or give "
                    "docker.pidfile a path of its own")
        log.warning("dockerd: pidfile %s names pid %d (%s), not a dockerd: removing the stale file", self.spec.pidfile,
                    pid, exe or "unknown")
        self.processes.remove_file(self.spec.pidfile)
        return None

    def _start(self, now: float) -> None:
        spec = self.spec
        assert spec is not None
        try:
            handle = self.processes.launch(list(spec.argv), dict(spec.env), spec.personality, spec.cpuinfo,
                                           spec.containerd_state, spec.namespace_pin, self.log_path)
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
            self.errors("foreign", logging.ERROR, "dockerd: pid %s answers on %s, not ours (pid %s): stop it "
                        "(systemctl disable --now docker.service docker.socket?)", answering, self.api.sock_path, pid)
            self.ping_ok = False
            return False
        self.foreign_pings = 0
        self.errors.clear("foreign")
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
