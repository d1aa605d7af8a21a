"""The operator's commands on an unlucky host: no config file yet, an invalid one, `--config` after the
command, not root, another filesystem under /var, an agent already gone (issue 12). Never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentproc import agent_config, write_config
from harness import REPO, make_payload

MISSING_DEFAULT = "/nonexistent/armhf-agent/agent.toml"


def cli(*args, default_config: str | None = None, user: str | None = None, env: dict | None = None):
    """`armhf-agent ARGS` in a fresh interpreter; `default_config` replaces /etc/armhf-agent/agent.toml
    (which this machine may or may not have)."""
    code = "import sys, agent.config as c\n"
    if default_config:
        code += f"c.DEFAULT_CONFIG_PATH = {default_config!r}\n"
    code += "from agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    command = [sys.executable, "-c", code, *args]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    environ.pop("ARMHF_AGENT_CONFIG", None)
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environ, timeout=120)


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


@pytest.mark.parametrize("command", ["render-cpuinfo", "status", "doctor"])
def test_operator_commands_work_on_built_in_defaults_when_the_default_file_is_absent(command):
    r = cli(command, default_config=MISSING_DEFAULT)
    no_traceback(r)
    assert "invalid configuration" not in r.stderr and "no such file" not in r.stderr, r.stderr
    assert r.returncode in {"render-cpuinfo": (0,), "status": (0, 1, 3), "doctor": (0, 1)}[command], r.stderr
    if command == "render-cpuinfo":
        assert "CPU architecture: 7" in r.stdout


def test_render_shim_without_a_payload_says_why_and_fails():
    r = cli("render-shim", default_config=MISSING_DEFAULT)
    no_traceback(r)
    assert r.returncode == 1 and "no shim to render: no docker client to exec: none in /opt/docker" in r.stderr


def test_the_daemon_and_check_config_still_insist_on_the_file():
    for command in (["check-config"], ["run", "--no-metrics"]):
        r = cli(*command, default_config=MISSING_DEFAULT)
        no_traceback(r)
        assert r.returncode == 78 and f"{MISSING_DEFAULT}: no such file; create it" in r.stderr, r.stderr


def test_config_is_accepted_after_the_command_too(base):
    cfg = write_config(base / "a.toml", agent_config(base))
    before = cli("--config", str(cfg), "check-config", "--effective")
    after = cli("check-config", "--effective", "--config", str(cfg))
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout and str(base / "state") in after.stdout


def test_status_answers_with_lsb_codes_even_on_a_bad_config(base):
    bad = base / "bad.toml"
    bad.write_text("[docker]\nhealth_failures = 0\n")
    r = cli("status", "--config", str(bad))
    no_traceback(r)
    assert r.returncode == 4, (r.returncode, r.stderr)          # LSB: status unknown, not 78
    assert "docker.health_failures" in r.stderr
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("status", "--config", str(cfg))
    assert r.returncode == 3 and "not running" in r.stdout      # no agent on these folders


def test_install_docker_as_a_normal_user_is_a_clear_error(base, tmp_path):
    # tmp_path, not `base`: the test base is root's 0700 folder, and nobody must be able to read the config.
    os.chmod(tmp_path, 0o755)
    cfg = write_config(tmp_path / "a.toml", agent_config(base))
    os.chmod(cfg, 0o644)
    tarball = tmp_path / "docker.tgz"
    tarball.write_bytes(b"not really")
    os.chmod(tarball, 0o644)
    r = cli("--config", str(cfg), "install-docker", str(tarball), user="65534")
    no_traceback(r)
    assert r.returncode != 0 and ("root" in r.stderr or "permission denied" in r.stderr), r.stderr


def test_systemd_stop_after_the_agent_already_exited_succeeds():
    # systemd drops an empty $MAINPID: an upgrade handover or a manual TERM ended the agent first.
    r = cli("systemd-stop", "armhf-agent.service")
    no_traceback(r)
    assert r.returncode == 0 and "not running; nothing to stop" in r.stdout


@pytest.fixture
def tmpfs(base):
    mount = base / "other-fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_uninstall_restores_the_original_client_across_filesystems_and_handles_every_file(base, tmpfs):
    # /var/lib (the displaced store) and /usr/local/bin on different filesystems: a bare rename raised
    # EXDEV at `apt purge` and the original client was lost.
    cfg_dict = agent_config(base)
    cfg_dict["agent"]["state_dir"] = str(tmpfs / "state")
    cfg = write_config(base / "a.toml", cfg_dict)
    store = tmpfs / "state" / "displaced"
    store.mkdir(parents=True)
    original = store / "shim.original"
    original.write_bytes(b"#!/bin/sh\necho the original client\n")
    original.chmod(0o751)
    shim = Path(cfg_dict["shim"]["path"])
    shim.parent.mkdir(exist_ok=True)
    shim.write_bytes(b"#!/bin/sh\n# docker shim installed by armhf-agent 0.1.0\n")
    # The cpuinfo file is ours but cannot be removed (its folder is read-only): the shim is still done.
    ro = base / "ro"
    ro.mkdir()
    cpuinfo = ro / "hijacked-armhf-cpuinfo"
    cpuinfo.write_bytes(b"processor\t: 0\nCPU architecture: 7\n")
    cfg_dict["cpuinfo"]["path"] = str(cpuinfo)
    write_config(cfg, cfg_dict)
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=True)
    try:
        r = cli("--config", str(cfg), "uninstall-files")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    no_traceback(r)
    assert shim.read_bytes() == b"#!/bin/sh\necho the original client\n"
    assert (shim.stat().st_mode & 0o777) == 0o751
    assert not original.exists() and not list(shim.parent.glob(".docker.*"))
    assert r.returncode == 1 and str(cpuinfo) in r.stderr and "Read-only file system" in r.stderr, r.stderr
    assert cpuinfo.exists()
    again = cli("--config", str(cfg), "uninstall-files")
    assert again.returncode == 0 and not cpuinfo.exists(), again.stderr


def test_agent_main_refuses_a_payload_less_render_shim_without_a_traceback(base):
    make_payload(base / "payload")
    os.chmod(base / "payload" / "bin" / "dockerd", 0o777)
    cfg = write_config(base / "a.toml", agent_config(base))
    r = cli("--config", str(cfg), "render-shim")
    no_traceback(r)
    assert r.returncode == 1 and "its docker client is not run" in r.stderr
