"""inotify on folders, through libc: wakes the loop the moment a managed file or the payload changes.

Only used as a wake-up: the loop re-checks everything it manages on any event, and a periodic full
check remains the backstop (events can overflow, folders can be replaced).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class FolderWatch:
    def __init__(self):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.watched: dict[str, int] = {}

    def set_folders(self, folders: set[str]) -> None:
        """(Re-)watch exactly these folders; ones that do not exist yet are retried by the caller."""
        for folder in folders:
            wd = _libc.inotify_add_watch(self.fd, folder.encode(), MASK)
            if wd >= 0:
                self.watched[folder] = wd
            else:
                self.watched.pop(folder, None)
        for folder in set(self.watched) - folders:
            wd = self.watched.pop(folder)
            _libc.inotify_rm_watch(self.fd, wd)

    def drain(self) -> int:
        """Reads pending events; returns how many bytes there were (0 = nothing happened)."""
        total = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return total
            if not data:
                return total
            total += len(data)

    def close(self) -> None:
        os.close(self.fd)
