"""How this host executes 32-bit Arm (armhf) user space: natively, under emulation, or not at all.

Three probes, most reliable first (../shared/reference/platform.md, "Which hosts can run armhf
natively"): exec a tiny 32-bit ARM program (ENOEXEC: the kernel cannot run it); look for a
binfmt_misc handler that claims 32-bit ARM ELF (a registered qemu-arm makes the exec "work" under
emulation); set personality(PER_LINUX32) in a child process (EINVAL: no AArch32 at EL0).
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from .launch import EXIT_PERSONALITY_REFUSED
from .processes import launcher_command

DEFAULT_BINFMT_ROOT = "/proc/sys/fs/binfmt_misc"
PROBE_NAME = "armhf-agent-aarch32-probe"
PROBE_EXIT_CODE = 42
# `uname -m` of a 64-bit Arm kernel (Linux says aarch64; arm64 is what other tools call it), and of
# every Arm machine (a 32-bit kernel, or a reader already under PER_LINUX32 on arm64: armv8l).
ARM64_MACHINES = ("aarch64", "arm64")
ARM_HOST_MACHINES = ARM64_MACHINES + ("armv8l", "armv7l", "armv6l")


def is_arm64(machine: str | None = None) -> bool:
    """A 64-bit Arm host: where the payload must be 32-bit ARM and the cpuinfo comes from the kernel."""
    return (machine or os.uname().machine) in ARM64_MACHINES

# The probe program, ARM (A32) encoding, little-endian: exit(42) through the EABI syscall convention
# (number in r7, `svc #0`). Only a real run can produce 42.
_PROBE_INSTRUCTIONS = (
    0xE3A0002A,  # mov r0, #42
    0xE3A07001,  # mov r7, #1     (__NR_exit)
    0xEF000000,  # svc #0
)
_LOAD_ADDRESS = 0x10000
_ELF_HEADER_SIZE = 52
_PROGRAM_HEADER_SIZE = 32
_EM_ARM = 40
_EF_ARM_EABI_VER5 = 0x05000000

# The exec helper's own probe, in a child: the personality is per process and inherited by children,
# so the agent never sets it on itself (resetting it afterwards would race with its other threads'
# forks). The same call that starts dockerd, so the probe and the start cannot disagree.
PERSONALITY_PROBE_ARGV = tuple(launcher_command("--personality", "linux32", "--probe"))


def probe_elf() -> bytes:
    """A complete ELF32 ARM executable: header, one PT_LOAD segment mapping the whole file, code."""
    code = struct.pack(f"<{len(_PROBE_INSTRUCTIONS)}I", *_PROBE_INSTRUCTIONS)
    size = _ELF_HEADER_SIZE + _PROGRAM_HEADER_SIZE + len(code)
    entry = _LOAD_ADDRESS + _ELF_HEADER_SIZE + _PROGRAM_HEADER_SIZE
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)  # ELFCLASS32, ELFDATA2LSB, EV_CURRENT, SYSV
    header = ident + struct.pack(
        "<HHIIIIIHHHHHH",
        2, _EM_ARM, 1,                       # ET_EXEC, EM_ARM, EV_CURRENT
        entry, _ELF_HEADER_SIZE, 0,          # e_entry, e_phoff, e_shoff
        _EF_ARM_EABI_VER5,
        _ELF_HEADER_SIZE, _PROGRAM_HEADER_SIZE, 1,   # e_ehsize, e_phentsize, e_phnum
        0, 0, 0,                             # no section headers
    )
    program_header = struct.pack(
        "<IIIIIIII",
        1, 0, _LOAD_ADDRESS, _LOAD_ADDRESS,  # PT_LOAD from file offset 0
        size, size, 0x5, 0x1000,             # filesz, memsz, PF_R|PF_X, align
    )
    return header + program_header + code


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def run(self, argv: Sequence[str], timeout: float) -> RunResult:
        """Runs argv to completion. Raises OSError when the exec itself fails (ENOEXEC, ENOENT, ...)
        and subprocess.TimeoutExpired when it outlives `timeout`."""


class SubprocessRunner:
    def run(self, argv: Sequence[str], timeout: float) -> RunResult:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, errors="replace")
        return RunResult(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class BinfmtHandler:
    name: str
    enabled: bool
    interpreter: str
    offset: int
    magic: bytes
    mask: bytes

    def matches(self, head: bytes) -> bool:
        # binfmt_misc compares (byte XOR magic) AND mask at `offset` (fs/binfmt_misc.c check_file).
        window = head[self.offset:self.offset + len(self.magic)]
        if len(window) < len(self.magic):
            return False
        mask = self.mask or b"\xff" * len(self.magic)
        return all((b ^ m) & k == 0 for b, m, k in zip(window, self.magic, mask))


def parse_binfmt_entry(name: str, text: str) -> BinfmtHandler | None:
    """One file of binfmt_misc as the kernel prints it; None for extension-matched entries."""
    fields: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    if "magic" not in fields:
        return None
    return BinfmtHandler(
        name=name,
        enabled=bool(lines) and lines[0].strip() == "enabled",
        interpreter=fields.get("interpreter", ""),
        offset=int(fields.get("offset", "0")),
        magic=bytes.fromhex(fields["magic"]),
        mask=bytes.fromhex(fields.get("mask", "")),
    )


def arm_handlers(binfmt_root: str, head: bytes) -> list[BinfmtHandler]:
    """Enabled binfmt_misc handlers that would claim `head`. Empty when binfmt_misc is not mounted
    or is switched off as a whole (its `status` file says `disabled`)."""
    root = Path(binfmt_root)
    try:
        if (root / "status").read_text().strip() != "enabled":
            return []
        names = sorted(p.name for p in root.iterdir() if p.name not in ("status", "register"))
    except OSError:
        return []
    found = []
    for name in names:
        try:
            handler = parse_binfmt_entry(name, (root / name).read_text())
        except (OSError, ValueError):
            continue
        if handler and handler.enabled and handler.matches(head):
            found.append(handler)
    return found


@dataclass(frozen=True)
class ExecOutcome:
    ran: bool              # the probe exited with PROBE_EXIT_CODE
    errno: int | None      # set when the exec itself failed
    text: str


def run_exec_probe(runner: Runner) -> ExecOutcome:
    with tempfile.TemporaryDirectory(prefix="armhf-agent-") as folder:
        path = os.path.join(folder, PROBE_NAME)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(probe_elf())
        try:
            result = runner.run([path], timeout=10)
        except OSError as exc:
            return ExecOutcome(False, exc.errno, f"exec failed: {os.strerror(exc.errno or 0)}")
        except subprocess.TimeoutExpired:
            return ExecOutcome(False, None, "exec timed out")
    if result.returncode == PROBE_EXIT_CODE:
        return ExecOutcome(True, None, f"exec ran (exit {PROBE_EXIT_CODE})")
    return ExecOutcome(False, None, f"exec gave exit status {result.returncode}, expected {PROBE_EXIT_CODE}")


@dataclass(frozen=True)
class PersonalityOutcome:
    ok: bool
    errno: int | None
    text: str


def run_personality_probe(runner: Runner) -> PersonalityOutcome:
    try:
        result = runner.run(PERSONALITY_PROBE_ARGV, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PersonalityOutcome(False, None, f"personality probe did not run: {exc}")
    if result.returncode == 0:
        return PersonalityOutcome(True, None, "personality(PER_LINUX32) ok")
    if result.returncode == EXIT_PERSONALITY_REFUSED:
        # The kernel's only reason to refuse it (launch.py set_linux32): it cannot run AArch32 at EL0,
        # because the CPU has none or because the kernel was built without CONFIG_COMPAT (arm64_personality
        # in arch/arm64/kernel/sys.c: EINVAL unless system_supports_32bit_el0()).
        return PersonalityOutcome(False, errno.EINVAL, "personality(PER_LINUX32) refused: EINVAL")
    return PersonalityOutcome(False, None, f"personality probe failed (exit {result.returncode}): "
                                           f"{result.stderr.strip() or result.stdout.strip()}")


@dataclass(frozen=True)
class Aarch32Report:
    mode: str              # "native" | "emulated" | "unsupported" | "unknown"
    detail: str
    handlers: tuple[str, ...] = ()   # names of the binfmt_misc entries claiming 32-bit ARM ELF
    # The kernel refused PER_LINUX32 (EINVAL): no AArch32 at EL0, or a kernel without CONFIG_COMPAT
    # (doctor's kernel-compat check tells them apart when it can).
    personality_refused: bool = False


def decide(machine: str, exec_outcome: ExecOutcome, personality: PersonalityOutcome,
           handlers: list[BinfmtHandler]) -> Aarch32Report:
    facts = [exec_outcome.text, personality.text]
    if handlers:
        facts.append("binfmt handler " + ", ".join(f"{h.name} ({h.interpreter})" for h in handlers)
                     + " claims 32-bit ARM ELF")
    detail = "; ".join(facts)
    names = tuple(h.name for h in handlers)
    refused = personality.errno == errno.EINVAL
    if not exec_outcome.ran:
        if exec_outcome.errno == errno.ENOEXEC or refused:
            return Aarch32Report("unsupported", detail, names, refused)
        return Aarch32Report("unknown", detail, names, refused)
    # binfmt_misc is consulted before the ELF loader, so with a handler registered even an
    # AArch32-capable CPU runs the payload under the emulator.
    if handlers or machine not in ARM_HOST_MACHINES:
        return Aarch32Report("emulated", detail, names, refused)
    if not personality.ok:
        return Aarch32Report("unsupported", detail, names, refused)
    return Aarch32Report("native", detail, names, refused)


def detect(runner: Runner, binfmt_root: str = DEFAULT_BINFMT_ROOT, machine: str | None = None) -> Aarch32Report:
    return decide(machine or os.uname().machine, run_exec_probe(runner), run_personality_probe(runner),
                  arm_handlers(binfmt_root, probe_elf()))


class Linux32Gate:
    """Whether dockerd may be started with its personality: the kernel is asked once (through the
    process facade's probe) and asked again at most every RETRY_SECONDS while it refuses, so a host
    that gains AArch32 (a hot-plugged CPU, a fixed binfmt mix-up) is noticed without a probe per step."""

    RETRY_SECONDS = 60.0

    def __init__(self, processes, clock, log):
        self.processes = processes
        self.clock = clock
        self.log = log
        self._cached: tuple[str, str | None, float] | None = None

    def refused(self, personality: str) -> str | None:
        """None when dockerd may start with `personality`, else why not (operator-facing)."""
        now = self.clock.monotonic()
        cached = self._cached
        if cached and cached[0] == personality and (cached[1] is None or now - cached[2] < self.RETRY_SECONDS):
            return cached[1]
        refused = self.processes.probe_personality(personality)
        if refused:
            refused = (f"{refused}. This host cannot run armhf natively (see `armhf-agent doctor`); "
                       "set docker.personality = \"none\" only for testing")
            if not cached or cached[1] != refused:
                self.log.error("dockerd not started: %s", refused)
        self._cached = (personality, refused, now)
        return refused
