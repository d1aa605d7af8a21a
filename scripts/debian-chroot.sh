#!/bin/bash
# Cached Debian chroots for building and testing the .deb in a given release.
#
#   debian-chroot.sh tarball KIND RELEASE    print the cached tarball (made with mmdebstrap if missing)
#   debian-chroot.sh unpack KIND RELEASE DIR extract it into DIR (created, must not exist)
#   debian-chroot.sh run DIR CMD...          run CMD in DIR, in a private mount namespace
#   debian-chroot.sh check                   exit 0 if every host tool the above need is installed
#
# KIND is one of:
#   build    buildd variant + the Build-Depends of packaging/debian/control + lintian + systemd
#            and procps (for systemd-analyze verify of the installed unit in that release's systemd)
#   install  minbase: what a fresh host has; apt pulls the .deb's Depends from the archive
#   systemd  minbase + systemd as init + python3 + docker.io: a rootfs for a systemd container that
#            has no network, so everything the .deb and its tests need is already inside
#
# Tarballs are cached in $ARMHF_AGENT_CACHE/chroots (default /var/cache/armhf-agent-build, outside
# the work tree so that fresh CI clones on the same machine reuse them), keyed on release, kind,
# package list and mirrors. In `run`, $CHROOT_BINDS ("HOSTDIR:DIR ..." pairs) are bind-mounted, and
# with CHROOT_AS_HOST=1 the chroot looks more like a booted host's root, for running the test suite
# in it: it becomes the mount namespace's root (pivot_root, not chroot), a mount point of its own
# (`unshare --propagation`, `mount --make-rslave /` refuse a root that is not), with a sysfs
# (read-only: /sys/devices/system/cpu/online and the like).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${ARMHF_AGENT_CACHE:-/var/cache/armhf-agent-build}
MIRROR=${ARMHF_AGENT_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${ARMHF_AGENT_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

die() { echo "debian-chroot.sh: $*" >&2; exit 2; }

# Host tools (and their packages) this script runs; `check` lists the missing ones.
TOOLS="mmdebstrap:mmdebstrap unshare:util-linux chroot:coreutils flock:util-linux tar:tar mount:mount sha256sum:coreutils"

check() {
    local pair missing=""
    for pair in $TOOLS; do
        command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair%%:*} (${pair#*:})"
    done
    [ -z "$missing" ] || die "missing host tools:$missing; run scripts/setup.sh --test"
    echo "debian-chroot.sh: host tools present"
}

build_depends() {
    # The Build-Depends field of the control file, continuation lines joined.
    awk '/^Build-Depends:/ {f=1; sub(/^Build-Depends:/, ""); printf "%s", $0; next}
         f && /^[ \t]/     {printf "%s", $0; next}
         {f=0}' "$REPO/packaging/debian/control" | tr -s ' \t' ' ' | sed 's/^ //; s/,$//'
}

mmdebstrap_options() {  # KIND -> one option per line
    local kind=$1
    case $kind in
        build)
            echo --variant=buildd
            # systemd and procps (/bin/kill): what `systemd-analyze verify` of the installed unit needs.
            echo --include=lintian,systemd,procps
            # apt-get satisfy honours the version constraints that --include cannot express.
            echo "--customize-hook=chroot \"\$1\" apt-get satisfy -y --no-install-recommends '$(build_depends)'"
            ;;
        install)
            echo --variant=minbase
            ;;
        systemd)
            echo --variant=minbase
            echo --include=systemd,systemd-sysv,dbus,procps,python3,docker.io
            # docker.io is only the stand-in payload's source: its own daemons must not run (they
            # would hold /var/run/docker.pid and docker.sock, which the agent's dockerd uses).
            echo "--customize-hook=chroot \"\$1\" systemctl mask docker.service docker.socket containerd.service"
            ;;
        *) die "unknown chroot kind '$kind' (build, install, systemd)" ;;
    esac
    # invoke-rc.d must not start services in a chroot; systemd containers use systemctl instead.
    [ "$kind" = systemd ] || echo "--customize-hook=printf '#!/bin/sh\nexit 101\n' > \"\$1/usr/sbin/policy-rc.d\" && chmod 755 \"\$1/usr/sbin/policy-rc.d\""
    echo --skip=cleanup/apt/lists
}

sources() {  # RELEASE -> one sources.list line per line
    local release=$1
    echo "deb $MIRROR $release main"
    echo "deb $MIRROR $release-updates main"
    echo "deb $SECURITY_MIRROR $release-security main"
}

tarball() {
    local kind=$1 release=$2 key path tmp
    [[ $release =~ ^[a-z]+$ ]] || die "release must be a Debian codename such as bookworm or trixie, not '$release'"
    local -a options mirrors
    mapfile -t options < <(mmdebstrap_options "$kind")
    mapfile -t mirrors < <(sources "$release")
    key=$(printf '%s\n' v1 "$kind" "$release" "${options[@]}" "${mirrors[@]}" | sha256sum | cut -c1-16)
    path=$CACHE/chroots/$release-$kind-$key.tar
    mkdir -p "$CACHE/chroots"
    exec 9>"$path.lock"
    flock 9
    if [ ! -s "$path" ]; then
        command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
        tmp=$path.tmp
        echo "debian-chroot.sh: creating $path" >&2
        # A temporary name first: an interrupted run never leaves a truncated tarball in the cache.
        mmdebstrap --mode=root --format=tar "${options[@]}" "$release" "$tmp" "${mirrors[@]}" >&2
        mv "$tmp" "$path"
        # Tarballs of this release and kind made from an older package list are dead weight now.
        for old in "$CACHE/chroots/$release-$kind-"*.tar; do
            [ "$old" = "$path" ] || rm -f "$old" "$old.lock"
        done
    fi
    exec 9>&-
    echo "$path"
}

unpack() {
    local kind=$1 release=$2 dir=$3 tar
    tar=$(tarball "$kind" "$release")
    mkdir "$dir"
    tar -C "$dir" -xpf "$tar"
}

run() {
    local dir=$1; shift
    [ -d "$dir/etc" ] || die "$dir is not an unpacked chroot"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    # A private mount namespace: the mounts vanish with the command, nothing leaks onto the host.
    unshare --mount --propagation private -- /bin/sh -euc '
        dir=$1; shift
        if [ "${CHROOT_AS_HOST:-}" = 1 ]; then
            mount --bind "$dir" "$dir"
            mount -t sysfs -o ro sysfs "$dir/sys"
        fi
        mount -t proc proc "$dir/proc"
        mount --rbind /dev "$dir/dev"
        # pip trusts what the host trusts (a TLS-inspecting proxy adds its CA to the host bundle);
        # beside, not over, the chroot'"'"'s own bundle, which ca-certificates must be free to rewrite.
        touch "$dir/run/host-ca-certificates.crt"
        mount --bind -o ro /etc/ssl/certs/ca-certificates.crt "$dir/run/host-ca-certificates.crt"
        for pair in ${CHROOT_BINDS:-}; do
            mkdir -p "$dir/${pair#*:}"
            mount --bind "${pair%%:*}" "$dir/${pair#*:}"
        done
        set -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive PIP_CERT=/run/host-ca-certificates.crt "$@"
        if [ "${CHROOT_AS_HOST:-}" = 1 ]; then
            # The root of the mount namespace itself, not a chroot: a process that enters another
            # mount namespace made from this one (setns, nsenter -m) lands at the namespace'"'"'s root,
            # which after a mere chroot would be the host'"'"'s.
            mkdir -p "$dir/.host-root"
            cd "$dir"
            pivot_root . .host-root
            cd /
            umount -l /.host-root
            rmdir /.host-root
            exec "$@"
        fi
        exec chroot "$dir" "$@"
    ' sh "$dir" "$@"
}

case ${1:-} in
    tarball) [ $# -eq 3 ] || die "usage: $0 tarball KIND RELEASE"; tarball "$2" "$3" ;;
    unpack)  [ $# -eq 4 ] || die "usage: $0 unpack KIND RELEASE DIR"; unpack "$2" "$3" "$4" ;;
    run)     [ $# -ge 3 ] || die "usage: $0 run DIR CMD..."; shift; run "$@" ;;
    check)   check ;;
    *) die "usage: $0 tarball|unpack|run|check ..." ;;
esac
