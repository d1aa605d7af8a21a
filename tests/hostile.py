"""Hostile payload input for the tests, built member by member: a world to install into (a previous
payload, a sentinel folder outside that nothing may touch), tree snapshots, and the two interpreters the
install path must hold on (the venv's, and Debian's /usr/bin/python3 that the .deb runs on)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from harness import REPO

from agent import payload as payloads

DEBIAN_PYTHON = "/usr/bin/python3"
VERSION_LINE = "Docker version 99.0.0-test, build hostile"


def snapshot(top: Path) -> dict:
    """Every entry under `top` (top included): type, mode, owner, links, size, mtime, and the content's
    hash (a symlink's target), never following a symlink."""
    out = {}
    if not os.path.lexists(top):
        return out
    for folder, dirs, files in os.walk(top):
        for name in ["."] + sorted(dirs) + sorted(files):
            p = Path(folder) / name if name != "." else Path(folder)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            else:
                what = ""
            out[str(p.relative_to(top))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                            st.st_nlink, st.st_size, st.st_mtime_ns, what)
    return out


def dockerd_script(mark: Path) -> bytes:
    """A stand-in dockerd that leaves a mark each time it is run (a refused payload must never be)."""
    return f"#!/bin/sh\necho \"$@\" >> {mark}/dockerd-ran\necho '{VERSION_LINE}'\n".encode()


@dataclass
class World:
    base: Path
    root: Path          # docker.root, holding a previous payload
    outside: Path       # a sentinel folder: nothing may ever change in it
    src: Path           # where the cases build their sources
    mark: Path          # a stand-in dockerd that runs writes here

    @property
    def victim(self) -> Path:
        return self.outside / "victim"

    def good_files(self) -> dict[str, bytes]:
        files = {name: b"#!/bin/sh\nexit 0\n" for name in payloads.REQUIRED}
        files["dockerd"] = dockerd_script(self.mark)
        return files

    def make_previous(self) -> None:
        self.root.mkdir(mode=0o755)
        for name, data in self.good_files().items():
            (self.root / name).write_bytes(data)
            os.chmod(self.root / name, 0o755)
        (self.root / "README").write_text("the previous payload\n")
        os.chmod(self.root / "README", 0o644)

    def snapshots(self) -> tuple[dict, dict]:
        return parent_snapshot(self.root.parent), snapshot(self.outside)


def parent_snapshot(folder: Path) -> dict:
    """docker.root's folder, where the installer's staging folder comes and goes: that moves the
    folder's own mtime, and only that is left out."""
    snap = snapshot(folder)
    if "." in snap:
        snap["."] = snap["."][:6] + (None,) + snap["."][7:]
    return snap


def make_world(base: Path) -> World:
    w = World(base, base / "opt" / "docker", base / "outside", base / "src", base / "mark")
    for d in (w.root.parent, w.outside, w.src, w.mark):
        d.mkdir(mode=0o755, parents=True)
    w.make_previous()
    w.victim.write_text("the outside file: its bytes, owner, mode and mtime must never change\n")
    os.chown(w.victim, 1234, 1234)
    os.chmod(w.victim, 0o640)
    os.utime(w.victim, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    (w.outside / "victim-dir").mkdir(mode=0o755)
    (w.outside / "victim-dir" / "inner").write_text("inside the outside folder\n")
    os.chmod(w.outside, 0o755)
    return w


# -- members -------------------------------------------------------------------------------------------


@dataclass
class M:
    """One tar member as the test wants it, whatever tarfile would have done."""
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o755
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    dev: tuple[int, int] = (0, 0)
    size: int | None = None        # a declared size that differs from the data (bombs, truncation)


def reg(name, data=b"#!/bin/sh\nexit 0\n", mode=0o755, **kw) -> M:
    return M(name, tarfile.REGTYPE, data, mode, **kw)


def dir_(name, mode=0o755, **kw) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode, **kw)


def sym(name, target) -> M:
    return M(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hard(name, target, mode=0o755, **kw) -> M:
    return M(name, tarfile.LNKTYPE, mode=mode, linkname=target, **kw)


def good_members(world: World, top: str = "docker/") -> list[M]:
    out = [dir_(top)] if top else []
    return out + [reg(top + name, data) for name, data in world.good_files().items()]


def tar_bytes(members: list[M], fmt=tarfile.GNU_FORMAT) -> bytes:
    """A tar archive of exactly these members (headers written by tarfile, data as given; a declared
    size larger than the data leaves the archive short, as a bomb's or a truncated archive's is)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.uid, info.gid = m.type, m.mode, m.uid, m.gid
            info.linkname = m.linkname
            info.devmajor, info.devminor = m.dev
            info.mtime = 1_700_000_000
            if m.size is not None and m.size != len(m.data):
                info.size = m.size
                buf.write(info.tobuf(fmt, tarfile.ENCODING, "surrogateescape"))
                buf.write(m.data)
                tar.offset = buf.tell()
                continue
            info.size = len(m.data) if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else 0
            tar.addfile(info, io.BytesIO(m.data) if info.size else None)
    return buf.getvalue()


def write_archive(path: Path, members: list[M], compression: str = "", fmt=tarfile.GNU_FORMAT) -> Path:
    raw = tar_bytes(members, fmt)
    if compression == "gz":
        import gzip
        raw = gzip.compress(raw, mtime=0)
    elif compression == "xz":
        import lzma
        raw = lzma.compress(raw)
    elif compression == "bz2":
        import bz2
        raw = bz2.compress(raw)
    path.write_bytes(raw)
    return path


def write_holey_tar(path: Path, members: list[M], big: list[tuple[str, int]]) -> Path:
    """`members`, then members of the given sizes whose data are holes: a real, complete archive of
    gigabytes of zeros that takes no disk (and seeking over it, as tarfile does, costs nothing)."""
    with open(path, "wb") as f:
        f.write(tar_bytes(members))
        pos = _end_of_members(members)
        for name, size in big:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            f.seek(pos)
            f.write(info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape"))
            pos += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        f.seek(pos)
        f.write(bytes(tarfile.RECORDSIZE))
    return path


def _end_of_members(members: list[M]) -> int:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(members))) as t:
        last = t.getmembers()[-1]
        return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


# -- the two interpreters --------------------------------------------------------------------------------

SERVER = r'''
import json, sys, traceback
sys.path.insert(0, sys.argv[1])
from agent.install import InstallError, install_docker
from agent.payload_tree import Limits
third_party = sorted(m for m in sys.modules if "-packages" in (getattr(sys.modules[m], "__file__", "") or ""))
print(json.dumps({"python": sys.version.split()[0], "executable": sys.executable, "third_party": third_party}),
      flush=True)
for line in sys.stdin:
    job = json.loads(line)
    try:
        out = {"installed": install_docker(job["source"], job["root"], limits=Limits(**job["limits"]))}
    except InstallError as exc:
        out = {"refused": str(exc)}
    except BaseException:
        out = {"crash": traceback.format_exc()}
    print(json.dumps(out), flush=True)
'''


class DebianInstaller:
    """agent.install on Debian's own Python, isolated (-I -S: no site-packages at all, so anything
    but the stdlib fails to import), serving one install per line."""

    name = "debian-python3"

    def __init__(self):
        self.proc = subprocess.Popen([DEBIAN_PYTHON, "-I", "-S", "-c", SERVER, str(REPO)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.hello = json.loads(self.proc.stdout.readline())

    def __call__(self, source, root, limits=None) -> tuple[str, str]:
        job = {"source": str(source), "root": str(root), "limits": (limits or {})}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the Debian python3 install server died"
        out = json.loads(line)
        assert "crash" not in out, out["crash"]
        return next(iter(out.items()))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


class VenvInstaller:
    name = "venv"

    def __call__(self, source, root, limits=None) -> tuple[str, str]:
        from agent.install import InstallError, install_docker
        from agent.payload_tree import Limits
        try:
            return "installed", install_docker(str(source), str(root), limits=Limits(**(limits or {})))
        except InstallError as exc:
            return "refused", str(exc)

    def close(self):
        pass


def assert_safe_tree(top: Path) -> None:
    """What an installed payload may hold: regular files and folders, root's, no setuid/setgid/sticky,
    nothing writable by group or others, one link per file."""
    for rel, (kind, mode, uid, gid, nlink, *_rest) in snapshot(top).items():
        assert kind in (stat.S_IFREG, stat.S_IFDIR), f"{rel}: type {kind:o}"
        assert (uid, gid) == (0, 0), f"{rel}: owned by {uid}:{gid}"
        assert not mode & 0o7022, f"{rel}: mode {mode:04o}"
        if kind == stat.S_IFDIR:
            assert mode == 0o755, f"{rel}: folder mode {mode:04o}"
        else:
            assert mode in (0o755, 0o644, 0o700, 0o600, 0o750, 0o640, 0o711), f"{rel}: mode {mode:04o}"
            assert nlink == 1, f"{rel}: {nlink} links"
