#!/usr/bin/env python3
"""End-to-end run on an emulated arm64 host: build (or reuse) the guest image, boot it under
qemu-system-aarch64, read the probe verdicts from the serial console, print them as a table.
One row per Debian release (`--release bookworm,trixie`, the default): each has its own guest, its
own build of the .deb and its own armhf payload; with more than one row a table of probe x row
follows.

Exit status: 0 when every probe passed and the guest reported E2E DONE, 1 otherwise, 2 on bad
usage or a missing host tool. Standard library only: it runs on the host's python3, not the venv.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Outside the work tree, beside the packaging chroots: fresh clones on the same machine (CI's) reuse it.
DEFAULT_CACHE = Path(os.environ.get("ARMHF_AGENT_E2E_CACHE", "/var/cache/armhf-agent-build/e2e"))
# Neoverse N1 is Graviton2's core and runs AArch32 at EL0; under TCG here it was as fast as
# cortex-a72 (agent run 344 s vs 346 s). a64fx has no AArch32 at all (reference/test-environment.md).
DEFAULT_CPU = "neoverse-n1"
NO_AARCH32_CPUS = {"a64fx"}
# A row's whole run: Debian 13's, with the update and multi-platform probes, took 1011 s here (1362 s
# with the test suite running beside it); Debian 12's 435 s. With the nested-dockerd and per-half build
# probes and the test suite beside it, Debian 13's was killed at 1800 s three probes before its end.
DEFAULT_TIMEOUT_SECONDS = 2400
# The guest prints its first E2E line ~10-40 s after QEMU starts here; a guest silent for this long
# never booted, and waiting out the whole run would only delay the verdict.
BOOT_TIMEOUT_SECONDS = 300
# Every host program a run uses, with the Debian package that brings it. scripts/setup.sh --test
# installs them; `e2e_arm64.py --check-host` (and tests/test_fresh_root.py, on a brand-new Debian
# root) checks that it did.
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    # mmdebstrap refuses a foreign-architecture chroot without it ("install arch-test for foreign
    # architecture support"), and it is only a Recommends of mmdebstrap (issue 11).
    "arch-test": "arch-test",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "mke2fs": "e2fsprogs",
    "cpio": "cpio",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "update-binfmts": "binfmt-support",
    # qemu-user for the arm64/armhf maintainer scripts mmdebstrap runs (registered through binfmt).
    "qemu-aarch64-static": "qemu-user-static",
    "git": "git",
    "unshare": "util-linux",
    "mount": "mount",
    "tar": "tar",
    "gzip": "gzip",
    # make-initrd.sh unpacks Debian 13's .ko.xz kernel modules (xz-utils is not in a minbase root).
    "xz": "xz-utils",
}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Release:
    """One row: a Debian release's guest, .deb and payload."""
    codename: str
    version: str                      # VERSION_ID; the .deb's version carries it (+deb12: packaging/debian/rules)
    armhf_libs: tuple[str, ...]       # what the payload's dynamically linked binaries need (NEEDED entries)
    guest_extra: tuple[str, ...] = ()
    # A second payload from these suites, for the update probes (e2e/guest/lib/update.sh); none: no update probes.
    update_suites: tuple[str, ...] = ()
    # The host's own docker.service beside the agent's, and a three-platform buildx build (issue 17:
    # e2e/guest/lib/multiplatform.sh); its packages are in guest_extra.
    multiplatform: bool = False

    @property
    def suites(self) -> tuple[str, ...]:
        # Not RELEASE-security: its armhf index was stale here once (reference/test-environment.md), and
        # the arm64 and armhf copies of a Multi-Arch: same library must have one version.
        return (self.codename, f"{self.codename}-updates")

    @property
    def guest_packages(self) -> tuple[str, ...]:
        return tuple(f"{lib}:armhf" for lib in self.armhf_libs) + self.guest_extra

    @property
    def title(self) -> str:
        return f"Debian {self.version} ({self.codename})"


RELEASES = {
    # Debian 12's dockerd 20.10 links libdevmapper (its devicemapper graph driver); runc libseccomp.
    "bookworm": Release("bookworm", "12", ("libc6", "libsystemd0", "libdevmapper1.02.1", "libseccomp2")),
    # Debian 13's docker.io 26.1.5 and sid's 28.5.2 (docker, containerd 1.7/2.1, runc 1.1/1.3) need only
    # libc, libsystemd (dockerd) and libseccomp (runc); runc asks libc6 >= 2.38, trixie has 2.41.
    # docker-buildx: from Docker 23 on the CLI refuses `DOCKER_BUILDKIT=1 docker build` without the buildx
    # plugin ("BuildKit is enabled but the buildx component is missing or broken"); neither Docker's static
    # release nor the payload carries it, a fleet host has it beside its own engine (docker-buildx-plugin),
    # so the guest has the host's (arm64) one in /usr/libexec/docker/cli-plugins, where the CLI looks.
    # The update payload: sid's docker.io 28.5.2, whose armhf libraries trixie satisfies (issue 15).
    # docker.io, docker-cli (Debian 13 ships the client apart) and docker-registry, arm64: the host's own
    # Docker and a registry on loopback for the multi-platform probes (issue 17); customize.sh masks
    # their units until those probes run.
    "trixie": Release("trixie", "13", ("libc6", "libsystemd0", "libseccomp2"),
                      ("docker-buildx", "docker.io", "docker-cli", "docker-registry"), ("sid",), multiplatform=True),
}
DEFAULT_RELEASES = ("bookworm", "trixie")

LINE = re.compile(r"E2E (?P<kind>PASS|FAIL|INFO|DONE)(?: (?P<rest>.*))?$")
RESULT = re.compile(r"(?P<name>\S+) (?P<detail>.*) (?P<seconds>\d+\.\d{3})s$")


class UsageError(Exception):
    pass


@dataclass
class ProbeResult:
    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class Report:
    results: list[ProbeResult] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    done: tuple[int, int] | None = None     # (passed, failed) as counted by the guest
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.results) and all(r.passed for r in self.results)


def parse_console(lines) -> Report:
    """Collects the probe lines from a serial console log. Kernel or systemd output may precede a
    marker on the same line, so markers are searched, not anchored at the line start."""
    report = Report()
    for raw in lines:
        match = LINE.search(raw.rstrip("\r\n"))
        if not match:
            continue
        kind, rest = match["kind"], match["rest"] or ""
        if kind == "INFO":
            key, _, value = rest.partition(" ")
            report.info[key] = value.strip()
        elif kind == "DONE":
            counts = rest.split()
            if len(counts) == 2 and all(c.isdigit() for c in counts):
                report.done = (int(counts[0]), int(counts[1]))
            else:
                report.problems.append(f"malformed E2E DONE line: {raw.strip()!r}")
        else:
            result = RESULT.match(rest)
            if not result:
                report.problems.append(f"malformed E2E {kind} line: {raw.strip()!r}")
                continue
            report.results.append(ProbeResult(result["name"], kind == "PASS", result["detail"],
                                              float(result["seconds"])))
    if report.done is None:
        report.problems.append("the guest never printed E2E DONE (crashed, hung or timed out)")
    else:
        seen = (sum(r.passed for r in report.results), sum(not r.passed for r in report.results))
        if seen != report.done:
            report.problems.append(f"the guest counted {report.done[0]} passed / {report.done[1]} failed "
                                   f"but the console shows {seen[0]} / {seen[1]} (lines lost or garbled)")
    if not report.results:
        report.problems.append("no probe results on the console")
    return report


def format_table(report: Report) -> str:
    width = max([len(r.name) for r in report.results] + [5])
    rows = [f"{'probe':<{width}}  result  seconds  detail"]
    for r in report.results:
        rows.append(f"{r.name:<{width}}  {'PASS' if r.passed else 'FAIL':<6}  {r.seconds:7.3f}  {r.detail}")
    passed = sum(r.passed for r in report.results)
    rows.append(f"{passed}/{len(report.results)} passed")
    rows.extend(f"PROBLEM: {p}" for p in report.problems)
    return "\n".join(rows)


def deb_dependencies(deb: Path) -> list[str]:
    """Package names the .deb depends on (first of each alternative, versions dropped)."""
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True, capture_output=True,
                             text=True).stdout
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        if name:
            names.append(name)
    return sorted(set(names))


def digest(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(HERE) if f.is_relative_to(HERE) else
                             f.relative_to(REPO) if f.is_relative_to(REPO) else f.name).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


class BuildError(Exception):
    pass


def cached(cache: Path, name: str, key: str, build_command: list[str], timings: dict[str, str],
           log: Path | None = None) -> Path:
    """Returns cache/name-key, building it with build_command OUT when absent. Built in a temporary
    folder renamed into place, so an interrupted build is never mistaken for a finished one; older
    keys of the same name are removed (a guest disk is 4 GB sparse). With `log`, the build's output
    goes there (rows prepared side by side would interleave theirs) and a failure quotes its end."""
    final = cache / f"{name}-{key}"
    if final.is_dir():
        timings[name] = "cached"
        return final
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-{key}.", suffix=".tmp", dir=cache))
    print(f"e2e: building {name} ({' '.join(build_command)})" + (f", log {log}" if log else ""),
          file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        if log is None:
            subprocess.run([*build_command, str(work)], check=True)
        else:
            with log.open("a") as out:
                out.write(f"== {name}: {' '.join(build_command)}\n")
                out.flush()
                done = subprocess.run([*build_command, str(work)], stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                raise BuildError(f"building {name} failed (exit {done.returncode}), end of {log}:\n{tail}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    work.rename(final)
    timings[name] = f"built in {time.monotonic() - started:.0f} s"
    return final


def missing_tools(which=shutil.which) -> dict[str, str]:
    """tool -> package, for every host tool of HOST_TOOLS that is not on PATH."""
    return {tool: pkg for tool, pkg in HOST_TOOLS.items() if which(tool) is None}


def check_tools() -> None:
    """Said before anything is built, naming each missing tool and its package: not a traceback from a
    subprocess minutes into the run."""
    missing = missing_tools()
    if missing:
        names = ", ".join(f"{tool} ({pkg})" for tool, pkg in sorted(missing.items()))
        raise UsageError(f"missing host tools: {names}; run: apt-get install -y "
                         f"{' '.join(sorted(set(missing.values())))} (or scripts/setup.sh --test)")
    if os.geteuid() != 0:
        raise UsageError("must run as root (mmdebstrap chroots, mke2fs of root-owned trees)")


def check_host() -> None:
    check_tools()
    # mmdebstrap runs the arm64 and armhf maintainer scripts under qemu-user through binfmt_misc.
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not ((BINFMT / "qemu-aarch64").exists() and (BINFMT / "qemu-arm").exists()):
        subprocess.run(["update-binfmts", "--enable"], check=True)
    for handler in ("qemu-aarch64", "qemu-arm"):
        if not (BINFMT / handler).exists():
            raise UsageError(f"{BINFMT / handler} is not registered (apt-get install qemu-user-static binfmt-support)")


# Folders no package build reads (packaging/debian/armhf-agent.install, .docs: README.md only): editing
# a probe, a benchmark, a fault case, CI or the docs does not rebuild the package (4-27 min under qemu-user).
NOT_PACKAGED = ("tests/", "e2e/", "bench/", "faults/", "docs/", ".ci/")


def packaged(names: list[str]) -> list[str]:
    """Of the tree's relative file names, those a package build may read: all but NOT_PACKAGED."""
    return sorted(f for f in names if f and not f.startswith(NOT_PACKAGED))


def source_files() -> list[Path]:
    """What `make deb` packages: the tree's tracked and new files, minus NOT_PACKAGED."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    return [REPO / f for f in packaged(listed) if (REPO / f).is_file()]


def parse_releases(text: str) -> list[Release]:
    """--release: one or more codenames, comma- or space-separated, each once."""
    names = [name for name in re.split(r"[,\s]+", text.strip()) if name]
    if not names:
        raise UsageError(f"--release: name at least one of {', '.join(RELEASES)}")
    unknown = [name for name in names if name not in RELEASES]
    if unknown:
        raise UsageError(f"--release: unknown release {', '.join(map(repr, unknown))} (known: {', '.join(RELEASES)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--release: {', '.join(repeated)} named twice")
    return [RELEASES[name] for name in names]


def deb_release(deb: Path) -> Release | None:
    """The release a .deb was built for, from the +debNN its version carries (packaging/debian/rules
    DISTRO_TAG); None when the version has no such tag."""
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    match = re.search(r"\+deb(\d+)\b", version)
    if not match:
        return None
    for release in RELEASES.values():
        if release.version == match.group(1):
            return release
    raise UsageError(f"{deb}: version {version} is for Debian {match.group(1)}, which has no row here "
                     f"(rows: {', '.join(r.title for r in RELEASES.values())})")


def choose_releases(release_option: str | None, deb: Path | None) -> list[Release]:
    """The rows to run. A given .deb was built for one release: it picks its row (and must match
    --release when both are given); otherwise every row of DEFAULT_RELEASES."""
    releases = parse_releases(release_option) if release_option is not None else None
    if deb is None:
        return releases or [RELEASES[name] for name in DEFAULT_RELEASES]
    built_for = deb_release(deb)
    if releases is None:
        if built_for is None:
            raise UsageError(f"--deb {deb}: its version names no Debian release (+debNN): give --release")
        return [built_for]
    if len(releases) != 1:
        raise UsageError(f"--deb {deb} is one release's package: give one --release, not "
                         f"{', '.join(r.codename for r in releases)}")
    if built_for is not None and built_for != releases[0]:
        raise UsageError(f"--deb {deb} was built for {built_for.title}, not {releases[0].title}")
    return releases


def release_cache(cache: Path, release: Release) -> Path:
    """Each row's images and runs live in a folder of their own: a row's stale keys are removed
    without touching the other row's."""
    return cache / release.codename


def build_deb(cache: Path, release: Release, timings: dict[str, str], log: Path | None = None) -> Path:
    """The project's arm64 .deb, by its own scripts/build-deb.sh in an arm64 chroot of the release
    (qemu-user)."""
    control = REPO / "packaging" / "debian" / "control"
    if not (control.is_file() and (REPO / "scripts" / "build-deb.sh").is_file()):
        raise UsageError(f"no packaging in {REPO} ({control}, scripts/build-deb.sh): pass --deb PATH or --no-agent")
    rows = release_cache(cache, release)
    chroot = cached(rows, "deb-chroot", digest(HERE / "build-deb-chroot.sh", control, release.codename),
                    [str(HERE / "build-deb-chroot.sh"), release.codename, str(control)], timings, log)
    # The chroot's folder name carries its key: a new chroot (new Build-Depends, new script) rebuilds the .deb.
    built = cached(rows, "deb-arm64", digest(HERE / "build-deb-arm64.sh", chroot.name, *source_files()),
                   [str(HERE / "build-deb-arm64.sh"), str(chroot / "chroot.tar"), str(REPO), str(cache / "pip")],
                   timings, log)
    return next(built.glob("armhf-agent_*_arm64.deb"))


def check_dependencies(base: Path, deb: Path) -> None:
    """The guest has no network: `dpkg -i` there only works if the image already holds the .deb's
    dependencies. Said before booting, naming them, rather than as a failed probe minutes later."""
    installed = set((base / "packages.txt").read_text().split())
    missing = [name for name in deb_dependencies(deb) if name not in installed]
    if missing:
        raise UsageError(f"{deb} depends on {', '.join(missing)}, not in the guest image: add them to "
                         f"the release's guest packages (RELEASES in {Path(__file__).name}, build-base.sh)")


def image_keys(release: Release) -> dict[str, str]:
    """The cache key of each image a row boots with: every input of its build."""
    return {
        "base": digest(HERE / "build-base.sh", HERE / "make-initrd.sh", HERE / "image", release.codename,
                       ",".join(release.guest_packages)),
        "payload": digest(HERE / "build-payload.sh", ",".join(release.suites)),
        "payload-update": digest(HERE / "build-payload.sh", ",".join(release.update_suites)),
    }


def shared_keys() -> dict[str, str]:
    """The keys of what every row shares: one container image (a bookworm armhf minbase), only
    something to `docker import`, whatever the guest's release; the multi-platform build's userlands."""
    return {"armhf-rootfs": digest(HERE / "build-armhf-rootfs.sh"),
            "multiplatform": digest(HERE / "build-multiplatform.sh")}


def build_shared(cache: Path, timings: dict[str, str]) -> dict[str, Path]:
    """What every row uses, built once before the rows are (side by side, they would race for it)."""
    keys = shared_keys()
    return {"armhf-rootfs": cached(cache, "armhf-rootfs", keys["armhf-rootfs"],
                                   [str(HERE / "build-armhf-rootfs.sh")], timings),
            "multiplatform": cached(cache, "multiplatform", keys["multiplatform"],
                                    [str(HERE / "build-multiplatform.sh")], timings)}


def build_images(cache: Path, release: Release, mode: str, timings: dict[str, str],
                 log: Path | None = None) -> dict[str, Path]:
    keys = image_keys(release)
    rows = release_cache(cache, release)
    built = {
        "base": cached(rows, "base", keys["base"],
                       [str(HERE / "build-base.sh"), release.codename, ",".join(release.guest_packages)], timings, log),
        "payload": cached(rows, "payload", keys["payload"],
                          [str(HERE / "build-payload.sh"), ",".join(release.suites)], timings, log),
    }
    if mode == "agent" and release.update_suites:
        built["payload-update"] = cached(rows, "payload-update", keys["payload-update"],
                                         [str(HERE / "build-payload.sh"), ",".join(release.update_suites)], timings, log)
    return built


def data_files(built: dict[str, Path], deb: Path | None, multiplatform: bool = False) -> dict[str, Path]:
    """Name on the data disk -> file. The row's payload at the top (`docker-*.tgz`), the second
    payload, when the row has one, in update/: the update probes run when that folder exists; the
    multi-platform userlands in multiplatform/, likewise, for a row with the agent and that flag."""
    payload = next(built["payload"].glob("docker-*.tgz"))
    files = {payload.name: payload, "debian-armhf.tar": built["armhf-rootfs"] / "debian-armhf.tar"}
    if "payload-update" in built:
        update = next(built["payload-update"].glob("docker-*.tgz"))
        if update.name == payload.name:
            raise UsageError(f"the update payload {update} is the same Docker version as the row's own {payload}")
        files[f"update/{update.name}"] = update
    if deb:
        files["armhf-agent.deb"] = deb
        if multiplatform:
            for tar in sorted(built["multiplatform"].glob("rootfs-*.tar")):
                files[f"multiplatform/{tar.name}"] = tar
    return files


def make_data_disk(run_dir: Path, files: dict[str, Path], mode: str) -> Path:
    """The per-run disk the guest mounts read-only at /e2e: probe scripts, payloads, armhf rootfs,
    the .deb. Separate from the cached root disk so a probe edit costs seconds, not a rebuild."""
    stage = run_dir / "data"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(HERE / "guest", stage)
    (stage / "mode").write_text(mode + "\n")
    for name, source in files.items():
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    size_mb = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file()) * 5 // 4 // 2**20 + 64
    image = run_dir / "data.img"
    image.unlink(missing_ok=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "e2e-data", "-d", str(stage), str(image), f"{size_mb}M"],
                   check=True)
    shutil.rmtree(stage)
    return image


def boot(base: Path, data: Path, run_dir: Path, cpu: str, timeout: float) -> tuple[Path, float, bool]:
    """Boots the guest on a copy-on-write overlay of the cached disk; streams probe lines to stderr
    as they arrive. Returns the console log, the seconds QEMU ran, and whether it was killed."""
    overlay = run_dir / "root.qcow2"
    overlay.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base / "disk.img"),
                    str(overlay)], check=True)
    command = [
        # gic-version=3: a64fx advertises the GICv3 CPU interface, and the kernel dies with an undefined
        # instruction on its first ICC_SRE access on the default GICv2 board (seen here, QEMU 7.2).
        "qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", cpu, "-smp", "2", "-m", "2048", "-nographic",
        "-kernel", str(base / "vmlinuz"), "-initrd", str(base / "initrd.gz"),
        # apparmor=0: Debian's kernel enables AppArmor and dockerd then refuses containers without
        # the profile tools (reference/test-environment.md).
        "-append", "root=/dev/vda rw console=ttyAMA0 panic=-1 apparmor=0",
        "-drive", f"file={overlay},format=qcow2,if=none,id=root,cache=unsafe",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"file={data},format=raw,if=none,id=data,readonly=on",
        "-device", "virtio-blk-pci,drive=data",
        "-nic", "none", "-no-reboot",
    ]
    console = run_dir / "console.log"
    started = time.monotonic()
    with console.open("w") as log:
        qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        killed = threading.Event()
        booted = threading.Event()

        def expire() -> None:
            killed.set()
            qemu.kill()

        def boot_expire() -> None:
            if not booted.is_set():
                expire()

        timers = [threading.Timer(timeout, expire), threading.Timer(min(timeout, BOOT_TIMEOUT_SECONDS), boot_expire)]
        for timer in timers:
            timer.start()
        try:
            for line in qemu.stdout:
                log.write(line)
                log.flush()
                marker = LINE.search(line)
                if marker:
                    booted.set()
                    print(f"  [{time.monotonic() - started:6.1f}s] {marker.group(0)}", file=sys.stderr, flush=True)
        finally:
            for timer in timers:
                timer.cancel()
            qemu.wait()
    overlay.unlink()
    return console, time.monotonic() - started, killed.is_set()


@dataclass
class Row:
    release: Release
    report: Report | None = None          # None: it never booted (see error)
    error: str = ""
    usage: bool = False                    # the error is the caller's to fix (exit 2)
    timings: dict[str, str] = field(default_factory=dict)
    prepared: float = 0.0
    qemu_seconds: float = 0.0
    boot_with: tuple | None = None         # (base, data disk, run folder) once prepared

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.ok and not self.error


def failing(row: Row, step) -> None:
    """Runs step(); a failed build or bad usage is this row's failure, not the run's."""
    try:
        step()
    except UsageError as error:
        row.error, row.usage = str(error), True
    except BuildError as error:
        row.error = str(error)
    except subprocess.CalledProcessError as error:
        command = " ".join(map(str, error.cmd)) if isinstance(error.cmd, (list, tuple)) else str(error.cmd)
        row.error = f"{command} exited {error.returncode}"


def prepare_row(row: Row, args, deb: Path | None, shared: dict[str, Path], log: Path | None = None) -> None:
    """Builds (or finds) everything the row's guest boots with. `log`: where build output goes."""
    started = time.monotonic()
    release = row.release

    def step() -> None:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")
        row_deb = None if args.no_agent else (deb or build_deb(args.cache, release, row.timings, log))
        mode = "no-aarch32" if args.cpu in NO_AARCH32_CPUS else ("agent" if row_deb else "platform")
        built = {**build_images(args.cache, release, mode, row.timings, log), **shared}
        if row_deb:
            check_dependencies(built["base"], row_deb)
        run_dir = release_cache(args.cache, release) / f"run-{args.cpu}-{mode}"
        run_dir.mkdir(parents=True, exist_ok=True)
        row.boot_with = (built["base"], make_data_disk(run_dir, data_files(built, row_deb, release.multiplatform and mode == "agent"), mode), run_dir)
        print(f"e2e: {release.title}: prepared (mode {mode}, cpu {args.cpu})", file=sys.stderr, flush=True)

    failing(row, step)
    row.prepared = time.monotonic() - started


def boot_row(row: Row, args) -> None:
    base, data, run_dir = row.boot_with
    print(f"e2e: {row.release.title}: booting (console: {run_dir / 'console.log'})", file=sys.stderr, flush=True)
    console, row.qemu_seconds, killed = boot(base, data, run_dir, args.cpu, args.timeout)
    with console.open(errors="replace") as lines:
        row.report = parse_console(lines)
    if killed:
        row.report.problems.append(f"QEMU killed after {row.qemu_seconds:.0f} s (limits: {BOOT_TIMEOUT_SECONDS} s to "
                                   f"the first E2E line, {args.timeout:.0f} s in all)")
    check_guest_release(row.report, row.release)


def run_rows(rows: list[Row], args, deb: Path | None, shared: dict[str, Path], boot) -> None:
    """Rows are prepared side by side: their builds (mmdebstrap, dpkg-buildpackage under qemu-user) are
    mostly single-threaded, so on two cores two rows' builds take little more than the longer one.
    Each row's build output then goes to RELEASE/build.log. `boot(row)` runs in this thread for each row
    as soon as that row is prepared, one row at a time (each QEMU has two CPUs): the first row's guest
    runs while the other's images are still building (from nothing here, Debian 12's were ready after
    20 min, Debian 13's after about 50)."""
    if len(rows) == 1:
        prepare_row(rows[0], args, deb, shared)
        boot(rows[0])
        return
    prepared: queue.Queue = queue.Queue()

    def prepare(row: Row) -> None:
        try:
            prepare_row(row, args, deb, shared, release_cache(args.cache, row.release) / "build.log")
        except Exception as error:  # noqa: BLE001 - the row fails, named; the other row still boots
            row.error = f"preparing failed: {type(error).__name__}: {error}"
        finally:
            prepared.put(row)

    threads = [threading.Thread(target=prepare, name=f"prepare-{row.release.codename}", args=(row,))
               for row in rows]
    for thread in threads:
        thread.start()
    for _ in rows:
        boot(prepared.get())
    for thread in threads:
        thread.join()


def check_guest_release(report: Report, release: Release) -> None:
    """The guest says which release it booted: a disk of another release (a cache mix-up) would
    otherwise pass as this row."""
    said = report.info.get("release")
    if said != release.codename and report.results:
        report.problems.append(f"the guest says it is {said or 'no release'}, this row is {release.codename}")


def format_matrix(rows: list[Row]) -> str:
    """Probe x row, in the order the probes first ran; '-' where a row did not run a probe."""
    names: list[str] = []
    for row in rows:
        for result in row.report.results if row.report else []:
            if result.name not in names:
                names.append(result.name)
    cells = {}
    for index, row in enumerate(rows):
        for result in row.report.results if row.report else []:
            cells[(result.name, index)] = "PASS" if result.passed else "FAIL"
    heads = [row.release.title for row in rows]
    width = max([len(n) for n in names] + [len("problems")])
    columns = [max(len(h), 7) for h in heads]
    lines = ["probe".ljust(width) + "".join(f"  {h:<{w}}" for h, w in zip(heads, columns))]
    for name in names:
        lines.append(name.ljust(width) + "".join(f"  {cells.get((name, index), '-'):<{w}}"
                                                 for index, w in enumerate(columns)))

    def passed(row: Row) -> str:
        if row.report is None:
            return "not run"
        return f"{sum(r.passed for r in row.report.results)}/{len(row.report.results)}"

    def problems(row: Row) -> str:
        return "error" if row.error else str(len(row.report.problems)) if row.report else "-"

    lines.append("passed".ljust(width) + "".join(f"  {passed(row):<{w}}" for row, w in zip(rows, columns)))
    lines.append("problems".ljust(width) + "".join(f"  {problems(row):<{w}}" for row, w in zip(rows, columns)))
    return "\n".join(line.rstrip() for line in lines)


def print_row(row: Row) -> None:
    print(f"== {row.release.title}")
    if row.report is not None:
        print(format_table(row.report))
        print("guest: " + ", ".join(f"{k}={v}" for k, v in row.report.info.items()))
    if row.error:
        print(f"ERROR: {row.error}")
    print("images: " + ", ".join(f"{k} {v}" for k, v in row.timings.items()))
    print(f"time: prepare {row.prepared:.0f} s, qemu {row.qemu_seconds:.0f} s", flush=True)


def exit_status(rows: list[Row]) -> int:
    if any(row.usage for row in rows):
        return 2
    return 0 if all(row.ok for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    agent = parser.add_mutually_exclusive_group()
    agent.add_argument("--deb", type=Path, help="the arm64 armhf-agent .deb to test (default: build it from "
                       "this tree in an arm64 chroot of each release); its +debNN picks the row")
    agent.add_argument("--no-agent", action="store_true", help="platform probes only: the armhf dockerd "
                       "started by hand, no .deb")
    parser.add_argument("--release", help=f"rows to run, comma-separated (default {','.join(DEFAULT_RELEASES)}; "
                        f"known: {', '.join(RELEASES)})")
    parser.add_argument("--cpu", default=DEFAULT_CPU, help=f"QEMU CPU model (default {DEFAULT_CPU}; "
                        f"{', '.join(sorted(NO_AARCH32_CPUS))} runs the no-AArch32 probes)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"(default {DEFAULT_CACHE})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        help=f"seconds before QEMU is killed, per row (default {DEFAULT_TIMEOUT_SECONDS})")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build (or find) every row's images and .deb, boot nothing (.ci/run does this "
                        "while the tests run)")
    parser.add_argument("--check-host", action="store_true",
                        help="only check that every host tool a run needs is installed (exit 0 or 2)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.check_host:
        try:
            check_tools()
        except UsageError as error:
            print(f"e2e: {error}", file=sys.stderr)
            return 2
        print(f"e2e: host tools present: {', '.join(sorted(HOST_TOOLS))}")
        return 0
    try:
        if args.deb is not None and not args.deb.is_file():
            raise UsageError(f"--deb {args.deb}: no such file")
        releases = choose_releases(args.release, args.deb)
        check_host()
    except UsageError as error:
        print(f"e2e: {error}", file=sys.stderr)
        return 2
    rows = [Row(release) for release in releases]
    shared_timings: dict[str, str] = {}
    try:
        shared = build_shared(args.cache, shared_timings)
    except subprocess.CalledProcessError as error:
        print(f"e2e: {' '.join(map(str, error.cmd))} exited {error.returncode}", file=sys.stderr)
        return 1

    def boot(row: Row) -> None:
        row.timings.update(shared_timings)
        if not row.error and not args.prepare_only:
            boot_row(row, args)
        print_row(row)

    run_rows(rows, args, args.deb, shared, boot)
    if args.prepare_only:
        print(f"time: total {time.monotonic() - started:.0f} s")
        return 1 if any(row.error for row in rows) else 0
    if len(rows) > 1:
        print("== probe x row")
        print(format_matrix(rows))
    print(f"time: total {time.monotonic() - started:.0f} s")
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
