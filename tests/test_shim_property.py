"""Property test of the real shim: 10,000 generated docker command lines, each run under dash.

How it stays honest without a second parser: every argv is *built* from parts whose meaning is
known by construction (global options with and without values, in every spelling; the subcommand;
run/create options, some mounting /proc/cpuinfo, some naming a platform; the image; the
container's own command, salted with words that look like options). The generator therefore knows
where the subcommand is, and whether the rules in agent.shim call for the mount, without parsing
anything. Each argv is then run through the rendered shim for real (dash, then `exec` of a
recording client that writes its argv NUL-separated to stdout), and the test checks:
- the client got the argv byte for byte, plus `--mount <spec>` right after the subcommand exactly
  when the rules say so (argv words are arbitrary bytes: spaces, quotes, newlines, globs, `--`,
  empty words, non-UTF-8);
- the shim appended exactly one record with the expected class and injected flag.
One process pair per example keeps it simple; 10,000 take about a minute on two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.shim import mount_spec, render_shim

CPUINFO = "/hijacked armhf,cpuinfo"
MOUNT = [b"--mount", mount_spec(CPUINFO).encode()]
DASH = shutil.which("dash")

pytestmark = [pytest.mark.skipif(DASH is None, reason="needs dash"), pytest.mark.slow]

TRICKY = [b"", b" ", b"a b", b"'", b'"', b"\n", b"*", b"?", b"[a]", b"--", b"-", b"$(id)", b"`id`",
          b"\\", b"-v", b"--mount", b"--platform", b"linux/amd64", b"/proc/cpuinfo", b"x:/proc/cpuinfo",
          b"run", b"create", b"build", b"-H", b"\xff\xfe", b"~", b"$HOME", b"a\tb", b"-it"]
word = st.one_of(st.sampled_from(TRICKY), st.binary(max_size=10).filter(lambda b: b"\0" not in b))
words = st.lists(word, max_size=4)


@dataclass
class Case:
    argv: list[bytes] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    klass: str = "other"
    at: int | None = None        # index of the subcommand word the mount goes after
    cpuinfo_mounted: bool = False
    unknown_option: bool = False
    platform: str | None = None  # last --platform given

    def expected_inject(self) -> bool:
        if self.klass not in ("run", "create") or self.cpuinfo_mounted or self.unknown_option:
            return False
        if self.env.get("ARMHF_SHIM_DISABLE") == "1":
            return False
        platform = self.platform if self.platform is not None else self.env.get("DOCKER_DEFAULT_PLATFORM", "")
        return platform in ARM_PLATFORMS


ARM_PLATFORMS = ["", "linux/arm", "linux/arm/v7", "linux/arm/v6", "LINUX/ARM/V7", "arm", "armhf", "ArmEl",
                 "linux/armhf", "linux/armel", "linux"]
OTHER_PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm64/v8", "amd64", "arm64", "aarch64",
                   "windows/amd64", "linux/s390x", "linux/386", "linux/armv7x"]


def _cased(draw, key: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in key)


@st.composite
def global_options(draw) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["long_value", "long_eq", "short_value", "short_glued", "short_eq",
                                     "long_bool", "short_bool", "bundle"]))
        value = draw(word)
        if kind == "long_value":
            out += [draw(st.sampled_from([b"--host", b"--context", b"--config", b"--log-level", b"--tlscacert",
                                          b"--tlscert", b"--tlskey"])), value]
        elif kind == "long_eq":
            out.append(draw(st.sampled_from([b"--host=", b"--context=", b"--log-level=", b"--tlskey="])) + value)
        elif kind == "short_value":
            out += [draw(st.sampled_from([b"-H", b"-c", b"-l"])), value]
        elif kind == "short_glued":
            out.append(draw(st.sampled_from([b"-H", b"-c", b"-l"])) + b"x" + value)
        elif kind == "short_eq":
            out.append(draw(st.sampled_from([b"-H=", b"-c=", b"-l="])) + value)
        elif kind == "long_bool":
            out.append(draw(st.sampled_from([b"--debug", b"--tls", b"--tlsverify", b"--debug=false", b"--version",
                                             b"--help", b"--tlsverify=true"])))
        elif kind == "short_bool":
            out.append(draw(st.sampled_from([b"-D", b"-v", b"-h", b"-D=true"])))
        else:
            bools = draw(st.text(alphabet="Dvh", min_size=1, max_size=3)).encode()
            flag = draw(st.sampled_from([b"H", b"c", b"l"]))
            if draw(st.booleans()):
                out += [b"-" + bools + flag, value]
            else:
                out.append(b"-" + bools + flag + b"x" + value)
    return out


VOLUME_TARGETS = ["/proc/cpuinfo", "/proc/cpuinfo2", "/proc/meminfo", "/data", "/proc", "/cpuinfo"]


@st.composite
def run_options(draw, case: Case) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["bool", "value", "volume", "mount", "platform", "unknown"]))
        if kind == "bool":
            out.append(draw(st.sampled_from([b"--rm", b"-d", b"-it", b"-ti", b"--init", b"--privileged", b"-P",
                                             b"--read-only", b"--tty", b"--sig-proxy=false", b"-q", b"-d=true",
                                             b"--interactive", b"--use-api-socket", b"--no-healthcheck"])))
        elif kind == "value":
            value = draw(word)
            form = draw(st.integers(0, 3))
            if form == 0:
                out += [draw(st.sampled_from([b"--name", b"--network", b"-e", b"-w", b"-u", b"--entrypoint",
                                              b"-l", b"--memory", b"-h", b"--pull", b"-ite", b"-dp"])), value]
            elif form == 1:
                out.append(draw(st.sampled_from([b"--name=", b"--env=", b"--tmpfs=", b"--rm="])) + value)
            elif form == 2:
                out.append(draw(st.sampled_from([b"-e", b"-w", b"-itu", b"-m"])) + b"x" + value)
            else:
                out.append(draw(st.sampled_from([b"-e=", b"-u="])) + value)
        elif kind == "volume":
            target = draw(st.sampled_from(VOLUME_TARGETS))
            case.cpuinfo_mounted |= target == "/proc/cpuinfo"
            source = draw(st.sampled_from(["", "/host:", "named:", "/a b:"]))
            # docker refuses a mode without a source (`/dst:ro`), so none is generated
            spec = source + target + (draw(st.sampled_from(["", ":ro", ":rw,z"])) if source else "")
            spec_b = spec.encode()
            form = draw(st.integers(0, 4))
            out += [[b"-v", spec_b], [b"--volume", spec_b], [b"--volume=" + spec_b], [b"-v" + spec_b],
                    [b"-itv", spec_b]][form]
        elif kind == "mount":
            target = draw(st.sampled_from(VOLUME_TARGETS))
            case.cpuinfo_mounted |= target == "/proc/cpuinfo"
            key = _cased(draw, draw(st.sampled_from(["target", "dst", "destination"])))
            target_field = f"{key}={target}"
            if draw(st.booleans()):
                target_field = f'"{target_field}"'
            fields = [target_field, "type=bind", f"{_cased(draw, 'src')}=/x", "readonly"]
            fields = draw(st.permutations(fields))[: draw(st.integers(1, 4))]
            if target_field not in fields:
                fields = [target_field, *fields]
            spec = ",".join(fields).encode()
            out += [[b"--mount", spec], [b"--mount=" + spec]][draw(st.integers(0, 1))]
        elif kind == "platform":
            platform = draw(st.sampled_from(ARM_PLATFORMS + OTHER_PLATFORMS))
            case.platform = platform
            out += [[b"--platform", platform.encode()], [b"--platform=" + platform.encode()]][draw(st.integers(0, 1))]
        else:
            case.unknown_option = True
            out.append(draw(st.sampled_from([b"-x", b"-Z", b"-iX"])))
            out += draw(words)
            return out
    return out


# Subcommands of other classes (run/create/build/exec spellings are generated below); any words
# may follow them. A bare management command gets none: its next word would be its subcommand.
OTHER_COMMANDS = [[b"ps"], [b"images"], [b"pull"], [b"container", b"ls"], [b"image", b"ls"], [b"buildx", b"ls"],
                  [b"builder", b"prune"], [b"system", b"info"], [b"container", b"build"], [b"image", b"run"],
                  [b"runx"], [b"Run"], [b"compose", b"run"], [b"image", b"create"], [b"buildx", b"run"]]
BARE_COMMANDS = [[b"container"], [b"image"], [b"buildx"], [b"builder"]]


@st.composite
def cases(draw) -> Case:
    case = Case()
    case.argv = draw(global_options())
    if draw(st.integers(0, 9)) == 0:
        case.argv.append(b"--")
    shape = draw(st.sampled_from(["run", "create", "container run", "container create", "build", "image build",
                                  "buildx build", "builder build", "exec", "container exec", "other", "none",
                                  "unknown global"]))
    if shape == "none":
        if case.argv and case.argv[-1] == b"--":
            case.argv.pop()
    elif shape == "unknown global":
        case.argv += [draw(st.sampled_from([b"--bogus", b"-x", b"--hostname", b"-Dx"])), b"run", b"bb"]
    elif shape == "other":
        if draw(st.integers(0, 5)) == 0:
            case.argv += draw(st.sampled_from(BARE_COMMANDS))
        else:
            case.argv += draw(st.sampled_from(OTHER_COMMANDS)) + draw(words)
    else:
        case.argv += [w.encode() for w in shape.split()]
        case.klass = shape.split()[-1]
        if case.klass in ("run", "create"):
            case.at = len(case.argv) - 1
            case.argv += draw(run_options(case))
            if not case.unknown_option:
                if draw(st.booleans()):
                    case.argv.append(b"--")
                    case.argv.append(draw(word))
                else:
                    case.argv.append(draw(word.filter(lambda w: not w.startswith(b"-") or w == b"-")))
        # the container's (or the other command's) own words: never looked at
        case.argv += draw(st.lists(st.one_of(word, st.sampled_from([b"-v", b"a:/proc/cpuinfo", b"--platform=amd64"])),
                                   max_size=4))
    if draw(st.booleans()):
        case.env["ARMHF_SHIM_DISABLE"] = draw(st.sampled_from(["1", "0", "true", ""]))
    if draw(st.integers(0, 3)) == 0:
        case.env["DOCKER_DEFAULT_PLATFORM"] = draw(st.sampled_from(ARM_PLATFORMS + OTHER_PLATFORMS))
    return case


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    d = tmp_path_factory.mktemp("shimprop")
    client = d / "client"
    client.write_text("#!/bin/sh\nprintf '%s\\0' \"$#\" \"$@\"\n")
    client.chmod(0o755)
    records = d / "records"
    shim = d / "docker"
    shim.write_text(render_shim(str(client), CPUINFO, str(records), "test"))
    shim.chmod(0o755)
    return shim, records


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_shim_passes_argv_exactly_and_inserts_only_where_the_rules_say(rig, case):
    shim, records = rig
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **case.env}
    offset = records.stat().st_size if records.exists() else 0
    out = subprocess.run([DASH, str(shim), *case.argv], env=env, capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    count, *got = out.stdout.split(b"\0")[:-1]
    assert int(count) == len(got)
    inject = case.expected_inject()
    expected = list(case.argv)
    if inject:
        expected[case.at + 1:case.at + 1] = MOUNT
    assert got == expected
    with open(records, "rb") as f:
        f.seek(offset)
        appended = f.read().decode()
    assert appended.count("\n") == 1, appended
    version, epoch, klass, injected, exit_code, duration = appended.split()
    assert (version, klass, injected) == ("1", case.klass, "1" if inject else "0")
    if case.klass == "build":
        assert exit_code == "0" and float(duration) >= 0 and int(epoch) > 0
    else:
        assert (epoch, exit_code, duration) == ("-", "-", "-")
