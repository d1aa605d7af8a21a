"""`armhf-agent doctor`: can this host run the armhf daemon, and what stands in the way.

Every check reads the host through a `HostRoot` (where /proc, /sys, /etc, /boot and binfmt_misc are,
the machine name and page size, and facades for running probes and touching sockets),
so tests can present a Graviton4, a ThunderX or a Raspberry Pi 5 from fixture folders as well as this
machine itself.
"""

from __future__ import annotations

import errno
import glob
import gzip
import json
import os
import re
import shlex
import socket
import subprocess
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from agent import cpuinfo
from agent import payload as payloads
from agent.aarch32 import (ARM_HOST_MACHINES, DEFAULT_BINFMT_ROOT, Aarch32Report, Runner, SubprocessRunner, detect,
                           is_arm64)
from agent.config import AgentConfig
from agent.elf import elf_info
from agent.docker_api import peer_pid
from agent import host_docker, runtime
from agent.managed import in_force
from agent.processes import DEFAULT_PATH, read_cmdline, read_environ
from agent.status import AgentLiveness, read_agent

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# dockerd attaches to a containerd listening here instead of starting the payload's own unless
# --containerd is given (moby cmd/dockerd/daemon.go, systemContainerdRunning: an Lstat of the path).
SYSTEM_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"

# MIDR implementer/part -> (name, AArch32 at EL0: "yes" | "no" | "unconfirmed").
# ../shared/reference/platform.md, "Which hosts can run armhf natively".
CPU_TABLE = {
    (0x41, 0xD08): ("Cortex-A72 (Graviton1)", "yes"),
    (0x41, 0xD0C): ("Neoverse N1 (Graviton2, Ampere Altra)", "yes"),
    (0x41, 0xD40): ("Neoverse V1 (Graviton3)", "yes"),
    (0x41, 0xD4F): ("Neoverse V2 (Graviton4)", "no"),
    (0x41, 0xD84): ("Neoverse V3 (Graviton5)", "no"),
    (0x43, 0x0A1): ("Cavium ThunderX", "no"),
    (0x43, 0x0AF): ("Cavium ThunderX2", "no"),
    (0x42, 0x516): ("Broadcom Vulcan (ThunderX2)", "no"),
    (0xC0, 0xAC3): ("AmpereOne", "unconfirmed"),
    (0xC0, 0xAC4): ("AmpereOne", "unconfirmed"),
}
_AARCH32_VERDICT = {"yes": PASS, "no": FAIL, "unconfirmed": WARN}
_AARCH32_TEXT = {"yes": "AArch32 at EL0", "no": "no AArch32", "unconfirmed": "AArch32 at EL0 unconfirmed"}


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str           # PASS | WARN | FAIL
    found: str
    fix: str = ""


class Sockets(Protocol):
    def unix_listener_pid(self, path: str) -> int | None:
        """The pid that listens on the unix socket at path, None when nothing answers there."""

    def bind_error(self, host: str, port: int) -> OSError | None:
        """Why a TCP listener could not bind host:port, None when it could."""


class RealSockets:
    def unix_listener_pid(self, path: str) -> int | None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect(path)
            except OSError:
                return None
            return peer_pid(s)

    def bind_error(self, host: str, port: int) -> OSError | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # As an HTTP server binds: a port left in TIME_WAIT is not "taken".
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                return exc
        return None


@dataclass(frozen=True)
class HostRoot:
    proc: str = "/proc"
    sys: str = "/sys"
    etc: str = "/etc"
    boot: str = "/boot"
    binfmt: str = DEFAULT_BINFMT_ROOT
    containerd_socket: str = SYSTEM_CONTAINERD_SOCKET
    machine: str = field(default_factory=lambda: os.uname().machine)
    # The kernel's base page size: this process's own for the live host; a fixture host says its own.
    page_size: int = field(default_factory=lambda: os.sysconf("SC_PAGESIZE"))
    shell_path: str = field(default_factory=lambda: os.environ.get("PATH", ""))
    runner: Runner = field(default_factory=SubprocessRunner)
    sockets: Sockets = field(default_factory=RealSockets)

    @property
    def arm(self) -> bool:
        return self.machine in ARM_HOST_MACHINES


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def check_architecture(root: HostRoot) -> Check:
    if is_arm64(root.machine):
        return Check("architecture", PASS, root.machine)
    return Check("architecture", WARN, f"{root.machine}: development mode (the agent targets aarch64 hosts)",
                 "run on an aarch64 host for production")


def check_aarch32(report: Aarch32Report, root: HostRoot) -> Check:
    found = f"{report.mode}: {report.detail}"
    if report.mode == "native":
        return Check("aarch32-el0", PASS, found)
    if not root.arm:
        return Check("aarch32-el0", WARN, f"{found} (development mode)", "run on an aarch64 host with AArch32 at EL0")
    if report.mode == "emulated":
        disable = "; ".join(f"echo 0 > {root.binfmt}/{name}" for name in report.handlers)
        return Check("aarch32-el0", WARN, found,
                     f"disable the emulator so armhf runs natively: {disable}" if disable else
                     "find what emulates 32-bit ARM here")
    if report.mode == "unsupported":
        return Check("aarch32-el0", FAIL, found,
                     "use a CPU with AArch32 at EL0 (Graviton2/3, Ampere Altra, Cortex-A72); see the cpu check")
    return Check("aarch32-el0", WARN, found, "re-run as root on a filesystem that allows exec in the temp folder")


def read_midrs(root: HostRoot) -> tuple[list[int], str]:
    """MIDR values (implementer, part and friends packed as in MIDR_EL1) and where they came from."""
    values = []
    for path in sorted(glob.glob(f"{root.sys}/devices/system/cpu/cpu*/regs/identification/midr_el1")):
        text = _read(path).strip()
        if text:
            values.append(int(text, 16))
    if values:
        return values, "midr_el1"
    implementer = None
    for line in _read(f"{root.proc}/cpuinfo").splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "CPU implementer":
            implementer = int(value, 16)
        elif key == "CPU part" and implementer is not None:
            values.append(implementer << 24 | int(value, 16) << 4)
    return values, "cpuinfo"


def check_cpu(root: HostRoot) -> Check:
    midrs, source = read_midrs(root)
    if not midrs:
        if not root.arm:
            return Check("cpu", WARN, f"no Arm MIDR on a {root.machine} host (development mode)",
                         "run on an aarch64 host")
        return Check("cpu", WARN, "MIDR unreadable (no regs/identification in sysfs, no CPU part in cpuinfo)",
                     "rely on the aarch32-el0 check")
    kinds = sorted({(m >> 24 & 0xFF, m >> 4 & 0xFFF) for m in midrs})
    descriptions, verdicts = [], []
    for implementer, part in kinds:
        name, aarch32 = CPU_TABLE.get((implementer, part), ("unknown CPU", "unconfirmed"))
        descriptions.append(f"{name} ({implementer:#04x}/{part:#05x}): {_AARCH32_TEXT[aarch32]}")
        verdicts.append(_AARCH32_VERDICT[aarch32])
    found = "; ".join(descriptions) + f" (from {source})"
    if FAIL in verdicts:
        return Check("cpu", FAIL, found, "this CPU cannot execute armhf natively: use Graviton2/3, Ampere Altra "
                                          "or another AArch32-capable instance")
    if WARN in verdicts:
        return Check("cpu", WARN, found, "not in the table of known CPUs: trust the aarch32-el0 check")
    return Check("cpu", PASS, found)


def cpu_aarch32(root: HostRoot) -> tuple[str, str] | None:
    """What the CPU table says of this host's CPUs: ("yes" | "no" | "unconfirmed", their names), the
    worst answer when they differ; None when no MIDR is readable."""
    midrs, _ = read_midrs(root)
    if not midrs:
        return None
    found = [CPU_TABLE.get((m >> 24 & 0xFF, m >> 4 & 0xFFF), ("unknown CPU", "unconfirmed")) for m in midrs]
    for answer in ("no", "unconfirmed", "yes"):
        if any(a == answer for _, a in found):
            return answer, ", ".join(sorted({name for name, _ in found}))
    return None


def kernel_release(root: HostRoot) -> str:
    """`uname -r`, as the host root shows it."""
    return _read(f"{root.proc}/sys/kernel/osrelease").strip()


def read_kernel_config(root: HostRoot) -> tuple[dict[str, str], str] | None:
    """The running kernel's build options and where they were read: /boot/config-RELEASE (Debian, Ubuntu
    and Amazon Linux install it beside the kernel), else /proc/config.gz (CONFIG_IKCONFIG_PROC). An
    option written `# CONFIG_X is not set` is "n". None when neither is readable."""
    path = f"{root.boot}/config-{kernel_release(root)}"
    text = _read(path)
    if not text:
        path = f"{root.proc}/config.gz"
        try:
            text = gzip.decompress(Path(path).read_bytes()).decode(errors="replace")
        except (OSError, EOFError, zlib.error):
            return None
    options = {}
    for line in text.splitlines():
        unset = re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip())
        if unset:
            options[unset.group(1)] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            options[key] = value.strip()
    return (options, path) if options else None


def check_kernel_compat(root: HostRoot, aarch32: Aarch32Report) -> Check:
    """An arm64 kernel built without CONFIG_COMPAT runs no 32-bit program at all, whatever the CPU:
    to the aarch32 probes it looks like a CPU without AArch32 (ENOEXEC, and EINVAL for PER_LINUX32), so
    the kernel's own config says which it is; without one, a refusal on a CPU the table knows to run
    AArch32 points at the kernel."""
    if not is_arm64(root.machine):
        if root.arm:
            return Check("kernel-compat", PASS, f"a 32-bit Arm kernel ({root.machine}): armhf is its native ABI")
        return Check("kernel-compat", WARN, f"not an arm64 kernel ({root.machine}): CONFIG_COMPAT does not apply "
                     "(development mode)", "run on an aarch64 host")
    config = read_kernel_config(root)
    if config is not None:
        options, source = config
        value = options.get("CONFIG_COMPAT", "n")
        if value == "y":
            return Check("kernel-compat", PASS, f"CONFIG_COMPAT=y ({source})")
        return Check("kernel-compat", FAIL,
                     f"kernel built without CONFIG_COMPAT ({source}: {'not set' if value == 'n' else value}): "
                     "it runs no 32-bit Arm program, whatever the CPU",
                     "boot a kernel built with CONFIG_COMPAT=y (Debian's arm64 kernels are)")
    where = f"no {root.boot}/config-{kernel_release(root) or 'RELEASE'}, no {root.proc}/config.gz"
    if not aarch32.personality_refused:
        if aarch32.mode in ("native", "emulated"):
            return Check("kernel-compat", PASS, f"the kernel accepts PER_LINUX32, so it has CONFIG_COMPAT ({where})")
        return Check("kernel-compat", WARN, f"cannot tell: {where}, and the personality probe did not answer",
                     "see the aarch32-el0 check")
    cpu = cpu_aarch32(root)
    if cpu is not None and cpu[0] == "yes":
        return Check("kernel-compat", FAIL,
                     f"the kernel refuses PER_LINUX32 although this CPU ({cpu[1]}) runs AArch32 at EL0: it was "
                     f"most likely built without CONFIG_COMPAT ({where} to confirm)",
                     "boot a kernel built with CONFIG_COMPAT=y (Debian's arm64 kernels are)")
    return Check("kernel-compat", WARN, f"cannot tell: {where}, and the kernel refuses PER_LINUX32, which the CPU "
                 "explains as well (see the cpu check)", "see the cpu and aarch32-el0 checks")


# An arm64 kernel with pages other than 4 KiB has COMPAT only with CONFIG_EXPERT, and then runs only the
# 32-bit binaries "compiled with page size aligned segments" (arch/arm64/Kconfig, COMPAT). Ordinary armhf
# binaries are laid out for 4 KiB (p_align 0x1000) and die at exec: the Raspberry Pi 5's default kernel
# (bcm2712_defconfig: CONFIG_ARM64_16K_PAGES=y, with CONFIG_EXPERT and COMPAT) is the common case. The
# aarch32 probe may still pass there: its one segment sits at 64 KiB.
PAGE_OPTIONS = ("CONFIG_ARM64_4K_PAGES", "CONFIG_ARM64_16K_PAGES", "CONFIG_ARM64_64K_PAGES")


def check_page_size(root: HostRoot) -> Check:
    size = root.page_size
    if size == 4096:
        return Check("page-size", PASS, "4 KiB pages")
    if not is_arm64(root.machine):
        return Check("page-size", WARN, f"{size // 1024} KiB pages on a {root.machine} host (development mode)",
                     "run on an aarch64 host with 4 KiB pages")
    config = read_kernel_config(root)
    option = ""
    if config is not None:
        chosen = [name for name in PAGE_OPTIONS if config[0].get(name) == "y"]
        option = f" ({', '.join(chosen)}=y in {config[1]})" if chosen else ""
    return Check("page-size", FAIL,
                 f"{size // 1024} KiB pages{option}: an arm64 kernel with pages other than 4 KiB runs only 32-bit "
                 "binaries whose segments are aligned to its page size; ordinary armhf binaries (Debian's, Docker's) "
                 "are aligned to 4 KiB and fail at exec",
                 "boot a kernel built with 4 KiB pages (Raspberry Pi 5: kernel=kernel8.img in config.txt instead of "
                 "the 16 KiB kernel_2712.img)")


# Ubuntu's arm64 kernels carry a patch (kernel/sys.c, parse_compat_uts_machine; Launchpad #1520627) that
# makes `compat_uts_machine=VALUE` on the command line what uname() tells PER_LINUX32 processes, instead
# of COMPAT_UTS_MACHINE "armv8l". Debian's kernels do not (../shared/reference/runtime.md).
UTS_OPTION = re.compile(r"(?:^|\s)compat_uts_machine=(\S*)")
COMPAT_UTS_MACHINE = "armv8l"


def check_uts_machine(root: HostRoot) -> Check:
    if not is_arm64(root.machine):
        return Check("uts-machine", PASS, f"not an arm64 kernel ({root.machine}): compat_uts_machine does not apply")
    # Ubuntu's builds say so in the version string: "#12-Ubuntu SMP", "#16~22.04.1-Ubuntu SMP".
    ubuntu = re.search(r"#\d+\S*-Ubuntu\b", _read(f"{root.proc}/version")) is not None
    match = UTS_OPTION.search(_read(f"{root.proc}/cmdline"))
    # The patch copies at most 8 characters (__OLD_UTS_LEN).
    value = match.group(1)[:8] if match else None
    if ubuntu and value:
        return Check("uts-machine", PASS, f"Ubuntu kernel with compat_uts_machine={value}: containers print "
                     f"`uname -m` {value}" + (", as an ARMv7 board does" if value == "armv7l" else ""))
    if ubuntu:
        return Check("uts-machine", PASS, f"Ubuntu kernel, compat_uts_machine not set: containers print `uname -m` "
                     f"{COMPAT_UTS_MACHINE} (config.guess: armv8l-unknown-linux-gnueabihf); compat_uts_machine=armv7l "
                     "on the kernel command line makes it armv7l, as on an ARMv7 board (optional)")
    if value:
        return Check("uts-machine", WARN, f"compat_uts_machine={value} is on the kernel command line, but this is not "
                     f"an Ubuntu kernel, which alone knows it: `uname -m` stays {COMPAT_UTS_MACHINE}",
                     "remove it, or boot an Ubuntu kernel if armv7l is wanted")
    return Check("uts-machine", PASS, f"containers print `uname -m` {COMPAT_UTS_MACHINE} (compat_uts_machine is an "
                 "Ubuntu kernel option, not this kernel's)")


def find_payload_binary(payload_root: str, name: str) -> str | None:
    path = payloads.find(payload_root).get(name)
    return path if path and os.access(path, os.X_OK) else None


def _native_machines(root: HostRoot) -> set[str]:
    return {"x86_64": {"x86_64"}, "aarch64": {"aarch64"}, "arm64": {"aarch64"}}.get(root.machine, set())


def check_payload(config: AgentConfig, root: HostRoot, aarch32: Aarch32Report) -> Check:
    payload = config.docker.root
    found_paths = {name: find_payload_binary(payload, name) for name in payloads.REQUIRED}
    missing = [name for name, path in found_paths.items() if path is None]
    if missing:
        return Check("payload", FAIL, f"{payload}: missing {', '.join(missing)} (looked in "
                     f"{', '.join(os.path.join(payload, d) if d else payload for d in payloads.SEARCH_DIRS)})",
                     "install an armhf payload: armhf-agent install-docker docker-VERSION.tgz")
    unsafe = sorted({problem for problem in map(payloads.unsafe_reason, found_paths.values()) if problem})
    if unsafe:
        return Check("payload", FAIL, "; ".join(unsafe),
                     f"chown root:root and chmod go-w the payload and its folders (under {payload})")
    infos = {name: elf_info(path) for name, path in found_paths.items()}
    foreign = {name: info.describe() if info else "not ELF" for name, info in infos.items()
               if info is None or not info.is_armhf_capable}
    dockerd = infos["dockerd"]
    can_run = dockerd is not None and (dockerd.machine in _native_machines(root) or (
        dockerd.is_armhf_capable and aarch32.mode in ("native", "emulated")))
    version = _dockerd_version(root, found_paths["dockerd"]) if can_run else "version unknown (cannot run here)"
    arch = dockerd.describe() if dockerd else "dockerd not ELF"
    found = f"{payload}: {len(found_paths)} binaries, root-owned, not writable by others; dockerd {arch}; {version}"
    if foreign:
        what = ", ".join(f"{name} ({text})" for name, text in foreign.items())
        if root.arm:
            return Check("payload", FAIL, f"{found}; not 32-bit ARM: {what}",
                         "install an armhf (linux/arm/v7) static Docker payload")
        return Check("payload", WARN, f"{found}; not 32-bit ARM (development mode stand-in): {what}",
                     "use an armhf payload on the aarch64 fleet host")
    return Check("payload", PASS, found)


def _dockerd_version(root: HostRoot, dockerd: str) -> str:
    try:
        result = root.runner.run([dockerd, "--version"], timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`dockerd --version` failed: {exc}"
    if result.returncode != 0:
        return f"`dockerd --version` exited {result.returncode}: {result.stderr.strip()[:200]}"
    return result.stdout.strip()


def _same_path(a: str, b: str) -> bool:
    # /var/run is a symlink to /run on every systemd distribution.
    def norm(p: str) -> str:
        p = os.path.normpath(p)
        return "/run" + p[len("/var/run"):] if p == "/var/run" or p.startswith("/var/run/") else p
    return norm(a) == norm(b)


def check_docker_socket(config: AgentConfig, root: HostRoot, live: AgentLiveness) -> Check:
    path = config.docker.socket_path
    pid = root.sockets.unix_listener_pid(path)
    if pid is None:
        return Check("conflict-socket", PASS, f"nothing answers on {path}")
    if live.running and live.snapshot.dockerd.pid == pid:
        return Check("conflict-socket", PASS, f"the agent's dockerd (pid {pid}) answers on {path}")
    dockerd = find_payload_binary(config.docker.root, "dockerd")
    try:
        exe = os.readlink(f"{root.proc}/{pid}/exe")
    except OSError:
        exe = ""
    if dockerd and exe and os.path.realpath(dockerd) == exe:
        return Check("conflict-socket", PASS, f"the payload's dockerd (pid {pid}) answers on {path}; "
                     "the agent adopts it when it starts")
    command = " ".join(read_cmdline(root.proc, pid) or ["?"])
    return Check("conflict-socket", FAIL, f"pid {pid} ({command}) already answers on {path}",
                 "stop it (systemctl disable --now docker.service docker.socket) or set docker.host to another socket")


def _unit_active(root: HostRoot, unit: str) -> bool:
    result = root.runner.run(["systemctl", "is-active", unit], timeout=10)
    return result.stdout.strip() in ("active", "activating", "reloading")


def _unit_property(root: HostRoot, unit: str, name: str) -> str:
    return root.runner.run(["systemctl", "show", "-p", name, "--value", unit], timeout=10).stdout.strip()


def _option_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg[len(name) + 1:])
    return values


def docker_service_conflicts(config: AgentConfig, root: HostRoot) -> list[str]:
    """Where an active docker.service keeps its data and socket, compared with the agent's."""
    exec_start = _unit_property(root, "docker.service", "ExecStart")
    m = re.search(r"argv\[\]=(.*?) ;", exec_start)
    argv = shlex.split(m.group(1)) if m else []
    daemon_json = (_option_values(argv, ("--config-file",)) or [f"{root.etc}/docker/daemon.json"])[0]
    try:
        settings = json.loads(_read(daemon_json) or "{}")
    except ValueError:
        settings = {}
    data_roots = _option_values(argv, ("--data-root", "-g", "--graph")) or [settings.get("data-root", "/var/lib/docker")]
    hosts = _option_values(argv, ("-H", "--host")) or settings.get("hosts") or ["unix:///var/run/docker.sock"]
    sockets = [h[len("unix://"):] for h in hosts if h.startswith("unix://")]
    problems = []
    if any(_same_path(d, config.docker.data_root) for d in data_roots):
        problems.append(f"docker.service is active with the same data-root {config.docker.data_root}")
    if any(_same_path(s, config.docker.socket_path) for s in sockets):
        problems.append(f"docker.service is active on the same socket {config.docker.socket_path}")
    return problems


def check_services(config: AgentConfig, root: HostRoot) -> Check:
    problems, notes = [], []
    try:
        if _unit_active(root, "docker.service"):
            problems += docker_service_conflicts(config, root)
            notes.append("docker.service active")
        if _unit_active(root, "docker.socket"):
            listen = _unit_property(root, "docker.socket", "Listen").split(" ")[0]
            if _same_path(listen, config.docker.socket_path):
                problems.append(f"docker.socket is active on the same socket {listen}")
            notes.append(f"docker.socket active on {listen}")
        if _unit_active(root, "containerd.service"):
            notes.append("containerd.service active")
    except FileNotFoundError:
        notes.append("no systemctl")
    except subprocess.TimeoutExpired:
        notes.append("systemctl did not answer in time")
    explicit_containerd = _option_values(list(config.docker.args), ("--containerd",))
    if not explicit_containerd and os.path.lexists(root.containerd_socket):
        problems.append(f"a system containerd socket exists at {root.containerd_socket}: the payload's dockerd "
                        "would use that containerd instead of its own (no linux32, no armhf runc)")
    found = "; ".join(problems or notes or ["no docker.service, docker.socket or containerd.service active"])
    if problems:
        return Check("conflict-services", FAIL, found,
                     "systemctl disable --now docker.service docker.socket containerd.service, "
                     "or give the agent its own docker.host and docker.data_root")
    return Check("conflict-services", PASS, found)


def check_metrics_port(config: AgentConfig, root: HostRoot, live: AgentLiveness) -> Check:
    listen = config.metrics.listen
    error = root.sockets.bind_error(config.metrics.host, config.metrics.port)
    if error is None:
        return Check("metrics-port", PASS, f"{listen} is free")
    if error.errno == errno.EADDRINUSE and live.running and live.snapshot.metrics_url and \
            f":{config.metrics.port}/" in live.snapshot.metrics_url:
        return Check("metrics-port", PASS, f"{listen} is held by the running agent (pid {live.snapshot.pid})")
    return Check("metrics-port", FAIL, f"cannot bind {listen}: {error.strerror}",
                 "stop whatever holds the port (ss -ltnp) or set metrics.listen")


def _root_paths(root: HostRoot) -> list[tuple[str, str]]:
    """The PATHs a root operator's `docker` is looked up in."""
    paths = [("this shell's PATH", root.shell_path), ("default PATH", DEFAULT_PATH)]
    m = re.search(r"^\s*ENV_SUPATH\s+PATH=(\S+)", _read(f"{root.etc}/login.defs"), re.M)
    if m:
        paths.append((f"su's ENV_SUPATH ({root.etc}/login.defs)", m.group(1)))
    m = re.search(r"^\s*Defaults\s+secure_path\s*=\s*\"?([^\"\s]+)\"?", _read(f"{root.etc}/sudoers"), re.M)
    if m:
        paths.append((f"sudo's secure_path ({root.etc}/sudoers)", m.group(1)))
    return paths


def check_shim_precedence(config: AgentConfig, root: HostRoot) -> Check:
    shim_dir, command = os.path.split(config.shim.path)
    client = config.shim.client or find_payload_binary(config.docker.root, "docker") or ""
    problems = []
    for label, value in _root_paths(root):
        folders = [f for f in value.split(":") if f]
        if not any(os.path.realpath(f) == os.path.realpath(shim_dir) for f in folders):
            problems.append(f"{shim_dir} is not in {label}")
            continue
        for folder in folders:
            if os.path.realpath(folder) == os.path.realpath(shim_dir):
                break
            shadow = os.path.join(folder, command)
            if os.path.lexists(shadow):
                which = "the real client" if client and os.path.realpath(shadow) == os.path.realpath(client) else "another"
                problems.append(f"{label}: {shadow} ({which} {command}) comes before the shim in {shim_dir}")
                break
    if problems:
        return Check("shim-precedence", FAIL, "; ".join(problems),
                     f"put {shim_dir} before every other folder with a `{command}` in PATH, or set shim.path")
    return Check("shim-precedence", PASS, f"{config.shim.path} is the first `{command}` in "
                 + ", ".join(label for label, _ in _root_paths(root)))


def check_config(config_error: str | None) -> Check:
    if config_error is None:
        return Check("config", PASS, "valid")
    return Check("config", FAIL, config_error.replace("\n", "; "), "armhf-agent check-config lists every problem")


def check_managed_files(config: AgentConfig, live: AgentLiveness) -> Check:
    if live.running:
        bad = [f"{f.name} {f.path}: {f.problem or 'not ok'}" for f in live.snapshot.files if not f.ok]
        if bad:
            return Check("managed-files", FAIL, "; ".join(bad), "see `armhf-agent status` and the agent's log")
        names = ", ".join(f"{f.name} ok" for f in live.snapshot.files) or "none reported"
        return Check("managed-files", PASS, f"{names} (per the running agent)")
    paths = [spec.path_of(config) for spec in in_force(config)]
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        return Check("managed-files", WARN, f"agent not running; missing {', '.join(missing)}",
                     "start the agent: it installs them")
    return Check("managed-files", PASS, f"agent not running; {', '.join(paths)} present")


def check_runtime_wrapper(config: AgentConfig, root: HostRoot, live: AgentLiveness) -> Check:
    """Whether every container and build step gets the hijacked cpuinfo: the wrapper is on, in place,
    in a folder nobody else can write, and first in the PATH of the dockerd that runs (its environment
    in /proc), where containerd's shim and BuildKit look runc up."""
    if not config.runtime.wrapper:
        return Check("runtime-wrapper", WARN, "off ([runtime] wrapper = false): only `docker run` through the shim "
                     "gets the hijacked cpuinfo; Engine-API clients, compose and build steps see the host's",
                     "set [runtime] wrapper = true unless a tool of yours mounts its own /proc/cpuinfo")
    path = runtime.wrapper_path(config)
    unsafe = payloads.unsafe_reason(config.runtime.dir) if os.path.isdir(config.runtime.dir) else None
    if unsafe:
        return Check("runtime-wrapper", FAIL, f"{config.runtime.dir} is first in dockerd's PATH but {unsafe}",
                     f"chown root:root and chmod 0755 {config.runtime.dir} (and its parents)")
    pid = live.snapshot.dockerd.pid if live.running and live.snapshot.dockerd.state == "running" else None
    if pid is None:
        there = "in place" if os.path.isfile(path) else "not installed yet (the agent writes it)"
        return Check("runtime-wrapper", PASS, f"on; {path} {there}; no running dockerd to look at")
    env = read_environ(root.proc, pid)
    if env is None:
        return Check("runtime-wrapper", WARN, f"cannot read dockerd (pid {pid})'s environment", "run doctor as root")
    first = env.get("PATH", "").split(":")[0]
    if first != config.runtime.dir or env.get(runtime.BUILDKIT_RUNC_ENV) != path:
        return Check("runtime-wrapper", FAIL, f"dockerd (pid {pid}) runs with PATH starting {first!r} and "
                     f"{runtime.BUILDKIT_RUNC_ENV}={env.get(runtime.BUILDKIT_RUNC_ENV, '')!r}: containers it starts "
                     "and build steps miss the hijacked cpuinfo",
                     "systemctl reload armhf-agent (the agent restarts dockerd gracefully onto the wrapper)")
    return Check("runtime-wrapper", PASS, f"on; dockerd (pid {pid}) finds {path} first in its PATH")


def check_host_docker(config: AgentConfig, root: HostRoot, live: AgentLiveness) -> Check:
    """host_docker mode: off (the agent's own armhf dockerd only), or the host's docker.service running
    with the wrapper, apart from the agent's own dockerd."""
    h = config.host_docker
    if not h.enabled:
        return Check("host-docker", PASS, f"off: {h.unit} is left as it is (armhf-agent host-docker on wires it; "
                     "docs/MULTIPLATFORM.md)")
    shared = host_docker.conflicts(config)
    if shared:
        return Check("host-docker", FAIL, "; ".join(shared), "give the agent's own dockerd a socket, data-root, "
                     "exec-root and pidfile of its own ([docker] host, data_root, exec_root, pidfile)")
    if live.running:
        s = live.snapshot.host_docker
        if s.wired:
            return Check("host-docker", PASS, f"on: {s.unit} (dockerd pid {s.pid}) runs with the wrapper")
        return Check("host-docker", FAIL, f"on, but {s.problem or s.unit + ' runs without the wrapper'}",
                     "armhf-agent host-docker on (restarts it onto the wrapper)")
    return Check("host-docker", WARN, f"on in the config; the agent is not running to wire {h.unit}",
                 "systemctl start armhf-agent")


def check_cpuinfo_profile(config: AgentConfig, root: HostRoot, live: AgentLiveness) -> Check:
    """The profile in force, and which of this host's features it hides (or claims without the host
    having them). The host's features: its own cpuinfo in the 32-bit view; the template on a non-Arm
    development host (what the agent renders there)."""
    name = config.cpuinfo.profile
    try:
        profile = cpuinfo.get_profile(name)
        text = (cpuinfo.host_view(root.machine, lambda: cpuinfo.read_text_file(f"{root.proc}/cpuinfo"),
                                  lambda: None) if root.arm else cpuinfo.template_compat())
        host = cpuinfo.host_features(text)
    except cpuinfo.CpuinfoError as exc:
        return Check("cpuinfo-profile", WARN, f"profile {name}: cannot compare with this host: {exc}",
                     "armhf-agent render-cpuinfo shows what the agent would write")
    running = ""
    if live.running and live.snapshot.cpuinfo.profile and live.snapshot.cpuinfo.profile != name:
        running = f"; the running agent still shows {live.snapshot.cpuinfo.profile} (systemctl reload armhf-agent)"
    if profile is None:
        return Check("cpuinfo-profile", PASS, f"profile host: this host's own features ({' '.join(host)}){running}")
    beyond = cpuinfo.exceeding(profile.features, host)
    if beyond:
        return Check("cpuinfo-profile", FAIL,
                     f"profile {name} claims {' '.join(beyond)}, which this host cannot run "
                     f"(its 32-bit Features: {' '.join(host)}){running}",
                     "choose a profile this host can show (a profile may only hide features), or profile = \"host\"")
    hides = cpuinfo.hidden(profile.features, host)
    return Check("cpuinfo-profile", PASS,
                 f"profile {name} ({profile.description}, linux/arm/{profile.variant}): "
                 + (f"hides {' '.join(hides)} of this host's features" if hides else "hides none of this host's features")
                 + running)


def check_cgroups(root: HostRoot) -> Check:
    v1, v2 = [], []
    for line in _read(f"{root.proc}/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            v2.append(fields[1])
        elif len(fields) >= 3 and fields[2] == "cgroup":
            v1.append(fields[1])
    parts = []
    if v1:
        parts.append(f"cgroup v1 ({len(v1)} hierarchies)")
    if v2:
        parts.append(f"cgroup2 at {', '.join(v2)}")
    if parts:
        return Check("cgroups", PASS, " + ".join(parts))
    known = re.findall(r"\bcgroup2?\b", _read(f"{root.proc}/filesystems"))
    if known:
        return Check("cgroups", FAIL, f"kernel knows {', '.join(sorted(set(known)))} but none is mounted",
                     "mount -t cgroup2 none /sys/fs/cgroup (systemd does this at boot)")
    return Check("cgroups", FAIL, "kernel without cgroup support", "use a kernel with CONFIG_CGROUPS")


def check_overlay(root: HostRoot) -> Check:
    if re.search(r"^nodev\s+overlay$", _read(f"{root.proc}/filesystems"), re.M):
        return Check("overlayfs", PASS, f"overlay in {root.proc}/filesystems")
    return Check("overlayfs", WARN, f"overlay not in {root.proc}/filesystems (the module may still autoload on first mount)",
                 "modprobe overlay; without it dockerd falls back to the slow vfs driver")


def run_checks(config: AgentConfig, root: HostRoot, config_error: str | None = None) -> list[Check]:
    live = read_agent(config, root.proc)
    aarch32 = detect(root.runner, root.binfmt, root.machine)
    return [
        check_architecture(root),
        check_aarch32(aarch32, root),
        check_cpu(root),
        check_kernel_compat(root, aarch32),
        check_page_size(root),
        check_uts_machine(root),
        check_payload(config, root, aarch32),
        check_docker_socket(config, root, live),
        check_services(config, root),
        check_metrics_port(config, root, live),
        check_shim_precedence(config, root),
        check_config(config_error),
        check_managed_files(config, live),
        check_runtime_wrapper(config, root, live),
        check_host_docker(config, root, live),
        check_cpuinfo_profile(config, root, live),
        check_cgroups(root),
        check_overlay(root),
    ]


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "".join(f"{c.verdict:<4}  {c.name:<{width}}  {c.found}" + (f"  (fix: {c.fix})" if c.fix else "") + "\n"
                   for c in checks)


def doctor_command(config: AgentConfig, config_error: str | None, as_json: bool, out: TextIO,
                   root: HostRoot | None = None) -> int:
    checks = run_checks(config, root or HostRoot(), config_error)
    if as_json:
        out.write(json.dumps([asdict(c) for c in checks], indent=1) + "\n")
    else:
        out.write(format_checks(checks))
    return 1 if any(c.verdict == FAIL for c in checks) else 0
