"""Does this CPU run AArch32 code at EL0? Answers the two run-time tests of reference/platform.md
("Which hosts can run armhf natively") independently, plus the caveat that voids the first one.

Usage: aarch32.py ARMHF_BINARY    prints   binfmt-arm=<handler names|none>
                                           exec=<ok|errno name>
                                           personality=<ok|errno name>
"""

import ctypes
import errno
import os
import subprocess
import sys

PER_LINUX32 = 0x0008
QUERY_PERSONALITY = 0xFFFFFFFF
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
# ELF header magic of a 32-bit little-endian executable with e_machine 40 (EM_ARM).
ARM_ELF_MAGIC_END = "2800"


def arm_binfmt_handlers() -> list[str]:
    """A registered qemu-arm handler would make an armhf binary 'run' under emulation."""
    if not os.path.isdir(BINFMT_DIR):
        return []
    handlers = []
    for entry in sorted(os.listdir(BINFMT_DIR)):
        if entry in ("register", "status"):
            continue
        with open(os.path.join(BINFMT_DIR, entry)) as f:
            for line in f:
                if line.startswith("magic 7f454c4601") and line.strip().endswith(ARM_ELF_MAGIC_END):
                    handlers.append(entry)
    return handlers


def exec_result(binary: str) -> str:
    try:
        subprocess.run([binary, "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    except OSError as error:
        return errno.errorcode[error.errno]
    return "ok"


def personality_result() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.personality(QUERY_PERSONALITY)
    if libc.personality(PER_LINUX32) == -1:
        return errno.errorcode[ctypes.get_errno()]
    libc.personality(previous)
    return "ok"


def main() -> None:
    print(f"binfmt-arm={','.join(arm_binfmt_handlers()) or 'none'}")
    print(f"exec={exec_result(sys.argv[1])}")
    print(f"personality={personality_result()}")


if __name__ == "__main__":
    main()
