"""The fault cases of issue 6. Each injects one fault into a running rig (the real agent and its real
dockerd, bench/rig.py) and asserts that nothing was lost: dockerd answers, the sentinel container still
runs (the same process unless dockerd itself was replaced), both managed files are right, no counter
went down, and the agent's log explains what happened.

A case is one run; `faults/run` repeats it N times on the same rig, so every case also has to leave the
rig as it found it.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.rig import REPO, SENTINEL, Rig, pid_alive, ping, wait_for

import tamper  # noqa: E402  (tests/tamper.py: bench.rig puts tests/ on sys.path)


@dataclass
class Case:
    name: str
    run: Callable
    rig: dict | None = field(default_factory=dict)   # Rig() options; None: the case needs no agent


CASES: list[Case] = []


def case(name: str, agent: bool = True, **rig_options):
    def register(fn):
        CASES.append(Case(name, fn, rig_options if agent else None))
        return fn
    return register


def bumped(rig: Rig, before: dict, key: str, by: int = 1) -> None:
    """The counter went up by exactly `by` (state.json is published at the end of the step that logged
    the event, so it may lag the log line a moment)."""
    want = before[key] + by
    try:
        wait_for(lambda: rig.counters()[key] >= want, 10, 0.02, key)
    except TimeoutError:
        pass
    now = rig.counters()[key]
    assert now == want, f"{key}: {before[key]} -> {now}, expected +{by}"


# -- dockerd ---------------------------------------------------------------------------------------


@case("dockerd SIGKILL")
def dockerd_sigkill(rig: Rig) -> None:
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    os.kill(pid, signal.SIGKILL)
    rig.agent.wait_running(60, other_than=pid)
    rig.wait_log(mark, r"RUNNING -> BACKOFF: pid %d killed by SIGKILL" % pid)
    bumped(rig, before, "dockerd.restarts.exited")
    rig.assert_nothing_lost(dockerd_restarted=True)


@case("dockerd SIGSTOP")
def dockerd_sigstop(rig: Rig) -> None:
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    os.kill(pid, signal.SIGSTOP)
    try:
        rig.wait_log(mark, r"RUNNING -> STOPPING: SIGTERM to pid %d \(hung: 2 consecutive failed pings" % pid)
        rig.agent.wait_running(60, other_than=pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    bumped(rig, before, "dockerd.restarts.hung")
    rig.assert_nothing_lost(dockerd_restarted=True)


@case("dockerd socket removed")
def dockerd_socket_removed(rig: Rig) -> None:
    """dockerd still runs but nobody can reach it: to its users that is a hung daemon, so it is
    replaced, and the new one listens on the socket again."""
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    os.unlink(rig.sock)
    rig.wait_log(mark, r"dockerd: /_ping failed \(1 of 2 allowed\)")
    rig.wait_log(mark, r"RUNNING -> STOPPING: SIGTERM to pid %d \(hung" % pid)
    rig.agent.wait_running(60, other_than=pid)
    assert Path(rig.sock).is_socket()
    bumped(rig, before, "dockerd.restarts.hung")
    rig.assert_nothing_lost(dockerd_restarted=True)


# -- payload ---------------------------------------------------------------------------------------


def _dockerd_binary(rig: Rig) -> Path:
    return rig.payload / "bin" / "dockerd"


def _install(path: Path, data: bytes) -> None:
    """As an installer does: a temp file next to it, renamed over."""
    tmp = path.with_name(path.name + ".installing")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.rename(tmp, path)


@case("payload binary removed")
def payload_binary_removed(rig: Rig) -> None:
    """A running dockerd keeps what it loaded: the incomplete payload is rejected, dockerd is left
    alone; once the binary is back the agent restarts onto it (as onto any new payload)."""
    binary = _dockerd_binary(rig)
    data, pid, before, mark = binary.read_bytes(), rig.dockerd_pid(), rig.counters(), rig.mark()
    binary.unlink()
    rig.wait_log(mark, r"update rejected: missing in .*: dockerd; dockerd keeps running on the binaries it loaded")
    state = rig.state()
    assert state["payload"]["state"] == "invalid" and "dockerd" in state["payload"]["problem"], state["payload"]
    assert rig.dockerd_pid() == pid and ping(rig.sock), "dockerd was touched while the payload was incomplete"
    bumped(rig, before, "payload.updates.rejected")
    # Nothing of an invalid payload is run: the shim in front of its client is gone meanwhile.
    wait_for(lambda: not rig.shim.exists(), 30, 0.05, "the shim removed while the payload is invalid")
    rig.assert_nothing_lost(dockerd_restarted=False, shim=False)
    mark = rig.mark()
    _install(binary, data)
    rig.wait_log(mark, r"payload .* is complete and safe now")
    rig.wait_log(mark, r"update: applied; dockerd pid \d+ healthy on the new payload")
    rig.agent.wait_running(60, other_than=pid)
    assert rig.state()["payload"]["state"] == "ok"
    rig.assert_nothing_lost(dockerd_restarted=True)


@case("payload replaced (update)")
def payload_replaced(rig: Rig) -> None:
    binary = _dockerd_binary(rig)
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    _install(binary, binary.read_bytes())
    rig.wait_log(mark, r"update: payload in .* changed; restarting dockerd onto it")
    rig.wait_log(mark, r"update: applied; dockerd pid \d+ healthy on the new payload")
    new = rig.agent.wait_running(60, other_than=pid)
    assert os.stat(f"/proc/{new}/exe").st_ino == binary.stat().st_ino, "dockerd does not run the new binary"
    bumped(rig, before, "payload.updates.applied")
    bumped(rig, before, "dockerd.restarts.update")
    rig.assert_nothing_lost(dockerd_restarted=True)


@case("payload replaced by a broken one (rollback)")
def payload_broken(rig: Rig) -> None:
    binary = _dockerd_binary(rig)
    good, pid, before, mark = binary.read_bytes(), rig.dockerd_pid(), rig.counters(), rig.mark()
    _install(binary, b"#!/bin/sh\necho 'this dockerd cannot start' >&2\nexit 3\n")
    rig.wait_log(mark, r"update: payload in .* changed; restarting dockerd onto it")
    rig.wait_log(mark, r"exited with status 3")
    rig.wait_log(mark, r"update: new payload could not become healthy; rolled back to the known-good copy")
    rig.agent.wait_running(60, other_than=pid)
    assert binary.read_bytes() == good, "the payload was not restored"
    bumped(rig, before, "payload.updates.rolled_back")
    rig.assert_nothing_lost(dockerd_restarted=True)


def _hostile_archives(rig: Rig, folder: Path) -> list[tuple[Path, str]]:
    """Archives that, extracted by tarfile as root, would write the rig's managed files through a
    symlink, rewrite the shim's inode (and chmod it setuid) through a hard link, or fill the disk;
    each with the refusal the installer must give."""
    from hostile import M, dir_, hard, reg, sym, write_archive

    from agent.payload import REQUIRED

    good = [dir_("docker/")] + [reg(f"docker/{name}") for name in REQUIRED]
    return [
        (write_archive(folder / "through-symlink.tgz", good + [sym("docker/link", str(rig.cpuinfo.parent)),
                                                              reg(f"docker/link/{rig.cpuinfo.name}", b"pwned\n")],
                       "gz"), "docker/link: a symbolic link (to "),
        (write_archive(folder / "hardlink.tar", good + [hard("docker/h", str(rig.shim), mode=0o6777),
                                                        reg("docker/h", b"pwned\n", mode=0o6777)]),
         "docker/h: a hard link (to "),
        (write_archive(folder / "fifo.tar", good + [M("docker/fifo", b"6")]), "docker/fifo: a FIFO"),
        (write_archive(folder / "bomb.tgz", good + [M("docker/big", data=bytes(1024), size=10 << 30)], "gz"),
         "the payload would exceed"),
    ]


@case("install-docker of hostile archives while the agent runs")
def install_hostile(rig: Rig) -> None:
    """Refused, each naming its member: the running payload, both managed files, every counter and
    dockerd itself are as they were, nothing is staged or run."""
    from hostile import snapshot

    folder = rig.base / "hostile"
    folder.mkdir(exist_ok=True)
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    payload, files = snapshot(rig.payload), {p: snapshot(p.parent) for p in (rig.cpuinfo, rig.shim)}
    beside = sorted(os.listdir(rig.payload.parent))
    for archive, refusal in _hostile_archives(rig, folder):
        out = subprocess.run([sys.executable, "-m", "agent", "--config", str(rig.agent.config_path), "install-docker",
                              str(archive)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1, f"{archive.name}: exit {out.returncode}: {out.stdout}{out.stderr}"
        assert out.stderr.startswith(f"armhf-agent install-docker: {archive} refused: ") and refusal in out.stderr \
            and out.stderr.count("\n") == 1, f"{archive.name}: {out.stderr}"
        assert snapshot(rig.payload) == payload, f"{archive.name}: the running payload changed"
        assert {p: snapshot(p.parent) for p in files} == files, f"{archive.name}: a managed file's folder changed"
        assert sorted(os.listdir(rig.payload.parent)) == beside, f"{archive.name}: staging left behind"
    assert rig.dockerd_pid() == pid
    assert "update" not in rig.log_since(mark), rig.log_since(mark)
    after = rig.counters()
    assert {k: v for k, v in after.items() if k.startswith("payload.")} == \
        {k: v for k, v in before.items() if k.startswith("payload.")}
    shutil.rmtree(folder)
    rig.assert_nothing_lost(dockerd_restarted=False)


# -- managed files ---------------------------------------------------------------------------------


def _displaced(rig: Rig) -> set[str]:
    folder = rig.base / "state" / "displaced"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def file_fault(name: str, mutate: Callable[[Path], None], reason: str) -> Callable[[Rig], None]:
    def run(rig: Rig) -> None:
        path = {"cpuinfo": rig.cpuinfo, "shim": rig.shim, "runtime-wrapper": rig.wrapper}[name]
        want, before, mark = path.read_bytes(), rig.counters(), rig.mark()
        displaced = _displaced(rig)
        pid = rig.dockerd_pid()
        kept_check = mutate(path, want)
        kept = r"; old kept at \S+" if reason != "missing" else ""
        rig.wait_log(mark, r"%s: repaired %s \(%s: .*%s\)" % (name, path, reason, kept))
        assert path.read_bytes() == want
        bumped(rig, before, f"{name}.repairs.{reason}")
        if reason != "missing":
            moved = _displaced(rig) - displaced
            assert moved, f"what the {reason} repair moved aside is not in displaced/"
            if reason == "replaced" and name == "shim":
                # A foreign docker that appears after the shim was in place is tampering: kept under a
                # dated name, never as the `shim.original` that uninstall would put back.
                entries = [rig.base / "state" / "displaced" / n for n in moved]
                assert any(p.read_bytes() == Path("/bin/true").read_bytes() for p in entries if p.is_file()), moved
                assert "shim.original" not in moved
            entries = [rig.base / "state" / "displaced" / n for n in moved]
            assert kept_check is None or any(kept_check(p) for p in entries), \
                f"the {reason} repair did not keep what it displaced (the symlink's target is never written)"
        assert rig.dockerd_pid() == pid
        rig.assert_nothing_lost(dockerd_restarted=False)
    return run


for _name, _mutate, _reason, _label in (
        ("cpuinfo", tamper.missing, "missing", "cpuinfo deleted"),
        ("cpuinfo", tamper.edited, "content", "cpuinfo edited"),
        ("cpuinfo", tamper.directory, "directory", "cpuinfo replaced by a directory"),
        ("cpuinfo", tamper.symlink, "symlink", "cpuinfo: symlink planted"),
        ("shim", tamper.missing, "missing", "shim deleted"),
        ("shim", tamper.replaced, "replaced", "shim overwritten by a real binary"),
        ("runtime-wrapper", tamper.missing, "missing", "runtime wrapper deleted"),
        ("runtime-wrapper", tamper.edited, "content", "runtime wrapper edited"),
        ("runtime-wrapper", tamper.replaced, "replaced", "runtime wrapper replaced by a binary"),
        ("runtime-wrapper", tamper.directory, "directory", "runtime wrapper replaced by a directory"),
        ("runtime-wrapper", tamper.symlink, "symlink", "runtime wrapper: symlink planted")):
    CASES.append(Case(_label, file_fault(_name, _mutate, _reason)))


@case("runtime wrapper missing while containers start")
def wrapper_missing(rig: Rig) -> None:
    """The agent held still (SIGSTOP), the wrapper deleted: containerd's shim finds the payload's runc
    next on PATH, so a container still starts (without the hijacked cpuinfo); once the agent runs again
    the wrapper is back and the next container has it."""
    path, content = rig.wrapper, rig.wrapper.read_bytes()
    rig.agent.signal(signal.SIGSTOP)
    try:
        path.unlink()
        out = rig.docker("run", "--rm", "--network", "none", "bb:local", "cat", "/proc/cpuinfo").stdout
        assert out == Path("/proc/cpuinfo").read_text(), "started, with the kernel's cpuinfo"
    finally:
        rig.agent.signal(signal.SIGCONT)
    wait_for(lambda: path.exists() and path.read_bytes() == content, 10, 0.02, "the wrapper repaired")
    out = rig.docker("run", "--rm", "--network", "none", "bb:local", "cat", "/proc/cpuinfo").stdout
    assert out == rig.cpuinfo.read_text()
    rig.assert_nothing_lost(dockerd_restarted=False)


@case("runtime wrapper cannot edit a spec")
def wrapper_edit_fails(rig: Rig) -> None:
    """A read-only bundle, run by the installed wrapper with the payload's real runc (as BuildKit runs
    it): the container runs, unedited, and the failure is one record and one count on the metric."""
    bundle = rig.base / "ro-bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "rootfs").mkdir(parents=True)
    subprocess.run(["tar", "-C", str(bundle / "rootfs"), "-xf", str(rig.base / "bb.tar")], check=True)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"].update(terminal=False, args=["true"])
    (bundle / "config.json").write_text(json.dumps(spec))
    records = Path(rig.config["agent"]["run_dir"]) / "runtime-records"
    failed_before = records.read_text().count(" failed ") if records.exists() else 0
    subprocess.run(["mount", "--bind", "-o", "ro", str(bundle), str(bundle)], check=True)
    try:
        done = subprocess.run([str(rig.wrapper), "--root", str(rig.base / "runc-state"), "run", "--bundle", str(bundle),
                               f"ro-{time.monotonic_ns()}"], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(bundle)], check=False)
    assert done.returncode == 0, done.stderr
    assert records.read_text().count(" failed OSError") == failed_before + 1
    rig.assert_nothing_lost(dockerd_restarted=False)


# -- the agent itself ------------------------------------------------------------------------------


@case("agent SIGKILL while containers run")
def agent_sigkill(rig: Rig) -> None:
    ids = [rig.docker("run", "-d", "--network", "none", "bb:local", "sh", "-c",
                      "trap 'exit 0' TERM; sleep 1000000 & wait").stdout.strip() for _ in range(3)]
    before = {cid: _container(rig, cid) for cid in ids}
    pid = rig.dockerd_pid()
    old = rig.agent
    old.proc.kill()
    old.proc.wait()
    old.notify.close()
    assert pid_alive(pid) and ping(rig.sock), "dockerd did not outlive the agent"
    rig.agent = rig.new_agent().start()
    rig.wait_log(0, r"STOPPED -> RUNNING: adopted running dockerd pid %d" % pid)
    rig.agent.notify.wait_for("READY=1", 30)
    assert rig.agent.wait_running() == pid
    assert "STOPPED -> STARTING" not in rig.agent.log(), "a second dockerd was started"
    for cid, (was_pid, was_started) in before.items():
        now_pid, now_started = _container(rig, cid)
        assert (now_pid, now_started) == (was_pid, was_started), f"container {cid[:12]} was restarted or lost"
    rig.assert_nothing_lost(dockerd_restarted=False)
    rig.docker("rm", "-f", *ids)


def _kill_agent(rig: Rig) -> None:
    """SIGKILL the agent (an operator's `systemctl restart` of a stuck agent, at its bluntest); dockerd is
    left in whatever state it was in."""
    rig.agent.proc.kill()
    rig.agent.proc.wait()
    rig.agent.notify.close()


def _replace_agent(rig: Rig, pause: float = 0.0) -> None:
    _kill_agent(rig)
    time.sleep(pause)
    rig.agent = rig.new_agent().start()


@case("agent restarted while dockerd hangs", docker__start_timeout_seconds=3.0)
def agent_restart_during_hang(rig: Rig) -> None:
    """The operator restarts the agent because docker hangs (dockerd SIGSTOPped). The new agent must take
    the silent dockerd over and replace it by the hang rule: before, it was neither adopted nor stopped,
    and every new dockerd exited on the pidfile, for ever."""
    pid = rig.dockerd_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        # Older than the start timeout when the new agent looks: it did answer once.
        _replace_agent(rig, pause=3.5)
        rig.wait_log(0, r"STOPPED -> RUNNING: adopted dockerd pid %d, not answering" % pid)
        rig.wait_log(0, r"RUNNING -> STOPPING: SIGTERM to pid %d \(hung" % pid)
        rig.agent.wait_running(60, other_than=pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not pid_alive(pid), 30, 0.05, "the hung dockerd gone")
    assert rig.state()["dockerd"]["restarts"]["hung"] == 1, rig.state()["dockerd"]["restarts"]
    rig.assert_nothing_lost(dockerd_restarted=True)


@case("agent restarted while dockerd starts")
def agent_restart_during_start(rig: Rig) -> None:
    """dockerd is held mid-start: its --config-file is a FIFO it blocks on, before it writes its pidfile
    or opens its socket. The agent is replaced then; the new one must wait for that dockerd (found by
    its executable and --pidfile argument) instead of starting a second one."""
    from agentproc import write_config

    fifo = rig.base / "daemon.json.fifo"
    if not fifo.exists():
        os.mkfifo(fifo, 0o600)
    plain = rig.config
    held = {**plain, "docker": {**plain["docker"], "args": [*plain["docker"]["args"], "--config-file", str(fifo)]}}
    mark = rig.mark()
    rig.config = held
    write_config(rig.agent.config_path, held)
    rig.agent.signal(signal.SIGHUP)
    line = rig.wait_log(mark, r"STOPPED -> STARTING: started .* \(pid \d+\)")
    pid = int(line.rsplit("(pid ", 1)[1].split(")")[0])
    time.sleep(0.5)
    assert pid_alive(pid) and not ping(rig.sock), "dockerd is not held mid-start"
    _replace_agent(rig)
    try:
        rig.wait_log(0, r"STOPPED -> STARTING: adopted dockerd pid %d, not answering yet" % pid)
    finally:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"{}\n")
        os.close(fd)
    rig.wait_log(0, r"STARTING -> RUNNING: pid %d answers" % pid)
    assert "STOPPED -> STARTING: started" not in rig.agent.log(), "a second dockerd was started"
    # Back to the rig's own config (a graceful reload restart).
    mark = rig.mark()
    rig.config = plain
    write_config(rig.agent.config_path, plain)
    rig.agent.signal(signal.SIGHUP)
    rig.wait_log(mark, r"reload: applied")
    rig.agent.wait_running(60, other_than=pid)
    rig.assert_nothing_lost(dockerd_restarted=True)


@case("a second agent started by hand")
def second_agent(rig: Rig) -> None:
    """`armhf-agent run` typed on a host where the service runs: refused at once, naming the running
    agent; the first agent and its dockerd are untouched (before, the second adopted the service's
    dockerd, and its Ctrl-C stopped production)."""
    pid, agent_pid = rig.dockerd_pid(), rig.agent.proc.pid
    out = subprocess.run([sys.executable, "-m", "agent", "--config", str(rig.agent.config_path), "run", "--no-metrics"],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 75, f"exit {out.returncode}: {out.stderr}"
    assert f"another armhf-agent (pid {agent_pid}) already runs" in out.stderr, out.stderr
    assert rig.dockerd_pid() == pid and rig.agent.proc.poll() is None
    rig.assert_nothing_lost(dockerd_restarted=False)


def _container(rig: Rig, cid: str) -> tuple[int, str]:
    out = rig.docker("inspect", "-f", "{{.State.Running}} {{.State.Pid}} {{.State.StartedAt}}", cid).stdout.split()
    assert out[0] == "true", f"container {cid[:12]} not running"
    return int(out[1]), out[2]


def _broken_config(good: str) -> str:
    return good.replace("health_failures = 2", "health_failures = 0").replace("[docker]\n", "[docker]\nbogus = 1\n")


@case("bad config at start", agent=False)
def bad_config_start(base: Path) -> None:
    from bench.rig import rig_config
    from agentproc import write_config

    path = write_config(base / "agent.toml", rig_config(base))
    path.write_text(_broken_config(path.read_text()))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "agent", "--config", str(path), "run", "--no-metrics"], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, f"exit {out.returncode}, expected 78 (EX_CONFIG): {out.stderr}"
    assert f"{path}:" in out.stderr and "docker.health_failures: Input should be greater than or equal to 1" \
        in out.stderr, out.stderr
    assert "docker.bogus: unknown key" in out.stderr, out.stderr
    assert not (base / "d.pid").exists() and not (base / "run" / "state.json").exists(), "it started anyway"
    assert time.monotonic() - t0 < 30


@case("bad config at reload")
def bad_config_reload(rig: Rig) -> None:
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    good = rig.agent.config_path.read_text()
    rig.agent.config_path.write_text(_broken_config(good))
    rig.agent.signal(signal.SIGHUP)
    rig.wait_log(mark, r"reload: .*agent.toml is invalid, keeping the running config")
    rig.wait_log(mark, r"reload:   .*agent.toml:\d+: docker.health_failures: Input should be greater")
    rig.wait_log(mark, r"reload:   .*agent.toml:\d+: docker.bogus: unknown key")
    bumped(rig, before, "reloads.rejected")
    assert rig.dockerd_pid() == pid
    rig.agent.config_path.write_text(good)
    rig.agent.signal(signal.SIGHUP)
    rig.wait_log(mark, r"reload: applied")
    bumped(rig, before, "reloads.applied")
    assert rig.dockerd_pid() == pid, "an unchanged config restarted dockerd"
    rig.assert_nothing_lost(dockerd_restarted=False)


@case("disk full while writing a managed file", small_fs="64k")
def disk_full(rig: Rig) -> None:
    """The cpuinfo lives on a 64 KiB tmpfs. Filled up, an edited cpuinfo cannot be repaired: the agent
    says so and the file that is there stays whole (the temp file fails, never the old file). Once space
    returns the repair happens."""
    path, pid = rig.cpuinfo, rig.dockerd_pid()
    want, before, mark = path.read_bytes(), rig.counters(), rig.mark()
    filler = path.parent / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # In place, without growing the file: the edit itself needs no space.
    edited = want[:-2] + b"X\n"
    with open(path, "r+b") as f:
        f.write(edited)
    rig.wait_log(mark, r"cpuinfo: cannot write %s: No space left on device \(will retry\)" % path)
    assert path.read_bytes() == edited, "the file in place was damaged by a failed repair"
    # A retry (one a second) may have its temp file open at the instant we look: only a temp file that
    # stays is a leak.
    def leftovers() -> set[str]:
        return {n for n in os.listdir(path.parent) if n not in (path.name, "filler")}

    stuck = leftovers()
    for _ in range(5):
        if not stuck:
            break
        time.sleep(0.05)
        stuck &= leftovers()
    assert not stuck, f"temp files left behind: {sorted(stuck)}"
    assert rig.dockerd_pid() == pid and ping(rig.sock)
    filler.unlink()
    rig.wait_log(mark, r"cpuinfo: repaired %s \(content" % path)
    assert path.read_bytes() == want
    bumped(rig, before, "cpuinfo.repairs.content")
    rig.assert_nothing_lost(dockerd_restarted=False)


@case("50 concurrent docker run through the shim during repairs")
def concurrent_runs(rig: Rig) -> None:
    """Mode and owner drift make the agent rewrite both files over and over while 50 `docker run` go
    through the shim. The drift itself breaks nothing (root can still read and exec), so any failure
    would be the repair's: a moment without the file, or half a file."""
    want, before, mark = rig.cpuinfo.read_bytes(), rig.counters(), rig.mark()
    stop = threading.Event()

    def drift() -> None:
        steps = [(os.chmod, rig.cpuinfo, 0o640), (os.chown, rig.shim, 1, 1),
                 (os.chmod, rig.shim, 0o700), (os.chown, rig.cpuinfo, 1, 1)]
        i = 0
        while not stop.is_set():
            fn, *args = steps[i % len(steps)]
            try:
                fn(*args)
            except FileNotFoundError:
                pass     # between the agent's rename and our call: nothing to drift
            i += 1
            time.sleep(0.02)

    def one_run(_: int) -> subprocess.CompletedProcess:
        return subprocess.run([str(rig.shim), "-H", f"unix://{rig.sock}", "run", "--rm", "--network", "none",
                               "bb:local", "cat", "/proc/cpuinfo"], capture_output=True, timeout=600)

    mutator = threading.Thread(target=drift, daemon=True)
    mutator.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one_run, range(50)))
    finally:
        stop.set()
        mutator.join()
    failed = [r for r in results if r.returncode != 0]
    assert not failed, f"{len(failed)} of 50 failed, e.g.: {failed[0].stderr.decode()[-500:]}"
    wrong = [r for r in results if r.stdout != want]
    assert not wrong, f"{len(wrong)} of 50 did not see the hijacked cpuinfo"
    after = rig.counters()
    repairs = sum(after[k] - before[k] for k in after if ".repairs." in k)
    assert repairs > 0, "no repair happened during the runs: the case tested nothing"
    rig.wait_log(mark, r"(cpuinfo|shim): repaired .* \((mode|owner): ")
    rig.assert_nothing_lost(dockerd_restarted=False)



# -- the metrics endpoint --------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@case("slow clients", metrics=True)
def slow_clients(rig: Rig) -> None:
    """300 hostile clients hold connections to the agent's metrics port as shipped (10 s per request,
    512 connections): silent ones, slowloris ones sending a byte every 9 s, half requests, and ones
    that send 8000 bytes of a request head (just under the limit) and stop. Meanwhile
    /metrics and /metrics/dockerd answer every scrape, the agent starts no thread per client, and every
    slow client is cut at the deadline (not before), after which the agent holds no more fds than
    before."""
    from bench.figures import agent_fds, agent_threads
    from bench.slow_clients import SlowClients

    pid, count = rig.agent.proc.pid, 300
    host, port = rig.config["metrics"]["listen"].rsplit(":", 1)
    threads0, fds0 = agent_threads(pid), agent_fds(pid)
    started = time.monotonic()
    slow = SlowClients((host, int(port)), count, dribble_seconds=9.0).start()
    most_threads = 0
    try:
        # A few fds of the agent come and go (Docker API connections): a margin of 3.
        wait_for(lambda: agent_fds(pid) >= fds0 + count - 3, 8, 0.05, f"{count} slow clients held by the agent")
        while time.monotonic() - started < 8:              # the deadline is at 10 s
            status, body = _get(rig.metrics_url)
            assert status == 200 and b"armhf_agent_dockerd_up 1.0" in body, (status, body[:200])
            status, body = _get(rig.metrics_url + "/dockerd")
            assert status == 200 and b"engine_daemon_engine_info" in body, (status, body[:200])
            most_threads = max(most_threads, agent_threads(pid))
            time.sleep(0.2)
        assert slow.connected() == count, f"{count - slow.connected()} slow clients cut before the deadline"
        wait_for(lambda: len(slow.lifetimes()) == count, 8, 0.1, "every slow client cut at the deadline")
    finally:
        slow.stop()
    from agent.http_server import DOCKERD_WORKERS
    assert most_threads <= threads0 + DOCKERD_WORKERS, f"agent threads {threads0} -> {most_threads}"
    lifetimes = sorted(c.lifetime for c in slow.lifetimes())
    assert lifetimes[0] >= 9.9 and lifetimes[-1] <= 14, (lifetimes[0], lifetimes[-1])
    wait_for(lambda: agent_fds(pid) <= fds0 + 5, 10, 0.1, "the agent's fds back to where they were")
    # Rate-limited (one line a minute, with a count): a later run on the same agent may only have the
    # line of an earlier one.
    rig.wait_log(0, r"metrics http: closed the connection from \S+: still in its request after "
                    r"request_timeout_seconds=10")
    assert _get(rig.metrics_url)[0] == 200
    rig.assert_nothing_lost(dockerd_restarted=False)


@case("dockerd SIGKILL with --live-restore, then docker exec into the survivor",
      docker__args=["--bridge=none", "--iptables=false", "--live-restore"])
def dockerd_sigkill_live_restore(rig: Rig) -> None:
    """The successor joins the namespace the agent keeps for its dockerds (agent/launch.py), so the
    container --live-restore kept is reachable, not only running (before: exec failed on its rootfs)."""
    pid, before, mark = rig.dockerd_pid(), rig.counters(), rig.mark()
    ns = os.readlink(f"/proc/{pid}/ns/mnt")
    survivor = rig.sentinel_pid
    os.kill(pid, signal.SIGKILL)
    new = rig.agent.wait_running(60, other_than=pid)
    rig.wait_log(mark, r"RUNNING -> BACKOFF: pid %d killed by SIGKILL" % pid)
    assert os.readlink(f"/proc/{new}/ns/mnt") == ns, "the successor is in the kept namespace"
    wait_for(lambda: rig.sentinel().get("Running") and rig.sentinel().get("Pid") == survivor, 30, 0.2,
             "the sentinel kept running, the same process")
    r = rig.docker("exec", SENTINEL, "cat", "/proc/self/comm", check=False)
    assert r.returncode == 0 and r.stdout.strip() == "cat", r.stderr
    bumped(rig, before, "dockerd.restarts.exited")
    rig.assert_nothing_lost(dockerd_restarted=False)
