"""`armhf-agent doctor`: fixture hosts for every CPU in the platform table, and this machine for real
(binfmt_misc, sockets, a real dockerd, real payload files)."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.launch import EXIT_PERSONALITY_REFUSED
from agent.aarch32 import (PERSONALITY_PROBE_ARGV, PROBE_EXIT_CODE, PROBE_NAME, RunResult,
                           arm_handlers, decide, ExecOutcome, PersonalityOutcome, parse_binfmt_entry, probe_elf)
from agent.config import (AgentConfig, AgentSection, CpuinfoSection, DockerSection, MetricsSection, RuntimeSection,
                          ShimSection)
from agent.doctor import (DEFAULT_PATH, FAIL, PASS, WARN, Check, HostRoot, check_cpu, check_cpuinfo_profile,
                          check_page_size, check_payload, check_runtime_wrapper, check_services, check_shim_precedence,
                          check_uts_machine, doctor_command, run_checks)
from agent.state import CpuinfoState
from agent.status import AgentLiveness
from agent.elf import elf_info_from_bytes
from agent.state import DockerdState, FileState, Snapshot
from harness import Dockerd, have_docker, make_payload, new_base

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
BINFMT_FIXTURE = Path(__file__).parent / "fixtures" / "binfmt" / "qemu-arm-registered"
BINFMT = "/proc/sys/fs/binfmt_misc"
QEMU_ARM = "/usr/bin/qemu-arm-static"


class ProbeResults:
    """Stands in for exec on a fixture host: the probes' outcomes as that CPU gives them, and no other
    program (no systemctl, no dockerd)."""

    def __init__(self, exec_runs: bool, personality_ok: bool, dockerd_version: str = ""):
        self.exec_runs, self.personality_ok, self.dockerd_version = exec_runs, personality_ok, dockerd_version
        self.calls: list[list[str]] = []

    def run(self, argv, timeout):
        argv = list(argv)
        self.calls.append(argv)
        if tuple(argv) == PERSONALITY_PROBE_ARGV:
            # The launcher's probe: exit 0, or 71 when the kernel refuses PER_LINUX32 (agent/launch.py).
            if self.personality_ok:
                return RunResult(0, "", "")
            return RunResult(EXIT_PERSONALITY_REFUSED, "", "armhf-agent launch: personality(PER_LINUX32) refused")
        if Path(argv[0]).name == PROBE_NAME:
            if not self.exec_runs:
                raise OSError(errno.ENOEXEC, "Exec format error", argv[0])
            return RunResult(PROBE_EXIT_CODE, "", "")
        if argv[1:] == ["--version"] and self.dockerd_version:
            return RunResult(0, self.dockerd_version + "\n", "")
        raise FileNotFoundError(errno.ENOENT, "not on this fixture host", argv[0])


class QuietSockets:
    def unix_listener_pid(self, path):
        return None

    def bind_error(self, host, port):
        return None


def fixture_root(name: str, exec_runs: bool, personality_ok: bool, host: Path | None = None, **kw) -> HostRoot:
    host = host or HOSTS / name
    kw.setdefault("page_size", 4096)
    return HostRoot(proc=str(host / "proc"), sys=str(host / "sys"), etc=str(host / "etc"), boot=str(host / "boot"),
                    binfmt=str(host / "proc/sys/fs/binfmt_misc"), containerd_socket=str(host / "no-containerd"),
                    machine="aarch64", shell_path=DEFAULT_PATH,
                    runner=ProbeResults(exec_runs, personality_ok), sockets=QuietSockets(), **kw)


def make_config(tmp_path: Path, **sections) -> AgentConfig:
    defaults = dict(
        agent=AgentSection(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state")),
        docker=DockerSection(root=str(tmp_path / "payload"), host=f"unix://{tmp_path}/d.sock",
                             data_root=str(tmp_path / "data")),
        cpuinfo=CpuinfoSection(path=str(tmp_path / "cpuinfo")),
        shim=ShimSection(path="/usr/local/bin/docker"),
        runtime=RuntimeSection(dir=str(tmp_path / "state" / "runtime")),
        metrics=MetricsSection(listen=f"127.0.0.1:{free_port()}"),
    )
    return AgentConfig(**{**defaults, **sections})




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def by_name(checks):
    return {c.name: c for c in checks}


# --- the probe program -------------------------------------------------------------------------------

def test_probe_is_a_32_bit_arm_executable():
    elf = probe_elf()
    info = elf_info_from_bytes(elf)
    assert info.is_armhf_capable and info.describe() == "ELF 32-bit LSB arm"
    e_type, e_machine, _version, entry = struct.unpack_from("<HHII", elf, 16)
    assert (e_type, e_machine, entry) == (2, 40, 0x10000 + 52 + 32)
    assert struct.unpack_from("<3I", elf, 84) == (0xE3A0002A, 0xE3A07001, 0xEF000000)


@pytest.mark.skipif(not os.path.exists(QEMU_ARM), reason=f"{QEMU_ARM} not installed (apt-get install qemu-user-static)")
def test_probe_really_exits_42_when_run_by_an_arm_cpu(tmp_path):
    # Run by the emulator directly (not through binfmt_misc), so this holds whatever is registered.
    probe = tmp_path / "probe"
    probe.write_bytes(probe_elf())
    probe.chmod(0o755)
    assert subprocess.run([QEMU_ARM, str(probe)]).returncode == PROBE_EXIT_CODE


# --- binfmt_misc parsing and the verdict -------------------------------------------------------------

def test_binfmt_entries_as_the_kernel_prints_them():
    entry = parse_binfmt_entry("qemu-arm", (BINFMT_FIXTURE / "qemu-arm").read_text())
    assert (entry.enabled, entry.interpreter, entry.offset) == (True, "/usr/libexec/qemu-binfmt/arm-binfmt-P", 0)
    assert entry.matches(probe_elf())
    aarch64 = parse_binfmt_entry("qemu-aarch64", (BINFMT_FIXTURE / "qemu-aarch64").read_text())
    assert not aarch64.matches(probe_elf())
    assert parse_binfmt_entry("jar", "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n") is None
    # Only enabled handlers count: box-arm-disabled matches the header too, but is switched off.
    assert [h.name for h in arm_handlers(str(BINFMT_FIXTURE), probe_elf())] == ["qemu-arm"]


def test_binfmt_switched_off_as_a_whole_or_absent_claims_nothing(tmp_path):
    shutil.copytree(BINFMT_FIXTURE, tmp_path / "binfmt")
    (tmp_path / "binfmt" / "status").write_text("disabled\n")
    assert arm_handlers(str(tmp_path / "binfmt"), probe_elf()) == []
    assert arm_handlers(str(tmp_path / "not-mounted"), probe_elf()) == []


RAN = ExecOutcome(True, None, "exec ran (exit 42)")
ENOEXEC = ExecOutcome(False, errno.ENOEXEC, "exec failed: Exec format error")
EACCES = ExecOutcome(False, errno.EACCES, "exec failed: Permission denied")
P_OK = PersonalityOutcome(True, None, "personality(PER_LINUX32) ok")
P_EINVAL = PersonalityOutcome(False, errno.EINVAL, "personality(PER_LINUX32) refused: EINVAL")
QEMU = [parse_binfmt_entry("qemu-arm", (BINFMT_FIXTURE / "qemu-arm").read_text())]


@pytest.mark.parametrize("machine, exec_outcome, personality, handlers, mode", [
    ("aarch64", RAN, P_OK, [], "native"),
    ("aarch64", RAN, P_OK, QEMU, "emulated"),        # binfmt_misc comes before the ELF loader
    ("aarch64", RAN, P_EINVAL, QEMU, "emulated"),    # Graviton4 with qemu-user-static
    ("aarch64", ENOEXEC, P_EINVAL, [], "unsupported"),
    ("aarch64", EACCES, P_EINVAL, [], "unsupported"),
    ("aarch64", EACCES, P_OK, [], "unknown"),        # noexec temp folder: the exec proves nothing
    ("x86_64", ENOEXEC, P_OK, [], "unsupported"),
    ("x86_64", RAN, P_OK, QEMU, "emulated"),
    ("x86_64", RAN, P_OK, [], "emulated"),           # an x86 CPU never runs ARM code itself
])
def test_verdict(machine, exec_outcome, personality, handlers, mode):
    report = decide(machine, exec_outcome, personality, handlers)
    assert report.mode == mode
    assert exec_outcome.text in report.detail and personality.text in report.detail


# --- fixture hosts: every CPU in the platform table --------------------------------------------------

@pytest.mark.parametrize("host, exec_runs, personality_ok, cpu_verdict, cpu_found, aarch32_verdict, mode", [
    ("graviton2", True, True, PASS,
     "Neoverse N1 (Graviton2, Ampere Altra) (0x41/0xd0c): AArch32 at EL0 (from midr_el1)", PASS, "native"),
    ("ampere-altra", True, True, PASS,
     "Neoverse N1 (Graviton2, Ampere Altra) (0x41/0xd0c): AArch32 at EL0 (from midr_el1)", PASS, "native"),
    ("graviton3", True, True, PASS, "Neoverse V1 (Graviton3) (0x41/0xd40): AArch32 at EL0 (from midr_el1)",
     PASS, "native"),
    ("graviton4", False, False, FAIL, "Neoverse V2 (Graviton4) (0x41/0xd4f): no AArch32 (from midr_el1)",
     FAIL, "unsupported"),
    ("thunderx", False, False, FAIL, "Cavium ThunderX (0x43/0x0a1): no AArch32 (from cpuinfo)",
     FAIL, "unsupported"),
])
def test_fixture_hosts(tmp_path, host, exec_runs, personality_ok, cpu_verdict, cpu_found, aarch32_verdict, mode):
    checks = by_name(run_checks(make_config(tmp_path), fixture_root(host, exec_runs, personality_ok)))
    assert (checks["architecture"].verdict, checks["architecture"].found) == (PASS, "aarch64")
    assert (checks["cpu"].verdict, checks["cpu"].found) == (cpu_verdict, cpu_found)
    assert checks["aarch32-el0"].verdict == aarch32_verdict
    assert checks["aarch32-el0"].found.startswith(f"{mode}: ")
    if cpu_verdict == FAIL:
        assert "cannot execute armhf natively" in checks["cpu"].fix


def test_old_kernel_host_has_cgroup_v1_and_no_overlay_loaded(tmp_path):
    checks = by_name(run_checks(make_config(tmp_path), fixture_root("thunderx", False, False)))
    assert (checks["cgroups"].verdict, checks["cgroups"].found) == (PASS, "cgroup v1 (5 hierarchies)")
    assert checks["overlayfs"].verdict == WARN and "may still autoload" in checks["overlayfs"].found
    modern = by_name(run_checks(make_config(tmp_path), fixture_root("graviton4", False, False)))
    assert (modern["cgroups"].found, modern["overlayfs"].verdict) == ("cgroup2 at /sys/fs/cgroup", PASS)


# --- what breaks natively on real kernels: CONFIG_COMPAT, the page size, compat_uts_machine ------------

def test_kernel_without_compat_is_named_from_its_boot_config(tmp_path):
    # To the probes this host looks like a Graviton4 (ENOEXEC, EINVAL); its config says why.
    checks = by_name(run_checks(make_config(tmp_path), fixture_root("graviton2-no-compat", False, False)))
    compat = checks["kernel-compat"]
    assert compat.verdict == FAIL
    assert compat.found == (f"kernel built without CONFIG_COMPAT ({HOSTS}/graviton2-no-compat/boot/config-6.1.0-custom-arm64: "
                            "not set): it runs no 32-bit Arm program, whatever the CPU")
    assert "CONFIG_COMPAT=y" in compat.fix
    # The CPU itself is fine, and said so.
    assert checks["cpu"].verdict == PASS and checks["aarch32-el0"].verdict == FAIL


def test_kernel_config_from_proc_config_gz_and_from_the_probe_alone(tmp_path):
    host = tmp_path / "host"
    shutil.copytree(HOSTS / "graviton2-no-compat", host)
    config_file = host / "boot/config-6.1.0-custom-arm64"
    (host / "proc/config.gz").write_bytes(gzip.compress(config_file.read_bytes()))
    config_file.unlink()
    from_gz = by_name(run_checks(make_config(tmp_path), fixture_root("", False, False, host=host)))["kernel-compat"]
    assert from_gz.verdict == FAIL and f"({host}/proc/config.gz: not set)" in from_gz.found

    # A kernel that says CONFIG_COMPAT=y passes, from the same place.
    (host / "proc/config.gz").write_bytes(gzip.compress(b"CONFIG_ARM64=y\nCONFIG_COMPAT=y\n"))
    compat_y = by_name(run_checks(make_config(tmp_path), fixture_root("", True, True, host=host)))["kernel-compat"]
    assert (compat_y.verdict, compat_y.found) == (PASS, f"CONFIG_COMPAT=y ({host}/proc/config.gz)")

    # Neither file, or a config.gz that is not gzip: the probe refuses PER_LINUX32 on a CPU the table
    # knows to run AArch32, so the kernel is the likely cause.
    (host / "proc/config.gz").write_bytes(b"CONFIG_COMPAT=y\n")
    guessed = by_name(run_checks(make_config(tmp_path), fixture_root("", False, False, host=host)))["kernel-compat"]
    assert guessed.verdict == FAIL
    assert guessed.found.startswith("the kernel refuses PER_LINUX32 although this CPU (Neoverse N1 (Graviton2, Ampere "
                                    "Altra)) runs AArch32 at EL0: it was most likely built without CONFIG_COMPAT (no ")
    # The same refusal on a CPU without AArch32 proves nothing about the kernel.
    g4 = by_name(run_checks(make_config(tmp_path), fixture_root("graviton4", False, False)))["kernel-compat"]
    assert g4.verdict == WARN and g4.found.startswith("cannot tell: no ")
    # A kernel that accepts PER_LINUX32 has CONFIG_COMPAT, config file or not.
    g2 = by_name(run_checks(make_config(tmp_path), fixture_root("graviton2", True, True)))["kernel-compat"]
    assert g2.verdict == PASS and g2.found.startswith("the kernel accepts PER_LINUX32, so it has CONFIG_COMPAT (no ")


def test_sixteen_kib_pages_fail_even_where_the_probe_runs(tmp_path):
    # A Raspberry Pi 5 on its default kernel: COMPAT is on (CONFIG_EXPERT), the probe's one segment at
    # 64 KiB runs, but armhf binaries laid out for 4 KiB do not.
    checks = by_name(run_checks(make_config(tmp_path), fixture_root("raspberrypi5", True, True, page_size=16384)))
    assert checks["aarch32-el0"].verdict == PASS
    assert checks["kernel-compat"].verdict == PASS
    pages = checks["page-size"]
    assert pages.verdict == FAIL
    assert pages.found.startswith(f"16 KiB pages (CONFIG_ARM64_16K_PAGES=y in {HOSTS}/raspberrypi5/boot/"
                                  "config-6.6.51+rpt-rpi-2712): ")
    assert "aligned to 4 KiB and fail at exec" in pages.found and "kernel=kernel8.img" in pages.fix
    assert checks["cpu"].found.startswith("unknown CPU (0x41/0xd0b)")
    # The same board on its 4 KiB kernel, and 64 KiB pages without a readable config.
    assert check_page_size(fixture_root("raspberrypi5", True, True, page_size=4096)) == \
        Check("page-size", PASS, "4 KiB pages")
    big = check_page_size(fixture_root("graviton2", True, True, page_size=65536))
    assert big.verdict == FAIL and big.found.startswith("64 KiB pages: ")
    # Never a failure on a development host.
    x86 = check_page_size(replace(fixture_root("graviton2", True, True, page_size=16384), machine="x86_64"))
    assert x86.verdict == WARN


def test_ubuntu_kernel_with_and_without_compat_uts_machine(tmp_path):
    armv7l = by_name(run_checks(make_config(tmp_path), fixture_root("ubuntu-graviton3", True, True)))["uts-machine"]
    assert (armv7l.verdict, armv7l.found) == (PASS, "Ubuntu kernel with compat_uts_machine=armv7l: containers print "
                                                    "`uname -m` armv7l, as an ARMv7 board does")
    host = tmp_path / "host"
    shutil.copytree(HOSTS / "ubuntu-graviton3", host)
    cmdline = (HOSTS / "ubuntu-graviton3/proc/cmdline").read_text()
    (host / "proc/cmdline").write_text(cmdline.replace(" compat_uts_machine=armv7l", ""))
    unset = check_uts_machine(fixture_root("", True, True, host=host))
    assert unset.verdict == PASS
    assert unset.found.startswith("Ubuntu kernel, compat_uts_machine not set: containers print `uname -m` armv8l ")
    assert "compat_uts_machine=armv7l on the kernel command line makes it armv7l" in unset.found
    # At the very start of the command line, and longer than the 8 characters the kernel keeps.
    (host / "proc/cmdline").write_text("compat_uts_machine=armv7lxyz root=/dev/vda\n")
    assert "compat_uts_machine=armv7lxy:" in check_uts_machine(fixture_root("", True, True, host=host)).found
    # Not a word that merely ends with the option's name.
    (host / "proc/cmdline").write_text("root=/dev/vda my_compat_uts_machine=armv7l\n")
    assert "not set" in check_uts_machine(fixture_root("", True, True, host=host)).found
    # A Debian kernel ignores the option: said, not silently trusted.
    (host / "proc/version").write_text("Linux version 6.12.117+deb13-arm64 (debian-kernel@lists.debian.org) "
                                       "(aarch64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0) #1 SMP Debian 6.12.117-1\n")
    (host / "proc/cmdline").write_text(cmdline)
    ignored = check_uts_machine(fixture_root("", True, True, host=host))
    assert ignored.verdict == WARN and "is not an Ubuntu kernel, which alone knows it: `uname -m` stays armv8l" in ignored.found
    (host / "proc/cmdline").write_text("root=/dev/vda\n")
    debian = check_uts_machine(fixture_root("", True, True, host=host))
    assert debian.verdict == PASS and debian.found.startswith("containers print `uname -m` armv8l")


def test_no_cgroups_mounted_fails(tmp_path):
    shutil.copytree(HOSTS / "graviton2", tmp_path / "host")
    (tmp_path / "host/proc/mounts").write_text("proc /proc proc rw 0 0\n")
    root = replace(fixture_root("graviton2", True, True), proc=str(tmp_path / "host/proc"))
    cgroups = by_name(run_checks(make_config(tmp_path), root))["cgroups"]
    assert cgroups.verdict == FAIL and cgroups.found == "kernel knows cgroup, cgroup2 but none is mounted"


def test_qemu_arm_registered_on_an_aarch32_capable_host_is_emulated(tmp_path):
    root = replace(fixture_root("graviton2", True, True), binfmt=str(BINFMT_FIXTURE))
    check = by_name(run_checks(make_config(tmp_path), root))["aarch32-el0"]
    assert check.verdict == WARN and check.found.startswith("emulated: ")
    assert "personality(PER_LINUX32) ok" in check.found and "qemu-arm" in check.found
    assert check.fix == f"disable the emulator so armhf runs natively: echo 0 > {BINFMT_FIXTURE}/qemu-arm"


def _cpu_host(tmp_path, midrs: list[int]) -> HostRoot:
    for i, midr in enumerate(midrs):
        path = tmp_path / f"sys/devices/system/cpu/cpu{i}/regs/identification/midr_el1"
        path.parent.mkdir(parents=True)
        path.write_text(f"0x{midr:016x}\n")
    return HostRoot(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"), machine="aarch64")


# Every row of ../shared/reference/platform.md's table, written out here rather than read from CPU_TABLE.
@pytest.mark.parametrize("midr, verdict, name", [
    (0x410FD083, PASS, "Cortex-A72 (Graviton1)"),
    (0x413FD0C1, PASS, "Neoverse N1 (Graviton2, Ampere Altra)"),
    (0x411FD401, PASS, "Neoverse V1 (Graviton3)"),
    (0x410FD4F1, FAIL, "Neoverse V2 (Graviton4)"),
    (0x410FD840, FAIL, "Neoverse V3 (Graviton5)"),
    (0x431F0A11, FAIL, "Cavium ThunderX"),
    (0x431F0AF1, FAIL, "Cavium ThunderX2"),
    (0x421F5160, FAIL, "Broadcom Vulcan (ThunderX2)"),
    (0xC00FAC30, WARN, "AmpereOne"),
    (0xC00FAC41, WARN, "AmpereOne"),
])
def test_every_cpu_in_the_platform_table(tmp_path, midr, verdict, name):
    check = check_cpu(_cpu_host(tmp_path, [midr, midr]))
    assert check.verdict == verdict and check.found.startswith(f"{name} (")


def test_ampereone_is_unconfirmed(tmp_path):
    check = check_cpu(_cpu_host(tmp_path, [0xC00FAC30]))
    assert (check.verdict, check.found) == (WARN, "AmpereOne (0xc0/0xac3): AArch32 at EL0 unconfirmed (from midr_el1)")


def test_graviton1_and_a_cpu_outside_the_table(tmp_path):
    assert check_cpu(_cpu_host(tmp_path / "a72", [0x410FD083])).verdict == PASS
    unknown = check_cpu(_cpu_host(tmp_path / "a53", [0x410FD034]))
    assert (unknown.verdict, unknown.found) == (WARN, "unknown CPU (0x41/0xd03): AArch32 at EL0 unconfirmed (from midr_el1)")


def test_mixed_cpus_take_the_worst_verdict(tmp_path):
    check = check_cpu(_cpu_host(tmp_path, [0x413FD0C1, 0x410FD4F1]))
    assert check.verdict == FAIL
    assert check.found.startswith("Neoverse N1 (Graviton2, Ampere Altra) (0x41/0xd0c): AArch32 at EL0; "
                                  "Neoverse V2 (Graviton4) (0x41/0xd4f): no AArch32")


# --- payload --------------------------------------------------------------------------------------------

@pytest.fixture
def base():
    path = new_base("doc")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def armhf_payload(root: Path) -> Path:
    """Every binary a 32-bit ARM ELF (the probe), the layout of Docker's static tarball."""
    root.mkdir(mode=0o755)
    for name in ("dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker-init", "docker-proxy", "docker"):
        (root / name).write_bytes(probe_elf())
        os.chmod(root / name, 0o755)
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="payload ownership checks need root")
def test_armhf_payload_on_an_arm_host(base, tmp_path):
    payload = armhf_payload(base / "docker")
    root = replace(fixture_root("graviton2", True, True),
                   runner=ProbeResults(True, True, dockerd_version="Docker version 27.5.1, build 9f9e405"))
    config = make_config(tmp_path, docker=DockerSection(root=str(payload)))
    check = check_payload(config, root, replace_mode("native"))
    assert check.verdict == PASS
    assert check.found == (f"{payload}: 7 binaries, root-owned, not writable by others; dockerd ELF 32-bit LSB arm; "
                           "Docker version 27.5.1, build 9f9e405")
    # On a CPU without AArch32 the version cannot be asked for.
    unsupported = check_payload(config, root, replace_mode("unsupported"))
    assert "version unknown (cannot run here)" in unsupported.found


def replace_mode(mode: str):
    return decide("aarch64", RAN if mode == "native" else ENOEXEC, P_OK if mode == "native" else P_EINVAL, [])


@pytest.mark.dockerd
@pytest.mark.skipif(not have_docker(), reason="needs root and docker.io")
def test_stand_in_payload_is_a_warning_here_and_a_failure_on_arm(base, tmp_path):
    payload = make_payload(base / "payload")
    config = make_config(tmp_path, docker=DockerSection(root=str(payload)))
    here = check_payload(config, HostRoot(), replace_mode("unsupported"))
    assert here.verdict == WARN and "development mode stand-in" in here.found
    # `dockerd --version` really ran: the host's own dockerd can run here.
    assert "dockerd ELF 64-bit LSB x86_64; Docker version " in here.found
    on_arm = check_payload(config, fixture_root("graviton2", True, True), replace_mode("native"))
    assert on_arm.verdict == FAIL and "not 32-bit ARM: dockerd (ELF 64-bit LSB x86_64)" in on_arm.found


@pytest.mark.skipif(os.geteuid() != 0, reason="payload ownership checks need root")
def test_payload_missing_or_unsafe(base, tmp_path):
    payload = armhf_payload(base / "docker")
    config = make_config(tmp_path, docker=DockerSection(root=str(payload)))
    root = fixture_root("graviton2", True, True)

    (payload / "runc").unlink()
    missing = check_payload(config, root, replace_mode("native"))
    assert missing.verdict == FAIL and missing.found.startswith(f"{payload}: missing runc (looked in {payload}, ")

    (payload / "usr/local/bin").mkdir(parents=True)
    (payload / "usr/local/bin/runc").write_bytes(probe_elf())
    os.chmod(payload / "usr/local/bin/runc", 0o775)
    writable = check_payload(config, root, replace_mode("native"))
    assert (writable.verdict, writable.found) == (FAIL, f"{payload}/usr/local/bin/runc is writable by group or others (mode 0775)")

    os.chmod(payload / "usr/local/bin/runc", 0o755)
    os.chown(payload / "usr", 1000, 1000)
    foreign = check_payload(config, root, replace_mode("native"))
    assert (foreign.verdict, foreign.found) == (FAIL, f"{payload}/usr is owned by uid 1000, not root")

    os.chown(payload / "usr", 0, 0)
    assert check_payload(config, root, replace_mode("native")).verdict == PASS


def test_payload_under_a_world_writable_folder_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    payload = armhf_payload(shared / "docker")
    check = check_payload(make_config(tmp_path, docker=DockerSection(root=str(payload))),
                          fixture_root("graviton2", True, True), replace_mode("native"))
    assert check.verdict == FAIL and f"{shared} is writable by group or others (mode 0777)" in check.found


# --- conflicts ---------------------------------------------------------------------------------------------

@pytest.fixture
def agent_process(tmp_path):
    program = tmp_path / "armhf-agent"
    program.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(program), "300"])
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        time.sleep(0.005)
    yield proc
    proc.kill()
    proc.wait()


def publish_state(config: AgentConfig, snapshot: Snapshot) -> None:
    Path(config.agent.run_dir).mkdir(exist_ok=True)
    Path(config.agent.run_dir, "state.json").write_text(snapshot.to_json())


@pytest.mark.dockerd
@pytest.mark.dockerd
@pytest.mark.skipif(not have_docker(), reason="needs root and docker.io (dockerd)")
def test_socket_taken_by_another_dockerd_and_by_the_agents_own(base, tmp_path, agent_process):
    dockerd = Dockerd(base / "d")
    dockerd.base.mkdir()
    dockerd.start()
    try:
        config = make_config(tmp_path, docker=DockerSection(root=str(tmp_path / "payload"), host=dockerd.host))
        root = HostRoot()
        other = by_name(run_checks(config, root))["conflict-socket"]
        assert other.verdict == FAIL
        assert other.found.startswith(f"pid {dockerd.proc.pid} (") and f"already answers on {dockerd.sock}" in other.found

        # The same daemon started from the configured payload: the agent will adopt it.
        payload = make_payload(base / "payload", copy_dockerd=False)
        adoptable = make_config(tmp_path, docker=DockerSection(root=str(payload), host=dockerd.host))
        assert by_name(run_checks(adoptable, root))["conflict-socket"].verdict == PASS

        publish_state(config, Snapshot(pid=agent_process.pid, last_step_at=time.time(),
                                       dockerd=DockerdState(state="running", pid=dockerd.proc.pid)))
        own = by_name(run_checks(config, root))["conflict-socket"]
        assert (own.verdict, own.found) == (PASS, f"the agent's dockerd (pid {dockerd.proc.pid}) answers on {dockerd.sock}")
    finally:
        dockerd.stop()


def test_metrics_port_taken(tmp_path, agent_process):
    config = make_config(tmp_path)
    root = replace(HostRoot(), runner=ProbeResults(False, True))
    assert by_name(run_checks(config, root))["metrics-port"].verdict == PASS
    with socket.socket() as listener:
        listener.bind((config.metrics.host, config.metrics.port))
        listener.listen()
        taken = by_name(run_checks(config, root))["metrics-port"]
        assert (taken.verdict, taken.found) == (FAIL, f"cannot bind {config.metrics.listen}: Address already in use")
        publish_state(config, Snapshot(pid=agent_process.pid, last_step_at=time.time(),
                                       metrics_url=f"http://{config.metrics.listen}/metrics"))
        assert by_name(run_checks(config, root))["metrics-port"].found == \
            f"{config.metrics.listen} is held by the running agent (pid {agent_process.pid})"


class Systemctl:
    """systemctl's answers for a host with Debian's docker.io enabled (pure parsing logic)."""

    def __init__(self, active: set[str]):
        self.active = active

    def run(self, argv, timeout):
        if argv[:2] == ["systemctl", "is-active"]:
            return RunResult(0 if argv[2] in self.active else 3, "active\n" if argv[2] in self.active else "inactive\n", "")
        if argv[:4] == ["systemctl", "show", "-p", "ExecStart"]:
            return RunResult(0, "{ path=/usr/sbin/dockerd ; argv[]=/usr/sbin/dockerd -H fd:// "
                                "--containerd=/run/containerd/containerd.sock $DOCKER_OPTS ; ignore_errors=no ; "
                                "start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n", "")
        if argv[:4] == ["systemctl", "show", "-p", "Listen"]:
            return RunResult(0, "/run/docker.sock (Stream)\n", "")
        raise AssertionError(f"unexpected {argv}")


def test_active_docker_units_on_the_same_socket_and_data_root(tmp_path):
    config = make_config(tmp_path, docker=DockerSection(host="unix:///var/run/docker.sock", data_root="/var/lib/docker"))
    root = HostRoot(etc=str(tmp_path / "etc"), containerd_socket=str(tmp_path / "none"),
                    runner=Systemctl({"docker.service", "docker.socket"}))
    check = check_services(config, root)
    assert check.verdict == FAIL
    assert check.found == ("docker.service is active with the same data-root /var/lib/docker; "
                           "docker.socket is active on the same socket /run/docker.sock")
    # Its own folders and socket: no conflict, only noted.
    (tmp_path / "etc/docker").mkdir(parents=True)
    (tmp_path / "etc/docker/daemon.json").write_text('{"data-root": "/srv/docker"}')
    own = make_config(tmp_path, docker=DockerSection(host="unix:///run/armhf/docker.sock", data_root="/var/lib/armhf-docker"))
    assert check_services(own, root).verdict == PASS
    (tmp_path / "etc/docker/daemon.json").write_text('{"data-root": "/var/lib/armhf-docker"}')
    assert "same data-root /var/lib/armhf-docker" in check_services(own, root).found


def test_a_system_containerd_socket_would_capture_the_payloads_dockerd(tmp_path):
    (tmp_path / "containerd.sock").touch()
    root = HostRoot(containerd_socket=str(tmp_path / "containerd.sock"), runner=Systemctl(set()))
    check = check_services(make_config(tmp_path), root)
    assert check.verdict == FAIL and "would use that containerd instead of its own" in check.found
    explicit = make_config(tmp_path, docker=DockerSection(args=["--containerd=/run/armhf/containerd.sock"]))
    assert check_services(explicit, root).verdict == PASS


def test_no_systemctl(tmp_path):
    root = HostRoot(containerd_socket=str(tmp_path / "none"), runner=ProbeResults(False, True))
    assert check_services(make_config(tmp_path), root).found == "no systemctl"


# --- shim precedence ----------------------------------------------------------------------------------------

def test_shim_precedence(tmp_path):
    shim_dir, other_dir, etc = tmp_path / "shim", tmp_path / "other", tmp_path / "etc"
    for d in (shim_dir, other_dir, etc):
        d.mkdir()
    (other_dir / "docker").touch()
    config = make_config(tmp_path, shim=ShimSection(path=f"{shim_dir}/docker"))
    paths = f"{shim_dir}:{other_dir}:{DEFAULT_PATH}"
    (etc / "login.defs").write_text(f"ENV_PATH PATH=/usr/bin\nENV_SUPATH PATH={paths}\n")
    (etc / "sudoers").write_text(f'Defaults\tenv_reset\nDefaults\tsecure_path="{other_dir}:{shim_dir}"\n')
    check = check_shim_precedence(config, HostRoot(etc=str(etc), shell_path=paths))
    assert check.verdict == FAIL
    assert check.found == (f"{shim_dir} is not in default PATH; sudo's secure_path ({etc}/sudoers): "
                           f"{other_dir}/docker (another docker) comes before the shim in {shim_dir}")

    (etc / "login.defs").write_text(f"ENV_SUPATH PATH={DEFAULT_PATH}\n")
    (etc / "sudoers").write_text(f'Defaults\tsecure_path="{DEFAULT_PATH}"\n')
    default_shim = make_config(tmp_path, shim=ShimSection(path="/usr/local/bin/docker"),
                               docker=DockerSection(root=str(tmp_path / "payload")))
    ok = check_shim_precedence(default_shim, HostRoot(etc=str(etc), shell_path=DEFAULT_PATH))
    # /usr/local/sbin is the only folder before /usr/local/bin in these PATHs.
    expected = PASS if not os.path.lexists("/usr/local/sbin/docker") else FAIL
    assert ok.verdict == expected
    assert ok.found == ("/usr/local/bin/docker is the first `docker` in this shell's PATH, default PATH, "
                        f"su's ENV_SUPATH ({etc}/login.defs), sudo's secure_path ({etc}/sudoers)")


def test_the_real_client_before_the_shim_is_named(tmp_path):
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "docker").write_bytes(probe_elf())
    os.chmod(payload / "docker", 0o755)
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    config = make_config(tmp_path, shim=ShimSection(path=f"{shim_dir}/docker"), docker=DockerSection(root=str(payload)))
    check = check_shim_precedence(config, HostRoot(etc=str(tmp_path / "etc"), shell_path=f"{payload}:{shim_dir}"))
    assert f"this shell's PATH: {payload}/docker (the real client docker) comes before the shim" in check.found


# --- config, managed files, output ---------------------------------------------------------------------------

def test_config_error_and_output_forms(tmp_path):
    config = make_config(tmp_path)
    root = fixture_root("graviton2", True, True)
    out = io.StringIO()
    code = doctor_command(config, "/etc/armhf-agent/agent.toml:3: docker.health_failures: must be >= 1 (got 0)",
                          False, out, root)
    assert code == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 18
    assert "FAIL  config             /etc/armhf-agent/agent.toml:3: docker.health_failures: must be >= 1 (got 0)  " \
           "(fix: armhf-agent check-config lists every problem)" in lines
    assert lines[0] == "PASS  architecture       aarch64"

    out = io.StringIO()
    doctor_command(config, None, True, out, root)
    checks = json.loads(out.getvalue())
    assert [set(c) for c in checks] == [{"name", "verdict", "found", "fix"}] * 18
    assert {"name": "config", "verdict": "PASS", "found": "valid", "fix": ""} in checks


def test_managed_files(tmp_path, agent_process):
    config = make_config(tmp_path, shim=ShimSection(path=str(tmp_path / "docker")))
    # The real /proc, where the stand-in agent process lives.
    root = HostRoot(runner=ProbeResults(True, True), sockets=QuietSockets())
    missing = by_name(run_checks(config, root))["managed-files"]
    assert (missing.verdict, missing.found) == (WARN, f"agent not running; missing {tmp_path}/cpuinfo, {tmp_path}/docker, "
                                                      f"{tmp_path}/state/runtime/runc")
    (tmp_path / "cpuinfo").touch()
    (tmp_path / "docker").touch()
    (tmp_path / "state" / "runtime").mkdir(parents=True)
    (tmp_path / "state" / "runtime" / "runc").touch()
    assert by_name(run_checks(config, root))["managed-files"].verdict == PASS

    publish_state(config, Snapshot(pid=agent_process.pid, last_step_at=time.time(), files=(
        FileState("cpuinfo", str(tmp_path / "cpuinfo"), ok=True),
        FileState("shim", str(tmp_path / "docker"), ok=False, problem="cannot write: read-only file system"))))
    running = by_name(run_checks(config, root))["managed-files"]
    assert (running.verdict, running.found) == (FAIL, f"shim {tmp_path}/docker: cannot write: read-only file system")


# --- the cpuinfo profile in force ------------------------------------------------------------------------------

NOT_RUNNING = AgentLiveness(None, False, "no state file")


def test_cpuinfo_profile_says_what_it_hides_on_a_fixture_host(tmp_path):
    root = fixture_root("graviton2", exec_runs=True, personality_ok=True)
    pi3 = check_cpuinfo_profile(make_config(tmp_path, cpuinfo=CpuinfoSection(profile="raspberrypi3-32")), root, NOT_RUNNING)
    # Neoverse N1's 32-bit view has crypto, fp16 and dot product; a Pi 3's Cortex-A53 has none of them.
    assert (pi3.verdict, pi3.found) == (PASS, "profile raspberrypi3-32 (Raspberry Pi 3 in 32-bit mode (BCM2837, Cortex-A53 "
                                              "r0p4), linux/arm/v7): hides fphp asimdhp asimddp aes pmull sha1 sha2 ssbs "
                                              "of this host's features")
    v6 = check_cpuinfo_profile(make_config(tmp_path, cpuinfo=CpuinfoSection(variant="v6")), root, NOT_RUNNING)
    assert v6.verdict == PASS and v6.found.startswith("profile raspberrypi1 (") and " neon vfpv3 " in v6.found
    host = check_cpuinfo_profile(make_config(tmp_path), root, NOT_RUNNING)
    assert (host.verdict, host.found) == (PASS, "profile host: this host's own features (half thumb fastmult vfp edsp "
                                                "neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm fphp asimdhp asimddp "
                                                "aes pmull sha1 sha2 crc32 ssbs)")


def test_cpuinfo_profile_fails_naming_what_the_host_lacks(tmp_path):
    # A Raspberry Pi 2 running the agent (a 32-bit kernel): no crc32 for a Pi 3 profile.
    (tmp_path / "host" / "proc").mkdir(parents=True)
    (tmp_path / "host" / "proc" / "cpuinfo").write_text(
        (Path(__file__).parent / "fixtures" / "cpuinfo" / "raspberrypi2.txt").read_text())
    root = replace(fixture_root("graviton2", True, True), proc=str(tmp_path / "host" / "proc"), machine="armv7l")
    check = check_cpuinfo_profile(make_config(tmp_path, cpuinfo=CpuinfoSection(profile="raspberrypi3-32")), root, NOT_RUNNING)
    assert check.verdict == FAIL
    assert check.found.startswith("profile raspberrypi3-32 claims crc32, which this host cannot run (its 32-bit Features: ")
    assert "may only hide features" in check.fix
    # An unreadable host view is a warning that says why, not a crash.
    (tmp_path / "host" / "proc" / "cpuinfo").unlink()
    os.mkfifo(tmp_path / "host" / "proc" / "cpuinfo")
    unread = check_cpuinfo_profile(make_config(tmp_path, cpuinfo=CpuinfoSection(profile="raspberrypi3-32")), root, NOT_RUNNING)
    assert unread.verdict == WARN and "is a FIFO, not a regular file" in unread.found


def test_cpuinfo_profile_of_the_running_agent_when_it_differs(tmp_path, agent_process):
    config = make_config(tmp_path, cpuinfo=CpuinfoSection(path=str(tmp_path / "cpuinfo"), profile="raspberrypi2"))
    publish_state(config, Snapshot(pid=agent_process.pid, last_step_at=time.time(),
                                   cpuinfo=CpuinfoState(profile="host", variant="v7")))
    root = HostRoot(runner=ProbeResults(True, True), sockets=QuietSockets())
    check = by_name(run_checks(config, root))["cpuinfo-profile"]
    assert check.verdict == PASS
    assert check.found.endswith("; the running agent still shows host (systemctl reload armhf-agent)")


# --- this machine, for real ------------------------------------------------------------------------------------

def registrations() -> dict[str, str]:
    """Every binfmt_misc entry (and the global switch) with its full text: name, state and content."""
    return {p.name: p.read_text() for p in sorted(Path(BINFMT).iterdir()) if p.name != "register"}


ARM_ELF_MAGIC = r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00"
ARM_ELF_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
TEST_HANDLER = "armhf-agent-test-qemu-arm"


def doctor_json(config: AgentConfig) -> dict:
    out = io.StringIO()
    doctor_command(config, None, True, out)
    return {c["name"]: c for c in json.loads(out.getvalue())}


@pytest.mark.skipif(os.geteuid() != 0, reason="binfmt_misc needs root")
@pytest.mark.skipif(not os.path.exists(QEMU_ARM), reason=f"{QEMU_ARM} not installed (apt-get install qemu-user-static)")
def test_this_machine_with_and_without_a_qemu_arm_handler(tmp_path):
    mounted_here = False
    if not os.path.exists(f"{BINFMT}/register"):
        done = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"binfmt_misc cannot be mounted here: {done.stderr.strip()}")
        mounted_here = True
    config = make_config(tmp_path)
    before = registrations()
    try:
        if not arm_handlers(BINFMT, probe_elf()):
            Path(BINFMT, "register").write_text(f":{TEST_HANDLER}:M::{ARM_ELF_MAGIC}:{ARM_ELF_MASK}:{QEMU_ARM}:F")
        with_handler = doctor_json(config)
        # Others' handlers are switched off only for the few milliseconds the probe takes.
        for handler in arm_handlers(BINFMT, probe_elf()):
            Path(BINFMT, handler.name).write_text("0")
        without = doctor_json(config)
    finally:
        if Path(BINFMT, TEST_HANDLER).exists():
            Path(BINFMT, TEST_HANDLER).write_text("-1")
        for name, text in before.items():
            if name != "status" and registrations().get(name) != text:
                Path(BINFMT, name).write_text("1" if text.startswith("enabled") else "0")
        after = registrations()
        if mounted_here:
            subprocess.run(["umount", BINFMT], check=True)
    assert after == before

    for checks in (with_handler, without):
        assert checks["architecture"]["verdict"] == WARN
        assert checks["architecture"]["found"] == f"{os.uname().machine}: development mode (the agent targets aarch64 hosts)"
        assert checks["aarch32-el0"]["verdict"] == WARN   # never FAIL on a development host
    assert with_handler["aarch32-el0"]["found"].startswith("emulated: exec ran (exit 42); personality(PER_LINUX32) ok; binfmt handler ")
    assert without["aarch32-el0"]["found"] == ("unsupported: exec failed: Exec format error; personality(PER_LINUX32) ok "
                                               "(development mode)")


@pytest.mark.dockerd
@pytest.mark.skipif(not have_docker(), reason="needs root and docker.io")
def test_this_machine_end_to_end(base, tmp_path):
    """The whole doctor on this x86_64 host with a stand-in payload: development-mode warnings, no failure."""
    config = make_config(tmp_path, docker=DockerSection(root=str(make_payload(base / "payload")),
                                                        host=f"unix://{tmp_path}/d.sock", data_root=str(tmp_path / "data")))
    out = io.StringIO()
    code = doctor_command(config, None, False, out, HostRoot(shell_path=DEFAULT_PATH))
    report = out.getvalue()
    verdicts = {line.split()[1]: line.split()[0] for line in report.splitlines()}
    assert verdicts == {"architecture": WARN, "aarch32-el0": WARN, "cpu": WARN, "kernel-compat": WARN,
                        "page-size": PASS, "uts-machine": PASS, "payload": WARN,
                        "conflict-socket": PASS, "conflict-services": PASS, "metrics-port": PASS,
                        "shim-precedence": PASS, "config": PASS, "managed-files": WARN, "runtime-wrapper": PASS,
                        "host-docker": PASS,
                        "cpuinfo-profile": PASS,
                        "cgroups": PASS, "overlayfs": PASS}, report
    assert code == 0
    assert "WARN  cpu                no Arm MIDR on a x86_64 host (development mode)" in report



# --- the runtime wrapper ---------------------------------------------------------------------------------------

def _running(pid: int):
    from agent.state import DockerdState, Snapshot

    return AgentLiveness(Snapshot(pid=1, dockerd=DockerdState(state="running", pid=pid)), True, "")


def _proc_with_dockerd(tmp_path: Path, pid: int, env: dict[str, str]) -> HostRoot:
    proc = tmp_path / "proc" / str(pid)
    proc.mkdir(parents=True)
    (proc / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    return HostRoot(proc=str(tmp_path / "proc"), machine="aarch64")


def test_runtime_wrapper_check_reads_the_running_dockerds_own_environment(base):
    tmp_path = base              # root's 0700 test folder: /tmp (1777) would make every wrapper folder unsafe
    config = make_config(tmp_path)
    wrapper_dir = config.runtime.dir
    os.makedirs(wrapper_dir, mode=0o755)
    for d in (tmp_path, tmp_path / "state", wrapper_dir):
        os.chmod(d, 0o755)
    good = {"PATH": f"{wrapper_dir}:/opt/docker:/usr/bin", "DOCKER_BUILDKIT_RUNC_COMMAND": f"{wrapper_dir}/runc"}
    check = check_runtime_wrapper(config, _proc_with_dockerd(tmp_path / "a", 4242, good), _running(4242))
    assert check.verdict == PASS and "finds" in check.found, check
    # An adopted dockerd from before the wrapper: its containers and build steps miss the cpuinfo.
    old = {"PATH": "/opt/docker:/usr/bin"}
    check = check_runtime_wrapper(config, _proc_with_dockerd(tmp_path / "b", 4242, old), _running(4242))
    assert check.verdict == FAIL and "'/opt/docker'" in check.found and "systemctl reload" in check.fix
    # Its folder writable by others: first in root's dockerd PATH, a root shell for them.
    os.chmod(wrapper_dir, 0o777)
    check = check_runtime_wrapper(config, _proc_with_dockerd(tmp_path / "c", 4242, good), _running(4242))
    assert check.verdict == FAIL and "writable by group or others" in check.found
    off = make_config(tmp_path, runtime=RuntimeSection(wrapper=False, dir=wrapper_dir))
    assert check_runtime_wrapper(off, HostRoot(machine="aarch64"), NOT_RUNNING).verdict == WARN
