"""cpuinfo device profiles (agent/data/cpuinfo-profiles): each against the real dump of its board,
the v6 view without NEON, refusal of a profile that claims more than the host runs, containerd's
variant rule on every rendered file, and a CpuinfoSource that fails only with CpuinfoError and never
blocks (fake sys roots built here)."""

from __future__ import annotations

import glob
import io
import os
import re
import threading
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import cli, cpuinfo
from agent.config import ConfigError, CpuinfoSection, load_config
from agent.cpuinfo import (CpuinfoError, check, containerd_variant, exceeding, get_profile, hidden, hijack,
                           host_features, load_profiles, parse, parse_profile, template)
from agent.hijack import CpuinfoSource

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "cpuinfo"
HOSTS = REPO / "tests" / "fixtures" / "hosts"

# Each device profile and the real board dump it was taken from (README of the fixtures).
BOARDS = {"raspberrypi1": "raspberrypi1.txt", "raspberrypi2": "raspberrypi2.txt", "raspberrypi3-32": "raspberrypi3.txt"}
SHIPPED = sorted(load_profiles())

# Every host view the tests have: the cpuinfo dumps and the doctor's fixture hosts.
HOST_DUMPS = sorted([*(p.name for p in FIXTURES.glob("*.txt")), *(f"hosts/{p.name}" for p in HOSTS.iterdir() if p.is_dir())])


def host_dump(name: str) -> str:
    if name.startswith("hosts/"):
        return (HOSTS / name.removeprefix("hosts/") / "proc" / "cpuinfo").read_text()
    return (FIXTURES / name).read_text()


def processor_blocks(text: str):
    return [b for b in parse(text) if b.is_processor]


def without_number(block):
    return tuple((k, v) for k, v in block.fields if k != "processor")


# --- each profile is what its board prints ----------------------------------------------------------

def test_the_shipped_profiles():
    assert SHIPPED == ["armv7", "raspberrypi1", "raspberrypi2", "raspberrypi3-32"]
    for name in SHIPPED:
        profile = get_profile(name)
        assert profile.description and profile.source, name
        assert profile.cpus is None, f"{name}: shipped profiles keep the host's CPU count (make -j)"


@pytest.mark.parametrize("name", sorted(BOARDS))
@pytest.mark.parametrize("online", [1, 4, 7])
def test_profile_renders_what_its_board_prints(name, online):
    board = processor_blocks(host_dump(BOARDS[name]))
    # The template host (a Cortex-A72 with crypto) runs all three boards' features.
    out = template(online, name)
    mine = processor_blocks(out)

    assert [b.get("processor") for b in mine] == [str(n) for n in range(online)]
    for block in mine:
        # Field by field, in the board's order: model name, BogoMIPS, Features, the MIDR lines.
        assert without_number(block) == without_number(board[0])
    # The board printed the same block for each of its CPUs: nothing per-CPU is lost.
    assert len({without_number(b) for b in board}) == 1
    # The board's Hardware/Revision/Serial lines are not copied (Pi-detecting code would believe it).
    assert [b for b in parse(out) if not b.is_processor] == []
    assert [b for b in parse(host_dump(BOARDS[name])) if not b.is_processor] != []


def test_the_pi1_dump_is_what_the_issue_quotes():
    # The Features line an ARM1176 shows, and CPU architecture 7 (containerd reads it; a Pi 1 prints 7).
    pi1 = processor_blocks(host_dump("raspberrypi1.txt"))[0]
    assert pi1.get("Features") == "half thumb fastmult vfp edsp java tls"
    assert pi1.get("CPU architecture") == "7"
    assert containerd_variant(host_dump("raspberrypi1.txt")) == "v6"


def test_the_armv7_baseline_is_debians():
    armv7 = get_profile("armv7")
    # Debian armhf: ARMv7 + Thumb-2 + VFPv3-D16, no NEON (wiki.debian.org/ArmHardFloatPort). The line a
    # VFPv3-D16 board without NEON printed (Armada 370, hwloc-users 2014-01), without the swp that
    # newer kernels no longer advertise.
    armada_370 = "swp half thumb fastmult vfp edsp vfpv3 vfpv3d16 tls".split()
    assert list(armv7.features) == [f for f in armada_370 if f != "swp"]
    assert not {"neon", "vfpv4", "vfpd32", "idiva", "idivt", "lpae", "crc32", "aes"} & set(armv7.features)
    assert (armv7.cpu_implementer, armv7.cpu_part, armv7.cpu_variant, armv7.cpu_revision) == ("0x41", "0xc09", "0x1", "0")
    assert armv7.bogomips is None and "BogoMIPS" not in template(2, "armv7")


# --- v6 never shows the host's features -------------------------------------------------------------

# What no ARMv6 core has (ARM1176: VFPv2, no Advanced SIMD, no divide instructions, no LPAE, no
# generic timer event stream, no ARMv8 extensions).
NOT_ON_ANY_ARMV6 = {"neon", "vfpv3", "vfpv3d16", "vfpv4", "vfpd32", "idiva", "idivt", "lpae", "evtstrm", "fphp",
                    "asimdhp", "asimddp", "asimdfhm", "asimdbf16", "i8mm", "aes", "pmull", "sha1", "sha2", "crc32",
                    "sb", "ssbs"}


def test_variant_v6_alone_means_the_pi1_profile(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[cpuinfo]\nvariant = "v6"\n')
    assert load_config(str(f)).config.cpuinfo.profile == "raspberrypi1"
    assert load_config(None, environ={"ARMHF_AGENT_CPUINFO__VARIANT": "v6"}).config.cpuinfo.profile == "raspberrypi1"
    assert CpuinfoSection(variant="v6").profile == "raspberrypi1"


@pytest.mark.parametrize("native", ["huawei-mate-20.txt", "jetson-tx1.txt", "hosts/graviton3"])
def test_v6_on_an_arm64_host_has_no_neon(native):
    section = CpuinfoSection(variant="v6")
    source = CpuinfoSource(section.profile, sys_root=str(fake_sys(4)), machine="aarch64",
                           read_native=lambda: host_dump(native), read_compat=lambda: None)
    out = source.render().decode()

    assert containerd_variant(out) == "v6" and check(out, "v6") == []
    lines = [line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Features")]
    assert len(lines) == 4
    for features in lines:
        assert not NOT_ON_ANY_ARMV6 & set(features), features
        assert features == "half thumb fastmult vfp edsp java tls".split()
    # What it hides, for status/doctor: everything the host has beyond an ARM1176.
    state = source.describe()
    assert (state.profile, state.variant) == ("raspberrypi1", "v6")
    assert "neon" in state.hidden_features and "vfpv4" in state.hidden_features


def test_there_is_no_way_left_to_ask_for_the_host_features_under_a_v6_model_name():
    # The old `hijack(text, "v6")` gave the Pi 1 model name with the host's Features.
    with pytest.raises(CpuinfoError, match="no cpuinfo profile 'v6'"):
        hijack(host_dump("huawei-mate-20.armeabi.txt"), "v6")
    with pytest.raises(ValueError, match="with variant = \"v6\" set profile = \"raspberrypi1\""):
        CpuinfoSection(variant="v6", profile="host")


# --- a profile may only hide features -------------------------------------------------------------

# Read off the dumps by hand: what each board profile names that the host's Features line lacks,
# apart from vfpd32 (the host has NEON), vfpv3d16 (it has VFPv3) and java (every ARMv7+ core).
REFUSALS = [
    ("raspberrypi3-32", "raspberrypi2.txt", ["crc32"]),
    ("raspberrypi2", "beagleboard-xm.txt", ["vfpv4", "idiva", "idivt", "lpae", "evtstrm"]),
    ("raspberrypi3-32", "beagleboard-xm.txt", ["vfpv4", "idiva", "idivt", "lpae", "evtstrm", "crc32"]),
    ("raspberrypi2", "jetson-tx1.txt", ["evtstrm"]),              # its vendor kernel has no event stream
    ("raspberrypi2", "nexus4.txt", ["idiva", "idivt", "lpae", "evtstrm"]),
    # A kernel from before HWCAP_TLS was advertised: its Features line has no tls.
    ("raspberrypi2", "nexus-s.txt", ["tls", "vfpv4", "idiva", "idivt", "lpae", "evtstrm"]),
    ("raspberrypi1", "nexus-s.txt", ["tls"]),
]
FITS = [
    ("raspberrypi1", "beagleboard-xm.txt"), ("armv7", "beagleboard-xm.txt"),
    ("armv7", "nexus4.txt"), ("raspberrypi2", "raspberrypi3.txt"), ("raspberrypi3-32", "hosts/graviton2"),
    ("raspberrypi3-32", "huawei-mate-20.txt"), ("raspberrypi1", "raspberrypi1.txt"),
]


@pytest.mark.parametrize("name, host, beyond", REFUSALS)
def test_a_profile_claiming_what_the_host_lacks_is_refused_naming_it(name, host, beyond):
    assert exceeding(get_profile(name).features, host_features(host_dump(host))) == beyond
    with pytest.raises(CpuinfoError, match=f"profile '{name}' claims {' '.join(beyond)}, which this host cannot run"):
        hijack(host_dump(host), name, 2)


@pytest.mark.parametrize("name, host", FITS)
def test_a_profile_within_the_host_renders(name, host):
    assert exceeding(get_profile(name).features, host_features(host_dump(host))) == []
    out = hijack(host_dump(host), name, 3)
    assert {b.get("Features") for b in processor_blocks(out)} == {" ".join(get_profile(name).features)}
    # The host's own board lines (a Pi 3's Hardware/Revision/Serial) are not the profile's board.
    assert [b for b in parse(out) if not b.is_processor] == []


def test_hidden_features_are_the_hosts_minus_the_profiles():
    host = host_features(host_dump("huawei-mate-20.txt"))
    assert host == tuple("half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm fphp asimdhp "
                         "aes pmull sha1 sha2 crc32".split())
    assert hidden(get_profile("raspberrypi3-32").features, host) == ["fphp", "asimdhp", "aes", "pmull", "sha1", "sha2"]
    assert hidden(get_profile("raspberrypi2").features, host) == ["fphp", "asimdhp", "aes", "pmull", "sha1", "sha2", "crc32"]


def test_host_features_are_what_every_cpu_has():
    # A 32-bit task may land on any CPU: a feature only some cores have cannot be relied on.
    text = ("processor : 0\nFeatures : half thumb neon crc32\nCPU revision : 1\n\n"
            "processor : 1\nFeatures : half thumb neon\nCPU revision : 1\n")
    assert host_features(text) == ("half", "thumb", "neon")


def write_profile(folder: Path, name: str, **changes) -> Path:
    base = (REPO / "agent" / "data" / "cpuinfo-profiles" / "raspberrypi1.toml").read_text()
    data = tomllib.loads(base)
    data.update(changes)
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text("".join(f"{k} = {v!r}\n" if isinstance(v, int) else f'{k} = "{v}"\n' for k, v in data.items()))
    return path


def test_an_old_kernels_pi1_line_is_refused_for_its_swp(tmp_path):
    # Pi 1 kernels before ~3.14 printed `swp`; ARMv8 has no SWP (arm64 only emulates it, off by default).
    write_profile(tmp_path / "p", "oldpi1", features="swp half thumb fastmult vfp edsp java tls")
    source = CpuinfoSource("oldpi1", sys_root=str(fake_sys(2)), machine="x86_64", profiles_dir=tmp_path / "p")
    with pytest.raises(CpuinfoError, match="profile 'oldpi1' claims swp, which this host cannot run"):
        source.render()
    assert source.exceeding()[0] == ["swp"]


def test_a_profile_may_set_its_own_cpu_count(tmp_path):
    write_profile(tmp_path / "p", "onecore", cpus=1)
    source = CpuinfoSource("onecore", sys_root=str(fake_sys(8)), machine="x86_64", profiles_dir=tmp_path / "p")
    assert source.render().decode().count("processor\t:") == 1


@pytest.mark.parametrize("changes, message", [
    ({"bogus": "x"}, "unknown key 'bogus'"),
    ({"cpu_part": "d03"}, "cpu_part: 'd03' is not like '0xd03'"),
    ({"model_name": "ARMv7: evil"}, "model_name: 'ARMv7: evil' must not contain ':'"),
    ({"description": " "}, "description: ' ' must be one non-empty line"),
    ({"features": "half thumb neon2"}, "features: 'neon2' is not an AArch32 feature name"),
    ({"features": "half half thumb"}, "features: a name twice"),
    ({"variant": "v7"}, "variant: 'v7', but containerd derives 'v6' from model name 'ARMv6-compatible"),
    ({"bogomips": "fast"}, "bogomips: 'fast' is not like '38.40'"),
    ({"cpus": 0}, "cpus: 0 is not 1-4096"),
    ({"cpus": "4"}, "cpus: must be an integer"),
])
def test_a_bad_profile_file_is_refused_naming_file_and_key(tmp_path, changes, message):
    path = write_profile(tmp_path, "bad", **changes)
    with pytest.raises(CpuinfoError) as exc:
        parse_profile("bad", path.read_text(), str(path))
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value), str(exc.value)


def test_profile_files_missing_keys_broken_toml_and_reserved_names(tmp_path):
    with pytest.raises(CpuinfoError, match="x.toml: description: missing; source: missing"):
        parse_profile("x", 'variant = "v7"\n', "x.toml")
    with pytest.raises(CpuinfoError, match="x.toml: TOML syntax"):
        parse_profile("x", 'variant = \n', "x.toml")
    with pytest.raises(CpuinfoError, match="'host' cannot name a profile"):
        parse_profile("host", "", "host.toml")


# --- containerd still picks v7/v6 from every rendered file -----------------------------------------

@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(SHIPPED), host=st.sampled_from(HOST_DUMPS), online=st.integers(1, 64))
def test_containerd_variant_of_every_rendered_file(name, host, online):
    profile = get_profile(name)
    text = host_dump(host)
    try:
        out = hijack(text, name, online)
    except CpuinfoError as exc:
        # Refused: every name it gives is really missing from the host dump's Features lines.
        named = str(exc).split(" claims ", 1)[1].split(", which", 1)[0].split()
        assert named
        # The Features lines as the dump has them (a native AArch64 dump: as its kernel would show a
        # 32-bit task, which test_cpuinfo checks against real kernels' views).
        view = text if re.search(r"^Features\s*:.*\bthumb\b", text, re.M) else cpuinfo.to_compat(text)
        lines = [set(m.split()) for m in re.findall(r"^Features\s*:(.*)$", view, re.M)]
        assert lines and all(any(f not in line for line in lines) for f in named), (named, lines)
        return
    assert containerd_variant(out) == profile.variant
    assert check(out, profile.variant) == []
    blocks = processor_blocks(out)
    assert len(blocks) == online and out.startswith("processor\t: 0\n")
    assert {b.get("Features") for b in blocks} == {" ".join(profile.features)}
    assert hijack(out, name, online) == out       # a rendered profile runs its own features


@st.composite
def mangled_dump(draw):
    """A real dump with lines dropped, repeated, moved or cut, and blank lines put in: what a broken
    kernel, a truncated copy or a hand edit gives."""
    lines = host_dump(draw(st.sampled_from(HOST_DUMPS))).split("\n")
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["drop", "repeat", "move", "blank", "cut"]))
        if not lines:
            break
        at = min(at, len(lines) - 1)
        if action == "drop":
            del lines[at]
        elif action == "repeat":
            lines.insert(at, lines[at])
        elif action == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(at))
        elif action == "blank":
            lines.insert(at, "")
        else:
            lines[at] = lines[at][:draw(st.integers(0, len(lines[at])))]
    return "\n".join(lines)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(mangled_dump(), st.text(max_size=400)), name=st.sampled_from(["host", *SHIPPED]),
       online=st.one_of(st.none(), st.integers(1, 16)))
def test_any_input_is_rendered_or_refused_with_a_cpuinfo_error(text, name, online):
    try:
        out = hijack(text, name, online)
    except CpuinfoError as exc:
        assert str(exc)
        return
    variant = "v7" if name == "host" else get_profile(name).variant
    assert containerd_variant(out) == variant and check(out, variant) == []


# --- the packaged data ships ---------------------------------------------------------------------------

def test_package_data_globs_cover_every_data_file():
    """pip builds the .deb's virtualenv from pyproject's package-data globs (setuptools matches them
    with glob, relative to the package): a file no glob matches is silently left out."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["agent"]
    shipped = {os.path.relpath(p, REPO / "agent") for g in globs for p in glob.glob(str(REPO / "agent" / g))
               if os.path.isfile(p)}
    present = {str(p.relative_to(REPO / "agent")) for p in (REPO / "agent" / "data").rglob("*") if p.is_file()}
    assert present and present <= shipped, sorted(present - shipped)


# --- CpuinfoSource: only CpuinfoError, never a hang ------------------------------------------------

def fake_sys(online: int, root: Path | None = None) -> Path:
    import tempfile

    root = root or Path(tempfile.mkdtemp(prefix="fake-sys-"))
    path = root / "devices" / "system" / "cpu" / "online"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"0-{online - 1}\n" if online > 1 else "0\n")
    return root


def online_path(root: Path) -> Path:
    return root / "devices" / "system" / "cpu" / "online"


def swap_in(root: Path, kind: str) -> None:
    path = online_path(root)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling symlink":
        path.symlink_to(root / "nowhere")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "bad list":
        path.write_text("0-x\n")
    elif kind == "huge":
        path.write_text("0," * 40000)
    elif kind == "missing":
        pass


def render_within(source: CpuinfoSource, seconds: float = 10):
    """source.render() in a thread: a read that blocks (a FIFO without a writer) shows as a timeout."""
    result: dict = {}

    def run():
        try:
            result["value"] = source.render()
        except BaseException as exc:     # noqa: BLE001 - the test inspects whatever it was
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "render() blocked"
    return result


@pytest.mark.parametrize("kind", ["fifo", "directory", "dangling symlink", "binary", "bad list", "huge", "missing"])
def test_a_bad_online_cpu_list_is_a_cpuinfo_error_naming_it(tmp_path, kind):
    root = fake_sys(2, tmp_path)
    swap_in(root, kind)
    source = CpuinfoSource("host", sys_root=str(root), machine="x86_64")
    result = render_within(source)
    assert type(result.get("error")) is CpuinfoError, result
    assert str(online_path(root)) in str(result["error"])


def raising(exc):
    def read():
        raise exc
    return read


@pytest.mark.parametrize("machine, read_native, read_compat, message", [
    ("aarch64", raising(PermissionError(13, "Permission denied")), lambda: None, "Permission denied"),
    ("armv7l", raising(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")), None, "invalid start byte"),
    ("armv7l", lambda: "processor : 0\nnot a cpuinfo line\n", None, "line 2: 'not a cpuinfo line'"),
    ("armv7l", lambda: "", None, "no 'processor' block"),
    ("armv7l", lambda: "processor : 0\x00\n", None, "line 1: control character 0x00"),
    ("aarch64", lambda: "", lambda: "x" * 5000, "line 1: 5000 characters long"),
    ("aarch64", raising(OSError(5, "Input/output error")), lambda: None, "Input/output error"),
    ("armv6l", None, None, "uname -m 'armv6l'"),
])
def test_render_raises_only_cpuinfo_error(tmp_path, machine, read_native, read_compat, message):
    source = CpuinfoSource("host", sys_root=str(fake_sys(2, tmp_path)), machine=machine,
                           read_native=read_native, read_compat=read_compat)
    result = render_within(source)
    assert type(result.get("error")) is CpuinfoError, result
    assert message in str(result["error"])


def test_reading_a_fifo_or_device_never_blocks(tmp_path):
    fifo = tmp_path / "cpuinfo"
    os.mkfifo(fifo)
    with pytest.raises(CpuinfoError, match="is a FIFO, not a regular file"):
        cpuinfo.read_text_file(str(fifo))
    with pytest.raises(CpuinfoError, match="is a character device"):
        cpuinfo.read_text_file("/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"a" * (cpuinfo.MAX_DUMP_BYTES + 1))
    with pytest.raises(CpuinfoError, match="larger than"):
        cpuinfo.read_text_file(str(big))


def test_a_profile_unknown_at_run_time_is_a_cpuinfo_error(tmp_path):
    # The loop constructs the source from a validated config; a name it does not know still only
    # makes the file "not ok".
    source = CpuinfoSource("v7", sys_root=str(fake_sys(2, tmp_path)), machine="x86_64")
    result = render_within(source)
    assert type(result.get("error")) is CpuinfoError and "no cpuinfo profile 'v7'" in str(result["error"])


# --- check-config: the live check --------------------------------------------------------------------

def run_cli(*argv, env=None):
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def host_is(monkeypatch, dump_name):
    monkeypatch.setattr(CpuinfoSource, "host_view", lambda self: host_dump(dump_name))


def test_check_config_refuses_a_profile_the_host_cannot_run(tmp_path, monkeypatch):
    host_is(monkeypatch, "raspberrypi2.txt")          # a Cortex-A7: no crc32
    f = tmp_path / "a.toml"
    f.write_text('[agent]\nstate_dir = "/var/lib/x"\n\n[cpuinfo]\npath = "/x"\nprofile = "raspberrypi3-32"\n')
    code, out, err = run_cli("--config", str(f), "check-config")
    assert code == 78 and out == ""
    assert f"{f}:6: cpuinfo.profile: 'raspberrypi3-32' claims crc32, which this host cannot run" in err, err
    assert "Traceback" not in err

    code, _, err = run_cli("--config", str(f), "check-config", env={"ARMHF_AGENT_CPUINFO__PROFILE": "raspberrypi2"})
    assert code == 0, err
    host_is(monkeypatch, "jetson-tx1.txt")            # no evtstrm
    code, _, err = run_cli("--config", str(f), "check-config", env={"ARMHF_AGENT_CPUINFO__PROFILE": "raspberrypi2"})
    assert code == 78 and "env ARMHF_AGENT_CPUINFO__PROFILE: cpuinfo.profile: 'raspberrypi2' claims evtstrm" in err, err


def test_check_config_accepts_every_shipped_profile_on_this_machine(tmp_path):
    for name in SHIPPED:
        f = tmp_path / f"{name}.toml"
        f.write_text(f'[cpuinfo]\nprofile = "{name}"\n')
        code, out, err = run_cli("--config", str(f), "check-config")
        assert (code, out, err) == (0, f"{f}: OK\n", ""), name


@pytest.mark.parametrize("text, message", [
    ('[cpuinfo]\nvariant = "v7"\nprofile = "raspberrypi1"\n',
     ':3: cpuinfo.profile: \'raspberrypi1\' (Raspberry Pi 1 / Zero (BCM2835, ARM1176JZF-S r0p7, ARMv6)) is a '
     'linux/arm/v6 profile but variant is \'v7\': set variant = "v6"'),
    ('[cpuinfo]\nvariant = "v6"\nprofile = "raspberrypi3-32"\n', "is a linux/arm/v7 profile but variant is 'v6'"),
    ('[cpuinfo]\nvariant = "v6"\nprofile = "host"\n', ':3: cpuinfo.profile: \'host\' shows this host\'s own features'),
    ('[cpuinfo]\nprofile = "raspberrypi4"\n',
     ":2: cpuinfo.profile: no cpuinfo profile 'raspberrypi4' (there are: host, armv7, raspberrypi1, raspberrypi2, "
     "raspberrypi3-32)"),
])
def test_static_profile_checks_name_line_and_fix(tmp_path, text, message):
    f = tmp_path / "a.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert message in str(exc.value), str(exc.value)


@pytest.mark.parametrize("text, variant, profile", [
    ('[cpuinfo]\nprofile = "raspberrypi1"\n', "v6", "raspberrypi1"),        # the variant follows the profile
    ('[cpuinfo]\nprofile = "raspberrypi2"\n', "v7", "raspberrypi2"),
    ('[cpuinfo]\nprofile = ""\nvariant = "v6"\n', "v6", "raspberrypi1"),    # "" = follow the variant
    ('[cpuinfo]\n', "v7", "host"),
])
def test_the_unset_key_follows_the_other(tmp_path, text, variant, profile):
    f = tmp_path / "a.toml"
    f.write_text(text)
    c = load_config(str(f)).config.cpuinfo
    assert (c.variant, c.profile) == (variant, profile)
