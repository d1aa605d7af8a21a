"""ManagedFile on its own (agent/managed.py): check, repair, the 1 s write retry, what counts as drift,
in-place owner/mode fixes, retargeting, render failures and removal. Real files in a temp folder, a
fake clock, and a filesystem facade that fails on demand; no agent, no dockerd."""

from __future__ import annotations

import errno
import os

import pytest

from agent import fsops
from agent.clock import FakeClock
from agent.fsops import DisplacedStore
from agent.managed import CPUINFO, SHIM, WRITE_RETRY_SECONDS, ManagedFile

RIGHT = b"processor\t: 0\nCPU architecture: 7\n\n"


class FlakyFs:
    """agent.fsops, except that atomic_write fails with ENOSPC while `full` is set (a full disk)."""

    def __init__(self):
        self.full = False
        self.writes = 0
        self.read_nofollow = fsops.read_nofollow
        self.fix_owner_and_mode = fsops.fix_owner_and_mode

    def atomic_write(self, *args, **kw):
        self.writes += 1
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsops.atomic_write(*args, **kw)


@pytest.fixture
def made(tmp_path):
    clock, fs = FakeClock(), FlakyFs()
    store = DisplacedStore(str(tmp_path / "state"), clock=clock)
    f = ManagedFile(CPUINFO, str(tmp_path / "cpuinfo"), store, clock, fs=fs)
    f.set_desired(RIGHT)
    return f, clock, fs, tmp_path


def test_putting_the_file_in_place_is_installing_and_later_drift_is_a_repair(made):
    f, clock, fs, tmp = made
    assert f.ensure() is None and (tmp / "cpuinfo").read_bytes() == RIGHT
    assert sum(f.repairs.values()) == 0, "the first write is an install, not a repair"
    (tmp / "cpuinfo").unlink()
    assert f.ensure() is None
    assert f.repairs["missing"] == 1 and f.last_repair_reason == "missing"
    assert f.last_repair_at == clock.time()


def test_new_desired_content_is_an_update_not_drift(made):
    f, clock, fs, tmp = made
    f.ensure()
    f.set_desired(RIGHT + b"processor\t: 1\n")
    assert f.ensure() is None
    assert sum(f.repairs.values()) == 0


def test_a_failed_write_is_retried_after_a_second_not_in_a_tight_loop(made):
    f, clock, fs, tmp = made
    fs.full = True
    problem = f.ensure()
    assert problem.reason == "missing" and "No space left" in f.write_error and fs.writes == 1
    for _ in range(50):                 # every inotify event of its own temp file wakes the loop
        assert f.ensure() is not None
    assert fs.writes == 1, "retried before WRITE_RETRY_SECONDS"
    clock.advance(WRITE_RETRY_SECONDS)
    fs.full = False
    assert f.ensure() is None and fs.writes == 2 and f.write_error == ""
    assert not [n for n in os.listdir(tmp) if n.endswith(".tmp")]


def test_a_full_disk_keeps_the_old_file(made):
    f, clock, fs, tmp = made
    f.ensure()
    with open(tmp / "cpuinfo", "ab") as out:
        out.write(b"edited\n")
    fs.full = True
    assert f.ensure().reason == "content"
    assert (tmp / "cpuinfo").read_bytes() == RIGHT + b"edited\n", "nothing lost on a failed write"


def test_owner_and_mode_are_fixed_in_place(made):
    f, clock, fs, tmp = made
    f.ensure()
    inode = os.stat(tmp / "cpuinfo").st_ino
    os.chmod(tmp / "cpuinfo", 0o666)
    assert f.ensure() is None and f.repairs["mode"] == 1
    os.chown(tmp / "cpuinfo", 1000, 1000)
    assert f.ensure() is None and f.repairs["owner"] == 1
    assert os.stat(tmp / "cpuinfo").st_ino == inode, "a new inode would race with runc's bind mount"


def test_retarget_keeps_the_counters_and_checks_the_new_path(made):
    f, clock, fs, tmp = made
    f.ensure()
    (tmp / "cpuinfo").unlink()
    f.ensure()
    f.retarget(str(tmp / "elsewhere"), f.store)
    assert f.ensure() is None and (tmp / "elsewhere").read_bytes() == RIGHT
    assert f.repairs["missing"] == 1, "installing at the new path is not a repair; the old count stays"


def test_a_failed_render_reports_not_ok_and_keeps_the_file(made):
    f, clock, fs, tmp = made
    f.ensure()
    f.set_render_error("cannot render the cpuinfo: /sys/devices/system/cpu/online unreadable")
    assert f.ensure() is None and (tmp / "cpuinfo").read_bytes() == RIGHT
    state = f.describe()
    assert not state.ok and "online unreadable" in state.problem
    f.set_desired(RIGHT)
    assert f.describe().ok


def test_absent_removes_only_our_file_and_puts_the_original_back(tmp_path):
    clock = FakeClock()
    store = DisplacedStore(str(tmp_path / "state"), clock=clock)
    path = tmp_path / "docker"
    path.write_bytes(b"#!/bin/sh\necho host docker\n")
    shim = ManagedFile(SHIM, str(path), store, clock)
    shim.set_desired(b"#!/bin/sh\n# docker shim installed by armhf-agent\n")
    shim.ensure()
    assert (tmp_path / "state" / "displaced" / "shim.original").exists()
    shim.set_desired(None, "the payload is not valid", absent=True)
    assert shim.ensure() is None
    assert path.read_bytes() == b"#!/bin/sh\necho host docker\n"
    # A foreign file there is never ours to remove.
    shim.ensure()
    assert path.read_bytes() == b"#!/bin/sh\necho host docker\n"
    assert not shim.describe().ok and "not valid" in shim.describe().problem
