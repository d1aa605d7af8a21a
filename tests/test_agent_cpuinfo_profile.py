"""The agent's step with a cpuinfo profile the host cannot show, and with a broken sys root: the file
is reported "not ok" with the reason, nothing is written over the old one, the step carries on, and
the published state says which profile is in force and what it hides. The host views are real dumps
(tests/fixtures/cpuinfo) handed to the agent's CpuinfoSource."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.config import load_config
from agent.hijack import CpuinfoSource
from agent.loop import Agent
from agentproc import agent_config, write_config
from harness import make_payload
from test_agent_step import RecordingNotifier, RefusingProcesses

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"
PI3_FEATURES = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32"


def make_agent(base: Path, profile: str) -> Agent:
    make_payload(base / "payload")
    (base / "bin").mkdir()
    # Full checks only when a test asks for one (flags), not by the clock.
    config = agent_config(base, cpuinfo__profile=profile, agent__check_interval_seconds=3600)
    loaded = load_config(str(write_config(base / "agent.toml", config)))
    return Agent(loaded, processes=RefusingProcesses(), notifier=RecordingNotifier())


def fake_sys(base: Path) -> Path:
    online = base / "sys" / "devices" / "system" / "cpu" / "online"
    online.parent.mkdir(parents=True)
    online.write_text("0-3\n")
    return base / "sys"


def full_check(agent: Agent) -> None:
    """A step that re-checks everything (SIGUSR1, or every check_interval_seconds): a failed render is
    retried then, not on every step."""
    agent.flags.add("check")
    agent.step()


def cpuinfo_file(agent: Agent):
    return next(f for f in agent.latest.files if f.name == "cpuinfo")


def test_a_profile_the_host_cannot_run_leaves_the_file_not_ok_and_the_old_one_in_place(base):
    agent = make_agent(base, "raspberrypi3-32")
    sys_root = fake_sys(base)
    path = Path(agent.config.cpuinfo.path)
    path.write_text("processor\t: 0\nwhat an earlier profile wrote\n")
    # A Raspberry Pi 2 as the host (armv7l kernel): its Cortex-A7 has no crc32.
    agent.cpuinfo_source = CpuinfoSource("raspberrypi3-32", sys_root=str(sys_root), machine="armv7l",
                                         read_native=lambda: (FIXTURES / "raspberrypi2.txt").read_text())
    calls = []
    read_native = agent.cpuinfo_source.read_native
    agent.cpuinfo_source.read_native = lambda: calls.append(1) or read_native()
    for _ in range(3):
        agent.step()
    # Rendered at the first (full) step only; the steps in between do not re-read the kernel's view.
    assert len(calls) == 1
    f = cpuinfo_file(agent)
    assert not f.ok
    assert f.problem.startswith("cannot render: profile 'raspberrypi3-32' claims crc32, which this host cannot run")
    assert path.read_text() == "processor\t: 0\nwhat an earlier profile wrote\n"
    d = agent.latest.dockerd
    assert d.state == "blocked" and d.reason.startswith("cpuinfo file not in place (cannot render: profile")
    assert agent.latest.cpuinfo.profile == "raspberrypi3-32" and agent.latest.cpuinfo.features == ()

    # The online CPU list swapped for a FIFO: no hang, the reason names it.
    online = sys_root / "devices" / "system" / "cpu" / "online"
    online.unlink()
    os.mkfifo(online)
    full_check(agent)
    assert f"{online}: is a FIFO, not a regular file" in cpuinfo_file(agent).problem

    # A host that runs the profile (an arm64 kernel, Mate 20's Cortex-A76/A55): rendered and in place.
    online.unlink()
    online.write_text("0-5\n")
    agent.cpuinfo_source = CpuinfoSource("raspberrypi3-32", sys_root=str(sys_root), machine="aarch64",
                                         read_native=lambda: (FIXTURES / "huawei-mate-20.txt").read_text(),
                                         read_compat=lambda: None)
    full_check(agent)
    assert cpuinfo_file(agent).ok, cpuinfo_file(agent).problem
    text = path.read_text()
    assert text.count("processor\t:") == 6 and f"Features\t: {PI3_FEATURES}\n" in text
    state = agent.latest.cpuinfo
    assert (state.profile, state.variant, " ".join(state.features)) == ("raspberrypi3-32", "v7", PI3_FEATURES)
    assert state.hidden_features == ("fphp", "asimdhp", "aes", "pmull", "sha1", "sha2")
    published = json.loads((Path(agent.config.agent.run_dir) / "state.json").read_text())
    assert published["cpuinfo"] == {"profile": "raspberrypi3-32", "variant": "v7", "features": PI3_FEATURES.split(),
                                    "hidden_features": ["fphp", "asimdhp", "aes", "pmull", "sha1", "sha2"]}
