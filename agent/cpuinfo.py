"""The hijacked /proc/cpuinfo: the file armhf containers and the armhf dockerd read instead of the kernel's.

An arm64 kernel prints `CPU architecture: 8` even to 32-bit readers, so a 32-bit containerd decides
linux/arm/v8 (reference/platform.md, "How Docker decides"). This module turns what the kernel prints
into what an ARMv7 board prints, keeping every real detail (processors, Features, MIDR fields) and
changing only the model name and that one line. Everything here is pure text logic except
`online_cpu_count`; reading /proc/cpuinfo under PER_LINUX32 is the caller's job (`render_for_host`
takes it as `read_compat`).

Three layouts come in:
- native AArch64 view (an arm64 kernel, 64-bit reader): AArch64 hwcap names (`fp asimd ...`),
  no model name;
- compat view (same kernel, PER_LINUX32 reader): `model name : ARMv8 Processor rev N (v8l)`,
  AArch32 hwcap names (`half thumb ... neon vfpv4 ...`), still `CPU architecture: 8`;
- a 32-bit kernel's view: like the compat view with `CPU architecture: 7`, plus a trailing
  `Hardware`/`Revision`/`Serial` block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .aarch32 import is_arm64

VARIANTS = ("v7", "v6")

# The arm and arm64 kernels align every colon at column 16 (tab stops of 8): "Serial\t\t: ",
# "CPU implementer\t: ", "CPU architecture: " (arch/arm/kernel/setup.c, arch/arm64/kernel/cpuinfo.c).
_COLON_COLUMN = 16

# Kernel order of the per-processor lines of the compat view (arch/arm64/kernel/cpuinfo.c c_show).
_MIDR_KEYS = ("CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision")

# Every AArch32 Features line the arm and arm64 kernels print has `thumb` (COMPAT_ELF_HWCAP_DEFAULT
# on arm64; every core an armhf userland runs on sets HWCAP_THUMB on arm); no AArch64 name is `thumb`.
_AARCH32_MARKER = "thumb"

# compat_elf_hwcap starts as COMPAT_ELF_HWCAP_DEFAULT (arch/arm64/kernel/cpufeature.c): these bits
# are set for every 32-bit task whatever the CPU.
_COMPAT_DEFAULT = ("half", "thumb", "fastmult", "edsp", "tls", "idiva", "idivt", "lpae")

# AArch64 hwcap name -> the compat hwcap names the same CPU gets. The kernel sets each compat bit
# from an AArch32 ID register field (compat_elf_hwcaps[] in cpufeature.c) that describes the same
# hardware as the AArch64 field behind the native name:
#   fp      -> vfp, vfpv3 (MVFR0.FPDP == 2) and vfpv4 (MVFR1.SIMDFMAC): ARMv8 FP implies both
#   asimd   -> neon (compat_has_neon: MVFR1.SIMDSP/SIMDInt/SIMDLS)
#   evtstrm -> evtstrm (the arch timer sets elf_hwcap and compat_elf_hwcap together)
#   aes pmull sha1 sha2 crc32 -> same names in compat_hwcap2 (ID_ISAR5 fields)
#   fphp asimdhp (MVFR1), asimddp asimdfhm bf16->asimdbf16 i8mm sb (ID_ISAR6), ssbs (ID_PFR2):
#     the newest compat hwcaps; kernels older than them (the Mate 20's) print none of these.
# AArch64-only features (atomics, cpuid, asimdrdm, jscvt, lrcpc, sve, ...) have no compat bit.
_COMPAT_FROM_NATIVE = {
    "fp": ("vfp", "vfpv3", "vfpv4"),
    "asimd": ("neon",),
    "evtstrm": ("evtstrm",),
    "fphp": ("fphp",),
    "asimdhp": ("asimdhp",),
    "asimddp": ("asimddp",),
    "asimdfhm": ("asimdfhm",),
    "bf16": ("asimdbf16",),
    "i8mm": ("i8mm",),
    "aes": ("aes",),
    "pmull": ("pmull",),
    "sha1": ("sha1",),
    "sha2": ("sha2",),
    "crc32": ("crc32",),
    "sb": ("sb",),
    "ssbs": ("ssbs",),
}

# Print order: compat_hwcap_str bit order, then compat_hwcap2_str (arch/arm64/kernel/cpuinfo.c).
_COMPAT_ORDER = ("half", "thumb", "fastmult", "vfp", "edsp", "neon", "vfpv3", "tls", "vfpv4", "idiva",
                 "idivt", "lpae", "evtstrm", "fphp", "asimdhp", "asimddp", "asimdfhm", "asimdbf16", "i8mm",
                 "aes", "pmull", "sha1", "sha2", "crc32", "sb", "ssbs")

# The ARMv6 model name of a Raspberry Pi 1/Zero (BCM2835, ARM1176 r0p7), whose kernel reports
# `CPU architecture: 7`; containerd maps exactly this combination to v6 (reference/platform.md).
# Its lowercase "processor" makes `grep -c processor` count each CPU twice, as on a real Pi 1.
_V6_MODEL = "ARMv6-compatible processor rev 7 (v6l)"


class CpuinfoError(ValueError):
    """Input that is not a /proc/cpuinfo this module can work from; the message names the culprit."""


@dataclass(frozen=True)
class Block:
    """One blank-line separated block, its `key: value` lines in order (key and value stripped)."""

    fields: tuple[tuple[str, str], ...]

    @property
    def is_processor(self) -> bool:
        return any(key == "processor" for key, _ in self.fields)

    def get(self, key: str) -> str | None:
        return next((value for k, value in self.fields if k == key), None)

    def number(self) -> str:
        return self.get("processor") or "?"


def parse(text: str) -> list[Block]:
    """Blocks in file order: processor blocks, then any global block (Hardware/Revision/Serial)."""
    blocks: list[Block] = []
    current: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            if current:
                blocks.append(Block(tuple(current)))
                current = []
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise CpuinfoError(f"line {lineno}: {line!r} is not a 'key: value' line")
        current.append((key.strip(), value.strip()))
    if current:
        blocks.append(Block(tuple(current)))
    return blocks


def render(blocks: list[Block]) -> str:
    """The kernel's layout: colons at column 16, a blank line after each processor block."""
    out = []
    for index, block in enumerate(blocks):
        out.extend(_line(key, value) for key, value in block.fields)
        if block.is_processor or index + 1 < len(blocks):
            out.append("")
    return "".join(line + "\n" for line in out)


def _line(key: str, value: str) -> str:
    gap = _COLON_COLUMN - len(key)
    pad = "\t" * ((gap + 7) // 8) if gap > 0 else ""
    return f"{key}{pad}: {value}".rstrip()


def is_native_aarch64(blocks: list[Block]) -> bool:
    """True for an arm64 kernel's 64-bit view (AArch64 Features names), False for a 32-bit view."""
    first = _processors(blocks)[0]
    return _AARCH32_MARKER not in (first.get("Features") or "").split()


def _processors(blocks: list[Block]) -> list[Block]:
    processors = [block for block in blocks if block.is_processor]
    if not processors:
        raise CpuinfoError("no 'processor' block")
    return processors


def _required(block: Block, key: str) -> str:
    value = block.get(key)
    if value is None:
        raise CpuinfoError(f"processor {block.number()}: no {key!r} line")
    return value


def _revision(block: Block) -> int:
    value = _required(block, "CPU revision")
    try:
        return int(value)
    except ValueError:
        raise CpuinfoError(f"processor {block.number()}: 'CPU revision' {value!r} is not a number") from None


def compat_features(native_features: str) -> str:
    """The compat Features line an arm64 kernel prints for a CPU with these AArch64 Features."""
    names = set(_COMPAT_DEFAULT)
    for name in native_features.split():
        names.update(_COMPAT_FROM_NATIVE.get(name, ()))
    return " ".join(name for name in _COMPAT_ORDER if name in names)


def to_compat(native_text: str) -> str:
    """What the same arm64 kernel shows a PER_LINUX32 reader, built from its native AArch64 view."""
    blocks = parse(native_text)
    if not is_native_aarch64(blocks):
        raise CpuinfoError("already a 32-bit view (its Features have AArch32 names such as 'thumb')")
    return render([_compat_block(b) if b.is_processor else b for b in blocks])


def _compat_block(native: Block) -> Block:
    fields = [("processor", native.number()),
              ("model name", f"ARMv8 Processor rev {_revision(native)} (v8l)")]
    # Vendor kernels may omit BogoMIPS (galaxy-s7-us); the compat view then lacks it too.
    bogomips = native.get("BogoMIPS")
    if bogomips is not None:
        fields.append(("BogoMIPS", bogomips))
    fields.append(("Features", compat_features(native.get("Features") or "")))
    fields.extend((key, _required(native, key)) for key in _MIDR_KEYS)
    return Block(tuple(fields))


def hijack(text: str, variant: str = "v7", online_cpus: int | None = None) -> str:
    """The ARMv7 (or, with variant "v6", Raspberry Pi 1) view of a compat, 32-bit or native cpuinfo.

    Rewrites model name and every `CPU architecture` line (containerd reads the first one, wherever
    it is) and keeps everything else. With `online_cpus`, the processor count is made to match
    (`grep -c processor` drives `make -j`): when it differs, the last block is repeated or blocks
    are dropped and processors are renumbered from 0; when it matches, the kernel's numbering (which
    skips offline CPUs) is kept.
    """
    if variant not in VARIANTS:
        raise CpuinfoError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    if online_cpus is not None and online_cpus < 1:
        raise CpuinfoError(f"online CPU count {online_cpus} is not positive")
    blocks = parse(text)
    if is_native_aarch64(blocks):
        blocks = parse(to_compat(text))
    processors = [_armv7_block(b, variant) for b in _processors(blocks)]
    others = [_set(b, "CPU architecture", "7") for b in blocks if not b.is_processor]
    if online_cpus is not None and online_cpus != len(processors):
        processors = (processors + [processors[-1]] * online_cpus)[:online_cpus]
        processors = [_renumbered(b, n) for n, b in enumerate(processors)]
    return render(processors + others)


def _armv7_block(block: Block, variant: str) -> Block:
    model = _V6_MODEL if variant == "v6" else f"ARMv7 Processor rev {_revision(block)} (v7l)"
    block = _set(block, "model name", model, insert_after="processor")
    return _set(block, "CPU architecture", "7", insert_after="CPU implementer")


def _set(block: Block, key: str, value: str, insert_after: str | None = None) -> Block:
    """Every line whose key is `key` (in any case: containerd ignores it) set to `value`; when there
    is none and `insert_after` is given, a line inserted after that key (or at the end)."""
    lowered = key.lower()
    if any(k.lower() == lowered for k, _ in block.fields):
        return Block(tuple((key, value) if k.lower() == lowered else (k, v) for k, v in block.fields))
    if insert_after is None:
        return block
    fields = list(block.fields)
    keys = [k for k, _ in fields]
    at = keys.index(insert_after) + 1 if insert_after in keys else len(fields)
    fields.insert(at, (key, value))
    return Block(tuple(fields))


def _renumbered(block: Block, number: int) -> Block:
    return Block(tuple(("processor", str(number)) if k == "processor" else (k, v) for k, v in block.fields))


def template(online_cpus: int, variant: str = "v7") -> str:
    """A Cortex-A72 in AArch32 state, for hosts with no Arm kernel to ask (x86 development machines).

    Built as the compat view an arm64 kernel prints for that core, then hijacked like a real one:
    - CPU implementer 0x41 / part 0xd08: Cortex-A72, the Graviton1 core (reference/platform.md table);
    - variant 0x0 / revision 3: r0p3, MIDR 0x410fd083 of QEMU's cortex-a72, the emulated arm64 host
      the platform facts were measured on;
    - Features: the ARMv8.0-with-crypto compat list, identical in all three `*.armeabi.txt` fixtures
      (huawei-mate-20, galaxy-s7-us, oneplus-3t); the A72 has no later extension that would add more;
    - BogoMIPS 38.40: the 19.2 MHz arch timer value of raspberrypi2/3, oneplus-3t and jetson-tx1.
    """
    if online_cpus < 1:
        raise CpuinfoError(f"online CPU count {online_cpus} is not positive")
    core = Block((
        ("processor", "0"),
        ("model name", "ARMv8 Processor rev 3 (v8l)"),
        ("BogoMIPS", "38.40"),
        ("Features", "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm "
                     "aes pmull sha1 sha2 crc32"),
        ("CPU implementer", "0x41"),
        ("CPU architecture", "8"),
        ("CPU variant", "0x0"),
        ("CPU part", "0xd08"),
        ("CPU revision", "3"),
    ))
    return hijack(render([core]), variant, online_cpus)


def _containerd_field(text: str, pattern: str) -> tuple[int, str] | None:
    """containerd's getCPUInfo: the first line whose part before the first ':' equals `pattern`
    ignoring case and surrounding space; its value is the part between the first and second ':'.
    Returns (line number, value)."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        parts = line.rstrip("\r").split(":")
        if len(parts) > 1 and parts[0].strip().lower() == pattern.lower():
            return lineno, parts[1].strip()
    return None


# containerd's getArmCPUVariant mapping from the `CPU architecture` value (platforms/cpuinfo_linux.go).
_CONTAINERD_VARIANTS = {
    "8": "v8", "aarch64": "v8",
    "7": "v7", "7m": "v7", "?(12)": "v7", "?(13)": "v7", "?(14)": "v7", "?(15)": "v7", "?(16)": "v7",
    "?(17)": "v7",
    "6": "v6", "6tej": "v6",
    "5": "v5", "5t": "v5", "5te": "v5", "5tej": "v5",
    "4": "v4", "4t": "v4",
    "3": "v3",
}

# Its uname -m fallback, used only when no `CPU architecture` line exists: armvX... -> X.
_UNAME_VARIANTS = {"v8": "8", "v7": "7", "v6": "6", "v5": "5", "v4": "4", "v3": "3"}


def containerd_variant(text: str, machine: str | None = None) -> str:
    """The variant a 32-bit (GOARCH=arm) containerd/dockerd derives from this cpuinfo: "v8", "v7",
    "v6", ... or "unknown". `machine` (uname -m) is what containerd falls back to when no
    `CPU architecture` line exists; without it that case is an error."""
    found = _containerd_field(text, "CPU architecture")
    if found is not None:
        architecture = found[1]
    elif machine is None:
        raise CpuinfoError("no 'CPU architecture' line and no uname -m to fall back to")
    elif machine.lower() == "aarch64":
        architecture = "8"
    elif machine.lower().startswith("armv") and len(machine) >= 5:
        architecture = _UNAME_VARIANTS.get(machine.lower()[3:5], "unknown")
    else:
        raise CpuinfoError(f"no 'CPU architecture' line and uname -m {machine!r} is not an Arm machine")
    if architecture == "7":
        model = _containerd_field(text, "model name")
        if model is not None and model[1].lower().startswith("armv6-compatible"):
            architecture = "6"
    return _CONTAINERD_VARIANTS.get(architecture.lower(), "unknown")


def check(text: str, variant: str) -> list[str]:
    """Why containerd would not derive linux/arm/`variant` from this file (empty list: it would)."""
    if variant not in VARIANTS:
        raise CpuinfoError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    problems = []
    architecture = _containerd_field(text, "CPU architecture")
    if architecture is None:
        problems.append("no 'CPU architecture' line: containerd would fall back to uname -m (armv8l -> v8)")
    elif architecture[1] != "7":
        problems.append(f"line {architecture[0]}: the first 'CPU architecture' line says "
                        f"{architecture[1]!r}, not '7'")
    model = _containerd_field(text, "model name")
    is_v6_model = model is not None and model[1].lower().startswith("armv6-compatible")
    if variant == "v7" and is_v6_model:
        problems.append(f"line {model[0]}: model name {model[1]!r} starts with 'ARMv6-compatible': "
                        "containerd would pick v6")
    if variant == "v6" and not is_v6_model:
        shown = repr(model[1]) if model else "missing"
        problems.append(f"model name {shown} does not start with 'ARMv6-compatible': containerd would pick v7")
    if not any(line.partition(":")[0].strip() == "processor" for line in text.split("\n")):
        problems.append("no 'processor' line: tools counting CPUs would see none")
    return problems


def render_for_host(machine: str, online_cpus: int, variant: str,
                    read_native: Callable[[], str], read_compat: Callable[[], str | None]) -> str:
    """The hijacked file for a host whose `uname -m` is `machine`.

    aarch64: the kernel's own compat view (`read_compat`: /proc/cpuinfo read under PER_LINUX32, None
    when that is impossible), else one built from its native view. armv7l/armv8l (a 32-bit kernel,
    or the agent already under linux32): the view it reads itself. Non-Arm hosts: the template.
    """
    if is_arm64(machine):
        compat = read_compat()
        return hijack(compat if compat is not None else to_compat(read_native()), variant, online_cpus)
    if machine in ("armv7l", "armv8l"):
        return hijack(read_native(), variant, online_cpus)
    if machine.startswith(("arm", "aarch64")):
        # An ARMv6/v5 or big-endian Arm machine cannot run the ARMv7 code the file would promise.
        raise CpuinfoError(f"uname -m {machine!r}: not a host armhf containers can run on")
    return template(online_cpus, variant)


def count_cpu_list(spec: str) -> int:
    """Number of CPUs in a kernel CPU list such as "0-3,5,7-8" (Documentation/admin-guide/cputopology)."""
    count = 0
    for part in spec.strip().split(","):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise CpuinfoError(f"CPU list {spec.strip()!r}: {part!r} is not N or N-M") from None
        if low < 0 or high < low:
            raise CpuinfoError(f"CPU list {spec.strip()!r}: {part!r} is not an ascending range")
        count += high - low + 1
    return count


def online_cpu_count(sys_root: str = "/sys") -> int:
    path = os.path.join(sys_root, "devices/system/cpu/online")
    try:
        with open(path, encoding="ascii") as f:
            spec = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CpuinfoError(f"{path}: cannot read the online CPU list: {exc}") from None
    try:
        return count_cpu_list(spec)
    except CpuinfoError as exc:
        raise CpuinfoError(f"{path}: {exc}") from None
