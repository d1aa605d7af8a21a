"""The host side of the arm64 end-to-end harness (e2e/e2e_arm64.py): how it reads a guest's serial
console, and which packages it preinstalls for a .deb. The QEMU run itself is `make e2e-arm64`; it
runs from here only with ARMHF_AGENT_E2E=1 (minutes of emulated CPU)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
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


def make_deb(tmp_path, depends="libc6", version="1.0"):
    root = tmp_path / "pkg"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: probe\nVersion: {version}\nArchitecture: arm64\nMaintainer: t <t@example.org>\n"
        f"Description: x\nDepends: {depends}\n")
    deb = tmp_path / f"probe_{version}.deb"
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


def test_the_package_key_covers_what_the_package_is_built_from_and_nothing_else():
    # The tree walked here, not git's listing: the suite also runs from a plain copy (tests/test_fresh_root.py).
    tree = [os.path.relpath(os.path.join(top, f), e2e.REPO) for top, dirs, files in os.walk(e2e.REPO)
            for f in files if ".git" not in os.path.relpath(top, e2e.REPO).split(os.sep)]
    names = set(e2e.packaged(tree))
    assert {"agent/runtime_exec.py", "packaging/debian/rules", "pyproject.toml", "README.md", "scripts/build-deb.sh"} <= names
    assert not [n for n in names if n.split("/")[0] in ("tests", "e2e", "bench", "faults", "docs", ".ci")]
    # The package's own file lists name nothing from the excluded folders.
    for listing in (e2e.REPO / "packaging/debian").glob("armhf-agent.*"):
        if listing.suffix in (".install", ".docs", ".links"):
            assert not [w for w in listing.read_text().split() if w.startswith(e2e.NOT_PACKAGED)], listing


# --- rows: one per Debian release ------------------------------------------------------------------------

BOOKWORM, TRIXIE = e2e.RELEASES["bookworm"], e2e.RELEASES["trixie"]


def test_release_option_names_rows_in_order_each_once():
    assert e2e.parse_releases("trixie") == [TRIXIE]
    assert e2e.parse_releases(" bookworm, trixie ") == [BOOKWORM, TRIXIE]
    assert e2e.parse_releases("trixie bookworm") == [TRIXIE, BOOKWORM]
    with pytest.raises(e2e.UsageError, match=r"unknown release 'bullseye' \(known: bookworm, trixie\)"):
        e2e.parse_releases("bookworm,bullseye")
    with pytest.raises(e2e.UsageError, match=r"trixie named twice"):
        e2e.parse_releases("trixie,trixie")
    with pytest.raises(e2e.UsageError, match=r"name at least one"):
        e2e.parse_releases(" , ")


def test_without_a_deb_both_rows_run_by_default(tmp_path):
    assert e2e.choose_releases(None, None) == [BOOKWORM, TRIXIE]
    assert e2e.choose_releases("trixie", None) == [TRIXIE]


def test_a_given_deb_picks_its_own_row(tmp_path):
    deb12 = make_deb(tmp_path, version="0.1.0+deb12")
    deb13 = make_deb(tmp_path, version="0.1.0+deb13")
    # `make e2e-arm64 DEB=...` as before: the row follows from the package's +debNN.
    assert e2e.choose_releases(None, deb12) == [BOOKWORM]
    assert e2e.choose_releases(None, deb13) == [TRIXIE]
    assert e2e.choose_releases("trixie", deb13) == [TRIXIE]
    with pytest.raises(e2e.UsageError, match=r"was built for Debian 13 \(trixie\), not Debian 12 \(bookworm\)"):
        e2e.choose_releases("bookworm", deb13)
    with pytest.raises(e2e.UsageError, match=r"one release's package: give one --release, not bookworm, trixie"):
        e2e.choose_releases("bookworm,trixie", deb12)
    untagged = make_deb(tmp_path, version="1.0")
    with pytest.raises(e2e.UsageError, match=r"its version names no Debian release \(\+debNN\): give --release"):
        e2e.choose_releases(None, untagged)
    assert e2e.choose_releases("bookworm", untagged) == [BOOKWORM]
    with pytest.raises(e2e.UsageError, match=r"version 0.1.0\+deb11 is for Debian 11, which has no row here"):
        e2e.choose_releases(None, make_deb(tmp_path, version="0.1.0+deb11"))


def test_bad_release_option_is_exit_2_naming_it(capsys):
    assert e2e.main(["--release", "sid"]) == 2
    assert "unknown release 'sid'" in capsys.readouterr().err


def test_cache_keys_carry_the_release_and_only_the_container_images_are_shared():
    bookworm, trixie = e2e.image_keys(BOOKWORM), e2e.image_keys(TRIXIE)
    assert bookworm["base"] != trixie["base"]
    assert bookworm["payload"] != trixie["payload"]
    assert set(e2e.shared_keys()) == {"armhf-rootfs", "multiplatform"} and not set(e2e.shared_keys()) & set(bookworm)
    # The same release asked twice gives the same keys: a warm run rebuilds nothing.
    assert e2e.image_keys(TRIXIE) == trixie
    cache = Path("/c")
    assert e2e.release_cache(cache, BOOKWORM) != e2e.release_cache(cache, TRIXIE)


def test_each_row_keeps_its_own_cache_folder(tmp_path):
    """A new key removes that row's older builds of the same image, never the other row's (nor the
    entries at the top that the harness kept before it had rows)."""
    def build(folder, key):
        return e2e.cached(folder, "base", key, ["sh", "-c", 'touch "$1/made"', "sh"], timings)

    timings = {}
    legacy = tmp_path / "base-0000000000000000"
    legacy.mkdir()
    bookworm = build(e2e.release_cache(tmp_path, BOOKWORM), "1111111111111111")
    old_trixie = build(e2e.release_cache(tmp_path, TRIXIE), "2222222222222222")
    new_trixie = build(e2e.release_cache(tmp_path, TRIXIE), "3333333333333333")
    assert (bookworm / "made").is_file() and (new_trixie / "made").is_file()
    assert not old_trixie.exists() and legacy.is_dir()
    assert build(e2e.release_cache(tmp_path, TRIXIE), "3333333333333333") == new_trixie
    assert timings["base"] == "cached"


def test_a_logged_build_failure_names_its_log_and_quotes_its_end(tmp_path):
    log = tmp_path / "build.log"
    script = 'echo step one; echo "mmdebstrap: E: cannot find package docker-biuldx" >&2; exit 3'
    with pytest.raises(e2e.BuildError) as failed:
        e2e.cached(tmp_path / "trixie", "base", "4444444444444444", ["sh", "-c", script, "sh"], {}, log)
    assert f"building base failed (exit 3), end of {log}:" in str(failed.value)
    assert "cannot find package docker-biuldx" in str(failed.value)
    # Nothing half-built is left to pass for a cached image next time.
    assert list((tmp_path / "trixie").iterdir()) == []
    built = e2e.cached(tmp_path / "trixie", "base", "5555555555555555",
                       ["sh", "-c", 'echo into the log; touch "$1/made"', "sh"], {}, log)
    assert (built / "made").is_file()
    assert "into the log" in log.read_text() and "== base: sh -c" in log.read_text()


def test_one_rows_failure_is_that_rows_own():
    def broken():
        raise e2e.BuildError("building deb-chroot failed (exit 1)")

    def usage():
        raise e2e.UsageError("the guest lacks libfoo1")

    def command():
        raise subprocess.CalledProcessError(4, ["mke2fs", "-d", "x"])

    rows = [e2e.Row(BOOKWORM), e2e.Row(TRIXIE), e2e.Row(TRIXIE)]
    for row, step in zip(rows, (broken, usage, command)):
        e2e.failing(row, step)
    assert [(r.error, r.usage) for r in rows] == [("building deb-chroot failed (exit 1)", False),
                                                   ("the guest lacks libfoo1", True), ("mke2fs -d x exited 4", False)]
    assert e2e.exit_status(rows) == 2 and e2e.exit_status(rows[:1]) == 1


def test_rows_are_prepared_side_by_side_each_with_its_own_log(tmp_path, monkeypatch):
    """Each row's prepare waits for the other to be under way: done one after the other, the
    barrier would break (its timeout) and the rows would fail."""
    meet = threading.Barrier(2, timeout=10)
    logs = {}

    def prepare(row, args, deb, shared, log=None):
        logs[row.release.codename] = log
        try:
            meet.wait()
        except threading.BrokenBarrierError:
            row.error = "prepared alone"

    monkeypatch.setattr(e2e, "prepare_row", prepare)
    args = type("Args", (), {"cache": tmp_path})()
    rows = [e2e.Row(BOOKWORM), e2e.Row(TRIXIE)]
    booted = []
    e2e.run_rows(rows, args, None, {}, booted.append)
    assert [r.error for r in rows] == ["", ""] and sorted(r.release.codename for r in booted) == ["bookworm", "trixie"]
    assert logs == {"bookworm": tmp_path / "bookworm" / "build.log", "trixie": tmp_path / "trixie" / "build.log"}
    # A single row streams its builds to the terminal, as before rows existed.
    monkeypatch.setattr(e2e, "prepare_row", lambda row, args, deb, shared, log=None: logs.update(alone=log))
    e2e.run_rows([e2e.Row(TRIXIE)], args, None, {}, booted.append)
    assert logs["alone"] is None and booted[-1].release.codename == "trixie"


def test_a_prepared_row_boots_while_the_other_still_builds_and_guests_never_overlap(tmp_path, monkeypatch):
    """Debian 13 prepares until Debian 12's guest has run: booted only after both were prepared, the
    wait would time out. Two guests at once would each get half the CPUs they were given."""
    bookworm_booted = threading.Event()
    running, overlaps, order = [], [], []

    def prepare(row, args, deb, shared, log=None):
        if row.release.codename == "trixie" and not bookworm_booted.wait(10):
            row.error = "waited for the other row's guest in vain"

    def boot(row):
        running.append(row)
        if len(running) > 1:
            overlaps.append(row.release.codename)
        order.append(row.release.codename)
        time.sleep(0.05)
        if row.release.codename == "bookworm":
            bookworm_booted.set()
        running.remove(row)

    monkeypatch.setattr(e2e, "prepare_row", prepare)
    rows = [e2e.Row(TRIXIE), e2e.Row(BOOKWORM)]
    e2e.run_rows(rows, type("Args", (), {"cache": tmp_path})(), None, {}, boot)
    assert order == ["bookworm", "trixie"] and overlaps == [] and [r.error for r in rows] == ["", ""]


def test_a_row_whose_preparation_crashes_is_failed_by_name_and_the_other_still_boots(tmp_path, monkeypatch):
    def prepare(row, args, deb, shared, log=None):
        if row.release.codename == "bookworm":
            raise OSError("disk full")

    monkeypatch.setattr(e2e, "prepare_row", prepare)
    rows = [e2e.Row(BOOKWORM), e2e.Row(TRIXIE)]
    booted = []
    e2e.run_rows(rows, type("Args", (), {"cache": tmp_path})(), None, {}, booted.append)
    assert rows[0].error == "preparing failed: OSError: disk full" and rows[1].error == ""
    assert sorted(r.release.codename for r in booted) == ["bookworm", "trixie"]


def payload_dirs(tmp_path, first, second=None):
    built = {"payload": tmp_path / "p1", "armhf-rootfs": tmp_path / "rootfs"}
    for folder in built.values():
        folder.mkdir(parents=True)
    (built["payload"] / f"docker-{first}.tgz").write_bytes(b"1")
    (built["armhf-rootfs"] / "debian-armhf.tar").write_bytes(b"r")
    if second:
        built["payload-update"] = tmp_path / "p2"
        built["payload-update"].mkdir()
        (built["payload-update"] / f"docker-{second}.tgz").write_bytes(b"2")
    return built


def test_the_second_payload_goes_to_update_on_the_data_disk(tmp_path):
    files = e2e.data_files(payload_dirs(tmp_path, "26.1.5", "28.5.2"), None)
    assert sorted(files) == ["debian-armhf.tar", "docker-26.1.5.tgz", "update/docker-28.5.2.tgz"]
    assert files["update/docker-28.5.2.tgz"].read_bytes() == b"2"
    # A row without one has no update/ folder, so its guest runs no update probe.
    assert "update" not in "".join(e2e.data_files(payload_dirs(tmp_path / "b", "20.10.24"), None))


def test_the_multiplatform_userlands_go_to_their_folder_only_for_an_agent_row_that_asks(tmp_path):
    built = payload_dirs(tmp_path, "26.1.5")
    built["multiplatform"] = tmp_path / "mp"
    built["multiplatform"].mkdir()
    for name in ("arm64", "armv7", "armv6"):
        (built["multiplatform"] / f"rootfs-{name}.tar").write_bytes(name.encode())
    deb = tmp_path / "a.deb"
    deb.write_bytes(b"d")
    files = e2e.data_files(built, deb, multiplatform=True)
    assert sorted(f for f in files if f.startswith("multiplatform/")) == [
        "multiplatform/rootfs-arm64.tar", "multiplatform/rootfs-armv6.tar", "multiplatform/rootfs-armv7.tar"]
    assert not [f for f in e2e.data_files(built, deb) if f.startswith("multiplatform/")]
    assert not [f for f in e2e.data_files(built, None, multiplatform=True) if f.startswith("multiplatform/")]
    assert [r for r in e2e.RELEASES.values() if r.multiplatform] == [e2e.RELEASES["trixie"]]
    assert {"docker.io", "docker-registry", "docker-buildx"} <= set(e2e.RELEASES["trixie"].guest_packages)


def test_an_update_to_the_same_version_is_refused(tmp_path):
    with pytest.raises(e2e.UsageError, match=r"same Docker version"):
        e2e.data_files(payload_dirs(tmp_path, "26.1.5", "26.1.5"), None)


def test_only_the_trixie_row_has_a_second_payload_and_the_buildx_plugin():
    assert BOOKWORM.update_suites == () and TRIXIE.update_suites == ("sid",)
    assert "docker-buildx" in TRIXIE.guest_packages and "docker-buildx" not in BOOKWORM.guest_packages
    assert TRIXIE.suites == ("trixie", "trixie-updates")


def row(release, lines):
    result = e2e.Row(release, report=e2e.parse_console(lines))
    e2e.check_guest_release(result.report, release)
    return result


def test_the_guest_must_be_the_rows_release():
    wrong = row(TRIXIE, ["E2E INFO release bookworm\n", "E2E PASS a x 1.000s\n", "E2E DONE 1 0\n"])
    assert not wrong.ok and "the guest says it is bookworm, this row is trixie" in wrong.report.problems
    silent = row(TRIXIE, ["E2E PASS a x 1.000s\n", "E2E DONE 1 0\n"])
    assert not silent.ok
    right = row(TRIXIE, ["E2E INFO release trixie\n", "E2E PASS a x 1.000s\n", "E2E DONE 1 0\n"])
    assert right.ok


def test_probe_by_row_table():
    rows = [row(BOOKWORM, ["E2E INFO release bookworm\n", "E2E PASS agent.start x 1.000s\n",
                           "E2E FAIL agent.doctor y 2.000s\n", "E2E DONE 1 1\n"]),
            row(TRIXIE, ["E2E INFO release trixie\n", "E2E PASS agent.start x 1.000s\n",
                         "E2E PASS agent.doctor y 2.000s\n", "E2E PASS update.to-28.5.2 z 3.000s\n",
                         "E2E DONE 3 0\n"]),
            e2e.Row(BOOKWORM, error="mmdebstrap exited 1")]
    lines = e2e.format_matrix(rows).splitlines()
    assert lines[0].split() == ["probe", "Debian", "12", "(bookworm)", "Debian", "13", "(trixie)", "Debian", "12",
                                "(bookworm)"]
    assert [line.split() for line in lines[1:]] == [
        ["agent.start", "PASS", "PASS", "-"],
        ["agent.doctor", "FAIL", "PASS", "-"],
        ["update.to-28.5.2", "-", "PASS", "-"],
        ["passed", "1/2", "3/3", "not", "run"],
        ["problems", "0", "0", "error"],
    ]
    assert e2e.exit_status(rows[1:2]) == 0
    assert e2e.exit_status(rows) == 1
    assert e2e.exit_status([*rows, e2e.Row(TRIXIE, error="x", usage=True)]) == 2


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ARMHF_AGENT_E2E") != "1", reason="boots QEMU for minutes: set ARMHF_AGENT_E2E=1")
def test_arm64_guest_probes_all_pass():
    deb = os.environ.get("DEB")
    command = [sys.executable, str(REPO / "e2e" / "e2e_arm64.py"), *(["--deb", deb] if deb else [])]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
