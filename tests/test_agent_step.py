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
