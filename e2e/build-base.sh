#!/bin/sh
# Builds the arm64 guest of a Debian release: OUT/vmlinuz, OUT/initrd.gz, OUT/disk.img (ext4, root
# filesystem) and OUT/packages.txt (what is installed in it: the guest has no network, so the agent's
# .deb must find its Depends there; e2e_arm64.py checks before booting).
# Usage: build-base.sh RELEASE PACKAGES OUT
#   RELEASE   bookworm, trixie (the suites are RELEASE and RELEASE-updates)
#   PACKAGES  comma-separated packages beyond the common list below: the armhf libraries the
#             release's payload links against (name:armhf) and any release-specific extra
#             (e2e_arm64.py RELEASES says which and why)
set -eu
release=$1; packages=$2; out=$3
here=$(cd "$(dirname "$0")" && pwd)
rootfs=$out/rootfs
rm -rf "$rootfs"

# Nothing named docker is installed here: the payload arrives through `armhf-agent install-docker`,
# like on a fleet host. python3: the agent's .deb carries a venv on the distribution's python3 (and
# the probes use it).
base=systemd-sysv,udev,kmod,procps,busybox-static,linux-image-arm64,python3

# Only RELEASE and RELEASE-updates: the security suite's armhf index was stale on these machines once
# and arm64/armhf copies of a library must have the same version (reference/test-environment.md).
# update-initramfs is diverted because running it under qemu-user takes ~6 minutes, twice; the guest
# boots with the busybox initrd made below instead.
mmdebstrap --architectures=arm64,armhf --variant=minbase \
    --include="$base,$packages" \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
    --customize-hook="$here/image/customize.sh \"\$1\"" \
    "$release" "$rootfs" \
    "deb http://deb.debian.org/debian $release main" \
    "deb http://deb.debian.org/debian $release-updates main"

dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f '${Package}\n' | sort -u > "$out/packages.txt"
cp "$rootfs"/boot/vmlinuz-* "$out/vmlinuz"
"$here/make-initrd.sh" "$rootfs" "$out/initrd.gz"
rm -f "$out/disk.img"
mke2fs -q -t ext4 -L e2e-root -d "$rootfs" "$out/disk.img" 4G
rm -rf "$rootfs"
