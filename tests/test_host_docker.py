"""host_docker mode on its own (agent/host_docker.py and the loop's part): the drop-in, the wrapper and
its two cpuinfo views kept in place, systemd told of a changed drop-in, docker.service restarted only when
a reload changed the mode and only once everything is in place; the config edit of `host-docker on|off`;
the paths the agent's own dockerd must not share. A fake systemctl and a fake /proc for the host's
dockerd; real files. The real docker.service under systemd is in test_packaging_systemd.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import host_docker
from agent.config import load_config
from agent.loop import Agent
from agentproc import agent_config, write_config
from harness import make_payload
from test_agent_step import RecordingNotifier, RefusingProcesses


class FakeSystemctl:
    """docker.service as systemd would report it: its dockerd's pid and environment (a fake /proc)."""

    def __init__(self, proc: Path):
        self.proc = proc
        self.calls: list[str] = []
        self.pid: int | None = 4242
        self.environ = {"PATH": host_docker.DEFAULT_PATH}

    def _write_proc(self):
        folder = self.proc / str(self.pid)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in self.environ.items()))

    def daemon_reload(self):
        self.calls.append("daemon-reload")

    def restart(self, *units):
        self.calls.append(f"restart {' '.join(units)}")

    def main_pid(self, unit):
        # containerd.service and docker.service share one environment here (both restarted together).
        if self.pid is not None:
            self._write_proc()
        return self.pid

    def run(self, *args, timeout=60):   # pragma: no cover - not used by the loop
        raise AssertionError(f"unexpected systemctl {args}")


class ProcRoot(RefusingProcesses):
    """No dockerd of the agent's own here (personality refused), and a /proc with the host's dockerd."""

    def __init__(self, proc: Path):
        super().__init__()
        self.proc = str(proc)


@pytest.fixture
def host(base):
    make_payload(base / "payload")
    (base / "bin").mkdir()
    runc = base / "host-runc"
    runc.write_text("#!/bin/sh\nexit 0\n")
    runc.chmod(0o755)
    proc = base / "proc"
    proc.mkdir()

    def config(enabled: bool, **extra):
        overrides = dict(host_docker__enabled=enabled, host_docker__runtime_dir=str(base / "state" / "host-rt"),
                         host_docker__systemd_dir=str(base / "systemd"), host_docker__runc=str(runc),
                         host_docker__daemon_json=str(base / "daemon.json"))
        cfg = agent_config(base, **{**overrides, **extra})
        return load_config(str(write_config(base / "agent.toml", cfg)))

    systemctl = FakeSystemctl(proc)
    return base, config, systemctl, proc


def test_turned_on_by_a_reload_everything_is_put_in_place_then_docker_service_restarted_once(host):
    base, config, systemctl, proc = host
    agent = Agent(config(False), processes=ProcRoot(proc), notifier=RecordingNotifier(), systemctl=systemctl)
    agent.step()
    dropin = base / "systemd" / "docker.service.d" / "50-armhf-agent.conf"
    assert not dropin.exists() and systemctl.calls == []
    config(True)
    agent.flags.add("reload")
    agent.step()
    assert systemctl.calls == ["daemon-reload", "restart containerd.service docker.service"]
    text = dropin.read_text()
    wrapper_dir = base / "state" / "host-rt"
    assert f'Environment="PATH={wrapper_dir}:{host_docker.DEFAULT_PATH}"' in text
    assert f'Environment="DOCKER_BUILDKIT_RUNC_COMMAND={wrapper_dir}/runc"' in text
    containerd = (base / "systemd" / "containerd.service.d" / "50-armhf-agent.conf").read_text()
    assert f'Environment="PATH={wrapper_dir}:{host_docker.DEFAULT_PATH}"' in containerd
    assert "DOCKER_BUILDKIT_RUNC_COMMAND" not in containerd
    wrapper = (wrapper_dir / "runc").read_text()
    assert "'host'" in wrapper and str(base / "host-runc") in wrapper and "create | run | exec)" in wrapper
    assert "CPU architecture: 7" in (wrapper_dir / "cpuinfo-armv7").read_text()
    v6 = (wrapper_dir / "cpuinfo-armv6").read_text()
    assert "ARMv6-compatible processor" in v6 and "neon" not in v6
    # docker.service came back with the wrapper (systemd read the drop-in): wired, nothing more to do.
    systemctl.pid, systemctl.environ = 4343, {"PATH": f"{wrapper_dir}:{host_docker.DEFAULT_PATH}",
                                              "DOCKER_BUILDKIT_RUNC_COMMAND": f"{wrapper_dir}/runc"}
    agent.flags.add("check")
    agent.step()
    snap = agent.latest.host_docker
    assert (snap.enabled, snap.wired, snap.pid, snap.problem) == (True, True, 4343, "")
    assert systemctl.calls == ["daemon-reload", "restart containerd.service docker.service"], "restarted once"


def test_a_drifted_drop_in_is_repaired_and_systemd_told_but_docker_service_never_restarted_for_it(host):
    base, config, systemctl, proc = host
    agent = Agent(config(True), processes=ProcRoot(proc), notifier=RecordingNotifier(), systemctl=systemctl)
    agent.step()
    assert systemctl.calls == ["daemon-reload"], "not asked: started with the mode on, no restart"
    dropin = base / "systemd" / "docker.service.d" / "50-armhf-agent.conf"
    good = dropin.read_text()
    dropin.unlink()
    agent.step()
    assert dropin.read_text() == good
    assert systemctl.calls == ["daemon-reload", "daemon-reload"]
    # Not wired (docker.service still has the default PATH): said plainly, and degraded.
    snap = agent.latest.host_docker
    assert not snap.wired and "runs without the wrapper" in snap.problem and "host-docker on" in snap.problem


def test_turned_off_the_drop_in_goes_first_and_the_wrapper_only_once_docker_service_let_go(host):
    base, config, systemctl, proc = host
    wrapper_dir = base / "state" / "host-rt"
    systemctl.environ = {"PATH": f"{wrapper_dir}:{host_docker.DEFAULT_PATH}",
                         "DOCKER_BUILDKIT_RUNC_COMMAND": f"{wrapper_dir}/runc"}
    agent = Agent(config(True), processes=ProcRoot(proc), notifier=RecordingNotifier(), systemctl=systemctl)
    agent.step()
    config(False)
    agent.flags.add("reload")
    agent.step()
    dropin = base / "systemd" / "docker.service.d" / "50-armhf-agent.conf"
    assert not dropin.exists()
    assert systemctl.calls == ["daemon-reload", "daemon-reload", "restart containerd.service docker.service"]
    assert (wrapper_dir / "runc").exists(), "the running dockerd still names it for BuildKit"
    systemctl.pid, systemctl.environ = 4444, {"PATH": host_docker.DEFAULT_PATH}    # restarted off the wrapper
    agent.flags.add("check")
    agent.step()
    assert not (wrapper_dir / "runc").exists() and not (wrapper_dir / "cpuinfo-armv7").exists()
    assert agent.latest.host_docker.enabled is False
    assert "host-runtime-wrapper" not in [f.name for f in agent.latest.files]


def test_a_foreign_drop_in_of_the_same_name_is_kept_aside_not_destroyed(host):
    base, config, systemctl, proc = host
    dropin = base / "systemd" / "docker.service.d" / "50-armhf-agent.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nEnvironment=OPERATOR=1\n")
    agent = Agent(config(True), processes=ProcRoot(proc), notifier=RecordingNotifier(), systemctl=systemctl)
    agent.step()
    kept = [p for p in (base / "state" / "displaced").iterdir() if p.name.startswith("host-docker-dropin")]
    assert kept and kept[0].read_text() == "[Service]\nEnvironment=OPERATOR=1\n"


def test_the_agents_own_dockerd_must_not_share_a_path_with_docker_service(host):
    base, config, systemctl, proc = host
    (base / "daemon.json").write_text(json.dumps({"data-root": str(base / "data")}))
    shared = host_docker.conflicts(config(True).config)
    assert shared == [f"docker.data_root {str(base / 'data')!r} is also docker.service's ({base / 'data'}): with "
                      "host_docker on, the agent's own dockerd needs a path of its own"]
    # Docker's defaults: the agent's defaults are the same, so turning the mode on with them is refused.
    defaults = load_config(None, environ={"ARMHF_AGENT_HOST_DOCKER__ENABLED": "true"}).config
    names = " ".join(host_docker.conflicts(defaults))
    assert all(k in names for k in ("docker.host", "docker.data_root", "docker.exec_root", "docker.pidfile",
                                    "docker.config_file"))
    # Both would read /etc/docker/daemon.json (the agent's "" is dockerd's default), or one file named twice.
    for ours, theirs, clash in (("", "/etc/docker/daemon.json", True), ("/etc/docker/daemon.json", "/etc/docker/daemon.json", True),
                                ("/etc/armhf-agent/daemon.json", "/etc/docker/daemon.json", False),
                                ("", "/srv/docker.json", False)):
        c = config(True, docker__config_file=ours, host_docker__daemon_json=theirs).config
        found = [p for p in host_docker.conflicts(c) if p.startswith("docker.config_file")]
        assert bool(found) == clash, (ours, theirs, found)
    # /var/run is /run.
    run = load_config(None, environ={"ARMHF_AGENT_HOST_DOCKER__ENABLED": "true", "ARMHF_AGENT_DOCKER__HOST":
                                     "unix:///run/docker.sock"}).config
    assert any("docker.host" in p for p in host_docker.conflicts(run))


@pytest.mark.parametrize("text, expected", [
    ("[host_docker]\nenabled = false\nunit = \"docker.service\"\n", "[host_docker]\nenabled = true\nunit = \"docker.service\"\n"),
    ("[agent]\nx = 1\n\n[host_docker]\n  enabled=false   # opt-in\n", "[agent]\nx = 1\n\n[host_docker]\n  enabled = true  # opt-in\n"),
    ("[host_docker]\nunit = \"d.service\"\n", "[host_docker]\nenabled = true\nunit = \"d.service\"\n"),
    ("[agent]\nstate_dir = \"/s\"\n", "[agent]\nstate_dir = \"/s\"\n\n[host_docker]\nenabled = true\n"),
    ("[docker]\nenabled = false\n[host_docker]\n", "[docker]\nenabled = false\n[host_docker]\nenabled = true\n"),
])
def test_host_docker_on_changes_one_line_and_keeps_the_rest(text, expected):
    assert host_docker.with_enabled(text, True) == expected
    assert host_docker.with_enabled(expected, False) != expected


def test_the_shipped_config_round_trips_through_on_and_off():
    shipped = (Path(__file__).resolve().parent.parent / "etc" / "armhf-agent" / "agent.toml").read_text()
    on = host_docker.with_enabled(shipped, True)
    assert on.count("\n") == shipped.count("\n") and "enabled = true" in on
    assert host_docker.with_enabled(on, False) == shipped
