"""The exec helper's mount-namespace work, on real namespaces and real mounts (root).

A process started by the helper sees the hijacked file at /proc/cpuinfo; `--rebind` swaps what it sees
after the file was rewritten. The agent may call --rebind while the path is being tampered with (CI saw
a directory planted between the step's check and the rebind: the old bind was gone and every later
rebind failed on the missing mount), so the helper must refuse a bad source without touching the old
mount, and recover from a missing or stacked mount.
"""

import os
import subprocess
import sys
import time

import pytest

from agent.processes import LAUNCHER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")

HELPER = [sys.executable, "-I", "-S", LAUNCHER]


def seen_by(pid):
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", "/proc/cpuinfo"],
                          capture_output=True, check=True).stdout


def cpuinfo_mounts(pid):
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line for line in f if line.split()[4] == "/proc/cpuinfo"]


def rebind(pid, path):
    return subprocess.run(HELPER + ["--rebind", str(pid), "--cpuinfo", str(path)], capture_output=True, text=True)


@pytest.fixture
def confined(tmp_path):
    """A process in the helper's private namespace, the file it was started with, and that file's path."""
    path = tmp_path / "hijacked"
    path.write_bytes(b"processor\t: 0\nCPU architecture: 7\n\n")
    proc = subprocess.Popen(HELPER + ["--cpuinfo", str(path), "--", "/bin/sleep", "600"])
    deadline = time.monotonic() + 10
    while not cpuinfo_mounts(proc.pid):
        assert proc.poll() is None, "the helper exited before exec'ing"
        assert time.monotonic() < deadline, "no bind over /proc/cpuinfo appeared"
        time.sleep(0.01)
    yield proc.pid, path
    proc.kill()
    proc.wait()


def replace(path, content):
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(content)
    os.rename(tmp, path)


def test_started_process_sees_the_file_read_only_and_the_host_does_not(confined):
    pid, path = confined
    assert seen_by(pid) == path.read_bytes()
    assert len(cpuinfo_mounts(pid)) == 1
    assert not cpuinfo_mounts(os.getpid()), "the bind leaked into the host's namespace"
    write = subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", "echo x > /proc/cpuinfo"],
                           capture_output=True, text=True)
    assert write.returncode != 0


def test_rebind_shows_the_rewritten_file(confined):
    pid, path = confined
    replace(path, b"rewritten\n")
    assert seen_by(pid) != b"rewritten\n", "a bind pins the old inode: that is why --rebind exists"
    r = rebind(pid, path)
    assert r.returncode == 0, r.stderr
    assert seen_by(pid) == b"rewritten\n"
    assert len(cpuinfo_mounts(pid)) == 1


@pytest.mark.parametrize("planted", ["directory", "symlink", "missing"])
def test_bad_source_is_refused_and_the_old_view_kept(confined, planted):
    pid, path = confined
    before = seen_by(pid)
    os.unlink(path)
    if planted == "directory":
        path.mkdir()
    elif planted == "symlink":
        secret = path.with_name("secret")
        secret.write_bytes(b"not for containers\n")
        path.symlink_to(secret)
    r = rebind(pid, path)
    assert r.returncode == 70
    assert str(path) in r.stderr
    assert seen_by(pid) == before
    assert len(cpuinfo_mounts(pid)) == 1


def test_start_refuses_a_symlinked_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for containers\n")
    path = tmp_path / "hijacked"
    path.symlink_to(secret)
    r = subprocess.run(HELPER + ["--cpuinfo", str(path), "--", "/bin/true"], capture_output=True, text=True)
    assert r.returncode == 70
    assert "not a regular file" in r.stderr and str(path) in r.stderr


def test_rebind_recovers_when_the_bind_is_gone(confined):
    pid, path = confined
    subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", "/proc/cpuinfo"], check=True)
    assert not cpuinfo_mounts(pid)
    r = rebind(pid, path)
    assert r.returncode == 0, r.stderr
    assert seen_by(pid) == path.read_bytes()
    assert len(cpuinfo_mounts(pid)) == 1


def test_rebind_flattens_stacked_binds(confined):
    pid, path = confined
    extra = path.with_name("extra")
    extra.write_bytes(b"stacked\n")
    for _ in range(2):
        subprocess.run(["nsenter", "-t", str(pid), "-m", "mount", "--bind", str(extra), "/proc/cpuinfo"], check=True)
    assert len(cpuinfo_mounts(pid)) == 3
    r = rebind(pid, path)
    assert r.returncode == 0, r.stderr
    assert seen_by(pid) == path.read_bytes()
    assert len(cpuinfo_mounts(pid)) == 1


def test_rebind_refuses_a_pid_that_is_no_longer_the_dockerd_it_was_meant_for(confined):
    # The agent hands over the start time it knows; a process that reused the pid has another one, and
    # its namespace must not get our file (nor lose its own /proc/cpuinfo).
    from agent.processes import Processes

    pid, path = confined
    ticks = Processes().start_ticks(pid)
    replace(path, b"processor\t: 0\nCPU architecture: 7\nrewritten\n")
    wrong = subprocess.run(HELPER + ["--rebind", str(pid), "--start-ticks", str(ticks + 1), "--cpuinfo", str(path)],
                           capture_output=True, text=True)
    assert wrong.returncode == 70 and "no longer the dockerd" in wrong.stderr
    assert b"rewritten" not in seen_by(pid)
    right = subprocess.run(HELPER + ["--rebind", str(pid), "--start-ticks", str(ticks), "--cpuinfo", str(path)],
                           capture_output=True, text=True)
    assert right.returncode == 0, right.stderr
    assert b"rewritten" in seen_by(pid)
