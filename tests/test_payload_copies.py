"""The agent's own payload copies (the known-good copy, rollback) on real files: they hold only what
payload_tree can write (regular files and folders, root's, modes it chose), refuse a payload folder
they cannot copy safely without touching anything, retry a copy that failed for want of space
(leaving no `.tmp`), and roll back by renaming, never by copying in the loop.

The PayloadTracker is driven step by step with a FakeClock and a stand-in for the supervisor (its
state and pid are all the tracker reads); everything on disk is real, tmpfs mounts included.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from hostile import dockerd_script, snapshot

from agent import payload as payloads
from agent import payload_tree
from agent.clock import FakeClock
from agent.state import BACKOFF, RUNNING
from agent.updates import KNOWN_GOOD_RETRY_FIRST, UPDATE_READY, PayloadTracker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="payload copies are made root-owned (chown)")


class Supervisor:
    """What the tracker reads of the supervisor: its state and dockerd's pid."""

    def __init__(self):
        self.state, self.pid, self.restarts = RUNNING, 100, []

    def request_restart(self, reason: str) -> None:
        self.restarts.append(reason)


def make_payload(root: Path, mark: Path, tag: str = "A") -> Path:
    root.mkdir(mode=0o755, parents=True)
    os.chmod(root, 0o755)
    for name in payloads.REQUIRED:
        data = dockerd_script(mark) if name == "dockerd" else f"#!/bin/sh\n# {tag}\nexit 0\n".encode()
        (root / name).write_bytes(data)
        os.chmod(root / name, 0o755)
    return root


class Rig:
    def __init__(self, base: Path, root: Path | None = None, state: Path | None = None):
        self.base = base
        self.mark = base / "mark"
        self.mark.mkdir(exist_ok=True)
        self.outside = base / "outside"
        self.outside.mkdir(exist_ok=True)
        (self.outside / "victim").write_text("nothing may change me\n")
        self.root = root or base / "opt" / "docker"
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.state = state or base / "state"
        self.clock = FakeClock()
        self.sup = Supervisor()
        self.config = SimpleNamespace(docker=SimpleNamespace(root=str(self.root), update_settle_seconds=1.0),
                                      agent=SimpleNamespace(state_dir=str(self.state)))

    def tracker(self) -> PayloadTracker:
        return PayloadTracker(self.config, self.clock)

    def step(self, t: PayloadTracker) -> None:
        """One step as the loop takes it: the tracker observes, the loop acts on an update it reports."""
        if t.observe(self.sup.state).event == UPDATE_READY:
            self.sup.request_restart("update")
        t.after_step(self.sup.state, self.sup.pid)

    def copy(self, t: PayloadTracker) -> None:
        """One step, and the copy it started, to its end, and the step that collects it."""
        self.step(t)
        assert t._saver is not None, "no copy was started"
        t._saver.join(30)
        assert not t._saver.is_alive(), "the copy hangs"
        self.step(t)

    @property
    def known_good(self) -> Path:
        return self.state / "payload-known-good"

    def leftovers(self) -> list[str]:
        found = []
        for folder in (self.state, self.root.parent):
            if folder.is_dir():
                found += [n for n in os.listdir(folder) if n.endswith((".tmp", ".old")) or ".staging" in n]
        return found


@pytest.fixture
def rig(base) -> Rig:
    return Rig(base)


@pytest.fixture
def tmpfs(base):
    mounts = []

    def mount(path: Path, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("mode=0755",) + options), "tmpfs", str(path)],
                       check=True)
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(("remount",) + options), str(path)], check=True)


# -- what a known-good copy holds --------------------------------------------------------------------


def test_known_good_copy_holds_only_safe_files_and_follows_only_validated_binaries(rig, caplog):
    """setuid and setgid in the payload do not survive the copy; a validated binary that is a symlink
    (to a distribution's binary, as on development hosts) is copied as the file it names."""
    make_payload(rig.root, rig.mark)
    os.chmod(rig.root / "dockerd", 0o4755)
    os.chmod(rig.root / "runc", 0o6755)
    (rig.root / "bin").mkdir()
    os.chmod(rig.root / "bin", 0o2755)
    (rig.root / "docker-init").unlink()
    (rig.root / "docker-init").symlink_to("/bin/true")
    before = snapshot(rig.root)
    t = rig.tracker()
    assert t.current.ok, t.current.problems
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    rig.copy(t)
    assert f"payload: kept a known-good copy in {rig.known_good}" in caplog.text
    assert payload_tree.audit(str(rig.known_good)) is None
    modes = {rel: v[1] for rel, v in snapshot(rig.known_good).items()}
    assert modes["dockerd"] == modes["runc"] == modes["bin"] == modes["."] == 0o755
    assert (rig.known_good / "docker-init").read_bytes() == Path("/bin/true").read_bytes()
    assert not (rig.known_good / "docker-init").is_symlink()
    assert snapshot(rig.root) == before, "copying changed the payload"
    assert not rig.leftovers()
    assert not os.listdir(rig.mark), "nothing of the payload is run to copy it"


def _symlink_out(rig):
    (rig.root / "evil").symlink_to(rig.outside)
    return f"{rig.root}/evil: a symbolic link (to {rig.outside})"


def _symlink_in(rig):
    (rig.root / "ctr").symlink_to("containerd")
    return f"{rig.root}/ctr: a symbolic link (to containerd)"


def _symlinked_folder_out(rig):
    (rig.root / "usr").symlink_to(rig.outside)
    return f"{rig.root}/usr: a symbolic link (to {rig.outside})"


def _fifo(rig):
    (rig.root / "bin").mkdir()
    os.mkfifo(rig.root / "bin" / "fifo")
    return f"{rig.root}/bin/fifo: a FIFO"


def _socket(rig):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(rig.root / "sock"))
    s.close()
    return f"{rig.root}/sock: a socket"


def _device(rig):
    os.mknod(rig.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return f"{rig.root}/null: a character device"


@pytest.mark.parametrize("craft", [_symlink_out, _symlink_in, _symlinked_folder_out, _fifo, _socket, _device],
                         ids=lambda f: f.__name__.strip("_"))
def test_known_good_copy_of_a_crafted_payload_is_refused_and_touches_nothing(rig, caplog, craft):
    make_payload(rig.root, rig.mark)
    why = craft(rig)
    t = rig.tracker()
    assert t.current.ok, "the crafted payload is valid as a payload: only the copy can refuse it"
    before, outside = snapshot(rig.root), snapshot(rig.outside)
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    rig.copy(t)
    assert f"cannot keep a known-good copy of {rig.root}: {why}" in caplog.text
    assert not rig.known_good.exists()
    assert not rig.leftovers()
    assert (snapshot(rig.root), snapshot(rig.outside)) == (before, outside)
    # Refused, not failed: the same payload would be refused again, so it is not retried.
    rig.clock.advance(3600)
    rig.step(t)
    assert t._saver is None


def test_a_payload_invalid_by_the_time_it_is_copied_is_not_copied(rig, caplog):
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    fp = t.seen_fp
    os.chmod(rig.root / "dockerd", 0o757)          # writable by others: invalid
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    assert t._copy_known_good(fp) == "changed"
    assert not rig.known_good.exists() and not rig.leftovers()
    assert not os.listdir(rig.mark)


def test_an_invalid_payloads_dockerd_is_never_run_for_its_version(rig):
    make_payload(rig.root, rig.mark)
    os.chmod(rig.root / "dockerd", 0o757)
    t = rig.tracker()
    rig.step(t)
    described = t.describe()
    assert described.state == "invalid" and described.version == ""
    assert not os.listdir(rig.mark), "describe() ran a dockerd others can write"
    os.chmod(rig.root / "dockerd", 0o755)
    rig.clock.advance(5)
    rig.step(t)
    assert t.describe().version == "99.0.0-test"
    assert os.listdir(rig.mark) == ["dockerd-ran"]


# -- a failed copy is retried, and leaves nothing behind ----------------------------------------------


def test_a_copy_that_finds_the_disk_full_is_retried_later_and_leaves_no_tmp(rig, tmpfs, caplog):
    """docker.root and state_dir on one 1 MiB tmpfs: the copy cannot fit (it must leave 64 MiB free),
    fails, is retried after KNOWN_GOOD_RETRY_FIRST, then after twice that, and succeeds once space
    is there."""
    fs = tmpfs(rig.base / "fs", "size=1m")
    rig = Rig(rig.base, root=fs / "docker", state=fs / "state")
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    rig.copy(t)
    assert f"cannot keep a known-good copy of {rig.root} in {rig.known_good}: [Errno 28] not enough space in " \
           f"{rig.state}" in caplog.text
    assert "(will retry in 10 s)" in caplog.text
    assert not rig.known_good.exists() and not rig.leftovers()
    assert t.wake_in() == pytest.approx(KNOWN_GOOD_RETRY_FIRST)
    rig.clock.advance(KNOWN_GOOD_RETRY_FIRST - 1)
    rig.step(t)
    assert t._saver is None, "retried before its time"
    rig.clock.advance(1)
    rig.copy(t)                                    # the second attempt, failing the same way
    assert not rig.known_good.exists() and not rig.leftovers()
    assert t.wake_in() == pytest.approx(2 * KNOWN_GOOD_RETRY_FIRST)
    assert caplog.text.count("cannot keep a known-good copy") == 1, "a repeated failure is rate-limited"
    remount(fs, "size=100m")
    rig.clock.advance(2 * KNOWN_GOOD_RETRY_FIRST)
    rig.copy(t)
    assert f"payload: kept a known-good copy in {rig.known_good}" in caplog.text
    assert payloads.inspect(str(rig.known_good)).ok
    assert not rig.leftovers()
    assert t.wake_in() == 3600.0


def test_a_copy_that_runs_out_of_space_midway_removes_its_tmp(rig, tmpfs, caplog):
    """Enough bytes by the numbers, but the inodes run out halfway through the copy (nr_inodes): the
    half-written `.tmp` goes, and the retry after space is found succeeds."""
    fs = tmpfs(rig.base / "fs", "size=100m", "nr_inodes=14")
    rig = Rig(rig.base, root=fs / "docker", state=fs / "state")
    make_payload(rig.root, rig.mark)                 # the mount point, state/, docker/ and 7 files: 10
    t = rig.tracker()
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    rig.copy(t)
    assert "No space left on device" in caplog.text, caplog.text
    assert not rig.known_good.exists()
    assert not rig.leftovers(), rig.leftovers()
    remount(fs, "nr_inodes=100")
    rig.clock.advance(KNOWN_GOOD_RETRY_FIRST)
    rig.copy(t)
    assert "payload: kept a known-good copy" in caplog.text
    assert not rig.leftovers()


# -- rollback ------------------------------------------------------------------------------------------


def _update_that_fails(rig: Rig, t: PayloadTracker) -> None:
    """Payload B swapped in, settled, restarted onto (requested), and then dockerd backs off."""
    new = rig.root.with_name("docker.new")
    make_payload(new, rig.mark, tag="B")
    os.rename(rig.root, rig.root.with_name("docker.before-update"))
    os.rename(new, rig.root)
    rig.step(t)
    rig.clock.advance(2)
    rig.step(t)
    assert rig.sup.restarts == ["update"] and t.pending is not None
    rig.sup.state, rig.sup.pid = BACKOFF, None


def roll_back(rig: Rig, t: PayloadTracker) -> int:
    """The BACKOFF step that starts the rollback copy, the copy's thread to its end, and the step that
    swaps it in; returns the inode of the staged dockerd as the swapping step found it."""
    before = snapshot(rig.root)
    t.after_step(rig.sup.state, rig.sup.pid)
    assert t._stager is not None, "no rollback copy was started"
    assert snapshot(rig.root) == before, "the step that starts the rollback changed the payload"
    t._stager.join(30)
    assert not t._stager.is_alive()
    staged = rig.root.with_name("docker.rollback") / "dockerd"
    inode = os.stat(staged).st_ino if staged.exists() else -1
    t.after_step(rig.sup.state, rig.sup.pid)
    return inode


def test_rollback_copies_in_a_thread_then_renames_into_place(rig, caplog):
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    rig.copy(t)
    good = snapshot(rig.known_good)
    _update_that_fails(rig, t)
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    inode = roll_back(rig, t)
    assert f"update failed; copying the known-good payload next to {rig.root} to roll back to it" in caplog.text
    assert "rolled back to the known-good copy" in caplog.text
    assert t.updates["rolled_back"] == 1 and t.pending is None
    # The same inode the thread wrote: the loop's step renamed it into place, it did not copy.
    assert os.stat(rig.root / "dockerd").st_ino == inode
    assert {k: v[:6] + v[7:] for k, v in snapshot(rig.root).items()} == \
        {k: v[:6] + v[7:] for k, v in good.items()}, "the restored payload is not the known-good one"
    assert b"# B" in (rig.root.with_name("docker.failed") / "runc").read_bytes()
    assert snapshot(rig.known_good) == good, "the known-good copy is kept for the next failure"
    assert not rig.leftovers() and not rig.root.with_name("docker.rollback").exists()
    assert payload_tree.audit(str(rig.root)) is None


def test_a_second_failed_update_right_after_a_rollback_is_rolled_back_too(rig, caplog):
    """The known-good copy is not used up by a rollback: a broken payload landing again at once (before
    any new copy could be taken) is rolled back as well."""
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    rig.copy(t)
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    for n in (1, 2, 3):
        rig.sup.state, rig.sup.pid, rig.sup.restarts = RUNNING, 100 + n, []
        t.after_step(rig.sup.state, rig.sup.pid)
        shutil_rm(rig.root.with_name("docker.before-update"))
        _update_that_fails(rig, t)
        roll_back(rig, t)
        assert t.updates["rolled_back"] == n, caplog.text
        assert b"# A" in (rig.root / "runc").read_bytes()
    assert "nothing to roll back to" not in caplog.text


def shutil_rm(path: Path) -> None:
    if path.exists():
        payload_tree.remove_tree(str(path))


def _plant_fifo(p: Path):
    os.mkfifo(p / "fifo")


def _plant_setuid(p: Path):
    os.chmod(p / "dockerd", 0o4755)


def _plant_symlink(p: Path):
    (p / "containerd").unlink()
    (p / "containerd").symlink_to("/bin/true")


def _plant_foreign_owner(p: Path):
    os.chown(p / "runc", 1000, 1000)


@pytest.mark.parametrize("plant", [_plant_fifo, _plant_setuid, _plant_symlink, _plant_foreign_owner],
                         ids=lambda f: f.__name__[len("_plant_"):])
def test_rollback_refuses_a_tampered_known_good_copy(rig, caplog, plant):
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    rig.copy(t)
    plant(rig.known_good)
    _update_that_fails(rig, t)
    before, kept = snapshot(rig.root), snapshot(rig.known_good)
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    roll_back(rig, t)
    assert f"update failed, and the known-good copy {rig.known_good} cannot be rolled back to: it is not one " \
           "this agent would run" in caplog.text
    assert (snapshot(rig.root), snapshot(rig.known_good)) == (before, kept)
    assert t.updates["rolled_back"] == 0 and t.pending is None
    assert not rig.root.with_name("docker.rollback").exists()


def test_rollback_waits_for_a_copy_in_progress_without_blocking_the_step(rig, caplog):
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    rig.copy(t)
    _update_that_fails(rig, t)
    release = threading.Event()
    t._saver = threading.Thread(target=release.wait, daemon=True)    # a copy that has not finished
    t._saver.start()
    caplog.set_level(logging.INFO, "armhf-agent.payload")
    before = snapshot(rig.root)
    t.after_step(rig.sup.state, rig.sup.pid)                 # returns at once: the step is never blocked on the copy
    assert "rollback waits for the known-good copy being taken to finish" in caplog.text
    assert t.pending is not None and snapshot(rig.root) == before
    assert t.wake_in() <= 0.25
    release.set()
    t._saver.join()
    roll_back(rig, t)
    assert t.updates["rolled_back"] == 1
    assert b"# A" in (rig.root / "runc").read_bytes()


def test_rollback_works_when_state_dir_is_another_filesystem(rig, tmpfs):
    """The known-good copy stays in state_dir (here a tmpfs); the copy that is renamed into place is
    staged next to docker.root, on its filesystem (a rename across filesystems fails)."""
    state = tmpfs(rig.base / "statefs", "size=100m")
    rig = Rig(rig.base, state=state)
    make_payload(rig.root, rig.mark)
    t = rig.tracker()
    rig.copy(t)
    assert rig.known_good.is_dir()
    _update_that_fails(rig, t)
    roll_back(rig, t)
    assert t.updates["rolled_back"] == 1
    assert b"# A" in (rig.root / "runc").read_bytes()
    assert os.stat(rig.root).st_dev != os.stat(rig.known_good).st_dev


# -- validation on arm64 hosts -------------------------------------------------------------------------


def test_arm64_refuses_payload_binaries_that_are_not_elf_at_all(rig):
    """A shell script standing in for dockerd is no more armhf than an x86 binary."""
    make_payload(rig.root, rig.mark)
    checked = payloads.inspect(str(rig.root), machine="aarch64")
    assert len(checked.problems) == len(payloads.REQUIRED)
    assert f"{rig.root}/dockerd is not ELF 32-bit ARM: not an ELF binary at all (use --allow-arch to accept it)" \
        in checked.problems
    assert payloads.inspect(str(rig.root), machine="aarch64", allow_arch=True).ok
    assert payloads.inspect(str(rig.root), machine="x86_64").ok
