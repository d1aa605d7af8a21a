"""The exec helper that becomes dockerd: set up its mount namespace and personality, then exec.

Run as a script (`python -I launch.py ...`), self-contained, so it works the same from a checkout and
from the packaged venv. It is a separate process rather than a preexec_fn because the agent has threads
(HTTP server, event follower) and preexec_fn is not safe in a threaded parent. It execs, so dockerd keeps
its pid and nothing of the launcher stays behind.

  launch.py [--personality linux32] [--cpuinfo FILE] [--containerd-state DIR] [--namespace PIN] -- ARGV...
                                                                   set up, then exec ARGV
  launch.py --rebind PID --start-ticks N --cpuinfo FILE            swap the file dockerd's namespace shows
  launch.py --pin PID --start-ticks N --namespace PIN              keep PID's mount namespace at PIN
  launch.py --personality linux32 --probe                          exit 0 iff the kernel accepts it

Exit codes: 0 probe ok, 70 set-up failed (message on stderr), 71 personality refused (EINVAL:
no AArch32 at EL0).

This file is also the one home of the personality constants and of these exit statuses: the agent
imports them from here (agent.launch), so the script and its callers cannot disagree.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2
NS_GET_NSTYPE = 0xB703        # ioctl_ns(2): _IO(0xb7, 0x3)
NS_GET_MNTNS_ID = 0x8008B705  # ioctl_ns(2): _IOR(0xb7, 0x5, __u64), Linux >= 6.8
# personality(2): the low byte is the execution domain; PER_LINUX32 makes an arm64 kernel answer
# `uname -m` with armv8l (../shared/reference/platform.md, "uname -m: aarch64 vs armv8l").
PER_LINUX32 = 0x0008
PER_MASK = 0xFF
# containerd's defaults.DefaultStateDir. dockerd uses a system containerd whenever its socket exists
# there (moby cmd/dockerd/daemon_unix.go initContainerd, systemContainerdRunning: a bare Lstat), and
# the shims of *any* containerd keep their sockets (s/) and runc's state (runc/<namespace>) under it.
SYSTEM_CONTAINERD_STATE = "/run/containerd"
EXIT_SETUP_FAILED = 70
EXIT_PERSONALITY_REFUSED = 71

try:
    # Straight to glibc's soname: find_library() would spawn ldconfig, ~10-50 ms on every dockerd start.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
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


def private_namespace():
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # rslave: host mounts still propagate in (new volumes, USB disks), ours never propagate out, so
    # the host's /proc/mounts stays clean of container mounts.
    check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / rslave")


# -- one namespace for every dockerd the agent starts ------------------------------------------------
# dockerd's mounts (each container's rootfs) live only in its namespace. A dockerd started in a fresh one
# after a crash or an update, with --live-restore, finds the running containers but not their rootfs;
# its clean-up rmdirs the empty `merged` folders it sees, which detaches those mounts in the old
# namespace too (rmdir of another namespace's mount point, Linux >= 3.18), and `docker exec` into the
# survivors then fails ("fork/exec /proc/self/exe: no such file or directory": runc starts its setns
# process in the rootfs). So the namespace is kept at PIN (a bind of its nsfs file, as
# `unshare --mount=FILE` does) and every later dockerd joins it, as docker.service's all share the host's.

def mount_points():
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return {line.split()[4].replace("\\040", " ") for line in f}


# The kernel binds a namespace file only into a namespace older than it (fs/namespace.c mnt_ns_loop:
# EINVAL unless the binder's id is lower). Since Linux 6.18 the ids come from per-CPU batches
# (include/linux/cookie.h), so a namespace made later on another CPU can have the lower id: seen here,
# a launcher in a non-initial namespace (a container, a test's chroot) failed to pin about half its
# namespaces. The initial namespace (the agent under systemd) has the lowest id and never meets it.

def mnt_ns_id(fd):
    """The id the loop check compares, or None (a kernel before NS_GET_MNTNS_ID)."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, NS_GET_MNTNS_ID, buf)
    except OSError:
        return None
    return int.from_bytes(buf, sys.byteorder)


def older_than(fd_a, fd_b):
    """True if the kernel would refuse to bind namespace `fd_a` from namespace `fd_b` (a's id is lower)."""
    a, b = mnt_ns_id(fd_a), mnt_ns_id(fd_b)
    return a is not None and b is not None and a <= b


def open_pin(pin):
    """The mount namespace kept at `pin`, as an open descriptor, or None (no pin, or not a live one)."""
    try:
        fd = os.open(pin, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNS:
            return fd
    except OSError:
        pass          # ENOTTY: a plain file, the pin's mount point without its mount
    os.close(fd)
    return None


def pin_namespace(ns_fd, pin):
    """Binds the namespace `ns_fd` at `pin`, from the namespace this process is in; the reason if it
    cannot. The pin's folder is a private mount of its own: a pin propagated into the namespace it pins
    would be a loop. The bind goes onto a descriptor of a regular file: never through a symlink."""
    try:
        os.makedirs(os.path.dirname(pin), mode=0o700, exist_ok=True)
        # mountinfo names the real path (a run_dir under /var/run is under /run there).
        folder = os.path.realpath(os.path.dirname(pin))
        pin = os.path.join(folder, os.path.basename(pin))
        if folder not in mount_points() and libc.mount(folder.encode(), folder.encode(), None, MS_BIND, None) != 0:
            return f"bind {folder} on itself: {os.strerror(ctypes.get_errno())}"
        if libc.mount(None, folder.encode(), None, MS_PRIVATE, None) != 0:
            return f"make {folder} private: {os.strerror(ctypes.get_errno())}"
        for _ in range(16):
            if pin not in mount_points():
                break
            if libc.umount2(pin.encode(), MNT_DETACH) != 0:
                return f"unmount the old {pin}: {os.strerror(ctypes.get_errno())}"
        fd = os.open(pin, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return f"{pin}: {exc.strerror} (it must be a regular file)"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{pin} is not a regular file"
        if libc.mount(f"/proc/self/fd/{ns_fd}".encode(), f"/proc/self/fd/{fd}".encode(), None, MS_BIND, None) != 0:
            return f"keep the namespace at {pin}: {os.strerror(ctypes.get_errno())}"
        return None
    finally:
        os.close(fd)


def release_pin(pin):
    """Lets go of the namespace kept at `pin` (package removal); False if nothing was kept there."""
    folder = os.path.realpath(os.path.dirname(pin))
    pin = os.path.join(folder, os.path.basename(pin))
    released = False
    while pin in mount_points() and libc.umount2(pin.encode(), MNT_DETACH) == 0:
        released = True
    while folder in mount_points() and libc.umount2(folder.encode(), MNT_DETACH) == 0:
        pass
    return released


def enter_namespace(pin):
    """Joins the namespace kept at `pin`, or makes a new one and keeps it there. True: joined."""
    fd = open_pin(pin)
    if fd is not None:
        check(libc.setns(fd, CLONE_NEWNS), f"join the namespace kept at {pin}")
        os.close(fd)
        return True
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    ours = new_namespace_younger_than(host)
    check(libc.setns(host, CLONE_NEWNS), "return to the host's namespace")
    problem = pin_namespace(ours, pin)
    check(libc.setns(ours, CLONE_NEWNS), "re-enter the new namespace")
    if problem:
        # dockerd starts all the same; only a successor's view of its mounts is at stake.
        sys.stderr.write(f"armhf-agent launch: not keeping dockerd's namespace: {problem}\n")
    os.close(host)
    os.close(ours)
    return False


def new_namespace_younger_than(host):
    """Unshares into a new private namespace, as a descriptor; one the kernel will let `host` pin (see
    mnt_ns_id) if any CPU this process may run on makes one. dockerd inherits the affinity: restored."""
    allowed = os.sched_getaffinity(0)
    private_namespace()
    ours = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for cpu in sorted(allowed):
            if not older_than(ours, host):
                break
            os.sched_setaffinity(0, {cpu})
            check(libc.setns(host, CLONE_NEWNS), "return to the host's namespace")
            os.close(ours)               # the refused namespace goes with its last reference
            private_namespace()
            ours = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.sched_setaffinity(0, allowed)
    return ours


def pin_running(pid, ticks, pin):
    """Keeps the namespace of a running dockerd (one adopted from an agent that did not keep it)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        die(EXIT_SETUP_FAILED, f"open the mount namespace of pid {pid}: {exc.strerror}")
    if ticks is not None and start_ticks(pid) != ticks:
        die(EXIT_SETUP_FAILED, f"pid {pid} is no longer the dockerd started at tick {ticks}; not pinning it")
    kept = open_pin(pin)
    if kept is not None:
        same = os.fstat(kept).st_ino == os.fstat(fd).st_ino
        os.close(kept)
        if same:
            return
    here = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if older_than(fd, here):
        die(EXIT_SETUP_FAILED, f"the kernel will not keep pid {pid}'s mount namespace from this one: its id "
                               f"{mnt_ns_id(fd)} is not above this namespace's {mnt_ns_id(here)} (ids come in "
                               "per-CPU batches since Linux 6.18; the initial namespace never meets this)")
    os.close(here)
    problem = pin_namespace(fd, pin)
    if problem:
        die(EXIT_SETUP_FAILED, problem)


def open_root_dir(path):
    """An O_PATH descriptor of `path`, created (0711, as containerd makes its own) if missing; it must be
    a directory of root's itself, not a symlink to one."""
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        pass
    except OSError as exc:
        die(EXIT_SETUP_FAILED, f"create {path}: {exc.strerror}")
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        die(EXIT_SETUP_FAILED, f"open {path}: {exc.strerror} (it must be a directory, not a symlink)")
    if os.fstat(fd).st_uid != 0:
        die(EXIT_SETUP_FAILED, f"{path} is not root's; not using it")
    return fd


def hide_system_containerd(own):
    """Binds `own` over /run/containerd in dockerd's namespace: dockerd then starts the payload's containerd
    even where the host runs one (docker.io, containerd.io), instead of silently joining it (sharing its
    "moby" namespace with the host's dockerd, and running containers with the host's runc, past the
    payload's and the runtime wrapper). The folder is the same host folder at every launch, so shims a
    previous dockerd left running (live-restore) are found again."""
    src, dst = open_root_dir(own), open_root_dir(SYSTEM_CONTAINERD_STATE)
    a, b = os.fstat(src), os.fstat(dst)
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):      # a kept namespace has it already
        check(libc.mount(f"/proc/self/fd/{src}".encode(), f"/proc/self/fd/{dst}".encode(), None, MS_BIND, None),
              f"bind {own} over {SYSTEM_CONTAINERD_STATE}")
    os.close(src)
    os.close(dst)


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
    replace_cpuinfo(path)


def replace_cpuinfo(path):
    """In a namespace that may have a bind over /proc/cpuinfo already (a rebind, a kept namespace)."""
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
    personality = cpuinfo = containerd_state = pin = rebind_pid = pin_pid = ticks = None
    probe = False
    args = list(argv)
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--personality":
            personality = args.pop(0)
        elif opt == "--cpuinfo":
            cpuinfo = args.pop(0)
        elif opt == "--containerd-state":
            containerd_state = args.pop(0)
        elif opt == "--namespace":
            pin = args.pop(0)
        elif opt == "--pin":
            pin_pid = int(args.pop(0))
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
    if pin_pid is not None:
        pin_running(pin_pid, ticks, pin)
        return 0
    joined = False
    if pin and (cpuinfo or containerd_state):
        joined = enter_namespace(pin)
    elif cpuinfo or containerd_state:
        private_namespace()
    if cpuinfo:
        (replace_cpuinfo if joined else bind_cpuinfo)(cpuinfo)
    if containerd_state:
        hide_system_containerd(containerd_state)
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
