"""Self-healing against the real agent and a real dockerd: the hijacked cpuinfo reaches containers (via
the shim) and dockerd itself (its private mount namespace); every kind of drift of the two managed
files is repaired within a second with the displaced thing kept; SIGUSR1 checks at once; a full disk
never costs the old file; `uninstall-files` puts back the client the shim displaced.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentproc import AgentProcess, agent_config
from conftest import requires_docker
from harness import REPO, docker_cli, make_payload, new_base, unmount_under, wait_for
from tamper import TAMPERS, plant

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]

# Issue 3 promises a repair "within a second"; bench/ measures that (p50/p99). Tests do not assert on
# speed: this bound only says the agent repaired on its own, well before its 10 s wait gives up, with room
# for a loaded 2-core CI machine.
REPAIR_BOUND_SECONDS = 5.0
STAMPED = r"\d{8}T\d{6}"
# Repair times measured in this run, printed at the end of the module (run pytest with -s to see them).
TIMINGS: dict[str, float] = {}


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config_path), *args],
                          capture_output=True, text=True, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))


def file_state(agent: AgentProcess, name: str) -> dict:
    return next(f for f in agent.state()["files"] if f["name"] == name)


def displaced(agent: AgentProcess) -> set[str]:
    folder = Path(agent.config["agent"]["state_dir"]) / "displaced"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def is_right(path: Path, content: bytes, mode: int) -> bool:
    try:
        st = os.lstat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return (os.path.isfile(path) and not os.path.islink(path) and data == content
            and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, mode))


MODES = {"cpuinfo": 0o644, "shim": 0o755}


@pytest.fixture(scope="module")
def healer():
    """One agent with its dockerd (cpuinfo.daemon = true) for all tamper cases: each case checks the
    change of the repair counters, so they share it."""
    base = new_base()
    a = AgentProcess(base).start()
    try:
        a.wait_running()
        a.wait_log(r"kept a known-good copy")
        yield a
    finally:
        a.stop()
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def report_timings():
    yield
    if TIMINGS:
        print("\nrepair times (tamper -> repaired, seen through state.json):")
        for case, seconds in sorted(TIMINGS.items()):
            print(f"  {case:30s} {seconds * 1000:7.1f} ms")


def test_container_through_the_shim_sees_the_hijacked_cpuinfo(agent, base, busybox_tar):
    # The shim alone (the runtime wrapper off: with it, every container gets the file whatever the client,
    # tests/test_runtime_wrapper.py).
    cfg = agent_config(base)
    cfg["runtime"]["wrapper"] = False
    a = agent(config=cfg).start()
    a.wait_running()
    hijacked = Path(a.config["cpuinfo"]["path"]).read_bytes()
    assert re.search(rb"^CPU architecture\s*: 7$", hijacked, re.M)
    assert hijacked.decode() == cli(a.config_path, "render-cpuinfo").stdout
    shim = Path(a.config["shim"]["path"])
    assert shim.read_text() == cli(a.config_path, "render-shim").stdout
    docker_cli(a.sock, "import", str(busybox_tar), "bb:local")
    r = subprocess.run([str(shim), "-H", a.config["docker"]["host"], "run", "--rm", "--network", "none",
                        "bb:local", "cat", "/proc/cpuinfo"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == hijacked
    # The same command with the real client: the container's fresh procfs, i.e. the shim did it.
    real = docker_cli(a.sock, "run", "--rm", "--network", "none", "bb:local", "cat", "/proc/cpuinfo").stdout
    assert real.encode() != hijacked and "CPU architecture: 7" not in real


def test_dockerd_sees_the_hijacked_cpuinfo_in_its_own_namespace_only(agent):
    a = agent().start()
    pid = a.wait_running()
    hijacked = Path(a.config["cpuinfo"]["path"]).read_bytes()
    seen = subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", "/proc/cpuinfo"], capture_output=True, check=True)
    assert seen.stdout == hijacked
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    host_mounts = Path("/proc/self/mounts").read_text().splitlines()
    assert not [m for m in host_mounts if m.split()[1] == "/proc/cpuinfo" or str(a.base) + "/hijacked" in m]
    # containerd inside dockerd derives linux/arm/v7 from it.
    wait_for(lambda: a.state()["dockerd"]["platform_variant"] == "v7", 10, 0.05, "platform published")


def test_with_daemon_false_dockerd_sees_the_real_cpuinfo(agent, base):
    a = agent(config=agent_config(base, cpuinfo__daemon=False)).start()
    pid = a.wait_running()
    # Its own namespace all the same (the kept one, where /run/containerd is the agent's: agent/launch.py),
    # with nothing over /proc/cpuinfo.
    with open(f"/proc/{pid}/mountinfo") as f:
        assert not [line for line in f if line.split()[4] == "/proc/cpuinfo"]
    seen = subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", "/proc/cpuinfo"], capture_output=True,
                          text=True, check=True).stdout
    real_model = re.search(r"^model name\s*:.*$", Path("/proc/cpuinfo").read_text(), re.M).group(0)
    assert real_model in seen and "CPU architecture: 7" not in seen
    # The file is still kept in place for the shim; dockerd's own platform has no Arm variant here.
    assert Path(a.config["cpuinfo"]["path"]).is_file()
    wait_for(lambda: a.state()["dockerd"]["server_version"], 10, 0.05, "platform published")
    assert a.state()["dockerd"]["platform_variant"] == ""


@pytest.mark.parametrize("reason", list(TAMPERS))
@pytest.mark.parametrize("name", ["cpuinfo", "shim"])
def test_tampering_is_repaired_and_the_displaced_thing_kept(healer, name, reason):
    path = Path(healer.config[name]["path"])
    mode = MODES[name]
    content = path.read_bytes()
    assert is_right(path, content, mode)
    before = file_state(healer, name)["repairs"]
    store_before = displaced(healer)

    t0 = time.monotonic()
    kept_check = TAMPERS[reason](path, content)
    try:
        wait_for(lambda: file_state(healer, name)["repairs"][reason] == before[reason] + 1
                 and is_right(path, content, mode), 10, 0.002, f"{name} repaired after {reason}")
    except TimeoutError as exc:
        # What the agent said and what is on disk: a CI failure must explain itself.
        on_disk = os.readlink(path) if path.is_symlink() else path.lstat() if os.path.lexists(path) else "missing"
        raise AssertionError(f"{exc}\nstate: {file_state(healer, name)}\nbefore: {before}\non disk: {on_disk}"
                             f"\nagent log:\n{healer.log()[-3000:]}") from None
    took = time.monotonic() - t0
    TIMINGS[f"{name}/{reason}"] = took
    assert took < REPAIR_BOUND_SECONDS, f"{name}/{reason} repaired after {took:.3f}s; agent log:\n{healer.log()[-3000:]}"

    after = file_state(healer, name)
    assert after["ok"] and after["last_repair_reason"] == reason
    assert {r: n - before[r] for r, n in after["repairs"].items()} == {r: int(r == reason) for r in before}
    healer.wait_log(rf"{name}: repaired {re.escape(str(path))} \({reason}: ")
    new = displaced(healer) - store_before
    if kept_check is None:
        assert new == set()
    else:
        assert len(new) == 1, new
        entry = new.pop()
        assert re.fullmatch(rf"{name}\.(original|{STAMPED}\.{reason}(\.\d+)?)", entry), entry
        assert entry != f"{name}.original" or reason == "replaced", "only a foreign file becomes the original"
        assert kept_check(Path(healer.config["agent"]["state_dir"]) / "displaced" / entry)
    if name == "cpuinfo":
        # dockerd's bind mount must show the repaired file, not the (displaced, maybe edited) inode it
        # pinned before.
        in_dockerd = ["nsenter", "-t", str(healer.dockerd_pid()), "-m"]
        seen = subprocess.run(in_dockerd + ["cat", "/proc/cpuinfo"], capture_output=True, check=True).stdout
        assert seen == content
        ident = subprocess.run(in_dockerd + ["stat", "-c", "%d %i", "/proc/cpuinfo"], capture_output=True,
                               text=True, check=True).stdout.split()
        st = path.stat()
        assert [int(x) for x in ident] == [st.st_dev, st.st_ino]


def test_sigusr1_checks_at_once_what_inotify_cannot_see(agent, base):
    """A change made through a hard link in an unwatched folder raises no inotify event in the watched
    one; with the periodic check and health pings far away, only SIGUSR1 gets it repaired."""
    (base / "files").mkdir()
    cfg = agent_config(base, agent__check_interval_seconds=3600.0, docker__health_interval_seconds=60.0,
                       docker__root=str(base / "pl" / "payload"), cpuinfo__path=str(base / "files" / "cpuinfo"))
    make_payload(base / "pl" / "payload")
    os.chmod(base / "pl", 0o755)
    a = agent(config=cfg, payload=False).start()
    a.wait_running()
    a.wait_log(r"kept a known-good copy")
    path = Path(cfg["cpuinfo"]["path"])
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    os.link(path, elsewhere / "same-inode")
    time.sleep(0.3)
    os.chmod(elsewhere / "same-inode", 0o666)
    time.sleep(1.5)
    assert path.stat().st_mode & 0o777 == 0o666 and file_state(a, "cpuinfo")["repairs"]["mode"] == 0, \
        "repaired without SIGUSR1: this test proves nothing"

    t0 = time.monotonic()
    a.signal(signal.SIGUSR1)
    wait_for(lambda: file_state(a, "cpuinfo")["repairs"]["mode"] == 1, 10, 0.002, "repair after SIGUSR1")
    took = time.monotonic() - t0
    TIMINGS["cpuinfo/mode via SIGUSR1"] = took
    assert took < REPAIR_BOUND_SECONDS
    assert path.stat().st_mode & 0o777 == 0o644


def test_first_foreign_client_is_kept_as_original_and_uninstall_restores_it(agent, base):
    shim = base / "bin" / "docker"
    shim.parent.mkdir()
    client = b"#!/bin/sh\necho 'the docker client that was here first'\n"
    shim.write_bytes(client)
    shim.chmod(0o755)
    a = agent().start()
    a.wait_running()
    store = Path(a.config["agent"]["state_dir"]) / "displaced"
    wait_for(lambda: (store / "shim.original").exists(), 10, 0.02, "shim.original")
    assert (store / "shim.original").read_bytes() == client
    ours = shim.read_bytes()
    assert b"installed by armhf-agent" in ours
    # A later replacement (say a Docker upgrade dropping its client there) is kept, but does not take
    # the original's place.
    plant(shim, lambda tmp: shutil.copy2("/bin/true", tmp))
    wait_for(lambda: file_state(a, "shim")["repairs"]["replaced"] == 1, 10, 0.01, "shim repaired")
    assert (store / "shim.original").read_bytes() == client
    assert [e for e in os.listdir(store) if re.fullmatch(rf"shim\.{STAMPED}\.replaced", e)]
    assert shim.read_bytes() == ours

    a.stop()
    r = cli(a.config_path, "uninstall-files")
    assert r.returncode == 0, r.stderr
    assert f"removed {shim}" in r.stdout and f"restored {shim}" in r.stdout
    assert f"removed {a.config['cpuinfo']['path']}" in r.stdout
    assert shim.read_bytes() == client and os.access(shim, os.X_OK)
    assert not os.path.lexists(a.config["cpuinfo"]["path"])
    assert not (store / "shim.original").exists()
    # Run again: nothing of ours is left, nothing else is touched.
    again = cli(a.config_path, "uninstall-files")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert shim.read_bytes() == client


def test_disk_full_keeps_the_old_file_logs_once_and_repairs_when_space_returns(agent, base):
    """The cpuinfo folder is a 64 KiB tmpfs, filled up. An edit cannot be repaired until space returns:
    the edited file stays (it is never removed first), the error is logged once, then it is repaired."""
    small = base / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(small)], check=True)
    try:
        # No dockerd needed: the files are kept in place whatever dockerd does.
        a = agent(config=agent_config(base, cpuinfo__path=str(small / "cpuinfo"), cpuinfo__daemon=False),
                  payload=False).start()
        path = small / "cpuinfo"
        wait_for(lambda: a.state() and file_state(a, "cpuinfo")["ok"], 30, 0.05, "cpuinfo installed")
        content = path.read_bytes()
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space left on device"):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        # Edit in place without allocating: same length, so the full disk does not stop the tamper.
        edited = content.replace(b"CPU architecture: 7", b"CPU architecture: 9")
        assert edited != content and len(edited) == len(content)
        with open(path, "r+b") as f:
            f.write(edited)

        a.wait_log(r"cpuinfo: cannot write .*No space left on device \(will retry\)")
        time.sleep(2.0)   # several steps (0.5 s health interval, inotify) retry in the meantime
        assert len(a.wait_log(r"No space left on device")) == 1, "the error is rate-limited"
        assert path.read_bytes() == edited, "the old file is kept while the new one cannot be written"
        # A retry (one a second) may hold its temp file at the instant we look; a leaked one stays.
        wait_for(lambda: sorted(os.listdir(small)) == ["cpuinfo", "filler"], 1.0, 0.02, "no temp file left behind")
        st = file_state(a, "cpuinfo")
        assert not st["ok"] and "No space left on device" in st["problem"] and st["repairs"]["content"] == 0

        t0 = time.monotonic()
        filler.unlink()
        wait_for(lambda: file_state(a, "cpuinfo")["repairs"]["content"] == 1 and path.read_bytes() == content,
                 10, 0.002, "repair once space is back")
        TIMINGS["cpuinfo/content after ENOSPC"] = time.monotonic() - t0
        kept = [e for e in displaced(a) if re.fullmatch(rf"cpuinfo\.{STAMPED}\.content", e)]
        assert len(kept) == 1
        assert (Path(a.config["agent"]["state_dir"]) / "displaced" / kept[0]).read_bytes() == edited
        a.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
