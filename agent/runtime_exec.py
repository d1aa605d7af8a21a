"""The runtime wrapper's spec editor: adds the hijacked cpuinfo to a container's or build step's OCI
spec, then execs the payload's real runc.

The wrapper (`runc` first in dockerd's PATH, agent/runtime.py renders it) runs this for `create`
(containerd-shim-runc-v2: `docker run`, every Engine-API client, the classic builder) and `run`
(BuildKit's RUN steps) only, as

    python -I -S -c 'import sys; sys.path[:0] = [FOLDER]; import runtime_exec; runtime_exec.main(sys.argv[1:])'
        REAL_RUNC CPUINFO RECORDS RUNC-ARGS...

and execs everything else straight to the real runc (../shared/reference/runtime.md, "Who runs runc").
Self-contained and standard-library only, like launch.py: it starts in a fresh interpreter on every
container start, so it imports nothing it can avoid (`json` pulls in `re`: +6 ms per container; the
C codec `_json` it wraps costs 0.2 ms), and it is imported as a module rather than run as a script, so
its cached bytecode is used (a script is compiled at every start: +1.5 ms). The interpreter's own
start, about 6 ms here, is the floor of what it adds to a container start.

It fails open: whatever goes wrong (no bundle, unreadable or malformed config.json, a read-only
bundle, a hostile rootfs), runc is exec'd with the arguments it was given and the spec untouched, and
one record says so. A container is never refused because of the wrapper. It never forks: the record is
one append, then exec.

The edit: `{"destination": "/proc/cpuinfo", "type": "bind", "source": CPUINFO, "options": ["rbind",
"ro"]}` appended to `mounts` (after the /proc entry; runc allows /proc/cpuinfo as a target, its lxcfs
allow-list). Not when the spec already mounts something at /proc/cpuinfo (the CLI shim's mount, a
user's lxcfs), and not for a 64-bit Arm userland (an arm64 image on the armhf daemon must keep the
kernel's cpuinfo): the spec does not carry the image's platform, so the ELF header of the container's
first program, read inside its rootfs, decides.

Record lines (RECORDS, one append each; agent/runtime.py reads them): `1 <epoch> <result> <detail>`,
result one of injected, own-mount, arm64, failed; detail `-` or the failure's exception type.
"""

import os
import sys
import time

import _json

MOUNT_TARGET = "/proc/cpuinfo"
RECORD_VERSION = "1"
# runc's global options that take a value (runc main.go); anything else before the subcommand is a flag.
VALUE_OPTIONS = ("--root", "--log", "--log-format", "--criu", "--rootless")
EDITED = ("create", "run")
MAX_SPEC_BYTES = 16 << 20
MAX_SYMLINKS = 40
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EM_AARCH64 = 183
ELFCLASS64 = 2


class SpecError(Exception):
    pass


# -- JSON through the C codec (the json package's own accelerator) ---------------------------------


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        raise SpecError(f"JSON constant {name} is not allowed in a spec")


_scan = _json.make_scanner(_Context())
_encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, False)


def loads(text: str):
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise SpecError("not JSON") from None
    if text[end:].strip(" \t\r\n"):
        raise SpecError("trailing data after the JSON document")
    return value


def dumps(value) -> str:
    return "".join(_encode(value, 0))


# -- runc's command line ---------------------------------------------------------------------------


def subcommand_at(args: list) -> int | None:
    """Index of runc's subcommand in its arguments (global options skipped), None when there is none."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            return i
        name = "--" + arg.lstrip("-").split("=", 1)[0]
        if name in VALUE_OPTIONS and "=" not in arg:
            i += 1
        i += 1
    return None


def bundle_of(args: list, at: int) -> str:
    """The bundle folder of `create`/`run`: `--bundle DIR`, `-b DIR`, `--bundle=DIR`, else the
    current folder (runc's default)."""
    rest = args[at + 1:]
    for i, arg in enumerate(rest):
        if arg == "--":
            break
        for flag in ("--bundle", "-bundle", "-b", "--b"):
            if arg == flag and i + 1 < len(rest):
                return rest[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
    return "."


# -- the decision ----------------------------------------------------------------------------------


def has_cpuinfo_mount(spec: dict) -> bool:
    for mount in spec.get("mounts") or ():
        if isinstance(mount, dict) and isinstance(mount.get("destination"), str):
            # runc cleans destinations (filepath.Clean): /proc//cpuinfo/ is /proc/cpuinfo too. (POSIX
            # normpath keeps a leading "//", Go's Clean does not.)
            if "/" + os.path.normpath(mount["destination"]).lstrip("/") == MOUNT_TARGET:
                return True
    return False


def in_root(root: str, path: str) -> str | None:
    """`path` resolved inside `root` as the container will see it: absolute symlinks restart at root,
    `..` never climbs above it, at most MAX_SYMLINKS links. None when it leads nowhere."""
    pending = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        try:
            target = os.readlink(here)
        except OSError:
            done.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            return None
        if target.startswith("/"):
            done = []
        pending[:0] = [p for p in target.split("/") if p and p != "."]
    return os.path.join(root, *done)


def _head(path: str, size: int) -> bytes | None:
    """The first bytes of a regular file; never blocks (a FIFO planted as /bin/sh), follows a link, or
    opens a device (an image may carry /dev/watchdog, whose mere open arms a reboot)."""
    try:
        if (os.lstat(path).st_mode & 0o170000) != 0o100000:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            return None
        return os.read(fd, size)
    finally:
        os.close(fd)


def program_of(spec: dict) -> tuple[str, str] | None:
    """(the container's first program as written in the spec, the PATH it is looked up with)."""
    process = spec.get("process") or {}
    args = process.get("args") or []
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        return None
    # `docker run --init`: docker-init (bind-mounted from the payload, 32-bit whatever the image is)
    # runs the real command after `--`.
    if os.path.basename(args[0]) == "docker-init" and "--" in args and args.index("--") + 1 < len(args):
        args = args[args.index("--") + 1:]
    path = DEFAULT_PATH
    for item in process.get("env") or ():
        if isinstance(item, str) and item.startswith("PATH="):
            path = item[5:]
    return args[0], path


def elf_of(rootfs: str, program: str, search_path: str, depth: int = 0) -> tuple[int, int] | None:
    """(ELF class, e_machine) of what the container runs first; a `#!` script is judged by its
    interpreter. None when it cannot be told (missing, not ELF, unreadable)."""
    if "/" in program:
        candidates = [program if program.startswith("/") else "/" + program]
    else:
        candidates = [os.path.join(d or ".", program) for d in search_path.split(":")]
    for candidate in candidates:
        resolved = in_root(rootfs, candidate)
        head = _head(resolved, 256) if resolved else None
        if not head:
            continue
        if head[:4] == b"\x7fELF" and len(head) >= 20:
            return head[4], int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
        if head[:2] == b"#!" and depth < 2:
            line = head[2:].split(b"\n", 1)[0].strip().split()
            if line:
                return elf_of(rootfs, line[0].decode(errors="replace"), search_path, depth + 1)
        return None
    return None


def decide(spec: dict, bundle: str) -> str:
    """injected | own-mount | arm64: what the wrapper does with this spec."""
    if has_cpuinfo_mount(spec):
        return "own-mount"
    root = (spec.get("root") or {}).get("path")
    found = program_of(spec)
    if isinstance(root, str) and found is not None:
        rootfs = root if root.startswith("/") else os.path.join(bundle, root)
        elf = elf_of(rootfs, *found)
        if elf == (ELFCLASS64, EM_AARCH64):
            return "arm64"
    return "injected"


def edit(bundle: str, cpuinfo: str) -> str:
    path = os.path.join(bundle, "config.json")
    # O_NONBLOCK: a FIFO there must not hold the container's start (fstat then refuses it).
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise SpecError("config.json is not a regular file")
        if st.st_size > MAX_SPEC_BYTES:
            raise SpecError("config.json is too large")
        raw = os.read(fd, MAX_SPEC_BYTES + 1)
    finally:
        os.close(fd)
    spec = loads(raw.decode("utf-8"))
    if not isinstance(spec, dict):
        raise SpecError("the spec is not a JSON object")
    mounts = spec.get("mounts")
    if mounts is not None and not isinstance(mounts, list):
        raise SpecError("mounts is not a list")
    result = decide(spec, bundle)
    if result != "injected":
        return result
    spec["mounts"] = (mounts or []) + [{"destination": MOUNT_TARGET, "type": "bind", "source": cpuinfo,
                                         "options": ["rbind", "ro"]}]
    data = dumps(spec).encode()
    tmp = os.path.join(bundle, f".config.json.armhf-agent-{os.getpid()}")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, st.st_mode & 0o777)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
        os.fchown(out, st.st_uid, st.st_gid)
    except BaseException:
        os.close(out)
        os.unlink(tmp)
        raise
    os.close(out)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return result


def record(path: str, result: str, detail: str) -> None:
    line = f"{RECORD_VERSION} {int(time.time())} {result} {detail}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if (os.fstat(fd).st_mode & 0o170000) == 0o100000:
            os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: list) -> None:
    runc, cpuinfo, records, args = argv[0], argv[1], argv[2], argv[3:]
    detail = "-"
    try:
        at = subcommand_at(args)
        if at is None or args[at] not in EDITED:
            raise SpecError("no create/run subcommand")
        result = edit(bundle_of(args, at), cpuinfo)
    except Exception as exc:  # fail open: runc runs with the spec as it was
        result, detail = "failed", type(exc).__name__
    record(records, result, detail)
    os.execv(runc, [runc, *args])


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.stderr.write("usage: runtime_exec.py REAL_RUNC CPUINFO RECORDS RUNC-ARGS...\n")
        sys.exit(2)
    main(sys.argv[1:])
