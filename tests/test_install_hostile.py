"""`install-docker` against hostile input, built member by member by the test itself: whatever the
archive or folder says, nothing outside its staging folder changes, only regular files and folders
with modes the installer chose land (root's), and a refusal leaves the previous payload and every other
file exactly as they were, with nothing of the refused payload run and no staging left behind.

Every case runs on both interpreters: the venv's, and Debian's /usr/bin/python3 (3.11.2, the one the
.deb runs on, without tarfile's extraction filters), isolated so that only the stdlib can be imported.
"""

from __future__ import annotations

import errno
import io
import os
import random
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from hostile import (DEBIAN_PYTHON, VERSION_LINE, DebianInstaller, M, VenvInstaller, World, assert_safe_tree, dir_,
                     good_members, hard, make_world, parent_snapshot, reg, snapshot, sym, tar_bytes, write_archive,
                     write_holey_tar)
from harness import REPO
from packaging_support import RELEASE_PYTHON

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install-docker runs as root (chown to root, mknod)")

GiB = 1 << 30


@pytest.fixture(scope="module", params=["venv", "debian-python3"])
def install(request):
    runner = VenvInstaller() if request.param == "venv" else DebianInstaller()
    yield runner
    runner.close()


@pytest.fixture
def world(base) -> World:
    return make_world(base)


# -- the catalog of hostile inputs: (kind, id, build(world) -> source, expected refusal or None) ---------

CASES: list[tuple[str, str, object, str | None]] = []


def case(kind: str, refused: str | None = None):
    def register(fn):
        CASES.append((kind, fn.__name__, fn, refused))
        return fn
    return register


def tar(world: World, members: list[M], name="x.tar", compression="", **kw) -> Path:
    return write_archive(world.src / name, members, compression, **kw)


# symlinks: followed by a file beneath, pointing out, pointing in, replacing the payload folder
@case("symlink", "docker/link: a symbolic link (to ")
def symlink_then_file_beneath(w):
    return tar(w, good_members(w) + [sym("docker/link", str(w.outside)), reg("docker/link/victim", b"pwned\n")])


@case("symlink", "docker/link: a symbolic link (to ../../../outside)")
def symlink_relative_then_file_beneath(w):
    return tar(w, good_members(w) + [sym("docker/link", "../../../outside"), reg("docker/link/victim", b"pwned\n")])


@case("symlink", "docker/etc: a symbolic link (to ")
def symlink_to_absolute_outside_dir(w):
    return tar(w, good_members(w) + [sym("docker/etc", str(w.outside / "victim-dir"))])


@case("symlink", "docker/docker-proxy: a symbolic link (to dockerd)")
def symlink_inside_the_payload(w):
    members = [m for m in good_members(w) if m.name != "docker/docker-proxy"]
    return tar(w, members + [sym("docker/docker-proxy", "dockerd")])


@case("symlink", "docker: a symbolic link (to ")
def symlink_as_the_payload_folder(w):
    return tar(w, [sym("docker", str(w.outside))] + good_members(w, top="docker/")[1:])


@case("symlink", "up: a symbolic link (to ..)")
def symlink_to_parent_then_file_through_it(w):
    return tar(w, good_members(w, top="") + [sym("up", ".."), reg("up/docker.previous/victim", b"pwned\n")])


@case("symlink", "docker/victim: a symbolic link (to ")
def symlink_over_an_outside_file_then_write(w):
    return tar(w, good_members(w) + [sym("docker/victim", str(w.victim)), reg("docker/victim", b"pwned\n")])


# names with ..
@case("dotdot", "docker/../../escaped: '..' in the path")
def dotdot_escape(w):
    return tar(w, good_members(w) + [reg("docker/../../escaped")])


@case("dotdot", "../outside/victim: '..' in the path")
def dotdot_leading(w):
    return tar(w, [reg("../outside/victim", b"pwned\n")] + good_members(w))


@case("dotdot", "docker/bin/../../../outside/victim: '..' in the path")
def dotdot_deep(w):
    return tar(w, good_members(w) + [reg("docker/bin/../../../outside/victim", b"pwned\n")])


@case("dotdot", "./../x: '..' in the path")
def dotdot_after_dot(w):
    return tar(w, good_members(w) + [dir_("./../x")])


@case("dotdot", "docker/..: '..' in the path")
def dotdot_as_a_folder(w):
    return tar(w, good_members(w) + [dir_("docker/..")])


# absolute names
@case("absolute", ": an absolute path")
def absolute_file(w):
    return tar(w, good_members(w) + [reg(str(w.victim), b"pwned\n")])


@case("absolute", ": an absolute path")
def absolute_double_slash(w):
    return tar(w, good_members(w) + [reg("/" + str(w.victim), b"pwned\n")])


@case("absolute", ": an absolute path")
def absolute_folder(w):
    # ("/" alone is no test: tarfile strips a folder name's trailing slashes, leaving the top.)
    return tar(w, [dir_(str(w.outside) + "/")] + good_members(w))


@case("absolute", ": an absolute path")
def absolute_folder_then_file(w):
    return tar(w, good_members(w) + [dir_(str(w.outside / "new")), reg(str(w.outside / "new" / "f"))])


# hard links
@case("hardlink", "docker/h: a hard link (to ")
def hardlink_to_outside_absolute_then_data(w):
    return tar(w, good_members(w) + [hard("docker/h", str(w.victim), mode=0o4777),
                                     reg("docker/h", b"pwned\n", mode=0o6777)])


@case("hardlink", "docker/h: a hard link (to ../../../outside/victim)")
def hardlink_to_outside_relative(w):
    return tar(w, good_members(w) + [hard("docker/h", "../../../outside/victim", mode=0o4777)])


@case("hardlink", "docker/dockerd: a hard link (to ")
def hardlink_as_a_required_binary(w):
    return tar(w, [m for m in good_members(w) if m.name != "docker/dockerd"] + [hard("docker/dockerd", str(w.victim))])


@case("hardlink", "docker/dockerd-copy: a hard link (to docker/dockerd)")
def hardlink_to_inside_file(w):
    return tar(w, good_members(w) + [hard("docker/dockerd-copy", "docker/dockerd")])


@case("hardlink", "docker/runc: a hard link (to docker/dockerd)")
def hardlink_inside_before_its_target_is_rewritten(w):
    return tar(w, [m for m in good_members(w) if m.name != "docker/runc"]
               + [hard("docker/runc", "docker/dockerd"), reg("docker/dockerd", b"#!/bin/sh\n")])


# devices, FIFOs, other types
@case("device", "docker/null: a character device (1,3)")
def char_device(w):
    return tar(w, good_members(w) + [M("docker/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))])


@case("device", "docker/sda: a block device (8,0)")
def block_device(w):
    return tar(w, good_members(w) + [M("docker/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0))])


@case("device", "docker/mem: a character device (1,1)")
def char_device_with_setuid(w):
    return tar(w, good_members(w) + [M("docker/mem", tarfile.CHRTYPE, mode=0o4666, dev=(1, 1))])


@case("fifo", "docker/fifo: a FIFO")
def fifo(w):
    return tar(w, good_members(w) + [M("docker/fifo", tarfile.FIFOTYPE, mode=0o666)])


@case("fifo", "docker/runc: a FIFO")
def fifo_as_a_required_binary(w):
    return tar(w, [m for m in good_members(w) if m.name != "docker/runc"] + [M("docker/runc", tarfile.FIFOTYPE)])


@case("type", "docker/z: an entry of unsupported type b'Z'")
def unknown_type(w):
    return tar(w, good_members(w) + [M("docker/z", b"Z", data=b"")])


# a name that is a folder in one entry and a file in another; duplicates
@case("conflict", "docker/x: appears both as a folder and as a file")
def folder_then_file(w):
    return tar(w, good_members(w) + [dir_("docker/x"), reg("docker/x")])


@case("conflict", "docker/x: appears both as a file and as a folder")
def file_then_folder(w):
    return tar(w, good_members(w) + [reg("docker/x"), dir_("docker/x")])


@case("conflict", "docker/x/y: docker/x is a file, so nothing can be beneath it")
def file_then_file_beneath(w):
    return tar(w, good_members(w) + [reg("docker/x"), reg("docker/x/y")])


@case("conflict", "docker/x: is a file, but other entries are beneath it")
def implied_folder_then_file(w):
    return tar(w, good_members(w) + [reg("docker/x/y"), reg("docker/x")])


@case("conflict", "docker/dockerd/x: docker/dockerd is a file")
def required_binary_then_beneath(w):
    return tar(w, good_members(w) + [reg("docker/dockerd/x")])


@case("duplicate", "docker/dockerd: appears twice")
def duplicate_file(w):
    return tar(w, good_members(w) + [reg("docker/dockerd", b"#!/bin/sh\necho second\n")])


@case("duplicate", "./docker/dockerd: appears twice")
def duplicate_through_dot(w):
    return tar(w, good_members(w) + [reg("./docker/dockerd")])


@case("duplicate", "docker//runc: appears twice")
def duplicate_through_double_slash(w):
    return tar(w, good_members(w) + [reg("docker//runc")])


@case("duplicate", "docker: appears twice")
def duplicate_folder(w):
    return tar(w, good_members(w) + [dir_("docker/", mode=0o777)])


# tar bombs and limits
@case("bomb", "docker/big: the payload would exceed 1073741824 bytes")
def bomb_declared_10_gib(w):
    return tar(w, good_members(w) + [M("docker/big", data=b"\0" * 1024, size=10 * GiB)])


@case("bomb", "docker/big: the payload would exceed 1073741824 bytes")
def bomb_declared_10_gib_gzip(w):
    return tar(w, good_members(w) + [M("docker/big", data=b"\0" * 1024, size=10 * GiB)], "x.tgz", "gz")


@case("bomb", "docker/c: the payload would exceed 1073741824 bytes")
def bomb_sum_of_members_over_the_limit(w):
    # Each under the limit, together over it: three members of 400 MiB of (real) zeros.
    return write_holey_tar(w.src / "holes.tar", good_members(w), [(f"docker/{n}", 400 << 20) for n in "abc"])


@case("bomb", "docker/huge: the payload would exceed 1073741824 bytes")
def bomb_one_real_member_over_the_limit(w):
    return write_holey_tar(w.src / "holes.tar", good_members(w), [("docker/huge", GiB + 1)])


@case("bomb", "more than 10000 files and folders")
def bomb_member_count(w):
    return tar(w, good_members(w) + [reg(f"docker/many/{i}", b"") for i in range(10_001)])


@case("bomb", "more than 10000 files and folders")
def bomb_implied_folders(w):
    # 5,000 members, but each implies its own folder: 10,000 entries and the payload's own 8.
    return tar(w, good_members(w) + [reg(f"docker/d{i}/f", b"") for i in range(5_000)])


@case("bomb", "... (40008 characters): 20002 levels deep (the limit for a payload is 32)")
def bomb_deep_path(w):
    # One member, a path of 20,000 folders (through a GNU long name): created under directory
    # descriptors, no PATH_MAX would stop it.
    return tar(w, good_members(w) + [reg("docker/" + "d/" * 20_000 + "f", b"")])


@case("bomb", "extended header (the limit is 1048576)")
def bomb_pax_header(w):
    return tar(w, [M("././@PaxHeader", tarfile.XHDTYPE, data=b"", size=100 << 20)] + good_members(w))


@case("bomb", "docker/neg: a negative size (-1)")
def bomb_negative_size(w):
    return tar(w, good_members(w) + [M("docker/neg", data=b"", size=-1)])


# damaged archives
def _good_tgz(w) -> bytes:
    path = tar(w, good_members(w) + [reg("docker/pad", os.urandom(200_000), mode=0o644)], "good.tgz", "gz")
    data = path.read_bytes()
    path.unlink()
    return data


@case("corrupt", "not a readable tar archive")
def truncated_gzip(w):
    data = _good_tgz(w)
    (w.src / "cut.tgz").write_bytes(data[: len(data) // 2])
    return w.src / "cut.tgz"


@case("corrupt", "not a readable tar archive")
def corrupt_gzip_checksum(w):
    data = bytearray(_good_tgz(w))
    data[len(data) // 2] ^= 0xFF         # inside stored random bytes: only the CRC can tell
    (w.src / "bad.tgz").write_bytes(bytes(data))
    return w.src / "bad.tgz"


@case("corrupt", "not a readable tar archive")
def gzip_cut_in_its_trailer(w):
    data = _good_tgz(w)
    (w.src / "cut.tgz").write_bytes(data[:-4])
    return w.src / "cut.tgz"


@case("corrupt", "no end-of-archive marker")
def plain_tar_cut_between_members(w):
    members = good_members(w)
    (w.src / "cut.tar").write_bytes(tar_bytes(members)[: _data_end(members)])
    return w.src / "cut.tar"


def _data_end(members: list[M]) -> int:
    """Where the last member's data ends (its padding included), before the end-of-archive blocks."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(members))) as t:
        last = t.getmembers()[-1]
        return last.offset_data + ((last.size + 511) // 512) * 512


@case("corrupt", "not a readable tar archive")
def plain_tar_cut_inside_data(w):
    members = good_members(w) + [reg("docker/pad", os.urandom(100_000), mode=0o644)]
    data = tar_bytes(members)
    (w.src / "cut.tar").write_bytes(data[: _data_end(members) - 50_000])
    return w.src / "cut.tar"


@case("corrupt", "damaged or truncated after its last readable member")
def plain_tar_with_a_damaged_header(w):
    members = good_members(w) + [reg("docker/pad", b"x" * 600, mode=0o644)]
    data = bytearray(tar_bytes(members))
    end = _data_end(members)
    data[end - 1536: end - 1024] = os.urandom(512)      # the last member's header, with a bad checksum
    (w.src / "bad.tar").write_bytes(bytes(data))
    return w.src / "bad.tar"


@case("corrupt", "data after the end-of-archive marker")
def garbage_after_the_end(w):
    (w.src / "tail.tar").write_bytes(tar_bytes(good_members(w)) + b"garbage" * 100)
    return w.src / "tail.tar"


@case("corrupt", "not a readable tar archive")
def truncated_xz(w):
    path = tar(w, good_members(w) + [reg("docker/pad", os.urandom(100_000), mode=0o644)], "x.tar.xz", "xz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# not an archive at all
@case("nontar", "not a readable tar archive")
def random_bytes(w):
    (w.src / "random.tgz").write_bytes(random.Random(1).randbytes(100_000))
    return w.src / "random.tgz"


@case("nontar", "not a readable tar archive")
def an_elf_binary(w):
    (w.src / "true.tgz").write_bytes(Path("/bin/true").read_bytes())
    return w.src / "true.tgz"


@case("nontar", "not a readable tar archive")
def a_text_file(w):
    (w.src / "notes.tar").write_text("this is not a tar archive\n" * 100)
    return w.src / "notes.tar"


@case("nontar", "not a readable tar archive")
def gzip_of_text(w):
    import gzip
    (w.src / "text.tgz").write_bytes(gzip.compress(b"not a tar inside\n" * 1000))
    return w.src / "text.tgz"


@case("nontar", "not a regular file or a folder")
def a_fifo_as_source(w):
    os.mkfifo(w.src / "pipe.tgz")
    return w.src / "pipe.tgz"


# empty
@case("empty", "an empty archive")
def empty_tar(w):
    (w.src / "empty.tar").write_bytes(tar_bytes([]))
    return w.src / "empty.tar"


@case("empty", "an empty archive")
def only_zero_blocks(w):
    (w.src / "zeros.tar").write_bytes(bytes(20 * 512))
    return w.src / "zeros.tar"


@case("empty", "not a readable tar archive")
def zero_byte_file(w):
    (w.src / "zero.tgz").write_bytes(b"")
    return w.src / "zero.tgz"


@case("empty", "an empty archive")
def empty_tgz(w):
    return tar(w, [], "empty.tgz", "gz")


@case("empty", "refused: missing in ")
def only_folders(w):
    return tar(w, [dir_("docker/"), dir_("docker/bin/")])


@case("empty", "an empty archive")
def only_the_top_folder(w):
    return tar(w, [dir_("./")])


# names that cannot be printed are named escaped, on one line
@case("names", "'docker/evil\\nname': a symbolic link")
def newline_in_a_refused_name(w):
    return tar(w, good_members(w) + [sym("docker/evil\nname", "/")])


@case("names", "File name too long")
def a_component_longer_than_the_filesystem_allows(w):
    return tar(w, good_members(w) + [reg("docker/" + "n" * 300, b"x", mode=0o644)])


# folder sources
def folder(w: World, name="tree") -> Path:
    top = w.src / name
    top.mkdir()
    for n, data in w.good_files().items():
        (top / n).write_bytes(data)
        os.chmod(top / n, 0o755)
    return top


@case("folder", "/evil: a symbolic link (to ")
def folder_symlink_out(w):
    top = folder(w)
    (top / "evil").symlink_to(w.outside)
    return top


@case("folder", "/bin: a symbolic link (to ")
def folder_symlinked_subfolder_out(w):
    top = folder(w)
    (top / "bin").symlink_to(w.outside / "victim-dir")
    return top


@case("folder", "/runc: a symbolic link (to dockerd)")
def folder_symlink_inside(w):
    top = folder(w)
    (top / "runc").unlink()
    (top / "runc").symlink_to("dockerd")
    return top


@case("folder", "/fifo: a FIFO")
def folder_fifo(w):
    top = folder(w)
    os.mkfifo(top / "fifo")
    return top


@case("folder", "/containerd: a FIFO")
def folder_fifo_as_a_required_binary(w):
    top = folder(w)
    (top / "containerd").unlink()
    os.mkfifo(top / "containerd")
    return top


@case("folder", "/sock: a socket")
def folder_socket(w):
    top = folder(w)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(top / "sock"))
    s.close()
    return top


@case("folder", "/null: a character device")
def folder_char_device(w):
    top = folder(w)
    os.mknod(top / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return top


@case("folder", "/bad\\nname': a FIFO")
def folder_entry_with_a_newline_in_its_name(w):
    top = folder(w)
    os.mkfifo(top / "bad\nname")
    return top


@case("folder", "not a readable tar archive")
def folder_given_as_a_symlink_to_a_file(w):
    (w.src / "link").symlink_to(w.victim)
    return w.src / "link"


# -- sources that install, made safe -----------------------------------------------------------------------

OK_CASES: list[tuple[str, str, object, object]] = []


def installs(kind: str):
    def register(fn):
        OK_CASES.append((kind, fn.__name__, fn))
        return fn
    return register


@installs("modes")
def setuid_setgid_sticky_members(w):
    """Every special bit and foreign owner the archive asks for; none survives."""
    members = [dir_("docker/", mode=0o3777, uid=1000, gid=1000)]
    for name, data in w.good_files().items():
        members.append(reg(f"docker/{name}", data, mode=0o6777, uid=1000, gid=50))
    members += [dir_("docker/share/", mode=0o1777), reg("docker/share/notes", b"x", mode=0o4666),
                reg("docker/private", b"secret", mode=0o600), reg("docker/plain", b"p", mode=0o2644)]
    return tar(w, members, "modes.tgz", "gz"), {"docker": 0o755, "dockerd": 0o755, "share": 0o755,
                                                "share/notes": 0o644, "private": 0o600, "plain": 0o644}


@installs("modes")
def folder_setuid_file_setgid_dir(w):
    top = folder(w)
    os.chmod(top / "dockerd", 0o4755)
    os.chmod(top / "runc", 0o6777)
    (top / "lib").mkdir()
    os.chmod(top / "lib", 0o2777)
    (top / "lib" / "x").write_bytes(b"x")
    os.chmod(top / "lib" / "x", 0o1666)
    os.chown(top / "runc", 1000, 1000)
    return top, {"dockerd": 0o755, "runc": 0o755, "lib": 0o755, "lib/x": 0o644}


@installs("hardlink")
def folder_hard_link_to_an_outside_file(w):
    """A folder may hold a hard link to a private outside file: read, never written; the copy is its
    own inode, and no more readable than the original."""
    top = folder(w)
    os.link(w.victim, top / "victim-link")
    return top, {"victim-link": 0o640}


@installs("formats")
def bzip2(w):
    return tar(w, good_members(w), "x.tar.bz2", "bz2"), {"dockerd": 0o755}


@installs("formats")
def xz_pax_format(w):
    return tar(w, good_members(w), "x.tar.xz", "xz", fmt=tarfile.PAX_FORMAT), {"dockerd": 0o755}


@installs("formats")
def binaries_at_the_top_no_folder(w):
    return tar(w, good_members(w, top=""), "flat.tar"), {"dockerd": 0o755}


@installs("formats")
def contiguous_and_old_regular_types(w):
    members = good_members(w)
    members[1].type = tarfile.CONTTYPE
    members[2].type = tarfile.AREGTYPE
    return tar(w, members, "types.tar"), {"dockerd": 0o755}


@installs("names")
def a_name_with_a_newline_is_just_a_name(w):
    return tar(w, good_members(w) + [reg("docker/odd\nname", b"x", mode=0o644)]), {"odd\nname": 0o644}


# -- the checks ---------------------------------------------------------------------------------------------


def _params(cases):
    return [pytest.param(c, id=f"{c[0]}-{c[1]}") for c in cases]


@pytest.mark.parametrize("c", _params([c for c in CASES if c[3] is not None]))
def test_hostile_input_is_refused_and_changes_nothing(install, world, c):
    kind, _, build, refusal = c
    source = build(world)
    before_root, before_outside = world.snapshots()
    outcome, message = install(source, world.root)
    assert outcome == "refused", message
    assert refusal in message, message
    assert "\n" not in message, f"one line: {message!r}"
    assert message.startswith(f"{source}"), message
    assert world.snapshots() == (before_root, before_outside), "the refusal changed something"
    assert sorted(os.listdir(world.root.parent)) == ["docker"], "staging left behind"
    assert not os.listdir(world.mark), "a refused payload's dockerd was run"


@pytest.mark.parametrize("c", _params(OK_CASES))
def test_hostile_modes_and_owners_are_replaced_by_chosen_ones(install, world, c):
    kind, _, build = c
    source, want = build(world)
    before_root, before_outside = world.snapshots()
    outcome, message = install(source, world.root)
    assert outcome == "installed", message
    assert VERSION_LINE.split()[2].rstrip(",") in message
    assert_safe_tree(world.root)
    modes = {rel: v[1] for rel, v in snapshot(world.root).items()}
    if "docker" in want:
        del want["docker"]
        assert modes["."] == 0o755
    assert {k: modes[k] for k in want} == want
    # The previous payload was moved aside whole, nothing else touched.
    assert snapshot(world.root.parent / "docker.previous") == {k[len("docker/"):] if k.startswith("docker/")
                                                               else ("." if k == "docker" else k): v
                                                               for k, v in before_root.items()
                                                               if k == "docker" or k.startswith("docker/")}
    assert snapshot(world.outside) == before_outside
    assert sorted(os.listdir(world.root.parent)) == ["docker", "docker.previous"]


def test_the_catalog_covers_every_kind_the_contract_names():
    kinds = Counter(c[0] for c in CASES if c[3] is not None)
    kinds.update(c[0] for c in OK_CASES)
    for kind in ("symlink", "dotdot", "absolute", "hardlink", "device", "fifo", "modes", "conflict", "duplicate",
                 "bomb", "corrupt", "nontar", "empty", "folder"):
        assert kinds[kind] > 0, kind


def test_a_refused_payloads_dockerd_is_never_run(install, world):
    """Validation refuses it (runc missing): the stand-in dockerd, which leaves a mark when run, never is."""
    members = [m for m in good_members(world) if m.name != "docker/runc"]
    source = tar(world, members)
    before = world.snapshots()
    outcome, message = install(source, world.root)
    assert outcome == "refused" and "missing in " in message and "runc" in message, message
    assert world.snapshots() == before
    assert not os.listdir(world.mark)
    # The same payload complete is installed, and only then run (for its version).
    outcome, message = install(tar(world, good_members(world), "ok.tar"), world.root)
    assert outcome == "installed" and "dockerd 99.0.0-test" in message, message
    assert os.listdir(world.mark) == ["dockerd-ran"]


def test_hard_link_member_never_touches_the_outside_file(install, world):
    """The review's reproduction: a hard link to an outside file, then data for it, asking for
    setuid and a foreign owner. The outside file keeps its bytes, owner, mode and mtime."""
    victim_before = os.lstat(world.victim)
    data_before = world.victim.read_bytes()
    source = tar(world, good_members(world) + [hard("docker/h", str(world.victim), mode=0o6777, uid=0, gid=0),
                                               reg("docker/h", b"pwned\n", mode=0o6777)])
    outcome, _ = install(source, world.root)
    assert outcome == "refused"
    st = os.lstat(world.victim)
    assert world.victim.read_bytes() == data_before
    assert (st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, st.st_nlink) == \
        (victim_before.st_uid, victim_before.st_gid, victim_before.st_mode, victim_before.st_mtime_ns, 1)


def test_a_limit_smaller_than_the_sum_refuses_before_writing(install, world):
    members = good_members(world) + [reg(f"docker/blob{i}", b"\1" * 300_000, mode=0o644) for i in range(4)]
    source = tar(world, members, "sum.tgz", "gz")
    before = world.snapshots()
    outcome, message = install(source, world.root, {"max_bytes": 1_000_000})
    assert outcome == "refused" and "docker/blob3: the payload would exceed 1000000 bytes" in message, message
    assert world.snapshots() == before


# -- a full filesystem ---------------------------------------------------------------------------------


@pytest.fixture
def small_fs(base):
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


def test_a_payload_larger_than_the_free_space_is_refused_before_a_byte_is_written(install, base, small_fs):
    """A 4 MiB tmpfs holds docker.root: an archive of 6 MB (a bomb, for that filesystem) is refused
    up front, and the filesystem is as it was."""
    opt = small_fs(base / "small", "size=4m")
    world = World(base, opt / "docker", base / "outside", base / "src", base / "mark")
    for d in (world.outside, world.src, world.mark):
        d.mkdir(mode=0o755)
    world.make_previous()
    source = tar(world, good_members(world) + [reg("docker/big", b"\0" * (6 << 20), mode=0o644)], "big.tgz", "gz")
    before = snapshot(opt), os.statvfs(opt).f_bfree
    outcome, message = install(source, world.root)
    assert outcome == "refused", message
    assert f"not enough space in {opt}" in message, message
    assert (snapshot(opt), os.statvfs(opt).f_bfree) == before


def test_running_out_of_space_midway_leaves_nothing_behind(install, base, small_fs):
    """Space enough by the numbers, but inodes run out halfway (nr_inodes): the half-written staging
    folder is removed and the previous payload is untouched."""
    opt = small_fs(base / "small", "size=8m", "nr_inodes=14")
    world = World(base, opt / "docker", base / "outside", base / "src", base / "mark")
    for d in (world.outside, world.src, world.mark):
        d.mkdir(mode=0o755)
    world.make_previous()
    source = tar(world, good_members(world))
    before = parent_snapshot(opt)
    outcome, message = install(source, world.root, {"keep_free": 0})
    assert outcome == "refused", message
    assert os.strerror(errno.ENOSPC) in message, message
    assert parent_snapshot(opt) == before
    assert not os.listdir(world.mark)


# -- a property: random mixtures of members -------------------------------------------------------------

NAMES = ["docker/x", "docker/sub/y", "docker/sub", "docker/dockerd", "docker/runc", "x", "docker/s/t/u"]


def random_archive(rng: random.Random, w: World) -> tuple[list[M], bool]:
    """The seven binaries plus up to four random members; returns the members and whether any of them
    is a link, a device or a FIFO, or has an absolute or `..` name (which the contract says never lands)."""
    members = good_members(w)
    hostile = False
    for _ in range(rng.randrange(5)):
        name = rng.choice(NAMES)
        mangle = rng.random()
        if mangle < 0.1:
            name, hostile = str(w.outside / name), True
        elif mangle < 0.2:
            name, hostile = name.replace("docker/", "docker/../../../outside/", 1), True
        elif mangle < 0.3:
            name = "./" + name
        kind = rng.choice(["reg", "reg", "reg", "dir", "sym", "hard", "chr", "blk", "fifo"])
        mode = rng.choice([0o755, 0o4755, 0o2755, 0o1777, 0o600, 0o644, 0o777, 0o6777])
        uid = rng.choice([0, 1000])
        if kind == "reg":
            m = reg(name, rng.randbytes(rng.randrange(2000)), mode=mode, uid=uid)
        elif kind == "dir":
            m = dir_(name, mode=mode, uid=uid)
        elif kind == "sym":
            m, hostile = sym(name, rng.choice([str(w.outside), "../../../outside", "dockerd", ".", "/"])), True
        elif kind == "hard":
            m, hostile = hard(name, rng.choice([str(w.victim), "../../../outside/victim", "docker/dockerd"]),
                              mode=mode, uid=uid), True
        else:
            m = M(name, {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind], mode=mode,
                  dev=(1, 3))
            hostile = True
        members.insert(rng.randrange(len(members) + 1), m)
        if rng.random() < 0.3 and m.type in (tarfile.REGTYPE, tarfile.DIRTYPE):
            # and sometimes a file or folder written through the name just added
            members.append(reg(name.rstrip("/") + "/victim", b"pwned\n", mode=0o4777))
    return members, hostile


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


@pytest.mark.parametrize("seeds", [range(0, 150)], ids=["150-archives"])
def test_random_member_mixtures_never_escape(install, base, seeds):
    """Oracle, independent of the installer's rules: the outside folder never changes; a refusal
    leaves docker.root's folder as it was; an install holds only safe entries, each regular member's
    bytes where its name says, nothing the archive did not name; and an archive with a link, device,
    FIFO, absolute or `..` member never installs."""
    outcomes = Counter()
    for seed in seeds:
        w = make_world(base / f"w{seed}")
        rng = random.Random(seed)
        members, hostile = random_archive(rng, w)
        source = write_archive(w.src / "r.tar", members, rng.choice(["", "gz"]))
        before_root, before_outside = w.snapshots()
        outcome, message = install(source, w.root)
        outcomes[outcome] += 1
        assert snapshot(w.outside) == before_outside, (seed, message)
        if outcome == "refused":
            assert parent_snapshot(w.root.parent) == before_root, (seed, message)
            assert not os.listdir(w.mark), seed
        else:
            assert not hostile, (seed, [(m.name, m.type) for m in members])
            assert_safe_tree(w.root)
            installed = {rel for rel in snapshot(w.root) if rel != "."}
            files = {}
            for m in members:
                n = _normal(m.name)
                assert n.startswith("docker/") or n == "docker", (seed, n)
                if m.type == tarfile.REGTYPE:
                    files[n[len("docker/"):]] = m.data
            named = set()
            for m in members:
                rel = _normal(m.name)[len("docker/"):]
                parts = rel.split("/") if rel else []
                named.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
            assert installed == named, (seed, installed ^ named)
            for rel, data in files.items():
                assert (w.root / rel).read_bytes() == data, (seed, rel)
        subprocess.run(["rm", "-rf", str(w.base)], check=True)
    print(f"{install.name}: {len(seeds)} random archives: {dict(outcomes)}")
    assert outcomes["refused"] and outcomes["installed"], outcomes


def os_release() -> dict[str, str]:
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip('"')
    return fields


# -- the interpreters themselves, and the CLI ------------------------------------------------------------


def test_the_install_path_is_stdlib_only_on_debians_python3():
    server = DebianInstaller()
    try:
        assert server.hello["executable"] == DEBIAN_PYTHON
        assert server.hello["third_party"] == []
        # The .deb's Python is the release's own (3.11 on Debian 12, 3.13 on 13: the fast subset also
        # runs in a fresh root of each, tests/test_fresh_root.py); this host's /usr/bin/python3 is it.
        release = os_release()["VERSION_CODENAME"]
        major, minor, *_ = server.hello["python"].split(".")
        assert f"{major}.{minor}" == RELEASE_PYTHON[release], (release, server.hello)
    finally:
        server.close()
    out = subprocess.run([DEBIAN_PYTHON, "-I", "-S", "-c",
                          "import sys, tarfile; sys.path.insert(0, sys.argv[1]); import agent.install; "
                          "print(hasattr(tarfile, 'data_filter'))", str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    print("Debian python3 has tarfile extraction filters:", out.stdout.strip())


def cli(base: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    config = base / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{base}/state"\nrun_dir = "{base}/run"\n\n'
                      f'[docker]\nroot = "{base}/opt/docker"\n')
    os.chmod(config, 0o644)
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run(prefix + [sys.executable, "-m", "agent", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=120)


def test_cli_refusal_is_one_clear_line_and_exit_1(world):
    source = symlink_then_file_beneath(world)
    before = world.snapshots()
    r = cli(world.base, "install-docker", str(source))
    assert r.returncode == 1, r
    assert r.stderr == f"armhf-agent install-docker: {source} refused: docker/link: a symbolic link (to " \
                       f"{world.outside}); a payload holds only files and folders\n"
    assert world.snapshots() == before


def test_non_root_gets_a_clear_error_not_a_traceback(world, tmp_path_factory):
    """Checked before the config is even read (nobody may not be able to read it)."""
    elsewhere = Path(tempfile.mkdtemp())
    try:
        os.chmod(elsewhere, 0o755)
        source = write_archive(elsewhere / "x.tar", good_members(world))
        before = world.snapshots()
        r = cli(elsewhere, "install-docker", str(source), user="65534")
        assert r.returncode == 1, r
        assert r.stderr == ("armhf-agent install-docker: must run as root: a payload's files are made "
                            "root-owned, and dockerd runs them as root (try sudo)\n"), r.stderr
        assert world.snapshots() == before
        assert not (elsewhere / "opt").exists()
    finally:
        subprocess.run(["rm", "-rf", str(elsewhere)], check=True)
