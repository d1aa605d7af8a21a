"""Debian chroots and .deb builds for the packaging tests.

Everything goes through the project's own scripts (scripts/debian-chroot.sh, deb-in-chroot.sh,
export-source.sh), so the tests exercise what `make deb-chroot` runs. Chroot tarballs and pip's and
apt's download caches live in $ARMHF_AGENT_CACHE (default /var/cache/armhf-agent-build), shared by
every run on the machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
CACHE = Path(os.environ.get("ARMHF_AGENT_CACHE", "/var/cache/armhf-agent-build"))
# Big unpacked chroots go to disk, not to a tmpfs /tmp.
WORK = Path(os.environ.get("ARMHF_AGENT_CHROOT_WORK", "/var/tmp"))

# The Python minor version each release's venv is built with (../shared/reference/packaging-and-systemd.md).
RELEASE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}


def why_no_chroots() -> str | None:
    if os.geteuid() != 0:
        return "chroots need root"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (apt-get install mmdebstrap)"
    return None


def run(cmd: list[str], *, env: dict | None = None, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


class Chroot:
    """An unpacked copy of a cached chroot (`kind`: build, install, systemd) of a Debian release."""

    def __init__(self, kind: str, release: str):
        self.work = Path(tempfile.mkdtemp(prefix=f"armhf-agent-{release}-{kind}.", dir=WORK))
        self.root = self.work / "fs"
        self.binds: list[tuple[Path, str]] = []
        run([str(SCRIPTS / "debian-chroot.sh"), "unpack", kind, release, str(self.root)])

    def bind(self, host_dir: Path, inside: str) -> None:
        host_dir.mkdir(parents=True, exist_ok=True)
        self.binds.append((host_dir, inside))

    def run(self, *cmd: str, check: bool = True, as_host: bool = False) -> subprocess.CompletedProcess:
        """as_host: the root is a mount point and has a sysfs (debian-chroot.sh CHROOT_AS_HOST), for
        programs that unshare mount namespaces or read /sys, as the test suite does."""
        binds = " ".join(f"{h}:{i}" for h, i in self.binds)
        return run([str(SCRIPTS / "debian-chroot.sh"), "run", str(self.root), *cmd],
                   env={"CHROOT_BINDS": binds, "CHROOT_AS_HOST": "1" if as_host else ""}, check=check)

    def sh(self, script: str, check: bool = True, as_host: bool = False) -> subprocess.CompletedProcess:
        return self.run("/bin/sh", "-euc", script, check=check, as_host=as_host)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def put(self, host_file: Path, inside_dir: str) -> str:
        dest = self.path(inside_dir)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host_file, dest / host_file.name)
        return f"{inside_dir.rstrip('/')}/{host_file.name}"

    def dpkg_status(self, package: str) -> str:
        """dpkg's Status of the package, or "" once dpkg has forgotten it (after a purge)."""
        proc = self.run("dpkg-query", "-W", "-f=${Status}", package, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def export_source(dest: Path, version: str | None = None) -> Path:
    """The work tree's files in `dest`; with `version`, a changelog entry on top makes it that version,
    and the agent reports it too (`--version`, armhf_agent_build_info), as a real release would: the
    fleet tests watch the version label change on the upgrade and change back on the rollback."""
    run([str(SCRIPTS / "export-source.sh"), str(dest)])
    if version:
        changelog = dest / "packaging" / "debian" / "changelog"
        entry = (f"armhf-agent ({version}) unstable; urgency=medium\n\n"
                 "  * Rebuild with a higher version for the upgrade tests.\n\n"
                 " -- armhf-agent tests <armhf-agent@lists.example.org>  Sun, 29 Nov 2026 00:00:00 +0000\n\n")
        changelog.write_text(entry + changelog.read_text())
        current = changelog_version()
        for path, before, after in ((dest / "agent" / "__init__.py", f'__version__ = "{current}"', f'__version__ = "{version}"'),
                                    (dest / "pyproject.toml", f'\nversion = "{current}"\n', f'\nversion = "{version}"\n')):
            text = path.read_text()
            if before not in text:
                raise AssertionError(f"{path}: no {before.strip()!r} to turn into version {version}")
            path.write_text(text.replace(before, after, 1))
    return dest


def build_deb(release: str, out: Path, version: str | None = None) -> Path:
    """Builds the .deb in the release's build chroot; returns its path."""
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        src = export_source(Path(tmp) / "armhf-agent", version)
        staged = Path(tmp) / "out"
        run([str(SCRIPTS / "deb-in-chroot.sh"), release, str(staged), str(src)])
        (deb,) = staged.glob("*.deb")
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(deb), out / deb.name))


def changelog_version() -> str:
    first = (REPO / "packaging" / "debian" / "changelog").read_text().splitlines()[0]
    return first.split("(", 1)[1].split(")", 1)[0]


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


_built: dict[str, dict[str, Path]] = {}


def release_debs(release: str) -> dict[str, Path]:
    """The release's builds, made on first use and shared by every test module of the session:
    {"v1": the work tree's version, "v2": the same tree with a higher version (upgrade tests)}."""
    if release not in _built:
        out = Path(tempfile.mkdtemp(prefix=f"armhf-agent-debs-{release}.", dir=WORK))
        atexit.register(shutil.rmtree, out, True)
        _built[release] = {"v1": build_deb(release, out / "v1"),
                           "v2": build_deb(release, out / "v2", changelog_version() + "+upgradetest")}
    return _built[release]
