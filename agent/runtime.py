"""The runtime wrapper: a `runc` first in dockerd's PATH that gives every container and every build step
the hijacked ARMv7 cpuinfo, whatever started it (issue 14).

Who runs runc (../shared/reference/runtime.md, read in moby v20.10.24 and docker-v29): the shim's
containers, Engine-API clients and the classic builder go through containerd-shim-runc-v2, whose
runtime binary is the bare name `runc` (moby daemon/runtime_unix.go), looked up in the shim's PATH,
which is dockerd's; BuildKit's RUN steps run runc from dockerd itself, also the bare name `runc`
looked up in dockerd's PATH at every step (buildkit runcexecutor keeps the name), or, on Docker >= 26,
$DOCKER_BUILDKIT_RUNC_COMMAND. So one file named `runc`, first in dockerd's PATH, with that variable
pointing at it, meets them all.

The wrapper is a POSIX sh script: it finds runc's subcommand (global options skipped) and, for
`create` and `run` only, execs the spec editor (agent/runtime_exec.py, a fresh interpreter: the
editor's cost is paid once per container); everything else (`start`, `state`, `kill`, `delete`, `exec`,
`features`, `--version`, unknown flags) is exec'd to the payload's runc with the same arguments, so
stdio, signals, the process group and pdeathsig are unchanged. Only shell builtins run before the exec:
no fork.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .shim import sh_quote

WRAPPER_NAME = "runc"
# Present in every wrapper the agent renders: tells "ours, edited" from "a foreign file".
WRAPPER_MARKER = b"runtime wrapper installed by armhf-agent"
EDITOR = str(Path(__file__).with_name("runtime_exec.py"))
RECORDS_FILE = "runtime-records"
# What the editor did with a spec (agent/runtime_exec.py); a closed label set.
RESULTS = ("injected", "injected-v6", "own-mount", "arm64", "failed")
BUILDKIT_RUNC_ENV = "DOCKER_BUILDKIT_RUNC_COMMAND"


def wrapper_path(config) -> str:
    return os.path.join(config.runtime.dir, WRAPPER_NAME)


def records_path(config) -> str:
    return os.path.join(config.agent.run_dir, RECORDS_FILE)


def dockerd_environment(config) -> tuple[tuple[str, ...], dict[str, str]]:
    """(folders first in dockerd's PATH, variables) for the wrapper; nothing when it is off."""
    if not config.runtime.wrapper:
        return (), {}
    # Read by Docker >= 26 only (moby PR #47563); older daemons ignore it and find the wrapper on PATH.
    return (config.runtime.dir,), {BUILDKIT_RUNC_ENV: wrapper_path(config)}


def render_wrapper(real_runc: str, cpuinfo_path: str, records: str, agent_version: str,
                   python: str = sys.executable, editor: str = EDITOR, mode: str = "daemon",
                   cpuinfo_v6: str = "") -> str:
    """The wrapper for the agent's armhf dockerd (mode daemon) or for the host's own dockerd (mode host:
    32-bit containers get PER_LINUX32 and the ARMv7, or for an ARMv6 program the ARMv6, cpuinfo; `exec`
    into them gets the personality too)."""
    if mode not in ("daemon", "host"):
        raise ValueError(f"runtime wrapper mode {mode!r} is not daemon or host")
    for name, value in (("runc", real_runc), ("cpuinfo path", cpuinfo_path), ("records path", records),
                        ("python", python), ("editor", editor), ("ARMv6 cpuinfo path", cpuinfo_v6 or "/")):
        if not value.startswith("/"):
            raise ValueError(f"runtime wrapper {name} must be an absolute path, got {value!r}")
    if not agent_version.isprintable():
        raise ValueError(f"agent version {agent_version!r} must be printable")
    main = _EDITOR_MAIN.format(folder=os.path.dirname(editor), runc=real_runc)
    edited = "create | run | exec" if mode == "host" else "create | run"
    return (_TEMPLATE.replace("@VERSION@", agent_version)
            .replace("@EDITED@", edited)
            .replace("@RUNC@", sh_quote(real_runc))
            .replace("@PYTHON@", sh_quote(python))
            .replace("@EDIT@", " ".join(sh_quote(w) for w in (python, "-I", "-S", "-c", main, mode, real_runc,
                                                               cpuinfo_path, cpuinfo_v6 or "-", records))))


# Imported, not run as a script: the module's cached bytecode is used (agent/runtime_exec.py docstring).
# An editor that cannot even be imported (a damaged install) still lets the container start.
_EDITOR_MAIN = ("import os, sys\n"
                "try:\n"
                "    sys.path[:0] = [{folder!r}]\n"
                "    import runtime_exec\n"
                "except BaseException:\n"
                "    os.execv({runc!r}, [{runc!r}, *sys.argv[6:]])\n"
                "runtime_exec.main(sys.argv[1:])")


_TEMPLATE = r"""#!/bin/sh
# runtime wrapper installed by armhf-agent @VERSION@; the agent rewrites this file when it drifts.
# create/run: the spec gets the hijacked cpuinfo (agent/runtime_exec.py); everything else: the real runc.
armhf_skip=
for armhf_arg do
    if [ -n "$armhf_skip" ]; then
        armhf_skip=
        continue
    fi
    case $armhf_arg in
    --root | --log | --log-format | --criu | --rootless | -root | -log | -log-format | -criu | -rootless)
        armhf_skip=1 ;;
    -*) ;;
    @EDITED@)
        # A missing interpreter (an agent removed under a running dockerd) must not refuse containers.
        [ -x @PYTHON@ ] || break
        exec @EDIT@ "$@" ;;
    *) break ;;
    esac
done
exec @RUNC@ "$@"
"""


@dataclass(frozen=True)
class RuntimeRecord:
    time: float
    result: str          # one of RESULTS
    detail: str          # "-" or the failure's exception type


def parse_record(line: bytes) -> RuntimeRecord | None:
    fields = line.split(b" ")
    if len(fields) != 4 or fields[0] != b"1":
        return None
    try:
        epoch, result, detail = (f.decode("ascii") for f in fields[1:])
        record = RuntimeRecord(time=float(epoch), result=result, detail=detail)
    except (UnicodeDecodeError, ValueError):
        return None
    if result not in RESULTS or not detail.isidentifier() and detail != "-":
        return None
    return record
