#!/usr/bin/env bash
# Builds a self-contained QEMU (x86-64 system emulator, TCG) from this Debian machine's
# packages, for a host that has no QEMU and no package registry (the GPU host: Ubuntu 24.04,
# glibc 2.39). glibc itself is not bundled: the target's (newer) glibc runs binaries built
# against Debian 12's glibc 2.36.
#
# Usage: scripts/qemu-bundle.sh [--tar|--tar-xz] [--check] [OUT_DIR]
#   OUT_DIR   where the bundle goes (default: $CARGO_TARGET_DIR or target/, then qemu-bundle)
#   --tar     also write OUT_DIR.tar.gz (about 15 MB; gzip is on every Linux) that unpacks to
#             a folder named like OUT_DIR
#   --tar-xz  the same as OUT_DIR.tar.xz (about 11 MB; the target needs xz)
#   --check   boot the bundle's QEMU once (firmware and modules of the system hidden from it)
#
# Layout of the bundle:
#   qemu                      wrapper: sets LD_LIBRARY_PATH and QEMU_MODULE_DIR, adds -L share
#   bin/qemu-system-x86_64
#   lib/                      every library ldd lists except glibc's own
#   modules/                  accel-tcg-x86_64.so (Debian builds TCG as a module)
#   share/                    firmware, for -L (what q35 + -kernel + -nic none reads)
#   MANIFEST                  versions and sizes
#
# Use it: VGPU_QEMU=OUT_DIR/qemu VGPU_QEMU_DATADIR=OUT_DIR/share cargo xtask vm-smoke
# Needs: qemu-system-x86 (cargo xtask deps installs it as root); xz for --tar.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
tar=0
check=0
out=""
for a in "$@"; do
  case "$a" in
    --tar) tar=gz ;;
    --tar-xz) tar=xz ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "qemu-bundle: unknown option $a" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
if [ -z "$out" ]; then
  out="${CARGO_TARGET_DIR:-$root/target}/qemu-bundle"
fi
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

qemu_bin=${QEMU_BIN:-/usr/bin/qemu-system-x86_64}
module_src=/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
# Where Debian puts the firmware QEMU looks up by name (seabios, qemu's own, ipxe).
fw_dirs=(/usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu)
# What q35 reads when booting -kernel/-initrd with -nic none and -display none
# (checked with --check, which hides the system's copies).
firmware=(bios-256k.bin kvmvapic.bin linuxboot_dma.bin vgabios-stdvga.bin)

die() { echo "qemu-bundle: $*" >&2; exit 1; }

[ -x "$qemu_bin" ] || die "$qemu_bin not found: install qemu-system-x86 (cargo xtask deps, as root)"
[ -f "$module_src" ] || die "$module_src not found (qemu-system-x86 incomplete?)"
command -v ldd >/dev/null || die "ldd not found"

# glibc's own libraries stay out: the target's glibc provides them.
is_glibc() {
  case "$1" in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*.so.*|linux-vdso.so.*|\
    libresolv.so.*|libutil.so.*|libanl.so.*|libnsl.so.*|libmvec.so.*) return 0 ;;
    *) return 1 ;;
  esac
}

find_fw() {
  local d
  for d in "${fw_dirs[@]}"; do
    if [ -e "$d/$1" ]; then
      echo "$d/$1"
      return 0
    fi
  done
  return 1
}

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/modules" "$out/share"
cp -L "$qemu_bin" "$out/bin/qemu-system-x86_64"
cp -L "$module_src" "$out/modules/"

n_libs=0
while read -r name path; do
  name=${name##*/}
  is_glibc "$name" && continue
  [ -n "$path" ] && [ -f "$path" ] || die "ldd cannot resolve $name (ldd output: $name $path)"
  cp -L "$path" "$out/lib/$name"
  n_libs=$((n_libs + 1))
done < <( { ldd "$qemu_bin"; ldd "$module_src"; } \
  | awk '$2 == "=>" { print $1, $3; next } { print $1, "" }' | sort -u)

for f in "${firmware[@]}"; do
  src=$(find_fw "$f") || die "firmware $f not found in ${fw_dirs[*]}"
  cp -L "$src" "$out/share/$f"
done

# Debug info is not needed on the GPU host; shrink what strip can shrink.
if command -v strip >/dev/null; then
  strip --strip-unneeded "$out/bin/qemu-system-x86_64" "$out/modules/"*.so "$out/lib/"* 2>/dev/null || true
fi

cat >"$out/qemu" <<'EOF'
#!/bin/sh
# QEMU from the bundle beside this script: its libraries, its TCG module, its firmware.
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
QEMU_MODULE_DIR="$here/modules"
export LD_LIBRARY_PATH QEMU_MODULE_DIR
exec "$here/bin/qemu-system-x86_64" -L "$here/share" "$@"
EOF
chmod 755 "$out/qemu"

version=$("$out/qemu" --version | head -n1)
{
  echo "bundle of: $version"
  echo "built on: $(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(ldd --version | head -n1 | awk '{print $NF}')"
  echo "package: $(dpkg-query -W -f='${Package} ${Version}' qemu-system-x86 2>/dev/null || echo unknown)"
  echo "libraries ($n_libs):"
  (cd "$out/lib" && ls -1 | sed 's/^/  /')
  echo "firmware: ${firmware[*]}"
  echo "module: $(basename "$module_src")"
} >"$out/MANIFEST"

# Every library the binary needs must now resolve inside the bundle (or to glibc).
missing=$(LD_LIBRARY_PATH="$out/lib" ldd "$out/bin/qemu-system-x86_64" | awk '
  $2 == "=>" && $3 == "not" { print $1; next }
  $2 == "=>" && index($3, "'"$out"'/lib/") != 1 { print $1 " -> " $3 }' \
  | while read -r l; do l0=${l%% *}; is_glibc "${l0##*/}" || echo "$l"; done)
[ -z "$missing" ] || die "libraries resolving outside the bundle: $missing"

echo "qemu-bundle: $out ($(du -sh "$out" | cut -f1), $n_libs libraries): $version"

if [ "$check" = 1 ]; then
  # Boot the firmware up to a kernel-less halt with the system's QEMU data, firmware and
  # modules hidden (a private mount namespace, root only), as on the GPU host.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cmd=("$out/qemu" -accel tcg -machine q35 -m 64M -display none -monitor none -serial none
       -nic none -no-reboot -S -qmp "unix:$tmp/qmp,server=on,wait=off")
  hide='mount -t tmpfs none /usr/share/qemu; mount -t tmpfs none /usr/share/seabios;
        mount -t tmpfs none /usr/lib/x86_64-linux-gnu/qemu; [ -d /usr/lib/ipxe ] && mount -t tmpfs none /usr/lib/ipxe;'
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
    run=(unshare -m sh -c "$hide exec timeout 5 \"\$@\"" sh "${cmd[@]}")
  else
    echo "qemu-bundle: --check without root: system firmware is not hidden" >&2
    run=(timeout 5 "${cmd[@]}")
  fi
  set +e
  "${run[@]}" >"$tmp/log" 2>&1
  rc=$?
  set -e
  # timeout's 124 = QEMU was still running (set up the machine, loaded the firmware).
  if [ "$rc" != 124 ]; then
    cat "$tmp/log" >&2
    die "bundle check failed: QEMU exited with $rc"
  fi
  echo "qemu-bundle: check OK (q35 machine created with only the bundle's files)"
fi

if [ "$tar" != 0 ]; then
  case "$tar" in
    gz) zip=(gzip -9) ;;
    xz) zip=(xz -T0 -6) ;;
  esac
  command -v "${zip[0]}" >/dev/null || die "${zip[0]} not found"
  file="$out.tar.$tar"
  tar -C "$(dirname "$out")" -cf - "$(basename "$out")" | "${zip[@]}" >"$file.tmp"
  mv "$file.tmp" "$file"
  echo "qemu-bundle: $file ($(du -h "$file" | cut -f1))"
fi
