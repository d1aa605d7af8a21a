#!/bin/sh
# build-deb-chroot.sh CONTROL OUT: OUT/chroot.tar, an arm64 bookworm build chroot with the
# Build-Depends of CONTROL (the project's packaging/debian/control) installed. Same suites as the
# guest, so the venv's python3.11 is the guest's.
set -eu
control=$1; out=$2
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
    bookworm "$out/chroot.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main"
