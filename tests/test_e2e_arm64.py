"""The host side of the arm64 end-to-end harness (e2e/e2e_arm64.py): how it reads a guest's serial
console, and which packages it preinstalls for a .deb. The QEMU run itself is `make e2e-arm64`; it
runs from here only with ARMHF_AGENT_E2E=1 (minutes of emulated CPU)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("e2e_arm64", REPO / "e2e" / "e2e_arm64.py")
e2e = importlib.util.module_from_spec(_spec)
sys.modules["e2e_arm64"] = e2e  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(e2e)

# Shaped like a real console.log: systemd/journal prefixes, kernel lines, colour codes.
CONSOLE = """\
[    9.301] systemd[1]: Starting e2e-probes.service - armhf-agent end-to-end probes...
E2E INFO kernel 6.1.0-50-arm64
E2E INFO cpu-part 0xd08
[   14.402] sh[212]: E2E PASS payload-unpack containerd,docker,dockerd, 4.940s
\x1b[0;32m  OK  \x1b[0m] Started something.
E2E PASS v7.server-platform server=linux/arm 1.336s
e2e| v7.debian-classic: Step 1/5 : FROM debian-armhf:local
E2E FAIL v7.debian-classic variant= (expected v7) 20.160s
E2E DONE 2 1
[  300.000] reboot: Power down
"""


def test_console_results_info_and_done_are_collected():
    report = e2e.parse_console(CONSOLE.splitlines(keepends=True))
    assert [(r.name, r.passed, r.seconds) for r in report.results] == [
        ("payload-unpack", True, 4.94), ("v7.server-platform", True, 1.336), ("v7.debian-classic", False, 20.16)]
    assert report.results[2].detail == "variant= (expected v7)"
    assert report.info == {"kernel": "6.1.0-50-arm64", "cpu-part": "0xd08"}
    assert report.done == (2, 1)
    assert report.problems == []
    assert not report.ok  # one FAIL


def test_all_passed_and_done_is_ok():
    lines = ["E2E PASS a x 1.000s\n", "E2E PASS b y z 2.000s\n", "E2E DONE 2 0\n"]
    report = e2e.parse_console(lines)
    assert report.ok
    assert "2/2 passed" in e2e.format_table(report)


def test_missing_done_fails_even_when_everything_seen_passed():
    report = e2e.parse_console(["E2E PASS a x 1.000s\n"])
    assert not report.ok
    assert any("never printed E2E DONE" in p for p in report.problems)


def test_lost_lines_are_caught_by_the_guest_counts():
    report = e2e.parse_console(["E2E PASS a x 1.000s\n", "E2E DONE 3 0\n"])
    assert not report.ok
    assert any("counted 3 passed / 0 failed but the console shows 1 / 0" in p for p in report.problems)


def test_garbled_marker_is_a_problem_not_a_pass():
    report = e2e.parse_console(["E2E PASS a x 1.0\n", "E2E DONE 0 0\n"])
    assert not report.ok
    assert any("malformed E2E PASS line" in p for p in report.problems)


def test_an_empty_console_is_not_ok():
    report = e2e.parse_console([])
    assert not report.ok
    assert "no probe results on the console" in report.problems


def make_deb(tmp_path, depends):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: probe\nVersion: 1.0\nArchitecture: arm64\nMaintainer: t <t@example.org>\n"
        f"Description: x\nDepends: {depends}\n")
    deb = tmp_path / "probe.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_deb_dependencies_are_first_alternatives_without_versions(tmp_path):
    deb = make_deb(tmp_path, "python3 (>= 3.11~), libc6:any, adduser | passwd, python3")
    assert e2e.deb_dependencies(deb) == ["adduser", "libc6", "python3"]


def test_a_dependency_missing_from_the_guest_image_is_named_before_booting(tmp_path):
    deb = make_deb(tmp_path, "python3 (>= 3.11~), python3.11, libfoo1")
    base = tmp_path / "base"
    base.mkdir()
    (base / "packages.txt").write_text("libc6\npython3\npython3.11\n")
    with pytest.raises(e2e.UsageError, match=r"depends on libfoo1, not in the guest image"):
        e2e.check_dependencies(base, deb)
    (base / "packages.txt").write_text("libc6\npython3\npython3.11\nlibfoo1\n")
    e2e.check_dependencies(base, deb)


def test_cache_key_follows_the_build_inputs(tmp_path):
    script = tmp_path / "build.sh"
    script.write_text("mmdebstrap --include=a\n")
    first = e2e.digest(script, "extra")
    assert e2e.digest(script, "extra") == first
    assert e2e.digest(script, "other") != first
    script.write_text("mmdebstrap --include=a,b\n")
    assert e2e.digest(script, "extra") != first


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ARMHF_AGENT_E2E") != "1", reason="boots QEMU for minutes: set ARMHF_AGENT_E2E=1")
def test_arm64_guest_probes_all_pass():
    deb = os.environ.get("DEB")
    command = [sys.executable, str(REPO / "e2e" / "e2e_arm64.py"), *(["--deb", deb] if deb else [])]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
