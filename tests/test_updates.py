"""Docker updates against the real agent and a real dockerd: a payload changed in place is picked up
(dockerd restarted onto the new binary), one that cannot start is rolled back to the known-good copy,
an unsafe one is rejected while dockerd keeps running; `install-docker` lands a static tarball the same
way, and refuses what is unsafe.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

from agent import payload as payloads
import pytest

from agentproc import AgentProcess, agent_config, write_config
from conftest import requires_docker
from harness import REPO, SYSTEM_BINARIES, make_payload, ping, wait_for, which

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config_path), *args],
                          capture_output=True, text=True, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=120)


def started(a: AgentProcess) -> int:
    pid = a.wait_running()
    a.wait_log(r"payload: kept a known-good copy")
    return pid


def swap_in(root: Path, change) -> None:
    """What an operator (or a package) does: a full copy of the payload, changed, then swapped in."""
    new = root.with_name(root.name + ".new")
    shutil.copytree(root, new, symlinks=True)
    change(new)
    os.rename(root, root.with_name(root.name + ".old"))
    os.rename(new, root)


def updates(a: AgentProcess) -> dict:
    return a.state()["payload"]["updates"]


def exe_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def test_payload_swapped_in_place_restarts_dockerd_on_the_new_binary(agent, base):
    a = agent().start()
    old = started(a)
    root = base / "payload"
    size = (root / "bin" / "dockerd").stat().st_size

    def changed_dockerd(new: Path) -> None:
        with open(new / "bin" / "dockerd", "ab") as f:
            f.write(b"\0")   # still a valid ELF; a different binary as far as anyone can tell

    swap_in(root, changed_dockerd)
    a.wait_log(r"update: payload in .* changed; restarting dockerd onto it")
    wait_for(lambda: updates(a)["applied"] == 1, 60, 0.05, "update applied")
    new = a.wait_running(other_than=old)
    assert exe_of(new) == str(root / "bin" / "dockerd")
    assert os.stat(f"/proc/{new}/exe").st_size == size + 1
    assert os.stat(f"/proc/{new}/exe").st_ino == (root / "bin" / "dockerd").stat().st_ino
    st = a.state()
    assert st["dockerd"]["restarts"] == {"exited": 0, "hung": 0, "update": 1, "reload": 0, "start_timeout": 0}
    assert st["payload"]["updates"] == {"applied": 1, "rolled_back": 0, "rejected": 0}
    assert ping(a.sock)
    # The new payload becomes the known-good one.
    a.wait_log(r"payload: kept a known-good copy", count=2)
    known_good = base / "state" / "payload-known-good" / "bin" / "dockerd"
    assert known_good.read_bytes() == (root / "bin" / "dockerd").read_bytes()

    # The exe checks of adoption accept the updated binary: a restarted agent adopts it.
    a.proc.kill()
    a.proc.wait()
    b = agent().start()
    b.wait_log(r"STOPPED -> RUNNING: adopted running dockerd pid %d" % new)
    assert b.wait_running() == new
    assert "restarting it gracefully" not in b.log()


def test_payload_whose_dockerd_cannot_start_is_rolled_back(agent, base):
    a = agent().start()
    old = started(a)
    root = base / "payload"
    good = (root / "bin" / "dockerd").read_bytes()

    def broken_dockerd(new: Path) -> None:
        dockerd = new / "bin" / "dockerd"
        dockerd.unlink()
        dockerd.write_text("#!/bin/sh\nexit 1\n")
        dockerd.chmod(0o755)

    swap_in(root, broken_dockerd)
    a.wait_log(r"update: new payload could not become healthy; rolled back to the known-good copy", timeout=60)
    new = a.wait_running(other_than=old, timeout=60)
    assert exe_of(new) == str(root / "bin" / "dockerd")
    assert (root / "bin" / "dockerd").read_bytes() == good
    assert ping(a.sock)
    # The failed payload is kept for the operator to look at.
    assert (base / "payload.failed" / "bin" / "dockerd").read_text() == "#!/bin/sh\nexit 1\n"
    st = a.state()
    assert st["payload"]["updates"] == {"applied": 0, "rolled_back": 1, "rejected": 0}
    assert st["payload"]["state"] == "ok"
    assert st["dockerd"]["restarts"]["update"] == 1


def test_unsafe_payload_update_is_rejected_and_dockerd_keeps_running(agent, base):
    a = agent().start()
    pid = started(a)
    dockerd = base / "payload" / "bin" / "dockerd"
    dockerd.chmod(0o757)   # o+w: whoever can write it gets a root shell
    a.wait_log(r"update rejected: unsafe dockerd: .*/payload/bin/dockerd is writable by group or others "
               r"\(mode 0757\); dockerd keeps running on the binaries it loaded")
    wait_for(lambda: updates(a)["rejected"] == 1, 10, 0.05, "rejection published")
    st = a.state()
    assert st["payload"]["updates"] == {"applied": 0, "rolled_back": 0, "rejected": 1}
    assert st["payload"]["state"] == "invalid" and str(dockerd) in st["payload"]["problem"]
    # Several more steps: still the same dockerd, not restarted, rejected once.
    wait_for(lambda: a.state()["steps"] >= st["steps"] + 5, 30, 0.05, "more steps")
    st = a.state()
    assert a.dockerd_pid() == pid and ping(a.sock)
    assert sum(st["dockerd"]["restarts"].values()) == 0
    assert st["payload"]["updates"]["rejected"] == 1


def test_known_good_copy_on_a_full_filesystem_is_retried_and_leaves_no_tmp(agent, base):
    """The payload and state_dir share a 200 MiB tmpfs: the known-good copy (190 MB, plus the 64 MiB it
    leaves free) cannot fit. dockerd runs on regardless, the failure is logged once with its retry,
    nothing is left half-written; once the filesystem grows, the retry keeps the copy."""
    fs = base / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0755", "tmpfs", str(fs)], check=True)
    try:
        make_payload(fs / "payload")
        config = agent_config(base, docker__root=str(fs / "payload"), agent__state_dir=str(fs / "state"))
        a = agent(config=config, payload=False).start()
        pid = a.wait_running()
        a.wait_log(r"cannot keep a known-good copy of .*/fs/payload in .*/fs/state/payload-known-good: "
                   r"\[Errno 28\] not enough space in .*/fs/state: .* \(will retry in 10 s\)")
        assert not [n for n in os.listdir(fs / "state") if n.startswith("payload-known-good")], "a .tmp was left"
        subprocess.run(["mount", "-o", "remount,size=600m", str(fs)], check=True)
        a.wait_log(r"payload: kept a known-good copy in .*/fs/state/payload-known-good", timeout=60)
        assert sorted(n for n in os.listdir(fs / "state") if n.startswith("payload-known-good")) == \
            ["payload-known-good"]
        kept = fs / "state" / "payload-known-good" / "bin"
        assert (kept / "dockerd").read_bytes() == (fs / "payload" / "bin" / "dockerd").read_bytes()
        # The payload's symlinks to the system's binaries were validated: copied as the files they name.
        assert not (kept / "containerd").is_symlink() and (kept / "containerd").stat().st_size > 0
        assert a.dockerd_pid() == pid and ping(a.sock)
        a.stop()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def build_static_tarball(dest: Path, dockerd_extra: bytes = b"") -> Path:
    """Laid out like Docker's static release: a `docker/` folder with the binaries (real files, as in
    Docker's tarballs: install-docker refuses links), built by a non-root user (uid 1000,
    group-writable)."""
    staging = dest.parent / "tree" / "docker"
    staging.mkdir(parents=True)
    for name, src in SYSTEM_BINARIES.items():
        real = os.path.realpath(which(src))
        shutil.copyfile(real, staging / name)
        if name == "dockerd":
            with open(staging / name, "ab") as f:
                f.write(dockerd_extra)
        (staging / name).chmod(0o775)

    def by_a_user(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 1000
        info.uname = info.gname = "builder"
        return info

    with tarfile.open(dest, "w") as tar:
        tar.add(staging, arcname="docker", filter=by_a_user)
    shutil.rmtree(staging.parent)
    return dest


def test_install_docker_from_a_static_tarball_is_applied_by_the_running_agent(agent, base):
    a = agent().start()
    old = started(a)
    root = base / "payload"
    tarball = build_static_tarball(base / "docker-static.tar", dockerd_extra=b"\0")
    r = cli(a.config_path, "install-docker", str(tarball))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"installed {tarball} into {root} (dockerd ")
    assert f"previous payload kept in {root}.previous" in r.stdout
    assert (base / "payload.previous" / "bin" / "dockerd").is_file()
    # The folder inside the tarball became the payload: regular files, root's, 0755 (not the 0775 and
    # uid 1000 the tarball says).
    assert sorted(os.listdir(root)) == sorted(payloads.REQUIRED)
    for entry in [root, *root.iterdir()]:
        st = os.lstat(entry)
        assert (st.st_uid, st.st_gid) == (0, 0), entry
        assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), entry
        assert stat.S_IMODE(st.st_mode) == 0o755, entry

    wait_for(lambda: updates(a)["applied"] == 1, 60, 0.05, "update applied")
    new = a.wait_running(other_than=old)
    assert exe_of(new) == str(root / "dockerd")
    assert os.stat(f"/proc/{new}/exe").st_ino == (root / "dockerd").stat().st_ino
    assert a.state()["dockerd"]["restarts"]["update"] == 1
    assert ping(a.sock)
    assert not [n for n in os.listdir(base) if ".staging-" in n], "staging folder cleaned up"


def test_install_docker_refuses_a_payload_others_could_write(base):
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)   # docker.root's parent: anyone could swap the binaries
    root = shared / "docker"
    config = write_config(base / "agent.toml", agent_config(base, docker__root=str(root)))
    tarball = build_static_tarball(base / "docker-static.tar")
    r = cli(config, "install-docker", str(tarball))
    assert r.returncode == 1
    assert r.stderr.startswith(f"armhf-agent install-docker: {tarball} refused: unsafe ")
    assert f"{shared} is writable by group or others (mode 0777)" in r.stderr
    assert os.listdir(shared) == [], "nothing installed, nothing staged left behind"


def test_install_docker_refuses_an_archive_that_escapes_its_folder(base):
    config = write_config(base / "agent.toml", agent_config(base))
    evil = base / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("docker/../../escaped")
        data = b"#!/bin/sh\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    r = cli(config, "install-docker", str(evil))
    assert r.returncode == 1
    assert r.stderr.strip() == f"armhf-agent install-docker: {evil} refused: docker/../../escaped: '..' in the path"
    assert not (base / "escaped").exists() and not (base.parent / "escaped").exists()
    assert not (base / "payload").exists()


def elf_header(bits: int, machine: int) -> bytes:
    """The first bytes of an ELF executable: all agent.elf reads."""
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", 2, machine, 1) + bytes(32)


def test_arm64_hosts_accept_only_32_bit_arm_payloads_unless_allowed(base):
    """The architecture rule is applied on arm64 hosts only (here x86 binaries stand in for the
    payload), so it is exercised through payload.inspect with the machine given."""
    system = make_payload(base / "system")
    checked = payloads.inspect(str(system), machine="aarch64")
    assert len(checked.problems) == len(payloads.REQUIRED)
    assert f"{system}/bin/dockerd is ELF 64-bit LSB x86_64, not ELF 32-bit ARM (use --allow-arch to accept it)" \
        in checked.problems
    assert payloads.inspect(str(system), machine="aarch64", allow_arch=True).ok
    assert payloads.inspect(str(system), machine="x86_64").ok

    armhf = base / "armhf"
    armhf.mkdir(mode=0o755)
    for name in payloads.REQUIRED:
        (armhf / name).write_bytes(elf_header(32, 40))
        (armhf / name).chmod(0o755)
    assert payloads.inspect(str(armhf), machine="aarch64").ok
    (armhf / "runc").write_bytes(elf_header(64, 183))
    assert payloads.inspect(str(armhf), machine="aarch64").problems == (
        f"{armhf}/runc is ELF 64-bit LSB aarch64, not ELF 32-bit ARM (use --allow-arch to accept it)",)
