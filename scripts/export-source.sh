#!/bin/sh
# export-source.sh DEST: copies the work tree's tracked and new (not ignored) files into DEST,
# a folder to build from: builds write into their source tree and its parent, never into ours.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && tar --null -T - -c) | tar -C "$1" -x
