"""`armhf-agent status` against state files written here and real processes standing in for the agent."""

from __future__ import annotations

import io
import json
import subprocess
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest

from agent.config import AgentConfig, AgentSection, CpuinfoSection
from agent.state import CpuinfoState, DockerdState, FileState, PayloadState, Snapshot
from agent.status import read_status, render_human, render_json, status_command

NOW = 1_800_000_000.0


def started(argv: list[str]) -> subprocess.Popen:
    """Popen returns right after exec, when /proc/PID/cmdline can still read empty for a moment."""
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.005)
    return proc


@pytest.fixture
def agent_process(tmp_path):
    """A live process whose command line names armhf-agent, as the console script's does."""
    program = tmp_path / "armhf-agent"
    program.symlink_to("/bin/sleep")
    proc = started([str(program), "300"])
    yield proc
    proc.kill()
    proc.wait()


def config_for(run_dir: Path, variant: str = "v7") -> AgentConfig:
    return AgentConfig(agent=AgentSection(run_dir=str(run_dir), check_interval_seconds=10),
                       cpuinfo=CpuinfoSection(variant=variant))


def healthy_snapshot(pid: int, arch: str = "x86_64") -> Snapshot:
    return Snapshot(
        version="0.1.0", pid=pid, state="running", started_at=NOW - 3 * 3600, last_step_at=NOW - 4, steps=1000,
        config_path="/etc/armhf-agent/agent.toml", metrics_url="http://127.0.0.1:9742/metrics",
        exec_mode="native", exec_detail="exec ran (exit 42)",
        dockerd=DockerdState(state="running", pid=812, started_at=NOW - 3600, restarts={"hung": 1, "exited": 1},
                             last_restart_reason="hung", last_restart_at=NOW - 3600, ping_ok=True,
                             platform_os="linux", platform_arch="arm" if arch == "arm" else "amd64",
                             platform_variant="v7" if arch == "arm" else "", server_version="20.10.24"),
        payload=PayloadState(root="/opt/docker", state="ok", version="20.10.24", arch=arch),
        files=(FileState(name="cpuinfo", path="/hijacked-armhf-cpuinfo", ok=True),
               FileState(name="shim", path="/usr/local/bin/docker", ok=True, repairs={"content": 2},
                         last_repair_reason="content", last_repair_at=NOW - 300)),
    )


def write_state(run_dir: Path, snapshot: Snapshot) -> None:
    run_dir.mkdir(exist_ok=True)
    (run_dir / "state.json").write_text(snapshot.to_json())


# A small validator for the JSON Schema subset status.schema.json uses (type, const, enum, required,
# properties, items, additionalProperties), so the schema file itself is what the output is held to.
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value, schema: dict, where: str = "$") -> list[str]:
    errors = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: {value!r} is not {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {key}" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], f"{where}.{key}")
            elif properties:
                errors.append(f"{where}: key {key} is not in the schema")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


STATUS_SCHEMA = json.loads(resources.files("agent").joinpath("data/status.schema.json").read_text())


def assert_schema_valid(doc: dict) -> None:
    assert schema_errors(doc, STATUS_SCHEMA) == []


def test_the_validator_rejects_what_the_schema_forbids():
    assert schema_errors({"schema": 1}, STATUS_SCHEMA)  # required keys missing
    report = render_json(read_status(config_for(Path("/nonexistent-run-dir")), NOW))
    assert schema_errors({**report, "exit_code": 2}, STATUS_SCHEMA) == ["$.exit_code: 2 not in [0, 1, 3, 4]"]
    assert schema_errors({**report, "files": [{"name": 1}]}, STATUS_SCHEMA)


def test_healthy(tmp_path, agent_process):
    config = config_for(tmp_path / "run")
    write_state(tmp_path / "run", healthy_snapshot(agent_process.pid))
    report = read_status(config, NOW)
    assert (report.exit_code, report.status, report.problems) == (0, "healthy", [])
    text = render_human(report)
    assert f"agent: running (pid {agent_process.pid}, up 3h0m, last step 4s ago): healthy" in text
    assert "dockerd: running (pid 812, up 1h0m); restarts 2 (last: hung, 1h0m ago)" in text
    assert "payload: ok 20.10.24 (x86_64) at /opt/docker; platform linux/amd64" in text
    assert "files: cpuinfo ok; shim ok (last repair: content, 5m0s ago)" in text
    assert "exec: native" in text and "metrics: http://127.0.0.1:9742/metrics" in text
    doc = render_json(report)
    assert_schema_valid(doc)
    assert doc["dockerd"]["uptime_seconds"] == 3600 and doc["files"][1]["repairs_total"] == 2


PI3 = CpuinfoState(profile="raspberrypi3-32", variant="v7",
                   features=tuple("half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm "
                                  "crc32".split()),
                   hidden_features=("aes", "pmull", "sha1", "sha2"))


def test_the_cpuinfo_profile_in_status(tmp_path, agent_process):
    config = config_for(tmp_path / "run")
    write_state(tmp_path / "run", replace(healthy_snapshot(agent_process.pid), cpuinfo=PI3))
    report = read_status(config, NOW)
    doc = render_json(report)
    assert_schema_valid(doc)
    assert doc["cpuinfo"] == {"profile": "raspberrypi3-32", "variant": "v7", "features": list(PI3.features),
                              "hidden_features": ["aes", "pmull", "sha1", "sha2"]}
    assert ("cpuinfo: profile raspberrypi3-32 (linux/arm/v7): half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 "
            "idiva idivt vfpd32 lpae evtstrm crc32; hides aes pmull sha1 sha2\n") in render_human(report)
    # Not running: null, like the other sections.
    assert render_json(read_status(config_for(tmp_path / "elsewhere"), NOW))["cpuinfo"] is None


def test_the_schema_requires_exactly_what_status_prints(tmp_path, agent_process):
    write_state(tmp_path / "run", healthy_snapshot(agent_process.pid))
    doc = render_json(read_status(config_for(tmp_path / "run"), NOW))
    assert set(doc) == set(STATUS_SCHEMA["required"]) == set(STATUS_SCHEMA["properties"])
    assert set(doc["cpuinfo"]) == set(STATUS_SCHEMA["properties"]["cpuinfo"]["required"])


def test_a_state_file_from_before_profiles_still_reads(tmp_path, agent_process):
    old = json.loads(healthy_snapshot(agent_process.pid).to_json())
    del old["cpuinfo"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text(json.dumps(old))
    report = read_status(config_for(tmp_path / "run"), NOW)
    assert report.status == "healthy"
    doc = render_json(report)
    assert_schema_valid(doc)
    assert doc["cpuinfo"] == {"profile": "", "variant": "", "features": [], "hidden_features": []}
    assert "cpuinfo: profile unknown (an agent older than cpuinfo profiles)" in render_human(report)
    # And what the agent writes reads back the same.
    snap = replace(healthy_snapshot(agent_process.pid), cpuinfo=PI3)
    assert Snapshot.from_dict(json.loads(snap.to_json())) == snap


def test_status_command_uses_the_real_clock_and_prints_json(tmp_path, agent_process):
    config = config_for(tmp_path / "run")
    write_state(tmp_path / "run", replace(healthy_snapshot(agent_process.pid), last_step_at=time.time()))
    out = io.StringIO()
    assert status_command(config, True, out) == 0
    doc = json.loads(out.getvalue())
    assert_schema_valid(doc)
    assert doc["status"] == "healthy" and doc["agent"]["pid"] == agent_process.pid


@pytest.mark.parametrize("change, expected", [
    (lambda s: replace(s, dockerd=replace(s.dockerd, state="blocked", pid=None,
                                          reason="CPU has no AArch32 at EL0 (personality EINVAL)")),
     "dockerd blocked: CPU has no AArch32 at EL0 (personality EINVAL)"),
    (lambda s: replace(s, dockerd=replace(s.dockerd, state="backoff", reason="exited with status 1")),
     "dockerd backoff: exited with status 1"),
    (lambda s: replace(s, dockerd=replace(s.dockerd, ping_ok=False)), "dockerd not answering /_ping"),
    (lambda s: replace(s, files=(replace(s.files[0], ok=False, problem="symlink planted"), s.files[1])),
     "cpuinfo /hijacked-armhf-cpuinfo not ok: symlink planted"),
    (lambda s: replace(s, payload=replace(s.payload, state="invalid", problem="/opt/docker/dockerd is world-writable")),
     "payload invalid: /opt/docker/dockerd is world-writable"),
    (lambda s: replace(s, last_step_at=NOW - 61), "agent stuck: last loop step 1m1s ago"),
])
def test_degraded_says_what(tmp_path, agent_process, change, expected):
    config = config_for(tmp_path / "run")
    write_state(tmp_path / "run", change(healthy_snapshot(agent_process.pid)))
    report = read_status(config, NOW)
    assert (report.exit_code, report.status, report.problems) == (1, "degraded", [expected])
    assert f"degraded: {expected}" in render_human(report)
    assert_schema_valid(render_json(report))


def test_last_step_just_inside_the_limit_is_not_stuck(tmp_path, agent_process):
    write_state(tmp_path / "run", replace(healthy_snapshot(agent_process.pid), last_step_at=NOW - 60))
    assert read_status(config_for(tmp_path / "run"), NOW).exit_code == 0


def test_armhf_payload_needs_native_exec_and_the_configured_variant(tmp_path, agent_process):
    snapshot = healthy_snapshot(agent_process.pid, arch="arm")
    write_state(tmp_path / "run", snapshot)
    assert read_status(config_for(tmp_path / "run"), NOW).exit_code == 0

    emulated = replace(snapshot, exec_mode="emulated", exec_detail="binfmt handler qemu-arm claims 32-bit ARM ELF",
                       dockerd=replace(snapshot.dockerd, platform_variant="v8"))
    write_state(tmp_path / "run", emulated)
    assert read_status(config_for(tmp_path / "run"), NOW).problems == [
        "exec mode emulated: binfmt handler qemu-arm claims 32-bit ARM ELF",
        "daemon platform linux/arm/v8, expected linux/arm/v7",
    ]
    # An armel setup (cpuinfo.variant = "v6") expects v6 and calls v7 degraded.
    write_state(tmp_path / "run", snapshot)
    assert read_status(config_for(tmp_path / "run", variant="v6"), NOW).problems == [
        "daemon platform linux/arm/v7, expected linux/arm/v6"]


def test_stand_in_payload_on_a_development_host_is_not_judged_on_exec_mode(tmp_path, agent_process):
    snapshot = replace(healthy_snapshot(agent_process.pid, arch="x86_64"), exec_mode="unsupported")
    write_state(tmp_path / "run", snapshot)
    assert read_status(config_for(tmp_path / "run"), NOW).exit_code == 0


def test_not_running_without_a_state_file(tmp_path):
    out = io.StringIO()
    assert status_command(config_for(tmp_path / "run"), False, out) == 3
    assert out.getvalue() == f"agent: not running: no state file {tmp_path}/run/state.json\n"
    report = read_status(config_for(tmp_path / "run"), NOW)
    assert_schema_valid(render_json(report))


def test_not_running_when_the_pid_is_dead(tmp_path):
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    write_state(tmp_path / "run", healthy_snapshot(proc.pid))
    report = read_status(config_for(tmp_path / "run"), NOW)
    assert report.exit_code == 3
    assert report.problems == [f"agent pid {proc.pid} from {tmp_path}/run/state.json is gone"]
    assert_schema_valid(render_json(report))


def test_not_running_when_the_pid_belongs_to_another_program(tmp_path):
    other = started(["/bin/sleep", "300"])
    try:
        write_state(tmp_path / "run", healthy_snapshot(other.pid))
        report = read_status(config_for(tmp_path / "run"), NOW)
    finally:
        other.kill()
        other.wait()
    assert report.exit_code == 3
    assert "is now '/bin/sleep 300', not armhf-agent" in report.problems[0]


def test_module_form_of_the_agent_counts_as_the_agent(tmp_path):
    # `python -m agent run` as well as the console script; -c keeps this process cheap and alive.
    proc = started(["/bin/sh", "-c", "sleep 300; :", "sh", "-m", "agent.cli", "run"])
    try:
        write_state(tmp_path / "run", healthy_snapshot(proc.pid))
        assert read_status(config_for(tmp_path / "run"), NOW).exit_code == 0
    finally:
        proc.kill()
        proc.wait()


def test_unreadable_state_file_is_status_unknown_naming_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text("{not json")
    out = io.StringIO()
    assert status_command(config_for(tmp_path / "run"), False, out) == 4
    assert out.getvalue().startswith(f"agent: status unknown: cannot read state file {tmp_path}/run/state.json: ")
    assert_schema_valid(render_json(read_status(config_for(tmp_path / "run"), NOW)))
