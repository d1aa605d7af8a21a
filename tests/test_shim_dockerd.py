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


def install(folder: Path, cpuinfo: Path) -> tuple[Path, Path]:
    shim, records = folder / "docker", folder / "records"
    shim.write_text(render_shim(which("/usr/bin/docker"), str(cpuinfo), str(records), "test"))
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
    shim, records = install(bare_dockerd.base, cpuinfo)
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", "bb:local", "cat", "/proc/cpuinfo")
    assert (out.returncode, out.stdout) == (0, HIJACKED), out.stderr
    out = through_shim(shim, bare_dockerd, "container", "run", "--rm", "--network=none", "bb:local", "sh", "-c",
                       "echo x > /proc/cpuinfo")
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert [(r.klass, r.injected) for r in ShimRecordReader(str(records)).read_new()] == [("run", True), ("run", True)]


def test_the_users_own_cpuinfo_mount_wins(bare_dockerd):
    hijacked, theirs = bare_dockerd.base / "hijacked", bare_dockerd.base / "theirs"
    hijacked.write_text(HIJACKED)
    theirs.write_text("their own cpuinfo\n")
    shim, _ = install(bare_dockerd.base, hijacked)
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", "-v", f"{theirs}:/proc/cpuinfo:ro",
                       "bb:local", "cat", "/proc/cpuinfo")
    assert (out.returncode, out.stdout) == (0, "their own cpuinfo\n"), out.stderr


def test_a_missing_cpuinfo_fails_clearly_and_creates_nothing(bare_dockerd):
    missing = bare_dockerd.base / "not-there" / "cpuinfo"
    shim, _ = install(bare_dockerd.base, missing)
    out = through_shim(shim, bare_dockerd, "run", "--rm", "--network", "none", "bb:local", "true")
    assert out.returncode == 125
    assert "bind source path does not exist" in out.stderr and str(missing) in out.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_build_through_the_shim_is_recorded_with_its_result(bare_dockerd):
    cpuinfo = bare_dockerd.base / "cpuinfo"
    cpuinfo.write_text(HIJACKED)
    shim, records = install(bare_dockerd.base, cpuinfo)
    ok = through_shim(shim, bare_dockerd, "build", "--network", "none", "-t", "ok:local", "-",
                      input="FROM bb:local\nRUN true\n")
    failed = through_shim(shim, bare_dockerd, "image", "build", "--network", "none", "-",
                          input="FROM bb:local\nRUN false\n")
    assert ok.returncode == 0, ok.stderr
    assert failed.returncode == 1
    got = ShimRecordReader(str(records)).read_new()
    assert [(r.klass, r.exit_code) for r in got] == [("build", 0), ("build", 1)]
    assert all(0 < r.duration_seconds < 120 for r in got)
