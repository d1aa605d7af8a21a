"""How tests, benchmarks (bench/) and fault cases (faults/) tamper with a managed file: one home for
each kind of drift the agent repairs (agent/state.py REPAIR_REASONS).

Each tamper takes the path and its current (right) content and returns a check of what the displaced
store must then hold for it (None: nothing is displaced: the path was empty, or only its owner or mode
was wrong and the repair fixes it in place). Every change lands in one step (an append, a rename,
renameat2 RENAME_EXCHANGE), so the agent sees exactly one kind of drift, never a half-made one.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
EDIT = b"edited by hand\n"


def rename_exchange(a: Path, b: Path) -> None:
    """Swaps two names atomically: a folder takes a file's place without the path ever being missing."""
    if _libc.renameat2(_AT_FDCWD, str(a).encode(), _AT_FDCWD, str(b).encode(), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def plant(path: Path, make) -> None:
    """Builds the intruder under a hidden name in the same folder, then renames it into place."""
    tmp = path.parent / f".planted-{path.name}"
    make(tmp)
    os.rename(tmp, path)


def missing(path: Path, content: bytes = b""):
    path.unlink()
    return None


def edited(path: Path, content: bytes = b""):
    with open(path, "ab") as f:      # in place, one write: the marker stays, so the agent sees "content"
        f.write(EDIT)
    return lambda kept: kept.read_bytes() == content + EDIT


def replaced(path: Path, content: bytes = b""):
    true = Path("/bin/true").read_bytes()
    plant(path, lambda tmp: (shutil.copy2("/bin/true", tmp), os.chmod(tmp, 0o755)))
    return lambda kept: kept.read_bytes() == true


def directory(path: Path, content: bytes = b""):
    folder = path.parent / f".planted-dir-{path.name}"
    folder.mkdir()
    (folder / "inside").write_text("kept\n")
    rename_exchange(folder, path)
    folder.unlink()   # the managed file, now under the hidden name
    return lambda kept: kept.is_dir() and (kept / "inside").read_text() == "kept\n"


def symlink(path: Path, content: bytes = b""):
    target = path.parent / f"symlink-target-{path.name}"
    target.write_bytes(b"not yours\n")
    plant(path, lambda tmp: os.symlink(target, tmp))
    return lambda kept: kept.is_symlink() and os.readlink(kept) == str(target) and target.read_bytes() == b"not yours\n"


def owner(path: Path, content: bytes = b""):
    os.chown(path, 1000, 1000)
    return None


def mode(path: Path, content: bytes = b""):
    os.chmod(path, 0o666)
    return None


# repair reason -> tamper
TAMPERS = {"missing": missing, "content": edited, "replaced": replaced, "directory": directory,
           "symlink": symlink, "owner": owner, "mode": mode}
