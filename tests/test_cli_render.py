"""`render-cpuinfo` and `render-shim`: operators see exactly what the agent would write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cpuinfo
from agentproc import agent_config, write_config
from harness import REPO, make_payload

FIXTURES = REPO / "tests" / "fixtures" / "cpuinfo"


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=timeout)


def test_render_cpuinfo_from_an_arm64_dump_and_live(base):
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / "huawei-mate-20.txt"))
    assert r.returncode == 0, r.stderr
    assert cpuinfo.check(r.stdout, "v7") == []
    assert cpuinfo.containerd_variant(r.stdout) == "v7"
    # The dump's own 8 CPUs, not this host's count: --from shows what that machine would get.
    assert r.stdout.count("processor\t:") == 8 != cpuinfo.online_cpu_count()
    assert "ARMv7 Processor rev" in r.stdout
    live = cli("--config", str(cfg), "render-cpuinfo")
    assert live.returncode == 0 and cpuinfo.check(live.stdout, "v7") == []
    missing = cli("--config", str(cfg), "render-cpuinfo", "--from", str(base / "nope.txt"))
    assert missing.returncode == 1 and "nope.txt" in missing.stderr


def test_render_cpuinfo_v6(base):
    c = agent_config(base)
    c["cpuinfo"]["variant"] = "v6"
    cfg = write_config(base / "a.toml", c)
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / "raspberrypi3.txt"))
    assert r.returncode == 0, r.stderr
    assert cpuinfo.containerd_variant(r.stdout) == "v6"
    # An ARM1176's features, not the Cortex-A53 host's: no NEON, VFPv4, idiv, LPAE or CRC32.
    assert {line for line in r.stdout.splitlines() if line.startswith("Features")} == {
        "Features\t: half thumb fastmult vfp edsp java tls"}
    assert r.stdout.count("processor\t:") == 4


def test_render_cpuinfo_with_a_device_profile(base):
    c = agent_config(base)
    c["cpuinfo"]["profile"] = "raspberrypi3-32"
    cfg = write_config(base / "a.toml", c)
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / "huawei-mate-20.txt"))
    assert r.returncode == 0, r.stderr
    assert "aes" not in r.stdout and "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt " \
        "vfpd32 lpae evtstrm crc32\n" in r.stdout
    refused = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / "raspberrypi2.txt"))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"armhf-agent render-cpuinfo: {FIXTURES / 'raspberrypi2.txt'}: profile 'raspberrypi3-32' "
                              "claims crc32, which this host cannot run (its 32-bit Features: half thumb fastmult vfp "
                              "edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm)\n")


@pytest.mark.parametrize("name, count", [("nexus4.txt", 4), ("nexus-s.txt", 1), ("beagleboard-xm.txt", 1),
                                         ("scaleway.txt", 6), ("raspberrypi1.txt", 1)])
def test_render_cpuinfo_from_older_layouts_keeps_the_dumps_cpu_count(base, name, count):
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(FIXTURES / name))
    assert r.returncode == 0, r.stderr
    assert cpuinfo.check(r.stdout, "v7") == [] and cpuinfo.containerd_variant(r.stdout) == "v7"
    blocks = [b for b in cpuinfo.parse(r.stdout) if b.is_processor]
    assert [b.get("processor") for b in blocks] == [str(n) for n in range(count)]
    # Each CPU gets the Features and MIDR lines an older kernel printed once for all of them.
    for block in blocks:
        assert all(block.get(key) for key in ("model name", "Features", "CPU implementer", "CPU part", "CPU revision"))
    assert "Processor\t:" not in r.stdout


def hostile(base: Path, kind: str) -> tuple[Path, str]:
    """A bad dump built here, and what the error must say about it."""
    path = base / f"dump-{kind.replace(' ', '-')}"
    if kind == "binary garbage":
        path.write_bytes(b"processor\t: 0\n" + bytes(range(128, 256)) * 4)
        return path, f"{path}: line 2: byte 0x80 is not UTF-8 text"
    if kind == "NUL bytes":
        path.write_bytes(b"processor\t: 0\nFeatures\t: half\x00thumb\n")
        return path, f"{path}: line 2: control character 0x00"
    if kind == "empty":
        path.write_bytes(b"")
        return path, f"{path}: no 'processor' block"
    if kind == "no processor block":
        path.write_text("Hardware\t: BCM2835\nRevision\t: 000e\n")
        return path, f"{path}: no 'processor' block"
    if kind == "huge line":
        path.write_text("processor\t: 0\nFeatures\t: " + "neon " * 100_000 + "\n")
        return path, f"{path}: line 2: 500011 characters long"
    if kind == "huge file":
        path.write_text("processor\t: 0\n" * 400_000)
        return path, f"{path}: larger than {cpuinfo.MAX_DUMP_BYTES} bytes"
    if kind == "not key: value":
        path.write_text("processor\t: 0\nmodel name ARMv7\n")
        return path, f"{path}: line 2: 'model name ARMv7' is not a 'key: value' line"
    if kind == "no CPU revision":
        path.write_text("processor\t: 0\nFeatures\t: half thumb\n")
        return path, f"{path}: processor 0: no 'CPU revision' line"
    if kind == "FIFO":
        os.mkfifo(path)
        return path, f"{path}: is a FIFO, not a regular file"
    if kind == "directory":
        path.mkdir()
        return path, f"{path}: is a directory, not a regular file"
    if kind == "missing":
        return path, f"{path}: cannot open: No such file or directory"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["binary garbage", "NUL bytes", "empty", "no processor block", "huge line",
                                  "huge file", "not key: value", "no CPU revision", "FIFO", "directory", "missing"])
def test_render_cpuinfo_from_a_bad_dump_names_it_without_a_traceback(base, kind):
    cfg = write_config(base / "a.toml", agent_config(base))
    path, message = hostile(base, kind)
    r = cli("--config", str(cfg), "render-cpuinfo", "--from", str(path), timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"armhf-agent render-cpuinfo: {message}"), r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_render_shim_bakes_in_the_payload_client(base):
    make_payload(base / "payload")
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-shim")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!/bin/sh\n")
    assert f"{base}/payload/bin/docker" in r.stdout
    assert f"{base}/hijacked-armhf-cpuinfo" in r.stdout
    assert subprocess.run(["sh", "-n"], input=r.stdout, text=True).returncode == 0


def test_render_shim_without_any_client_says_why(base):
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-shim")
    assert r.returncode == 1 and f"no docker client to exec: none in {base}/payload" in r.stderr
