"""The `docker` shim: a POSIX sh script that sits in front of the real client.

For `run`, `create`, `container run` and `container create` sent to the agent's own dockerd it
inserts `--mount type=bind,source=<cpuinfo>,target=/proc/cpuinfo,readonly` right after the
subcommand, so tools inside armhf containers read the hijacked ARMv7 cpuinfo. `--mount`, not `-v`:
with `-v` a missing source makes dockerd create a directory there (../shared/reference/platform.md,
"runc lets you mount over /proc/cpuinfo"). Image builds run as a child so their duration and exit
status can be recorded; every other command `exec`s the client, so no wrapper process stays behind.

Decision rules (the script is the implementation; tests/test_shim_property.py checks them, against
the real docker clients for the daemon and the mount targets):
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
  command. No insertion when those options mount something at /proc/cpuinfo, when the last
  `--platform` (or, without one, $DOCKER_DEFAULT_PLATFORM, which docker uses as its default)
  names a non-32-bit-arm architecture, when an unknown short option or a `--mount` value docker
  cannot read as CSV makes docker reject the command anyway, when ARMHF_SHIM_DISABLE=1, or when
  the command goes to another daemon than the agent's (below). Unknown long options are taken to
  have a value, as most do. An arm platform is one whose architecture (the only word, or the
  second `/`-separated one) is `arm`, `armhf` or `armel` in any case, or a bare `linux` (the
  payload's own arch, arm); arm64 is not armhf: an arm64 container must see the kernel's own cpuinfo.
- Mounts at /proc/cpuinfo: a `-v`/`--volume` target (`[SOURCE:]TARGET[:MODE]`) or a `--mount`
  `target=`/`dst=`/`destination=` (keys in any case; read as Go's encoding/csv reads it: a field
  may be quoted, `""` is a quote; the last target key wins). dockerd compares targets after Go's
  `path.Clean` (moby volume/mounts/linux_parser.go, `Destination: path.Clean(...)`, and
  daemon/volumes.go's "duplicate mount point" check), so the shim cleans them the same way:
  `/proc/cpuinfo/`, `/proc//cpuinfo`, `/proc/./cpuinfo` and `/proc/../proc/cpuinfo` are all the
  user's own cpuinfo mount, and inserting a second one would make dockerd refuse the container.

The daemon a command reaches, resolved as the docker CLI does (docker/cli v20.10.24 and v28.2.2,
cli/command/cli.go `resolveContextName` and `getServerHost`, opts/hosts.go `ParseHost`; both
clients checked by the property test):
1. `-H` (one; with `--context` too, or given twice, docker refuses the command);
2. `--context NAME` (its help: "overrides DOCKER_HOST env var and default context set with
   `docker context use`");
3. $DOCKER_HOST when not empty;
4. $DOCKER_CONTEXT when not empty;
5. "currentContext" in `config.json` of the config folder (`--config`, else $DOCKER_CONFIG, else
   `$HOME/.docker`; without $HOME, the home of the real uid in /etc/passwd, as docker does);
6. otherwise, and for the context named `default`, the default host: $DOCKER_HOST if set, else
   unix:///var/run/docker.sock (tcp://localhost:2376 with --tls, --tlsverify, $DOCKER_TLS or
   $DOCKER_TLS_VERIFY).
A host is read as ParseHost does (surrounding white space trimmed; `unix://` with no path is the
default socket; anything but `unix://` is not ours). A named context's host is `Endpoints.docker.
Host` in `contexts/meta/*/meta.json`, found by its "Name" (the folder is the name's SHA-256,
which sh cannot compute without a fork); a context without a Host uses the client's default
socket. The command is for the agent's daemon when that socket is the same file as the agent's
`docker.host` socket (`test -ef`: the kernel's own answer, so /var/run vs /run, `//`, `.`, `..`
and symlinks all resolve as connect() would). Docker 20.10 takes a DOCKER_HOST that is set but
empty for the default host where later clients go on to steps 4-5: when the two answers differ
the shim cannot know which client it fronts.
config.json is read only when some context exists: without one, a "currentContext" other than
`default` makes docker refuse the command (checked for both clients), so the file cannot change
the answer. Files are read with the `read` builtin (dash reads one byte per syscall: about 0.25
ms per KB, paid only by users who have contexts). Anything the shim cannot read for certain (an
unreadable file, a "currentContext" that is not one plain JSON string, a meta.json not in the
format docker writes, two contexts of one name) means: no mount, and the record's class is
`unresolved` (a run/create passed through because its daemon was unknown).
Layout, for the 1 ms budget: dash parses a script one command at a time and `exec` ends it, so
code after an `exec` costs nothing to the commands that reach it. Commands that cannot get the
mount exec right after the argv loop; the rest resolve the daemon in a first pass whose stand-ins
leave the answer open where a context file must be read (a named context, or config.json when
contexts exist): the first pass's `exec` comes before the code that reads them.

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


def daemon_socket(daemon_host: str) -> str:
    """The socket path of the agent's `docker.host` (unix:///absolute/path, as agent.config requires)."""
    if not daemon_host.startswith("unix:///"):
        raise ValueError(f"shim daemon host must be unix:///absolute/path, got {daemon_host!r}")
    return _absolute("daemon socket", daemon_host[len("unix://"):])


def render_shim(client: str, cpuinfo_path: str, records_path: str, daemon_host: str, agent_version: str) -> str:
    """The shim script for these absolute paths and the agent's daemon (a pure function:
    `armhf-agent render-shim` prints exactly what the agent installs)."""
    _absolute("client", client)
    _absolute("cpuinfo path", cpuinfo_path)
    _absolute("records path", records_path)
    socket = daemon_socket(daemon_host)
    if not agent_version.isprintable():
        raise ValueError(f"agent version {agent_version!r} must be printable (it goes in a comment line)")
    return (_TEMPLATE
            .replace("@VERSION@", agent_version)
            .replace("@RECORD_VERSION@", RECORD_VERSION)
            .replace("@CLIENT@", sh_quote(client))
            .replace("@MOUNT@", sh_quote(mount_spec(cpuinfo_path)))
            .replace("@RECORDS@", sh_quote(records_path))
            .replace("@DAEMON@", sh_quote(socket)))


# Variables carry an `armhf_` prefix: the script shares its environment with the client it execs,
# so it must not clobber a variable the user exported. Only shell builtins run on the exec path:
# a fork would blow the 1 ms budget (issue 6).
_TEMPLATE = r"""#!/bin/sh
# docker shim installed by armhf-agent @VERSION@; the agent rewrites this file when it drifts.
# Inserts the hijacked cpuinfo mount into run/create for the agent's dockerd, records each
# invocation, runs the client.
# shellcheck disable=SC2016 # the paths below are literal even where they hold a `$`
armhf_client=@CLIENT@
armhf_mount=@MOUNT@
armhf_records=@RECORDS@
armhf_daemon=@DAEMON@

armhf_class=other
armhf_at=0
armhf_cpuinfo_mounted=
armhf_unknown=
armhf_platform=$DOCKER_DEFAULT_PLATFORM
armhf_next=global
armhf_n=0
armhf_hosts=0
armhf_host=
armhf_context=
armhf_config=
armhf_tls=${DOCKER_TLS:+1}
armhf_tlsverify=
armhf_nl='
'

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

# An option's value, given in the same word or as the next one.
armhf_take() {
    case $1 in
    host) armhf_hosts=$((armhf_hosts + 1)) armhf_host=$2 ;;
    context) armhf_context=$2 ;;
    config) armhf_config=$2 ;;
    volume) armhf_volume "$2" ;;
    mount) armhf_mount_option "$2" ;;
    platform) armhf_platform=$2 ;;
    esac
    case $1 in
    host | context | config | global_value) armhf_next=global ;;
    *) armhf_next=options ;;
    esac
}

# Go's path.Clean of an absolute path (moby cleans mount targets before it compares them).
armhf_target() {
    case $1 in
    /*cpuinfo*) ;;
    *) return ;;
    esac
    armhf_clean=
    armhf_crest=$1/
    while [ -n "$armhf_crest" ]; do
        armhf_part=${armhf_crest%%/*}
        armhf_crest=${armhf_crest#*/}
        case $armhf_part in
        '' | .) ;;
        ..) armhf_clean=${armhf_clean%/*} ;;
        *) armhf_clean=$armhf_clean/$armhf_part ;;
        esac
    done
    if [ "$armhf_clean" = /proc/cpuinfo ]; then armhf_cpuinfo_mounted=1; fi
}

# -v [SOURCE:]TARGET[:MODE]: moby splits it at `:`.
armhf_volume() {
    case $1 in
    *:*)
        armhf_part=${1#*:}
        armhf_target "${armhf_part%%:*}" ;;
    *) armhf_target "$1" ;;
    esac
}

# docker reads --mount with Go's encoding/csv (a field may be quoted, `""` is a quote; a quote
# anywhere else is an error) and keys in any case; the last target key wins.
armhf_mount_option() {
    armhf_csv=$1
    armhf_dst=
    while :; do
        case $armhf_csv in
        \"*)
            armhf_field=
            armhf_csv=${armhf_csv#?}
            while :; do
                case $armhf_csv in
                *\"*) ;;
                *) armhf_unknown=1; return ;;
                esac
                armhf_field=$armhf_field${armhf_csv%%\"*}
                armhf_csv=${armhf_csv#*\"}
                case $armhf_csv in
                \"*) armhf_field=$armhf_field\" armhf_csv=${armhf_csv#?} ;;
                *) break ;;
                esac
            done ;;
        *)
            armhf_field=${armhf_csv%%,*}
            armhf_csv=${armhf_csv#"$armhf_field"}
            case $armhf_field in
            *\"*) armhf_unknown=1; return ;;
            esac ;;
        esac
        case ${armhf_field%%=*} in
        [Tt][Aa][Rr][Gg][Ee][Tt] | [Dd][Ss][Tt] | [Dd][Ee][Ss][Tt][Ii][Nn][Aa][Tt][Ii][Oo][Nn])
            case $armhf_field in
            *=*) armhf_dst=${armhf_field#*=} ;;
            esac ;;
        esac
        case $armhf_csv in
        '') break ;;
        ,*) armhf_csv=${armhf_csv#?} ;;
        *) armhf_unknown=1; return ;;
        esac
    done
    armhf_target "$armhf_dst"
}

# A bundle of short flags (`-it`, `-dv/a:/b`, `-e=X`, `-DHunix:///s`), read as pflag does: left to
# right; the first flag taking a value takes the rest of the word (minus one leading `=`) or the
# next word. $2: flags without a value, $3: flags with one, $4: global or run.
armhf_short_options() {
    armhf_rest=${1#-}
    while [ -n "$armhf_rest" ]; do
        armhf_flag=${armhf_rest%"${armhf_rest#?}"}
        armhf_rest=${armhf_rest#?}
        case $armhf_flag in
        [$2])
            case $armhf_rest in =*) return ;; esac ;;
        [$3])
            case $4$armhf_flag in
            globalH) armhf_flag=host ;;
            globalc) armhf_flag=context ;;
            global?) armhf_flag=global_value ;;
            runv) armhf_flag=volume ;;
            *) armhf_flag=value ;;
            esac
            if [ -z "$armhf_rest" ]; then armhf_next=$armhf_flag; else armhf_take "$armhf_flag" "${armhf_rest#=}"; fi
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
    --volume=* | --mount=* | --platform=*)
        armhf_flag=${1%%=*}
        armhf_take "${armhf_flag#--}" "${1#*=}" ;;
    --detach | --disable-content-trust | --help | --init | --interactive | --no-healthcheck | \
    --oom-kill-disable | --privileged | --publish-all | --quiet | --read-only | --rm | --sig-proxy | \
    --tty | --use-api-socket | --*=*) ;;
    --) armhf_next=stop ;;
    --*) armhf_next=value ;;
    -?*) armhf_short_options "$1" dtiPq acehlmpuvw run ;;
    *) armhf_next=stop ;;
    esac
}

for armhf_arg do
    armhf_n=$((armhf_n + 1))
    case $armhf_next in
    global)
        case $armhf_arg in
        --host | --context | --config) armhf_next=${armhf_arg#--} ;;
        --log-level | --tlscacert | --tlscert | --tlskey) armhf_next=global_value ;;
        --host=* | --context=* | --config=*)
            armhf_flag=${armhf_arg%%=*}
            armhf_take "${armhf_flag#--}" "${armhf_arg#*=}" ;;
        --tls) armhf_tls=1 ;;
        --tls=*)
            # pflag's bool values; docker refuses any other
            case ${armhf_arg#*=} in
            0 | f | F | false | FALSE | False) armhf_tls= ;;
            *) armhf_tls=1 ;;
            esac ;;
        --tlsverify | --tlsverify=*) armhf_tlsverify=1 ;;
        --log-level=* | --tlscacert=* | --tlscert=* | --tlskey=* | \
        --debug | --debug=* | --version | --version=* | --help | --help=*) ;;
        --) armhf_next=subcommand ;;
        -?*) armhf_short_options "$armhf_arg" Dvh Hcl global ;;
        *) armhf_command "$armhf_arg" ;;
        esac ;;
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
    *) armhf_take "$armhf_next" "$armhf_arg" ;;
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
# Everything below is parsed only by run/create commands that may get the mount (dash parses a
# script one command at a time, and `exec` ends it): every other command is spared its cost.
if [ "$armhf_injected" = 0 ] && [ "$armhf_class" != build ]; then
    armhf_record - - -
    exec "$armhf_client" "$@"
fi

# The client's config folder in armhf_dir: --config, $DOCKER_CONFIG, else $HOME/.docker (empty
# without $HOME: the second pass looks the home up as docker does).
armhf_config_dir() {
    armhf_dir=${armhf_config:-$DOCKER_CONFIG}
    if [ -z "$armhf_dir" ] && [ -n "$HOME" ]; then armhf_dir=$HOME/.docker; fi
}

# armhf_reach: ours, other or unsure, for a host string as docker's ParseHost reads it.
armhf_by_host() {
    armhf_reach=other
    armhf_h=${1#"${1%%[![:space:]]*}"}
    armhf_h=${armhf_h%"${armhf_h##*[![:space:]]}"}
    case $armhf_h in
    '')
        # tcp://localhost:2376 under TLS
        if [ -n "$armhf_tlsverify$DOCKER_TLS_VERIFY$armhf_tls" ]; then return; fi
        armhf_h=/var/run/docker.sock ;;
    unix://*)
        armhf_h=${armhf_h#unix://}
        armhf_h=${armhf_h#unix://}
        case $armhf_h in
        *://*) return ;;
        '') armhf_h=/var/run/docker.sock ;;
        esac ;;
    *) return ;;
    esac
    armhf_by_socket "$armhf_h"
}

armhf_by_socket() {
    # shellcheck disable=SC3013 # dash and busybox sh implement -ef (same device and inode)
    if [ "$1" -ef "$armhf_daemon" ]; then armhf_reach=ours; else armhf_reach=other; fi
}

# armhf_reach for this command, in the docker CLI's order (see agent/shim.py).
armhf_resolve() {
    armhf_reach=other
    if [ "$armhf_hosts" -gt 0 ]; then
        if [ -z "$armhf_context" ] && [ "$armhf_hosts" = 1 ]; then armhf_by_host "$armhf_host"; fi
        return
    fi
    if [ -n "$armhf_context" ]; then
        armhf_by_context "$armhf_context"
        return
    fi
    if [ -n "$DOCKER_HOST" ]; then
        armhf_by_host "$DOCKER_HOST"
        return
    fi
    if [ -n "$DOCKER_CONTEXT" ]; then
        armhf_by_context "$DOCKER_CONTEXT"
    else
        armhf_current_context
    fi
    # docker 20.10 reads a DOCKER_HOST that is set but empty as the default host
    if [ -n "${DOCKER_HOST+set}" ] && [ -n "$armhf_reach" ] && [ "$armhf_reach" != unsure ]; then
        armhf_via_context=$armhf_reach
        armhf_by_host ''
        if [ "$armhf_reach" != "$armhf_via_context" ]; then armhf_reach=unsure; fi
    fi
}

# The answer applied: the mount only for the agent's daemon; a command the shim cannot place is
# recorded as `unresolved`.
armhf_settle() {
    case $armhf_reach in
    ours) ;;
    unsure) armhf_injected=0 armhf_class=unresolved ;;
    *) armhf_injected=0 ;;
    esac
}

# First pass: the stand-ins below leave armhf_reach empty where a context file must be read, and
# the code that reads them comes after this pass's exec: -H, DOCKER_HOST, the default context and
# a config folder without contexts (most commands) never parse it.
armhf_by_context() {
    armhf_reach=
    if [ "$1" = default ]; then armhf_by_host "$DOCKER_HOST"; fi
}

armhf_current_context() {
    armhf_reach=
    armhf_config_dir
    if [ -z "$armhf_dir" ]; then return; fi
    for armhf_meta in "$armhf_dir"/contexts/meta/*/meta.json; do
        [ -e "$armhf_meta" ] && return
    done
    armhf_by_host ''
}

armhf_reach=
if [ "$armhf_injected" = 1 ]; then armhf_resolve; fi
if [ -n "$armhf_reach" ]; then
    armhf_settle
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
fi

# Second pass, with the context store and config.json read for real.

# The config folder again, where docker finds a missing $HOME in the user database for the real uid.
armhf_config_dir() {
    armhf_dir=${armhf_config:-$DOCKER_CONFIG}
    if [ -n "$armhf_dir" ]; then return; fi
    if [ -z "$HOME" ]; then
        armhf_uid=
        while read -r armhf_key armhf_uid armhf_line; do
            if [ "$armhf_key" = Uid: ]; then break; fi
            armhf_uid=
        done 2>/dev/null </proc/self/status
        armhf_pw_home=
        # shellcheck disable=SC2034 # armhf_pw: fields read only to skip them
        while IFS=: read -r armhf_pw_name armhf_pw armhf_pw_uid armhf_pw armhf_pw armhf_pw_home armhf_pw; do
            if [ -n "$armhf_pw_name" ] && [ "$armhf_pw_uid" = "$armhf_uid" ]; then break; fi
            armhf_pw_home=
        done 2>/dev/null </etc/passwd
        # a uid the file does not list: docker falls back to a relative `.docker`
        armhf_dir=${armhf_pw_home:+$armhf_pw_home/}.docker
        return
    fi
    armhf_dir=$HOME/.docker
}

# The file's text in armhf_text (the read builtin: no fork); false when it cannot be read. Only a
# regular file is opened: a FIFO would block.
armhf_slurp() {
    armhf_text=
    armhf_line=
    [ -f "$1" ] && [ -r "$1" ] || return 1
    while IFS= read -r armhf_line; do
        armhf_text=$armhf_text$armhf_line$armhf_nl
    done 2>/dev/null <"$1"
    armhf_text=$armhf_text$armhf_line
}

# A context by name: `default` is the default host; any other is looked up in the context store.
armhf_by_context() {
    if [ "$1" = default ]; then
        armhf_by_host "$DOCKER_HOST"
        return
    fi
    armhf_reach=unsure
    # docker creates only such names; any other could be spelled with JSON escapes in meta.json
    case $1 in
    *[!A-Za-z0-9_.+-]*) return ;;
    esac
    armhf_config_dir
    armhf_found=
    for armhf_meta in "$armhf_dir"/contexts/meta/*/meta.json; do
        [ -e "$armhf_meta" ] || continue
        armhf_slurp "$armhf_meta" || return
        case $armhf_text in
        "{\"Name\":\"$1\","* | "{\"Name\":\"$1\"}")
            if [ -n "$armhf_found" ]; then return; fi
            armhf_found=$armhf_text ;;
        '{"Name":"'*) ;;
        *) return ;;   # not written by docker: its name is unknown
        esac
    done
    if [ -z "$armhf_found" ]; then
        armhf_reach=other   # docker: context not found
        return
    fi
    # The format docker writes (json.Marshal): Name, Metadata, then Endpoints, whose keys are
    # sorted; the docker endpoint must be the last one, so its text ends the file.
    armhf_h=${armhf_found##*',"Endpoints":{"docker":{'}
    case $armhf_h in
    '"Host":"'*)
        armhf_h=${armhf_h#'"Host":"'}
        armhf_part=${armhf_h#*\"}
        armhf_h=${armhf_h%%\"*} ;;
    '"SkipTLSVerify":'*)
        # no Host: the client's built-in default (not DOCKER_HOST)
        armhf_part=,$armhf_h
        armhf_h=unix:///var/run/docker.sock ;;
    *) return ;;
    esac
    case $armhf_part in
    ',"SkipTLSVerify":true}}}' | ',"SkipTLSVerify":false}}}') ;;
    *) return ;;
    esac
    case $armhf_h in
    *\\*) ;;
    unix://?*) armhf_by_socket "${armhf_h#unix://}" ;;
    *) armhf_reach=other ;;
    esac
}

# "currentContext" in config.json (keys in any case, as Go's decoder matches them).
armhf_current_context() {
    armhf_config_dir
    for armhf_meta in "$armhf_dir"/contexts/meta/*/meta.json; do
        [ -e "$armhf_meta" ] && break
    done
    if ! [ -e "$armhf_meta" ] || ! [ -e "$armhf_dir/config.json" ]; then
        armhf_by_host ''
        return
    fi
    armhf_reach=unsure
    armhf_slurp "$armhf_dir/config.json" || return
    case $armhf_text in
    *\"[Cc][Uu][Rr][Rr][Ee][Nn][Tt][Cc][Oo][Nn][Tt][Ee][Xx][Tt]\"*) ;;
    *\\[Uu]*) return ;;   # the key could be spelled with \u escapes
    *)
        armhf_by_host ''
        return ;;
    esac
    armhf_h=${armhf_text#*\"[Cc][Uu][Rr][Rr][Ee][Nn][Tt][Cc][Oo][Nn][Tt][Ee][Xx][Tt]\"}
    case $armhf_h in
    *\"[Cc][Uu][Rr][Rr][Ee][Nn][Tt][Cc][Oo][Nn][Tt][Ee][Xx][Tt]\"*) return ;;
    esac
    armhf_h=${armhf_h#"${armhf_h%%[![:space:]]*}"}
    case $armhf_h in
    :*) armhf_h=${armhf_h#:} ;;
    *) return ;;
    esac
    armhf_h=${armhf_h#"${armhf_h%%[![:space:]]*}"}
    case $armhf_h in
    null*)
        armhf_name=
        armhf_h=${armhf_h#null} ;;
    \"*\"*)
        armhf_h=${armhf_h#?}
        armhf_name=${armhf_h%%\"*}
        armhf_h=${armhf_h#*\"} ;;
    *) return ;;
    esac
    armhf_h=${armhf_h#"${armhf_h%%[![:space:]]*}"}
    case $armhf_h in
    ,* | \}*) ;;
    *) return ;;
    esac
    case $armhf_name in
    *\\*) return ;;
    '') armhf_by_host '' ;;
    *) armhf_by_context "$armhf_name" ;;
    esac
}

if [ "$armhf_injected" = 1 ]; then
    armhf_resolve
    armhf_settle
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
