"""`Agent.step()` called directly (the loop shell is not needed): the blocked paths a fleet host can hit."""

from __future__ import annotations

from agent.config import load_config
from agent.loop import Agent
from agent.processes import Processes
from agentproc import agent_config, write_config
from harness import make_payload


class RefusingProcesses(Processes):
    """A host whose CPU has no AArch32 at EL0: the kernel refuses PER_LINUX32 (EINVAL)."""

    def __init__(self):
        super().__init__()
        self.launched = 0

    def probe_personality(self, personality):
        return "personality(PER_LINUX32) refused: this CPU cannot execute AArch32 at EL0"

    def launch(self, *args, **kw):
        self.launched += 1
        raise AssertionError("dockerd must not be started")


class RecordingNotifier:
    def __init__(self):
        self.messages = []
        self.ready_sent = False
        self.watchdog_interval = None

    def ready(self):
        self.ready_sent = True
        self.messages.append("READY=1")

    def status(self, line):
        self.messages.append("STATUS=" + line)

    def watchdog(self, now):
        pass

    def watchdog_due_in(self, now):
        return 3600.0

    def reloading(self):
        self.messages.append("RELOADING=1")

    def reloaded(self):
        self.messages.append("READY=1")

    def stopping(self):
        self.messages.append("STOPPING=1")

    def extend_timeout(self, seconds):
        self.messages.append(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")


def test_personality_refused_blocks_dockerd_reports_and_stays_up(base):
    make_payload(base / "payload")
    (base / "bin").mkdir()
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    procs, notifier = RefusingProcesses(), RecordingNotifier()
    agent = Agent(loaded, processes=procs, notifier=notifier)
    for _ in range(3):
        agent.step()
    snap = agent.latest
    assert procs.launched == 0
    assert snap.dockerd.state == "blocked"
    assert "AArch32" in snap.dockerd.reason and "doctor" in snap.dockerd.reason
    assert "READY=1" in notifier.messages, "the unit becomes active with the cause visible"
    assert any(m.startswith("STATUS=dockerd blocked: personality(PER_LINUX32) refused") for m in notifier.messages)
    # The managed files are still kept in place while blocked.
    assert all(f.ok for f in snap.files)


def test_unsafe_payload_blocks_with_the_culprit_named(base):
    make_payload(base / "payload")
    (base / "payload" / "bin" / "dockerd").chmod(0o777)
    (base / "bin").mkdir()
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    notifier = RecordingNotifier()
    agent = Agent(loaded, notifier=notifier)
    agent.step()
    d = agent.latest.dockerd
    assert d.state == "blocked"
    assert f"{base}/payload/bin/dockerd is writable by group or others (mode 0777)" in d.reason
    assert agent.latest.payload.state == "invalid"


def _script(path, body: str) -> None:
    path.unlink(missing_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_nothing_of_an_unsafe_payload_is_ever_run(base):
    # A payload others can write is BLOCKED; before, status's `dockerd --version` still ran its dockerd
    # as root, and the shim was rendered around its docker client (root's next `docker ps` ran it).
    make_payload(base / "payload")
    ran = base / "ran"
    for name in ("dockerd", "docker"):
        _script(base / "payload" / "bin" / name, f"echo {name} >> {ran}\necho 'Docker version 99.0.0, build x'\n")
    (base / "payload" / "bin" / "docker").chmod(0o777)
    (base / "bin").mkdir()
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    agent = Agent(loaded, notifier=RecordingNotifier())
    for _ in range(3):
        agent.step()
    snap = agent.latest
    assert snap.dockerd.state == "blocked" and snap.payload.state == "invalid"
    assert snap.payload.version == "", "the unsafe payload's dockerd was asked its version"
    assert not (base / "bin" / "docker").exists(), "a shim was installed in front of the unsafe client"
    shim = next(f for f in snap.files if f.name == "shim")
    assert not shim.ok and "its docker client is not run" in shim.problem
    assert not ran.exists(), f"payload code ran: {ran.read_text()}"


def test_an_installed_shim_is_taken_away_when_the_payload_turns_unsafe_and_the_original_is_back(base):
    make_payload(base / "payload")
    (base / "bin").mkdir()
    original = base / "bin" / "docker"
    original.write_bytes(b"#!/bin/sh\necho the host's own docker client\n")
    original.chmod(0o755)
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    agent = Agent(loaded, notifier=RecordingNotifier(), processes=RefusingProcesses())
    agent.step()
    assert b"installed by armhf-agent" in original.read_bytes()
    (base / "payload" / "bin" / "dockerd").chmod(0o666)           # planted: writable by others
    agent.flags.add("check")
    agent.step()
    assert original.read_bytes() == b"#!/bin/sh\necho the host's own docker client\n"
    (base / "payload" / "bin" / "dockerd").chmod(0o755)
    agent.tracker.changed_at -= 60                                  # settled
    agent.flags.add("check")
    agent.step()
    assert b"installed by armhf-agent" in original.read_bytes(), "the shim returns with a valid payload"


def test_no_shim_around_a_32_bit_client_on_a_cpu_without_aarch32(base, monkeypatch):
    # Graviton4-like host: the armhf client cannot execute. Before, the shim replaced the host's docker
    # with it, and every `docker` on the host failed.
    from agent import aarch32

    make_payload(base / "payload")
    client = base / "payload" / "bin" / "docker"
    client.unlink()
    client.write_bytes(aarch32.probe_elf())
    client.chmod(0o755)
    (base / "bin").mkdir()
    host_docker = base / "bin" / "docker"
    host_docker.write_bytes(b"#!/bin/sh\necho host docker\n")
    host_docker.chmod(0o755)
    monkeypatch.setattr(aarch32, "detect", lambda runner: aarch32.Aarch32Report("unsupported", "exec failed: ENOEXEC"))
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    agent = Agent(loaded, processes=RefusingProcesses(), notifier=RecordingNotifier())
    agent.step()
    assert host_docker.read_bytes() == b"#!/bin/sh\necho host docker\n"
    shim = next(f for f in agent.latest.files if f.name == "shim")
    assert not shim.ok and "32-bit ARM and this CPU cannot execute it" in shim.problem


class ExplodingTracker:
    """Stands in for a phase that raises something nobody planned for."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def observe(self, state):
        raise RuntimeError("disk on fire")


def test_a_phase_that_raises_does_not_stop_supervision_publishing_or_the_watchdog(base):
    make_payload(base / "payload")
    (base / "bin").mkdir()
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    notifier = RecordingNotifier()
    watchdogs = []
    notifier.watchdog = watchdogs.append
    procs = RefusingProcesses()
    agent = Agent(loaded, processes=procs, notifier=notifier)
    agent.step()
    agent.tracker = ExplodingTracker(agent.tracker)
    steps = agent.steps
    for _ in range(3):
        agent.step()
    assert agent.steps == steps + 3 and len(watchdogs) == 4
    assert agent.phase_failures == {"payload": "RuntimeError: disk on fire"}
    assert agent.latest.dockerd.state == "blocked", "supervision still ran"


def test_a_cpuinfo_that_cannot_be_rendered_leaves_the_file_not_ok_and_the_step_going(base):
    from agent.cpuinfo import CpuinfoError

    make_payload(base / "payload")
    (base / "bin").mkdir()
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    agent = Agent(loaded, processes=RefusingProcesses(), notifier=RecordingNotifier())
    agent.step()
    good = (base / "hijacked-armhf-cpuinfo").read_bytes()

    def broken():
        raise CpuinfoError("/sys/devices/system/cpu/online: cannot read the online CPU list")

    agent.cpuinfo_source.render = broken
    agent.flags.add("check")
    agent.step()
    cpuinfo = next(f for f in agent.latest.files if f.name == "cpuinfo")
    assert not cpuinfo.ok and "cannot read the online CPU list" in cpuinfo.problem
    assert (base / "hijacked-armhf-cpuinfo").read_bytes() == good, "the last good file stays"
    assert agent.phase_failures == {}


def test_a_repeating_phase_error_is_logged_once_per_window_whatever_its_message(base, caplog):
    # The rate-limit key is the phase and the kind of failure, never the message text: an error that
    # carries a counter or a timestamp in its text would otherwise flood the journal.
    import logging

    make_payload(base / "payload")
    (base / "bin").mkdir()
    loaded = load_config(str(write_config(base / "agent.toml", agent_config(base))))
    agent = Agent(loaded, processes=RefusingProcesses(), notifier=RecordingNotifier())
    n = iter(range(1000))

    def failing(state):
        raise OSError(f"attempt {next(n)}: device busy")

    agent.tracker = ExplodingTracker(agent.tracker)
    agent.tracker.observe = failing
    with caplog.at_level(logging.ERROR, logger="armhf-agent"):
        for _ in range(20):
            agent.step()
    logged = [r for r in caplog.records if "step: payload failed" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
