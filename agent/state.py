"""The agent's published state: one immutable snapshot per loop step.

The loop builds a `Snapshot` after every step and hands it to its readers: the metrics collector
(in memory, so a scrape never touches Docker or the disk) and `status` (through `state.json` in
`agent.run_dir`, written atomically, mode 0600). Readers depend on this module only, never on the
supervisor or the managed resources themselves.

Schema version 1 of state.json is `Snapshot.to_json()`; fields are only ever added.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STATE_FILE = "state.json"

# The dockerd supervisor's states (agent/dockerd.py is the state machine); a closed label set.
STOPPED, BLOCKED, STARTING, RUNNING, STOPPING, BACKOFF = "stopped", "blocked", "starting", "running", "stopping", "backoff"

# Bounded label values (metrics rely on these sets being closed).
DOCKERD_STATES = (STOPPED, BLOCKED, STARTING, RUNNING, STOPPING, BACKOFF)
RESTART_REASONS = ("exited", "hung", "update", "reload", "start_timeout")
EXEC_MODES = ("native", "emulated", "unsupported", "unknown")
UPDATE_RESULTS = ("applied", "rolled_back", "rejected")
RELOAD_RESULTS = ("applied", "rejected")
REPAIR_REASONS = ("missing", "content", "replaced", "directory", "symlink", "owner", "mode")


@dataclass(frozen=True)
class DockerdState:
    state: str = "stopped"                 # one of DOCKERD_STATES
    reason: str = ""                       # human text: why blocked / backing off / last exit
    pid: int | None = None
    started_at: float | None = None        # wall clock (epoch seconds) of the process start
    adopted: bool = False
    restarts: dict[str, int] = field(default_factory=dict)   # RESTART_REASONS -> count, since agent start
    last_restart_reason: str = ""
    last_restart_at: float | None = None
    ping_ok: bool = False
    ping_seconds: float | None = None      # latency of the last successful /_ping
    backoff_seconds: float = 0.0           # current delay before the next start attempt
    platform_os: str = ""                  # as the daemon reports it (/version Os, Arch) ...
    platform_arch: str = ""
    platform_variant: str = ""             # ... and the variant containerd derives from the cpuinfo dockerd sees
    server_version: str = ""


@dataclass(frozen=True)
class PayloadState:
    root: str = ""
    state: str = "unknown"                 # "ok" | "missing" | "invalid" | "unknown"
    problem: str = ""
    version: str = ""
    arch: str = ""                         # ELF machine of dockerd: "arm", "aarch64", "x86_64", ...
    updates: dict[str, int] = field(default_factory=dict)    # UPDATE_RESULTS -> count


@dataclass(frozen=True)
class HostDockerState:
    enabled: bool = False                  # [host_docker] enabled
    unit: str = ""
    wired: bool = False                    # its dockerd runs with the wrapper first in PATH
    pid: int | None = None                 # that dockerd's pid (docker.service's MainPID)
    problem: str = ""                      # why the mode is not (fully) in force


@dataclass(frozen=True)
class FileState:
    name: str                              # "cpuinfo" | "shim"
    path: str
    ok: bool = False
    problem: str = ""
    repairs: dict[str, int] = field(default_factory=dict)    # REPAIR_REASONS -> count
    last_repair_reason: str = ""
    last_repair_at: float | None = None


@dataclass(frozen=True)
class CpuinfoState:
    profile: str = ""                      # "host" or a device profile (agent/data/cpuinfo-profiles)
    variant: str = ""                      # "v7" | "v6": what containerd derives from the file
    features: tuple[str, ...] = ()         # the Features line the hijacked file shows
    hidden_features: tuple[str, ...] = ()  # this host's 32-bit features the file does not show


@dataclass(frozen=True)
class Snapshot:
    schema: int = SCHEMA_VERSION
    version: str = ""                      # agent version
    pid: int = 0                           # agent pid
    state: str = "starting"                # "starting" | "running" | "reloading" | "stopping"
    started_at: float = 0.0
    last_step_at: float = 0.0              # wall clock of the last completed loop step
    steps: int = 0
    config_path: str = ""
    metrics_url: str = ""
    exec_mode: str = "unknown"             # one of EXEC_MODES
    exec_detail: str = ""
    reloads: dict[str, int] = field(default_factory=dict)    # RELOAD_RESULTS -> count
    dockerd: DockerdState = DockerdState()
    payload: PayloadState = PayloadState()
    files: tuple[FileState, ...] = ()
    cpuinfo: CpuinfoState = CpuinfoState()
    host_docker: HostDockerState = HostDockerState()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Snapshot":
        def known(klass, d):
            names = set(klass.__dataclass_fields__)
            return {k: v for k, v in d.items() if k in names}

        top = known(cls, data)
        top["dockerd"] = DockerdState(**known(DockerdState, data.get("dockerd", {})))
        top["payload"] = PayloadState(**known(PayloadState, data.get("payload", {})))
        top["files"] = tuple(FileState(**known(FileState, f)) for f in data.get("files", ()))
        cpu = known(CpuinfoState, data.get("cpuinfo") or {})
        top["cpuinfo"] = CpuinfoState(**{k: tuple(v) if isinstance(v, list) else v for k, v in cpu.items()})
        top["host_docker"] = HostDockerState(**known(HostDockerState, data.get("host_docker") or {}))
        return cls(**top)
