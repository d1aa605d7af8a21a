"""The agent: one loop, one step at a time.

`Agent.run()` is the shell: the single-instance lock, signals, waiting, shutdown. `Agent.step()` is one
pass: reload if asked, look at the payload, keep the managed files right, decide restarts, advance the
dockerd state machine, publish a snapshot, tell systemd. Signal handlers only set flags (and wake the
loop through the wakeup fd); the loop acts on them. Each phase of a step is isolated: one that raises
is logged and reported, and the others (supervision above all) still run.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket

from . import __version__, aarch32
from .clock import SystemClock
from .config import ConfigError, LoadedConfig, load_config
from .cpuinfo import CpuinfoError
from .docker_api import DockerApi
from .dockerd import DockerdSpec, DockerdSupervisor, Timings
from .fsops import DisplacedStore, atomic_write
from .hijack import CpuinfoSource, containerd_variant_of_pid, daemon_view_stale
from .instance import InstanceLock, InstanceLocked
from . import host_docker, runtime
from .fsops import ensure_private_dir
from .managed import (CPUINFO, HOST_CONTAINERD_DROPIN, HOST_CPUINFO_V6, HOST_CPUINFO_V7, HOST_DROPIN, HOST_DROPINS,
                      HOST_FILES, HOST_WRAPPER, MANAGED_FILES, RUNTIME_WRAPPER, SHIM, ManagedFile, in_force)
from .payload import unsafe_reason
from .notify import Notifier
from .processes import Processes
from .ratelimit import RateLimitedLog
from .shim_records import ensure_records_file, records_path
from .shimfile import shim_client, shim_content
from .state import BACKOFF, BLOCKED, RELOAD_RESULTS, RUNNING, STARTING, STATE_FILE, STOPPED, HostDockerState, Snapshot
from .status import status_line
from .updates import UPDATE_READY, Observation, PayloadTracker
from .watch import FolderWatch

log = logging.getLogger("armhf-agent")

# The exec-mode probe (native / emulated / unsupported) runs at start and this often after: a qemu-arm
# binfmt registration can appear at any time.
EXEC_PROBE_SECONDS = 600.0
# How much longer than the remaining dockerd start (or stop) time systemd is asked to wait, and how
# often it is asked again (EXTEND_TIMEOUT_USEC must arrive before the extended timeout ends).
EXTEND_MARGIN_SECONDS = 30.0
EXTEND_EVERY_SECONDS = 5.0
# The dockerd states after which the unit is ready: dockerd answers, or the reason it cannot (blocked,
# crash-looping in backoff) is reported. Waiting for RUNNING alone made a dockerd that crash-loops at
# boot fail the unit's start every TimeoutStartSec and block apt (issue 12).
READY_STATES = (RUNNING, BLOCKED, BACKOFF)


class Agent:
    def __init__(self, loaded: LoadedConfig, *, environ: dict[str, str] | None = None, clock=None,
                 processes=None, notifier=None, metrics_factory=None, watch=None, systemctl=None):
        self.environ = dict(os.environ if environ is None else environ)
        self.loaded = loaded
        self.config = loaded.config
        self.clock = clock or SystemClock()
        self.processes = processes or Processes()
        self.notifier = notifier or Notifier(self.environ)
        self.watch = watch or FolderWatch()
        self.errors = RateLimitedLog(log, self.clock)
        self.started_at = self.clock.time()
        self.state = "starting"
        self.steps = 0
        self.reloads = {r: 0 for r in RELOAD_RESULTS}
        self.flags: set[str] = set()
        self.platform: dict[str, str] = {}
        self.platform_pid: int | None = None
        self.exec_mode = ("unknown", "")
        self.phase_failures: dict[str, str] = {}
        self.metrics_factory = metrics_factory
        self.metrics = None
        self.latest: Snapshot | None = None
        self._next_full = 0.0
        self._next_exec_probe = 0.0
        self._next_extend = 0.0
        c = self.config
        self.api = DockerApi(c.docker.socket_path)
        self.store = DisplacedStore(c.agent.state_dir, clock=self.clock)
        self.cpuinfo_source = CpuinfoSource(c.cpuinfo.profile, self.processes)
        self.files = {spec.name: ManagedFile(spec, spec.path_of(c), self.store, self.clock) for spec in MANAGED_FILES}
        self.supervisor = DockerdSupervisor(Timings.from_config(c), self.processes, self.api, self.clock,
                                            c.docker.log_file or None)
        self.tracker = PayloadTracker(c, self.clock)
        self.linux32 = aarch32.Linux32Gate(self.processes, self.clock, log)
        self.systemctl = systemctl or host_docker.Systemctl()
        self.host_cpuinfo = {HOST_CPUINFO_V7.name: CpuinfoSource(self._host_v7_profile(c), self.processes),
                             HOST_CPUINFO_V6.name: CpuinfoSource("raspberrypi1", self.processes)}
        self.host_wiring = host_docker.Wiring(None, False, False)
        self.host_problem = ""
        self._host_restart: str | None = None   # why docker.service is to be restarted (a reload changed the mode)

    @property
    def cpuinfo_file(self) -> ManagedFile:
        return self.files[CPUINFO.name]

    @property
    def shim_file(self) -> ManagedFile:
        return self.files[SHIM.name]

    @property
    def wrapper_file(self) -> ManagedFile:
        return self.files[RUNTIME_WRAPPER.name]

    def _published_files(self):
        """The files that are part of this config: the runtime wrapper only while it is on, the host
        docker.service's only while host_docker is (off, they are kept absent, not reported as "not ok")."""
        shown = {spec.name for spec in in_force(self.config)}
        return [f for f in self.files.values() if f.name in shown]

    @staticmethod
    def _host_v7_profile(config) -> str:
        # The host daemon's ARMv7 view follows the configured device profile when that one is ARMv7.
        return config.cpuinfo.profile if config.cpuinfo.variant == "v7" else "host"

    # -- reconfiguration ---------------------------------------------------------------------------
    def _apply_config(self, loaded: LoadedConfig) -> None:
        """Every object takes the new config and keeps what it counted (counters never go backwards)."""
        old, c = self.config, loaded.config
        self.loaded, self.config = loaded, c
        if c.agent.state_dir != old.agent.state_dir:
            self.store = DisplacedStore(c.agent.state_dir, clock=self.clock)
        for spec in MANAGED_FILES:
            self.files[spec.name].retarget(spec.path_of(c), self.store)
        self.cpuinfo_source.reconfigure(c.cpuinfo.profile)
        self.host_cpuinfo[HOST_CPUINFO_V7.name].reconfigure(self._host_v7_profile(c))
        if c.host_docker != old.host_docker:
            # The operator changed the mode (`armhf-agent host-docker on|off` reloads): the one case in which
            # the agent restarts the host's docker.service, once its files are right.
            self._host_restart = "on" if c.host_docker.enabled else "off"
        self.tracker.reconfigure(c)
        self.api.sock_path = c.docker.socket_path
        self.supervisor.log_path = c.docker.log_file or None
        self.supervisor.configure(self.supervisor.spec, self.supervisor.blocked, Timings.from_config(c))
        if self.metrics is not None:
            self.metrics.reconfigure(c)
        self._next_full = 0.0          # check everything against the new config at once

    # -- signals -----------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        names = {signal.SIGTERM: "stop", signal.SIGINT: "stop", signal.SIGHUP: "reload",
                 signal.SIGUSR1: "check", signal.SIGUSR2: "detach", signal.SIGCHLD: "child"}
        for sig, flag in names.items():
            signal.signal(sig, lambda _s, _f, flag=flag: self.flags.add(flag))

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r, self.watch.fd]
        try:
            readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:
            return
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(512):
                    pass
            except BlockingIOError:
                pass
        if self.watch.fd in readable and self.watch.drain():
            self.flags.add("check")

    # -- the step ----------------------------------------------------------------------------------
    def _phase(self, name: str, fn, *args, default=None):
        """Runs one phase of the step; a phase that raises is logged (rate-limited per phase and kind
        of failure, never per message text) and reported, and the step goes on."""
        try:
            result = fn(*args)
        except Exception as exc:
            self.phase_failures[name] = f"{type(exc).__name__}: {exc}"
            self.errors(f"phase:{name}:{type(exc).__name__}", logging.ERROR, "step: %s failed: %s: %s", name,
                        type(exc).__name__, exc, exc_info=True)
            return default
        if self.phase_failures.pop(name, None) is not None:
            log.info("step: %s works again", name)
        return result

    def step(self) -> float:
        now = self.clock.monotonic()
        if "reload" in self.flags:
            self.flags.discard("reload")
            self.reload()
        self.flags.discard("child")
        asked = "check" in self.flags
        self.flags.discard("check")
        full_check = asked or now >= self._next_full
        if full_check:
            self._next_full = now + self.config.agent.check_interval_seconds
            self._phase("exec-mode", self._exec_mode, now)

        sup = self.supervisor
        obs = self._phase("payload", self.tracker.observe, sup.state)
        if obs is None:
            obs = Observation(self.tracker.current)
        self._phase("files", self._ensure_files, obs.payload, full_check)
        self._phase("dockerd-config", self._configure_dockerd, obs.payload)
        self._phase("restart-decision", self._decide_restarts, obs)
        wait = self._phase("dockerd", sup.step, default=None)
        supervised = wait is not None
        self._phase("daemon-view", self._check_daemon_view)
        self._phase("payload-after", self.tracker.after_step, sup.state, sup.pid)
        self._phase("platform", self._platform)
        if full_check:
            self._phase("watch", self._watch_folders)
            if self.metrics is None:
                self._start_metrics()
        self.steps += 1
        published = self._phase("publish", self._publish, default=False)
        if supervised and published:
            # Health means progress: the watchdog hears from the loop only after a step that supervised
            # dockerd and published its state.
            self.notifier.watchdog(self.clock.monotonic())
        if self.metrics:
            self._phase("metrics", self.metrics.on_step, self.latest)
        now = self.clock.monotonic()
        return min(wait if wait is not None else 1.0, max(0.0, self._next_full - now), self.tracker.wake_in(),
                   self.notifier.watchdog_due_in(now))

    def _ensure_files(self, payload, full_check: bool) -> None:
        c = self.config
        cpuinfo_file = self.cpuinfo_file
        # After a failed first render, retried at full checks only (each render reads the kernel's view).
        if full_check or (cpuinfo_file.desired is None and not cpuinfo_file.unavailable):
            try:
                cpuinfo_file.set_desired(self.cpuinfo_source.render())
                self.errors.clear("render-cpuinfo")
            except CpuinfoError as exc:
                if cpuinfo_file.desired is None:
                    cpuinfo_file.set_desired(None, f"cannot render: {exc}")
                else:
                    cpuinfo_file.set_render_error(f"cannot render: {exc} (the last file rendered stays)")
                self.errors("render-cpuinfo", logging.ERROR, "cpuinfo: cannot render %s: %s", c.cpuinfo.path, exc)
        client, why_not = shim_client(c, payload, *self.exec_mode)
        if client:
            self.shim_file.set_desired(shim_content(client, c.cpuinfo.path, records_path(c), c.docker.host, __version__))
        else:
            self.shim_file.set_desired(None, why_not, absent=True)
        self._want_wrapper(payload)
        for path, docker_group in ((records_path(c), True), (runtime.records_path(c), False)):
            problem = ensure_records_file(path, self.store, docker_group)
            if problem:
                self.errors(f"records:{path}", logging.ERROR, "records: %s", problem)
        self._want_host_docker(full_check)
        dropin_before = self._dropin_signature()
        for f in self.files.values():
            problem = f.ensure()
            if problem is not None and f.write_error:
                self.errors(f"write-{f.name}", logging.ERROR, "%s: %s (will retry)", f.name, f.write_error)
            elif problem is None:
                self.errors.clear(f"write-{f.name}")
        self._apply_host_docker(dropin_before != self._dropin_signature())

    def _want_wrapper(self, payload) -> None:
        """The runtime wrapper around the payload's runc. Its folder goes first in dockerd's PATH, which
        root's daemon searches for runc: it must be root's and writable by nobody else, all the way up."""
        c, wrapper = self.config, self.wrapper_file
        runc = payload.binaries.get("runc")
        if not c.runtime.wrapper:
            wrapper.set_desired(None, "off ([runtime] wrapper = false)", absent=True)
            return
        if not runc:
            wrapper.set_desired(None, f"no runc in {c.docker.root} to wrap", absent=True)
            return
        try:
            ensure_private_dir(c.runtime.dir)
        except OSError as exc:
            wrapper.set_desired(None, f"cannot make its folder {c.runtime.dir}: {exc.strerror or exc}")
            return
        unsafe = unsafe_reason(c.runtime.dir)
        if unsafe:
            wrapper.set_desired(None, f"its folder is not safe to put first in dockerd's PATH: {unsafe}", absent=True)
            return
        wrapper.set_desired(runtime.render_wrapper(runc, c.cpuinfo.path, runtime.records_path(c), __version__).encode())

    # -- the host's own docker.service (host_docker mode) -------------------------------------------
    def _dropin_signature(self):
        signature = []
        for spec in HOST_DROPINS:
            try:
                st = os.lstat(spec.path_of(self.config))
            except OSError:
                signature.append(None)
                continue
            signature.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return signature

    def _want_host_docker(self, full_check: bool) -> None:
        c, h = self.config, self.config.host_docker
        wrapper, v7, v6, dropin, cdropin = (self.files[s.name] for s in (HOST_WRAPPER, HOST_CPUINFO_V7, HOST_CPUINFO_V6,
                                                                         HOST_DROPIN, HOST_CONTAINERD_DROPIN))
        if (full_check or self._host_restart) and (h.enabled or os.path.lexists(wrapper.path)):
            # systemctl is asked only while the mode is on or its files are still there.
            self.host_wiring = host_docker.wiring(c, self.systemctl, self.processes.proc)
        elif not h.enabled:
            self.host_wiring = host_docker.Wiring(None, False, False)
        if not h.containerd_unit:
            cdropin.set_desired(None, "dockerd runs its own containerd ([host_docker] containerd_unit = \"\")",
                                absent=True)
        if not h.enabled:
            for f in (dropin, cdropin):
                f.set_desired(None, "off ([host_docker] enabled = false)", absent=True)
            # The wrapper and its cpuinfo stay while the host's dockerd still runs with them in its PATH
            # (BuildKit names the wrapper: removing it would fail the builds until docker.service restarts).
            if not self.host_wiring.uses_wrapper:
                for f in (wrapper, v7, v6):
                    f.set_desired(None, "off ([host_docker] enabled = false)", absent=True)
            self.host_problem = ""
            return
        problems = host_docker.conflicts(c)
        runc = host_docker.host_runc(c)
        if runc is None:
            problems.append("no runc for the host's daemon on the default PATH: set [host_docker] runc")
        if not problems:
            try:
                # A unit's drop-in folder may hold the operator's own drop-ins: made if missing, never re-moded.
                for unit in host_docker.units(c):
                    os.makedirs(os.path.dirname(host_docker.dropin_path(c, unit)), mode=0o755, exist_ok=True)
                ensure_private_dir(h.runtime_dir)
                unsafe = unsafe_reason(h.runtime_dir)
                if unsafe:
                    problems.append(f"{h.runtime_dir} is not safe to put first in {h.unit}'s PATH: {unsafe}")
            except OSError as exc:
                problems.append(f"cannot make {h.runtime_dir}: {exc.strerror or exc}")
        if problems:
            self.host_problem = "; ".join(problems)
            for f in (wrapper, v7, v6, dropin, cdropin):
                f.set_desired(None, self.host_problem)
            return
        for f in (v7, v6):
            if full_check or f.desired is None:
                try:
                    f.set_desired(self.host_cpuinfo[f.name].render())
                except CpuinfoError as exc:
                    f.set_desired(None, f"cannot render: {exc}") if f.desired is None else \
                        f.set_render_error(f"cannot render: {exc} (the last file rendered stays)")
        wrapper.set_desired(runtime.render_wrapper(runc, v7.path, runtime.records_path(c), __version__, mode="host",
                                                   cpuinfo_v6=v6.path).encode())
        dropin.set_desired(host_docker.render_dropin(c, __version__).encode())
        if h.containerd_unit:
            cdropin.set_desired(host_docker.render_dropin(c, __version__, containerd=True).encode())
        self.host_problem = "" if self.host_wiring.wired or self._host_restart else \
            f"{self.host_wiring.describe(h.unit)}: `armhf-agent host-docker on` restarts it onto the wrapper"

    def _apply_host_docker(self, dropin_changed: bool) -> None:
        """systemd reads a changed drop-in on daemon-reload; docker.service itself is restarted only when a
        reload changed the mode, once everything it will need is in place (or, turning it off, gone)."""
        c = self.config
        if dropin_changed:
            err = self.systemctl.daemon_reload()
            if err:
                self.errors("daemon-reload", logging.ERROR, "host docker: systemctl daemon-reload failed: %s", err)
                return
            log.info("host docker: %s drop-ins %s; systemd reloaded", ", ".join(host_docker.units(c)),
                     "written" if os.path.lexists(host_docker.dropin_path(c)) else "removed")
        if not self._host_restart:
            return
        in_force_now = {spec.name for spec in in_force(c)}
        ready = all(self.files[s.name].describe().ok for s in HOST_FILES if s.name in in_force_now) \
            if c.host_docker.enabled else not any(os.path.lexists(s.path_of(c)) for s in HOST_DROPINS)
        if not ready:
            return
        restarted = host_docker.units(c)
        log.warning("host docker: restarting %s to turn the mode %s (docker's containers restart with it)",
                    " and ".join(restarted), self._host_restart)
        err = self.systemctl.restart(*restarted)
        if err:
            self.errors("host-restart", logging.ERROR, "host docker: cannot restart %s: %s", ", ".join(restarted), err)
        self._host_restart = None

    def _configure_dockerd(self, payload) -> None:
        blocked = None
        spec = None
        cpuinfo_file = self.cpuinfo_file
        if not payload.ok:
            blocked = "payload " + "; ".join(payload.problems)
        elif self.config.cpuinfo.daemon and (cpuinfo_file.desired is None or cpuinfo_file.last_problem is not None):
            blocked = f"cpuinfo file not in place ({cpuinfo_file.describe().problem})"
        elif self.config.runtime.wrapper and (self.wrapper_file.desired is None or self.wrapper_file.last_problem is not None):
            # Docker >= 26 resolves DOCKER_BUILDKIT_RUNC_COMMAND when it starts: a dockerd started before the
            # wrapper is in place would have no BuildKit. One already running keeps going.
            blocked = f"runtime wrapper not in place ({self.wrapper_file.describe().problem})"
        else:
            refused = self.linux32.refused(self.config.docker.personality)
            if refused:
                blocked = refused
            else:
                path_first, extra_env = runtime.dockerd_environment(self.config)
                spec = DockerdSpec.from_config(self.config, payload, self.environ, path_first, extra_env)
        self.supervisor.configure(spec, blocked)

    def _decide_restarts(self, obs: Observation) -> None:
        """The one place that restarts a running dockerd (kubelet's prober records, one manager acts).
        The tracker reports an update ready; the supervisor records how an adopted dockerd differs; the
        spec of a running dockerd differs from the config's after a reload (arguments, environment,
        personality, namespace). An update is restarted onto as an update (settled, validated, counted,
        rolled back by the tracker), never as a reload."""
        sup = self.supervisor
        run = sup.run
        if run is None or sup.state != RUNNING:
            return
        if obs.event == UPDATE_READY or run.mismatch == "binary":
            if obs.event == UPDATE_READY:
                log.info("update: payload in %s changed; restarting dockerd onto it", self.tracker.root)
            else:
                log.info("dockerd: adopted pid %d runs a binary since replaced: restarting it gracefully", run.handle.pid)
            sup.request_restart("update")
        elif sup.spec is not None and run.spec != sup.spec and not self.tracker.payload_changed():
            sup.request_restart("reload")

    def _check_daemon_view(self) -> None:
        sup = self.supervisor
        pid = sup.pid
        if not pid or not self.config.cpuinfo.daemon or sup.state != RUNNING \
                or self.cpuinfo_file.last_problem is not None:
            return
        if daemon_view_stale(self.config.cpuinfo.path, pid, self.processes.proc):
            err = self.processes.rebind_cpuinfo(sup.run.handle, self.config.cpuinfo.path)
            if err:
                self.errors("rebind", logging.ERROR, "cpuinfo: could not refresh dockerd's view: %s", err)
            else:
                log.info("cpuinfo: dockerd (pid %d) now sees the rewritten file", pid)

    def _platform(self) -> None:
        """The platform as the daemon reports it: Os/Arch from /version, and the variant containerd
        derives from the /proc/cpuinfo *dockerd* sees (its mount namespace: /proc/PID/root)."""
        sup = self.supervisor
        if sup.state != RUNNING:
            if sup.state in (STOPPED, BLOCKED):
                self.platform, self.platform_pid = {}, None
            return
        if self.platform_pid == sup.pid:
            return
        try:
            v = self.api.version(self.config.docker.health_timeout_seconds)
        except Exception as exc:
            self.errors("version", logging.WARNING, "dockerd: /version failed: %s", exc)
            return
        try:
            variant = containerd_variant_of_pid(sup.pid)
        except CpuinfoError:
            # dockerd sees a non-Arm cpuinfo (cpuinfo.daemon = false on an x86 host): no Arm variant.
            variant = ""
        self.platform = {"os": v.get("Os", ""), "arch": v.get("Arch", ""), "version": v.get("Version", ""),
                         "variant": variant}
        self.platform_pid = sup.pid
        log.info("dockerd: platform %s/%s/%s, server %s", self.platform["os"], self.platform["arch"],
                 self.platform["variant"] or "-", self.platform["version"])

    def _start_metrics(self) -> None:
        """A taken port must not take the daemon down with it: logged, retried at each full check."""
        if not self.metrics_factory:
            return
        try:
            self.metrics = self.metrics_factory(self.config, lambda: self.latest)
            self.errors.clear("metrics")
        except OSError as exc:
            self.errors("metrics", logging.ERROR, "metrics: cannot serve on %s: %s (retrying)",
                        self.config.metrics.listen, exc)

    def _exec_mode(self, now: float) -> None:
        """How this host runs armhf (native / emulated / unsupported)."""
        if now < self._next_exec_probe:
            return
        self._next_exec_probe = now + EXEC_PROBE_SECONDS
        report = aarch32.detect(aarch32.SubprocessRunner())
        if report.mode != self.exec_mode[0]:
            log.log(logging.INFO if report.mode == "native" else logging.WARNING,
                    "host executes armhf: %s (%s)", report.mode, report.detail)
        self.exec_mode = (report.mode, report.detail)

    def _watch_folders(self) -> None:
        folders = {os.path.dirname(f.path) for f in self.files.values()} | self.tracker.folders()
        self.watch.set_folders({f for f in folders if os.path.isdir(f)})

    # -- reload ------------------------------------------------------------------------------------
    def reload(self) -> None:
        self.notifier.reloading()
        path = self.loaded.path or None
        try:
            loaded = load_config(path, environ=self.environ)
        except ConfigError as exc:
            self.reloads["rejected"] += 1
            log.error("reload: %s is invalid, keeping the running config:", exc.path)
            for problem in exc.problems:
                log.error("reload:   %s", problem)
        else:
            self.reloads["applied"] += 1
            self._apply_config(loaded)
            log.info("reload: applied %s", path or "built-in defaults")
        self.notifier.reloaded()

    # -- outputs -----------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot(
            version=__version__, pid=os.getpid(), state=self.state, started_at=self.started_at,
            last_step_at=self.clock.time(), steps=self.steps, config_path=self.loaded.path,
            metrics_url=self.metrics.url if self.metrics else "",
            exec_mode=self.exec_mode[0], exec_detail=self.exec_mode[1], reloads=dict(self.reloads),
            dockerd=self.supervisor.snapshot(self.platform), payload=self.tracker.describe(),
            files=tuple(f.describe() for f in self._published_files()), cpuinfo=self.cpuinfo_source.describe(),
            host_docker=HostDockerState(enabled=self.config.host_docker.enabled, unit=self.config.host_docker.unit,
                                        wired=self.host_wiring.wired, pid=self.host_wiring.pid,
                                        problem=self.host_problem),
        )

    def _publish(self) -> bool:
        snap = self.snapshot()
        self.latest = snap
        try:
            os.makedirs(self.config.agent.run_dir, mode=0o755, exist_ok=True)
            atomic_write(os.path.join(self.config.agent.run_dir, STATE_FILE), snap.to_json().encode(), 0o600)
        except OSError as exc:
            self.errors("state", logging.ERROR, "cannot write %s: %s", self.config.agent.run_dir, exc)
        line = status_line(snap)
        self.notifier.status(line)
        d = snap.dockerd
        if not self.notifier.ready_sent:
            if d.state in READY_STATES:
                self.notifier.ready()
                log.info("ready: %s", line)
            elif d.state == STARTING:
                self._extend_timeout(self.config.docker.start_timeout_seconds)
        return True

    def _extend_timeout(self, budget: float) -> None:
        """The unit's TimeoutStartSec/TimeoutStopSec follow the config's dockerd start and stop timeouts
        (accepted up to an hour): systemd is asked for more time, a little at a time, while dockerd
        starts before READY, or stops at exit (EXTEND_TIMEOUT_USEC, systemd >= 236)."""
        now = self.clock.monotonic()
        if now < self._next_extend:
            return
        self._next_extend = now + EXTEND_EVERY_SECONDS
        self.notifier.extend_timeout(budget + EXTEND_MARGIN_SECONDS)

    # -- the shell ---------------------------------------------------------------------------------
    def run(self) -> int:
        c = self.config
        try:
            lock = InstanceLock.acquire([c.agent.run_dir, c.agent.state_dir])
        except InstanceLocked as exc:
            log.error("%s", exc)
            return 75   # EX_TEMPFAIL: not a config error (78), and the unit may try again
        try:
            self.install_signal_handlers()
            log.info("armhf-agent %s starting (config %s, pid %d)", __version__, self.loaded.path or "built-in defaults",
                     os.getpid())
            self._phase("adopt", self._adopt)
            self.latest = self.snapshot()
            self._start_metrics()
            self.state = "running"
            while True:
                if "stop" in self.flags:
                    return self._shutdown(detach=False)
                if "detach" in self.flags:
                    return self._shutdown(detach=True)
                try:
                    wait = self.step()
                except Exception as exc:
                    # Phases are isolated; this is the net under the step's own bookkeeping.
                    self.errors(f"step:{type(exc).__name__}", logging.ERROR, "step failed: %s", exc, exc_info=True)
                    wait = 1.0
                self._wait(wait)
        finally:
            lock.release()

    def _adopt(self) -> None:
        """A dockerd a previous agent left running is supervised, not killed or duplicated: the
        supervisor decides how (agent.dockerd `adopt_existing`); the next step's restart decision acts
        on any difference from the config."""
        self._exec_mode(self.clock.monotonic())
        obs = self.tracker.observe(self.supervisor.state)
        self._ensure_files(obs.payload, True)
        self._configure_dockerd(obs.payload)
        self.supervisor.adopt_existing(self.config.docker.pidfile, obs.payload.dockerd)

    def _shutdown(self, detach: bool) -> int:
        self.state = "stopping"
        self.notifier.stopping()
        if detach:
            log.info("detaching: leaving dockerd (pid %s) running for the next agent", self.supervisor.pid)
            self.supervisor.detach()
        else:
            log.info("stopping dockerd")
            self.supervisor.shutdown()
            while self.supervisor.run is not None:
                self.supervisor.step()
                self._extend_timeout(self.config.docker.stop_timeout_seconds)
                self.notifier.watchdog(self.clock.monotonic())
                self._wait(0.05)
        self._phase("publish", self._publish)
        if self.metrics:
            self.metrics.stop()
        log.info("armhf-agent stopped")
        return 0
