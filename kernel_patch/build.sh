#!/usr/bin/env bash
# Build the stord-patched Linux 6.12 kernel reproducibly: Debian's linux-source-6.12 tarball,
# the patch series in patches/ (order from patches/series), `make tinyconfig` + stord.config.
# The result is cached by a hash over everything that decides it (tarball identity, series,
# fragment, this script): $OUT/bzImage-<hash>; $OUT/bzImage links to the latest.
# The source and object trees are kept and patches are swapped in place, so a changed
# patch rebuilds only what it touches (kbuild's per-option dependencies do the rest).
#   OUT=${STORD_KERNEL_OUT:-kernel_patch/out}   JOBS=${JOBS:-2}
#   STORD_KERNEL_EXTRA_CONFIG: a second fragment merged after stord.config (the Vagrant box
#   adds its disk/NIC/systemd options with it); part of the hash.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${STORD_KERNEL_OUT:-$here/out}
TARBALL=${STORD_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
JOBS=${JOBS:-2}
EXTRA=${STORD_KERNEL_EXTRA_CONFIG:-}
fragments=("$here/stord.config")
[ -n "$EXTRA" ] && fragments+=("$EXTRA")
mkdir -p "$OUT"

need_pkgs=(linux-source-6.12 bc bison flex libelf-dev libssl-dev dwarves cpio xz-utils gcc make)
missing=$(for p in "${need_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    echo "build.sh: installing $missing" >&2
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

mapfile -t series < <(grep -v '^\s*#' "$here/patches/series" | sed '/^\s*$/d')
hash=$( {
    stat -c '%n %s' "$TARBALL"
    for p in "${series[@]}"; do echo "$p"; cat "$here/patches/$p"; done
    cat "${fragments[@]}" "$here/build.sh"
} | sha256sum | cut -c1-16)
image="$OUT/bzImage-$hash"
selftest="$OUT/stord_read_hook-$hash"
publish() {
    ln -sfn "bzImage-$hash" "$OUT/bzImage"
    ln -sfn "stord_read_hook-$hash" "$OUT/stord_read_hook"
}
if [ -s "$image" ] && [ -x "$selftest" ]; then
    publish
    echo "build.sh: cached $image"
    exit 0
fi

src="$OUT/src"
obj="$OUT/obj"
if [ ! -f "$src/Makefile" ]; then
    echo "build.sh: extracting $TARBALL" >&2
    rm -rf "$src" "$OUT/linux-source-6.12"
    tar -C "$OUT" -xf "$TARBALL"
    mv "$OUT/linux-source-6.12" "$src"
fi

# Swap the applied series: reverse what the tree carries, then apply ours. An identical
# series stays as it is, so unchanged files keep their mtimes and nothing rebuilds.
applied="$src/.stord-applied"
same=1
[ -d "$applied" ] && [ "$(cat "$applied/series")" = "$(printf '%s\n' "${series[@]}")" ] || same=0
if [ "$same" = 1 ]; then
    for p in "${series[@]}"; do cmp -s "$applied/$p" "$here/patches/$p" || same=0; done
fi
if [ "$same" = 1 ]; then
    :
elif [ -d "$applied" ]; then
    mapfile -t old < <(cat "$applied/series")
    for ((i=${#old[@]}-1; i>=0; i--)); do
        patch -d "$src" -p1 -R -s -f --no-backup-if-mismatch < "$applied/${old[i]}"
    done
    rm -rf "$applied"
fi
if [ "$same" = 0 ]; then
    mkdir -p "$applied"
    : > "$applied/series"
    for p in "${series[@]}"; do
        patch -d "$src" -p1 -s -f --no-backup-if-mismatch < "$here/patches/$p"
        cp "$here/patches/$p" "$applied/$p"
        echo "$p" >> "$applied/series"
    done
fi

mkdir -p "$obj"
kmake() { nice -n 10 make -C "$src" O="$obj" -j"$JOBS" "$@"; }
kmake -s tinyconfig
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" >/dev/null
kmake -s olddefconfig
# tinyconfig silently drops options whose dependencies are unmet: fail on any we asked for.
bad=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    grep -qxF "$line" "$obj/.config" || { echo "build.sh: $line did not survive olddefconfig" >&2; bad=1; }
done < <(cat "${fragments[@]}")
[ "$bad" = 0 ] || exit 1

kmake bzImage
kmake -s headers
# the selftest from the series, static so the guest needs nothing but the binary
gcc -O2 -Wall -static -isystem "$obj/usr/include" -o "$selftest.tmp" \
    "$src/tools/testing/selftests/stord/stord_read_hook.c"
mv "$selftest.tmp" "$selftest"
cp "$obj/arch/x86/boot/bzImage" "$image.tmp"
mv "$image.tmp" "$image"
publish
echo "build.sh: built $image"
