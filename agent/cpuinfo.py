"""The hijacked /proc/cpuinfo: the file armhf containers and the armhf dockerd read instead of the kernel's.

An arm64 kernel prints `CPU architecture: 8` even to 32-bit readers, so a 32-bit containerd decides
linux/arm/v8 (reference/platform.md, "How Docker decides"). This module turns what the kernel prints
into what an ARMv7 board prints. Two kinds of view come out, chosen by a *profile*:
- `host`: every real detail of this machine's CPUs kept (processors, Features, MIDR fields), only
  the model name and the `CPU architecture` line changed: build for the build host;
- a device profile (agent/data/cpuinfo-profiles/NAME.toml): the processor block a given board's kernel
  prints (model name, Features, MIDR lines), repeated once per online CPU: build for that device, so
  a build probe reading /proc/cpuinfo does not find features the device lacks. A profile may only
  hide features: one naming a feature the host cannot run is refused (`exceeding`).

Everything here is pure text logic except `read_text_file`, `online_cpu_count` and loading the
profiles shipped as package data; reading /proc/cpuinfo under PER_LINUX32 is the caller's job
(`host_view` takes it as `read_compat`).

Layouts that come in:
- native AArch64 view (an arm64 kernel, 64-bit reader): AArch64 hwcap names (`fp asimd ...`),
  no model name;
- compat view (same kernel, PER_LINUX32 reader): `model name : ARMv8 Processor rev N (v8l)`,
  AArch32 hwcap names (`half thumb ... neon vfpv4 ...`), still `CPU architecture: 8`;
- a 32-bit kernel's view: like the compat view with `CPU architecture: 7`, plus a trailing
  `Hardware`/`Revision`/`Serial` block;
- an arm kernel older than v3.8 (`c_show` in arch/arm/kernel/setup.c before it moved the lines into
  each processor block): `Processor : <model>` once, then `processor : N` + `BogoMIPS` per CPU (no
  `processor` line at all on a kernel built without SMP), then one block with Features and the MIDR
  lines for all CPUs (tests/fixtures/cpuinfo/nexus4.txt, nexus-s.txt). `parse` hands it on as the
  current layout.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04)
    import tomli as tomllib  # type: ignore[no-redef]

from .aarch32 import is_arm64

VARIANTS = ("v7", "v6")
HOST = "host"

# The arm and arm64 kernels align every colon at column 16 (tab stops of 8): "Serial\t\t: ",
# "CPU implementer\t: ", "CPU architecture: " (arch/arm/kernel/setup.c, arch/arm64/kernel/cpuinfo.c).
_COLON_COLUMN = 16

# Kernel order of the per-processor lines of the compat view (arch/arm64/kernel/cpuinfo.c c_show).
_MIDR_KEYS = ("CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision")
# The lines an arm kernel before v3.8 printed once for all CPUs, after the processor blocks.
_SHARED_KEYS = ("Features", *_MIDR_KEYS)
# Board lines: in their own trailing block (a kernel without SMP printed them without a blank line).
_BOARD_KEYS = ("Hardware", "Revision", "Serial", "Model")

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

# Every name an arm or arm64 kernel prints on a 32-bit Features line, in print order: hwcap_str bit
# order, then hwcap2_str (arch/arm/kernel/setup.c; arch/arm64/kernel/cpuinfo.c compat_hwcap_str and
# compat_hwcap2_str use the same bits).
AARCH32_FEATURES = ("swp", "half", "thumb", "26bit", "fastmult", "fpa", "vfp", "edsp", "java", "iwmmxt",
                    "crunch", "thumbee", "neon", "vfpv3", "vfpv3d16", "tls", "vfpv4", "idiva", "idivt",
                    "vfpd32", "lpae", "evtstrm", "fphp", "asimdhp", "asimddp", "asimdfhm", "asimdbf16",
                    "i8mm", "aes", "pmull", "sha1", "sha2", "crc32", "sb", "ssbs")
_FEATURE_RANK = {name: rank for rank, name in enumerate(AARCH32_FEATURES)}

# The names an arm64 kernel can print to 32-bit tasks (compat_elf_hwcaps[] sets no other bit).
_COMPAT_ORDER = tuple(name for name in AARCH32_FEATURES if name in set(_COMPAT_DEFAULT).union(
    *_COMPAT_FROM_NATIVE.values()))

# Names a host runs although its Features line may not carry them. arm64 kernels never print
# vfpd32, vfpv3d16 or java to 32-bit tasks (no compat_elf_hwcaps[] entry sets them; the arm64
# maintainers: "they aren't included in ARMv8 and so can never be reported"), yet a program using
# them does not fault there:
#   vfpd32   <- neon:  Advanced SIMD needs the 32 double-register VFP bank (ARMv7 ARM A2.6; in AArch32
#                      D0-D31 are AArch64's V0-V15);
#   vfpv3d16 <- vfpv3: "only 16 double registers": code limited to d0-d15 runs on 32;
#   java     <- thumb: ARMv7-A and ARMv8 AArch32 implement at least trivial Jazelle (BXJ acts as BX),
#                      and every host this agent runs on is ARMv7 or later (`host_view` refuses others).
# Everything else (swp, thumbee, iwmmxt, ...: gone in ARMv8) must be on the host's own line.
_RUNNABLE_VIA = {"vfpd32": "neon", "vfpv3d16": "vfpv3", "java": "thumb"}

# Bad input must fail with a message, not exhaust memory: a real cpuinfo is a few hundred bytes per
# CPU (256 CPUs: ~130 KB); its longest line, Features, under 400 characters.
MAX_DUMP_BYTES = 4 << 20
MAX_LINE_CHARS = 4096

# A control character has no business in a cpuinfo line and would be copied into the hijacked file.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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


@dataclass(frozen=True)
class Profile:
    """A device's processor block, from agent/data/cpuinfo-profiles/NAME.toml."""

    name: str
    description: str
    source: str
    variant: str                   # "v7" | "v6": what containerd derives from the rendered file
    model_name: str
    bogomips: str | None           # None: the profile prints no BogoMIPS line
    features: tuple[str, ...]      # in kernel print order
    cpu_implementer: str
    cpu_variant: str
    cpu_part: str
    cpu_revision: str
    cpus: int | None = None        # None: as many processors as the host has online

    def block(self, number: int) -> Block:
        fields = [("processor", str(number)), ("model name", self.model_name)]
        if self.bogomips is not None:
            fields.append(("BogoMIPS", self.bogomips))
        fields += [("Features", " ".join(self.features)), ("CPU implementer", self.cpu_implementer),
                   # Every board a profile describes prints 7 here (the Pi 1's ARM1176 too), and the
                   # first such line is what containerd reads.
                   ("CPU architecture", "7"), ("CPU variant", self.cpu_variant),
                   ("CPU part", self.cpu_part), ("CPU revision", self.cpu_revision)]
        return Block(tuple(fields))


# --- reading ---------------------------------------------------------------------------------------

def read_text_file(path: str, limit: int = MAX_DUMP_BYTES) -> str:
    """A cpuinfo-like file as text, or CpuinfoError naming the file. Never blocks: opened O_NONBLOCK
    and refused unless it is a regular file (procfs and sysfs files are), so a FIFO, a device or a
    directory swapped in is an error, not a hang or an endless read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise CpuinfoError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CpuinfoError(f"{path}: is {_kind(mode)}, not a regular file")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise CpuinfoError(f"{path}: larger than {limit} bytes")
            chunks.append(chunk)
    except OSError as exc:
        raise CpuinfoError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return decode(b"".join(chunks), path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return f"of file type {stat.S_IFMT(mode):#o}"


def decode(data: bytes, where: str) -> str:
    """UTF-8 text, or CpuinfoError naming `where` and the line of the first undecodable byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CpuinfoError(f"{where}: line {line}: byte {data[exc.start]:#04x} is not UTF-8 text") from None


# --- parsing -----------------------------------------------------------------------------------------

def parse(text: str) -> list[Block]:
    """Blocks in file order: processor blocks, then any global block (Hardware/Revision/Serial).
    A pre-3.8 arm kernel's layout comes out as the current one (see the module docstring)."""
    return _modernize(_split(text))


def _split(text: str) -> list[Block]:
    blocks: list[Block] = []
    current: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if len(line) > MAX_LINE_CHARS:
            raise CpuinfoError(f"line {lineno}: {len(line)} characters long: not a cpuinfo line")
        bad = _CONTROL.search(line)
        if bad:
            raise CpuinfoError(f"line {lineno}: control character {ord(bad.group()):#04x}: not a cpuinfo line")
        if not line.strip():
            if current:
                blocks.append(Block(tuple(current)))
                current = []
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            shown = line if len(line) <= 60 else line[:60] + "..."
            raise CpuinfoError(f"line {lineno}: {shown!r} is not a 'key: value' line")
        current.append((key.strip(), value.strip()))
    if current:
        blocks.append(Block(tuple(current)))
    return blocks


def _modernize(blocks: list[Block]) -> list[Block]:
    """The pre-3.8 arm layout as current kernels print it: each processor block with its own model
    name, Features and MIDR lines, the board lines in a trailing block. Current layouts pass through."""
    model = next((v for b in blocks for k, v in b.fields if k == "Processor"), None)
    if model is None:
        return blocks
    if not any(b.is_processor for b in blocks):
        # Built without SMP: one block, no `processor` line; it describes CPU 0.
        first = next(i for i, b in enumerate(blocks) if b.get("Processor") is not None)
        blocks = [*blocks[:first], Block((("processor", "0"), *blocks[first].fields)), *blocks[first + 1:]]
    shared: dict[str, str] = {}
    rest: list[Block] = []
    for block in blocks:
        if not block.is_processor and block.fields and all(k in _SHARED_KEYS for k, _ in block.fields):
            shared.update(block.fields)
        elif not block.is_processor:
            rest.append(block)
    processors, board = [], []
    for block in (b for b in blocks if b.is_processor):
        own = {k: v for k, v in block.fields if k not in ("Processor", *_BOARD_KEYS)}
        board += [(k, v) for k, v in block.fields if k in _BOARD_KEYS]
        fields = [("processor", own.pop("processor")), ("model name", own.pop("model name", model))]
        if "BogoMIPS" in own:
            fields.append(("BogoMIPS", own.pop("BogoMIPS")))
        for key in _SHARED_KEYS:
            value = own.pop(key, shared.get(key))
            if value is not None:
                fields.append((key, value))
        fields += own.items()
        processors.append(Block(tuple(fields)))
    return processors + ([Block(tuple(board))] if board else []) + rest


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


def _compat_blocks(text: str) -> list[Block]:
    """The 32-bit view's blocks of any dump (a native AArch64 one is converted first)."""
    blocks = parse(text)
    return parse(to_compat(text)) if is_native_aarch64(blocks) else blocks


# --- features: what a host runs, what a profile shows ----------------------------------------------

def host_features(text: str) -> tuple[str, ...]:
    """The AArch32 features every CPU of this dump has, in the order the first one prints them. A
    32-bit task may run on any CPU (big.LITTLE cores can differ), so only what all have counts."""
    processors = _processors(_compat_blocks(text))
    common = set.intersection(*(set((p.get("Features") or "").split()) for p in processors))
    return tuple(name for name in (processors[0].get("Features") or "").split() if name in common)


def exceeding(features: tuple[str, ...] | list[str], host: tuple[str, ...] | list[str]) -> list[str]:
    """The names in `features` a program could not use on a host whose 32-bit Features line is `host`."""
    have = set(host)
    return [name for name in features if name not in have and _RUNNABLE_VIA.get(name) not in have]


def hidden(features: tuple[str, ...] | list[str], host: tuple[str, ...] | list[str]) -> list[str]:
    """The host's features a view with `features` does not show."""
    shown = set(features)
    return [name for name in host if name not in shown]


# --- profiles ------------------------------------------------------------------------------------------

_PROFILE_KEYS = {"description": str, "source": str, "variant": str, "model_name": str, "bogomips": str,
                 "features": str, "cpu_implementer": str, "cpu_variant": str, "cpu_part": str,
                 "cpu_revision": str, "cpus": int}
_OPTIONAL_KEYS = ("bogomips", "cpus")
_RENDERED_KEYS = ("model_name", "bogomips", "features", "cpu_implementer", "cpu_variant", "cpu_part", "cpu_revision")
_HEX = re.compile(r"0x[0-9a-f]+")
_VALUE_FORMATS = {"cpu_implementer": (_HEX, "0x41"), "cpu_variant": (_HEX, "0x0"), "cpu_part": (_HEX, "0xd03"),
                  "cpu_revision": (re.compile(r"[0-9]+"), "4"), "bogomips": (re.compile(r"[0-9]+\.[0-9]{2}"), "38.40")}
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def parse_profile(name: str, text: str, where: str) -> Profile:
    """A profile file's content, checked; CpuinfoError names `where` and the key at fault."""
    if not PROFILE_NAME.fullmatch(name) or name == HOST:
        raise CpuinfoError(f"{where}: {name!r} cannot name a profile (lowercase letters, digits, '-'; not {HOST!r})")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CpuinfoError(f"{where}: TOML syntax: {exc}") from None
    problems = [f"unknown key {key!r}" for key in data if key not in _PROFILE_KEYS]
    for key, kind in _PROFILE_KEYS.items():
        if key not in data:
            if key not in _OPTIONAL_KEYS:
                problems.append(f"{key}: missing")
        elif type(data[key]) is not kind:
            problems.append(f"{key}: must be {'an integer' if kind is int else 'a string'}, got {data[key]!r}")
        elif kind is str and (_CONTROL.search(data[key]) or not data[key].strip()):
            problems.append(f"{key}: {data[key]!r} must be one non-empty line")
        elif key in _RENDERED_KEYS and ":" in data[key]:
            # The value becomes a cpuinfo line, and containerd cuts values at the first ':'.
            problems.append(f"{key}: {data[key]!r} must not contain ':'")
        elif key in _VALUE_FORMATS and not _VALUE_FORMATS[key][0].fullmatch(data[key]):
            problems.append(f"{key}: {data[key]!r} is not like {_VALUE_FORMATS[key][1]!r}")
    if problems:
        raise CpuinfoError(f"{where}: " + "; ".join(problems))
    features = data["features"].split()
    unknown = [f for f in features if f not in _FEATURE_RANK]
    if unknown or len(set(features)) != len(features):
        raise CpuinfoError(f"{where}: features: {', '.join(map(repr, unknown)) or 'a name twice'}"
                           f"{' is not an AArch32 feature name' if unknown else ''} (known: {' '.join(AARCH32_FEATURES)})")
    if "cpus" in data and not 1 <= data["cpus"] <= 4096:
        raise CpuinfoError(f"{where}: cpus: {data['cpus']} is not 1-4096")
    profile = Profile(name=name, description=data["description"], source=data["source"], variant=data["variant"],
                      model_name=data["model_name"], bogomips=data.get("bogomips"),
                      features=tuple(sorted(features, key=_FEATURE_RANK.__getitem__)),
                      cpu_implementer=data["cpu_implementer"], cpu_variant=data["cpu_variant"],
                      cpu_part=data["cpu_part"], cpu_revision=data["cpu_revision"], cpus=data.get("cpus"))
    # The variant is what containerd will make of the rendered block, not a free choice.
    derived = containerd_variant(render([profile.block(0)]))
    if profile.variant != derived:
        raise CpuinfoError(f"{where}: variant: {profile.variant!r}, but containerd derives {derived!r} from "
                           f"model name {profile.model_name!r} with CPU architecture 7")
    return profile


def profiles_dir():
    """Where the shipped profiles are: package data, in the wheel and the .deb's virtualenv."""
    return resources.files("agent").joinpath("data", "cpuinfo-profiles")


_LOADED: dict[str, dict[str, Profile]] = {}


def load_profiles(directory=None) -> dict[str, Profile]:
    """Every profile in `directory` (default: the shipped ones), by name; cached per directory."""
    folder = profiles_dir() if directory is None else directory
    key = str(folder)
    if key not in _LOADED:
        found = {}
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".toml"):
                name = entry.name[:-len(".toml")]
                found[name] = parse_profile(name, entry.read_text(encoding="utf-8"), str(entry))
        _LOADED[key] = found
    return _LOADED[key]


def profile_names() -> list[str]:
    return [HOST, *load_profiles()]


def get_profile(name: str, directory=None) -> Profile | None:
    """The profile called `name`; None for `host`; CpuinfoError for a name no file has."""
    if name == HOST:
        return None
    found = load_profiles(directory)
    if name not in found:
        raise CpuinfoError(f"no cpuinfo profile {name!r} (there are: {', '.join([HOST, *found])})")
    return found[name]


def profile_variant(name: str) -> str:
    profile = get_profile(name)
    return "v7" if profile is None else profile.variant


# --- the hijacked file -----------------------------------------------------------------------------

def hijack(text: str, profile: Profile | str | None = None, online_cpus: int | None = None) -> str:
    """The hijacked view of a compat, 32-bit or native cpuinfo (`text`: the host).

    `profile` None or "host": the ARMv7 view of these very CPUs. Rewrites model name and every
    `CPU architecture` line (containerd reads the first one, wherever it is) and keeps everything else.
    A device profile: its processor block, once per CPU, after checking that the host runs every
    feature it names (CpuinfoError naming them otherwise).

    The processor count is `online_cpus` (`grep -c processor` drives `make -j`), a profile's own
    `cpus`, else the dump's. For the host view, when `online_cpus` differs from the dump, the last
    block is repeated or blocks are dropped and processors are renumbered from 0; when it matches, the
    kernel's numbering (which skips offline CPUs) is kept.
    """
    if isinstance(profile, str):
        profile = get_profile(profile)
    if online_cpus is not None and online_cpus < 1:
        raise CpuinfoError(f"online CPU count {online_cpus} is not positive")
    blocks = _compat_blocks(text)
    if profile is not None:
        return _profile_view(blocks, profile, online_cpus)
    processors = [_armv7_block(b) for b in _processors(blocks)]
    others = [_set(b, "CPU architecture", "7") for b in blocks if not b.is_processor]
    if online_cpus is not None and online_cpus != len(processors):
        processors = (processors + [processors[-1]] * online_cpus)[:online_cpus]
        processors = [_renumbered(b, n) for n, b in enumerate(processors)]
    return render(processors + others)


def _profile_view(blocks: list[Block], profile: Profile, online_cpus: int | None) -> str:
    host = host_features(render(blocks))
    beyond = exceeding(profile.features, host)
    if beyond:
        raise CpuinfoError(f"profile {profile.name!r} claims {' '.join(beyond)}, which this host cannot run "
                           f"(its 32-bit Features: {' '.join(host) or 'none'})")
    count = profile.cpus or online_cpus or len(_processors(blocks))
    # No Hardware/Revision/Serial block: the profile describes the CPU, not the board, and a Pi's
    # board lines would make Pi-detecting code (GPIO libraries) believe it runs on one.
    return render([profile.block(n) for n in range(count)])


def _armv7_block(block: Block) -> Block:
    block = _set(block, "model name", f"ARMv7 Processor rev {_revision(block)} (v7l)", insert_after="processor")
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


def template_compat() -> str:
    """A Cortex-A72 in AArch32 state, for hosts with no Arm kernel to ask (x86 development machines):
    the compat view an arm64 kernel prints for that core, one CPU.
    - CPU implementer 0x41 / part 0xd08: Cortex-A72, the Graviton1 core (reference/platform.md table);
    - variant 0x0 / revision 3: r0p3, MIDR 0x410fd083 of QEMU's cortex-a72, the emulated arm64 host
      the platform facts were measured on;
    - Features: the ARMv8.0-with-crypto compat list, identical in all three `*.armeabi.txt` fixtures
      (huawei-mate-20, galaxy-s7-us, oneplus-3t); the A72 has no later extension that would add more;
    - BogoMIPS 38.40: the 19.2 MHz arch timer value of raspberrypi2/3, oneplus-3t and jetson-tx1.
    """
    return render([Block((
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
    ))])


def template(online_cpus: int, profile: Profile | str | None = None) -> str:
    """The hijacked file of a host that is the template core (`template_compat`) `online_cpus` times."""
    if online_cpus < 1:
        raise CpuinfoError(f"online CPU count {online_cpus} is not positive")
    return hijack(template_compat(), profile, online_cpus)


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


def host_view(machine: str, read_native: Callable[[], str], read_compat: Callable[[], str | None]) -> str:
    """The 32-bit view of the CPUs of a host whose `uname -m` is `machine`: what a device profile is
    checked against and what the `host` profile shows.

    aarch64: the kernel's own compat view (`read_compat`: /proc/cpuinfo read under PER_LINUX32, None
    when that is impossible), else one built from its native view. armv7l/armv8l (a 32-bit kernel,
    or the agent already under linux32): the view it reads itself. Non-Arm hosts: the template.
    """
    if is_arm64(machine):
        compat = read_compat()
        return compat if compat is not None else to_compat(read_native())
    if machine in ("armv7l", "armv8l"):
        return read_native()
    if machine.startswith(("arm", "aarch64")):
        # An ARMv6/v5 or big-endian Arm machine cannot run the ARMv7 code the file would promise.
        raise CpuinfoError(f"uname -m {machine!r}: not a host armhf containers can run on")
    return template_compat()


def render_for_host(machine: str, online_cpus: int, profile: Profile | str | None,
                    read_native: Callable[[], str], read_compat: Callable[[], str | None]) -> str:
    """The hijacked file for a host whose `uname -m` is `machine` (see `host_view`)."""
    return hijack(host_view(machine, read_native, read_compat), profile, online_cpus)


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
        spec = read_text_file(path, limit=65536)
    except CpuinfoError as exc:
        raise CpuinfoError(f"cannot read the online CPU list: {exc}") from None
    try:
        return count_cpu_list(spec)
    except CpuinfoError as exc:
        raise CpuinfoError(f"{path}: {exc}") from None
