"""The `docker` shim: a POSIX sh script that sits in front of the real client.

For `run`, `create`, `container run` and `container create` it inserts
`--mount type=bind,source=<cpuinfo>,target=/proc/cpuinfo,readonly` right after the subcommand, so
tools inside armhf containers read the hijacked ARMv7 cpuinfo. `--mount`, not `-v`: with `-v` a
missing source makes dockerd create a directory there (../shared/reference/platform.md, "runc lets
you mount over /proc/cpuinfo"). Image builds run as a child so their duration and exit status can
be recorded; every other command `exec`s the client, so no wrapper process stays behind.

Decision rules (the script is the implementation; tests/test_shim_property.py checks them):
- docker's global options are skipped to find the subcommand: `-H/--host`, `-c/--context`,
  `--config`, `-l/--log-level`, `--tlscacert`, `--tlscert`, `--tlskey` take a value (next word,
  `--flag=value`, `-Hvalue`, `-H=value`); `-D/--debug`, `--tls`, `--tlsverify`, `-v/--version`,
  `-h/--help` do not; short flags may be bundled (`-DH unix://...`); `--` makes the next word the
  subcommand. Any other word starting with `-` is an option docker does not know: the command is
  passed through untouched and recorded as `other`.
- After `container`, `image`, `buildx` or `builder` the very next word is the subcommand (docker
  itself rejects global options there).
- For run/create the options up to the image (the first word that is not an option or an option's
  value, or the word after `--`) are read; everything after the image belongs to the container's
  command. No insertion when those options mount something at /proc/cpuinfo (`-v`/`--volume`
  target, `--mount` with `target=`/`dst=`/`destination=`, keys in any case and order), when the
  last `--platform` (or, without one, $DOCKER_DEFAULT_PLATFORM, which docker uses as its default)
  names a non-32-bit-arm architecture, when an unknown short option makes docker reject the command
  anyway, or when ARMHF_SHIM_DISABLE=1. Unknown long options are taken to have a value, as most do.
  An arm platform is one whose architecture (the only word, or the second `/`-separated one)
  is `arm`, `armhf` or `armel` in any case, or a bare `linux` (the payload's own arch, arm);
  arm64 is not armhf: an arm64 container must see the kernel's own cpuinfo.

Records (format in agent.shim_records): one line appended per invocation, by a single `printf`
append whose errors are discarded, skipped when the path is a FIFO (an append would block).
Non-build commands record before `exec` with epoch `-`: dash has no builtin clock and a `date`
fork would cost about as much as the whole 1 ms overhead budget (ShimRecord.time is None for them;
a consumer needing a time uses when it read them). Builds record after the client exits, with
`date +%s%N` (GNU and busybox date) for the epoch and the duration; `-` where that clock is
unavailable.

Builds: SIGINT, SIGTERM and SIGHUP sent to the shim are passed to the client, and the shim exits
with the client's status. POSIX starts a background child with SIGINT ignored and stdin on
/dev/null (before its redirections, so `<&0` cannot undo it): stdin is handed over through a spare
descriptor, and a client still ignoring SIGINT when one arrives (docker 20.10's classic builder
never takes it back) gets SIGTERM instead, which docker handles the same way.
"""

from __future__ import annotations

from agent.shim_records import RECORD_VERSION

CPUINFO_TARGET = "/proc/cpuinfo"


def sh_quote(value: str) -> str:
    """One sh word that expands to exactly `value` (single quotes; an embedded `'` becomes `'\\''`)."""
    if "\0" in value:
        raise ValueError(f"{value!r}: a NUL byte cannot be part of a shell word")
    return "'" + value.replace("'", "'\\''") + "'"


def _csv_field(value: str) -> str:
    # docker reads --mount values with Go's encoding/csv: a field holding a comma, a quote or a line
    # break must be quoted, with quotes doubled.
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def mount_spec(cpuinfo_path: str) -> str:
    return f"type=bind,{_csv_field('source=' + cpuinfo_path)},target={CPUINFO_TARGET},readonly"


def _absolute(name: str, value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"shim {name} must be an absolute path, got {value!r}")
    sh_quote(value)
    return value


def render_shim(client: str, cpuinfo_path: str, records_path: str, agent_version: str) -> str:
    """The shim script for these absolute paths (a pure function: `armhf-agent render-shim`
    prints exactly what the agent installs)."""
    _absolute("client", client)
    _absolute("cpuinfo path", cpuinfo_path)
    _absolute("records path", records_path)
    if not agent_version.isprintable():
        raise ValueError(f"agent version {agent_version!r} must be printable (it goes in a comment line)")
    return (_TEMPLATE
            .replace("@VERSION@", agent_version)
            .replace("@RECORD_VERSION@", RECORD_VERSION)
            .replace("@CLIENT@", sh_quote(client))
            .replace("@MOUNT@", sh_quote(mount_spec(cpuinfo_path)))
            .replace("@RECORDS@", sh_quote(records_path)))


# Variables carry an `armhf_` prefix: the script shares its environment with the client it execs,
# so it must not clobber a variable the user exported. Only shell builtins run on the exec path:
# a fork would blow the 1 ms budget (issue 6).
_TEMPLATE = r"""#!/bin/sh
# docker shim installed by armhf-agent @VERSION@; the agent rewrites this file when it drifts.
# Inserts the hijacked cpuinfo mount into run/create, records each invocation, runs the client.
# shellcheck disable=SC2016 # the paths below are literal even where they hold a `$`
armhf_client=@CLIENT@
armhf_mount=@MOUNT@
armhf_records=@RECORDS@

armhf_class=other
armhf_at=0
armhf_cpuinfo_mounted=
armhf_unknown=
armhf_platform=$DOCKER_DEFAULT_PLATFORM
armhf_next=global
armhf_n=0

armhf_record() {
    # One append per invocation; never fails or blocks the command (missing folder, full disk,
    # no permission: the error is discarded; a FIFO would block the append: skipped).
    [ -p "$armhf_records" ] || {
        printf '@RECORD_VERSION@ %s %s %s %s %s\n' "$1" "$armhf_class" "$armhf_injected" "$2" "$3" >>"$armhf_records"
    } 2>/dev/null
}

armhf_command() {
    armhf_next=stop
    case $1 in
    run | create) armhf_class=$1 armhf_at=$armhf_n armhf_next=options ;;
    build | exec) armhf_class=$1 ;;
    container | image | buildx | builder) armhf_next=$1 ;;
    esac
}

armhf_volume() {
    case $1 in
    /proc/cpuinfo | *:/proc/cpuinfo | *:/proc/cpuinfo:*) armhf_cpuinfo_mounted=1 ;;
    esac
}

armhf_mount_option() {
    # docker reads --mount as CSV with case-insensitive keys; a field may be quoted.
    case ,$1, in
    *,[Tt][Aa][Rr][Gg][Ee][Tt]=/proc/cpuinfo,* | *,\"[Tt][Aa][Rr][Gg][Ee][Tt]=/proc/cpuinfo\",* | \
    *,[Dd][Ss][Tt]=/proc/cpuinfo,* | *,\"[Dd][Ss][Tt]=/proc/cpuinfo\",* | \
    *,[Dd][Ee][Ss][Tt][Ii][Nn][Aa][Tt][Ii][Oo][Nn]=/proc/cpuinfo,* | \
    *,\"[Dd][Ee][Ss][Tt][Ii][Nn][Aa][Tt][Ii][Oo][Nn]=/proc/cpuinfo\",*)
        armhf_cpuinfo_mounted=1 ;;
    esac
}

# A bundle of short flags (`-it`, `-dv/a:/b`, `-e=X`, `-DHunix:///s`), read as pflag does: left to
# right; the first flag taking a value takes the rest of the word (minus one leading `=`) or the
# next word. $2: flags without a value, $3: flags with one, $4: what the next word then is.
armhf_short_options() {
    armhf_rest=${1#-}
    while [ -n "$armhf_rest" ]; do
        armhf_flag=${armhf_rest%"${armhf_rest#?}"}
        armhf_rest=${armhf_rest#?}
        case $armhf_flag in
        [$2])
            case $armhf_rest in =*) return ;; esac ;;
        v)
            if [ -z "$armhf_rest" ]; then armhf_next=volume; else armhf_volume "${armhf_rest#=}"; fi
            return ;;
        [$3])
            if [ -z "$armhf_rest" ]; then armhf_next=$4; fi
            return ;;
        *)
            armhf_unknown=1 armhf_next=stop
            return ;;
        esac
    done
}

armhf_run_option() {
    case $1 in
    --volume | --mount | --platform) armhf_next=${1#--} ;;
    --volume=*) armhf_volume "${1#*=}" ;;
    --mount=*) armhf_mount_option "${1#*=}" ;;
    --platform=*) armhf_platform=${1#*=} ;;
    --detach | --disable-content-trust | --help | --init | --interactive | --no-healthcheck | \
    --oom-kill-disable | --privileged | --publish-all | --quiet | --read-only | --rm | --sig-proxy | \
    --tty | --use-api-socket | --*=*) ;;
    --) armhf_next=stop ;;
    --*) armhf_next=value ;;
    -?*) armhf_short_options "$1" dtiPq acehlmpuw value ;;
    *) armhf_next=stop ;;
    esac
}

for armhf_arg do
    armhf_n=$((armhf_n + 1))
    case $armhf_next in
    global)
        case $armhf_arg in
        --host | --context | --config | --log-level | --tlscacert | --tlscert | --tlskey)
            armhf_next=global_value ;;
        --host=* | --context=* | --config=* | --log-level=* | --tlscacert=* | --tlscert=* | --tlskey=* | \
        --debug | --debug=* | --tls | --tls=* | --tlsverify | --tlsverify=* | --version | --version=* | \
        --help | --help=*) ;;
        --) armhf_next=subcommand ;;
        -?*) armhf_short_options "$armhf_arg" Dvh Hcl global_value ;;
        *) armhf_command "$armhf_arg" ;;
        esac ;;
    global_value) armhf_next=global ;;
    subcommand) armhf_command "$armhf_arg" ;;
    container)
        armhf_next=stop
        case $armhf_arg in
        run | create) armhf_class=$armhf_arg armhf_at=$armhf_n armhf_next=options ;;
        exec) armhf_class='exec' ;;
        esac ;;
    image | buildx | builder)
        armhf_next=stop
        if [ "$armhf_arg" = build ]; then armhf_class=build; fi ;;
    options) armhf_run_option "$armhf_arg" ;;
    value) armhf_next=options ;;
    volume) armhf_volume "$armhf_arg"; armhf_next=options ;;
    mount) armhf_mount_option "$armhf_arg"; armhf_next=options ;;
    platform) armhf_platform=$armhf_arg armhf_next=options ;;
    esac
    if [ "$armhf_next" = stop ]; then break; fi
done

armhf_injected=0
if [ "$armhf_at" -gt 0 ] && [ -z "$armhf_cpuinfo_mounted$armhf_unknown" ] && [ "$ARMHF_SHIM_DISABLE" != 1 ]; then
    armhf_arch=${armhf_platform#*/}
    case ${armhf_arch%%/*} in
    '' | [Aa][Rr][Mm] | [Aa][Rr][Mm][Hh][Ff] | [Aa][Rr][Mm][Ee][Ll] | [Ll][Ii][Nn][Uu][Xx]) armhf_injected=1 ;;
    esac
fi

if [ "$armhf_injected" = 1 ]; then
    # No arrays in sh: rotate every word through "$@" once, adding the mount after the subcommand.
    armhf_n=0
    for armhf_arg do
        shift
        set -- "$@" "$armhf_arg"
        armhf_n=$((armhf_n + 1))
        if [ "$armhf_n" = "$armhf_at" ]; then set -- "$@" --mount "$armhf_mount"; fi
    done
fi

if [ "$armhf_class" != build ]; then
    armhf_record - - -
    exec "$armhf_client" "$@"
fi

# shellcheck disable=SC2317 # called from the traps below
armhf_forward() {
    armhf_signalled=1
    if [ -z "$armhf_pid" ]; then
        armhf_pending="$armhf_pending $1"
        return
    fi
    armhf_signal=$1
    if [ "$1" = INT ]; then
        # POSIX makes a background child ignore SIGINT. A client that never takes it back (docker
        # 20.10's classic builder) would build on after Ctrl-C: it gets SIGTERM, which docker
        # treats as it treats SIGINT. SigIgn is a hex mask; SIGINT is bit 1 of its last digit.
        armhf_ignored=$(while read -r armhf_key armhf_value; do
            if [ "$armhf_key" = SigIgn: ]; then echo "$armhf_value"; fi
        done 2>/dev/null <"/proc/$armhf_pid/status")
        case $armhf_ignored in *[2367abefABEF]) armhf_signal=TERM ;; esac
    fi
    kill -s "$armhf_signal" "$armhf_pid" 2>/dev/null
}

# Builds run as a child so their duration and status can be recorded. POSIX gives an
# asynchronous command /dev/null as stdin *before* its redirections, so `<&0` would only copy that;
# the real stdin (`docker build -` reads the Dockerfile there) goes through a spare descriptor,
# one the caller did not pass (the client must see the caller's descriptors unchanged).
for armhf_fd in 9 8 7 6 5 4 3; do
    [ -h /proc/self/fd/$armhf_fd ] || break
done
eval "exec $armhf_fd<&0"
armhf_start=$(date +%s%N 2>/dev/null)
armhf_pid=
armhf_pending=
trap 'armhf_forward INT' INT
trap 'armhf_forward TERM' TERM
trap 'armhf_forward HUP' HUP
eval '"$armhf_client" "$@" <&'"$armhf_fd $armhf_fd"'<&- &'
armhf_pid=$!
eval "exec $armhf_fd<&-"
for armhf_signal in $armhf_pending; do
    armhf_forward "$armhf_signal"
done
armhf_status=
while :; do
    armhf_signalled=
    wait "$armhf_pid"
    armhf_waited=$?
    # 127: the child was already collected (a signal came just after the previous wait ended).
    if [ "$armhf_waited" = 127 ] && [ -n "$armhf_status" ]; then break; fi
    armhf_status=$armhf_waited
    # A trapped signal interrupts wait with a status above 128: wait again for the real one.
    if [ -z "$armhf_signalled" ] || [ "$armhf_waited" -le 128 ]; then break; fi
done
armhf_end=$(date +%s%N 2>/dev/null)
case $armhf_start:$armhf_end in
*[!0-9:]* | :* | *:)
    armhf_record - "$armhf_status" - ;;
*)
    armhf_ms=$(((armhf_end - armhf_start) / 1000000))
    armhf_frac=$((armhf_ms % 1000 + 1000))
    armhf_record $((armhf_end / 1000000000)) "$armhf_status" "$((armhf_ms / 1000)).${armhf_frac#1}" ;;
esac
exit "$armhf_status"
"""
