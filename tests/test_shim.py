"""The rendered shim as a real process: quoting, decisions, exec, exit codes, stdin, signals, records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.shim import mount_spec, render_shim, sh_quote
from agent.shim_records import ShimRecord, ShimRecordReader
from harness import wait_for

DASH = shutil.which("dash")
pytestmark = pytest.mark.skipif(DASH is None, reason="needs dash (the shim's /bin/sh on Debian)")

RECORDING_CLIENT = "#!/bin/sh\nprintf '%s\\0' \"$@\"\n"


def make_client(path: Path, body: str) -> str:
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def install_shim(tmp_path: Path, client: str, cpuinfo: str = "/hijacked-armhf-cpuinfo",
                 records: str | None = None, daemon: Path | None = None) -> Path:
    """The shim, for the agent's daemon at `daemon` (default: a `docker.sock` beside it; any file
    will do, the shim only compares files)."""
    shim = tmp_path / "docker"
    if daemon is None:
        daemon = tmp_path / "docker.sock"
        daemon.touch()
    shim.write_text(render_shim(client, cpuinfo, records or str(tmp_path / "records"), f"unix://{daemon}", "0.1.0"))
    shim.chmod(0o755)
    return shim


def run_shim(shim: Path, *args: str | bytes, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """The shim with a clean environment, its HOME empty of docker config, and DOCKER_HOST naming
    the agent's daemon (the `docker.sock` beside it) unless `env` says otherwise (None: unset)."""
    home = shim.parent / "home"
    home.mkdir(exist_ok=True)
    base = {"PATH": "/usr/bin:/bin", "HOME": str(home), "DOCKER_HOST": f"unix://{shim.parent / 'docker.sock'}"}
    env = {k: v for k, v in {**base, **(env or {})}.items() if v is not None}   # None: unset
    return subprocess.run([DASH, str(shim), *args], capture_output=True, timeout=30, env=env, **kw)


def argv_of(out: subprocess.CompletedProcess) -> list[str]:
    return [w.decode() for w in out.stdout.split(b"\0")[:-1]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))), max_size=8))
def test_sh_quote_round_trips_through_dash(values):
    script = "printf '%s\\0' " + " ".join(sh_quote(v) for v in values) if values else ":"
    out = subprocess.run([DASH, "-c", script], capture_output=True, check=True)
    assert out.stdout.split(b"\0")[:-1] == [v.encode() for v in values]


def test_render_refuses_what_cannot_be_baked_in():
    sock = "unix:///var/run/docker.sock"
    with pytest.raises(ValueError, match="client must be an absolute path, got 'docker'"):
        render_shim("docker", "/c", "/r", sock, "1")
    with pytest.raises(ValueError, match="NUL"):
        render_shim("/usr/bin/docker", "/c\0x", "/r", sock, "1")
    with pytest.raises(ValueError, match="records path"):
        render_shim("/usr/bin/docker", "/c", "r", sock, "1")
    with pytest.raises(ValueError, match="agent version"):
        render_shim("/usr/bin/docker", "/c", "/r", sock, "1\nrm -rf /")
    with pytest.raises(ValueError, match="daemon host must be unix:///absolute/path, got 'tcp://h:2375'"):
        render_shim("/usr/bin/docker", "/c", "/r", "tcp://h:2375", "1")
    with pytest.raises(ValueError, match="daemon host must be unix:///absolute/path, got 'unix://rel.sock'"):
        render_shim("/usr/bin/docker", "/c", "/r", "unix://rel.sock", "1")


def test_mount_spec_quotes_a_source_docker_would_split():
    assert mount_spec("/hijacked-armhf-cpuinfo") == \
        "type=bind,source=/hijacked-armhf-cpuinfo,target=/proc/cpuinfo,readonly"
    assert mount_spec('/a,b"c') == 'type=bind,"source=/a,b""c",target=/proc/cpuinfo,readonly'


NASTY = "/tmp/it's a \"dir\", $HOME `x` *"


@pytest.mark.parametrize("paths", [
    ("/opt/docker/bin/docker", "/hijacked-armhf-cpuinfo", "/run/armhf-agent/shim-records", "unix:///var/run/docker.sock"),
    (NASTY + "/docker", NASTY + "/cpuinfo", NASTY + "/records\nnext line", "unix://" + NASTY + "/d'ocker.sock"),
])
def test_rendered_script_is_clean_posix_sh(tmp_path, paths):
    script = tmp_path / "docker"
    script.write_text(render_shim(*paths, "0.1.0"))
    assert script.read_text().startswith("#!/bin/sh\n")
    for sh in filter(None, [DASH, shutil.which("sh")]):
        subprocess.run([sh, "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    out = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_nasty_paths_are_used_verbatim(tmp_path):
    folder = tmp_path / "it's a \"dir\", $HOME `x` *"
    folder.mkdir()
    client = make_client(folder / "docker client", RECORDING_CLIENT)
    daemon = folder / "dock'er.sock"
    daemon.touch()
    shim = install_shim(tmp_path, client, cpuinfo=str(folder / "cpu,info"), records=str(folder / "rec'ords"),
                        daemon=daemon)
    out = run_shim(shim, "run", "img", env={"DOCKER_HOST": f"unix://{daemon}"})
    assert argv_of(out) == ["run", "--mount", mount_spec(str(folder / "cpu,info")), "img"]
    assert (folder / "rec'ords").read_text() == "1 - run 1 - -\n"


# Documented decisions, spelled out (the property test covers the space around them).
M = ["--mount", mount_spec("/hijacked-armhf-cpuinfo")]


@pytest.mark.parametrize("argv, expected", [
    (["run", "bb"], ["run", *M, "bb"]),
    (["-H", "OURS", "--debug", "container", "run", "-it", "bb"], ["-H", "OURS", "--debug", "container", "run", *M, "-it", "bb"]),
    (["-HOURS", "-l=debug", "--config=/c", "create", "bb"], ["-HOURS", "-l=debug", "--config=/c", "create", *M, "bb"]),
    (["-DH", "OURS", "--", "run", "bb"], ["-DH", "OURS", "--", "run", *M, "bb"]),
    (["-H", "unix:///s", "run", "bb"], None),
    (["run", "-v", "/x:/proc/cpuinfo:ro", "bb"], None),
    (["run", "-itv/x:/proc/cpuinfo", "bb"], None),
    (["run", "--mount", "src=/x,DST=/proc/cpuinfo,type=bind", "bb"], None),
    (["run", "--platform=linux/amd64", "bb"], None),
    (["run", "--platform", "linux/arm64", "bb"], None),
    (["run", "--platform", "linux/arm/v7", "bb"], ["run", *M, "--platform", "linux/arm/v7", "bb"]),
    (["run", "bb", "-v", "x:/proc/cpuinfo", "--platform=amd64"], ["run", *M, "bb", "-v", "x:/proc/cpuinfo", "--platform=amd64"]),
    (["run", "-e", "-v", "bb"], ["run", *M, "-e", "-v", "bb"]),
    (["run", "--", "-v", "x:/proc/cpuinfo"], ["run", *M, "--", "-v", "x:/proc/cpuinfo"]),
    (["container", "ls", "run"], None),
    (["--bogus", "run", "bb"], None),
    (["buildx", "--builder", "b", "build", "."], None),
])
def test_documented_decisions(tmp_path, argv, expected):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    ours = f"unix://{tmp_path / 'docker.sock'}"
    argv = [w.replace("OURS", ours) for w in argv]
    expected = argv if expected is None else [w.replace("OURS", ours) for w in expected]
    assert argv_of(run_shim(shim, *argv)) == expected


# Mount targets docker cleans (path.Clean) before comparing: each is the user's own cpuinfo mount, so
# a second one would be refused as a duplicate mount point (test_shim_dockerd.py shows it on dockerd).
@pytest.mark.parametrize("option", [
    ["-v", "/x:/proc/cpuinfo/"], ["-v", "/x:/proc//cpuinfo:ro"], ["-v", "/proc/./cpuinfo"], ["-v/x:/proc/../proc/cpuinfo"],
    ["--volume=/x://proc/cpuinfo/."], ["--mount", "type=bind,src=/x,target=/proc/cpuinfo/"],
    ["--mount", 'type=bind,"dst=/proc//cpuinfo",src=/x'], ["--mount=destination=/proc/cpuinfo/x/..,src=/x"],
    ["--mount", "target=/data,src=/x,target=/../proc/cpuinfo"],
])
def test_a_cpuinfo_target_in_any_spelling_is_the_users_own(tmp_path, option):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    assert argv_of(run_shim(shim, "run", *option, "bb")) == ["run", *option, "bb"]


@pytest.mark.parametrize("option", [
    ["-v", "/x:/proc/cpuinfo2"], ["-v", "/x:/proc/cpuinfo/x"], ["-v", "/proc/cpuinfo:/data"],
    ["--mount", "target=/proc/cpuinfo,src=/x,target=/data"], ["--mount", 'type=bind,"src=/proc/cpuinfo",dst=/d'],
])
def test_near_misses_still_get_the_mount(tmp_path, option):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    assert argv_of(run_shim(shim, "run", *option, "bb")) == ["run", *M, *option, "bb"]


def test_a_mount_value_docker_cannot_read_gets_no_mount(tmp_path):
    """Go's encoding/csv refuses a bare quote or text after a closing one: docker rejects the command."""
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    for spec in ['type=bind,tar"get=/d', '"target=/d"x,src=/x', '"target=/d']:
        assert argv_of(run_shim(shim, "run", "--mount", spec, "bb")) == ["run", "--mount", spec, "bb"]


def make_context(home: Path, name: str, host: str) -> None:
    """A context made by the real docker client (its own meta.json format)."""
    subprocess.run(["/usr/bin/docker", "context", "create", name, "--docker", f"host={host}"], check=True,
                   capture_output=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


def use_context(home: Path, name: str) -> None:
    subprocess.run(["/usr/bin/docker", "context", "use", name], check=True, capture_output=True,
                   env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


needs_client = pytest.mark.skipif(not Path("/usr/bin/docker").exists(), reason="needs docker.io's client")


def _record(tmp_path: Path) -> tuple[str, str]:
    *_, last = (tmp_path / "records").read_text().splitlines()
    _, _, klass, injected, _, _ = last.split()
    return klass, injected


@needs_client
def test_the_daemon_is_resolved_as_docker_does(tmp_path):
    """docker/cli cli/command/cli.go resolveContextName: --context, then -H (both: refused), then
    DOCKER_HOST, DOCKER_CONTEXT, config.json's currentContext; "default" is the default host."""
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    ours, elsewhere = f"unix://{tmp_path / 'docker.sock'}", "unix:///run/not-the-agents.sock"
    home = tmp_path / "home"
    home.mkdir()
    make_context(home, "armhf", ours)
    make_context(home, "remote", "tcp://192.0.2.1:2376")
    cases = [
        ([], {}, False),                                        # unix:///var/run/docker.sock: not ours here
        (["-H", ours], {}, True), (["-H", elsewhere], {"DOCKER_HOST": ours}, False),
        (["-H", "tcp://192.0.2.1:2375"], {}, False), (["--host=ssh://me@h"], {}, False),
        (["-H", ours, "-H", ours], {}, False),                 # docker: "specify only one -H"
        (["-H", ours, "--context", "armhf"], {}, False),        # docker: conflicting options
        ([], {"DOCKER_HOST": ours}, True), ([], {"DOCKER_HOST": f" unix://{tmp_path}//./docker.sock\n"}, True),
        (["--context", "armhf"], {"DOCKER_HOST": elsewhere}, True),
        (["-c", "remote"], {"DOCKER_HOST": ours}, False),
        (["--context=default"], {"DOCKER_HOST": ours}, True),   # the default context uses DOCKER_HOST
        ([], {"DOCKER_HOST": ours, "DOCKER_CONTEXT": "remote"}, True),
        ([], {"DOCKER_CONTEXT": "armhf"}, True), ([], {"DOCKER_CONTEXT": "remote"}, False),
        ([], {"DOCKER_CONTEXT": "nonesuch"}, False),
    ]
    for argv, env, inject in cases:
        out = run_shim(shim, *argv, "run", "bb", env={"HOME": str(home), "DOCKER_HOST": None, **env})
        assert argv_of(out) == [*argv, "run", *(M if inject else []), "bb"], (argv, env)
        assert _record(tmp_path) == ("run", "1" if inject else "0")
    use_context(home, "armhf")
    assert argv_of(run_shim(shim, "create", "bb", env={"HOME": str(home), "DOCKER_HOST": None})) == ["create", *M, "bb"]
    assert argv_of(run_shim(shim, "--config", str(tmp_path / "empty"), "create", "bb",
                            env={"HOME": str(home), "DOCKER_HOST": None})) == ["--config", str(tmp_path / "empty"),
                                                                             "create", "bb"]
    use_context(home, "remote")
    assert argv_of(run_shim(shim, "create", "bb", env={"HOME": str(home), "DOCKER_HOST": None})) == ["create", "bb"]
    assert argv_of(run_shim(shim, "create", "bb", env={"DOCKER_CONFIG": str(home / ".docker"), "DOCKER_HOST": None,
                                                       "DOCKER_CONTEXT": "armhf"})) == ["create", *M, "bb"]


@needs_client
@pytest.mark.parametrize("config", [
    '{"currentContext": 42}', '{\n\t"currentContext": "armhf"', '{"currentContext": "x", "currentContext": "armhf"}',
    '{"currentContext": "arm\\u0068f"}', '{"current\\u0043ontext": "armhf"}',
])
def test_a_config_json_the_shim_cannot_read_means_no_mount_and_an_unresolved_record(tmp_path, config):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    home = tmp_path / "home"
    home.mkdir()
    make_context(home, "armhf", f"unix://{tmp_path / 'docker.sock'}")
    (home / ".docker" / "config.json").write_text(config)
    assert argv_of(run_shim(shim, "run", "bb", env={"HOME": str(home), "DOCKER_HOST": None})) == ["run", "bb"]
    assert _record(tmp_path) == ("unresolved", "0")
    [record] = [r for r in ShimRecordReader(str(tmp_path / "records")).read_new()]
    assert (record.klass, record.injected) == ("unresolved", False)


@needs_client
def test_a_context_file_docker_did_not_write_means_unresolved(tmp_path):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    home = tmp_path / "home"
    home.mkdir()
    make_context(home, "armhf", f"unix://{tmp_path / 'docker.sock'}")
    [meta] = (home / ".docker" / "contexts" / "meta").glob("*/meta.json")
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=2))
    assert argv_of(run_shim(shim, "-c", "armhf", "run", "bb", env={"HOME": str(home)})) == ["-c", "armhf", "run", "bb"]
    assert _record(tmp_path) == ("unresolved", "0")


@needs_client
def test_docker_20_10_and_later_clients_disagree_on_an_empty_docker_host(tmp_path):
    """20.10 takes a set-but-empty DOCKER_HOST for the default host, later clients skip it."""
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    home = tmp_path / "home"
    home.mkdir()
    make_context(home, "armhf", f"unix://{tmp_path / 'docker.sock'}")
    assert argv_of(run_shim(shim, "run", "bb", env={"HOME": str(home), "DOCKER_HOST": "", "DOCKER_CONTEXT": "armhf"})) \
        == ["run", "bb"]
    assert _record(tmp_path) == ("unresolved", "0")
    # both read the default host when no context is named
    assert argv_of(run_shim(shim, "run", "bb", env={"HOME": str(home), "DOCKER_HOST": ""})) == ["run", "bb"]
    assert _record(tmp_path) == ("run", "0")


def test_without_contexts_config_json_is_not_read(tmp_path):
    """Without a context, a currentContext other than `default` makes docker refuse the command, so
    the file cannot change the answer: one the shim could not read does not make it unresolved."""
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text('{"currentContext": 42}')
    assert argv_of(run_shim(shim, "run", "bb", env={"HOME": str(home), "DOCKER_HOST": None})) == ["run", "bb"]
    assert _record(tmp_path) == ("run", "0")
    assert argv_of(run_shim(shim, "run", "bb", env={"HOME": str(home)})) == ["run", *M, "bb"]


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a socket folder under /run (root)")
def test_var_run_and_run_are_one_folder(tmp_path):
    folder = Path(f"/run/armhf-shim-test-{os.getpid()}")
    folder.mkdir()
    try:
        (folder / "docker.sock").touch()
        (folder / "link.sock").symlink_to("docker.sock")
        shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT),
                            daemon=Path("/var/run") / folder.name / "docker.sock")
        for host in (f"unix://{folder}/docker.sock", f"unix:///var/run/{folder.name}/docker.sock",
                     f"unix:///run/../var/run/{folder.name}/./docker.sock", f"unix://{folder}/link.sock",
                     f"unix://unix://{folder}/docker.sock"):
            assert argv_of(run_shim(shim, "-H", host, "run", "bb")) == ["-H", host, "run", *M, "bb"], host
        for host in (f"unix://{folder}/other.sock", f"unix://{folder}", f"tcp://{folder}/docker.sock"):
            assert argv_of(run_shim(shim, "-H", host, "run", "bb")) == ["-H", host, "run", "bb"], host
        relative = run_shim(shim, "-H", "unix://docker.sock", "run", "bb", cwd=folder)
        assert argv_of(relative) == ["-H", "unix://docker.sock", "run", *M, "bb"]
    finally:
        shutil.rmtree(folder)


@needs_client
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="binds a passwd file (root, unshare)")
def test_without_home_the_users_home_comes_from_passwd(tmp_path):
    """docker (os/user, runc's user package in 20.10) looks the real uid up in /etc/passwd."""
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    home = tmp_path / "roothome"
    home.mkdir()
    make_context(home, "armhf", f"unix://{tmp_path / 'docker.sock'}")
    use_context(home, "armhf")
    passwd = tmp_path / "passwd"
    passwd.write_text(f"nobody:x:65534:65534::/nonexistent:/bin/false\nroot:x:0:0:root:{home}:/bin/sh\n")
    script = 'mount --bind "$1" /etc/passwd && shift && exec env -i PATH=/usr/bin:/bin "$@"'

    def without_home() -> list[str]:
        return argv_of(subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                       str(passwd), DASH, str(shim), "run", "bb"], capture_output=True, timeout=30))
    assert without_home() == ["run", *M, "bb"]
    make_context(home, "remote", "tcp://192.0.2.1:2376")
    use_context(home, "remote")
    assert without_home() == ["run", "bb"]


def test_disable_and_default_platform_from_the_environment(tmp_path):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT))
    assert argv_of(run_shim(shim, "run", "bb", env={"ARMHF_SHIM_DISABLE": "1"})) == ["run", "bb"]
    assert argv_of(run_shim(shim, "run", "bb", env={"DOCKER_DEFAULT_PLATFORM": "linux/amd64"})) == ["run", "bb"]
    assert argv_of(run_shim(shim, "run", "--platform=linux/arm", "bb", env={"DOCKER_DEFAULT_PLATFORM": "linux/amd64"})) \
        == ["run", *M, "--platform=linux/arm", "bb"]


@pytest.mark.parametrize("argv", [["ps"], ["run", "bb"], ["build", "."]])
def test_exit_status_and_stdin_pass_through(tmp_path, argv):
    client = make_client(tmp_path / "client", "#!/bin/sh\ncat\nexit 3\n")
    shim = install_shim(tmp_path, client)
    out = run_shim(shim, *argv, input=b"line one\nline two\n")
    assert (out.returncode, out.stdout, out.stderr) == (3, b"line one\nline two\n", b"")


def test_exec_leaves_no_wrapper_behind(tmp_path):
    client = make_client(tmp_path / "client", "#!/bin/sh\necho $$ $PPID\n")
    shim = install_shim(tmp_path, client)
    proc = subprocess.Popen([DASH, str(shim), "run", "bb"], stdout=subprocess.PIPE)
    pid, ppid = proc.communicate(timeout=10)[0].split()
    # The client runs in the very process the caller started (the shim exec'd into it).
    assert (int(pid), int(ppid)) == (proc.pid, os.getpid())


SIGNAL_CLIENT = f"""#!{sys.executable}
import os, signal, sys, time
got = []
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda n, f: got.append(n))
open(sys.argv[-1], "w").write(f"{{os.getpid()}} {{os.getppid()}}")
while not got:
    time.sleep(0.01)
sys.exit(40 + got[0])
"""


def _signals_at_default():
    # A shell cannot trap a signal that was ignored when it started (POSIX trap): under `nohup` (SIGHUP)
    # or from a background job of a script (SIGINT) the shim could not forward them. The caller here is
    # a terminal's or a service manager's, whatever started the test run.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_build_forwards_signals_and_exits_with_the_clients_status(tmp_path, sig):
    client = make_client(tmp_path / "client", SIGNAL_CLIENT)
    shim = install_shim(tmp_path, client)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([DASH, str(shim), "image", "build", str(ready)], preexec_fn=_signals_at_default)
    wait_for(lambda: ready.exists() and ready.read_text(), 10, what="client started")
    child, parent = map(int, ready.read_text().split())
    assert parent == proc.pid and child != proc.pid      # builds run as a child of the shim
    proc.send_signal(sig)
    assert proc.wait(10) == 40 + sig
    version, epoch, klass, injected, status, duration = (tmp_path / "records").read_text().split()
    assert (klass, injected, status) == ("build", "0", str(40 + sig))
    assert 0 < float(duration) < 10 and abs(int(epoch) - time.time()) < 60


def test_build_client_that_cannot_receive_sigint_gets_sigterm(tmp_path):
    """A sh client started in the background has SIGINT ignored and cannot take it back (as
    docker 20.10's classic builder): Ctrl-C on the shim must still stop it."""
    ready = tmp_path / "ready"
    client = make_client(tmp_path / "client", f"#!/bin/sh\ntrap 'exit 7' TERM\necho $$ > {ready}\n"
                                              "while :; do sleep 0.05; done\n")
    shim = install_shim(tmp_path, client)
    proc = subprocess.Popen([DASH, str(shim), "build", "."], preexec_fn=_signals_at_default)
    child = int(wait_for(lambda: ready.exists() and ready.read_text().strip(), 10, what="client started"))
    ignored = int(next(l for l in Path(f"/proc/{child}/status").read_text().splitlines()
                       if l.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 7


def test_records_are_read_back_by_the_reader(tmp_path):
    shim = install_shim(tmp_path, make_client(tmp_path / "client", "#!/bin/sh\nexit ${FAIL:-0}\n"))
    run_shim(shim, "run", "bb")
    run_shim(shim, "container", "create", "-v", "/x:/proc/cpuinfo", "bb")
    run_shim(shim, "exec", "c", "ls")
    run_shim(shim, "builder", "build", ".", env={"FAIL": "1"})
    run_shim(shim, "--version")
    records = ShimRecordReader(str(tmp_path / "records")).read_new()
    assert [(r.klass, r.injected, r.exit_code) for r in records] == [
        ("run", True, None), ("create", False, None), ("exec", False, None), ("build", False, 1), ("other", False, None)]
    assert records[0] == ShimRecord(None, "run", True, None, None)
    assert records[3].time is not None and records[3].duration_seconds is not None


@pytest.fixture
def mounted(tmp_path):
    mounts = []

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)
        mounts.append(args[-1])

    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", target], check=True)


def _check_unharmed(shim: Path) -> None:
    start = time.monotonic()
    out = run_shim(shim, "run", "bb", input=b"in")
    assert time.monotonic() - start < 5
    assert (out.returncode, out.stderr, argv_of(out)) == (0, b"", ["run", *M, "bb"])
    out = run_shim(shim, "build", ".")
    assert (out.returncode, out.stderr, argv_of(out)) == (0, b"", ["build", "."])


def test_missing_records_folder_changes_nothing(tmp_path):
    client = make_client(tmp_path / "client", RECORDING_CLIENT)
    _check_unharmed(install_shim(tmp_path, client, records=str(tmp_path / "gone" / "records")))
    assert not (tmp_path / "gone").exists()


def test_fifo_at_the_records_path_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "records")
    _check_unharmed(install_shim(tmp_path, make_client(tmp_path / "client", RECORDING_CLIENT)))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")
def test_read_only_or_full_records_filesystem_changes_nothing(tmp_path, mounted):
    client = make_client(tmp_path / "client", RECORDING_CLIENT)
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    mounted("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro))
    mounted("-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full))
    (full / "records").write_bytes(b"")
    filler = subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k"], capture_output=True)
    assert b"No space left" in filler.stderr
    _check_unharmed(install_shim(tmp_path, client, records=str(ro / "records")))
    _check_unharmed(install_shim(tmp_path, client, records=str(full / "records")))
    assert (full / "records").read_bytes() == b""


def test_build_keeps_the_callers_descriptors(tmp_path):
    """The shim borrows a spare descriptor to hand stdin to the build; the caller's own survive
    (fd 9 is the caller's here, so the shim must pick another and not leak it to the client)."""
    client = make_client(tmp_path / "client", "#!/bin/sh\ncat\nreadlink /proc/self/fd/9 /proc/self/fd/8\n")
    shim = install_shim(tmp_path, client)
    held = tmp_path / "held"
    held.write_text("")
    out = subprocess.run([DASH, "-c", 'exec "$0" "$1" build - 9<"$2"', DASH, str(shim), str(held)],
                         input=b"FROM x\n", capture_output=True, timeout=10)
    assert out.stdout.decode().splitlines() == ["FROM x", str(held)]
