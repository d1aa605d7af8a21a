#!/bin/sh
# mmdebstrap customize hook: $1 is the arm64 root filesystem. Makes it boot straight into the probe
# unit with nothing else competing for the two emulated CPUs.
set -eu
root=$1
here=$(cd "$(dirname "$0")" && pwd)

echo e2e-arm64 > "$root/etc/hostname"
echo "LABEL=e2e-root / ext4 rw 0 1" > "$root/etc/fstab"
install -m 0644 "$here/e2e-probes.service" "$root/etc/systemd/system/e2e-probes.service"
# The wants folder exists only once some package enabled a unit there (not in every release's minbase).
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/e2e-probes.service "$root/etc/systemd/system/multi-user.target.wants/e2e-probes.service"
# A login prompt on the serial console would interleave with the probe lines; the timers would spend
# emulated CPU on apt and fstrim while probes are timed.
for unit in serial-getty@ttyAMA0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
            fstrim.timer e2scrub_all.timer dpkg-db-backup.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# The host's own Docker (rows with docker.io in the guest: e2e/guest/lib/multiplatform.sh) starts only when
# its probes unmask it: at boot it would take the agent's default socket and the two CPUs.
for unit in docker.service docker.socket containerd.service docker-registry.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
