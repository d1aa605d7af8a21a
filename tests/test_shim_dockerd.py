"""The shim in front of the real client, against a real dockerd (harness: bare_dockerd, bb:local)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.shim import render_shim
from agent.shim_records import ShimRecordReader
from conftest import requires_docker
from harness import which

HIJACKED = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 1 (v7l)\nCPU architecture: 7\n"
pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def install(folder: Path, cpuinfo: Path, daemon_host: str) -> tuple[Path, Path]:
    shim, records = folder / "docker", folder / "records"
    shim.write_text(render_shim(which("/usr/bin/docker"), str(cpuinfo), str(records), daemon_host, "test"))
    shim.chmod(0o755)
    return shim, records


def through_shim(shim: Path, dockerd, *args: str, **kw) -> subprocess.CompletedProcess:
    # The global -H option in front of the subcommand, as a user pointing at the armhf dockerd would.
    return subprocess.run([str(shim), "-H", dockerd.host, *args], capture_output=True, text=True, timeout=120, **kw)


def test_container_sees_the_hijacked_cpuinfo(bare_dockerd):
    # A folder name docker's --mount CSV would split without quoting.
    folder = bare_dockerd.base / "cpu info, hijacked"
    folder.mkdir()
    cpuinfo = folder / "cpuinfo"
    cpuinfo.write_text(HIJACKED)
    shim, records = install(bare_dockerd.base, cpuinfo, bare_dockerd.host)
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", "bb:local", "cat", "/proc/cpuinfo")
    assert (out.returncode, out.stdout) == (0, HIJACKED), out.stderr
    out = through_shim(shim, bare_dockerd, "container", "run", "--rm", "--network=none", "bb:local", "sh", "-c",
                       "echo x > /proc/cpuinfo")
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert [(r.klass, r.injected) for r in ShimRecordReader(str(records)).read_new()] == [("run", True), ("run", True)]


# dockerd compares targets after path.Clean: with a second mount at any of these it refuses the
# container ("Duplicate mount point").
@pytest.mark.parametrize("option", ["-v@:/proc/cpuinfo:ro", "-v@:/proc/cpuinfo/", "-v@:/proc//cpuinfo",
                                    "--mount=type=bind,src=@,dst=/proc/./cpuinfo",
                                    "--mount=type=bind,src=@,target=/proc/../proc/cpuinfo,readonly"])
def test_the_users_own_cpuinfo_mount_wins(bare_dockerd, option):
    hijacked, theirs = bare_dockerd.base / "hijacked", bare_dockerd.base / "theirs"
    hijacked.write_text(HIJACKED)
    theirs.write_text("their own cpuinfo\n")
    shim, records = install(bare_dockerd.base, hijacked, bare_dockerd.host)
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", option.replace("@", str(theirs)),
                       "bb:local", "cat", "/proc/cpuinfo")
    assert (out.returncode, out.stdout) == (0, "their own cpuinfo\n"), out.stderr
    assert [(r.klass, r.injected) for r in ShimRecordReader(str(records)).read_new()] == [("run", False)]


def test_another_daemon_gets_no_mount(bare_dockerd, tmp_path):
    """The shim fronts the agent's dockerd (its socket: elsewhere here) and has no cpuinfo file for
    this one: the mount would make this dockerd refuse the container."""
    missing = bare_dockerd.base / "not-there" / "cpuinfo"
    agents = tmp_path / "agents-docker.sock"
    agents.touch()
    shim, records = install(bare_dockerd.base, missing, f"unix://{agents}")
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", "bb:local", "true")
    assert out.returncode == 0, out.stderr
    out = subprocess.run([str(shim), "create", "--network", "none", "bb:local", "true"], capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": bare_dockerd.host})
    assert out.returncode == 0, out.stderr
    assert [(r.klass, r.injected) for r in ShimRecordReader(str(records)).read_new()] == [("run", False), ("create", False)]


def test_the_current_context_leads_to_the_agents_daemon(bare_dockerd, tmp_path):
    cpuinfo = bare_dockerd.base / "cpuinfo"
    cpuinfo.write_text(HIJACKED)
    shim, records = install(bare_dockerd.base, cpuinfo, bare_dockerd.host)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv in (["context", "create", "armhf", "--docker", f"host={bare_dockerd.host}"], ["context", "use", "armhf"]):
        subprocess.run([which("/usr/bin/docker"), *argv], check=True, capture_output=True, env=env)
    out = subprocess.run([str(shim), "run", "--rm", "--network", "none", "bb:local", "cat", "/proc/cpuinfo"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert (out.returncode, out.stdout) == (0, HIJACKED), out.stderr
    assert [(r.klass, r.injected) for r in ShimRecordReader(str(records)).read_new()] == [("run", True)]


def test_a_missing_cpuinfo_fails_clearly_and_creates_nothing(bare_dockerd):
    missing = bare_dockerd.base / "not-there" / "cpuinfo"
    shim, _ = install(bare_dockerd.base, missing, bare_dockerd.host)
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", "bb:local", "true")
    assert out.returncode == 125
    assert "bind source path does not exist" in out.stderr and str(missing) in out.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_build_through_the_shim_is_recorded_with_its_result(bare_dockerd):
    cpuinfo = bare_dockerd.base / "cpuinfo"
    cpuinfo.write_text(HIJACKED)
    shim, records = install(bare_dockerd.base, cpuinfo, bare_dockerd.host)
    ok = through_shim(shim, bare_dockerd, "build", "--network", "none", "-t", "ok:local", "-",
                      input="FROM bb:local\nRUN true\n")
    failed = through_shim(shim, bare_dockerd, "image", "build", "--network", "none", "-",
                          input="FROM bb:local\nRUN false\n")
    assert ok.returncode == 0, ok.stderr
    assert failed.returncode == 1
    got = ShimRecordReader(str(records)).read_new()
    assert [(r.klass, r.exit_code) for r in got] == [("build", 0), ("build", 1)]
    assert all(0 < r.duration_seconds < 120 for r in got)
