"""The exec helper that becomes dockerd: set up its mount namespace and personality, then exec.

Run as a script (`python -I launch.py ...`), self-contained, so it works the same from a checkout and
from the packaged venv. It is a separate process rather than a preexec_fn because the agent has threads
(HTTP server, event follower) and preexec_fn is not safe in a threaded parent. It execs, so dockerd keeps
its pid and nothing of the launcher stays behind.

  launch.py [--personality linux32] [--cpuinfo FILE] -- ARGV...   set up, then exec ARGV
  launch.py --rebind PID --start-ticks N --cpuinfo FILE            swap the file dockerd's namespace shows
  launch.py --personality linux32 --probe                          exit 0 iff the kernel accepts it

Exit codes: 0 probe ok, 70 set-up failed (message on stderr), 71 personality refused (EINVAL:
no AArch32 at EL0).

This file is also the one home of the personality constants and of these exit statuses: the agent
imports them from here (agent.launch), so the script and its callers cannot disagree.
"""

import ctypes
import ctypes.util
import errno
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2
# personality(2): the low byte is the execution domain; PER_LINUX32 makes an arm64 kernel answer
# `uname -m` with armv8l (../shared/reference/platform.md, "uname -m: aarch64 vs armv8l").
PER_LINUX32 = 0x0008
PER_MASK = 0xFF
EXIT_SETUP_FAILED = 70
EXIT_PERSONALITY_REFUSED = 71

try:
    # Straight to glibc's soname: find_library() would spawn ldconfig, ~10-50 ms on every dockerd start.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.personality.argtypes = [ctypes.c_ulong]


def die(code, message):
    sys.stderr.write(f"armhf-agent launch: {message}\n")
    sys.exit(code)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        die(EXIT_SETUP_FAILED, f"{what}: {os.strerror(err)}")


def open_cpuinfo(path):
    """An O_PATH descriptor of `path`, which must be a regular file itself: the agent may look at the
    path while it is being tampered with, and a planted symlink must never get /etc/shadow (or a
    directory) bound over dockerd's /proc/cpuinfo. Opened in the namespace the bind happens in: mount(2)
    refuses a bind source from another mount namespace."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        die(EXIT_SETUP_FAILED, f"open {path}: {exc.strerror}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        die(EXIT_SETUP_FAILED, f"{path} is not a regular file (a symlink, a directory or another type); not binding it")
    return fd


def bind_cpuinfo(path):
    # Read-only bind of the hijacked file over /proc/cpuinfo: runc allows /proc/cpuinfo as a mount
    # target (../shared/reference/platform.md, runc checkProcMount), and containerd reads the first
    # "CPU architecture" line of it to choose linux/arm/v7 vs v8.
    fd = open_cpuinfo(path)
    # The magic link binds exactly the inode checked above, whatever happens to the name meanwhile.
    check(libc.mount(f"/proc/self/fd/{fd}".encode(), b"/proc/cpuinfo", None, MS_BIND, None),
          f"bind {path} over /proc/cpuinfo")
    os.close(fd)
    check(libc.mount(None, b"/proc/cpuinfo", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
          "remount /proc/cpuinfo read-only")


def private_namespace(path):
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # rslave: host mounts still propagate in (new volumes, USB disks), ours never propagate out, so
    # the host's /proc/mounts stays clean of container mounts.
    check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / rslave")
    bind_cpuinfo(path)


def set_linux32():
    current = libc.personality(0xFFFFFFFF)
    if libc.personality((current & ~PER_MASK) | PER_LINUX32) == -1 or libc.personality(0xFFFFFFFF) & PER_MASK != PER_LINUX32:
        die(EXIT_PERSONALITY_REFUSED, "personality(PER_LINUX32) refused: this CPU cannot execute AArch32 at EL0")


def start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def rebind(pid, path, ticks):
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    except OSError as exc:
        die(EXIT_SETUP_FAILED, f"open the mount namespace of pid {pid}: {exc.strerror}")
    # The descriptor pins the namespace it was opened from; checked after the open, the start time
    # proves it is still the dockerd the agent meant, not a process that reused its pid since.
    if ticks is not None and start_ticks(pid) != ticks:
        die(EXIT_SETUP_FAILED, f"pid {pid} is no longer the dockerd started at tick {ticks}; not touching it")
    check(libc.setns(fd, CLONE_NEWNS), f"setns into the mount namespace of pid {pid}")
    # Refuse a bad source before touching the old mount: dockerd keeps seeing the old (hijacked) file.
    os.close(open_cpuinfo(path))
    # Peel off every bind over /proc/cpuinfo, down to procfs's own file (EINVAL: not a mount point), so
    # a rebind after an earlier half-done one neither fails nor stacks mounts.
    for _ in range(16):
        if libc.umount2(b"/proc/cpuinfo", MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                break
            die(EXIT_SETUP_FAILED, f"unmount the old /proc/cpuinfo: {os.strerror(err)}")
    bind_cpuinfo(path)


def main(argv):
    personality = cpuinfo = rebind_pid = ticks = None
    probe = False
    args = list(argv)
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--personality":
            personality = args.pop(0)
        elif opt == "--cpuinfo":
            cpuinfo = args.pop(0)
        elif opt == "--rebind":
            rebind_pid = int(args.pop(0))
        elif opt == "--start-ticks":
            ticks = int(args.pop(0))
        elif opt == "--probe":
            probe = True
        else:
            die(EXIT_SETUP_FAILED, f"unknown option {opt}")
    command = args[1:]
    if rebind_pid is not None:
        rebind(rebind_pid, cpuinfo, ticks)
        return 0
    if cpuinfo:
        private_namespace(cpuinfo)
    if personality == "linux32":
        set_linux32()
    if probe:
        return 0
    if not command:
        die(EXIT_SETUP_FAILED, "no command to exec")
    try:
        os.execv(command[0], command)
    except OSError as exc:
        die(EXIT_SETUP_FAILED, f"exec {command[0]}: {exc}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
