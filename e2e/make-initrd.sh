#!/bin/sh
# make-initrd.sh ROOTFS OUT: a busybox initrd that loads just what it takes to mount an ext4 root
# from virtio-blk and switch_root into it. Debian's initramfs would be generated under qemu-user
# (~6 minutes per kernel) for a boot that needs four modules (reference/test-environment.md).
set -eu
root=$1; out=$2
kver=$(basename "$(ls -d "$root"/lib/modules/*)")
moddir=$root/lib/modules/$kver
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/dev" "$work/proc" "$work/sys" "$work/newroot" "$work/modules"
cp "$root/bin/busybox" "$work/bin/busybox"
install -m 0755 "$(dirname "$0")/image/initrd-init" "$work/init"

# Dependencies first, each once, from modules.dep; a module built into the kernel needs no file.
# crc32c_generic is not a dependency of ext4 in modules.dep: ext4 asks the crypto API for "crc32c"
# at mount time, which an initrd without modprobe cannot satisfy on demand.
wanted="virtio_pci virtio_blk crc32c_generic ext4"
awk -v wanted="$wanted" -v builtin="$moddir/modules.builtin" '
    function modname(path,  n) { n = path; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); return n }
    function emit(n,  i, count, dep) {
        if (n in done) return
        done[n] = 1
        count = split(deps[n], dep, " ")
        for (i = 1; i <= count; i++) emit(modname(dep[i]))
        print file[n]
    }
    BEGIN { while ((getline line < builtin) > 0) inkernel[modname(line)] = 1 }
    { path = $1; sub(/:$/, "", path); n = modname(path); file[n] = path; $1 = ""; deps[n] = $0 }
    END {
        count = split(wanted, want, " ")
        for (i = 1; i <= count; i++) {
            if (want[i] in inkernel) continue
            if (!(want[i] in file)) { print "make-initrd: no module " want[i] " in " FILENAME > "/dev/stderr"; exit 1 }
            emit(want[i])
        }
    }' "$moddir/modules.dep" > "$work/modules/order.full"
# Debian 13's modules are xz-compressed (.ko.xz). busybox's insmod calls finit_module() without
# MODULE_INIT_COMPRESSED_FILE, then falls back to unpacking only the formats it was built with
# (busybox modutils/modutils.c, bb_init_module): unpacked here, on the host, whatever that build.
while read -r path; do
    name=$(basename "$path")
    case $name in
        *.ko) cp "$moddir/$path" "$work/modules/$name" ;;
        *.ko.xz) name=${name%.xz}; xz -dc "$moddir/$path" > "$work/modules/$name" ;;
        *.ko.gz) name=${name%.gz}; gzip -dc "$moddir/$path" > "$work/modules/$name" ;;
        *) echo "make-initrd: $moddir/$path: no way to unpack this module" >&2; exit 1 ;;
    esac
    echo "$name" >> "$work/modules/order"
done < "$work/modules/order.full"
rm "$work/modules/order.full"
(cd "$work" && find . | cpio --quiet -o -H newc) | gzip -9 > "$out"
