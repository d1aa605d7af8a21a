"""The agent: one loop, one step at a time.

`Agent.run()` is the shell: signals, waiting, shutdown. `Agent.step()` is one pass: reload if asked,
look at the payload, keep the managed files right, advance the dockerd state machine, publish a
snapshot, tell systemd. Signal handlers only set flags (and wake the loop through the wakeup fd);
the loop acts on them.
"""

from __future__ import annotations

import grp
import logging
import os
import select
import signal
import socket
import stat
import time

from . import __version__, aarch32, payload as payloads
from .clock import SystemClock
from .config import AgentConfig, ConfigError, LoadedConfig, load_config
from .cpuinfo import CpuinfoError
from .docker_api import DockerApi
from .dockerd import RUNNING, STOPPED, BLOCKED, DockerdSpec, DockerdSupervisor, Timings
from .fsops import DisplacedStore, atomic_write
from .hijack import CpuinfoSource, cpuinfo_marker, containerd_variant_of_pid
from .managed import ManagedFile
from .notify import Notifier
from .processes import Processes
from .ratelimit import RateLimitedLog
from .shimfile import SHIM_MARKER, records_path, shim_content
from .state import RELOAD_RESULTS, STATE_FILE, Snapshot
from .updates import PayloadTracker
from .watch import FolderWatch

log = logging.getLogger("armhf-agent")

# Variables that must not reach dockerd: with NOTIFY_SOCKET set it sends its own READY=1/STOPPING=1
# to our unit (../shared/reference/packaging-and-systemd.md).
SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def timings(config: AgentConfig) -> Timings:
    d = config.docker
    return Timings(health_interval=d.health_interval_seconds, health_timeout=d.health_timeout_seconds,
                   health_failures=d.health_failures, start_timeout=d.start_timeout_seconds,
                   stop_timeout=d.stop_timeout_seconds, backoff_initial=d.restart_backoff_initial_seconds,
                   backoff_max=d.restart_backoff_max_seconds, stable_seconds=d.restart_stable_seconds)


def dockerd_spec(config: AgentConfig, payload: payloads.Payload, environ: dict[str, str]) -> DockerdSpec:
    d = config.docker
    argv = [payload.dockerd, "-H", d.host, "--data-root", d.data_root, "--exec-root", d.exec_root,
            "--pidfile", d.pidfile]
    if config.metrics.docker_metrics:
        argv += ["--metrics-addr", config.metrics.docker_metrics_listen]
    argv += list(d.args)
    env = {k: v for k, v in environ.items() if k not in SCRUBBED_ENV}
    # The payload's folders first: dockerd finds containerd, runc, docker-init, docker-proxy on PATH.
    env["PATH"] = ":".join(payload.path_dirs() + [env.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    return DockerdSpec(dockerd=payload.dockerd, argv=tuple(argv), env=tuple(sorted(env.items())),
                       personality=d.personality,
                       cpuinfo=config.cpuinfo.path if config.cpuinfo.daemon else None,
                       socket_path=d.socket_path, pidfile=d.pidfile,
                       containerd_pidfile=os.path.join(d.exec_root, "containerd", "containerd.pid"))


class Agent:
    def __init__(self, loaded: LoadedConfig, *, environ: dict[str, str] | None = None, clock=None,
                 processes=None, notifier=None, metrics_factory=None, watch=None):
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
        self.metrics_factory = metrics_factory
        self.metrics = None
        self._build()

    # -- construction / reconfiguration ------------------------------------------------------------
    def _build(self) -> None:
        c = self.config
        self.api = DockerApi(c.docker.socket_path)
        self.store = DisplacedStore(c.agent.state_dir, clock=self.clock)
        self.cpuinfo_source = CpuinfoSource(c.cpuinfo.variant, self.processes)
        self.cpuinfo_file = ManagedFile("cpuinfo", c.cpuinfo.path, 0o644, cpuinfo_marker(), self.store, self.clock)
        self.shim_file = ManagedFile("shim", c.shim.path, 0o755, SHIM_MARKER, self.store, self.clock)
        if not hasattr(self, "supervisor"):
            self.supervisor = DockerdSupervisor(timings(c), self.processes, self.api, self.clock)
        else:
            self.supervisor.api = self.api
        self.supervisor.log_path = c.docker.log_file or None
        self.tracker = PayloadTracker(c, self.clock, self.processes)

    def _apply_config(self, loaded: LoadedConfig) -> None:
        old = self.config
        self.loaded, self.config = loaded, loaded.config
        if (old.cpuinfo, old.shim, old.agent, old.docker.root) != (self.config.cpuinfo, self.config.shim,
                                                                     self.config.agent, self.config.docker.root):
            before = (self.cpuinfo_file, self.shim_file, self.tracker)
            self._build()
            # Counters never go backwards: the rebuilt resources inherit what the old ones counted.
            for old_file, new_file in zip(before[:2], (self.cpuinfo_file, self.shim_file)):
                new_file.repairs = old_file.repairs
                new_file.last_repair_reason, new_file.last_repair_at = old_file.last_repair_reason, old_file.last_repair_at
            self.tracker.updates = before[2].updates
        self.api.sock_path = self.config.docker.socket_path
        if old.metrics != self.config.metrics and self.metrics:
            self.metrics.stop()
            self.metrics = None
            self._start_metrics()
        self.supervisor.configure(self.supervisor.spec, self.supervisor.blocked, timings(self.config))

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
    def step(self) -> float:
        now = self.clock.monotonic()
        if "reload" in self.flags:
            self.flags.discard("reload")
            self.reload()
        self.flags.discard("child")
        asked = "check" in self.flags
        self.flags.discard("check")
        full_check = asked or now >= getattr(self, "_next_full", 0)
        if full_check:
            self._next_full = now + self.config.agent.check_interval_seconds

        payload = self.tracker.observe(self.supervisor)
        self._ensure_files(payload, full_check)
        self._configure_dockerd(payload)
        wait = self.supervisor.step()
        self._check_daemon_view()
        self.tracker.after_step(self.supervisor)
        self._platform()
        if full_check:
            self._watch_folders()
            self._exec_mode(now)
            if self.metrics is None:
                self._start_metrics()
        self.steps += 1
        self._publish()
        if self.metrics:
            self.metrics.on_step()
        now = self.clock.monotonic()
        return min(wait, max(0.0, self._next_full - now), self.tracker.wake_in(), self.notifier.watchdog_due_in(now))

    def _ensure_files(self, payload: payloads.Payload, full_check: bool) -> None:
        c = self.config
        if full_check or self.cpuinfo_file.desired is None:
            self.cpuinfo_file.set_desired(self.cpuinfo_source.render())
        client = c.shim.client or payload.client
        if client:
            self.shim_file.set_desired(shim_content(client, c.cpuinfo.path, records_path(c), c.docker.host, __version__))
        else:
            self.shim_file.set_desired(None, f"no docker client to exec: none in {c.docker.root} and shim.client unset")
        self._ensure_records_file()
        for f in (self.cpuinfo_file, self.shim_file):
            problem = f.ensure()
            if problem is not None and f.write_error:
                self.errors(f"write-{f.name}", logging.ERROR, "%s: %s (will retry)", f.name, f.write_error)
            elif problem is None:
                self.errors.clear(f"write-{f.name}")

    def _ensure_records_file(self) -> None:
        """The shim appends to it as whoever runs docker: root, or members of the `docker` group.
        Created here with an explicit owner and mode (the shim never creates it: a missing run_dir
        just means no record)."""
        path = records_path(self.config)
        if os.path.lexists(path):
            return
        try:
            gid = grp.getgrnam("docker").gr_gid
        except KeyError:
            gid = 0
        try:
            os.makedirs(self.config.agent.run_dir, mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.fchown(fd, 0, gid)
                os.fchmod(fd, 0o620 if gid else 0o600)
            finally:
                os.close(fd)
        except OSError as exc:
            self.errors("records", logging.ERROR, "cannot create %s: %s", path, exc)

    def _check_daemon_view(self) -> None:
        """dockerd's bind mount pins an inode: after any rewrite of the file (regenerated, repaired,
        or written while an adopted dockerd was running) dockerd would keep seeing the old one. Two
        stats per step tell; a re-bind inside its namespace fixes it."""
        pid = self.supervisor.pid
        if not pid or not self.config.cpuinfo.daemon or self.supervisor.state != RUNNING \
                or self.cpuinfo_file.last_problem is not None:
            return
        try:
            ours = os.lstat(self.config.cpuinfo.path)
            seen = os.stat(f"{self.processes.proc}/{pid}/root/proc/cpuinfo")
        except OSError:
            return
        # Tampered again since this step's check (a directory, a symlink): the next repair comes first.
        if not stat.S_ISREG(ours.st_mode):
            return
        if (ours.st_dev, ours.st_ino) != (seen.st_dev, seen.st_ino):
            err = self.processes.rebind_cpuinfo(pid, self.config.cpuinfo.path)
            if err:
                self.errors("rebind", logging.ERROR, "cpuinfo: could not refresh dockerd's view: %s", err)
            else:
                log.info("cpuinfo: dockerd (pid %d) now sees the rewritten file", pid)

    def _configure_dockerd(self, payload: payloads.Payload) -> None:
        blocked = None
        spec = None
        if not payload.ok:
            blocked = "payload " + "; ".join(payload.problems)
        elif self.cpuinfo_file.last_problem is not None and self.config.cpuinfo.daemon:
            blocked = f"cpuinfo file not in place ({self.cpuinfo_file.describe().problem})"
        else:
            refused = self.tracker.personality_refused(self.config.docker.personality)
            if refused:
                blocked = refused
            else:
                spec = dockerd_spec(self.config, payload, self.environ)
        self.supervisor.configure(spec, blocked)
        run = self.supervisor.run
        if spec is not None and run is not None and run.spec is not None and run.spec != spec \
                and self.supervisor.state == RUNNING and not self.tracker.payload_changed():
            # Arguments, environment, personality or namespace changed (a reload): restart gracefully.
            # A new payload changes them too (dockerd's path, PATH) but is restarted onto as an update.
            self.supervisor.request_restart("reload")

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
            self.metrics = self.metrics_factory(self)
            self.errors.clear("metrics")
        except OSError as exc:
            self.errors("metrics", logging.ERROR, "metrics: cannot serve on %s: %s (retrying)",
                        self.config.metrics.listen, exc)

    def _exec_mode(self, now: float) -> None:
        """How this host runs armhf (native / emulated / unsupported): probed at start and every 10
        minutes, since a qemu-arm binfmt registration can appear at any time."""
        if now < getattr(self, "_next_exec_probe", 0):
            return
        self._next_exec_probe = now + 600
        report = aarch32.detect(aarch32.SubprocessRunner())
        if report.mode != self.exec_mode[0]:
            log.log(logging.INFO if report.mode == "native" else logging.WARNING,
                    "host executes armhf: %s (%s)", report.mode, report.detail)
        self.exec_mode = (report.mode, report.detail)

    def _watch_folders(self) -> None:
        c = self.config
        folders = {os.path.dirname(c.cpuinfo.path), os.path.dirname(c.shim.path)} | self.tracker.folders()
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
            metrics_url=self.metrics.server.url if self.metrics else "",
            exec_mode=self.exec_mode[0], exec_detail=self.exec_mode[1], reloads=dict(self.reloads),
            dockerd=self.supervisor.snapshot(self.platform), payload=self.tracker.describe(),
            files=(self.cpuinfo_file.describe(), self.shim_file.describe()),
        )

    def status_line(self, snap: Snapshot) -> str:
        d = snap.dockerd
        restarts = sum(d.restarts.values())
        if d.state == "running":
            # "up since" rather than "up 3h": STATUS= is sent on change only, one line per state change.
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.started_at or 0))
            line = f"dockerd running (pid {d.pid}, up since {since}), restarts {restarts}"
        else:
            line = f"dockerd {d.state}: {d.reason}" if d.reason else f"dockerd {d.state}"
        bad = [f.name for f in snap.files if not f.ok]
        if bad:
            line += f"; not in place: {', '.join(bad)}"
        return line[:200]

    def _publish(self) -> None:
        snap = self.snapshot()
        self.latest = snap
        try:
            os.makedirs(self.config.agent.run_dir, mode=0o755, exist_ok=True)
            atomic_write(os.path.join(self.config.agent.run_dir, STATE_FILE), snap.to_json().encode(), 0o600)
        except OSError as exc:
            self.errors("state", logging.ERROR, "cannot write %s: %s", self.config.agent.run_dir, exc)
        line = self.status_line(snap)
        self.notifier.status(line)
        d = snap.dockerd
        if not self.notifier.ready_sent and (d.state == RUNNING or d.state == BLOCKED):
            # READY once dockerd answers, or once the reason it cannot start is reported: the unit is
            # active and the cause is visible instead of a start time-out.
            self.notifier.ready()
            log.info("ready: %s", line)
        self.notifier.watchdog(self.clock.monotonic())

    # -- the shell ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signal_handlers()
        log.info("armhf-agent %s starting (config %s, pid %d)", __version__, self.loaded.path or "built-in defaults",
                 os.getpid())
        self._adopt()
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
                # One failed step must not kill the supervisor of a running daemon; the traceback is
                # logged (rate-limited per kind of failure) and the next step tries again.
                self.errors(f"step:{type(exc).__name__}:{exc}", logging.ERROR, "step failed: %s", exc,
                            exc_info=True)
                wait = 1.0
            self._wait(wait)

    def _adopt(self) -> None:
        """A dockerd named by the pidfile, alive, of this payload, answering on our socket, is adopted:
        a restarted agent never kills or duplicates a running daemon."""
        d = self.config.docker
        pid = self.processes.read_pidfile(d.pidfile)
        if not pid:
            return
        payload = self.tracker.observe(self.supervisor)
        exe = self.processes.exe(pid) or ""
        deleted = exe.endswith(" (deleted)")
        exe = exe.removesuffix(" (deleted)")
        ours = payload.dockerd and os.path.realpath(payload.dockerd) == exe
        if not ours:
            log.info("pidfile %s names pid %d (%s), not this payload's dockerd: not adopting", d.pidfile, pid,
                     exe or "not running")
            return
        try:
            _, answering = self.api.ping(d.health_timeout_seconds)
        except Exception as exc:
            log.warning("dockerd pid %d does not answer on %s (%s): not adopting", pid, d.host, exc)
            return
        if answering != pid:
            log.warning("pid %s answers on %s, not the pidfile's dockerd (pid %d): not adopting", answering, d.host, pid)
            return
        handle = self.processes.adopt(pid)
        if handle is None:
            return
        self._ensure_files(payload, True)
        self._configure_dockerd(payload)
        spec = self.supervisor.spec
        matches = spec is not None and self.processes.cmdline(pid) == list(spec.argv) and not deleted \
            and self._same_personality(pid, d.personality) and self._same_namespace_kind(pid)
        self.supervisor.adopt(handle, spec_matches=matches)
        self.tracker.adopted(payload)
        if not matches:
            why = "its binary was replaced" if deleted else "its arguments, personality or namespace differ"
            log.info("dockerd: adopted pid %d but %s: restarting it gracefully", pid, why)
            self.supervisor.request_restart("update" if deleted else "reload")

    def _same_personality(self, pid: int, wanted: str) -> bool:
        p = self.processes.personality(pid)
        return p is None or ((p & 0xFF) == 0x0008) == (wanted == "linux32")

    def _same_namespace_kind(self, pid: int) -> bool:
        private = self.processes.mount_ns(pid) != self.processes.mount_ns("self")
        return private == self.config.cpuinfo.daemon

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
                self._wait(0.05)
        self._publish()
        if self.metrics:
            self.metrics.stop()
        log.info("armhf-agent stopped")
        return 0
