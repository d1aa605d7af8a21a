"""personality(2) through libc: PER_LINUX32 is what makes `uname -m` say armv8l (arm64) / i686 (x86_64).

See ../shared/reference/platform.md "uname -m: aarch64 vs armv8l": the personality is inherited across
fork and exec, so setting it in the process that execs dockerd reaches containerd, runc, every container
and build step. personality(PER_LINUX32) fails with EINVAL on CPUs without AArch32 at EL0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PER_LINUX = 0x0000
PER_LINUX32 = 0x0008
_QUERY = 0xFFFFFFFF

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.personality.argtypes = [ctypes.c_ulong]
_libc.personality.restype = ctypes.c_int


def set_personality(persona: int) -> None:
    """Sets this process's personality (keeping its flag bits); raises OSError (EINVAL when refused)."""
    current = _libc.personality(_QUERY)
    if current == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if _libc.personality((current & ~0xFF) | persona) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # The call returns the previous value even when the kernel refuses silently: read back.
    if _libc.personality(_QUERY) & 0xFF != persona:
        raise OSError(22, "personality not accepted by the kernel")
