#!/bin/sh
# build-deb.sh SRC OUT: builds the binary package from SRC, an exported source tree whose parent
# folder belongs to the build (dpkg-buildpackage writes its results there), for the distribution
# this runs on, and moves the .deb, .buildinfo and .changes into OUT.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 SRC OUT" >&2; exit 2; }
src=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
# The Debian tools expect debian/ at the top; the project keeps it under packaging/.
ln -sfn packaging/debian "$src/debian"
(cd "$src" && dpkg-buildpackage -us -uc -b)
rm "$src/debian"
parent=$(dirname "$src")
mv "$parent"/armhf-agent_*.deb "$parent"/armhf-agent_*.buildinfo "$parent"/armhf-agent_*.changes "$out"/
