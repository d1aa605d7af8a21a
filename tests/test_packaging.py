"""The .deb: pinned dependencies, builds per Debian release, the dpkg lifecycle, lintian, the unit.

The slow tests build the package in cached chroots of Debian 12 and 13 (scripts/debian-chroot.sh)
and install it in fresh minimal chroots of the same releases, where apt pulls the Depends from the
archive and nothing runs systemd (so the maintainer scripts must cope without it).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from packaging_support import (CACHE, REPO, RELEASE_PYTHON, Chroot, changelog_version, deb_field, release_debs,
                               why_no_chroots)

def needs_chroots(test):
    """Builds or installs the .deb in Debian chroots: root, mmdebstrap, minutes."""
    skip = pytest.mark.skipif(why_no_chroots() is not None, reason=why_no_chroots() or "")
    return skip(pytest.mark.chroot(pytest.mark.slow(test)))
CONFFILE = "/etc/armhf-agent/agent.toml"
APT_HOOK = "/etc/apt/apt.conf.d/80armhf-agent"
VENV = "/opt/venvs/armhf-agent"


def lock_entries(path: Path) -> dict[str, list[str]]:
    """name -> hashes, for every `name==version` requirement of a pip-compile lock file."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        pin = re.match(r"^([A-Za-z0-9_.-]+)==\S+", line)
        if pin:
            current = pin.group(1).lower().replace("_", "-")
            entries[current] = []
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        if hashes:
            entries[current].extend(hashes)
    return entries


@pytest.mark.parametrize("lock", ["requirements.lock", "build-requirements.lock"])
def test_locks_force_hash_checking_and_hash_every_pin(lock):
    path = REPO / "packaging" / lock
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "--require-hashes", f"{path}: first option must be --require-hashes"
    entries = lock_entries(path)
    assert entries, f"{path} pins nothing"
    assert all(entries.values()), f"{path}: pins without hashes: {[n for n, h in entries.items() if not h]}"


def test_locks_cover_the_declared_dependencies():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = lock_entries(REPO / "packaging" / "requirements.lock")
    build = lock_entries(REPO / "packaging" / "build-requirements.lock")

    def name(requirement: str) -> str:
        return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")

    # tomli is only for Python < 3.11, older than any Python the package is built with.
    wanted = {name(r) for r in pyproject["project"]["dependencies"] if "python_version<'3.11'" not in r.replace(" ", "")}
    assert wanted - runtime.keys() == set(), "pyproject dependencies missing from requirements.lock: run `make lock`"
    assert {name(r) for r in pyproject["build-system"]["requires"]} <= build.keys()


def test_the_configs_watchdog_bound_is_the_units():
    from agent.config import HEALTH_TIMEOUT_MAX_SECONDS, UNIT_WATCHDOG_SECONDS
    unit = (REPO / "systemd" / "armhf-agent.service").read_text()
    assert re.search(r"^WatchdogSec=(\d+)$", unit, re.M).group(1) == str(UNIT_WATCHDOG_SECONDS)
    assert (REPO / "packaging" / "debian" / "armhf-agent.service").read_text() == unit
    # Two health timeouts and a margin for the step's file work fit in half the watchdog period.
    assert 2 * HEALTH_TIMEOUT_MAX_SECONDS + 5 <= UNIT_WATCHDOG_SECONDS / 2


def test_changelog_version_is_the_python_package_version():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert changelog_version() == pyproject["project"]["version"]


@pytest.fixture(scope="session")
def debs():
    return release_debs


@pytest.fixture
def install_chroot():
    made: list[Chroot] = []

    def make(release: str) -> Chroot:
        root = Chroot("install", release)
        # apt's downloads (python3 and friends) are kept between runs.
        root.bind(CACHE / "apt" / release / "archives", "/var/cache/apt/archives")
        root.run("apt-get", "update", "-qq")
        made.append(root)
        return root
    yield make
    for root in made:
        root.remove()


def assert_agent_runs(root: Chroot, release: str) -> None:
    help_text = root.run("armhf-agent", "--help").stdout
    assert "usage: armhf-agent" in help_text
    version = root.run(f"{VENV}/bin/python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
    assert version == RELEASE_PYTHON[release]
    # The cpuinfo profiles are package data (pyproject's package-data globs): the installed agent finds them.
    effective = root.sh("ARMHF_AGENT_CPUINFO__PROFILE=raspberrypi2 armhf-agent check-config --effective").stdout
    assert 'profile = "raspberrypi2"' in effective
    unknown = root.sh("ARMHF_AGENT_CPUINFO__PROFILE=nope armhf-agent check-config", check=False)
    assert "(there are: host, armv7, raspberrypi1, raspberrypi2, raspberrypi3-32)" in unknown.stderr


def enablement_links(root: Chroot) -> list[Path]:
    # Links to /lib/systemd/...: absolute inside the chroot, dangling seen from here.
    wants = root.path("/etc/systemd/system").glob("*.wants/")
    return [w / "armhf-agent.service" for w in wants if (w / "armhf-agent.service").is_symlink()]


@pytest.mark.slow
@needs_chroots
@pytest.mark.parametrize("release", sorted(RELEASE_PYTHON))
def test_install_upgrade_remove_purge(release, debs, install_chroot):
    v1, v2 = debs(release)["v1"], debs(release)["v2"]
    assert deb_field(v1, "Version").endswith("+deb12" if release == "bookworm" else "+deb13")
    root = install_chroot(release)
    deb1, deb2 = root.put(v1, "/tmp/debs/v1"), root.put(v2, "/tmp/debs/v2")

    # Install: apt resolves the Depends from the archive; no systemd runs, so nothing is started.
    root.run("apt-get", "install", "-y", deb1)
    assert root.dpkg_status("armhf-agent") == "install ok installed"
    assert_agent_runs(root, release)
    assert root.path(CONFFILE).is_file() and root.path(APT_HOOK).is_file()
    assert root.path("/bin/kill").exists(), "the unit's ExecReload needs /bin/kill (procps)"
    assert root.path("/usr/share/doc/armhf-agent/README.md").is_file(), "the unit's Documentation="
    assert root.path("/usr/share/armhf-agent/prometheus/armhf-agent.rules.yml").is_file()
    assert root.path("/usr/share/armhf-agent/grafana/armhf-agent.json").is_file()
    assert CONFFILE in root.run("dpkg-query", "-W", "-f=${Conffiles}", "armhf-agent").stdout
    assert enablement_links(root), "unit not enabled"
    assert list(root.path(VENV).rglob("__pycache__/*.pyc")), "postinst did not byte-compile the venv"

    # Maintainer scripts are idempotent: the same version over itself.
    root.run("apt-get", "install", "-y", "--reinstall", deb1)
    assert root.dpkg_status("armhf-agent") == "install ok installed"

    # Upgrade with a locally edited conffile (unchanged in the new version: dpkg keeps the edit silently).
    edited = root.path(CONFFILE).read_text() + "# edited on this host\n"
    root.path(CONFFILE).write_text(edited)
    root.path("/var/lib/armhf-agent").mkdir()
    root.path("/var/lib/armhf-agent/state-written-by-the-agent").write_text("x")
    root.run("apt-get", "install", "-y", deb2)
    assert root.run("dpkg-query", "-W", "-f=${Version}", "armhf-agent").stdout == deb_field(v2, "Version")
    assert root.dpkg_status("armhf-agent") == "install ok installed"
    assert root.path(CONFFILE).read_text() == edited
    assert not list(root.path("/etc/armhf-agent").glob("agent.toml.dpkg-*"))
    assert_agent_runs(root, release)

    # Remove: program, venv and unit gone; configuration kept (and the kept apt hook does not fail apt).
    root.run("apt-get", "remove", "-y", "armhf-agent")
    assert root.dpkg_status("armhf-agent") == "deinstall ok config-files"
    for gone in (VENV, "/usr/bin/armhf-agent", "/lib/systemd/system/armhf-agent.service",
                 "/usr/lib/systemd/system/armhf-agent.service"):
        assert not root.path(gone).exists() and not root.path(gone).is_symlink(), f"{gone} left after remove"
    assert root.path(CONFFILE).read_text() == edited
    assert root.path(APT_HOOK).is_file()
    assert root.path("/var/lib/armhf-agent/state-written-by-the-agent").exists()

    # Purge: configuration, state, the hook and the enablement links gone; dpkg forgets the package.
    root.run("apt-get", "purge", "-y", "armhf-agent")
    assert root.dpkg_status("armhf-agent") in ("", "unknown ok not-installed")
    for gone in ("/etc/armhf-agent", "/var/lib/armhf-agent", APT_HOOK):
        assert not root.path(gone).exists(), f"{gone} left after purge"
    assert not enablement_links(root)


@pytest.mark.slow
@needs_chroots
@pytest.mark.parametrize(("built_on", "installed_on"), [("bookworm", "trixie"), ("trixie", "bookworm")])
def test_a_deb_refuses_the_other_releases_python(built_on, installed_on, debs, install_chroot):
    deb = debs(built_on)["v1"]
    depends = deb_field(deb, "Depends")
    minor = RELEASE_PYTHON[built_on]
    assert f"python3 (>= {minor}~)" in depends and f"python{minor}" in depends
    root = install_chroot(installed_on)
    proc = root.run("apt-get", "install", "-y", root.put(deb, "/tmp/debs"), check=False)
    assert proc.returncode != 0
    assert "armhf-agent : Depends: python3" in proc.stdout + proc.stderr
    assert root.dpkg_status("armhf-agent") == ""


@pytest.mark.slow
@needs_chroots
@pytest.mark.parametrize("release", sorted(RELEASE_PYTHON))
def test_lintian_clean_and_unit_verifies(release, debs):
    deb = debs(release)["v1"]
    root = Chroot("build", release)     # that release's lintian and systemd
    try:
        inside = root.put(deb, "/tmp/debs")
        lint = root.run("lintian", "--fail-on", "error,warning", inside, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        root.run("dpkg", "-i", inside)     # its Depends are all in the build chroot already
        (unit,) = [p for p in root.run("dpkg", "-L", "armhf-agent").stdout.split() if p.endswith(".service")]
        verify = root.run("systemd-analyze", "verify", unit, check=False)
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    finally:
        root.remove()
