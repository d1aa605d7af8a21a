"""What the installed shim must contain (the script itself: agent.shim), and which client it may exec."""

from __future__ import annotations

import os

from .elf import elf_info
from .shim_records import records_path  # noqa: F401  (re-exported for the shim's callers)


def shim_content(client: str, cpuinfo_path: str, records: str, daemon_host: str, version: str) -> bytes:
    """daemon_host: the agent's `docker.host`; the shim inserts its mount only for that daemon."""
    from .shim import render_shim  # the shim capability (agent/shim.py)

    return render_shim(client, cpuinfo_path, records, daemon_host, version).encode()


def shim_client(config, payload, exec_mode: str, exec_detail: str = "") -> tuple[str | None, str]:
    """The docker client the shim execs, or None and why there is none. Only a valid payload's client:
    an unsafe one (writable by others) may hold anybody's code, and root's next `docker ps` would run
    it. Not a 32-bit ARM client on a host that cannot execute one: every `docker` on the host would
    fail (issue 12); the host's own client (or the one the shim displaced) serves it instead.
    `shim.client` set in the config is the operator's choice and used as it is."""
    if config.shim.client:
        return config.shim.client, ""
    if not payload.client:
        return None, f"no docker client to exec: none in {config.docker.root} and shim.client unset"
    if not payload.ok:
        return None, f"the payload is not valid ({'; '.join(payload.problems)}): its docker client is not run"
    info = elf_info(os.path.realpath(payload.client))
    if info is not None and info.is_armhf_capable and exec_mode == "unsupported":
        return None, (f"{payload.client} is 32-bit ARM and this CPU cannot execute it"
                      + (f" ({exec_detail})" if exec_detail else "") + ": no shim in front of the host's docker")
    return payload.client, ""
