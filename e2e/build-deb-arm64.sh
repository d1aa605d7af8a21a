#!/bin/sh
# build-deb-arm64.sh CHROOT_TAR REPO PIP_CACHE OUT: the project's arm64 .deb, made by the project's
# own scripts/build-deb.sh (what `make deb` runs) from REPO's files, inside the arm64 chroot, under
# qemu-user. pip inside downloads from PyPI; PIP_CACHE keeps its downloads for the next build.
set -eu
chroot_tar=$1; repo=$(cd "$2" && pwd); pip_cache=$3; out=$4
work=$(mktemp -d /var/tmp/e2e-deb-arm64.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/fs"
tar -C "$work/fs" -xpf "$chroot_tar"
mkdir -p "$work/fs/build/src" "$work/fs/build/out" "$pip_cache"
git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && tar --null -T - -c) | tar -C "$work/fs/build/src" -x
cp /etc/resolv.conf "$work/fs/etc/resolv.conf"
touch "$work/fs/run/host-ca.crt"
# Private mount namespace: /proc, /dev and the binds vanish with the build. pip trusts the host's CA
# bundle (a TLS-inspecting proxy may sit between here and PyPI).
unshare --mount --propagation private -- sh -euc '
    fs=$1 pip=$2
    mount -t proc proc "$fs/proc"
    mount --rbind /dev "$fs/dev"
    mount --bind -o ro /etc/ssl/certs/ca-certificates.crt "$fs/run/host-ca.crt"
    mkdir -p "$fs/root/.cache/pip"
    mount --bind "$pip" "$fs/root/.cache/pip"
    exec chroot "$fs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive PIP_CERT=/run/host-ca.crt \
        sh /build/src/scripts/build-deb.sh /build/src /build/out
' sh "$work/fs" "$pip_cache"
mv "$work"/fs/build/out/armhf-agent_*_arm64.deb "$out/"
