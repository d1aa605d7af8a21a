"""Property tests of the real shim under dash, in two parts.

1. Command-line structure (ARMHF_SHIM_EXAMPLES examples, 10,000 by default and in CI). Every argv
   is *built* from parts whose meaning is known by construction (global options with and without
   values, in every spelling; the subcommand; run/create options, some mounting /proc/cpuinfo under
   some spelling of it, some naming a platform; the image; the container's own command, salted with
   words that look like options). The generator therefore knows where the subcommand is, and
   whether the mount is due, without parsing anything: a mount target is a base path put through
   rewrites that Go's path.Clean undoes (`//`, `/.`, `/x/..`, a trailing `/`, `/..` at the root),
   so whether it is /proc/cpuinfo is known from the base. Every command here goes to the agent's
   daemon (DOCKER_HOST names it, `-H` values spell it): which daemon a command reaches is part 2's.
   The client is a recording script; the test checks the argv byte for byte (plus `--mount <spec>`
   right after the subcommand exactly when due) and the one record line. One process pair per
   example; 10,000 take about a minute on two cores.

2. The daemon and the mount targets against the real docker clients (ARMHF_SHIM_ORACLE_EXAMPLES
   per client, 300 by default): Debian's /usr/bin/docker (20.10) and, where the machine has one,
   the docker 28 client at /usr/local/bin/docker. The oracle is what docker itself does: each
   command runs once straight through the client and once through the shim, both against a fake
   Engine API (FakeEngine: several unix sockets and a TCP port, answering /_ping and recording the
   body of every `containers/create`), in a mount namespace where /run (so /var/run) is a tmpfs
   holding the fake "default" socket /run/docker.sock and a second one, and /root is a tmpfs whose
   `.docker` is a prepared config folder (for commands without $HOME). Contexts and config.json
   files are made by the real client. The shim must reach the same daemon docker reaches and send
   the same body, plus its mount exactly when that daemon is the agent's and no target in the body
   docker sent cleans to /proc/cpuinfo. A shim that cannot tell may pass the command through with
   class `unresolved`, and only in examples built to be undecidable (a malformed config.json or
   meta.json, a DOCKER_HOST that is set but empty, which 20.10 and 28 read differently).
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.shim import mount_spec, render_shim

CPUINFO = "/hijacked armhf,cpuinfo"
MOUNT = [b"--mount", mount_spec(CPUINFO).encode()]
DASH = shutil.which("dash")
EXAMPLES = int(os.environ.get("ARMHF_SHIM_EXAMPLES", "10000"))
ORACLE_EXAMPLES = int(os.environ.get("ARMHF_SHIM_ORACLE_EXAMPLES", "300"))

pytestmark = [pytest.mark.skipif(DASH is None, reason="needs dash"), pytest.mark.slow]

TRICKY = [b"", b" ", b"a b", b"'", b'"', b"\n", b"*", b"?", b"[a]", b"--", b"-", b"$(id)", b"`id`",
          b"\\", b"-v", b"--mount", b"--platform", b"linux/amd64", b"/proc/cpuinfo", b"x:/proc/cpuinfo",
          b"run", b"create", b"build", b"-H", b"\xff\xfe", b"~", b"$HOME", b"a\tb", b"-it"]
word = st.one_of(st.sampled_from(TRICKY), st.binary(max_size=10).filter(lambda b: b"\0" not in b))
words = st.lists(word, max_size=4)


# -- mount targets: spellings whose cleaned form is known by construction -------------------------

# (base, whether it is /proc/cpuinfo); "/proc/cpuinfo/x" and "/proc/cpuinfo2" are near misses.
TARGET_BASES = [("/proc/cpuinfo", True), ("/proc/cpuinfo2", False), ("/proc/meminfo", False), ("/data", False),
                ("/proc", False), ("/cpuinfo", False), ("/proc/cpuinfo/x", False), ("/x/proc/cpuinfo", False)]


@st.composite
def spelled(draw, base: str) -> str:
    """`base` (absolute, clean) rewritten in ways path.Clean undoes (Go's path package doc:
    repeated slashes, `.` elements, an element followed by `..`, `..` right after the root, a
    trailing slash)."""
    parts = base.strip("/").split("/")
    out = ""
    if draw(st.integers(0, 5)) == 0:
        out += draw(st.sampled_from(["/..", "/../..", "/."]))
    for part in parts:
        out += draw(st.sampled_from(["/", "/", "/", "//", "///"])) + part
        for _ in range(draw(st.integers(0, 1))):
            out += draw(st.sampled_from(["/.", "/./", "/seg/..", "/cpuinfo/..", "/../" + part, "//."]))
    if draw(st.integers(0, 3)) == 0:
        out += draw(st.sampled_from(["/", "/.", "//", "/x/.."]))
    return out


@st.composite
def target(draw) -> tuple[str, bool]:
    base, is_cpuinfo = draw(st.sampled_from(TARGET_BASES))
    return (draw(spelled(base)) if draw(st.booleans()) else base), is_cpuinfo


def go_clean(path: str) -> str:
    """Go's path.Clean (the rules in its package doc), for the targets docker actually sent."""
    rooted, out = path.startswith("/"), []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    return ("/" if rooted else "") + "/".join(out) or "."


@pytest.mark.parametrize("path, clean", [
    # from Go's src/path/path_test.go cleantests
    ("", "."), ("abc", "abc"), ("abc/def", "abc/def"), ("a/b/c", "a/b/c"), (".", "."), ("..", ".."),
    ("../..", "../.."), ("../../abc", "../../abc"), ("/abc", "/abc"), ("/", "/"), ("abc/", "abc"),
    ("abc/def/", "abc/def"), ("/abc/", "/abc"), ("//", "/"), ("abc//def//ghi", "abc/def/ghi"), ("//abc", "/abc"),
    ("abc/./def", "abc/def"), ("/./abc/def", "/abc/def"), ("abc/.", "abc"), ("abc/def/ghi/../jkl", "abc/def/jkl"),
    ("abc/def/../ghi/../jkl", "abc/jkl"), ("abc/def/..", "abc"), ("abc/def/../..", "."), ("/abc/def/../..", "/"),
    ("abc/def/../../..", ".."), ("/abc/def/../../..", "/"), ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
    ("abc/./../def", "def"), ("abc//./../def", "def"), ("abc/../../././../def", "../../def"),
])
def test_go_clean_port_matches_gos_own_table(path, clean):
    assert go_clean(path) == clean


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_spellings_clean_back_to_their_base(data):
    base, _ = data.draw(st.sampled_from(TARGET_BASES))
    assert go_clean(data.draw(spelled(base))) == base


# -- part 1: command-line structure ---------------------------------------------------------------

@dataclass
class Case:
    argv: list[bytes] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    klass: str = "other"
    at: int | None = None        # index of the subcommand word the mount goes after
    cpuinfo_mounted: bool = False
    unknown_option: bool = False
    platform: str | None = None  # last --platform given
    hosts: int = 0               # -H options given (each spells the agent's socket)

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
def global_options(draw, case: Case, ours: bytes) -> list[bytes]:
    """Global options; a host option (at most one: two make docker refuse) names the agent's socket."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["long_value", "long_eq", "short_value", "short_glued", "short_eq",
                                     "long_bool", "short_bool", "bundle", "host"]))
        value = draw(word)
        if kind == "host" and case.hosts == 0:
            case.hosts = 1
            # spellings of the same path that the kernel resolves alike
            host = b"unix://" + draw(st.sampled_from([b"", b"/", b"/."])) + ours[len(b"unix://"):]
            out += draw(st.sampled_from([[b"-H", host], [b"--host", host], [b"-H" + host], [b"-H=" + host],
                                         [b"--host=" + host], [b"-DH", host], [b"-DvH" + host]]))
        elif kind == "long_value":
            out += [draw(st.sampled_from([b"--config", b"--log-level", b"--tlscacert", b"--tlscert", b"--tlskey"])),
                    value]
        elif kind == "long_eq":
            out.append(draw(st.sampled_from([b"--config=", b"--log-level=", b"--tlskey="])) + value)
        elif kind == "short_value":
            out += [b"-l", value]
        elif kind == "short_glued":
            out.append(b"-lx" + value)
        elif kind == "short_eq":
            out.append(b"-l=" + value)
        elif kind == "long_bool":
            out.append(draw(st.sampled_from([b"--debug", b"--tls", b"--tlsverify", b"--debug=false", b"--version",
                                             b"--help", b"--tlsverify=true"])))
        elif kind == "short_bool":
            out.append(draw(st.sampled_from([b"-D", b"-v", b"-h", b"-D=true"])))
        elif kind == "bundle":
            bools = draw(st.text(alphabet="Dvh", min_size=1, max_size=3)).encode()
            if draw(st.booleans()):
                out += [b"-" + bools + b"l", value]
            else:
                out.append(b"-" + bools + b"lx" + value)
    return out


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
            path, is_cpuinfo = draw(target())
            case.cpuinfo_mounted |= is_cpuinfo
            source = draw(st.sampled_from(["", "/host:", "named:", "/a b:"]))
            # docker refuses a mode without a source (`/dst:ro`), so none is generated
            spec = source + path + (draw(st.sampled_from(["", ":ro", ":rw,z"])) if source else "")
            spec_b = spec.encode()
            form = draw(st.integers(0, 4))
            out += [[b"-v", spec_b], [b"--volume", spec_b], [b"--volume=" + spec_b], [b"-v" + spec_b],
                    [b"-itv", spec_b]][form]
        elif kind == "mount":
            fields = [f"{_cased(draw, 'src')}=/x", "type=bind", "readonly"]
            fields = draw(st.permutations(fields))[: draw(st.integers(0, 3))]
            # one or two target keys: docker keeps the last
            for _ in range(draw(st.integers(1, 2))):
                path, is_cpuinfo = draw(target())
                key = _cased(draw, draw(st.sampled_from(["target", "dst", "destination"])))
                target_field = f"{key}={path}"
                if draw(st.booleans()):
                    target_field = f'"{target_field}"'
                fields.insert(draw(st.integers(0, len(fields))), target_field)
            last = [f for f in fields if f.strip('"').split("=")[0].lower() in ("target", "dst", "destination")][-1]
            case.cpuinfo_mounted |= go_clean(last.strip('"').split("=", 1)[1]) == "/proc/cpuinfo"
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
def cases(draw, ours: bytes) -> Case:
    case = Case()
    case.argv = draw(global_options(case, ours))
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
        case.argv += draw(st.lists(st.one_of(word, st.sampled_from([b"-v", b"a:/proc/cpuinfo", b"--platform=amd64",
                                                                   b"-H", b"tcp://elsewhere:2375"])),
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
    daemon = d / "docker.sock"
    daemon.touch()
    (d / "home").mkdir()
    shim = d / "docker"
    shim.write_text(render_shim(str(client), CPUINFO, str(records), f"unix://{daemon}", "test"))
    shim.chmod(0o755)
    return shim, records, daemon


@st.composite
def rigged_cases(draw, daemon: Path) -> Case:
    return draw(cases(f"unix://{daemon}".encode()))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_shim_passes_argv_exactly_and_inserts_only_where_the_rules_say(rig, data):
    shim, records, daemon = rig
    case = data.draw(rigged_cases(daemon))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(shim.parent / "home"),
           "DOCKER_HOST": f"unix://{daemon}", **case.env}
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


# -- part 2: the real docker clients as the oracle -------------------------------------------------

class FakeEngine:
    """Just enough of the Engine API for `docker run`/`create` to send its create request: /_ping
    and /version answer, POST .../containers/create is recorded (socket name, query, JSON body)
    and answered 201 with an id; everything else gets a 500, so docker stops right after."""

    def __init__(self):
        self.lock = threading.Lock()
        self.creates: list[tuple[str, dict, dict]] = []
        self.servers: list[socketserver.BaseServer] = []

    def _handler(engine, name: str):  # noqa: N805 - the handler class closes over the engine
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                for k, v in (("Content-Type", ctype), ("Api-Version", "1.41"), ("Ostype", "linux"),
                             ("Docker-Experimental", "false"), ("Content-Length", str(len(body)))):
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = urlparse(self.path).path
                if path.endswith("/_ping"):
                    return self._send(200, b"OK", "text/plain")
                if path.endswith("/version"):
                    return self._send(200, json.dumps({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux",
                                                       "Arch": "arm", "Version": "20.10.24"}).encode())
                self._send(500, b'{"message":"fake engine: not implemented"}')

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlparse(self.path)
                if url.path.endswith("/containers/create"):
                    with engine.lock:
                        engine.creates.append((name, parse_qs(url.query), json.loads(body)))
                    return self._send(201, b'{"Id":"0123456789ab","Warnings":[]}')
                self._send(500, b'{"message":"fake engine: not implemented"}')

            do_DELETE = do_PUT = do_GET
        return Handler

    def listen_unix(self, name: str, path: Path) -> None:
        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True
        self._serve(Server(str(path), self._handler(name)))

    def listen_tcp(self, name: str) -> int:
        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True
        server = Server(("127.0.0.1", 0), self._handler(name))
        self._serve(server)
        return server.server_address[1]

    def _serve(self, server) -> None:
        self.servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def take(self) -> list[tuple[str, dict, dict]]:
        with self.lock:
            taken, self.creates = self.creates, []
        return taken

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


# Runs commands inside a private mount namespace set up once: it reads one JSON request per line
# and answers one JSON line.
RUNNER = r"""
import json, os, subprocess, sys
for cmd in json.loads(sys.argv[1]):
    if cmd[0] == "symlink":
        os.symlink(cmd[1], cmd[2])
    elif cmd[0] == "touch":
        open(cmd[1], "a").close()
    elif cmd[0] == "mkdir":
        os.mkdir(cmd[1])
    else:
        subprocess.run(cmd, check=True)
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    p = subprocess.run(req["argv"], env=req["env"], cwd=req["cwd"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    print(json.dumps({"rc": p.returncode, "stderr": p.stderr.decode(errors="replace")[-3000:]}), flush=True)
"""

ALT = "/run/armhf-oracle/docker.sock"       # the second fake socket inside the namespace
CWD = "/run/armhf-oracle"                   # where docker runs: relative socket paths start here


class Namespace:
    def __init__(self, setup: list[list[str]]):
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", RUNNER,
                                      json.dumps(setup)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n", "the namespace runner did not start"

    def run(self, argv: list[str], env: dict[str, str]) -> dict:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": CWD}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def real_client(path: str) -> str | None:
    """A docker client binary there (never our own shim or another script)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return path if out.stdout.startswith("Docker version") else None


CLIENTS = [pytest.param("/usr/bin/docker", id="docker-20.10"),
           pytest.param("/usr/local/bin/docker", id="docker-usr-local",
                        marks=pytest.mark.skipif(real_client("/usr/local/bin/docker") is None,
                                                 reason="this machine has no second docker client at /usr/local/bin"))]

# Context names made in the prepared config folders, with where each one's host points.
CONTEXTS = {"armhf": f"unix://{ALT}", "main": "unix:///var/run/docker.sock", "nohost": "",
            "elsewhere": "unix://@OTHER@", "tcp": "tcp://127.0.0.1:@PORT@"}
# config.json texts docker cannot have written (or that are ambiguous), each in a folder that has
# the contexts: the shim may answer `unresolved` for these.
BAD_CONFIGS = {"number": '{"currentContext": 42}', "truncated": '{\n\t"currentContext": "armhf"',
               "twice": '{"currentContext": "main", "currentContext": "armhf"}',
               "escaped": '{"currentContext": "arm\\u0068f"}', "keyescaped": '{"current\\u0043ontext": "armhf"}'}


@dataclass
class Oracle:
    ns: Namespace
    engine: FakeEngine
    records: Path
    shims: dict[tuple[str, str], Path]   # (the agent's socket name, client) -> the shim for them
    folders: dict[str, Path]         # config folder name -> path
    homes: dict[str, Path]           # config folder name -> a home whose .docker is it
    other: Path
    port: int


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private mount namespace)")
    if real_client("/usr/bin/docker") is None:
        pytest.fail("no docker client at /usr/bin/docker: scripts/setup.sh --test installs docker.io")
    d = tmp_path_factory.mktemp("shimoracle")
    engine = FakeEngine()
    for name in ("default", "alt", "other"):
        engine.listen_unix(name, d / f"{name}.sock")
    port = engine.listen_tcp("tcp")
    other = d / "other.sock"
    folders, homes = {}, {}

    def folder(name: str) -> Path:
        path = d / "cfg" / name
        path.mkdir(parents=True)
        folders[name] = path
        home = d / "homes" / name
        home.mkdir(parents=True)
        (home / ".docker").symlink_to(path)
        homes[name] = home
        return path

    def with_contexts(name: str) -> Path:
        path = folder(name)
        for ctx, host in CONTEXTS.items():
            host = host.replace("@OTHER@", str(other)).replace("@PORT@", str(port))
            subprocess.run(["/usr/bin/docker", "--config", str(path), "context", "create", ctx, "--docker",
                            f"host={host}"], check=True, capture_output=True)
        return path

    folder("none")
    (folder("nocontexts-current") / "config.json").write_text('{"currentContext": "armhf"}')
    with_contexts("ctx-unset")
    for ctx in CONTEXTS:
        path = with_contexts(f"ctx-{ctx}")
        subprocess.run(["/usr/bin/docker", "--config", str(path), "context", "use", ctx], check=True,
                       capture_output=True)
    for ctx in ("default", "missing"):
        (with_contexts(f"ctx-{ctx}") / "config.json").write_text(json.dumps({"currentContext": ctx}, indent="\t"))
    (with_contexts("ctx-cased") / "config.json").write_text('{"CURRENTCONTEXT": "armhf"}')
    for bad, text in BAD_CONFIGS.items():
        (with_contexts(f"bad-{bad}") / "config.json").write_text(text)
    # a context file docker did not write (pretty-printed)
    path = with_contexts("bad-meta")
    subprocess.run(["/usr/bin/docker", "--config", str(path), "context", "use", "armhf"], check=True, capture_output=True)
    for meta in path.glob("contexts/meta/*/meta.json"):
        meta.write_text(json.dumps(json.loads(meta.read_text()), indent=2))

    records = d / "records"
    shims = {}
    clients = [c for c in ("/usr/bin/docker", "/usr/local/bin/docker") if real_client(c)]
    for n, client in enumerate(clients):
        for ours, host in (("default", "unix:///var/run/docker.sock"), ("alt", "unix:///var/run/armhf-oracle/docker.sock")):
            shims[ours, client] = d / f"shim-{ours}-{n}"
            shims[ours, client].write_text(render_shim(client, CPUINFO, str(records), host, "test"))
    setup = [["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run"], ["mkdir", "/run/armhf-oracle"],
             ["touch", "/run/docker.sock"], ["touch", ALT],
             ["mount", "--bind", str(d / "default.sock"), "/run/docker.sock"],
             ["mount", "--bind", str(d / "alt.sock"), ALT],
             ["symlink", "docker.sock", "/run/armhf-oracle/link.sock"],
             ["mount", "-t", "tmpfs", "-o", "mode=700", "tmpfs", "/root"],
             ["symlink", str(folders["ctx-armhf"]), "/root/.docker"]]
    ns = Namespace(setup)
    yield Oracle(ns, engine, records, shims, folders, homes, other, port)
    ns.close()
    engine.close()


@dataclass
class Example:
    ours: str                                  # which fake socket the shim is rendered for
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    doubtful: bool = False                     # built to be undecidable: `unresolved` is allowed
    targets: list[tuple[str, bool]] = field(default_factory=list)   # mount targets, is /proc/cpuinfo


def socket_spellings(o: Oracle) -> st.SearchStrategy[str]:
    """Paths of the fake sockets as a user might write them (any path at all: connect() decides)."""
    @st.composite
    def path(draw) -> str:
        which = draw(st.sampled_from(["/run/docker.sock", ALT, str(o.other), "rel", "link", "missing"]))
        if which == "rel":
            return draw(st.sampled_from(["docker.sock", "./docker.sock", "../docker.sock", "../armhf-oracle/link.sock"]))
        if which == "link":
            return "/run/armhf-oracle/link.sock"
        if which == "missing":
            return "/run/armhf-oracle/nothing.sock"
        if which.startswith("/run/") and draw(st.booleans()):
            which = "/var" + which
        return draw(spelled(which)) if draw(st.booleans()) else which
    return path()


def hosts(o: Oracle) -> st.SearchStrategy[str]:
    @st.composite
    def host(draw) -> str:
        kind = draw(st.sampled_from(["unix", "unix", "unix", "double", "spaced", "empty-unix", "empty", "tcp",
                                     "bare-tcp", "fd"]))
        if kind == "empty":
            return ""
        if kind == "empty-unix":
            return "unix://"
        if kind == "tcp":
            return f"tcp://127.0.0.1:{o.port}"
        if kind == "bare-tcp":
            return f"127.0.0.1:{o.port}"
        if kind == "fd":
            return "fd://3"
        p = draw(socket_spellings(o))
        if kind == "double":
            return "unix://unix://" + p
        if kind == "spaced":
            return draw(st.sampled_from([" ", "\t", "  "])) + "unix://" + p + draw(st.sampled_from(["", " ", "\n"]))
        return "unix://" + p
    return host()


CONTEXT_NAMES = ["default", "armhf", "main", "nohost", "elsewhere", "tcp", "missing", "Armhf", ""]


@st.composite
def examples(draw, o: Oracle) -> Example:
    ex = Example(ours=draw(st.sampled_from(["default", "alt"])))
    ex.env = {"PATH": "/usr/bin:/bin"}
    # the config folder, and how docker is told about it
    name = draw(st.sampled_from(sorted(o.folders)))
    ex.doubtful |= name.startswith("bad-")
    where = draw(st.sampled_from(["home", "home", "DOCKER_CONFIG", "--config", "no-home", "empty-home"]))
    if where == "home":
        ex.env["HOME"] = str(o.homes[name])
    elif where == "DOCKER_CONFIG":
        ex.env.update(HOME=str(o.homes["none"]), DOCKER_CONFIG=str(o.folders[name]))
    elif where == "--config":
        ex.env["HOME"] = str(o.homes["none"])
        ex.argv += draw(st.sampled_from([["--config", str(o.folders[name])], [f"--config={o.folders[name]}"]]))
    elif where == "empty-home":
        ex.env["HOME"] = ""
    # (no-home and empty-home: /root/.docker in the namespace, the folder "ctx-armhf")
    if draw(st.integers(0, 2)) == 0:
        value = draw(st.one_of(hosts(o), st.just("")))
        ex.env["DOCKER_HOST"] = value
        ex.doubtful |= value == ""
    if draw(st.integers(0, 2)) == 0:
        ex.env["DOCKER_CONTEXT"] = draw(st.sampled_from(CONTEXT_NAMES))
    if draw(st.integers(0, 9)) == 0:
        ex.env[draw(st.sampled_from(["DOCKER_TLS_VERIFY", "DOCKER_TLS"]))] = "1"
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3]))):
        kind = draw(st.sampled_from(["host"] * 6 + ["context"] * 3 + ["debug", "tls"]))
        if kind == "host":
            h = draw(hosts(o))
            forms = [["-H", h], ["--host", h], [f"--host={h}"], [f"-H={h}"], ["-DH", h]] + ([[f"-H{h}"]] if h else [])
            ex.argv += draw(st.sampled_from(forms))
        elif kind == "context":
            c = draw(st.sampled_from(CONTEXT_NAMES))
            ex.argv += draw(st.sampled_from([["--context", c], ["-c", c], [f"--context={c}"], [f"-c={c}"]]))
        elif kind == "tls":
            ex.argv.append(draw(st.sampled_from(["--tls", "--tlsverify", "--tls=false", "--tlsverify=false"])))
        else:
            ex.argv += draw(st.sampled_from([["-D"], ["--log-level", "error"], ["-l=error"]]))
    ex.argv += draw(st.sampled_from([["create"], ["run"], ["container", "create"], ["container", "run"]]))
    for _ in range(draw(st.integers(0, 3))):
        path, is_cpuinfo = draw(target())
        ex.targets.append((path, is_cpuinfo))
        if draw(st.booleans()):
            spec = draw(st.sampled_from(["/src:", "/src dir:", "vol:"])) + path + draw(st.sampled_from(["", ":ro"]))
            ex.argv += draw(st.sampled_from([["-v", spec], [f"--volume={spec}"], [f"-v{spec}"]]))
        else:
            key = _cased(draw, draw(st.sampled_from(["target", "dst", "destination"])))
            fields = [f"{key}={path}", "type=bind", "source=/src"]
            if draw(st.booleans()):
                fields[0] = f'"{fields[0]}"'
            spec = ",".join(draw(st.permutations(fields)))
            ex.argv += draw(st.sampled_from([["--mount", spec], [f"--mount={spec}"]]))
    ex.argv += draw(st.sampled_from([["bb"], ["bb", "cat", "/proc/cpuinfo"], ["-e", "A=1", "bb"], ["--rm", "bb"]]))
    return ex


def body_targets(body: dict) -> list[str]:
    host = body.get("HostConfig") or {}
    targets = [b.split(":")[1] for b in host.get("Binds") or []]     # SOURCE:TARGET[:MODE]
    targets += [m.get("Target", "") for m in host.get("Mounts") or []]
    return targets + list(body.get("Volumes") or {})


OUR_MOUNT = {"Type": "bind", "Source": CPUINFO, "Target": "/proc/cpuinfo", "ReadOnly": True}


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
@settings(max_examples=ORACLE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_shim_reaches_the_daemon_docker_reaches_and_mounts_only_there(oracle, client, data):
    o = oracle
    ex = data.draw(examples(o))
    shim = o.shims[ex.ours, client]
    o.engine.take()
    direct = o.ns.run([client, *ex.argv], ex.env)
    want = o.engine.take()
    offset = o.records.stat().st_size if o.records.exists() else 0
    shimmed = o.ns.run([DASH, str(shim), *ex.argv], ex.env)
    got = o.engine.take()
    with open(o.records) as f:
        f.seek(offset)
        record = f.read().split()
    note = f"{ex}\ndirect: {direct}\nshimmed: {shimmed}\nrecord: {record}"
    assert len(record) == 6 and record[2] in ("run", "create", "unresolved"), note
    klass, injected = record[2], record[3] == "1"
    assert len(want) <= 1 and len(got) == len(want), note
    if not want:
        event(f"docker reached no fake daemon (record: {klass}) {direct['stderr'][:60]!r}")
        return      # docker refused the command or reached no fake daemon; so did it through the shim
    (want_socket, want_query, want_body), (got_socket, got_query, got_body) = want[0], got[0]
    assert got_socket == want_socket and got_query == want_query, note
    sent = body_targets(want_body)
    for path, is_cpuinfo in ex.targets:
        if path in sent:
            assert (go_clean(path) == "/proc/cpuinfo") == is_cpuinfo
    already = any(go_clean(t) == "/proc/cpuinfo" for t in sent)
    due = want_socket == ex.ours and not already
    if klass == "unresolved":
        assert ex.doubtful and not injected, note
        due = False
    event(f"reached {'ours' if want_socket == ex.ours else 'another'}, {klass}, injected={injected}")
    assert injected == due, note
    if due:
        got_host, want_host = got_body["HostConfig"], want_body["HostConfig"]
        mounts = list(got_host.get("Mounts") or [])
        assert mounts and {k: mounts[0].get(k) for k in OUR_MOUNT} == OUR_MOUNT, note
        if mounts[1:] or want_host.get("Mounts"):
            got_host["Mounts"] = mounts[1:]
        elif "Mounts" in want_host:
            got_host["Mounts"] = want_host["Mounts"]
        else:
            del got_host["Mounts"]
    for body in (got_body, want_body):      # docker lists -v binds from a Go map: in any order
        if body["HostConfig"].get("Binds"):
            body["HostConfig"]["Binds"].sort()
    assert got_body == want_body, note
