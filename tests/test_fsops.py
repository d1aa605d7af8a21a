"""The filesystem facade on real files: atomic writes and the bounded store of displaced things."""

import os
import stat

import pytest

from agent.fsops import DisplacedStore, atomic_write


class FrozenClock:
    """Every displacement in the same second: the case where names alone cannot order them."""

    def time(self):
        return 1_800_000_000.0


def displace_new(store, folder, name, reason, content):
    path = folder / name
    path.write_text(content)
    return os.path.basename(store.displace(name, str(path), reason, keep_as_original=False))


def test_store_keeps_the_newest_entries_whatever_their_names(tmp_path):
    store = DisplacedStore(str(tmp_path / "state"), keep=3, clock=FrozenClock())
    work = tmp_path / "work"
    work.mkdir()
    # Same second: "symlink" sorts after "content" by name, and ".10" before ".2".
    order = ["symlink", "symlink", "content", "mode", "content", "content"]
    kept = [displace_new(store, work, "shim", reason, f"{i}\n") for i, reason in enumerate(order)]
    assert "shim.20270115T080000.content.2" in kept and "shim.20270115T080000.symlink.2" in kept
    left = sorted(os.listdir(tmp_path / "state" / "displaced"))
    assert left == sorted(kept[-3:]), "the three most recently displaced things stay"
    assert store.entries("shim") == kept[-3:]
    contents = [(tmp_path / "state" / "displaced" / n).read_text() for n in store.entries("shim")]
    assert contents == ["3\n", "4\n", "5\n"]


def test_store_never_rotates_the_original_and_keeps_folders_and_symlinks(tmp_path):
    store = DisplacedStore(str(tmp_path / "state"), keep=2, clock=FrozenClock())
    work = tmp_path / "work"
    work.mkdir()
    (work / "docker").write_text("the real client\n")
    original = store.displace("docker", str(work / "docker"), "replaced", keep_as_original=True)
    assert os.path.basename(original) == "docker.original"
    (work / "docker").mkdir()
    (work / "docker" / "inside").write_text("x\n")
    folder = store.displace("docker", str(work / "docker"), "directory", keep_as_original=False)
    (work / "docker").symlink_to("/etc/hostname")
    link = store.displace("docker", str(work / "docker"), "symlink", keep_as_original=False)
    assert os.path.isdir(folder) and os.path.islink(link) and os.readlink(link) == "/etc/hostname"
    displace_new(store, work, "docker", "content", "newest\n")
    assert not os.path.exists(folder), "the oldest rotated out, a folder removed whole"
    assert os.path.islink(link) and open(original).read() == "the real client\n"


def test_atomic_write_replaces_a_symlink_itself_never_its_target(tmp_path):
    target = tmp_path / "target"
    target.write_text("must stay\n")
    path = tmp_path / "managed"
    path.symlink_to(target)
    atomic_write(str(path), b"ours\n", 0o640)
    assert not path.is_symlink() and path.read_bytes() == b"ours\n"
    assert stat.S_IMODE(path.lstat().st_mode) == 0o640
    assert target.read_text() == "must stay\n"
    assert sorted(os.listdir(tmp_path)) == ["managed", "target"], "no temp file left behind"


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "managed"
    path.write_bytes(b"old\n")

    def refuse():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(str(path), b"new\n", 0o644, before_rename=refuse)
    assert path.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["managed"]
