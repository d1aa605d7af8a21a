#!/bin/sh
# Builds the arm64 guest: OUT/vmlinuz, OUT/initrd.gz, OUT/disk.img (ext4, root filesystem) and
# OUT/packages.txt (what is installed in it: the guest has no network, so the agent's .deb must find
# its Depends there; e2e_arm64.py checks before booting).
# Usage: build-base.sh OUT
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
rootfs=$out/rootfs
rm -rf "$rootfs"

# The payload (Debian's armhf docker.io/containerd/runc, see build-payload.sh) is dynamically linked
# against these armhf libraries; Docker's own static armhf release is not, so a fleet host only needs
# them because our stand-in payload comes from Debian. Nothing named docker is installed here: the
# payload arrives through `armhf-agent install-docker`, like on a fleet host.
armhf_libs=libc6:armhf,libsystemd0:armhf,libdevmapper1.02.1:armhf,libseccomp2:armhf
# python3: the agent's .deb carries a venv on the distribution's python3 (and the probes use it).
base=systemd-sysv,udev,kmod,procps,busybox-static,linux-image-arm64,python3

# Only bookworm and bookworm-updates: the security suite's armhf index was stale on these machines and
# arm64/armhf copies of a library must have the same version (reference/test-environment.md).
# update-initramfs is diverted because running it under qemu-user takes ~6 minutes, twice; the guest
# boots with the busybox initrd made below instead.
mmdebstrap --architectures=arm64,armhf --variant=minbase \
    --include="$base,$armhf_libs" \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
    --customize-hook="$here/image/customize.sh \"\$1\"" \
    bookworm "$rootfs" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main"

dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f '${Package}\n' | sort -u > "$out/packages.txt"
cp "$rootfs"/boot/vmlinuz-* "$out/vmlinuz"
"$here/make-initrd.sh" "$rootfs" "$out/initrd.gz"
rm -f "$out/disk.img"
mke2fs -q -t ext4 -L e2e-root -d "$rootfs" "$out/disk.img" 4G
rm -rf "$rootfs"
