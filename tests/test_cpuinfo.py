"""The hijacked cpuinfo, on real /proc/cpuinfo dumps (tests/fixtures/cpuinfo, see its README).

The pairs `X.txt` / `X.armeabi.txt` are one arm64 device read by a 64-bit and by a PER_LINUX32
process: they check that `to_compat` builds what the kernel itself prints for a 32-bit reader.
"""

import os
import platform
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cpuinfo import (
    CpuinfoError,
    check,
    compat_features,
    containerd_variant,
    count_cpu_list,
    hijack,
    online_cpu_count,
    parse,
    render,
    render_for_host,
    template,
    to_compat,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"
ALL_DUMPS = sorted(p.name for p in FIXTURES.glob("*.txt"))
NATIVE_AARCH64 = ["galaxy-s7-us.txt", "huawei-mate-20.txt", "jetson-tx1.txt", "oneplus-3t.txt", "scaleway.txt"]
ARMV7_BOARDS = ["beagleboard-xm.txt", "raspberrypi2.txt", "raspberrypi3.txt"]
MIDR_KEYS = ("CPU implementer", "CPU variant", "CPU part", "CPU revision")


def dump(name: str) -> str:
    return (FIXTURES / name).read_text()


def processors(text: str) -> list[dict[str, str]]:
    return [dict(block.fields) for block in parse(text) if block.is_processor]


def global_blocks(text: str) -> list[tuple]:
    return [block.fields for block in parse(text) if not block.is_processor]


def compat_source(name: str) -> str:
    """What hijack works from: the compat view, built first when the dump is a native AArch64 one."""
    return to_compat(dump(name)) if name in NATIVE_AARCH64 else dump(name)


def must_not_read() -> str:
    pytest.fail("render_for_host read a cpuinfo it must not need")


# --- native AArch64 view -> the kernel's own compat view ------------------------------------------

# Where a fixture's kernel differs from the mainline rules to_compat follows, and why:
# (device, the model name that kernel printed to a 32-bit reader, compat hwcaps that kernel lacked)
COMPAT_PAIRS = [
    # Mainline-style kernel, but older than the compat fphp/asimdhp hwcaps (MVFR1.FPHP/SIMDHP):
    # the CPU has them (native `fphp asimdhp`), that kernel just could not say so to 32-bit tasks.
    ("huawei-mate-20", "ARMv8 Processor rev 0 (v8l)", {"fphp", "asimdhp"}),
    # Samsung's vendor kernel prints its AArch64 model name line whatever the reader's personality.
    ("galaxy-s7-us", "AArch64 Processor rev 2 (aarch64)", set()),
    # A kernel older than the compat `model name` line (c_show printed none for 32-bit readers).
    ("oneplus-3t", None, set()),
]


@pytest.mark.parametrize("device, fixture_model, newer_hwcaps", COMPAT_PAIRS, ids=[p[0] for p in COMPAT_PAIRS])
def test_to_compat_matches_the_kernels_compat_view(device, fixture_model, newer_hwcaps):
    ours = processors(to_compat(dump(f"{device}.txt")))
    kernels = processors(dump(f"{device}.armeabi.txt"))

    assert [p["processor"] for p in ours] == [p["processor"] for p in kernels]
    for mine, real in zip(ours, kernels):
        for key in ("BogoMIPS", "CPU architecture", *MIDR_KEYS):
            assert mine.get(key) == real.get(key), (mine["processor"], key)
        assert mine["model name"] == f"ARMv8 Processor rev {real['CPU revision']} (v8l)"
        assert real.get("model name") == fixture_model
        features, real_features = mine["Features"].split(), real["Features"].split()
        assert set(features) - set(real_features) == newer_hwcaps
        assert [f for f in features if f not in newer_hwcaps] == real_features   # same names, same order
    assert global_blocks(to_compat(dump(f"{device}.txt"))) == global_blocks(dump(f"{device}.armeabi.txt"))


def test_compat_features_follow_the_kernel_rules():
    # Defaults every 32-bit task gets, fp/asimd expanded, AArch64-only features dropped, kernel order.
    assert compat_features("") == "half thumb fastmult edsp tls idiva idivt lpae"
    assert compat_features("atomics cpuid asimdrdm jscvt lrcpc sve") == compat_features("")
    assert compat_features("crc32 asimd fp") == "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae crc32"
    # The Mate 20's native line: compat_hwcap bits (evtstrm is bit 21, fphp 22) before compat_hwcap2.
    assert compat_features("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp") == (
        "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm fphp asimdhp "
        "aes pmull sha1 sha2 crc32")
    assert compat_features("ssbs sb i8mm bf16 asimdfhm asimddp") == (
        "half thumb fastmult edsp tls idiva idivt lpae asimddp asimdfhm asimdbf16 i8mm sb ssbs")


def test_native_views_without_a_pair_convert():
    jetson = processors(to_compat(dump("jetson-tx1.txt")))
    assert len(jetson) == 4
    assert {p["Features"] for p in jetson} == {
        "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae aes pmull sha1 sha2 crc32"}
    assert {(p["model name"], p["CPU part"]) for p in jetson} == {("ARMv8 Processor rev 1 (v8l)", "0xd07")}

    # ThunderX has no AArch32 at all, so no kernel will ever print this view; the transform must
    # still be well defined for it (dumps, tests). `atomics` is AArch64-only and disappears.
    thunderx = processors(to_compat(dump("scaleway.txt")))
    assert len(thunderx) == 6
    assert {p["Features"] for p in thunderx} == {
        "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm aes pmull sha1 sha2 crc32"}
    assert {(p["CPU implementer"], p["CPU part"]) for p in thunderx} == {("0x43", "0x0a1")}


def test_to_compat_refuses_a_32bit_view():
    with pytest.raises(CpuinfoError, match="already a 32-bit view"):
        to_compat(dump("huawei-mate-20.armeabi.txt"))


@pytest.mark.parametrize("name", ["beagleboard-xm.txt", "galaxy-s7-us.txt", "jetson-tx1.txt",
                                  "oneplus-3t.armeabi.txt", "scaleway.txt"])
def test_render_is_the_kernels_layout(name):
    assert render(parse(dump(name))) == dump(name)


# --- hijack ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_DUMPS)
def test_hijack_every_dump(name):
    out = hijack(dump(name))

    assert check(out, "v7") == []
    assert containerd_variant(out) == "v7"
    source = processors(compat_source(name))
    hijacked = processors(out)
    assert len(hijacked) == len(source)
    for mine, real in zip(hijacked, source):
        assert mine["CPU architecture"] == "7"
        assert mine["model name"] == f"ARMv7 Processor rev {real['CPU revision']} (v7l)"
        untouched = {k: v for k, v in real.items() if k not in ("model name", "CPU architecture")}
        assert {k: v for k, v in mine.items() if k not in ("model name", "CPU architecture")} == untouched
    assert global_blocks(out) == global_blocks(compat_source(name))


@pytest.mark.parametrize("name", NATIVE_AARCH64)
def test_hijack_detects_a_native_view(name):
    assert hijack(dump(name)) == hijack(to_compat(dump(name)))


@pytest.mark.parametrize("name", ARMV7_BOARDS)
def test_real_armv7_boards_stay_the_same(name):
    # Already what a hijacked file should look like: nothing to change but the layout.
    assert parse(hijack(dump(name))) == parse(dump(name))


def test_hijack_rewrites_every_architecture_line_in_any_case():
    text = ("processor : 0\nFeatures : half thumb\nCPU revision : 4\ncpu ARCHITECTURE : 8\n\n"
            "CPU architecture: 8\nHardware : x\n")
    out = hijack(text)
    assert [line for line in out.splitlines() if "architecture" in line.lower()] == [
        "CPU architecture: 7", "CPU architecture: 7"]
    assert check(out, "v7") == []


def test_hijack_adds_missing_model_name_and_architecture_in_kernel_order():
    out = hijack("processor\t: 0\nFeatures\t: half thumb\nCPU implementer\t: 0x41\nCPU revision\t: 1\n")
    assert [k for k, _ in parse(out)[0].fields] == [
        "processor", "model name", "Features", "CPU implementer", "CPU architecture", "CPU revision"]


@pytest.mark.parametrize("online, numbers, parts", [
    (6, ["0", "1", "2", "3", "4", "5"], ["0x201", "0x201", "0x205", "0x205", "0x205", "0x205"]),
    (2, ["0", "1"], ["0x201", "0x201"]),
    (1, ["0"], ["0x201"]),
])
def test_processor_count_follows_online_cpus(online, numbers, parts):
    out = processors(hijack(dump("oneplus-3t.armeabi.txt"), online_cpus=online))
    assert [p["processor"] for p in out] == numbers
    assert [p["CPU part"] for p in out] == parts


def test_kernel_numbering_is_kept_when_the_count_already_matches():
    # CPUs 1 and 3 offline: the kernel lists 0 and 2, and that is what a reader should see.
    text = "processor : 0\nFeatures : thumb\nCPU revision : 1\n\nprocessor : 2\nFeatures : thumb\nCPU revision : 1\n"
    assert [p["processor"] for p in processors(hijack(text, online_cpus=2))] == ["0", "2"]
    assert [p["processor"] for p in processors(hijack(text, online_cpus=3))] == ["0", "1", "2"]


@pytest.mark.parametrize("text, profile, online, message", [
    ("Hardware : BCM2709\n", "host", None, "no 'processor' block"),
    ("processor : 0\nFeatures : half thumb\n", "host", None, "processor 0: no 'CPU revision' line"),
    ("processor : 3\nFeatures : half thumb\nCPU revision : r1\n", "host", None,
     "processor 3: 'CPU revision' 'r1' is not a number"),
    ("processor : 0\nCPU revision : 1\n", "v8", None, "no cpuinfo profile 'v8' (there are: host, armv7, "),
    ("processor : 0\nCPU revision : 1\n", "host", 0, "online CPU count 0"),
    ("processor : 0\nthis is no cpuinfo\n", "host", None, "line 2: 'this is no cpuinfo'"),
])
def test_hijack_names_what_is_wrong_with_its_input(text, profile, online, message):
    with pytest.raises(CpuinfoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hijack(text, profile, online)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(ALL_DUMPS), online=st.integers(1, 256))
def test_hijack_property(name, online):
    out = hijack(dump(name), "host", online)
    assert check(out, "v7") == []
    assert containerd_variant(out) == "v7"
    numbers = [p["processor"] for p in processors(out)]
    assert len(numbers) == online
    if online != len(processors(dump(name))):
        assert numbers == [str(n) for n in range(online)]
    assert sum(line.startswith("processor") for line in out.splitlines()) == online
    assert hijack(out, "host", online) == out


# --- template (non-Arm hosts) ---------------------------------------------------------------------

@pytest.mark.skipif(platform.machine() in ("aarch64", "armv7l", "armv8l"), reason="template is for non-Arm hosts")
def test_template_on_this_host():
    online = online_cpu_count()
    out = render_for_host(platform.machine(), online, "host", must_not_read, must_not_read)

    assert out == template(online)
    assert check(out, "v7") == []
    assert containerd_variant(out) == "v7"
    cpus = processors(out)
    assert [p["processor"] for p in cpus] == [str(n) for n in range(os.sysconf("SC_NPROCESSORS_ONLN"))]
    assert {(p["model name"], p["CPU implementer"], p["CPU part"], p["CPU variant"], p["CPU revision"])
            for p in cpus} == {("ARMv7 Processor rev 3 (v7l)", "0x41", "0xd08", "0x0", "3")}
    # The same Features a real arm64 kernel shows 32-bit readers on an ARMv8.0 core with crypto.
    assert {p["Features"] for p in cpus} == {p["Features"] for p in processors(dump("oneplus-3t.armeabi.txt"))}


def test_template_v6():
    out = template(3, "raspberrypi1")
    assert check(out, "v6") == []
    assert containerd_variant(out) == "v6"
    assert len(processors(out)) == 3


# --- check / containerd_variant ------------------------------------------------------------------

GOOD = hijack(dump("oneplus-3t.armeabi.txt"))


@pytest.mark.parametrize("text, variant, problem, containerd_picks", [
    (dump("huawei-mate-20.armeabi.txt"), "v7", "line 6: the first 'CPU architecture' line says '8'", "v8"),
    (GOOD.replace("CPU architecture: 7\n", ""), "v7", "no 'CPU architecture' line", None),
    (GOOD.replace("CPU architecture: 7", "CPU architecture: 8", 1), "v7",
     "line 6: the first 'CPU architecture' line says '8'", "v8"),
    ("cpu ARCHITECTURE : 8\n" + GOOD, "v7", "line 1: the first 'CPU architecture' line says '8'", "v8"),
    (hijack(dump("oneplus-3t.armeabi.txt"), "raspberrypi1"), "v7", "starts with 'ARMv6-compatible'", "v6"),
    (GOOD, "v6", "'ARMv7 Processor rev 1 (v7l)' does not start with 'ARMv6-compatible'", "v7"),
    (GOOD.replace("model name", "modelname"), "v6", "model name missing does not start", "v7"),
    ("CPU architecture: 7\nmodel name\t: ARMv7 Processor rev 1 (v7l)\n", "v7", "no 'processor' line", "v7"),
])
def test_check_catches(text, variant, problem, containerd_picks):
    problems = check(text, variant)
    assert len(problems) == 1 and problem in problems[0], problems
    if containerd_picks is not None:
        assert containerd_variant(text) == containerd_picks


@pytest.mark.parametrize("text, machine, expected", [
    ("CPU architecture: 8\n", None, "v8"),
    ("CPU architecture: AArch64\n", None, "v8"),          # arm64 kernels before 3.19 printed this
    ("CPU architecture: 7\n", None, "v7"),
    ("model name : armv6-COMPATIBLE processor\nCPU architecture: 7\n", None, "v6"),
    ("CPU architecture: 7\nmodel name : ARMv6-compatible processor rev 7 (v6l)\n", None, "v6"),
    ("CPU architecture: 8\nmodel name : ARMv6-compatible processor rev 7 (v6l)\n", None, "v8"),
    ("CPU architecture: 6TEJ\n", None, "v6"),
    ("CPU architecture: 5TEJ\n", None, "v5"),
    ("CPU architecture: 7:8\n", None, "v7"),                  # containerd keeps only what is before a 2nd ':'
    ("CPU architecture: 9\n", None, "unknown"),
    ("processor : 0\n", "armv8l", "v8"),                      # no line: uname -m decides
    ("processor : 0\n", "armv7l", "v7"),
    ("processor : 0\n", "aarch64", "v8"),
    ("model name : ARMv6-compatible processor rev 7 (v6l)\n", "armv7l", "v6"),
])
def test_containerd_variant(text, machine, expected):
    assert containerd_variant(text, machine) == expected


def test_containerd_variant_needs_uname_when_the_line_is_missing():
    with pytest.raises(CpuinfoError, match="no 'CPU architecture' line"):
        containerd_variant("processor : 0\n")
    with pytest.raises(CpuinfoError, match="'x86_64' is not an Arm machine"):
        containerd_variant("processor : 0\n", "x86_64")


@pytest.mark.parametrize("name, expected", [("raspberrypi2.txt", "v7"), ("beagleboard-xm.txt", "v7"),
                                            ("huawei-mate-20.armeabi.txt", "v8"), ("scaleway.txt", "v8")])
def test_containerd_variant_of_real_dumps(name, expected):
    assert containerd_variant(dump(name)) == expected


# --- render_for_host ------------------------------------------------------------------------------

def test_aarch64_host_uses_the_kernels_compat_view():
    out = render_for_host("aarch64", 4, "host", must_not_read, lambda: dump("galaxy-s7-us.armeabi.txt"))
    assert out == hijack(dump("galaxy-s7-us.armeabi.txt"), "host", 4)


def test_aarch64_host_without_compat_view_builds_it_from_the_native_one():
    out = render_for_host("aarch64", 8, "raspberrypi1", lambda: dump("huawei-mate-20.txt"), lambda: None)
    assert out == hijack(to_compat(dump("huawei-mate-20.txt")), "raspberrypi1", 8)


@pytest.mark.parametrize("machine", ["armv7l", "armv8l"])
def test_32bit_host_uses_its_own_view(machine):
    out = render_for_host(machine, 4, "host", lambda: dump("raspberrypi3.txt"), must_not_read)
    assert out == hijack(dump("raspberrypi3.txt"), "host", 4)


@pytest.mark.parametrize("machine", ["armv6l", "armv5tel", "aarch64_be"])
def test_arm_hosts_that_cannot_run_armv7_are_refused(machine):
    with pytest.raises(CpuinfoError, match=machine):
        render_for_host(machine, 1, "host", must_not_read, must_not_read)


def test_non_arm_host_gets_the_template():
    assert render_for_host("riscv64", 5, "raspberrypi1", must_not_read, must_not_read) == template(5, "raspberrypi1")


# --- online CPUs ----------------------------------------------------------------------------------

def test_online_cpu_count_of_this_host():
    assert online_cpu_count() == os.sysconf("SC_NPROCESSORS_ONLN")


@pytest.mark.parametrize("spec, count", [("0\n", 1), ("0-3\n", 4), ("0-3,5,7-8\n", 7), ("1,3\n", 2)])
def test_online_cpu_count_parses_cpu_lists(tmp_path, spec, count):
    online = tmp_path / "devices/system/cpu/online"
    online.parent.mkdir(parents=True)
    online.write_text(spec)
    assert online_cpu_count(str(tmp_path)) == count


@pytest.mark.parametrize("spec, message", [("", "'' is not N or N-M"), ("0-3,x\n", "'x' is not N or N-M"),
                                           ("3-1\n", "'3-1' is not an ascending range")])
def test_online_cpu_count_names_the_file_and_the_bad_value(tmp_path, spec, message):
    online = tmp_path / "devices/system/cpu/online"
    online.parent.mkdir(parents=True)
    online.write_text(spec)
    with pytest.raises(CpuinfoError, match=f"{online}: CPU list .*{message}"):
        online_cpu_count(str(tmp_path))


def test_online_cpu_count_names_a_missing_file(tmp_path):
    with pytest.raises(CpuinfoError, match=f"cannot read the online CPU list: {tmp_path}/devices/system/cpu/online: cannot open"):
        online_cpu_count(str(tmp_path))


def test_count_cpu_list():
    assert count_cpu_list("0-255") == 256


def test_source_regenerates_when_online_cpus_change(tmp_path):
    """The agent's CpuinfoSource follows /sys/devices/system/cpu/online (CPU hotplug, a resized VM)."""
    from agent.hijack import CpuinfoSource

    online = tmp_path / "devices" / "system" / "cpu" / "online"
    online.parent.mkdir(parents=True)
    native = (FIXTURES / "huawei-mate-20.txt").read_text()
    source = CpuinfoSource("host", sys_root=str(tmp_path), machine="aarch64",
                           read_native=lambda: native, read_compat=lambda: None)
    online.write_text("0-1\n")
    two = source.render().decode()
    online.write_text("0-5\n")
    six = source.render().decode()
    assert two.count("processor\t:") == 2 and six.count("processor\t:") == 6
    assert check(six, "v7") == [] and containerd_variant(six) == "v7"
    assert source.render().decode() == six      # cached while the count holds
