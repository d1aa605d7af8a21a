#!/bin/sh
# Builds the arm64 guest: OUT/vmlinuz, OUT/initrd.gz, OUT/disk.img (ext4, root filesystem).
# Usage: build-base.sh OUT [EXTRA_PACKAGE...]
# EXTRA_PACKAGEs are arm64 packages the agent's .deb depends on: the guest has no network, so its
# dependencies must already be in the image when `dpkg -i` runs there.
set -eu
out=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
rootfs=$out/rootfs
rm -rf "$rootfs"

# The payload (Debian's armhf docker.io/containerd/runc, see build-payload.sh) is dynamically linked
# against these armhf libraries; Docker's own static armhf release is not, so a fleet host only needs
# them because our stand-in payload comes from Debian. Nothing named docker is installed here: the
# payload arrives through `armhf-agent install-docker`, like on a fleet host.
armhf_libs=libc6:armhf,libsystemd0:armhf,libdevmapper1.02.1:armhf,libseccomp2:armhf
base=systemd-sysv,udev,kmod,procps,busybox-static,linux-image-arm64,python3
extra=$(echo "$@" | tr ' ' ',')

# Only bookworm and bookworm-updates: the security suite's armhf index was stale on these machines and
# arm64/armhf copies of a library must have the same version (reference/test-environment.md).
# update-initramfs is diverted because running it under qemu-user takes ~6 minutes, twice; the guest
# boots with the busybox initrd made below instead.
mmdebstrap --architectures=arm64,armhf --variant=minbase \
    --include="$base,$armhf_libs${extra:+,$extra}" \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
    --customize-hook="$here/image/customize.sh \"\$1\"" \
    bookworm "$rootfs" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main"

cp "$rootfs"/boot/vmlinuz-* "$out/vmlinuz"
"$here/make-initrd.sh" "$rootfs" "$out/initrd.gz"
rm -f "$out/disk.img"
mke2fs -q -t ext4 -L e2e-root -d "$rootfs" "$out/disk.img" 4G
rm -rf "$rootfs"
