"""`armhf-agent [--config PATH] COMMAND`: the daemon and the operator's commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__
from .config import ENV_PREFIX, EXIT_CONFIG, ConfigError, LoadedConfig, effective_toml, load_config, resolve_path

log = logging.getLogger("armhf-agent")


def setup_logging(debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        # journald adds the time; "<N>" sets the priority (sd-daemon(3)).
        fmt = "%(priority)s%(name)s: %(message)s"

        class _Priority(logging.Filter):
            def filter(self, record):
                record.priority = {logging.DEBUG: "<7>", logging.INFO: "<6>", logging.WARNING: "<4>",
                                   logging.ERROR: "<3>", logging.CRITICAL: "<2>"}.get(record.levelno, "<6>")
                return True

        handler.addFilter(_Priority())
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _load(args, defaults_if_missing: bool = False) -> LoadedConfig:
    """The config the command works on. With `defaults_if_missing`, an absent *default* file (no
    --config, no $ARMHF_AGENT_CONFIG) means the built-in defaults: the operator's commands (render-*,
    status, doctor) work on a host where the package's conffile was never installed or was removed.
    The daemon and check-config insist on the file; an explicitly named file must always exist."""
    path, explicit = resolve_path(getattr(args, "config", None))
    if defaults_if_missing and not explicit and not os.path.lexists(path):
        return load_config(None)
    return load_config(path, explicit=explicit)


def _config_error(exc: ConfigError) -> int:
    print(f"armhf-agent: invalid configuration ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):",
          file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_run(args) -> int:
    loaded = _load(args)
    setup_logging(args.debug)
    from .loop import Agent
    from .metrics_wiring import start_metrics

    return Agent(loaded, metrics_factory=start_metrics if not args.no_metrics else None).run()


def cmd_check_config(args) -> int:
    from .host_docker import conflicts

    loaded = _load(args)
    shared = conflicts(loaded.config)
    if shared:
        # A check of the host, not of the file's syntax: the host's docker.service (Docker's defaults and
        # its daemon.json) beside the agent's own dockerd.
        print(f"armhf-agent: invalid configuration ({len(shared)} problem{'s' if len(shared) != 1 else ''}):",
              file=sys.stderr)
        for problem in shared:
            print(f"  {loaded.path or 'built-in defaults'}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    _check_profile_on_this_host(loaded)
    if args.effective:
        sys.stdout.write(effective_toml(loaded.config))
    else:
        print(f"{loaded.path or 'built-in defaults'}: OK")
    return 0


def _check_profile_on_this_host(loaded: LoadedConfig) -> None:
    """The one cpuinfo check config validation cannot make: a profile may only hide features, so
    one naming a feature this host cannot run is refused, naming it (the agent refuses to render it too)."""
    from .config import ConfigProblem, _line_of
    from .cpuinfo import HOST, CpuinfoError
    from .hijack import CpuinfoSource

    name = loaded.config.cpuinfo.profile
    if name == HOST:
        return
    try:
        beyond, host = CpuinfoSource(name).exceeding()
    except CpuinfoError as exc:
        print(f"armhf-agent: warning: cannot check cpuinfo.profile {name!r} against this host: {exc}", file=sys.stderr)
        return
    if not beyond:
        return
    env = f"{ENV_PREFIX}CPUINFO__PROFILE"
    if env in os.environ:
        where = f"env {env}"
    else:
        line = next(filter(None, (_line_of(loaded.source_text, ("cpuinfo", key)) for key in ("profile", "variant"))), None)
        where = f"{loaded.path}:{line}" if line else (loaded.path or "<defaults>")
    raise ConfigError(loaded.path, [ConfigProblem(
        where, "cpuinfo.profile", f"{name!r} claims {' '.join(beyond)}, which this host cannot run "
        f"(its 32-bit Features: {' '.join(host) or 'none'}); a profile may only hide features")])


def cmd_render_cpuinfo(args) -> int:
    from . import cpuinfo
    from .hijack import CpuinfoSource

    config = _load(args, defaults_if_missing=True).config
    try:
        if args.from_file:
            # The dump stands for the host: its own CPU count, its features checked against the profile.
            text = cpuinfo.read_text_file(args.from_file)
            try:
                out = cpuinfo.hijack(text, config.cpuinfo.profile)
            except cpuinfo.CpuinfoError as exc:
                raise cpuinfo.CpuinfoError(f"{args.from_file}: {exc}") from None
        else:
            out = CpuinfoSource(config.cpuinfo.profile).render().decode()
    except cpuinfo.CpuinfoError as exc:
        print(f"armhf-agent render-cpuinfo: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


def cmd_render_shim(args) -> int:
    from . import aarch32, payload
    from .shimfile import records_path, shim_client, shim_content

    config = _load(args, defaults_if_missing=True).config
    report = aarch32.detect(aarch32.SubprocessRunner())
    client, why_not = shim_client(config, payload.inspect(config.docker.root), report.mode, report.detail)
    if not client:
        print(f"armhf-agent render-shim: no shim to render: {why_not}", file=sys.stderr)
        return 1
    sys.stdout.write(shim_content(client, config.cpuinfo.path, records_path(config), config.docker.host,
                                   __version__).decode())
    return 0


def cmd_install_docker(args) -> int:
    from .install import InstallError, install_docker, require_root

    try:
        require_root()      # before the config: a non-root user gets this, not whatever reading it says
    except InstallError as exc:
        print(f"armhf-agent install-docker: {exc}", file=sys.stderr)
        return 1
    config = _load(args).config
    try:
        print(install_docker(args.source, config.docker.root, allow_arch=args.allow_arch))
    except InstallError as exc:
        print(f"armhf-agent install-docker: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_uninstall_files(args) -> int:
    """Every managed file is handled even when one fails (the package's removal runs this once)."""
    from .clock import SystemClock
    from .fsops import DisplacedStore
    from .managed import MANAGED_FILES, ManagedFile

    from . import host_docker
    from .managed import HOST_DROPINS

    config = _load(args, defaults_if_missing=True).config
    store = DisplacedStore(config.agent.state_dir)
    failed = 0
    # The host docker.service's drop-in first: once systemd forgot it, docker.service is restarted off the
    # wrapper (announced), and only then are the wrapper and its files removed (a dockerd still naming the
    # wrapper for BuildKit would fail its builds meanwhile).
    removed_dropin = False
    for spec in sorted(MANAGED_FILES, key=lambda s: s not in HOST_DROPINS):
        path = spec.path_of(config)
        try:
            done = ManagedFile(spec, path, store, SystemClock()).remove()
            print(done)
        except OSError as exc:
            failed += 1
            print(f"armhf-agent uninstall-files: {spec.name} {exc.filename or path}: {exc.strerror or exc}",
                  file=sys.stderr)
            continue
        removed_dropin |= spec in HOST_DROPINS and done.startswith("removed")
        if spec is HOST_DROPINS[-1] and removed_dropin:
            systemctl = host_docker.Systemctl()
            systemctl.daemon_reload()
            if host_docker.wiring(config, systemctl).uses_wrapper:
                restarted = host_docker.units(config)
                print(f"restarting {' and '.join(restarted)} off the runtime wrapper (docker's running containers "
                      "restart with it)", flush=True)
                try:
                    systemctl.run("restart", *restarted, timeout=300)
                except Exception as exc:  # noqa: BLE001 - removal goes on; the message says what is left
                    print(f"armhf-agent uninstall-files: restart {' '.join(restarted)} by hand: {exc}", file=sys.stderr)
    from .dockerd import namespace_pin
    from .launch import release_pin

    pin = namespace_pin(config)
    try:
        if release_pin(pin):
            print(f"released dockerd's mount namespace kept at {pin}")
    except OSError as exc:
        failed += 1
        print(f"armhf-agent uninstall-files: {pin}: {exc.strerror or exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_status(args) -> int:
    from .status import EXIT_UNKNOWN, status_command

    try:
        config = _load(args, defaults_if_missing=True).config
    except ConfigError as exc:
        # LSB: status exits 4 ("unknown") when it cannot tell, never with the config error code.
        _config_error(exc)
        return EXIT_UNKNOWN
    return status_command(config, args.json, sys.stdout)


def cmd_doctor(args) -> int:
    from .doctor import doctor_command

    try:
        config, error = _load(args, defaults_if_missing=True).config, None
    except ConfigError as exc:
        from .config import AgentConfig

        config, error = AgentConfig(), str(exc)
    return doctor_command(config, error, args.json, sys.stdout)


def cmd_demo(args) -> int:
    from .demo import run_demo

    setup_logging(args.debug)
    return run_demo(args.dir)


def cmd_host_docker(args) -> int:
    """Turns the host_docker mode on or off in the config file, has the running agent reload it (it
    then wires or unwires docker.service and restarts it), and waits until that is done."""
    import signal
    import time

    from . import host_docker
    from .fsops import atomic_write
    from .state import STATE_FILE, Snapshot
    from .status import read_agent

    loaded = _load(args)
    config = loaded.config
    if args.action == "status":
        live = read_agent(config, "/proc")
        h = live.snapshot.host_docker if live.running else None
        if h is None:
            print(f"armhf-agent host-docker: agent not running ({live.problem}); config says "
                  f"{'on' if config.host_docker.enabled else 'off'}")
            return 3
        state = "on" if h.enabled else "off"
        print(f"host-docker: {state}; {h.unit}: " + ("wired (dockerd pid %s)" % h.pid if h.wired else
                                                     "not wired") + (f"; {h.problem}" if h.problem else ""))
        return 0 if h.wired == h.enabled and not h.problem else 1
    if not loaded.path:
        print("armhf-agent host-docker: no config file to change (pass --config)", file=sys.stderr)
        return EXIT_CONFIG
    want = args.action == "on"
    text = host_docker.with_enabled(loaded.source_text, want)
    candidate = load_config_text(text, loaded.path)
    shared = host_docker.conflicts(candidate.config)
    if shared:
        print("armhf-agent host-docker: not turned on:", file=sys.stderr)
        for problem in shared:
            print(f"  {loaded.path}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    live = read_agent(config, "/proc")
    if not live.running:
        print(f"armhf-agent host-docker: the agent is not running ({live.problem}): start it first "
              "(systemctl start armhf-agent)", file=sys.stderr)
        return 3
    unit = candidate.config.host_docker.unit
    print(f"host-docker {args.action}: {'wiring' if want else 'unwiring'} {unit}; it will be restarted "
          "(its running containers stop, and come back if their restart policy says so)", flush=True)
    st = os.stat(loaded.path)
    atomic_write(loaded.path, text.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
    os.kill(live.snapshot.pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    state_path = os.path.join(config.agent.run_dir, STATE_FILE)
    while time.monotonic() < deadline:
        try:
            with open(state_path, encoding="utf-8") as f:
                h = Snapshot.from_dict(json.load(f)).host_docker
        except (OSError, ValueError, TypeError):
            h = None
        if h is not None and h.enabled == want and h.wired == want and not h.problem:
            print(f"host-docker {args.action}: {unit} " + (f"runs with the wrapper (dockerd pid {h.pid})" if want
                                                           else "runs without the wrapper"))
            return 0
        time.sleep(0.5)
    print(f"armhf-agent host-docker: {unit} not {'wired' if want else 'unwired'} within {args.timeout:g} s: "
          f"{h.problem if h is not None and h.problem else 'see armhf-agent status and journalctl -u armhf-agent'}",
          file=sys.stderr)
    return 1


def load_config_text(text: str, path: str) -> LoadedConfig:
    """The config `text` would give, validated as if it were `path` (for a change before it is written)."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".check-", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    except ConfigError as exc:
        raise ConfigError(path, [type(p)(p.where.replace(f.name, path), p.key, p.message) for p in exc.problems]) from None
    finally:
        os.unlink(f.name)


def cmd_systemd_stop(args) -> int:
    from .systemd_stop import systemd_stop

    return systemd_stop(args.unit, args.pid)


def _config_option(parser: argparse.ArgumentParser, top: bool) -> None:
    # Accepted before and after the command (`armhf-agent status --config X`); SUPPRESS keeps a value
    # given before the command from being reset by the subcommand's default.
    parser.add_argument("--config", metavar="PATH", default=None if top else argparse.SUPPRESS,
                        help="config file (default: $ARMHF_AGENT_CONFIG, else /etc/armhf-agent/agent.toml)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="armhf-agent",
        description="Supervises a native armhf (linux/arm/v7) dockerd on 64-bit Arm hosts, keeps the "
                    "hijacked /proc/cpuinfo and the docker shim in place, exports metrics.")
    _config_option(p, top=True)
    p.add_argument("--version", action="version", version=f"armhf-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("run", help="run the agent in the foreground (what systemd starts)",
                       description="Run the agent in the foreground. Signals: TERM/INT stop (dockerd too), "
                                   "HUP reloads the config, USR1 checks every managed file now, USR2 exits "
                                   "leaving dockerd running for the next agent to adopt (package upgrades).")
    s.add_argument("--debug", action="store_true", help="log debug messages")
    s.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check-config", help="validate the config file; exit 78 on any error",
                       description="Validate the config (file and ARMHF_AGENT_* environment). Every problem "
                                   "is listed with its file, line and key; exit 78 if there is any.")
    s.add_argument("--effective", action="store_true", help="print the config in force, defaults included")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("install-docker", help="install an armhf Docker payload into docker.root",
                       description="Install a Docker static tarball (docker/ inside) or a directory as the "
                                   "payload: validated, staged next to docker.root, swapped in atomically; "
                                   "the previous payload is kept as <root>.previous. A running agent "
                                   "restarts dockerd onto it and rolls back if it cannot become healthy.")
    s.add_argument("source", metavar="SOURCE", help="a .tgz/.tar.gz/.tar file or a directory")
    s.add_argument("--allow-arch", action="store_true", help="accept binaries that are not ELF 32-bit ARM")
    s.set_defaults(func=cmd_install_docker)

    s = sub.add_parser("render-cpuinfo", help="print the hijacked cpuinfo the agent would write",
                       description="Print the hijacked /proc/cpuinfo the agent would write for this host, "
                                   "with the configured cpuinfo.profile.")
    s.add_argument("--from", dest="from_file", metavar="FILE",
                   help="transform this cpuinfo dump instead of the live kernel's (the dump's own CPU count)")
    s.set_defaults(func=cmd_render_cpuinfo)

    s = sub.add_parser("render-shim", help="print the docker shim the agent would install",
                       description="Print the docker shim the agent would install for the current config.")
    s.set_defaults(func=cmd_render_shim)

    s = sub.add_parser("status", help="is the armhf dockerd healthy? (exit 0 healthy, 1 degraded, 3 not running)",
                       description="Show the running agent's state. Exit codes follow LSB: 0 healthy, "
                                   "1 degraded, 3 agent not running.")
    s.add_argument("--json", action="store_true", help="machine-readable output (schema: agent/data/status.schema.json)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("doctor", help="vet this host: can it build armhf natively? (exit 1 on any FAIL)",
                       description="Host checks, one line each: PASS / WARN / FAIL, what was found, the fix.")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("uninstall-files", help="remove the shim and cpuinfo file, restore a displaced docker client",
                       description="Remove the shim and the hijacked cpuinfo file (only if they are the "
                                   "agent's) and put back a docker client the shim displaced. Used by the "
                                   "package's removal.")
    s.set_defaults(func=cmd_uninstall_files)

    s = sub.add_parser("systemd-stop", help="the unit's ExecStop: restart keeps dockerd, stop stops it",
                       description="Used as ExecStop=: on `systemctl restart` the agent exits leaving dockerd "
                                   "(and running builds) for the new agent to adopt; on any other stop, "
                                   "dockerd is stopped too. Waits for the agent to exit.")
    s.add_argument("unit", help="the unit name, e.g. armhf-agent.service")
    # systemd drops an empty $MAINPID (the agent already exited: an upgrade handover, a manual TERM).
    s.add_argument("pid", type=int, nargs="?", help="the agent's main pid ($MAINPID); absent when it already exited")
    s.set_defaults(func=cmd_systemd_stop)

    s = sub.add_parser("host-docker", help="wire the host's own docker.service to a runtime wrapper (on), or not (off)",
                       description="on: the host's arm64 docker.service gets the agent's runtime wrapper through a "
                                   "systemd drop-in, so its 32-bit Arm containers and build steps see armv8l and an "
                                   "ARMv7 (or ARMv6) cpuinfo; 64-bit ones are untouched. Sets [host_docker] enabled in "
                                   "the config file, has the running agent reload it, which restarts docker.service, "
                                   "and waits until it runs with (or without) the wrapper. off undoes all of it. "
                                   "status shows the mode.")
    s.add_argument("action", choices=("on", "off", "status"))
    s.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for docker.service (default 180)")
    s.set_defaults(func=cmd_host_docker)

    s = sub.add_parser("demo", help="run the agent for real on a demo config (system Docker as the payload)",
                       description="Lay out a demo under DIR (payload, config, sockets), print how to use it, "
                                   "and run the agent in the foreground until Ctrl-C.")
    s.add_argument("--dir", default="/var/lib/armhf-agent-demo", help="demo folder (default: %(default)s)")
    s.add_argument("--debug", action="store_true", help="log debug messages")
    s.set_defaults(func=cmd_demo)
    for sub_parser in sub.choices.values():
        _config_option(sub_parser, top=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _config_error(exc)
    except PermissionError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"armhf-agent {args.command}: permission denied{where}: run it as root", file=sys.stderr)
        return 77    # EX_NOPERM
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"armhf-agent {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
