"""The runtime wrapper's spec editor: adds the hijacked cpuinfo to a container's or build step's OCI
spec, then execs the payload's real runc.

The wrapper (`runc` first in dockerd's PATH, agent/runtime.py renders it) runs this for `create`
(containerd-shim-runc-v2: `docker run`, every Engine-API client, the classic builder) and `run`
(BuildKit's RUN steps) only, as

    python -I -S -c 'import sys; sys.path[:0] = [FOLDER]; import runtime_exec; runtime_exec.main(sys.argv[1:])'
        daemon|host REAL_RUNC CPUINFO CPUINFO_V6|- RECORDS RUNC-ARGS...

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


def _open_regular(path: str) -> int | None:
    """A descriptor of a regular file, or None; never blocks (a FIFO planted as /bin/sh), follows a
    link, or opens a device (an image may carry /dev/watchdog, whose mere open arms a reboot)."""
    try:
        if (os.lstat(path).st_mode & 0o170000) != 0o100000:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
        os.close(fd)
        return None
    return fd


def _head(path: str, size: int) -> bytes | None:
    """The first bytes of a regular file (see _open_regular)."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
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


def elf_of(rootfs: str, program: str, search_path: str, depth: int = 0) -> tuple[int, int, str] | None:
    """(ELF class, e_machine, the file) of what the container runs first; a `#!` script is judged by
    its interpreter. None when it cannot be told (missing, not ELF, unreadable)."""
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
            return head[4], int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"), resolved
        if head[:2] == b"#!" and depth < 2:
            line = head[2:].split(b"\n", 1)[0].strip().split()
            if line:
                return elf_of(rootfs, line[0].decode(errors="replace"), search_path, depth + 1)
        return None
    return None


def _uleb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80 or shift > 63:
            return value, at
    raise SpecError("truncated ULEB128")


def arm_cpu_arch(path: str) -> int | None:
    """Tag_CPU_arch of a 32-bit little-endian ARM ELF (its .ARM.attributes section, "aeabi"
    subsection, file-scope attributes: ARM IHI 0045, "Addenda to the ARM ELF"): 6-9 are ARMv6 flavours,
    10 ARMv7. The spec does not carry the image's variant; the program's own build does. None when the
    file says nothing (or says it in a way this reader does not follow)."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        head = os.pread(fd, 52, 0)
        if len(head) < 52 or head[:6] != b"\x7fELF\x01\x01":
            return None
        shoff = int.from_bytes(head[32:36], "little")
        shentsize, shnum = int.from_bytes(head[46:48], "little"), int.from_bytes(head[48:50], "little")
        if shentsize != 40 or not 0 < shnum <= 4096:
            return None
        table = os.pread(fd, shentsize * shnum, shoff)
        for i in range(len(table) // 40):
            entry = table[i * 40:(i + 1) * 40]
            if int.from_bytes(entry[4:8], "little") != 0x70000003:        # SHT_ARM_ATTRIBUTES
                continue
            offset, size = int.from_bytes(entry[16:20], "little"), int.from_bytes(entry[20:24], "little")
            if not 0 < size <= 65536:
                return None
            return _cpu_arch_tag(os.pread(fd, size, offset))
        return None
    except (OSError, SpecError, IndexError):
        return None
    finally:
        os.close(fd)


def _cpu_arch_tag(data: bytes) -> int | None:
    if not data or data[0:1] != b"A":
        return None
    at = 1
    while at + 4 <= len(data):
        length = int.from_bytes(data[at:at + 4], "little")
        end = at + length
        if length < 5 or end > len(data):
            return None
        vendor_end = data.index(b"\0", at + 4, end)
        if data[at + 4:vendor_end] == b"aeabi":
            sub = vendor_end + 1
            while sub + 5 <= end:
                tag, size = data[sub], int.from_bytes(data[sub + 1:sub + 5], "little")
                if size < 5 or sub + size > end:
                    return None
                if tag == 1:                                   # Tag_File: attributes of the whole file
                    pos, stop = sub + 5, sub + size
                    while pos < stop:
                        attr, pos = _uleb(data, pos)
                        if attr in (4, 5, 67):                 # NTBS-valued (CPU names, conformance)
                            pos = data.index(b"\0", pos, stop) + 1
                        elif attr == 32:                       # Tag_compatibility: ULEB then NTBS
                            _, pos = _uleb(data, pos)
                            pos = data.index(b"\0", pos, stop) + 1
                        else:
                            value, pos = _uleb(data, pos)
                            if attr == 6:                      # Tag_CPU_arch
                                return value
                sub += size
        at = end
    return None


# -- the decision ------------------------------------------------------------------------------------

DAEMON, HOST = "daemon", "host"
ELFCLASS32 = 1
EM_ARM = 40
ARMV6_LAST = 9               # Tag_CPU_arch 6 (v6), 7 (v6KZ), 8 (v6T2), 9 (v6K); 10 is v7


def userland_of(spec: dict, bundle: str) -> tuple[int, int, str] | None:
    root = (spec.get("root") or {}).get("path")
    found = program_of(spec)
    if not isinstance(root, str) or found is None:
        return None
    return elf_of(root if root.startswith("/") else os.path.join(bundle, root), *found)


def decide(spec: dict, bundle: str, mode: str = DAEMON, cpuinfo: str = "", cpuinfo_v6: str = ""
           ) -> tuple[str, str | None, str | None]:
    """(result, personality to run runc under or None, the cpuinfo file to mount or None).

    The armhf daemon (mode daemon, under PER_LINUX32 already): every container gets the hijacked file,
    except an arm64 userland, which keeps the kernel's cpuinfo and is given back PER_LINUX (`uname -m`
    aarch64, not armv8l). The host's own 64-bit daemon (mode host): only a 32-bit userland is changed:
    PER_LINUX32 (armv8l) and the ARMv7 file, or the ARMv6 one for a program built for ARMv6 (its
    Tag_CPU_arch); everything else is left exactly as it is."""
    found = userland_of(spec, bundle)
    own = has_cpuinfo_mount(spec)
    if mode == DAEMON:
        if found is not None and found[:2] == (ELFCLASS64, EM_AARCH64):
            return "arm64", "linux64", None
        return ("own-mount", None, None) if own else ("injected", None, cpuinfo)
    if found is None or found[0] != ELFCLASS32:
        return "arm64", None, None
    if own:
        return "own-mount", "linux32", None
    if cpuinfo_v6 and found[1] == EM_ARM:
        arch = arm_cpu_arch(found[2])
        if arch is not None and arch <= ARMV6_LAST:
            return "injected-v6", "linux32", cpuinfo_v6
    return "injected", "linux32", cpuinfo


def read_spec(bundle: str) -> tuple[dict, os.stat_result]:
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
    return spec, st


def edit(bundle: str, cpuinfo: str, mode: str = DAEMON, cpuinfo_v6: str = "") -> tuple[str, str | None]:
    """Edits the bundle's spec; returns (result, personality or None)."""
    spec, st = read_spec(bundle)
    result, persona, source = decide(spec, bundle, mode, cpuinfo, cpuinfo_v6)
    if source is None:
        return result, persona
    spec["mounts"] = (spec.get("mounts") or []) + [{"destination": MOUNT_TARGET, "type": "bind", "source": source,
                                                    "options": ["rbind", "ro"]}]
    data = dumps(spec).encode()
    path = os.path.join(bundle, "config.json")
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
    return result, persona


# runc exec's options that take a value (runc exec.go); the first other word is the container's id.
EXEC_VALUE_OPTIONS = ("--console-socket", "--cwd", "--env", "-e", "--user", "-u", "--additional-gids", "-g",
                      "--process", "-p", "--process-label", "--apparmor", "--cap", "-c", "--preserve-fds",
                      "--pid-file", "--cgroup")


def exec_personality(args: list, at: int) -> str | None:
    """`runc exec` into a container the host daemon runs: a 32-bit userland's process gets PER_LINUX32
    too (the container's init has it, an exec'd process would not). The container's bundle comes from
    runc's own state (`<root>/<id>/state.json`, its `bundle=` label)."""
    root = "/run/runc"
    for i, arg in enumerate(args[:at]):
        if arg in ("--root", "-root") and i + 1 < at:
            root = args[i + 1]
        elif arg.startswith(("--root=", "-root=")):
            root = arg.split("=", 1)[1]
    rest, cid = args[at + 1:], None
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg in EXEC_VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        cid = arg
        break
    if not cid or "/" in cid or cid in (".", ".."):
        return None
    fd = os.open(os.path.join(root, cid, "state.json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            return None
        state = loads(os.read(fd, MAX_SPEC_BYTES).decode("utf-8"))
    finally:
        os.close(fd)
    labels = ((state or {}).get("config") or {}).get("labels") or []
    bundle = next((label[7:] for label in labels if isinstance(label, str) and label.startswith("bundle=")), None)
    if not bundle:
        return None
    spec, _ = read_spec(bundle)
    found = userland_of(spec, bundle)
    return "linux32" if found is not None and found[0] == ELFCLASS32 else None


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


# setarch (util-linux, on every Debian) sets the personality and execs: the editor never calls
# personality(2) itself (ctypes costs 3 ms per container) and never forks.
SETARCH = "/usr/bin/setarch"


def run_runc(runc: str, args: list, persona: str | None) -> None:
    if persona and os.access(SETARCH, os.X_OK):
        os.execv(SETARCH, [SETARCH, persona, runc, *args])
    os.execv(runc, [runc, *args])


def main(argv: list) -> None:
    """argv: MODE REAL_RUNC CPUINFO CPUINFO_V6|- RECORDS RUNC-ARGS..."""
    mode, runc, cpuinfo, cpuinfo_v6, records, args = argv[0], argv[1], argv[2], argv[3], argv[4], argv[5:]
    cpuinfo_v6 = "" if cpuinfo_v6 == "-" else cpuinfo_v6
    persona = None
    try:
        at = subcommand_at(args)
        sub = args[at] if at is not None else None
        if sub == "exec" and mode == HOST:
            try:
                persona = exec_personality(args, at)
            except Exception:  # noqa: BLE001 - an exec is never refused: no personality then
                persona = None
            run_runc(runc, args, persona)
        if sub not in EDITED:
            raise SpecError("no create/run subcommand")
        result, persona = edit(bundle_of(args, at), cpuinfo, mode, cpuinfo_v6)
        detail = "-"
    except Exception as exc:  # fail open: runc runs with the spec as it was
        result, detail = "failed", type(exc).__name__
    record(records, result, detail)
    run_runc(runc, args, persona)


if __name__ == "__main__":
    if len(sys.argv) < 6:
        sys.stderr.write("usage: runtime_exec.py daemon|host REAL_RUNC CPUINFO CPUINFO_V6|- RECORDS RUNC-ARGS...\n")
        sys.exit(2)
    main(sys.argv[1:])
