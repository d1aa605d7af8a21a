"""What the docker shim records, and an incremental reader for it.

The shim appends one line per invocation (format version 1, space separated):

    1 <epoch_seconds|-> <class> <injected 0|1> <exit_status|-> <duration_seconds|->

class is one of SHIM_CLASSES; exit status and duration are only known for builds (the shim runs
them as a child), every other command is exec'd after its line is written. The epoch is `-` when
the shim could not read a clock without forking (see agent.shim); `ShimRecord.time` is then None.

The reader tails the file: it keeps its offset, keeps a partial last line for the next read,
counts and skips malformed lines, and rotates the file itself when it grows past `max_bytes`
(rename to `<path>.1`, read the renamed file to its end, continue on a fresh file from 0). It
never follows a symlink at the records path.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass

RECORD_VERSION = "1"
# unresolved: a run/create passed through without the mount because the shim could not tell
# which daemon it goes to (agent.shim: an unreadable config.json or context).
SHIM_CLASSES = ("run", "create", "build", "exec", "other", "unresolved")

DEFAULT_MAX_BYTES = 1 << 20
# A line longer than this is garbage (a real one is < 60 bytes); dropping it bounds memory.
MAX_LINE_BYTES = 4096


@dataclass(frozen=True)
class ShimRecord:
    time: float | None             # epoch seconds, None when the shim recorded `-`
    klass: str                     # one of SHIM_CLASSES
    injected: bool                 # the cpuinfo mount was inserted
    exit_code: int | None          # builds only
    duration_seconds: float | None  # builds only


RECORDS_FILE = "shim-records"


def records_path(config) -> str:
    return os.path.join(config.agent.run_dir, RECORDS_FILE)


def ensure_records_file(path: str, store=None, docker_group: bool = True) -> str | None:
    """The file the shim appends to, as whoever runs docker: root, or members of the `docker` group.
    Created with an explicit owner and mode (the shim never creates it: a missing run_dir just means no
    record), and kept so: a changed owner or mode is fixed in place, anything but a regular file at
    the path (a symlink would make root's appends write wherever it points) is moved to the displaced
    store and replaced. Returns the problem that remains, None when the file is right."""
    try:
        gid = grp.getgrnam("docker").gr_gid if docker_group else 0
    except KeyError:
        gid = 0
    mode = 0o620 if gid else 0o600
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            if store is None:
                return f"{path} is not a regular file"
            store.displace(os.path.basename(path), path, "replaced", keep_as_original=False)
            st = None
        if st is None:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        elif (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, gid, mode):
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            return None
        try:
            os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot create or fix {path}: {exc.strerror or exc}"
    return None


def parse_record(line: bytes) -> ShimRecord | None:
    """None when the line is not a well-formed version 1 record."""
    fields = line.split(b" ")
    if len(fields) != 6 or fields[0] != RECORD_VERSION.encode():
        return None
    try:
        epoch, klass, injected, exit_code, duration = (f.decode("ascii") for f in fields[1:])
        record = ShimRecord(
            time=None if epoch == "-" else _non_negative(float(epoch)),
            klass=klass,
            injected={"0": False, "1": True}[injected],
            exit_code=None if exit_code == "-" else int(exit_code),
            duration_seconds=None if duration == "-" else _non_negative(float(duration)),
        )
    except (UnicodeDecodeError, ValueError, KeyError):
        return None
    if klass not in SHIM_CLASSES or (record.exit_code is not None and not 0 <= record.exit_code <= 255):
        return None
    return record


def _non_negative(value: float) -> float:
    if not value >= 0 or value == float("inf"):     # also rejects nan
        raise ValueError(value)
    return value


@dataclass
class _Tail:
    fd: int
    ino: tuple[int, int]
    offset: int = 0
    partial: bytes = b""


class ShimRecordReader:
    """Reads the records appended since the previous `read_new()`. Not thread-safe: one owner."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES, parse=None):
        self.path = path
        self._parse = parse or parse_record     # the same tail for the runtime wrapper's records
        self.max_bytes = max_bytes
        self.malformed = 0          # lines counted and skipped since the reader was made
        self._current: _Tail | None = None
        # The file rotated (or replaced) away: a shim that opened it just before the rename may
        # still append, so it is read once more on the next call before being let go.
        self._retired: _Tail | None = None

    def read_new(self) -> list[ShimRecord]:
        records: list[ShimRecord] = []
        if self._retired is not None:
            self._drain(self._retired, records)
            if self._retired.partial:
                self.malformed += 1     # a finished file will never complete this line
            os.close(self._retired.fd)
            self._retired = None
        if self._current is not None:
            self._drain(self._current, records)     # before _follow may retire it
        self._follow()
        if self._current is not None:
            self._drain(self._current, records)
            if self._current.offset > self.max_bytes:
                self._rotate(records)
        return records

    def close(self) -> None:
        for tail in (self._current, self._retired):
            if tail is not None:
                os.close(tail.fd)
        self._current = self._retired = None

    def _follow(self) -> None:
        """Opens the file at `path`; starts over when it was truncated or replaced."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        ino = (st.st_dev, st.st_ino)
        current = self._current
        if current is not None and current.ino == ino:
            if st.st_size < current.offset:
                current.offset, current.partial = 0, b""
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        if current is not None:
            self._retire()
        self._current = _Tail(fd, ino)

    def _retire(self) -> None:
        if self._retired is not None:
            os.close(self._retired.fd)
        self._retired, self._current = self._current, None

    def _drain(self, tail: _Tail, records: list[ShimRecord]) -> None:
        while chunk := os.pread(tail.fd, 65536, tail.offset):
            tail.offset += len(chunk)
            *lines, tail.partial = (tail.partial + chunk).split(b"\n")
            for line in lines:
                if not line:
                    continue
                record = self._parse(line)
                if record is None:
                    self.malformed += 1
                else:
                    records.append(record)
            if len(tail.partial) > MAX_LINE_BYTES:
                self.malformed += 1
                tail.partial = b""

    def _rotate(self, records: list[ShimRecord]) -> None:
        current = self._current
        try:
            st = os.fstat(current.fd)
            os.rename(self.path, self.path + ".1")
        except OSError:
            return
        self._recreate(st)
        self._drain(current, records)   # appended between the last read and the rename
        self._retire()
        self._follow()

    def _recreate(self, st: os.stat_result) -> None:
        """The fresh file gets the owner and mode of the one rotated away, so every user the
        agent let append still can (a shim would otherwise create it with its caller's umask)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return      # a shim created it first; the agent's file check owns its mode
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
