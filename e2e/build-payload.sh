#!/bin/sh
# build-payload.sh SUITES OUT: OUT/docker-VERSION.tgz laid out like Docker's static armhf release (a
# docker/ folder with docker, dockerd, containerd, containerd-shim-runc-v2, ctr, runc, docker-init,
# docker-proxy), made from Debian's armhf packages of SUITES (comma-separated, e.g.
# trixie,trixie-updates or sid): no Docker download site is reachable here (reference/platform.md,
# "Docker payloads for armhf").
set -eu
suites=$1; out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A private apt state so that the host's dpkg never gains the armhf architecture.
mkdir -p "$work/apt/state/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/etc/apt.conf.d" \
         "$work/apt/etc/preferences.d" "$work/apt/etc/sources.list.d" "$work/debs" "$work/x" "$work/tar/docker"
touch "$work/apt/state/status"
for suite in $(echo "$suites" | tr ',' ' '); do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main"
done > "$work/apt/etc/sources.list"
set -- -q -o Dir::Etc="$work/apt/etc" -o Dir::State="$work/apt/state" -o Dir::State::status="$work/apt/state/status" \
       -o Dir::Cache="$work/apt/cache" -o APT::Architecture=armhf -o APT::Architectures::=armhf \
       -o APT::Sandbox::User=root
apt-get "$@" update > /dev/null
# Debian 12's docker.io carries the client; from Debian 13 on it is docker-cli. tini carried
# tini-static (docker-init) up to Debian 13; sid has it as a package of its own.
packages="docker.io containerd runc"
has() { apt-cache "$@" show "$pkg" > /dev/null 2>&1; }
pkg=docker-cli; if has "$@"; then packages="$packages docker-cli"; fi
pkg=tini-static; if has "$@"; then packages="$packages tini-static"; else packages="$packages tini"; fi
(cd "$work/debs" && apt-get "$@" download $packages > /dev/null)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/x"; done

x=$work/x
for pair in docker:usr/bin/docker dockerd:usr/sbin/dockerd docker-proxy:usr/sbin/docker-proxy \
            containerd:usr/bin/containerd containerd-shim-runc-v2:usr/bin/containerd-shim-runc-v2 \
            ctr:usr/bin/ctr runc:usr/sbin/runc docker-init:usr/bin/tini-static; do
    install -m 0755 "$x/${pair#*:}" "$work/tar/docker/${pair%%:*}"
done
version=$(dpkg-deb -f "$work"/debs/docker.io_*.deb Version | sed 's/^[0-9]*://; s/[+~-].*//')
# What went in, for the report (the tarball's name only says docker.io's version).
for deb in "$work"/debs/*.deb; do dpkg-deb -W --showformat='${Package}=${Version}\n' "$deb"; done > "$out/packages.txt"
rm -f "$out"/docker-*.tgz
tar -C "$work/tar" --owner=0 --group=0 --sort=name -czf "$out/docker-$version.tgz" docker
