#!/bin/bash
# build-repo.sh --key KEY [--origin NAME] DIST OUT: publishes the armhf-agent .debs in DIST into
# the signed apt repository kept in OUT (made on first use), with aptly. Serve OUT/public.
# build-repo.sh --check: exit 0 if every tool it needs is installed (else names the missing ones).
#
#   one suite per Debian release: bookworm (+deb12 builds), trixie (+deb13), component main,
#   architectures amd64 and arm64; dists/SUITE/InRelease and Release.gpg signed with KEY
#   every version ever published stays (rollback = apt-get install armhf-agent=OLDER)
#   OUT/public/armhf-agent-archive-keyring.gpg: the key, for apt's Signed-By
#   armhf-agent-archive-keyring_VERSION_all.deb: the same file as a package, in both suites and
#   in OUT/public, so hosts receive a rotated or extended key through apt
#
# KEY is anything gpg resolves to exactly one secret key (a fingerprint is safest); gpg's
# GNUPGHOME is honoured. REPO_KEYRING_KEYS (default: KEY) lists the keys the keyring carries, e.g.
# the old and the new key during a rotation; REPO_KEYRING_VERSION overrides the keyring's version,
# which is otherwise the time of the newest key or self-signature in it. docs/FLEET.md is the
# operator's page.
#
# aptly rather than reprepro: Debian 12's reprepro (5.3.1) keeps one version of a package per suite,
# and a rollback through the repository needs the older one (multiple versions came in reprepro 5.4).
set -euo pipefail

die() { echo "build-repo.sh: $*" >&2; exit 2; }
usage() { die "usage: $0 --key KEY [--origin NAME] DIST OUT"; }

check_tools() {
    local pair missing=""
    for pair in aptly:aptly gpg:gnupg gpgv:gpgv dpkg-deb:dpkg; do
        command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair%%:*} (${pair#*:})"
    done
    [ -z "$missing" ] || die "missing tools:$missing; run scripts/setup.sh --test or apt-get install aptly gnupg"
}
if [ "${1:-}" = --check ]; then
    check_tools
    echo "build-repo.sh: tools present"
    exit 0
fi

key=${REPO_KEY:-}
origin=${REPO_ORIGIN:-armhf-agent}
while [ $# -gt 0 ]; do
    case $1 in
        --key) [ $# -ge 2 ] || usage; key=$2; shift 2 ;;
        --origin) [ $# -ge 2 ] || usage; origin=$2; shift 2 ;;
        --) shift; break ;;
        -*) die "unknown option '$1'" ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || usage
dist=$1 out=$2

# The Debian release of each DISTRO_TAG (packaging/debian/rules) and the Python its venv is built with.
declare -A SUITE_OF=([deb12]=bookworm [deb13]=trixie)
declare -A PYTHON_OF=([bookworm]=3.11 [trixie]=3.13)
SUITES="bookworm trixie"
ARCHES="amd64 arm64"
KEYRING_PKG=armhf-agent-archive-keyring

check_tools
[ -n "$key" ] || die "no signing key: give --key KEY (or REPO_KEY), a fingerprint of a secret key in ${GNUPGHOME:-~/.gnupg}"
[[ $origin =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "origin '$origin' must be letters, digits, '.', '_' or '-' (apt matches it in pins and Origins-Pattern)"
[ -d "$dist" ] || die "$dist is not a directory"

# The key: exactly one secret key, able to sign, neither expired nor revoked.
key_fingerprint() {  # KEY -> its primary fingerprint, or dies naming what is wrong
    local listing count fpr validity caps
    listing=$(gpg --batch --with-colons --list-secret-keys -- "$1" 2>/dev/null) \
        || die "key '$1' names no secret key in ${GNUPGHOME:-~/.gnupg} (gpg --list-secret-keys '$1')"
    count=$(grep -c '^sec:' <<<"$listing" || true)
    [ "$count" -eq 1 ] || die "key '$1' names $count secret keys; give the fingerprint of one"
    fpr=$(awk -F: '/^fpr:/ {print $10; exit}' <<<"$listing")
    validity=$(awk -F: '/^sec:/ {print $2}' <<<"$listing")
    caps=$(awk -F: '/^sec:/ {print $12}' <<<"$listing")
    case $validity in
        e) die "key '$1' ($fpr) has expired" ;;
        r) die "key '$1' ($fpr) is revoked" ;;
    esac
    [[ $caps == *S* ]] || die "key '$1' ($fpr) cannot sign (capabilities '$caps')"
    echo "$fpr"
}
fpr=$(key_fingerprint "$key")
keyring_fprs=()
for k in ${REPO_KEYRING_KEYS:-$fpr}; do
    keyring_fprs+=("$(gpg --batch --with-colons --list-keys -- "$k" 2>/dev/null | awk -F: '/^fpr:/ {print $10; exit}')")
    [ -n "${keyring_fprs[-1]}" ] || die "REPO_KEYRING_KEYS: '$k' names no key in ${GNUPGHOME:-~/.gnupg}"
done
[[ " ${keyring_fprs[*]} " == *" $fpr "* ]] || die "REPO_KEYRING_KEYS must include the signing key $fpr, or hosts cannot verify the repository"

# Every .deb of DIST is routed to its suite by the release tag of its Version, and its Depends must
# name that release's Python: a renamed or mislabelled file would otherwise reach the wrong hosts.
declare -A debs_of=()
shopt -s nullglob
files=("$dist"/*.deb)
[ ${#files[@]} -gt 0 ] || die "no .deb in $dist (make deb-chroot RELEASE=bookworm, RELEASE=trixie)"
field() { awk -v f="$1" -F': ' '$1 == f {sub(/^[^:]*: /, ""); print; exit}' <<<"$fields"; }
for deb in "${files[@]}"; do
    fields=$(dpkg-deb -f "$deb" Package Version Architecture Depends 2>/dev/null) || die "$deb: not a Debian package (dpkg-deb -f fails)"
    package=$(field Package) version=$(field Version) arch=$(field Architecture) depends=$(field Depends)
    [ "$package" = armhf-agent ] || die "$deb: package '$package', not armhf-agent (only the agent's builds belong in $dist)"
    [[ $version =~ \+(deb[0-9]+)$ ]] || die "$deb: version '$version' has no +deb12/+deb13 release tag (packaging/debian/rules DISTRO_TAG)"
    tag=${BASH_REMATCH[1]}
    suite=${SUITE_OF[$tag]:-}
    [ -n "$suite" ] || die "$deb: release tag '$tag' of version '$version' is not one this repository serves (${!SUITE_OF[*]})"
    [[ " $ARCHES " == *" $arch "* ]] || die "$deb: architecture '$arch' is not one this repository serves ($ARCHES)"
    python=${PYTHON_OF[$suite]}
    [[ ",$depends," =~ [,\ ]python${python//./\\.}[,\ ] ]] \
        || die "$deb: version '$version' is for $suite (Python $python) but its Depends does not name python$python: '$depends'"
    debs_of[$suite]="${debs_of[$suite]:-} $deb"
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
mkdir -p "$out/public"
keyring=$(mktemp -d)
# aptly imports a file into its pool by hard link when it can: the published .deb would then be
# dist/'s inode, and a tool rewriting that file in place would change a published package under
# its signed checksum. It gets private copies instead.
stage=$(mktemp -d "$out/.incoming.XXXXXX")
trap 'rm -rf "$keyring" "$stage"' EXIT
for suite in $SUITES; do
    staged=""
    for deb in ${debs_of[$suite]:-}; do
        mkdir -p "$stage/$suite"
        cp "$deb" "$stage/$suite/"
        staged="$staged $stage/$suite/${deb##*/}"
    done
    debs_of[$suite]=$staged
done

# The keyring package, built reproducibly: same keys, same bytes, so republishing it is a no-op
# (aptly refuses a different file under a version it already has).
gpg --batch --export --export-options export-minimal "${keyring_fprs[@]}" > "$keyring/keyring.gpg"
[ -s "$keyring/keyring.gpg" ] || die "gpg exported nothing for ${keyring_fprs[*]}"
# Newest of key creation and self-signature times (field 6 of pub, sub and uid records): extending
# an expiry or adding a key makes a newer self-signature, hence a higher version.
epoch=$(gpg --batch --with-colons --list-keys "${keyring_fprs[@]}" | awk -F: '$1 ~ /^(pub|sub|uid)$/ && $6 > m {m = $6} END {print m}')
[[ $epoch =~ ^[0-9]+$ ]] || die "cannot read the creation time of ${keyring_fprs[*]}"
keyring_version=${REPO_KEYRING_VERSION:-$(date -u -d "@$epoch" +%Y.%m.%d.%H%M%S)}
# From the keyring's first key, not the signing key: switching signers must not change its bytes.
maintainer=$(gpg --batch --with-colons --list-keys "${keyring_fprs[0]}" | awk -F: '/^uid:/ {print $10; exit}' | sed 's/\\x3a/:/g')
[[ $maintainer == *"<"*">"* ]] || maintainer="armhf-agent repository <root@localhost>"
pkgroot=$keyring/pkg
install -d -m 755 "$pkgroot/DEBIAN" "$pkgroot/usr/share/keyrings" "$pkgroot/usr/share/doc/$KEYRING_PKG"
install -m 644 "$keyring/keyring.gpg" "$pkgroot/usr/share/keyrings/$KEYRING_PKG.gpg"
printf 'The OpenPGP keys (%s) of the armhf-agent apt repository, exported by\nscripts/build-repo.sh of armhf-agent. Public keys carry no copyright.\n' \
    "${keyring_fprs[*]}" > "$pkgroot/usr/share/doc/$KEYRING_PKG/copyright"
chmod 644 "$pkgroot/usr/share/doc/$KEYRING_PKG/copyright"
cat > "$pkgroot/DEBIAN/control" <<EOF
Package: $KEYRING_PKG
Version: $keyring_version
Architecture: all
Multi-Arch: foreign
Section: misc
Priority: optional
Maintainer: $maintainer
Description: OpenPGP keys of the armhf-agent apt repository
 Installs /usr/share/keyrings/$KEYRING_PKG.gpg, the keyring apt checks
 the armhf-agent repository against (Signed-By in its sources entry).
 It is published in the repository itself, so hosts receive a rotated
 or extended key through their normal upgrades.
EOF
(cd "$pkgroot" && find usr -type f -printf '%P\n' | sort | sed 's|^|usr/|' | xargs md5sum > DEBIAN/md5sums)
chmod 644 "$pkgroot/DEBIAN/control" "$pkgroot/DEBIAN/md5sums"
find "$pkgroot" -exec touch -h -d "@$epoch" {} +
keyring_deb=$keyring/${KEYRING_PKG}_${keyring_version}_all.deb
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$pkgroot" "$keyring_deb" >/dev/null

# Hosts select the repository by its origin (unattended-upgrades' Origins-Pattern): it stays as
# first published.
for suite in $SUITES; do
    [ -f "$out/public/dists/$suite/Release" ] || continue
    published=$(awk -F': ' '$1 == "Origin" {print $2; exit}' "$out/public/dists/$suite/Release")
    [ "$published" = "$origin" ] || die "$out publishes origin '$published', not '$origin': hosts select it by origin, so it stays; use another OUT for a new origin"
done

# aptly keeps its database and package pool in OUT and publishes into OUT/public.
conf=$out/aptly.conf
printf '{"rootDir": "%s", "gpgProvider": "gpg", "architectures": ["amd64", "arm64"], "dependencyFollowSuggests": false}\n' "$out" > "$conf"
aptly_() { aptly -config="$conf" "$@"; }
for suite in $SUITES; do
    repo=armhf-agent-$suite
    aptly_ repo show "$repo" >/dev/null 2>&1 \
        || aptly_ repo create -distribution="$suite" -component=main -comment="armhf-agent for $suite" "$repo" >/dev/null
    # aptly names the package in its refusal (another build under a version already published:
    # "conflict in package ..." in aptly 1.5, "package already exists and is different: ..." in 1.6);
    # the exit status says it failed.
    if ! added=$(aptly_ repo add "$repo" "$keyring_deb" 2>&1); then
        echo "$added" >&2
        die "the keyring (${keyring_fprs[*]}) differs from the published $KEYRING_PKG $keyring_version (e.g. a key was dropped): set REPO_KEYRING_VERSION higher"
    fi
    # shellcheck disable=SC2086 # word splitting of the file list is intended (no spaces: dpkg file names)
    if [ -n "${debs_of[$suite]:-}" ] && ! added=$(aptly_ repo add "$repo" ${debs_of[$suite]} 2>&1); then
        echo "$added" >&2
        die "aptly refused a package for $suite (above); a version already published cannot be replaced by another build: give the new build a higher version"
    fi
    if aptly_ publish show "$suite" >/dev/null 2>&1; then
        aptly_ publish update -batch -gpg-key="$fpr" -skip-contents "$suite" >/dev/null
    else
        aptly_ publish repo -batch -gpg-key="$fpr" -origin="$origin" -label="$origin" -distribution="$suite" \
            -architectures="${ARCHES// /,}" -acquire-by-hash -skip-contents "$repo" >/dev/null
    fi
done
# Beside the suites, for a host's first install (docs/FLEET.md): the current keyring only, each file
# renamed into place, so the web server never serves half of one.
publish_file() {  # SRC NAME
    install -m 644 "$1" "$out/public/.$2.tmp"
    mv -f "$out/public/.$2.tmp" "$out/public/$2"
}
publish_file "$keyring/keyring.gpg" "$KEYRING_PKG.gpg"
publish_file "$keyring_deb" "${keyring_deb##*/}"
for old in "$out/public/${KEYRING_PKG}_"*_all.deb; do
    [ "$old" = "$out/public/${keyring_deb##*/}" ] || rm -f "$old"
done

# Check what apt will check, independently of aptly: both signatures verify with the exported
# keyring, and Release lists the Packages file of every architecture.
for suite in $SUITES; do
    d=$out/public/dists/$suite
    gpgv --keyring "$out/public/$KEYRING_PKG.gpg" "$d/InRelease" 2>/dev/null || die "$d/InRelease does not verify with the keyring"
    gpgv --keyring "$out/public/$KEYRING_PKG.gpg" "$d/Release.gpg" "$d/Release" 2>/dev/null || die "$d/Release.gpg does not verify with the keyring"
    for arch in $ARCHES; do
        grep -q " main/binary-$arch/Packages$" "$d/Release" || die "$d/Release lists no main/binary-$arch/Packages"
    done
    count=$(awk '$0 == "Package: armhf-agent" {n++} END {print n + 0}' "$d"/main/binary-*/Packages)
    echo "build-repo.sh: $suite: $count armhf-agent package(s) (amd64 + arm64), signed by $fpr"
done
echo "build-repo.sh: serve $out/public; keyring $out/public/$KEYRING_PKG.gpg and ${keyring_deb##*/}"
