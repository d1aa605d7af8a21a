"""The filesystem facade for files the agent manages: atomic writes that never follow a symlink,
and a bounded store for whatever a repair displaces."""

from __future__ import annotations

import errno
import os
import shutil
import time


def atomic_write(path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0, before_rename=None) -> None:
    """Temp file in the same folder (O_EXCL|O_NOFOLLOW), owner and mode set on the descriptor, fsync,
    rename over `path` (rename replaces a symlink itself, never its target), fsync the folder.
    On any failure the old file is left as it was and the temp file is removed. `before_rename` runs
    once the new content is safely on disk (a repair moves the old thing aside there, so a full disk
    never costs the old file)."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.armhf-agent-{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_private_dir(path: str, mode: int = 0o755) -> None:
    """A folder of the agent's own: created if missing, root-owned with `mode`, fixed in place on the
    folder itself (O_NOFOLLOW|O_DIRECTORY: a symlink or a file there raises, never followed). Missing
    folders above it are made root's 0755."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (0, 0, mode):
            os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def fix_owner_and_mode(path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
    """root-owned with `mode`, on the file itself (O_NOFOLLOW: never a symlink's target)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_nofollow(path: str, limit: int) -> bytes | None:
    """The file's bytes (at most limit+1), or None if it is not a regular file we can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class DisplacedStore:
    """`<state_dir>/displaced/`: things a repair moved out of the way, newest kept, oldest dropped
    beyond `keep` per name. The first foreign file ever displaced from a path is kept apart as
    `<name>.original` (never rotated): it is what `uninstall-files` puts back (e.g. a docker client
    that sat where the shim now is)."""

    def __init__(self, state_dir: str, keep: int = 10, clock=time):
        self.root = os.path.join(state_dir, "displaced")
        self.keep = keep
        self.clock = clock

    def _ensure(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def original(self, name: str) -> str:
        return os.path.join(self.root, f"{name}.original")

    def displace(self, name: str, path: str, reason: str, keep_as_original: bool) -> str:
        """Moves `path` (file, symlink or folder) into the store; returns where it went."""
        self._ensure()
        if keep_as_original and not os.path.lexists(self.original(name)):
            dest = self.original(name)
        else:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock.time()))
            dest = os.path.join(self.root, f"{name}.{stamp}.{reason}")
            n = 1
            while os.path.lexists(dest):
                n += 1
                dest = os.path.join(self.root, f"{name}.{stamp}.{reason}.{n}")
        try:
            os.rename(path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(path, dest)
        self._prune(name)
        return dest

    def restore(self, kept: str, path: str) -> None:
        """Puts a displaced thing back at `path` (uninstall). The store may be on another filesystem
        than `path` (/var vs /usr/local): across filesystems it is copied into the folder first, under
        a temporary name, and renamed into place, so `path` is never half-written and `kept` is
        removed only once the copy is in place (issue 12: a bare rename raised EXDEV at `apt purge`
        and the original docker client was lost)."""
        try:
            os.rename(kept, path)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.armhf-agent-{os.getpid()}.restore")
        st = os.lstat(kept)
        try:
            if os.path.islink(kept):
                os.symlink(os.readlink(kept), tmp)
            elif os.path.isdir(kept):
                shutil.copytree(kept, tmp, symlinks=True)
            else:
                shutil.copy2(kept, tmp, follow_symlinks=False)
            os.lchown(tmp, st.st_uid, st.st_gid)
            os.rename(tmp, path)
        except BaseException:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        if os.path.isdir(kept) and not os.path.islink(kept):
            shutil.rmtree(kept)
        else:
            os.unlink(kept)

    def entries(self, name: str) -> list[str]:
        """Oldest displacement first. Not by name: stamps have one-second resolution, so names from the
        same second sort by reason (and `.10` before `.2`). rename(2) sets the moved inode's ctime, so
        ctime is when it was displaced."""
        try:
            names = [n for n in os.listdir(self.root) if n.startswith(name + ".") and n != f"{name}.original"]
        except FileNotFoundError:
            return []
        when = {}
        for n in names:
            try:
                when[n] = os.lstat(os.path.join(self.root, n)).st_ctime_ns
            except FileNotFoundError:
                continue
        return sorted(when, key=lambda n: (when[n], n))

    def _prune(self, name: str) -> None:
        for old in self.entries(name)[:-self.keep]:
            p = os.path.join(self.root, old)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
