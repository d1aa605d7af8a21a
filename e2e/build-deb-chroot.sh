#!/bin/sh
# build-deb-chroot.sh RELEASE CONTROL OUT: OUT/chroot.tar, an arm64 build chroot of the Debian RELEASE
# (bookworm, trixie) with the Build-Depends of CONTROL (the project's packaging/debian/control)
# installed. Same suites as that release's guest, so the venv's python3 is the guest's (3.11 in
# Debian 12, 3.13 in 13) and the .deb's version carries the release (+deb12, +deb13: DISTRO_TAG in
# packaging/debian/rules reads the chroot's /etc/os-release).
set -eu
release=$1; control=$2; out=$3
build_depends=$(python3 - "$control" <<'PY'
import re, sys
source = open(sys.argv[1]).read().split("\n\n")[0]
field = re.search(r"^Build-Depends:(.*(?:\n[ \t].*)*)", source, re.M)
print(" ".join(field.group(1).split()).rstrip(","))
PY
)
# apt-get satisfy honours the version constraints, which --include cannot express.
mmdebstrap --architectures=arm64 --variant=buildd \
    --customize-hook="chroot \"\$1\" apt-get satisfy -y --no-install-recommends '$build_depends'" \
    "$release" "$out/chroot.tar" \
    "deb http://deb.debian.org/debian $release main" \
    "deb http://deb.debian.org/debian $release-updates main"
