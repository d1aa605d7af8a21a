"""The runtime wrapper on its own: the sh dispatcher (agent/runtime.py) and the spec editor
(agent/runtime_exec.py), with hostile bundles and rootfs built by the test, and a fake runc that
records what it was given. No dockerd: the real-container cases are in test_runtime_wrapper.py."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import runtime, runtime_exec
from agent.runtime import RESULTS, parse_record, render_wrapper

DASH = shutil.which("dash")
CPUINFO = "/hijacked-armhf-cpuinfo"


def elf(bits: int, machine: int) -> bytes:
    """The first bytes of an ELF file of that class and e_machine (little-endian)."""
    return b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1, 0]) + bytes(8) + struct.pack("<HH", 2, machine) + bytes(40)


ARM64, ARM32, X86_64, I386 = elf(64, 183), elf(32, 40), elf(64, 62), elf(32, 3)


def spec(args=("/bin/sh", "-c", "true"), mounts=None, env=("PATH=/usr/bin:/bin",), root="rootfs") -> dict:
    return {"ociVersion": "1.0.2", "process": {"args": list(args), "env": list(env), "cwd": "/"},
            "root": {"path": root}, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
            + list(mounts or [])}


def bundle(tmp_path: Path, doc, init: bytes | None = ARM32, program="bin/sh") -> Path:
    b = tmp_path / "bundle"
    (b / "rootfs" / "bin").mkdir(parents=True)
    if init is not None:
        (b / "rootfs" / program).parent.mkdir(parents=True, exist_ok=True)
        (b / "rootfs" / program).write_bytes(init)
    (b / "config.json").write_text(doc if isinstance(doc, str) else json.dumps(doc, indent="\t"))
    return b


# -- runc's command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, subcommand, where", [
    # containerd-shim-runc-v2 (go-runc): global options, then create.
    (["--root", "/run/docker/runtime-runc/moby", "--log", "/b/log.json", "--log-format", "json", "create",
      "--bundle", "/b", "--pid-file", "/b/init.pid", "cid"], "create", "/b"),
    # BuildKit's runc executor: run, bundle as -b= or --bundle=.
    (["--log", "/x", "--log-format=json", "run", "--bundle=/bk", "--keep", "step"], "run", "/bk"),
    (["--debug", "--systemd-cgroup", "run", "-b", "/c", "id"], "run", "/c"),
    (["create", "id"], "create", "."),
    (["--root=/r", "start", "cid"], "start", None),
    (["--version"], None, None),
])
def test_the_subcommand_and_the_bundle_are_found_as_runc_reads_them(argv, subcommand, where):
    at = runtime_exec.subcommand_at(argv)
    assert (argv[at] if at is not None else None) == subcommand
    if where is not None:
        assert runtime_exec.bundle_of(argv, at) == where


# -- the decision ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("destination", ["/proc/cpuinfo", "/proc//cpuinfo", "/proc/cpuinfo/", "/proc/./cpuinfo",
                                         "//proc/cpuinfo", "/proc/../proc/cpuinfo"])
def test_a_spec_with_its_own_cpuinfo_is_left_alone_however_the_target_is_spelled(tmp_path, destination):
    doc = spec(mounts=[{"destination": destination, "type": "bind", "source": "/mine", "options": ["rbind"]}])
    b = bundle(tmp_path, doc)
    before = (b / "config.json").read_bytes()
    assert runtime_exec.edit(str(b), CPUINFO)[0] == "own-mount"
    assert (b / "config.json").read_bytes() == before


@pytest.mark.parametrize("init, expected", [(ARM32, "injected"), (X86_64, "injected"), (I386, "injected"),
                                            (ARM64, "arm64"), (b"not an elf at all", "injected")])
def test_only_a_64_bit_arm_userland_keeps_the_kernels_cpuinfo(tmp_path, init, expected):
    b = bundle(tmp_path, spec(), init)
    assert runtime_exec.edit(str(b), CPUINFO)[0] == expected
    mounts = json.loads((b / "config.json").read_text())["mounts"]
    added = [m for m in mounts if m["destination"] == "/proc/cpuinfo"]
    if expected == "injected":
        assert added == [{"destination": "/proc/cpuinfo", "type": "bind", "source": CPUINFO, "options": ["rbind", "ro"]}]
        assert mounts.index(added[0]) > [m["destination"] for m in mounts].index("/proc"), "after /proc"
    else:
        assert added == []


def test_the_program_is_found_through_path_and_symlinks_inside_the_rootfs_only(tmp_path):
    b = bundle(tmp_path, spec(args=["busybox", "sh"], env=["PATH=/nowhere:/usr/local/bin"]), init=None)
    root = b / "rootfs"
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "opt").mkdir()
    (root / "opt" / "busybox").write_bytes(ARM64)
    # Absolute and relative links resolve against the rootfs, never the host.
    (root / "usr" / "local" / "bin" / "busybox").symlink_to("/opt/link")
    (root / "opt" / "link").symlink_to("../../../../../opt/busybox")
    assert runtime_exec.edit(str(b), CPUINFO)[0] == "arm64"


@pytest.mark.parametrize("plant", ["loop", "fifo", "directory", "escape", "host-absolute", "device"])
def test_a_hostile_rootfs_cannot_hang_or_mislead_the_editor(tmp_path, plant):
    b = bundle(tmp_path, spec(args=["/bin/init"]), init=None)
    root = b / "rootfs"
    init = root / "bin" / "init"
    if plant == "loop":
        init.symlink_to("/bin/other")
        (root / "bin" / "other").symlink_to("/bin/init")
    elif plant == "fifo":
        os.mkfifo(init)
    elif plant == "directory":
        init.mkdir()
    elif plant == "escape":
        # `..` above the rootfs stays at its root: the host's arm64-looking file beside it is not read.
        (tmp_path / "outside").write_bytes(ARM64)
        init.symlink_to("../../../outside")
    elif plant == "host-absolute":
        (tmp_path / "outside").write_bytes(ARM64)
        init.symlink_to(str(tmp_path / "outside"))
    elif plant == "device":
        os.mknod(init, 0o600 | 0o020000, os.makedev(1, 3))      # /dev/null's numbers
    # Undecidable: the armhf daemon's default, the cpuinfo is added; nothing blocks, nothing escapes.
    assert runtime_exec.edit(str(b), CPUINFO)[0] == "injected"


def test_a_script_is_judged_by_its_interpreter_and_docker_init_by_the_command_after_it(tmp_path):
    b = bundle(tmp_path, spec(args=["/entrypoint.sh"]), init=None)
    (b / "rootfs" / "entrypoint.sh").write_bytes(b"#!/bin/dash -e\necho hi\n")
    (b / "rootfs" / "bin" / "dash").write_bytes(ARM64)
    assert runtime_exec.edit(str(b), CPUINFO)[0] == "arm64"
    b2 = bundle(tmp_path / "2", spec(args=["/sbin/docker-init", "--", "/bin/sh"]), init=ARM64)
    assert runtime_exec.edit(str(b2), CPUINFO)[0] == "arm64"


# -- the JSON codec, against the json module as an independent oracle ----------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=int(os.environ.get("ARMHF_JSON_EXAMPLES", "500")), deadline=None)
@given(json_values, st.sampled_from([None, 0, 2, "\t"]))
def test_the_c_codec_reads_and_writes_what_json_does(value, indent):
    text = json.dumps(value, indent=indent)
    assert runtime_exec.loads(text) == json.loads(text)
    assert json.loads(runtime_exec.dumps(value)) == value


@pytest.mark.parametrize("bad", ["", "{", '{"a": 1,}', '{"a": NaN}', '{"a": Infinity}', "{} {}", "[1, 2"])
def test_the_codec_refuses_what_json_refuses_or_what_a_spec_cannot_hold(bad):
    with pytest.raises(Exception):
        runtime_exec.loads(bad)


# -- fail open: the real script, exec'ing a fake runc that records what it got ----------------------------

@pytest.fixture
def fake_runc(tmp_path):
    seen = tmp_path / "seen"
    runc = tmp_path / "runc"
    runc.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {seen}/argv\n"
                    f"[ ! -f \"$BUNDLE/config.json\" ] || cat \"$BUNDLE/config.json\" > {seen}/spec\nexit 7\n")
    runc.chmod(0o755)
    seen.mkdir()
    return runc, seen


def editor(runc, records, *args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-I", "-S", runtime_exec.__file__, "daemon", str(runc), CPUINFO, "-",
                           str(records), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("breakage", ["malformed", "not-an-object", "mounts-not-a-list", "missing", "fifo",
                                      "symlink", "read-only", "too-large", "not-utf8"])
def test_whatever_breaks_runc_runs_with_what_it_was_given(tmp_path, fake_runc, breakage):
    runc, seen = fake_runc
    b = bundle(tmp_path, spec())
    config = b / "config.json"
    mounted = False
    if breakage == "malformed":
        config.write_text('{"ociVersion": "1.0.2", "mounts": [')
    elif breakage == "not-an-object":
        config.write_text("[1, 2, 3]")
    elif breakage == "mounts-not-a-list":
        config.write_text(json.dumps({**spec(), "mounts": {"destination": "/proc"}}))
    elif breakage == "missing":
        config.unlink()
    elif breakage == "fifo":
        config.unlink()
        os.mkfifo(config)
    elif breakage == "symlink":
        (tmp_path / "elsewhere.json").write_text(json.dumps(spec()))
        config.unlink()
        config.symlink_to(tmp_path / "elsewhere.json")
    elif breakage == "read-only":
        subprocess.run(["mount", "--bind", "-o", "ro", str(b), str(b)], check=True)
        mounted = True
    elif breakage == "too-large":
        config.write_text(json.dumps({**spec(), "pad": "x" * (runtime_exec.MAX_SPEC_BYTES + 10)}))
    elif breakage == "not-utf8":
        config.write_bytes(b'{"ociVersion": "\xff\xfe"}')
    before = config.read_bytes() if config.is_file() and not config.is_symlink() else None
    records = tmp_path / "records"
    records.touch()
    argv = ["--root", "/r", "create", "--bundle", str(b), "cid"]
    try:
        r = editor(runc, records, *argv, env=dict(os.environ, BUNDLE=str(b)))
    finally:
        if mounted:
            subprocess.run(["umount", str(b)], check=True)
    assert r.returncode == 7, r.stderr           # runc's own status, not the editor's
    assert (seen / "argv").read_text().splitlines() == argv
    if before is not None:
        assert config.read_bytes() == before, "a spec that could not be edited is untouched"
    line = records.read_text().split()
    assert line[0] == "1" and line[2] == "failed" and line[3].isidentifier(), line
    assert not [p for p in b.iterdir() if p.name.startswith(".config.json")], "no temp file left"


def test_an_edited_spec_is_what_runc_reads_and_keeps_its_owner_and_mode(tmp_path, fake_runc):
    runc, seen = fake_runc
    b = bundle(tmp_path, spec())
    os.chmod(b / "config.json", 0o640)
    records = tmp_path / "records"
    records.touch()
    r = editor(runc, records, "create", "--bundle", str(b), "cid", env=dict(os.environ, BUNDLE=str(b)))
    assert r.returncode == 7
    got = json.loads((seen / "spec").read_text())
    assert got["mounts"][-1]["destination"] == "/proc/cpuinfo" and got["mounts"][-1]["source"] == CPUINFO
    assert {k: v for k, v in got.items() if k != "mounts"} == {k: v for k, v in spec().items() if k != "mounts"}
    assert (os.stat(b / "config.json").st_mode & 0o777) == 0o640
    assert parse_record(records.read_bytes().rstrip(b"\n")).result == "injected"


def test_records_are_never_written_through_a_symlink_nor_block_on_a_fifo(tmp_path, fake_runc):
    runc, seen = fake_runc
    b = bundle(tmp_path, spec())
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    link = tmp_path / "records-link"
    link.symlink_to(victim)
    assert editor(runc, link, "create", "--bundle", str(b), "c1", env=dict(os.environ, BUNDLE=str(b))).returncode == 7
    assert victim.read_text() == "untouched\n"
    fifo = tmp_path / "records-fifo"
    os.mkfifo(fifo)
    assert editor(runc, fifo, "create", "--bundle", str(b), "c2", env=dict(os.environ, BUNDLE=str(b)),
                  timeout=20).returncode == 7


# -- the sh dispatcher ----------------------------------------------------------------------------------

@pytest.mark.skipif(DASH is None, reason="needs dash (/bin/sh on Debian)")
@pytest.mark.parametrize("argv, edited", [
    (["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "cid"], True),
    (["--log=/l", "run", "--bundle", "/b", "step"], True),
    (["--debug", "create", "-b", "/b", "x"], True),
    (["start", "cid"], False), (["state", "cid"], False), (["kill", "cid", "9"], False),
    (["delete", "--force", "cid"], False), (["exec", "--pid-file", "/p", "cid"], False),
    (["features"], False), (["--version"], False), (["--bogus-flag", "value", "create", "x"], False),
    (["--root", "create", "start", "x"], False), ([], False),
])
def test_the_wrapper_edits_create_and_run_and_passes_everything_else_through(tmp_path, argv, edited):
    log = tmp_path / "calls"
    real = tmp_path / "real-runc"
    real.write_text(f"#!/bin/sh\necho \"runc $*\" >> {log}\ncat > /dev/null\nexit 3\n")
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\necho \"editor $*\" >> {log}\nexit 4\n")
    for p in (real, fake_python):
        p.chmod(0o755)
    wrapper = tmp_path / "runc"
    wrapper.write_text(render_wrapper(str(real), CPUINFO, "/run/r", "0.0.0", python=str(fake_python),
                                      editor="/opt/editor.py"))
    wrapper.chmod(0o755)
    r = subprocess.run([DASH, str(wrapper), *argv], input="stdin reaches runc\n", capture_output=True, text=True)
    call = log.read_text().strip()
    if edited:
        assert r.returncode == 4 and call.startswith("editor -I -S -c import os, sys")
        assert call.endswith(" ".join(["", "daemon", str(real), CPUINFO, "-", "/run/r", *argv]))
    else:
        assert r.returncode == 3 and call == " ".join(["runc", *argv])


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_the_rendered_wrapper_is_shellcheck_clean(tmp_path):
    wrapper = tmp_path / "runc"
    wrapper.write_text(render_wrapper("/opt/docker/runc", CPUINFO, "/run/armhf-agent/runtime-records", "0.1.0"))
    r = subprocess.run(["shellcheck", "-s", "sh", str(wrapper)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_record_lines_parse_and_garbage_does_not(tmp_path):
    for result in RESULTS:
        assert parse_record(f"1 1700000000 {result} -".encode()).result == result
    assert parse_record(b"1 1700000000 failed JSONDecodeError").detail == "JSONDecodeError"
    for bad in (b"", b"2 1 injected -", b"1 x injected -", b"1 1 exploded -", b"1 1 failed a b", b"1 1 failed $(x)"):
        assert parse_record(bad) is None, bad
    assert runtime.RESULTS == ("injected", "injected-v6", "own-mount", "arm64", "failed")


def test_a_device_or_fifo_in_the_rootfs_is_never_opened(tmp_path, monkeypatch):
    # Opening is the harm (a /dev/watchdog's open arms a reboot; a FIFO's blocks): lstat decides first.
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    os.mknod(root / "bin" / "sh", 0o600 | 0o020000, os.makedev(1, 3))
    os.mkfifo(root / "bin" / "fifo")
    opened = []
    real_open = os.open
    monkeypatch.setattr(runtime_exec.os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    assert runtime_exec.elf_of(str(root), "/bin/sh", "/bin") is None
    assert runtime_exec.elf_of(str(root), "fifo", "/bin") is None
    assert opened == []


@pytest.mark.skipif(DASH is None, reason="needs dash (/bin/sh on Debian)")
@pytest.mark.parametrize("damage", ["no-interpreter", "editor-missing", "editor-broken"])
def test_a_damaged_install_still_starts_containers_with_runc_unchanged(tmp_path, damage):
    log = tmp_path / "calls"
    real = tmp_path / "real-runc"
    real.write_text(f"#!/bin/sh\necho \"runc $*\" >> {log}\nexit 3\n")
    real.chmod(0o755)
    folder = tmp_path / "agent"
    folder.mkdir()
    editor = folder / "runtime_exec.py"
    if damage != "editor-missing":
        editor.write_text("this is not python(" if damage == "editor-broken" else Path(runtime_exec.__file__).read_text())
    python = str(tmp_path / "gone" / "python3") if damage == "no-interpreter" else sys.executable
    wrapper = tmp_path / "runc"
    wrapper.write_text(render_wrapper(str(real), CPUINFO, str(tmp_path / "records"), "0.0.0", python=python,
                                      editor=str(editor)))
    argv = ["--root", "/r", "create", "--bundle", str(tmp_path), "cid"]
    r = subprocess.run([DASH, str(wrapper), *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r.stderr
    assert log.read_text().strip() == " ".join(["runc", *argv])


# -- the host's own daemon (mode host): 32-bit userlands only, ARMv6 told from ARMv7 ------------------------

def arm_elf_with_attributes(cpu_arch: int | None, cpu_name: str = "ARM1176JZF-S") -> bytes:
    """A 32-bit little-endian ARM ELF with a .ARM.attributes section (ARM IHI 0045) saying Tag_CPU_arch
    (None: no attributes section at all), as a compiler writes one: CPU name, arch, ISA use, a
    compatibility entry (a ULEB and a string)."""
    def uleb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    names = b"\0.shstrtab\0.ARM.attributes\0"
    if cpu_arch is not None:
        attrs = uleb(5) + cpu_name.encode() + b"\0" + uleb(32) + uleb(0) + b"\0" + uleb(6) + uleb(cpu_arch) \
            + uleb(8) + uleb(1) + uleb(9) + uleb(2)
        file_tag = bytes([1]) + struct.pack("<I", 5 + len(attrs)) + attrs
        sub = b"aeabi\0" + file_tag
        attributes = b"A" + struct.pack("<I", 4 + len(sub)) + sub
    body = bytearray(52)
    offsets = []
    blobs = [names] + ([attributes] if cpu_arch is not None else [])
    for blob in blobs:
        offsets.append(len(body))
        body += blob
    while len(body) % 4:
        body.append(0)
    shoff = len(body)
    headers = [bytes(40)]
    headers.append(struct.pack("<IIIIIIIIII", 1, 3, 0, 0, offsets[0], len(names), 0, 0, 1, 0))        # .shstrtab
    if cpu_arch is not None:
        headers.append(struct.pack("<IIIIIIIIII", 11, 0x70000003, 0, 0, offsets[1], len(attributes), 0, 0, 1, 0))
    body += b"".join(headers)
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, 0x10000, 0, shoff, 0x05000400, 52, 32, 0, 40,
                                 len(headers), 1)
    body[:52] = header
    return bytes(body)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
@pytest.mark.parametrize("cpu_arch, readelf_says", [(6, "v6"), (7, "v6KZ"), (8, "v6T2"), (9, "v6K"), (10, "v7"),
                                                    (3, "v5T"), (14, "v8")])
def test_tag_cpu_arch_is_read_as_binutils_reads_it(tmp_path, cpu_arch, readelf_says):
    path = tmp_path / "prog"
    path.write_bytes(arm_elf_with_attributes(cpu_arch))
    shown = subprocess.run(["readelf", "-A", str(path)], capture_output=True, text=True).stdout
    assert f"Tag_CPU_arch: {readelf_says}\n" in shown, shown          # the oracle agrees with our file ...
    assert runtime_exec.arm_cpu_arch(str(path)) == cpu_arch            # ... and so does the reader


def test_a_file_without_attributes_or_with_garbage_says_nothing(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(arm_elf_with_attributes(None))
    assert runtime_exec.arm_cpu_arch(str(plain)) is None
    good = arm_elf_with_attributes(6)
    for cut in (60, len(good) - 30, len(good) - 1):
        (tmp_path / "cut").write_bytes(good[:cut])
        assert runtime_exec.arm_cpu_arch(str(tmp_path / "cut")) is None
    assert runtime_exec.arm_cpu_arch(str(tmp_path / "nowhere")) is None


V6, V7 = "/hijacked-armv6-cpuinfo", CPUINFO


@pytest.mark.parametrize("init, expected", [
    (I386, ("injected", "linux32", V7)),
    (ARM32, ("injected", "linux32", V7)),
    (arm_elf_with_attributes(10), ("injected", "linux32", V7)),
    (arm_elf_with_attributes(6), ("injected-v6", "linux32", V6)),
    (arm_elf_with_attributes(9), ("injected-v6", "linux32", V6)),
    (X86_64, ("arm64", None, None)),
    (ARM64, ("arm64", None, None)),
    (b"#!/bin/bash\n", ("arm64", None, None)),           # undecidable: the host daemon's own kind, left alone
])
def test_the_host_daemon_changes_only_32_bit_userlands(tmp_path, init, expected):
    b = bundle(tmp_path, spec(), init)
    spec_doc = json.loads((b / "config.json").read_text())
    assert runtime_exec.decide(spec_doc, str(b), runtime_exec.HOST, V7, V6) == expected


def test_the_armhf_daemon_gives_arm64_containers_back_their_own_personality(tmp_path):
    b = bundle(tmp_path, spec(), ARM64)
    assert runtime_exec.edit(str(b), CPUINFO) == ("arm64", "linux64")
    b2 = bundle(tmp_path / "2", spec(), ARM32)
    assert runtime_exec.edit(str(b2), CPUINFO) == ("injected", None)


def test_a_32_bit_container_of_the_host_daemon_keeps_its_own_cpuinfo_but_gets_the_personality(tmp_path):
    doc = spec(mounts=[{"destination": "/proc/cpuinfo", "type": "bind", "source": "/mine"}])
    b = bundle(tmp_path, doc, I386)
    assert runtime_exec.edit(str(b), V7, runtime_exec.HOST, V6) == ("own-mount", "linux32")


def _runc_state(root: Path, cid: str, bundle_dir: Path) -> None:
    (root / cid).mkdir(parents=True)
    (root / cid / "state.json").write_text(json.dumps({"id": cid, "config": {"rootfs": str(bundle_dir / "rootfs"),
                                                                             "labels": [f"bundle={bundle_dir}"]}}))


@pytest.mark.parametrize("init, persona", [(I386, "linux32"), (X86_64, None)])
def test_exec_into_a_host_daemon_container_gets_its_personality(tmp_path, init, persona):
    b = bundle(tmp_path, spec(), init)
    _runc_state(tmp_path / "state", "c1", b)
    argv = ["--root", str(tmp_path / "state"), "--log", "/l", "exec", "--process", "/p.json", "--detach",
            "--pid-file", "/x.pid", "c1"]
    assert runtime_exec.exec_personality(argv, runtime_exec.subcommand_at(argv)) == persona


@pytest.mark.skipif(DASH is None, reason="needs dash (/bin/sh on Debian)")
def test_the_host_wrapper_runs_runc_under_linux32_for_a_32_bit_container_and_records_it(tmp_path):
    seen = tmp_path / "personality"
    real = tmp_path / "real-runc"
    real.write_text(f"#!/bin/sh\ncat /proc/self/personality > {seen}\n")
    real.chmod(0o755)
    b = bundle(tmp_path, spec(), I386)
    records = tmp_path / "records"
    records.touch()
    wrapper = tmp_path / "runc"
    wrapper.write_text(render_wrapper(str(real), V7, str(records), "0.0.0", mode="host", cpuinfo_v6=V6))
    r = subprocess.run([DASH, str(wrapper), "create", "--bundle", str(b), "cid"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(seen.read_text(), 16) & 0xFF == 0x0008
    assert parse_record(records.read_bytes().rstrip(b"\n")).result == "injected"
    mounts = json.loads((b / "config.json").read_text())["mounts"]
    assert mounts[-1]["destination"] == "/proc/cpuinfo" and mounts[-1]["source"] == V7
