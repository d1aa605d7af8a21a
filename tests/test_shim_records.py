"""The records reader on real files: incremental reads, partial lines, garbage, truncation, rotation."""

from __future__ import annotations

import os
import stat

import pytest

from agent.shim_records import MAX_LINE_BYTES, ShimRecord, ShimRecordReader, parse_record

RUN = b"1 - run 1 - -\n"
BUILD = b"1 1767225600 build 0 2 12.345\n"


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.parametrize("line, expected", [
    (b"1 - run 1 - -", ShimRecord(None, "run", True, None, None)),
    (b"1 1767225600 build 0 2 12.345", ShimRecord(1767225600.0, "build", False, 2, 12.345)),
    (b"1 - other 0 - -", ShimRecord(None, "other", False, None, None)),
    (b"1 1767225600 build 0 143 -", ShimRecord(1767225600.0, "build", False, 143, None)),
])
def test_parse_record(line, expected):
    assert parse_record(line) == expected


@pytest.mark.parametrize("line", [
    b"", b"garbage", b"2 - run 1 - -", b"1 - run 1 - - extra", b"1 - Run 1 - -", b"1 - pull 0 - -",
    b"1 - run 2 - -", b"1 - run yes - -", b"1 x run 1 - -", b"1 -5 run 1 - -", b"1 - build 0 256 1",
    b"1 - build 0 -1 1", b"1 - build 0 0 nan", b"1 - build 0 0 inf", b"1 - build 0 0 -2",
    b"1  run 1 - -", b"1 - r\xffn 1 - -", b"1\t-\trun\t1\t-\t-",
])
def test_parse_record_rejects(line):
    assert parse_record(line) is None


def test_reads_incrementally_and_keeps_partial_lines(tmp_path):
    path = tmp_path / "records"
    reader = ShimRecordReader(str(path))
    assert reader.read_new() == []                      # no file yet: nothing, no error
    append(path, RUN + BUILD[:10])
    assert [r.klass for r in reader.read_new()] == ["run"]
    assert reader.read_new() == []
    append(path, BUILD[10:])
    assert reader.read_new() == [ShimRecord(1767225600.0, "build", False, 2, 12.345)]
    assert reader.malformed == 0


def test_malformed_lines_are_counted_and_skipped(tmp_path):
    path = tmp_path / "records"
    append(path, RUN + b"junk\n\xff\xfe\n" + b"x" * (MAX_LINE_BYTES + 10) + b"\n" + RUN)
    reader = ShimRecordReader(str(path))
    assert [r.klass for r in reader.read_new()] == ["run", "run"]
    assert reader.malformed == 3
    append(path, b"y" * (MAX_LINE_BYTES * 3))           # an endless line is not buffered forever
    assert reader.read_new() == []
    assert reader.malformed == 4


def test_truncation_starts_over(tmp_path):
    path = tmp_path / "records"
    append(path, RUN * 3)
    reader = ShimRecordReader(str(path))
    assert len(reader.read_new()) == 3
    path.write_bytes(BUILD)
    assert [r.klass for r in reader.read_new()] == ["build"]


def test_rotation_keeps_every_record_and_the_files_mode(tmp_path):
    path = tmp_path / "records"
    append(path, b"")
    os.chmod(path, 0o622)                               # as the agent would set it up for docker users
    reader = ShimRecordReader(str(path), max_bytes=5 * len(RUN))
    append(path, RUN * 4)
    assert len(reader.read_new()) == 4
    assert not (tmp_path / "records.1").exists()
    late_writer = open(path, "ab")                      # a shim that opened the file before the rename
    append(path, RUN * 2)
    assert len(reader.read_new()) == 2                  # past max_bytes: rotated after reading
    assert (tmp_path / "records.1").read_bytes() == RUN * 6
    assert path.read_bytes() == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o622
    late_writer.write(BUILD)
    late_writer.close()
    append(path, RUN)
    assert [r.klass for r in reader.read_new()] == ["build", "run"]
    append(path, RUN)
    assert [r.klass for r in reader.read_new()] == ["run"]
    assert reader.malformed == 0
    reader.close()


def test_a_file_replaced_behind_its_back_is_finished_then_followed(tmp_path):
    path = tmp_path / "records"
    append(path, RUN)
    reader = ShimRecordReader(str(path))
    assert len(reader.read_new()) == 1
    old = open(path, "ab")
    (tmp_path / "new").write_bytes(BUILD)
    os.rename(tmp_path / "new", path)
    old.write(RUN)
    old.close()
    assert [r.klass for r in reader.read_new()] == ["run", "build"]     # the old file's end first
    assert reader.read_new() == []


def test_symlink_at_the_path_is_not_followed(tmp_path):
    (tmp_path / "elsewhere").write_bytes(RUN)
    (tmp_path / "records").symlink_to(tmp_path / "elsewhere")
    assert ShimRecordReader(str(tmp_path / "records")).read_new() == []


# -- the records file itself: created and kept by the agent (shim_records.ensure_records_file) -------


def _expected_owner_mode():
    import grp

    try:
        gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        return 0, 0o600
    return gid, 0o620


def test_records_file_is_created_then_kept_with_its_owner_and_mode(tmp_path):
    import os
    import stat

    from agent.fsops import DisplacedStore
    from agent.shim_records import ensure_records_file

    path = tmp_path / "run" / "shim-records"
    store = DisplacedStore(str(tmp_path / "state"))
    gid, mode = _expected_owner_mode()
    assert ensure_records_file(str(path), store) is None
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, mode)
    path.write_bytes(b"1 - run 1 - -\n")
    inode = st.st_ino
    os.chmod(path, 0o666)
    os.chown(path, 1000, 1000)
    assert ensure_records_file(str(path), store) is None
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, mode)
    assert st.st_ino == inode and path.read_bytes() == b"1 - run 1 - -\n", "fixed in place: the records stay"


def test_a_symlink_at_the_records_path_is_moved_aside_never_written_through(tmp_path):
    import os

    from agent.fsops import DisplacedStore
    from agent.shim_records import ensure_records_file

    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "shim-records"
    victim = tmp_path / "shadow"
    victim.write_bytes(b"root:x:0:\n")
    os.chmod(victim, 0o600)
    path.symlink_to(victim)
    store = DisplacedStore(str(tmp_path / "state"))
    assert ensure_records_file(str(path), store) is None
    assert path.is_file() and not path.is_symlink() and path.read_bytes() == b""
    assert victim.read_bytes() == b"root:x:0:\n" and (victim.stat().st_mode & 0o777) == 0o600
    assert any(p.is_symlink() for p in (tmp_path / "state" / "displaced").iterdir())
