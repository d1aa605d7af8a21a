#!/bin/sh
# build-multiplatform.sh OUT: the three userlands of the guest's multi-platform build (issue 17), named
# for BuildKit's TARGETARCH+TARGETVARIANT: OUT/rootfs-arm64.tar, rootfs-armv7.tar (armhf), rootfs-armv6.tar.
# Debian has no ARMv6 userland: armel (ARMv5TE, Tag_CPU_arch v5TE) stands for it, which the runtime
# wrapper treats as pre-ARMv7 (agent/runtime_exec.py ARMV6_LAST). Each is libc6, libc-bin (getconf) and
# busybox-static, only unpacked (mmdebstrap's extract variant: nothing runs under emulation), with the
# applets the Dockerfile's RUN step uses linked. Debian 12's: this archive mirror lacks Debian 13's
# armel glibc (its pool answers 404 for the version the index names).
set -eu
out=$1
mkdir -p "$out"
for pair in arm64:arm64 armhf:armv7 armel:armv6; do
    arch=${pair%%:*}; name=${pair#*:}
    tree=$out/tree-$arch
    rm -rf "$tree"
    mmdebstrap --quiet --variant=extract --architectures="$arch" --include=libc6,libc-bin,busybox-static \
        --dpkgopt='path-exclude=/usr/share/*' --dpkgopt='path-exclude=/usr/lib/*/gconv/*' \
        bookworm "$tree" "deb http://deb.debian.org/debian bookworm main"
    for applet in sh uname sed head cat tr true sleep; do
        [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"
    done
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tree" -cf "$out/rootfs-$name.tar" .
    rm -rf "$tree"
done
