#!/bin/bash
# Prepares a fresh Debian/Ubuntu machine (root) for the demo or the tests: system packages and a
# project venv in .venv. Idempotent and quiet when everything is already there.
#   scripts/setup.sh          what the demo needs
#   scripts/setup.sh --test   plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

packages=(docker.io busybox-static python3 python3-venv util-linux ca-certificates)
if [ "$want_tests" = 1 ]; then
    # qemu-user-static: doctor's binfmt test; shellcheck: the shim's lint test;
    # curl: the TLS scrape; openssl: test certificates.
    # mmdebstrap: the packaging tests build and install the .deb in Debian 12 and 13 chroots.
    packages+=(qemu-user-static shellcheck openssl curl iproute2 procps mmdebstrap)
    # binutils: readelf, the independent oracle of the ARM build-attributes reader's tests.
    packages+=(binutils)
    # docker-compose: an Engine-API client for the runtime wrapper's tests (Debian 12: 1.29, Python).
    packages+=(docker-compose)
    # The arm64 end-to-end run (make e2e-arm64): QEMU system emulation, qemu-user binfmt for the
    # arm64/armhf chroots, disk images; git lists the tree it packages. arch-test is only a Recommends
    # of mmdebstrap, which refuses a foreign-architecture chroot without it (issue 11): named here,
    # since --no-install-recommends drops it. e2e/e2e_arm64.py --check-host lists what it needs.
    # xz-utils: Debian 13's kernel modules are .ko.xz, unpacked for the guest's initrd.
    packages+=(qemu-system-arm qemu-utils binfmt-support arch-test e2fsprogs cpio make git xz-utils)
    # make repo / scripts/build-repo.sh: the signed apt repository (aptly; Debian 12's reprepro keeps
    # one version per package, and rollbacks need the older one) and its key (gnupg: gpg, gpgv).
    packages+=(aptly gnupg)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian 12's docker.io carries the docker client; from Debian 13 on the client is docker-cli. The
# demo's stand-in payload and the tests run it as /usr/bin/docker (not whatever docker is first in PATH,
# which may be the agent's shim): asked for only where docker.io left it out.
if [ ! -x /usr/bin/docker ]; then
    echo "setup: installing docker-cli (the docker client is not in this release's docker.io)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends docker-cli >/dev/null
fi

if [ "$want_tests" = 1 ]; then
    # promtool, without installing (and starting) a Prometheus server: Debian 13 ships it as its own
    # package, Debian 12 only inside `prometheus`. Either is unpacked into .cache/promtool.
    if [ ! -x .cache/promtool/usr/bin/promtool ]; then
        mkdir -p .cache/promtool
        (cd .cache/promtool && { apt-get download promtool >/dev/null 2>&1 || apt-get download prometheus >/dev/null 2>&1; } \
            && for deb in ./*.deb; do dpkg -x "$deb" .; done && rm -f ./*.deb) \
            || echo "setup: could not fetch promtool (apt-get download promtool or prometheus); its tests will say so"
        [ -x .cache/promtool/usr/bin/promtool ] || echo "setup: no promtool in the downloaded package" >&2
    fi
fi

if [ "$want_tests" = 1 ]; then
    # A 32-bit userland for the runtime wrapper's host-mode tests (i386 stands in for armhf on x86, as
    # amd64 does for arm64): Debian's busybox-static for i386, fetched with a private apt state so the
    # host's dpkg never gains the architecture (as e2e/build-payload.sh does for armhf).
    if [ "$(uname -m)" = x86_64 ] && [ ! -x .cache/i386/bin/busybox ]; then
        apt_dir=$(mktemp -d)
        mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc/apt.conf.d" \
                 "$apt_dir/etc/preferences.d" "$apt_dir/etc/sources.list.d" .cache/i386
        touch "$apt_dir/state/status"
        . /etc/os-release
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $VERSION_CODENAME main" \
            > "$apt_dir/etc/sources.list"
        apt_private=(-q -o Dir::Etc="$apt_dir/etc" -o Dir::State="$apt_dir/state" -o Dir::State::status="$apt_dir/state/status"
                     -o Dir::Cache="$apt_dir/cache" -o APT::Architecture=i386 -o APT::Architectures::=i386
                     -o APT::Sandbox::User=root)
        if apt-get "${apt_private[@]}" update >/dev/null && (cd "$apt_dir" && apt-get "${apt_private[@]}" download busybox-static >/dev/null); then
            dpkg-deb -x "$apt_dir"/busybox-static_*_i386.deb .cache/i386
        else
            echo "setup: could not fetch busybox-static:i386; the host-mode wrapper tests will say so" >&2
        fi
        rm -rf "$apt_dir"
    fi
fi

python=python3
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e ".[test]"
    touch "$stamp"
fi
