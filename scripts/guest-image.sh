#!/usr/bin/env bash
# Installs vgpu's CUDA driver (and NVML) and CUDA programs into a VM guest image, as a distribution's image
# would have them, and writes that as a newc cpio archive to append to the guest's initramfs
# (the kernel unpacks concatenated archives in order; `cargo xtask`'s initramfs carries busybox,
# /init, the VFIO modules and a static ldconfig).
#
# Usage: guest-image.sh --libcuda LIB [--libnvml NVML] --out LAYER.cpio PROGRAM...
#
# The archive holds:
#   /usr/lib/x86_64-linux-gnu/libcuda.so.1   LIB (vgpu's libvgpucuda.so, SONAME libcuda.so.1)
#   /usr/lib/x86_64-linux-gnu/libcuda.so     -> libcuda.so.1
#   /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1  NVML (vgpu's libvgpunvml.so, SONAME
#                                            libnvidia-ml.so.1), with --libnvml
#   /usr/lib/x86_64-linux-gnu/libnvidia-ml.so    -> libnvidia-ml.so.1, with --libnvml
#   /usr/bin/NAME                            each PROGRAM
#   each library `ldd PROGRAM` lists, at the path ldd resolved it to on this machine (the
#   dynamic loader, libstdc++, libgcc_s, libc, libm, libcudart.so.13 of `-cudart shared` ...),
#   except libcuda.so.1 and libnvidia-ml.so.1: the programs get ours
#   /etc/ld.so.conf, /etc/ld.so.conf.d/      Debian's and Ubuntu's multiarch directories, plus
#                                            any other directory a library came from
#   /etc/ld.so.cache                         `ldconfig -r` over the image: a program finds
#                                            libcuda.so.1 (and libnvidia-ml.so.1) with no
#                                            LD_LIBRARY_PATH
# The libraries come from this machine: build the programs here (their libraries must be the
# ones they were linked against). Where ldconfig cannot chroot (not root, no user namespaces)
# the image has no cache and the guest's /init runs ldconfig at boot instead.
#
# Needs: ldd, ldconfig, python3 (writes the archive).
set -euo pipefail

die() { echo "guest-image: $*" >&2; exit 1; }

libcuda=""
libnvml=""
out=""
programs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --libcuda) libcuda=${2:-}; shift 2 || die "--libcuda needs a value" ;;
    --libnvml) libnvml=${2:-}; shift 2 || die "--libnvml needs a value" ;;
    --out) out=${2:-}; shift 2 || die "--out needs a value" ;;
    -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) programs+=("$1"); shift ;;
  esac
done
[ -n "$libcuda" ] && [ -f "$libcuda" ] || die "--libcuda LIB: no such file: '$libcuda'"
[ -z "$libnvml" ] || [ -f "$libnvml" ] || die "--libnvml NVML: no such file: '$libnvml'"
[ -n "$out" ] || die "--out LAYER.cpio is required"
[ ${#programs[@]} -gt 0 ] || die "no PROGRAM given"
command -v ldd >/dev/null || die "ldd not found"
command -v python3 >/dev/null || die "python3 not found (it writes the archive)"
ldconfig=$(command -v ldconfig || command -v /sbin/ldconfig || true)
[ -n "$ldconfig" ] || die "ldconfig not found"

# The multiarch library directory of Debian and Ubuntu: in the dynamic loader's default search
# path there (no cache needed for it), and what `ldconfig` lists.
libdir=/usr/lib/x86_64-linux-gnu
default_dirs=" /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64 /lib /usr/lib "

stage=$(mktemp -d "${TMPDIR:-/tmp}/vgpu-guest-image.XXXXXX")
errs=$(mktemp "${TMPDIR:-/tmp}/vgpu-guest-image.XXXXXX")
trap 'rm -rf "$stage" "$errs"' EXIT
mkdir -p "$stage$libdir" "$stage/usr/bin" "$stage/etc/ld.so.conf.d"

# The driver, as the distribution's NVIDIA driver package installs libcuda.
install -m 0755 "$libcuda" "$stage$libdir/libcuda.so.1"
ln -s libcuda.so.1 "$stage$libdir/libcuda.so"
# NVML, as the driver package installs it: frameworks open libnvidia-ml.so.1 by name.
if [ -n "$libnvml" ]; then
  install -m 0755 "$libnvml" "$stage$libdir/libnvidia-ml.so.1"
  ln -s libnvidia-ml.so.1 "$stage$libdir/libnvidia-ml.so"
fi

extra_dirs=()
add_lib() { # PATH: the library at the path ldd resolved it to
  local path=$1 dir
  [ -e "$stage$path" ] && return 0
  [ -f "$path" ] || die "ldd named $path, which is not a file"
  dir=$(dirname "$path")
  mkdir -p "$stage$dir"
  cp -L "$path" "$stage$path"
  case "$default_dirs" in
    *" $dir "*) ;;
    *) case " ${extra_dirs[*]} " in *" $dir "*) ;; *) extra_dirs+=("$dir") ;; esac ;;
  esac
}

for prog in "${programs[@]}"; do
  [ -f "$prog" ] && [ -x "$prog" ] || die "$prog is not an executable file"
  name=$(basename "$prog")
  [ -e "$stage/usr/bin/$name" ] && die "two programs named $name"
  install -m 0755 "$prog" "$stage/usr/bin/$name"
  if ! deps=$(ldd "$prog" 2>&1); then
    case "$deps" in
      *"not a dynamic executable"*|*"statically linked"*) continue ;;
      *) die "ldd $prog failed: $deps" ;;
    esac
  fi
  while read -r line; do
    case "$line" in
      libcuda.so*|libnvidia-ml.so*) ;; # the driver and NVML: ours, whatever this machine has
      *"=> not found"*) die "$prog needs ${line%% *}, which ldd does not find here" ;;
      *"=> /"*) path=${line#*=> }; add_lib "${path%% (*}" ;;
      /*) add_lib "${line%% (*}" ;; # the dynamic loader
      *) ;; # linux-vdso.so.1 (the kernel's)
    esac
  done <<<"$deps"
done

# The loader's configuration as Debian's and Ubuntu's libc6 ship it, plus the other directories.
printf 'include /etc/ld.so.conf.d/*.conf\n' >"$stage/etc/ld.so.conf"
printf '# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' \
  >"$stage/etc/ld.so.conf.d/x86_64-linux-gnu.conf"
if [ ${#extra_dirs[@]} -gt 0 ]; then
  printf '%s\n' "${extra_dirs[@]}" >"$stage/etc/ld.so.conf.d/vgpu-programs.conf"
fi

# The cache, as a package's postinst makes it: ldconfig chroots into the image.
if "$ldconfig" -r "$stage" 2>"$errs" ||
  { command -v unshare >/dev/null && unshare -r "$ldconfig" -r "$stage" 2>>"$errs"; }; then
  cache=$("$ldconfig" -p -C "$stage/etc/ld.so.cache")
  entry=$(grep -m1 "libcuda\.so\.1 .*=> $libdir/libcuda\.so\.1\$" <<<"$cache") ||
    die "the image's ld.so.cache has no libcuda.so.1 => $libdir/libcuda.so.1:"$'\n'"$cache"
  echo "guest-image: ld.so.cache: $(echo $entry) ($(head -n1 <<<"$cache"))"
  if [ -n "$libnvml" ]; then
    grep -q "libnvidia-ml\.so\.1 .*=> $libdir/libnvidia-ml\.so\.1\$" <<<"$cache" ||
      die "the image's ld.so.cache has no libnvidia-ml.so.1 => $libdir/libnvidia-ml.so.1:"$'\n'"$cache"
  fi
else
  echo "guest-image: WARNING: ldconfig -r failed here ($(tr '\n' ' ' <"$errs")): no ld.so.cache in the image, the guest runs ldconfig at boot" >&2
  rm -f "$stage/etc/ld.so.cache"
fi

# The archive: newc, owner root, mtime 0, parents before their contents.
python3 - "$stage" "$out" <<'PY'
import os, stat, sys

root, out = sys.argv[1], sys.argv[2]
buf = bytearray()
ino = 1 << 20  # apart from the base archive's numbers (only hard links would use them)


def pad():
    buf.extend(b"\0" * (-len(buf) % 4))


def entry(name, mode, data):
    global ino
    ino += 1
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    buf.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
    buf.extend(name.encode() + b"\0")
    pad()
    buf.extend(data)
    pad()


def walk(rel):
    for name in sorted(os.listdir(os.path.join(root, rel))):
        r = os.path.join(rel, name) if rel else name
        p = os.path.join(root, r)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            entry(r, stat.S_IFLNK | 0o777, os.readlink(p).encode())
        elif stat.S_ISDIR(st.st_mode):
            entry(r, stat.S_IFDIR | 0o755, b"")
            walk(r)
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                entry(r, stat.S_IFREG | stat.S_IMODE(st.st_mode), f.read())
        else:
            sys.exit(f"guest-image: {r}: not a file, directory or link")


walk("")
buf.extend(b"070701" + b"".join(b"%08X" % f for f in [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0]))
buf.extend(b"TRAILER!!!\0")
pad()
with open(out + ".tmp", "wb") as f:
    f.write(buf)
os.replace(out + ".tmp", out)
PY
echo "guest-image: $out: $(du -k "$out" | cut -f1) KiB: libcuda.so.1${libnvml:+, libnvidia-ml.so.1}, ${#programs[@]} program(s), $(find "$stage" -name '*.so*' -type f | wc -l) libraries${extra_dirs:+, ld.so.conf.d: ${extra_dirs[*]}}"
