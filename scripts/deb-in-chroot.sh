#!/bin/bash
# deb-in-chroot.sh RELEASE OUT [SRC]: builds the .deb for a Debian release inside a throwaway copy
# of its cached build chroot (debian-chroot.sh), from SRC (an exported source tree; default: this
# work tree), and puts the results in OUT. pip's download cache is kept beside the chroots, so a
# rebuild downloads nothing (the lock's hashes are still checked).
set -euo pipefail
[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: $0 RELEASE OUT [SRC]" >&2; exit 2; }
release=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
cache=${ARMHF_AGENT_CACHE:-/var/cache/armhf-agent-build}
work=$(mktemp -d /var/tmp/armhf-agent-chroot.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$here/debian-chroot.sh" unpack build "$release" "$work/fs"
if [ $# -eq 3 ]; then
    mkdir -p "$work/fs/build" && cp -a "$3" "$work/fs/build/armhf-agent"
else
    "$here/export-source.sh" "$work/fs/build/armhf-agent"
fi
mkdir -p "$cache/pip" "$work/fs/out"
CHROOT_BINDS="$cache/pip:/root/.cache/pip" "$here/debian-chroot.sh" run "$work/fs" \
    /build/armhf-agent/scripts/build-deb.sh /build/armhf-agent /out
mv "$work/fs/out"/* "$out"/
