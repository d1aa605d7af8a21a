"""Reads just enough of an ELF header to tell what a binary is built for."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# e_machine values (elf.h)
_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 8: "mips", 20: "ppc", 21: "ppc64",
             22: "s390", 243: "riscv"}


@dataclass(frozen=True)
class ElfInfo:
    bits: int          # 32 or 64
    little_endian: bool
    machine: str       # "arm", "aarch64", "x86_64", "i386", ... or "e_machine=N"

    @property
    def is_armhf_capable(self) -> bool:
        """A 32-bit little-endian ARM binary: what an AArch32-at-EL0 host can run natively."""
        return self.bits == 32 and self.little_endian and self.machine == "arm"

    def describe(self) -> str:
        return f"ELF {self.bits}-bit {'LSB' if self.little_endian else 'MSB'} {self.machine}"


def elf_info_from_bytes(head: bytes) -> ElfInfo | None:
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    little = head[5] == 1
    (machine,) = struct.unpack_from("<H" if little else ">H", head, 18)
    return ElfInfo(bits=32 if head[4] == 1 else 64, little_endian=little,
                   machine=_MACHINES.get(machine, f"e_machine={machine}"))


def elf_info(path: str) -> ElfInfo | None:
    """None when the file is not ELF (a script, a directory, unreadable)."""
    try:
        with open(path, "rb") as f:
            return elf_info_from_bytes(f.read(20))
    except OSError:
        return None
