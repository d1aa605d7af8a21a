"""Payload trees built from input nobody vouches for, without ever writing outside them.

`install-docker` runs as root on a tarball or folder, and the agent copies the payload it runs to keep
a known-good copy. Python's tarfile and shutil.copytree follow what the input says: a symlink member
followed by a file beneath it writes outside the target, a hard link member makes the next member's
bytes, owner and mode land on an outside inode, device nodes and FIFOs are recreated (Debian 12's
Python 3.11.2 has no extraction filters at all). So neither is used. A source is first *planned*: every
member or entry is read and judged, limits included, before anything is written. Then the plan is
*materialized*: each folder created with mkdir(dir_fd=...) and re-opened O_NOFOLLOW|O_DIRECTORY, each
file created O_CREAT|O_EXCL|O_NOFOLLOW relative to its folder's descriptor, its bytes written, then
fchown(0, 0) and fchmod to a mode chosen here. The result holds regular files and folders only.

Stdlib only: `install-docker` runs on the .deb's Python (Debian 12's 3.11.2).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Callable

try:
    import lzma
    _LZMA_ERRORS: tuple = (lzma.LZMAError,)
except ImportError:          # a Python built without it cannot open .tar.xz either
    _LZMA_ERRORS = ()

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What a payload may add up to. Docker's static armhf release is a handful of binaries (the
    Debian 12 stand-ins here add up to 190 MB in 7 files), so 1 GiB and 10,000 entries leave room for
    any real payload and stop a tar bomb long before a disk fills. `keep_free` must stay free on the
    target filesystem after the copy: dockerd's data-root and the agent's state usually share it."""
    max_bytes: int = 1 << 30
    max_entries: int = 10_000            # files and folders, the folders a path implies included
    max_depth: int = 32                  # components in a path (payloads nest 3 deep: usr/local/bin)
    max_header_bytes: int = 1 << 20      # one pax/GNU long-name header (tarfile reads it into memory)
    keep_free: int = 64 << 20


LIMITS = Limits()


class TreeError(Exception):
    """The input cannot be made a safe payload tree; the message names the member and why."""


def show(name: str, limit: int = 200) -> str:
    """A member name as it can be printed on one line (names may hold newlines, escapes or bytes that
    are not UTF-8, which tarfile keeps as surrogates: not printable either), and read (a bomb's may be
    a megabyte long)."""
    shown = name if name.isprintable() else ascii(name)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(name)} characters)"


def file_mode(source_mode: int) -> int:
    """0755 for an executable, 0644 otherwise; never setuid/setgid/sticky, never writable by group or
    others, and never readable by anyone the source did not let read it (a folder may hold a hard link
    to a file that was private)."""
    chosen = 0o755 if source_mode & 0o111 else 0o644
    return chosen & (0o700 | (source_mode & 0o077))


DIR_MODE = 0o755


@dataclass
class Entry:
    parts: tuple[str, ...]
    kind: str                                  # "dir" or "file"
    size: int = 0
    mode: int = DIR_MODE
    opener: Callable | None = None             # file: returns a binary reader of exactly `size` bytes


@dataclass
class Plan:
    """What will be written, judged before anything is."""
    limits: Limits = LIMITS
    entries: list[Entry] = field(default_factory=list)
    total: int = 0
    _kinds: dict = field(default_factory=dict)          # parts -> "dir" | "file" (explicit entries)
    _implicit: set = field(default_factory=set)         # parts of folders only implied by a path
    _all: set = field(default_factory=set)              # every path that will exist, implied folders too

    @property
    def count(self) -> int:
        return len(self._all)

    def add(self, label: str, parts: tuple[str, ...], kind: str, size: int = 0, mode: int = DIR_MODE,
            opener: Callable | None = None) -> None:
        if len(parts) > self.limits.max_depth:
            raise TreeError(f"{label}: {len(parts)} levels deep (the limit for a payload is "
                            f"{self.limits.max_depth})")
        # Folders count too: a bomb of empty folders fills a disk as well (a block each on ext4).
        new = {parts[:i] for i in range(1, len(parts) + 1)} - self._all
        if len(self._all) + len(new) > self.limits.max_entries:
            raise TreeError(f"{label}: more than {self.limits.max_entries} files and folders (the limit for "
                            "a payload)")
        for i in range(1, len(parts)):
            if self._kinds.get(parts[:i]) == "file":
                raise TreeError(f"{label}: {show('/'.join(parts[:i]))} is a file, so nothing can be beneath it")
        was = self._kinds.get(parts)
        if was is not None:
            what = "twice" if was == kind else f"both as a {'folder' if was == 'dir' else 'file'} and as a " \
                                               f"{'folder' if kind == 'dir' else 'file'}"
            raise TreeError(f"{label}: appears {what}")
        if kind == "file" and parts in self._implicit:
            raise TreeError(f"{label}: is a file, but other entries are beneath it")
        if kind == "file":
            self.total += size
            if self.total > self.limits.max_bytes:
                raise TreeError(f"{label}: the payload would exceed {self.limits.max_bytes} bytes "
                                f"(the limit for a payload; {size} bytes declared for this member)")
        self._kinds[parts] = kind
        self._all |= new
        for i in range(1, len(parts)):
            self._implicit.add(parts[:i])
        self.entries.append(Entry(parts, kind, size, file_mode(mode) if kind == "file" else DIR_MODE, opener))


# -- archives ----------------------------------------------------------------------------------------


_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                 tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header's whole body into memory before looking at it (a
    gzip bomb declared as a 10 GB header would take all RAM), and walks back over a negative size
    (base-256 sizes can be negative) forever. Both are refused here, before tarfile acts on them."""

    header_limit = LIMITS.max_header_bytes

    def _proc_member(self, tarfile_):
        if self.size < 0:
            raise TreeError(f"{show(self.name)}: a negative size ({self.size})")
        if self.type in _HEADER_TYPES and self.size > self.header_limit:
            raise TreeError(f"a {self.size}-byte extended header (the limit is {self.header_limit})")
        return super()._proc_member(tarfile_)


# RecursionError: tarfile reads a run of pax headers recursively, one frame each.
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, RecursionError) + _LZMA_ERRORS


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def archive_parts(name: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise TreeError(f"{show(name)}: an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise TreeError(f"{show(name)}: '..' in the path")
    if any("\0" in p for p in parts):
        raise TreeError(f"{ascii(name)}: a NUL byte in the path")
    return parts


def _refusal(m: tarfile.TarInfo) -> str:
    if m.issym():
        return f"a symbolic link (to {show(m.linkname)}); a payload holds only files and folders"
    if m.islnk():
        return f"a hard link (to {show(m.linkname)}); a payload holds only files and folders"
    if m.ischr() or m.isblk():
        kind = "character" if m.ischr() else "block"
        return f"a {kind} device ({m.devmajor},{m.devminor}); a payload holds only files and folders"
    if m.isfifo():
        return "a FIFO; a payload holds only files and folders"
    return f"an entry of unsupported type {m.type!r}; a payload holds only files and folders"


def _expect_end(tar: tarfile.TarFile) -> None:
    """tarfile ends an archive silently at a damaged header, and at the end of a file cut between two
    members; a compressed stream's checksum is only checked once it is read to its end. A complete
    archive ends with two zero blocks, then at most its record padding."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    end = fileobj.read(2 * tarfile.BLOCKSIZE)
    if end != bytes(2 * tarfile.BLOCKSIZE):
        raise TreeError("damaged or truncated after its last readable member (no end-of-archive marker)")
    rest = 0
    while True:
        chunk = fileobj.read(65536)
        if not chunk:
            return
        if chunk.count(0) != len(chunk):
            raise TreeError("data after the end-of-archive marker")
        rest += len(chunk)
        if rest > _CHUNK:
            raise TreeError(f"more than {_CHUNK} bytes after the end-of-archive marker")


class ArchiveSource:
    """A tar archive (plain, gzip, bzip2 or xz: tarfile's own detection) planned member by member."""

    def __init__(self, path: str, limits: Limits = LIMITS):
        self.path = path
        self.limits = limits
        self.tar: tarfile.TarFile | None = None
        self._file = None

    def __enter__(self) -> Plan:
        try:
            return self._plan()
        except BaseException:
            self.__exit__()
            raise

    def _plan(self) -> Plan:
        # O_NONBLOCK: a FIFO given as SOURCE is refused below instead of hanging the open.
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        self._file = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TreeError(f"{self.path}: not a regular file or a folder")
        plan = Plan(self.limits)
        info = type("_TarInfo", (_BoundedTarInfo,), {"header_limit": self.limits.max_header_bytes})
        try:
            self.tar = tarfile.open(fileobj=self._file, mode="r:*", tarinfo=info)
        except tarfile.ReadError:
            # tarfile tried each format; its message lists them over several lines.
            raise TreeError("not a readable tar archive (neither plain tar nor gzip, bzip2 or xz compressed "
                            "tar)") from None
        except _ARCHIVE_ERRORS as exc:
            raise TreeError(f"not a readable tar archive ({_one_line(exc)})") from None
        try:
            for m in self.tar:
                parts = archive_parts(m.name)
                label = show(m.name)
                if m.isdir():
                    if parts:
                        plan.add(label, parts, "dir")
                elif m.isreg():
                    if not parts:
                        raise TreeError(f"{label}: a file where the archive's top folder should be")
                    plan.add(label, parts, "file", m.size, m.mode, self._opener(m))
                else:
                    raise TreeError(f"{label}: {_refusal(m)}")
            if not plan.entries:
                raise TreeError("an empty archive")
            _expect_end(self.tar)
        except _ARCHIVE_ERRORS as exc:
            raise TreeError(f"not a readable tar archive ({_one_line(exc)})") from None
        return plan

    def _opener(self, member: tarfile.TarInfo) -> Callable:
        def open_member():
            try:
                return _Guarded(self.tar.extractfile(member), show(member.name))
            except _ARCHIVE_ERRORS as exc:
                raise TreeError(f"{show(member.name)}: cannot be read ({_one_line(exc)})") from None
        return open_member

    def __exit__(self, *exc) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
        if self._file is not None:
            self._file.close()
            self._file = None


class _Guarded:
    """A member's reader whose decompression or truncation errors name the member."""

    def __init__(self, f, label: str):
        self.f, self.label = f, label

    def read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except _ARCHIVE_ERRORS as exc:
            raise TreeError(f"{self.label}: cannot be read ({_one_line(exc)})") from None

    def close(self) -> None:
        self.f.close()


# -- folders -----------------------------------------------------------------------------------------


def open_beneath(top_fd: int, parts: tuple[str, ...], flags: int, create_dirs: bool = False) -> int:
    """Opens top/parts[0]/.../parts[-1] one component at a time, never through a symlink."""
    fd = os.dup(top_fd)
    try:
        for part in parts[:-1]:
            if create_dirs:
                _mkdir(fd, part)
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def _mkdir(parent_fd: int, name: str) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return f"of unknown type {stat.S_IFMT(mode):o}"


class FolderSource:
    """A folder planned entry by entry (lstat, never following a symlink; the folder named itself may
    be one). `follow` names entries (relative paths) that may be symlinks, copied as the file they
    name: the agent's own payload, whose binaries it has validated, may point at a distribution's."""

    def __init__(self, path: str, limits: Limits = LIMITS, follow: dict[str, str] | None = None):
        self.path = path.rstrip("/") or "/"
        self.limits = limits
        self.follow = follow or {}
        self.top_fd: int | None = None

    def __enter__(self) -> Plan:
        try:
            return self._plan()
        except BaseException:
            self.__exit__()
            raise

    def _plan(self) -> Plan:
        self.top_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        plan = Plan(self.limits)
        pending: list[tuple[str, ...]] = [()]
        while pending:
            parts = pending.pop()
            fd = open_beneath(self.top_fd, parts, _DIR_FLAGS) if parts else os.dup(self.top_fd)
            try:
                names = sorted(os.listdir(fd))
                for name in names:
                    rel = parts + (name,)
                    label = show(os.path.join(self.path, *rel), limit=400)
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        plan.add(label, rel, "dir")
                        pending.append(rel)
                    elif stat.S_ISREG(st.st_mode):
                        plan.add(label, rel, "file", st.st_size, st.st_mode, self._opener(rel, label, st))
                    elif stat.S_ISLNK(st.st_mode) and "/".join(rel) in self.follow:
                        target = self.follow["/".join(rel)]
                        tst = os.stat(target)
                        if not stat.S_ISREG(tst.st_mode):
                            raise TreeError(f"{label}: a symbolic link to {target}, which is {_kind(tst.st_mode)}")
                        plan.add(label, rel, "file", tst.st_size, tst.st_mode, self._target_opener(target, label, tst))
                    elif stat.S_ISLNK(st.st_mode):
                        target = os.readlink(name, dir_fd=fd)
                        raise TreeError(f"{label}: a symbolic link (to {show(target)}); a payload holds only "
                                        "files and folders")
                    else:
                        raise TreeError(f"{label}: {_kind(st.st_mode)}; a payload holds only files and folders")
            finally:
                os.close(fd)
        return plan

    def _opener(self, rel: tuple[str, ...], label: str, planned: os.stat_result) -> Callable:
        def open_entry():
            fd = open_beneath(self.top_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
            return _checked_reader(fd, label, planned)
        return open_entry

    def _target_opener(self, target: str, label: str, planned: os.stat_result) -> Callable:
        def open_target():
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            return _checked_reader(fd, label, planned)
        return open_target

    def __exit__(self, *exc) -> None:
        if self.top_fd is not None:
            os.close(self.top_fd)
            self.top_fd = None


def _checked_reader(fd: int, label: str, planned: os.stat_result):
    """The entry opened for copying is still the regular file that was planned (it may have been
    swapped for a FIFO or another file meanwhile)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (planned.st_dev, planned.st_ino):
        os.close(fd)
        raise TreeError(f"{label}: changed while it was being copied")
    return os.fdopen(fd, "rb")


# -- writing -----------------------------------------------------------------------------------------


def _ensure_space(parent: str, plan: Plan) -> None:
    vfs = os.statvfs(parent)
    free = vfs.f_bavail * vfs.f_frsize
    # Each file may take a block more than its bytes; folders take a block each.
    need = plan.total + plan.count * vfs.f_frsize + plan.limits.keep_free
    if need > free:
        raise OSError(errno.ENOSPC, f"not enough space in {parent}: {need} bytes needed "
                                    f"({plan.total} of payload, {plan.limits.keep_free} kept free), {free} free")


def _write_file(dest_fd: int, entry: Entry, label: str) -> None:
    src = entry.opener()
    try:
        fd = open_beneath(dest_fd, entry.parts, os.O_WRONLY | os.O_CREAT | os.O_EXCL, create_dirs=True)
        try:
            left = entry.size
            while left:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise TreeError(f"{label}: shorter than the {entry.size} bytes planned (changed or truncated)")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(chunk)
            if src.read(1):
                raise TreeError(f"{label}: longer than the {entry.size} bytes planned (changed while copied)")
            # chown first: it clears setuid/setgid, then the mode is exactly the one chosen.
            os.fchown(fd, 0, 0)
            os.fchmod(fd, entry.mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        src.close()


def materialize(plan: Plan, dest: str) -> None:
    """Writes the plan into `dest`, which must not exist; its parent must. On any failure `dest` is
    removed again and the error re-raised: nothing but `dest` is ever written."""
    dest = dest.rstrip("/")
    parent = os.path.dirname(dest) or "."
    _ensure_space(parent, plan)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        name = os.path.basename(dest)
        # 0700 while it fills: nobody sees (or execs) a half-written payload.
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        try:
            top = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                for entry in plan.entries:
                    label = "/".join(entry.parts)
                    if entry.kind == "dir":
                        _make_dirs(top, entry.parts)
                    else:
                        _write_file(top, entry, label)
                os.fchown(top, 0, 0)
                os.fchmod(top, DIR_MODE)
                os.fsync(top)
            finally:
                os.close(top)
        except BaseException:
            remove_tree(dest)
            raise
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)


def _make_dirs(top_fd: int, parts: tuple[str, ...]) -> None:
    fd = os.dup(top_fd)
    try:
        for part in parts:
            _mkdir(fd, part)
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Removes what is at `path` (a tree, a file or a symlink itself, never what a symlink names)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # shutil.rmtree works through directory descriptors here (Linux): symlinks inside are
        # unlinked, never followed.
        shutil.rmtree(path)
    else:
        os.unlink(path)


def audit(path: str) -> str | None:
    """Why `path` is not a tree this module could have written (regular files and folders only,
    root-owned, no setuid/setgid/sticky, not writable by group or others, single links), or None."""
    top = os.lstat(path)
    if not stat.S_ISDIR(top.st_mode):
        return f"{path} is {_kind(top.st_mode)}, not a folder"
    for folder, dirs, files in os.walk(path):
        for name in [""] + dirs + files:
            p = os.path.join(folder, name) if name else folder
            st = os.lstat(p)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                return f"{p} is {_kind(st.st_mode)}"
            if st.st_uid != 0 or st.st_gid != 0:
                return f"{p} is owned by {st.st_uid}:{st.st_gid}, not root"
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH):
                return f"{p} has mode {stat.S_IMODE(st.st_mode):04o}"
            if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
                return f"{p} has {st.st_nlink} hard links"
    return None


def source(path: str, limits: Limits = LIMITS):
    """The plan-maker for what `install-docker` was given: a folder or an archive file."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        return FolderSource(path, limits)
    return ArchiveSource(path, limits)


def copy_tree(src: str, dest: str, limits: Limits = LIMITS, follow: dict[str, str] | None = None) -> None:
    with FolderSource(src, limits, follow) as plan:
        materialize(plan, dest)
