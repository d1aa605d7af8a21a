"""The agent's configuration: one TOML file, every key overridable from the environment.

Sections are plain pydantic models hung off `AgentConfig`; a capability adds its section here and
nothing else in the core changes. Loading never half-succeeds: `load_config` either returns a
complete, validated config or raises `ConfigError` carrying *every* problem, each naming the file
(or environment variable), the key path and, where the TOML syntax is at fault, the line.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from .cpuinfo import HOST, CpuinfoError, get_profile, profile_variant

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04)
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_CONFIG_PATH = "/etc/armhf-agent/agent.toml"
ENV_CONFIG_PATH = "ARMHF_AGENT_CONFIG"
ENV_PREFIX = "ARMHF_AGENT_"
# sysexits.h EX_CONFIG; the unit's RestartPreventExitStatus=78 relies on it.
EXIT_CONFIG = 78

# Exporter port: the community range 9100-9999 is fully allocated; 9742 is taken by nothing we
# know to run next to a Docker host (not node_exporter's 9100, not dockerd's conventional 9323).
DEFAULT_METRICS_PORT = 9742

# systemd/armhf-agent.service's WatchdogSec (tests/test_packaging.py holds the two together). The loop
# pings at half of it, after a step; one step may wait out two health timeouts (dockerd's /_ping, then
# /version of a new dockerd: agent/loop.py `_platform`) plus its file work, so a health timeout above this
# bound lets a merely slow dockerd get the agent killed by the watchdog (issue 12).
UNIT_WATCHDOG_SECONDS = 60
# dockerd's --config-file default: every dockerd reads it unless told otherwise.
DEFAULT_DAEMON_JSON = "/etc/docker/daemon.json"
HEALTH_TIMEOUT_MAX_SECONDS = 10.0


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


class AgentSection(Section):
    state_dir: str = "/var/lib/armhf-agent"
    run_dir: str = "/run/armhf-agent"
    check_interval_seconds: float = Field(10.0, gt=0, le=3600)

    _abs = field_validator("state_dir", "run_dir")(_absolute)


class DockerSection(Section):
    root: str = "/opt/docker"
    host: str = "unix:///var/run/docker.sock"
    data_root: str = "/var/lib/docker"
    exec_root: str = "/var/run/docker"
    pidfile: str = "/var/run/docker.pid"
    personality: Literal["linux32", "none"] = "linux32"
    args: list[str] = []
    # The daemon.json dockerd reads (--config-file); "" = dockerd's default, /etc/docker/daemon.json, which
    # the host's own Docker reads too.
    config_file: str = ""
    log_file: str = ""
    health_interval_seconds: float = Field(5.0, gt=0, le=3600)
    health_timeout_seconds: float = Field(3.0, gt=0)
    health_failures: int = Field(2, ge=1, le=100)
    start_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    stop_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    restart_backoff_initial_seconds: float = Field(1.0, gt=0, le=60)
    restart_backoff_max_seconds: float = Field(60.0, gt=0, le=60)
    restart_stable_seconds: float = Field(60.0, gt=0, le=86400)
    update_settle_seconds: float = Field(2.0, ge=0, le=600)

    _abs = field_validator("root", "data_root", "exec_root", "pidfile")(_absolute)

    @field_validator("health_timeout_seconds")
    @classmethod
    def _within_watchdog(cls, value: float) -> float:
        if value > HEALTH_TIMEOUT_MAX_SECONDS:
            raise ValueError(f"{value:g} is more than {HEALTH_TIMEOUT_MAX_SECONDS:g}: a step can wait for two "
                             f"health timeouts and must end within half the unit's WatchdogSec="
                             f"{UNIT_WATCHDOG_SECONDS}")
        return value

    @field_validator("log_file", "config_file")
    @classmethod
    def _log_file(cls, value: str) -> str:
        return value if value == "" else _absolute(value)

    @field_validator("host")
    @classmethod
    def _unix_host(cls, value: str) -> str:
        # The agent pings, adopts and hands the socket to the shim; only a local unix socket makes
        # "this dockerd is ours" checkable (owner, path), so tcp:// is refused rather than half-supported.
        if not value.startswith("unix:///"):
            raise ValueError(f"must be unix:///absolute/path, got {value!r}")
        return value

    @property
    def socket_path(self) -> str:
        return self.host[len("unix://"):]


class CpuinfoSection(Section):
    path: str = "/hijacked-armhf-cpuinfo"
    daemon: bool = True
    variant: Literal["v7", "v6"] = "v7"
    profile: str = "host"

    _abs = field_validator("path")(_absolute)

    @model_validator(mode="before")
    @classmethod
    def _unset_key_follows_the_other(cls, data: Any) -> Any:
        """Only one of variant/profile set (or profile = ""): the other follows it. variant "v6"
        alone means raspberrypi1, never the host's own features: no ARMv6 board has NEON, VFPv4,
        idiv or crypto, and build probes that find them produce binaries that SIGILL on a Pi 1."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("profile") == "":
            del data["profile"]
        if "profile" in data and "variant" not in data and isinstance(data["profile"], str):
            try:
                data["variant"] = profile_variant(data["profile"])
            except CpuinfoError:
                pass        # reported by the profile's own validator, with its line
        elif "variant" in data and "profile" not in data and data["variant"] == "v6":
            data["profile"] = "raspberrypi1"
        return data

    @field_validator("profile")
    @classmethod
    def _known_profile_of_the_variant(cls, value: str, info) -> str:
        # Static checks only; whether this host runs every feature the profile names needs the live
        # host: `check-config` and the agent's render check that (agent/hijack.py).
        try:
            profile = get_profile(value)
        except CpuinfoError as exc:
            raise ValueError(str(exc)) from None
        variant = info.data.get("variant")
        if variant is None:         # invalid itself, reported on its own
            return value
        if profile is None and variant == "v6":
            raise ValueError(f"{HOST!r} shows this host's own features (NEON, VFPv4, idiv, ...), which no ARMv6 "
                             "board has: with variant = \"v6\" set profile = \"raspberrypi1\"")
        if profile is not None and profile.variant != variant:
            raise ValueError(f"{value!r} ({profile.description}) is a linux/arm/{profile.variant} profile but "
                             f"variant is {variant!r}: set variant = \"{profile.variant}\" (or leave it out)")
        return value


class ShimSection(Section):
    path: str = "/usr/local/bin/docker"
    client: str = ""

    _abs = field_validator("path")(_absolute)

    @field_validator("client")
    @classmethod
    def _client(cls, value: str) -> str:
        return value if value == "" else _absolute(value)


def _bcrypt_hash(value: str) -> str:
    from .basic_auth import check_hash     # loads libcrypt through ctypes: only when auth is configured
    return check_hash(value)


class RuntimeSection(Section):
    # The runtime wrapper (agent/runtime.py): a `runc` first in dockerd's PATH that gives every container
    # and build step the hijacked cpuinfo. Its folder is the agent's own, root's, 0755, and never the
    # payload's (install-docker replaces that folder whole).
    wrapper: bool = True
    dir: str = "/var/lib/armhf-agent/runtime"

    _abs = field_validator("dir")(_absolute)


class HostDockerSection(Section):
    # The host's own docker.service wired to a runtime wrapper of its own (agent/host_docker.py): its
    # 32-bit Arm containers see armv8l and an ARMv7/ARMv6 cpuinfo, its 64-bit ones are untouched. Opt-in.
    enabled: bool = False
    unit: str = "docker.service"
    # The system containerd dockerd uses (its shims look runc up in containerd's PATH); "" when dockerd
    # manages its own containerd.
    containerd_unit: str = "containerd.service"
    runtime_dir: str = "/var/lib/armhf-agent/host-runtime"
    systemd_dir: str = "/etc/systemd/system"
    daemon_json: str = DEFAULT_DAEMON_JSON
    # The host daemon's runc; "" = the first `runc` on the default PATH (Debian: /usr/sbin/runc).
    runc: str = ""

    _abs = field_validator("runtime_dir", "systemd_dir", "daemon_json")(_absolute)

    @field_validator("runc")
    @classmethod
    def _runc(cls, value: str) -> str:
        return value if value == "" else _absolute(value)

    @field_validator("unit", "containerd_unit")
    @classmethod
    def _unit(cls, value: str, info) -> str:
        if value == "" and info.field_name == "containerd_unit":
            return value
        if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+\.service", value):
            raise ValueError(f"must be a systemd service name such as docker.service, got {value!r}")
        return value


class MetricsSection(Section):
    listen: str = f"0.0.0.0:{DEFAULT_METRICS_PORT}"
    tls_cert: str = ""
    tls_key: str = ""
    # Set = clients must present a certificate signed by this CA (TLS only).
    tls_client_ca: str = ""
    # {user: bcrypt hash}, as exporter-toolkit's web config; empty = no authentication.
    basic_auth_users: dict[str, Annotated[str, AfterValidator(_bcrypt_hash)]] = {}
    # Bounds of the endpoint whatever clients do (agent/http_server.py). The unit's LimitNOFILE=1048576
    # is far above the cap; a lower fd limit lowers the cap at start (logged).
    max_connections: int = Field(512, ge=16, le=65536)
    request_timeout_seconds: float = Field(10.0, gt=0, le=300)
    max_header_bytes: int = Field(8192, ge=1024, le=1048576)
    docker_metrics: bool = True
    docker_metrics_listen: str = "127.0.0.1:9743"

    @field_validator("tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _tls_path(cls, value: str) -> str:
        return value if value == "" else _absolute(value)

    @field_validator("basic_auth_users")
    @classmethod
    def _user_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            # Basic auth sends "user:password": a colon in a user name could never match.
            if not name or ":" in name or not name.isprintable():
                raise ValueError(f"user name {name!r} must be non-empty, printable and without ':'")
        return value

    @field_validator("listen", "docker_metrics_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError(f"must be HOST:PORT with a port 1-65535, got {value!r}")
        return value

    @field_validator("docker_metrics_listen")
    @classmethod
    def _loopback(cls, value: str) -> str:
        # dockerd's own metrics are served to the world only through the agent (/metrics/dockerd).
        if value.rpartition(":")[0].strip("[]") not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"must be on loopback (127.0.0.1:PORT or [::1]:PORT), got {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> "MetricsSection":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be set together (both set = HTTPS)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (client certificates are checked in TLS)")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class _FileSource(PydanticBaseSettingsSource):
    """Feeds the already parsed TOML document to pydantic-settings (we parse it ourselves so a
    syntax error can name its line, and a missing file is an error instead of silent defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


# The environment `load_config` was handed; a context variable instead of os.environ so that a reload
# in the main loop never mutates process state other threads may read.
_ENVIRON: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("armhf_agent_environ")


class _EnvSource(EnvSettingsSource):
    def _load_env_vars(self):
        environ = _ENVIRON.get(None)
        environ = dict(os.environ) if environ is None else environ
        return {k.lower(): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)}


class AgentConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    agent: AgentSection = AgentSection()
    docker: DockerSection = DockerSection()
    cpuinfo: CpuinfoSection = CpuinfoSection()
    shim: ShimSection = ShimSection()
    runtime: RuntimeSection = RuntimeSection()
    host_docker: HostDockerSection = HostDockerSection()
    metrics: MetricsSection = MetricsSection()

    @model_validator(mode="after")
    def _wrapper_outside_the_payload(self) -> "AgentConfig":
        inside = lambda path, folder: (path.rstrip("/") + "/").startswith(folder.rstrip("/") + "/")  # noqa: E731
        if self.runtime.wrapper and (inside(self.runtime.dir, self.docker.root) or inside(self.docker.root, self.runtime.dir)):
            raise ValueError(f"runtime.dir {self.runtime.dir!r} and docker.root {self.docker.root!r} overlap: "
                             "install-docker replaces the payload's folder whole; give the wrapper a folder of its own")
        h = self.host_docker
        if h.enabled and (inside(h.runtime_dir, self.runtime.dir) or inside(self.runtime.dir, h.runtime_dir)
                          or inside(h.runtime_dir, self.docker.root)):
            raise ValueError(f"host_docker.runtime_dir {h.runtime_dir!r} must be apart from runtime.dir and "
                             "docker.root: each wrapper has a folder of its own")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Environment first: it wins over the file (systemd drop-ins, one-off runs).
        return (_EnvSource(settings_cls), init_settings)


@dataclass(frozen=True)
class ConfigProblem:
    where: str      # the file (with :line when known) or "env ARMHF_AGENT_..."
    key: str        # dotted key path, "" for the file as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}" if self.key else f"{self.where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, path: str, problems: list[ConfigProblem]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedConfig:
    config: AgentConfig
    path: str           # "" when running on built-in defaults (demo)
    source_text: str


def resolve_path(cli_path: str | None, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """Returns (path, explicit). An explicit path must exist; the default may be absent only for
    commands that tolerate it (none of the daemon's)."""
    environ = os.environ if environ is None else environ
    if cli_path:
        return cli_path, True
    if environ.get(ENV_CONFIG_PATH):
        return environ[ENV_CONFIG_PATH], True
    return DEFAULT_CONFIG_PATH, False


def _line_of(text: str, loc: tuple) -> int | None:
    """Best-effort line of `section.key` in a TOML text, for error messages an operator can act on."""
    if not loc:
        return None
    section, key = str(loc[0]), (str(loc[1]) if len(loc) > 1 else None)
    current = None
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    assign = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        m = header.match(line)
        if m:
            current = m.group(1)
            if key is None and current == section:
                return number
            continue
        m = assign.match(line)
        if m and current == section and m.group(1) == key:
            return number
        if m and current is None and key is None and m.group(1) == section:
            return number
    return None


def _env_name(loc: tuple) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc[:2])


def _parse_env_json(environ: dict[str, str], problems: list[ConfigProblem]) -> None:
    """pydantic-settings raises a bare SettingsError for an unparsable list in the environment;
    check those ourselves so the message names the variable (and drop the variable, so the rest
    is still validated and every problem is reported at once)."""
    for name, value in list(environ.items()):
        if name.startswith(ENV_PREFIX) and name.endswith("__ARGS"):
            try:
                parsed = json.loads(value)
                if not isinstance(parsed, list):
                    raise ValueError
            except ValueError:
                problems.append(ConfigProblem(f"env {name}", "", f"must be a JSON list of strings, got {value!r}"))
                del environ[name]
        elif name.startswith(ENV_PREFIX) and name.endswith("__BASIC_AUTH_USERS"):
            try:
                if not isinstance(json.loads(value), dict):
                    raise ValueError
            except ValueError:
                # Not echoed: it is meant to hold password hashes.
                problems.append(ConfigProblem(f"env {name}", "", 'must be a JSON object {"user": "bcrypt hash"}'))
                del environ[name]


def load_config(path: str | None, *, explicit: bool = True, environ: dict[str, str] | None = None) -> LoadedConfig:
    """Reads and validates the config. `path=None` means built-in defaults (plus environment)."""
    environ = dict(os.environ if environ is None else environ)
    problems: list[ConfigProblem] = []
    data: dict[str, Any] = {}
    text = ""
    where = path or "<defaults>"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit:
                raise ConfigError(path, [ConfigProblem(path, "", "no such file (an explicitly given config must exist)")])
            raise ConfigError(path, [ConfigProblem(path, "", f"no such file; create it (see {DEFAULT_CONFIG_PATH} in the package) or pass --config")])
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, [ConfigProblem(path, "", f"cannot read: {exc}")])
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message already ends in "(at line N, column M)".
            m = re.search(r"at line (\d+)", str(exc))
            loc = f"{path}:{m.group(1)}" if m else path
            raise ConfigError(path, [ConfigProblem(loc, "", f"TOML syntax: {exc}")])
    _parse_env_json(environ, problems)
    token = _ENVIRON.set(environ)
    try:
        config = AgentConfig(**data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            key = ".".join(str(p) for p in loc)
            env_name = _env_name(loc)
            if len(loc) >= 2 and env_name in environ:
                place = f"env {env_name}"
            else:
                line = _line_of(text, loc)
                place = f"{where}:{line}" if line else where
            message = err.get("msg", "invalid").removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                message = "unknown key"
            elif "input" in err and err.get("type") not in ("missing", "value_error"):
                message = f"{message} (got {err['input']!r})"
            problems.append(ConfigProblem(place, key, message))
        raise ConfigError(where, problems) from None
    finally:
        _ENVIRON.reset(token)
    if problems:
        raise ConfigError(where, problems)
    return LoadedConfig(config=config, path=path or "", source_text=text)


def effective_toml(config: AgentConfig) -> str:
    """The config in force, as TOML (for `check-config --effective`)."""
    out: list[str] = []
    for name in type(config).model_fields:
        section = getattr(config, name)
        out.append(f"[{name}]")
        for key, value in section.model_dump().items():
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")
