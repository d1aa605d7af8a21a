#!/bin/sh
# build-armhf-rootfs.sh OUT: OUT/debian-armhf.tar, an armhf Debian minbase root filesystem for
# `docker import` in the guest (no registry is reachable). autotools-dev brings config.guess.
# Without translations and documentation: a third less to import under emulation.
set -eu
out=$1
mmdebstrap --architectures=armhf --variant=minbase --include=autotools-dev \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$out/debian-armhf.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main"
