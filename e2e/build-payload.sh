#!/bin/sh
# build-payload.sh OUT: OUT/docker-VERSION.tgz laid out like Docker's static armhf release (a docker/
# folder with docker, dockerd, containerd, containerd-shim-runc-v2, ctr, runc, docker-init,
# docker-proxy), made from Debian's armhf packages: no Docker download site is reachable here
# (reference/platform.md, "Docker payloads for armhf").
set -eu
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A private apt state so that the host's dpkg never gains the armhf architecture.
mkdir -p "$work/apt/state/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/etc/apt.conf.d" \
         "$work/apt/etc/preferences.d" "$work/apt/etc/sources.list.d" "$work/debs" "$work/x" "$work/tar/docker"
touch "$work/apt/state/status"
cat > "$work/apt/etc/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
SOURCES
set -- -q -o Dir::Etc="$work/apt/etc" -o Dir::State="$work/apt/state" -o Dir::State::status="$work/apt/state/status" \
       -o Dir::Cache="$work/apt/cache" -o APT::Architecture=armhf -o APT::Architectures::=armhf \
       -o APT::Sandbox::User=root
apt-get "$@" update > /dev/null
(cd "$work/debs" && apt-get "$@" download docker.io containerd runc tini > /dev/null)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/x"; done

x=$work/x
for pair in docker:usr/bin/docker dockerd:usr/sbin/dockerd docker-proxy:usr/sbin/docker-proxy \
            containerd:usr/bin/containerd containerd-shim-runc-v2:usr/bin/containerd-shim-runc-v2 \
            ctr:usr/bin/ctr runc:usr/sbin/runc docker-init:usr/bin/tini-static; do
    install -m 0755 "$x/${pair#*:}" "$work/tar/docker/${pair%%:*}"
done
version=$(dpkg-deb -f "$work"/debs/docker.io_*.deb Version | sed 's/^[0-9]*://; s/[+~-].*//')
rm -f "$out"/docker-*.tgz
tar -C "$work/tar" --owner=0 --group=0 --sort=name -czf "$out/docker-$version.tgz" docker
