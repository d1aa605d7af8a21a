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
from harness import unmount_under

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


# -- the kept namespace (--namespace PIN): one mount namespace for every dockerd the agent starts ---------

def ns_of(pid):
    return os.readlink(f"/proc/{pid}/ns/mnt")


def host_mount_points():
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@pytest.fixture
def kept(tmp_path):
    """Launches helpers with a pin under tmp_path; every pin and its folder are let go afterwards."""
    procs = []
    pin = tmp_path / "run" / "ns" / "dockerd"
    cpuinfo = tmp_path / "hijacked"
    cpuinfo.write_bytes(b"processor\t: 0\nCPU architecture: 7\n\n")

    def launch(*command, pin=pin):
        proc = subprocess.Popen(HELPER + ["--cpuinfo", str(cpuinfo), "--namespace", str(pin), "--", *command],
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield launch, pin, cpuinfo
    for proc in procs:
        proc.kill()
        proc.wait()
    unmount_under(tmp_path)


def wait_mounted(proc):
    deadline = time.monotonic() + 10
    while not cpuinfo_mounts(proc.pid):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_later_launch_joins_the_kept_namespace_once_the_first_is_gone(kept, tmp_path):
    launch, pin, cpuinfo = kept
    first = launch("/bin/sleep", "600")
    wait_mounted(first)
    ns = ns_of(first.pid)
    assert ns != ns_of("self") and str(pin) in host_mount_points()
    # A mount the first one made (a container's rootfs, for dockerd) ...
    marker = tmp_path / "rootfs"
    marker.mkdir()
    subprocess.run(["nsenter", "-t", str(first.pid), "-m", "mount", "-t", "tmpfs", "rootfs", str(marker)], check=True)
    first.kill()
    first.wait()
    # ... is there for the next one, which sees the file it was given (not a stacked or stale bind).
    cpuinfo.write_bytes(b"processor\t: 0\nCPU architecture: 7\nsecond\n")
    second = launch("/bin/sleep", "600")
    wait_mounted(second)
    assert ns_of(second.pid) == ns
    assert str(marker) in {line.split()[4] for line in open(f"/proc/{second.pid}/mountinfo")}
    assert str(marker) not in host_mount_points(), "the namespace's mounts still never reach the host"
    assert seen_by(second.pid) == cpuinfo.read_bytes() and len(cpuinfo_mounts(second.pid)) == 1


def test_a_pin_file_without_its_mount_gets_a_new_namespace_kept(kept):
    launch, pin, _ = kept
    pin.parent.mkdir(parents=True)
    pin.write_bytes(b"")                      # a run_dir on a disk that outlived a reboot
    proc = launch("/bin/sleep", "600")
    wait_mounted(proc)
    from agent.launch import open_pin
    fd = open_pin(str(pin))
    assert fd is not None and os.fstat(fd).st_ino == os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
    os.close(fd)


@pytest.mark.parametrize("planted", ["symlink", "directory", "fifo"])
def test_a_planted_pin_is_never_bound_through_and_the_process_still_starts(kept, tmp_path, planted):
    launch, pin, _ = kept
    pin.parent.mkdir(parents=True)
    target = tmp_path / "precious"
    target.write_bytes(b"not a namespace\n")
    if planted == "symlink":
        pin.symlink_to(target)
    elif planted == "directory":
        pin.mkdir()
    else:
        os.mkfifo(pin)
    proc = launch("/bin/sleep", "600")
    wait_mounted(proc)
    assert ns_of(proc.pid) != ns_of("self")
    assert str(target) not in host_mount_points() and str(pin) not in host_mount_points()
    assert target.read_bytes() == b"not a namespace\n"
    proc.kill()
    err = proc.stderr.read()
    assert "not keeping dockerd's namespace" in err and str(pin) in err, err


def test_pin_keeps_a_running_processs_namespace_and_release_lets_go(confined, tmp_path):
    from agent.launch import open_pin, release_pin
    from agent.processes import Processes

    pid, _ = confined                       # started without --namespace: an agent that did not keep it
    pin = tmp_path / "run" / "ns" / "dockerd"
    try:
        wrong = subprocess.run(HELPER + ["--pin", str(pid), "--start-ticks", str(Processes().start_ticks(pid) + 1),
                                         "--namespace", str(pin)], capture_output=True, text=True)
        assert wrong.returncode == 70 and open_pin(str(pin)) is None, "a reused pid's namespace is not kept"
        for _ in range(2):                  # idempotent: the second finds it kept already
            r = subprocess.run(HELPER + ["--pin", str(pid), "--start-ticks", str(Processes().start_ticks(pid)),
                                         "--namespace", str(pin)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        assert [p for p in host_mount_points() if p == str(pin)] == [str(pin)]
        fd = open_pin(str(pin))
        assert os.fstat(fd).st_ino == os.stat(f"/proc/{pid}/ns/mnt").st_ino
        os.close(fd)
        assert release_pin(str(pin)) is True
        assert open_pin(str(pin)) is None and str(pin) not in host_mount_points()
        assert str(pin.parent) not in host_mount_points()
        assert release_pin(str(pin)) is False
    finally:
        unmount_under(tmp_path)
