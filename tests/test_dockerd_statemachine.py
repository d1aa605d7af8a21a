"""Unit tests of the dockerd state machine and the backoff, on an injected clock and fake facades
(pure logic: the real-process behaviour is in test_agent_dockerd.py)."""

from __future__ import annotations

import signal

from agent.backoff import Backoff
from agent.clock import FakeClock
from agent.dockerd import (BACKOFF, BLOCKED, RUNNING, STARTING, STOPPED, STOPPING, DockerdSpec,
                           DockerdSupervisor, Timings)
from agent.processes import ProcessHandle

SPEC = DockerdSpec(dockerd="/opt/docker/dockerd", argv=("/opt/docker/dockerd",), env=(), personality="linux32",
                   cpuinfo=None, socket_path="/run/d.sock", pidfile="/run/d.pid",
                   containerd_pidfile="/run/docker/containerd/containerd.pid")


class FakeProcesses:
    def __init__(self):
        self.next_pid = 100
        self.status: dict[int, int | None] = {}
        self.signals: list[tuple[int, int]] = []
        self.launches = 0

    def launch(self, argv, env, personality, cpuinfo, containerd_state, namespace_pin, log_path):
        self.next_pid += 1
        self.launches += 1
        self.status[self.next_pid] = None
        return ProcessHandle(pid=self.next_pid, start_ticks=1, popen=object())

    def poll(self, handle):
        return self.status[handle.pid]

    def signal(self, handle, sig):
        self.signals.append((handle.pid, sig))

    def exit(self, pid, status):
        self.status[pid] = status

    def start_time(self, handle):
        return 1_700_000_000.0

    def read_pidfile(self, path):
        return None

    def state(self, pid):
        return None


class FakeApi:
    def __init__(self, procs):
        self.procs = procs
        self.up = False
        self.sock_path = "/run/d.sock"
        self.answering: int | None = None      # None: the latest dockerd launched answers

    def ping(self, timeout):
        if not self.up:
            raise OSError("connection refused")
        return 0.001, self.answering or self.procs.next_pid


def make(**kw):
    t = dict(health_interval=5.0, health_timeout=3.0, health_failures=2, start_timeout=60.0, stop_timeout=30.0,
             backoff_initial=1.0, backoff_max=60.0, stable_seconds=60.0)
    t.update(kw)
    clock, procs = FakeClock(), FakeProcesses()
    api = FakeApi(procs)
    sup = DockerdSupervisor(Timings(**t), procs, api, clock)
    sup.configure(SPEC, None)
    return sup, clock, procs, api


def test_running_only_after_ping_answers():
    sup, clock, procs, api = make()
    sup.step()
    assert sup.state == STARTING and procs.launches == 1
    clock.advance(1)
    sup.step()
    assert sup.state == STARTING
    api.up = True
    sup.step()
    assert sup.state == RUNNING


def test_start_timeout_stops_and_counts():
    sup, clock, procs, api = make(start_timeout=10.0)
    sup.step()
    clock.advance(11)
    sup.step()
    assert sup.state == STOPPING and sup.restarts["start_timeout"] == 1
    assert (101, signal.SIGTERM) in procs.signals


def test_crash_backoff_grows_caps_and_resets_after_stable_period():
    sup, clock, procs, api = make(backoff_initial=1.0, backoff_max=8.0, stable_seconds=60.0)
    api.up = True
    delays = []
    for _ in range(7):
        sup.step()                       # start (or still waiting)
        while sup.state != RUNNING:
            clock.advance(0.01)
            sup.step()
        procs.exit(sup.pid, 1)
        sup.step()                       # exit seen -> BACKOFF (a zero delay starts again in the same step)
        delays.append(sup.retry_at - clock.monotonic())
        assert sup.state == (STARTING if delays[-1] == 0 else BACKOFF)
        clock.advance(delays[-1])
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert sup.restarts["exited"] == 7
    # A run that stays up for the stable period forgets the history: the next crash restarts at once.
    sup.step()
    while sup.state != RUNNING:
        clock.advance(0.01)
        sup.step()
    for _ in range(13):
        clock.advance(5)
        sup.step()
    procs.exit(sup.pid, 1)
    sup.step()
    assert sup.retry_at - clock.monotonic() == 0.0


def test_hang_detected_after_consecutive_failures_then_sigkill_after_stop_timeout():
    sup, clock, procs, api = make(health_interval=5.0, health_failures=2, stop_timeout=30.0)
    api.up = True
    sup.step()
    sup.step()
    assert sup.state == RUNNING
    pid = sup.pid
    api.up = False                        # SIGSTOPped: pings time out
    clock.advance(5)
    sup.step()
    assert sup.state == RUNNING           # one failure is not a hang
    api.up = True
    clock.advance(5)
    sup.step()
    api.up = False
    clock.advance(5)
    sup.step()
    assert sup.state == RUNNING           # failures must be consecutive
    clock.advance(5)
    sup.step()
    assert sup.state == STOPPING and sup.restarts["hung"] == 1
    assert procs.signals[-2:] == [(pid, signal.SIGTERM), (pid, signal.SIGCONT)]
    clock.advance(29)
    sup.step()
    assert (pid, signal.SIGKILL) not in procs.signals
    clock.advance(1)
    sup.step()
    assert (pid, signal.SIGKILL) in procs.signals
    procs.exit(pid, -9)
    api.up = True
    sup.step()                            # the first hang restart is immediate (backoff 0)
    assert sup.state == STARTING and sup.pid != pid


def test_blocked_until_cause_is_gone():
    sup, clock, procs, api = make()
    sup.configure(None, "payload /opt/docker does not exist")
    sup.step()
    assert sup.state == BLOCKED and "does not exist" in sup.reason and procs.launches == 0
    sup.configure(SPEC, None)
    sup.step()
    assert sup.state == STARTING


def test_reload_restart_is_immediate_and_not_a_crash():
    sup, clock, procs, api = make()
    api.up = True
    sup.step()
    sup.step()
    pid = sup.pid
    sup.request_restart("reload")
    assert sup.state == STOPPING and sup.restarts["reload"] == 1
    procs.exit(pid, 0)
    sup.step()
    assert sup.state == STARTING and sup.pid != pid
    assert sup.backoff.failures == 0


def test_shutdown_stops_without_restart():
    sup, clock, procs, api = make()
    api.up = True
    sup.step()
    sup.step()
    pid = sup.pid
    sup.shutdown()
    procs.exit(pid, 0)
    sup.step()
    sup.step()
    assert sup.state == STOPPED and procs.launches == 1


def test_backoff_sequence_and_cap():
    b = Backoff(initial=0.5, cap=3.0, stable_seconds=10)
    assert [b.next_delay() for _ in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    b.note_uptime(9.9)
    assert b.next_delay() == 3.0
    b.note_uptime(10)
    assert b.next_delay() == 0.0


def test_another_daemon_answering_on_the_socket_is_not_our_dockerd_running():
    sup, clock, procs, api = make(start_timeout=10.0)
    api.up = True
    api.answering = 4242                  # e.g. the distribution's docker.service on the same socket
    sup.step()
    sup.step()
    assert sup.state == STARTING and not sup.ping_ok
    clock.advance(11)
    sup.step()
    assert sup.state == STOPPING and sup.restarts["start_timeout"] == 1


def test_backoff_survives_a_crash_loop_of_days():
    # 2.0 ** 1024 overflows a float: after ~1026 consecutive failures (17 h at the 60 s cap) the old
    # formula raised OverflowError in every step, and the loop stopped publishing and pinging.
    b = Backoff(initial=1.0, cap=60.0, stable_seconds=60)
    delays = [b.next_delay() for _ in range(5000)]
    assert delays[:8] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(delays[7:]) == {60.0} and b.current() == 60.0
    tiny = Backoff(initial=0.001, cap=3600.0, stable_seconds=60)
    assert [tiny.next_delay() for _ in range(100_000)][-1] == 3600.0


# -- adoption at agent start: the policy lives with the supervisor (agent.dockerd adopt_existing) ----


class AdoptableProcesses(FakeProcesses):
    """A host where a previous agent left a dockerd: pid 77 runs the payload's dockerd (or not)."""

    def __init__(self, exe="/opt/docker/dockerd", age=600.0, clock=None, pidfile_pid=77, **proc):
        super().__init__()
        self.clock = clock
        self.running = {77: exe}
        self.age = age
        self.pidfile_pid = pidfile_pid
        self.proc = dict(cmdline=list(SPEC.argv), personality=0x0008, private=SPEC.private_namespace,
                         environ={})
        self.proc.update(proc)
        self.status[77] = None
        self.removed: list[str] = []
        self.pinned: list[tuple[int, str]] = []

    def read_pidfile(self, path):
        return self.pidfile_pid if path == SPEC.pidfile else None

    def exit(self, pid, status):
        super().exit(pid, status)
        self.running.pop(pid, None)

    def find_process(self, exe, argument):
        return next((pid for pid, e in self.running.items() if e == exe), None)

    def exe(self, pid):
        return self.running.get(pid)

    def adopt(self, pid):
        return ProcessHandle(pid=pid, start_ticks=5) if pid in self.running else None

    def start_time(self, handle):
        return self.clock.time() - self.age

    def state(self, pid):
        return "S" if pid in self.running else None

    def cmdline(self, pid):
        return self.proc["cmdline"]

    def personality(self, pid):
        return self.proc["personality"]

    def mount_ns(self, pid):
        return "mnt:[2]" if pid == 77 and self.proc["private"] else "mnt:[1]"

    def environ(self, pid):
        return self.proc["environ"]

    def remove_file(self, path):
        self.removed.append(path)

    def pin_namespace(self, handle, pin):
        self.pinned.append((handle.pid, pin))
        return None


def make_adopting(age=600.0, answering=True, **kw):
    t = dict(health_interval=5.0, health_timeout=3.0, health_failures=2, start_timeout=60.0, stop_timeout=30.0,
             backoff_initial=1.0, backoff_max=60.0, stable_seconds=60.0)
    clock = FakeClock()
    procs = AdoptableProcesses(age=age, clock=clock, **kw)
    api = FakeApi(procs)
    api.up, api.answering = answering, 77
    sup = DockerdSupervisor(Timings(**t), procs, api, clock)
    sup.configure(SPEC, None)
    return sup, clock, procs, api


def test_adopts_an_answering_dockerd_of_this_payload():
    sup, clock, procs, api = make_adopting()
    assert sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    assert sup.state == RUNNING and sup.pid == 77 and sup.adopted and sup.run.mismatch is None
    assert sup.run.spec == SPEC and procs.launches == 0


def test_a_dockerd_of_another_executable_is_not_adopted():
    sup, clock, procs, api = make_adopting(exe="/usr/sbin/dockerd")
    assert not sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    assert sup.run is None and sup.state == STOPPED


def test_a_dockerd_still_starting_at_agent_restart_is_adopted_as_starting_and_waited_for():
    # `systemctl restart` (or an upgrade) while dockerd starts: it is silent, younger than the start
    # timeout. The old agent neither adopted nor stopped it, and every new dockerd exited on its pidfile.
    sup, clock, procs, api = make_adopting(age=10.0, answering=False)
    assert sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    assert sup.state == STARTING and sup.pid == 77 and procs.launches == 0
    clock.advance(20)
    sup.step()
    assert sup.state == STARTING
    api.up = True
    sup.step()
    assert sup.state == RUNNING and sup.pid == 77 and procs.launches == 0


def test_a_still_starting_dockerd_gets_the_rest_of_its_start_timeout_counted_from_its_own_start():
    sup, clock, procs, api = make_adopting(age=50.0, answering=False)
    sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    clock.advance(9)
    sup.step()
    assert sup.state == STARTING
    clock.advance(2)                       # 61 s after its own start
    sup.step()
    assert sup.state == STOPPING and sup.restarts["start_timeout"] == 1
    assert procs.signals[-2:] == [(77, signal.SIGTERM), (77, signal.SIGCONT)]


def test_a_hung_dockerd_at_agent_restart_is_adopted_and_replaced_by_the_hang_rule():
    # An operator restarts the agent *because* docker hangs (SIGSTOPped, deadlocked): old enough to have
    # answered before, silent now. One failed ping is counted at adoption; one more makes it hung.
    sup, clock, procs, api = make_adopting(age=3600.0, answering=False)
    assert sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    assert sup.state == RUNNING and not sup.ping_ok
    clock.advance(5)
    sup.step()
    assert sup.state == STOPPING and sup.restarts["hung"] == 1
    assert procs.signals[-2:] == [(77, signal.SIGTERM), (77, signal.SIGCONT)]
    procs.exit(77, -15)
    api.answering = None
    sup.step()
    assert sup.state == STARTING and sup.pid != 77


def test_pidfile_not_written_yet_the_dockerd_is_found_by_its_executable():
    sup, clock, procs, api = make_adopting(age=0.5, answering=False, pidfile_pid=None)
    assert sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    assert sup.state == STARTING and sup.pid == 77


def test_adopted_mismatches_are_recorded_for_the_loop_not_acted_on():
    cases = {"arguments": dict(cmdline=["/opt/docker/dockerd", "--debug"]),
             "personality": dict(personality=0x0000),
             "namespace": dict(private=True),
             "environment": dict(environ={"PATH": "/usr/bin"})}
    for expected, proc in cases.items():
        sup, clock, procs, api = make_adopting(**proc)
        sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
        assert sup.run.mismatch == expected and sup.run.spec is None, expected
        assert sup.state == RUNNING and not procs.signals, "the supervisor records; the loop decides"
    sup, clock, procs, api = make_adopting(exe="/opt/docker/dockerd (deleted)")
    procs.running[77] = "/opt/docker/dockerd (deleted)"
    sup.adopt_existing("/run/d.pid", "/opt/docker/dockerd")
    assert sup.run.mismatch == "binary"


def test_a_foreign_dockerd_holding_the_pidfile_blocks_instead_of_crash_looping():
    sup, clock, procs, api = make_adopting(exe="/usr/sbin/dockerd")
    sup.step()
    assert sup.state == BLOCKED and procs.launches == 0
    assert "pidfile /run/d.pid is held by another dockerd (pid 77, /usr/sbin/dockerd)" in sup.reason
    del procs.running[77]                  # the operator stops it
    sup.step()
    assert sup.state == STARTING and procs.launches == 1


def test_a_pidfile_naming_a_reused_pid_is_removed_and_dockerd_started():
    sup, clock, procs, api = make_adopting(exe="/usr/bin/sleep")
    sup.step()
    assert procs.removed == ["/run/d.pid"] and sup.state == STARTING and procs.launches == 1
