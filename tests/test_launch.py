"""The exec helper's mount-namespace work, on real namespaces and real mounts (root).

A process started by the helper sees the hijacked file at /proc/cpuinfo; `--rebind` swaps what it sees
after the file was rewritten. The agent may call --rebind while the path is being tampered with (CI saw
a directory planted between the step's check and the rebind: the old bind was gone and every later
rebind failed on the missing mount), so the helper must refuse a bad source without touching the old
mount, and recover from a missing or stacked mount.
"""

import json
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
    # A namespace this one may pin (--pin): on some CPU its id is above ours (see younger_than_us).
    for cpu in sorted(os.sched_getaffinity(0)):
        proc = subprocess.Popen(HELPER + ["--cpuinfo", str(path), "--", "/bin/sleep", "600"],
                                preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
        deadline = time.monotonic() + 10
        while not cpuinfo_mounts(proc.pid):
            assert proc.poll() is None, "the helper exited before exec'ing"
            assert time.monotonic() < deadline, "no bind over /proc/cpuinfo appeared"
            time.sleep(0.01)
        if younger_than_us(proc.pid):
            break
        proc.kill()
        proc.wait()
    yield proc.pid, path
    proc.kill()
    proc.wait()


def younger_than_us(pid):
    """Whether the kernel lets this namespace bind pid's namespace file (agent/launch.py mnt_ns_id: the
    ids come in per-CPU batches on Linux 6.18; in a chroot's namespace about half the new ones are older)."""
    from agent.launch import older_than
    theirs, ours = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        return not older_than(theirs, ours)
    finally:
        os.close(theirs)
        os.close(ours)


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


# Run inside a namespace of its own (the agent in a container, or a test's chroot): from there, launches
# and pins on every CPU, with an oracle that does not ask agent/launch.py: the ids read by ioctl here.
FROM_A_NAMESPACE = r"""
import fcntl, json, os, subprocess, sys, time
helper, cpuinfo, base, cpus = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
os.sched_setaffinity(0, cpus)          # made on one CPU, this namespace may launch on any
def ns_id(path):
    fd, buf = os.open(path, os.O_RDONLY), bytearray(8)
    try:
        fcntl.ioctl(fd, 0x8008B705, buf)
        return int.from_bytes(buf, sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)
def kept(pin):
    return any(line.split()[4] == pin for line in open("/proc/self/mountinfo"))
mine, launches, out = ns_id("/proc/self/ns/mnt"), [], []
# The launcher may run on any CPU (as under the agent): the scheduler picks where it starts.
for i in range(4 * len(cpus)):
    pin = f"{base}/launch-{i}/ns/dockerd"
    run = subprocess.run([sys.executable, "-I", "-S", helper, "--cpuinfo", cpuinfo, "--namespace", pin, "--",
                          "/bin/grep", "Cpus_allowed_list", "/proc/self/status"], capture_output=True, text=True)
    launches.append(dict(rc=run.returncode, err=run.stderr, kept=kept(pin), cpus=run.stdout.split()[-1:]))
for cpu in cpus:
    on = lambda: os.sched_setaffinity(0, {cpu})
    sleeper = subprocess.Popen(["unshare", "-m", "--", "sleep", "60"], preexec_fn=on)
    while os.readlink(f"/proc/{sleeper.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        time.sleep(0.01)
    theirs = ns_id(f"/proc/{sleeper.pid}/ns/mnt")
    with open(f"/proc/{sleeper.pid}/stat") as f:
        ticks = f.read().rsplit(")", 1)[1].split()[19]
    pin2 = f"{base}/pin-{cpu}/ns/dockerd"
    pinned = subprocess.run([sys.executable, "-I", "-S", helper, "--pin", str(sleeper.pid), "--start-ticks", ticks,
                             "--namespace", pin2], capture_output=True, text=True)
    sleeper.kill()
    out.append(dict(cpu=cpu, pin_rc=pinned.returncode, pin_err=pinned.stderr, pin_kept=kept(pin2),
                    pinnable=None if mine is None or theirs is None else theirs > mine, mine=mine, theirs=theirs))
print(json.dumps(dict(launches=launches, pins=out)))
"""


def test_from_a_namespace_of_its_own_every_launch_keeps_its_namespace_and_a_refused_pin_says_why(tmp_path):
    cpuinfo = tmp_path / "hijacked"
    cpuinfo.write_bytes(b"processor\t: 0\nCPU architecture: 7\n\n")
    launches, results, cpus = [], [], sorted(os.sched_getaffinity(0))
    for cpu in cpus:                                # the outer namespace made on each CPU in turn
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "--", sys.executable, "-c",
                               FROM_A_NAMESPACE, LAUNCHER, str(cpuinfo), str(tmp_path / f"outer-{cpu}"),
                               json.dumps(cpus)],
                              preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}),
                              capture_output=True, text=True, check=True)
        got = json.loads(done.stdout)
        launches += got["launches"]
        results += got["pins"]
    assert str(tmp_path) not in " ".join(host_mount_points()), "the outer namespaces' pins stayed inside them"
    # The launcher finds a CPU that makes a namespace it may keep, whichever CPU it started on (without
    # that, about half of these failed here: the outer namespace made on the CPU with the later batch).
    assert [r for r in launches if not (r["rc"] == 0 and r["kept"] and r["err"] == "")] == []
    # ... and what it execs (dockerd) may run on every CPU it could, as before.
    with open("/proc/self/status") as f:
        ours = [line.split()[-1] for line in f if line.startswith("Cpus_allowed_list")]
    assert {tuple(r["cpus"]) for r in launches} == {tuple(ours)}
    for r in results:
        # A running process's namespace is kept when the kernel allows it; otherwise the refusal names why.
        if r["pinnable"] is False:
            assert r["pin_rc"] == 70 and not r["pin_kept"], r
            assert f"its id {r['theirs']} is not above this namespace's {r['mine']}" in r["pin_err"], r
        else:
            assert r["pin_rc"] == 0 and r["pin_kept"], r
    inverted = sum(r["pinnable"] is False for r in results)
    print(f"{len(launches)} launches, {len(results)} pins from namespaces of their own; {inverted} pins with the ids inverted")
