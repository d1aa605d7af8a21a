"""Every container and every build step sees the hijacked cpuinfo, whatever started it: the runtime
wrapper against a real dockerd and real containers (issue 14).

The agent runs with the wrapper on (the default) and its dockerd under linux32-free x86 stand-ins
(the system's docker.io). Clients that never pass through the CLI shim: the Docker SDK (the Engine
API, as compose, CI runners and every SDK speak it), docker-compose, and the payload's own `docker`
client called directly; and both builders' RUN steps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from agentproc import AgentProcess, agent_config, pid_alive
from conftest import requires_docker
from harness import docker_cli, make_busybox_tar, unmount_under, wait_for
from tamper import TAMPERS

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]

CLIENT = "/usr/bin/docker"          # the payload's (stand-in) client itself, not the shim


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory):
    """One agent with the wrapper on, its dockerd and the busybox image, for the cases that only read."""
    from harness import new_base

    base = new_base()
    a = AgentProcess(base, metrics=False).start()
    try:
        a.wait_running()
        docker_cli(a.sock, "import", str(make_busybox_tar(base / "bb.tar")), "bb:local")
        yield a
    finally:
        a.stop()
        unmount_under(base)


def hijacked(a: AgentProcess) -> str:
    return Path(a.config["cpuinfo"]["path"]).read_text()


def kernels() -> str:
    return Path("/proc/cpuinfo").read_text()


def run(a: AgentProcess, *args: str, client: str = CLIENT, **kw) -> subprocess.CompletedProcess:
    return docker_cli(a.sock, "run", "--rm", "--network", "none", *args, client=client, **kw)


def runtime_records(a: AgentProcess) -> list[str]:
    try:
        return (a.run_dir / "runtime-records").read_text().splitlines()
    except FileNotFoundError:
        return []


def test_the_wrapper_is_first_in_dockerds_path_and_named_for_buildkit(wrapped):
    pid = wrapped.dockerd_pid()
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    wrapper_dir = wrapped.config["runtime"]["dir"]
    assert env["PATH"].split(":")[0] == wrapper_dir
    assert env["DOCKER_BUILDKIT_RUNC_COMMAND"] == os.path.join(wrapper_dir, "runc")
    assert b"runtime wrapper installed by armhf-agent" in Path(wrapper_dir, "runc").read_bytes()
    st = os.stat(wrapper_dir)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)


def test_an_engine_api_container_reads_the_hijacked_cpuinfo(wrapped):
    import docker

    client = docker.DockerClient(base_url="unix://" + wrapped.sock, version="1.41")
    out = client.containers.run("bb:local", ["cat", "/proc/cpuinfo"], network_mode="none", remove=True)
    assert out.decode() == hijacked(wrapped)
    assert out.decode() != kernels()


def test_the_payloads_own_client_gets_it_too(wrapped):
    before = len(runtime_records(wrapped))
    assert run(wrapped, "bb:local", "cat", "/proc/cpuinfo").stdout == hijacked(wrapped)
    records = runtime_records(wrapped)[before:]
    assert len(records) == 1 and records[0].split()[2:] == ["injected", "-"], records


def test_docker_compose_services_read_it(wrapped, tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("version: '2.4'\nservices:\n  probe:\n    image: bb:local\n    network_mode: none\n"
                       "    command: [cat, /proc/cpuinfo]\n")
    r = subprocess.run(["docker-compose", "-f", str(compose), "-p", "wrapper", "run", "--rm", "-T", "probe"],
                       capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, DOCKER_HOST="unix://" + wrapped.sock))
    assert r.returncode == 0, r.stderr
    assert r.stdout == hijacked(wrapped)


@pytest.mark.parametrize("buildkit", ["0", "1"])
def test_build_steps_read_it_classic_and_buildkit(wrapped, tmp_path, buildkit):
    (tmp_path / "Dockerfile").write_text("FROM bb:local\nRUN cat /proc/cpuinfo > /seen-at-build\n")
    tag = f"seen-at-build-{buildkit}"
    r = docker_cli(wrapped.sock, "build", "--network", "none", "-t", tag, str(tmp_path), client=CLIENT,
                   env=dict(os.environ, DOCKER_BUILDKIT=buildkit), check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # Read back through a container whose own view is left alone (it mounts the kernel's file itself).
    seen = run(wrapped, "--mount", "type=bind,source=/proc/cpuinfo,target=/proc/cpuinfo,readonly", tag,
               "cat", "/seen-at-build").stdout
    assert seen == hijacked(wrapped)


def test_runtime_runc_named_explicitly_is_the_same_runtime(wrapped):
    assert run(wrapped, "--runtime", "runc", "bb:local", "cat", "/proc/cpuinfo").stdout == hijacked(wrapped)


def test_docker_exec_sees_what_the_container_sees(wrapped):
    cid = docker_cli(wrapped.sock, "run", "-d", "--network", "none", "bb:local", "sleep", "600", client=CLIENT).stdout.strip()
    try:
        r = docker_cli(wrapped.sock, "exec", cid, "cat", "/proc/cpuinfo", client=CLIENT)
        assert r.stdout == hijacked(wrapped)
    finally:
        docker_cli(wrapped.sock, "rm", "-f", cid, client=CLIENT, check=False)


def test_a_container_with_its_own_cpuinfo_keeps_it(wrapped, tmp_path):
    own = tmp_path / "own-cpuinfo"
    own.write_text("processor\t: 0\nmodel name\t: mine\n")
    before = len(runtime_records(wrapped))
    for spelling in ("/proc/cpuinfo", "/proc//cpuinfo/"):
        out = run(wrapped, "-v", f"{own}:{spelling}:ro", "bb:local", "cat", "/proc/cpuinfo").stdout
        assert out == own.read_text(), spelling
    assert [r.split()[2] for r in runtime_records(wrapped)[before:]] == ["own-mount", "own-mount"]


def test_metrics_count_what_the_wrapper_did(base):
    import urllib.request

    from bench.rig import free_port

    cfg = agent_config(base)
    cfg["metrics"] = {"listen": f"127.0.0.1:{free_port()}", "docker_metrics": False}
    a = AgentProcess(base, config=cfg, metrics=True).start()
    try:
        a.wait_running()
        docker_cli(a.sock, "import", str(make_busybox_tar(base / "bb.tar")), "bb:local")
        for _ in range(3):
            run(a, "bb:local", "true")
        url = f"http://{cfg['metrics']['listen']}/metrics"

        def injected():
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            line = next((ln for ln in text.splitlines()
                         if ln.startswith('armhf_agent_runtime_wrapper_runs_total{result="injected"}')), "")
            return line and float(line.split()[-1]) >= 3 and text
        text = wait_for(injected, 30, 0.2, "three injected runs counted")
        assert 'armhf_agent_runtime_wrapper_runs_total{result="failed"} 0.0' in text
        assert 'armhf_agent_file_ok{file="runtime-wrapper"} 1.0' in text
    finally:
        a.stop()


@pytest.mark.parametrize("reason", ["missing", "content", "replaced", "directory", "symlink", "owner", "mode"])
def test_tampering_with_the_wrapper_is_repaired_and_counted(wrapped, reason):
    path = Path(wrapped.config["runtime"]["dir"]) / "runc"
    content = path.read_bytes()
    before = next(f for f in wrapped.state()["files"] if f["name"] == "runtime-wrapper")["repairs"][reason]
    TAMPERS[reason](path, content)

    def repaired():
        f = next(f for f in wrapped.state()["files"] if f["name"] == "runtime-wrapper")
        return f["repairs"][reason] == before + 1 and f["ok"]
    wait_for(repaired, 10, 0.02, f"wrapper {reason} repaired")
    st = os.lstat(path)
    assert path.read_bytes() == content and (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)
    assert run(wrapped, "bb:local", "cat", "/proc/cpuinfo").stdout == hijacked(wrapped)


def test_while_the_wrapper_is_missing_containers_still_start(wrapped):
    # The agent held still (SIGSTOP) so nothing repairs: containerd's shim looks `runc` up in PATH at each
    # container and finds the payload's own after the missing wrapper. No cpuinfo then, but no refusal.
    path = Path(wrapped.config["runtime"]["dir"]) / "runc"
    content = path.read_bytes()
    wrapped.signal(signal.SIGSTOP)
    try:
        path.unlink()
        out = run(wrapped, "bb:local", "cat", "/proc/cpuinfo").stdout
        assert out == kernels()
    finally:
        wrapped.signal(signal.SIGCONT)
    wait_for(lambda: path.exists() and path.read_bytes() == content, 10, 0.02, "the wrapper back")


def test_with_the_wrapper_off_behaviour_is_exactly_the_shims_alone(base):
    cfg = agent_config(base)
    cfg["runtime"]["wrapper"] = False
    a = AgentProcess(base, config=cfg).start()
    try:
        pid = a.wait_running()
        docker_cli(a.sock, "import", str(make_busybox_tar(base / "bb.tar")), "bb:local")
        assert run(a, "bb:local", "cat", "/proc/cpuinfo").stdout == kernels()
        # The CLI shim still carries it for `docker run`.
        shim = a.config["shim"]["path"]
        assert run(a, "bb:local", "cat", "/proc/cpuinfo", client=shim).stdout == hijacked(a)
        env = Path(f"/proc/{pid}/environ").read_text()
        assert "DOCKER_BUILDKIT_RUNC_COMMAND" not in env and cfg["runtime"]["dir"] not in env
        assert not (Path(cfg["runtime"]["dir"]) / "runc").exists()
        assert "runtime-wrapper" not in [f["name"] for f in a.state()["files"]]
    finally:
        a.stop()


def test_an_adopted_dockerd_without_the_wrapper_in_its_path_is_restarted_gracefully(agent, base):
    off = agent_config(base)
    off["runtime"]["wrapper"] = False
    a = agent(config=off).start()
    pid = a.wait_running()
    a.signal(signal.SIGUSR2)                  # an upgrade from an agent without the wrapper
    assert a.wait_exit(30) == 0 and pid_alive(pid)
    b = agent(config=agent_config(base)).start()
    b.wait_log(r"adopted pid %d differs from the config \(environment\)" % pid)
    b.wait_log(r"RUNNING -> STOPPING: SIGTERM to pid %d \(reload" % pid)
    new = b.wait_running(60, other_than=pid)
    env = Path(f"/proc/{new}/environ").read_text()
    assert f"PATH={base / 'state' / 'runtime'}:" in env
    assert b.state()["dockerd"]["restarts"]["reload"] == 1


def _runc_bundle(where: Path) -> Path:
    """An OCI bundle of the busybox tree, made by runc itself (`runc spec`), running cat /proc/cpuinfo."""
    where.mkdir()
    rootfs = where / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-C", str(rootfs), "-xf", str(make_busybox_tar(where / "bb.tar"))], check=True)
    subprocess.run(["runc", "spec", "--bundle", str(where)], check=True)
    doc = json.loads((where / "config.json").read_text())
    doc["process"]["terminal"] = False
    doc["process"]["args"] = ["cat", "/proc/cpuinfo"]
    (where / "config.json").write_text(json.dumps(doc, indent="\t"))
    return where


def test_with_the_real_runc_an_edited_spec_runs_and_an_uneditable_one_runs_unedited(wrapped, tmp_path):
    wrapper = str(Path(wrapped.config["runtime"]["dir"]) / "runc")
    state = tmp_path / "runc-state"
    b = _runc_bundle(tmp_path / "bundle")
    before = len(runtime_records(wrapped))
    edited = subprocess.run([wrapper, "--root", str(state), "run", "--bundle", str(b), "probe-rw"],
                            capture_output=True, text=True, timeout=60)
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout == hijacked(wrapped)
    # A bundle the editor cannot write (read-only): runc gets it as it was and the container still runs.
    ro = _runc_bundle(tmp_path / "ro-bundle")
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=True)
    try:
        unedited = subprocess.run([wrapper, "--root", str(state), "run", "--bundle", str(ro), "probe-ro"],
                                  capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert unedited.returncode == 0, unedited.stderr
    assert unedited.stdout == kernels()
    results = [r.split()[2:] for r in runtime_records(wrapped)[before:]]
    assert results == [["injected", "-"], ["failed", "OSError"]], results


def test_a_malformed_spec_gets_exactly_what_runc_alone_says(wrapped, tmp_path):
    wrapper = str(Path(wrapped.config["runtime"]["dir"]) / "runc")
    b = _runc_bundle(tmp_path / "bundle")
    (b / "config.json").write_text((b / "config.json").read_text()[:-20])
    args = ["--root", str(tmp_path / "state"), "run", "--bundle", str(b), "probe"]
    alone = subprocess.run(["runc", *args], capture_output=True, text=True, timeout=60)
    through = subprocess.run([wrapper, *args], capture_output=True, text=True, timeout=60)
    assert through.returncode == alone.returncode != 0
    untimed = lambda text: re.sub(r'time="[^"]*" ', "", text)  # noqa: E731  (runc stamps its log lines)
    assert untimed(through.stderr) == untimed(alone.stderr) and "runc run failed" in alone.stderr
    assert runtime_records(wrapped)[-1].split()[2] == "failed"
