"""Config: the shipped file, every error at once with file/line/key, env overrides, exit 78."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from agent.config import EXIT_CONFIG, AgentConfig, ConfigError, effective_toml, load_config, resolve_path
from harness import REPO

SHIPPED = REPO / "etc" / "armhf-agent" / "agent.toml"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env or {})})


def test_shipped_file_has_every_key_at_its_default():
    data = tomllib.loads(SHIPPED.read_text())
    defaults = AgentConfig().model_dump()
    assert data == defaults, "etc/armhf-agent/agent.toml must list every key, set to its default"


def test_every_key_is_commented_or_self_explanatory_section():
    text = SHIPPED.read_text()
    assert text.count("#") > 30


def test_all_errors_reported_at_once_with_line_and_key(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[agent]\nstate_dir = "relative"\n\n[docker]\nhealth_failures = 0\npersonality = "linux64"\n'
                 'args = "--debug"\nbogus = 1\n\n[nope]\nx = 1\n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    text = str(exc.value)
    expected = [
        f"{f}:2: agent.state_dir: must be an absolute path",
        f"{f}:5: docker.health_failures: Input should be greater than or equal to 1",
        f"{f}:6: docker.personality: Input should be 'linux32' or 'none'",
        f"{f}:7: docker.args: Input should be a valid list",
        f"{f}:8: docker.bogus: unknown key",
        f"{f}:10: nope: unknown key",
    ]
    for line in expected:
        assert line in text, f"missing {line!r} in:\n{text}"
    assert len(exc.value.problems) == 6


def test_a_health_timeout_the_watchdog_cannot_wait_for_is_refused(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text("[docker]\nhealth_timeout_seconds = 10.0\n")
    assert load_config(str(f)).config.docker.health_timeout_seconds == 10.0
    f.write_text("[docker]\nhealth_timeout_seconds = 10.5\n")
    r = cli("check-config", "--config", str(f))
    assert r.returncode == EXIT_CONFIG and "Traceback" not in r.stderr
    assert f"{f}:2: docker.health_timeout_seconds: 10.5 is more than 10" in r.stderr + r.stdout
    assert "WatchdogSec=60" in r.stderr + r.stdout


def test_toml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[docker]\nroot = "/opt/docker"\nhost = \n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert str(exc.value).startswith(f"{f}:3: TOML syntax")


def test_explicit_missing_path_is_an_error_not_defaults(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.toml"))


def test_env_overrides_file_and_env_errors_name_the_variable(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[docker]\nroot = "/opt/docker"\n')
    c = load_config(str(f), environ={"ARMHF_AGENT_DOCKER__ROOT": "/srv/armhf-docker",
                                     "ARMHF_AGENT_DOCKER__ARGS": '["--debug"]'}).config
    assert c.docker.root == "/srv/armhf-docker" and c.docker.args == ["--debug"]
    with pytest.raises(ConfigError) as exc:
        load_config(str(f), environ={"ARMHF_AGENT_DOCKER__HEALTH_FAILURES": "many",
                                     "ARMHF_AGENT_METRICS__LISTEN": "nowhere"})
    text = str(exc.value)
    assert "env ARMHF_AGENT_DOCKER__HEALTH_FAILURES: docker.health_failures" in text
    assert "env ARMHF_AGENT_METRICS__LISTEN: metrics.listen" in text


def test_resolve_path_order():
    assert resolve_path("/x.toml", {"ARMHF_AGENT_CONFIG": "/y.toml"}) == ("/x.toml", True)
    assert resolve_path(None, {"ARMHF_AGENT_CONFIG": "/y.toml"}) == ("/y.toml", True)
    assert resolve_path(None, {}) == ("/etc/armhf-agent/agent.toml", False)


def test_cross_field_rules(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[metrics]\ntls_cert = "/c.pem"\ndocker_metrics_listen = "0.0.0.0:9743"\n'
                 '[docker]\nhost = "tcp://1.2.3.4:2375"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    text = str(exc.value)
    assert "docker_metrics_listen: must be on loopback" in text
    assert "docker.host: must be unix:///absolute/path" in text
    # The cross-field TLS rule is checked once the section's fields are valid.
    f.write_text('[metrics]\ntls_cert = "/c.pem"\n')
    with pytest.raises(ConfigError, match="metrics: tls_cert and tls_key must be set together"):
        load_config(str(f))


def test_check_config_cli_exit_78_and_lists_everything(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[docker]\nhealth_interval_seconds = -1\nstop_timeout_seconds = "soon"\n')
    r = cli("--config", str(f), "check-config")
    assert r.returncode == EXIT_CONFIG
    assert "2 problems" in r.stderr
    assert f"{f}:2: docker.health_interval_seconds" in r.stderr
    assert f"{f}:3: docker.stop_timeout_seconds" in r.stderr
    r = cli("--config", str(tmp_path / "nope.toml"), "check-config")
    assert r.returncode == EXIT_CONFIG and "no such file" in r.stderr
    r = cli("check-config", env={"ARMHF_AGENT_CONFIG": str(f)})
    assert r.returncode == EXIT_CONFIG


def test_run_with_broken_config_exits_78_before_doing_anything(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text("[docker\n")
    r = cli("--config", str(f), "run")
    assert r.returncode == EXIT_CONFIG and "TOML syntax" in r.stderr


def test_check_config_effective_roundtrips(tmp_path):
    r = cli("--config", str(SHIPPED), "check-config", "--effective",
            env={"ARMHF_AGENT_DOCKER__DATA_ROOT": "/srv/data"})
    assert r.returncode == 0, r.stderr
    data = tomllib.loads(r.stdout)
    assert data["docker"]["data_root"] == "/srv/data"
    f = tmp_path / "eff.toml"
    f.write_text(r.stdout)
    assert load_config(str(f)).config.docker.data_root == "/srv/data"
    assert effective_toml(AgentConfig()) == effective_toml(load_config(str(SHIPPED)).config)


def test_every_command_has_help():
    top = cli("--help")
    assert top.returncode == 0
    for command in ("run", "check-config", "install-docker", "render-cpuinfo", "render-shim", "status", "doctor",
                    "uninstall-files", "systemd-stop", "demo"):
        assert command in top.stdout
        r = cli(command, "--help")
        assert r.returncode == 0 and "usage: armhf-agent" in r.stdout, command
