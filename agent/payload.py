"""The armhf Docker payload in docker.root: where its binaries are, whether it is safe, what it is.

A payload is laid out either like Docker's static release (all binaries at the top) or like a
docker:dind image (usr/local/bin, usr/bin, bin): binaries are looked up in root, root/bin,
root/usr/bin, root/usr/local/bin, first hit wins.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass

from .aarch32 import is_arm64
from .elf import elf_info

REQUIRED = ("dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker-init", "docker-proxy", "docker")
SEARCH_DIRS = ("", "bin", "usr/bin", "usr/local/bin")


@dataclass(frozen=True)
class Payload:
    root: str
    binaries: dict[str, str]           # name -> path (only those found)
    problems: tuple[str, ...]          # empty = complete and safe

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def dockerd(self) -> str | None:
        return self.binaries.get("dockerd")

    @property
    def client(self) -> str | None:
        return self.binaries.get("docker")

    def path_dirs(self) -> list[str]:
        """Folders to put first on dockerd's PATH (it finds containerd, runc, docker-init there): those
        that held the binaries when the payload was inspected. From that one look, not a new one: a look
        now, in the middle of install-docker's swap, could see another layout than `binaries` does, and
        the spec would change without the fingerprint (a "reload" restart instead of an update)."""
        held = {os.path.dirname(path) for path in self.binaries.values()}
        dirs: list[str] = []
        for d in SEARCH_DIRS:
            p = os.path.join(self.root, d) if d else self.root
            if p in held and p not in dirs:
                dirs.append(p)
        return dirs


def find(root: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in REQUIRED:
        for d in SEARCH_DIRS:
            p = os.path.join(root, d, name) if d else os.path.join(root, name)
            if os.path.isfile(p):
                found[name] = p
                break
    return found


def _chain(path: str) -> list[str]:
    chain = [path]
    while chain[-1] != "/":
        chain.append(os.path.dirname(chain[-1]))
    return chain


def unsafe_reason(path: str) -> str | None:
    """A payload binary that others can write is a root shell for them: the file and every folder above
    it must be root-owned and not group/world-writable, both where the payload names it and where a
    symlink leads (a writable folder holding a symlink is as bad as a writable binary)."""
    seen: list[str] = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        seen += [p for p in _chain(start) if p not in seen]
    for current in seen:
        try:
            st = os.stat(current)
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if st.st_uid != 0:
            return f"{current} is owned by uid {st.st_uid}, not root"
        # Sticky world-writable folders (/tmp) count too: anyone can still create names in them.
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{current} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def inspect(root: str, machine: str | None = None, allow_arch: bool = False) -> Payload:
    problems: list[str] = []
    if not os.path.isdir(root):
        return Payload(root, {}, (f"{root} does not exist: add a payload with `armhf-agent install-docker SOURCE`",))
    found = find(root)
    missing = [n for n in REQUIRED if n not in found]
    if missing:
        problems.append(f"missing in {root}: {', '.join(missing)}")
    arm64 = is_arm64(machine)
    for name, p in found.items():
        if not os.access(p, os.X_OK):
            problems.append(f"{p} is not executable")
            continue
        reason = unsafe_reason(p)
        if reason:
            problems.append(f"unsafe {name}: {reason}")
        # Only on arm64 hosts must the payload be 32-bit ARM; elsewhere (x86 development) the
        # system's own binaries stand in for it. A file that is not ELF at all (a script standing in
        # for dockerd) is no more an armhf binary than an x86 one.
        if arm64 and not allow_arch:
            info = elf_info(os.path.realpath(p))
            if info is None:
                problems.append(f"{p} is not ELF 32-bit ARM: not an ELF binary at all (use --allow-arch to accept it)")
            elif not info.is_armhf_capable:
                problems.append(f"{p} is {info.describe()}, not ELF 32-bit ARM (use --allow-arch to accept it)")
    return Payload(root, found, tuple(problems))


def fingerprint(payload: Payload) -> tuple:
    """Changes whenever a binary is replaced, rewritten or touched."""
    out = []
    for name in sorted(payload.binaries):
        try:
            st = os.stat(payload.binaries[name])
        except OSError:
            out.append((name, None))
            continue
        out.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def describe_arch(path: str | None) -> str:
    if not path:
        return ""
    info = elf_info(os.path.realpath(path))
    return info.machine if info else "not ELF"


def version(dockerd: str | None, timeout: float = 10.0) -> str:
    """`dockerd --version` ("Docker version 20.10.24+dfsg1, build 5d6db84" -> "20.10.24+dfsg1")."""
    if not dockerd:
        return ""
    try:
        out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    words = out.replace(",", " ").split()
    return words[2] if len(words) > 2 and words[0] == "Docker" else out.strip()[:64]
