//! The guest initramfs: a newc cpio archive (written here, no external tool) holding a static
//! busybox, the guest binary, the kernel modules to load (VFIO, for MSI-X completion
//! interrupts), a static `ldconfig` and an `/init` script that loads the modules, runs the guest
//! binary (or the programs `vgpu.run=` names) and powers the VM off.
//!
//! Images with CUDA programs append a second archive made by `scripts/guest-image.sh` (vgpu's
//! `libcuda.so.1` in the default library directory, the programs, their libraries, the loader's
//! configuration and cache): the kernel unpacks concatenated archives in order ([`append`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{deps, elf};

/// Printed by `/init` as soon as it runs.
pub const INIT_MARKER: &str = "vgpu-guest: init";
/// Printed by `/init` after the guest binary returned: `vgpu-guest: exit=<code>`.
pub const EXIT_MARKER: &str = "vgpu-guest: exit=";

/// busybox applets linked into `/bin`.
const APPLETS: &[&str] = &[
    "sh", "ash", "mount", "umount", "mkdir", "poweroff", "reboot", "cat", "echo", "sleep", "ls",
    "tr", "dmesg", "grep", "sed", "head", "tail", "hexdump", "dd", "ps", "uname", "lspci", "env",
    "true", "false", "test", "[", "insmod", "readlink",
];

/// Printed by `/init` when `vgpu.then=hold` keeps the VM running after the guest binary.
pub const HOLD_MARKER: &str = "vgpu-guest: holding";
/// Printed by `/init` before each `libcuda` entry of the image's loader cache.
pub const LDCACHE_MARKER: &str = "vgpu-guest: ld.so.cache: ";
/// Printed by `/init` after the programs: `vgpu-guest: vGPU <pci address> driver=<driver>`
/// (`vfio-pci` once a program reached the device through VFIO, `none` if none bound it).
pub const VGPU_DRIVER_MARKER: &str = "vgpu-guest: vGPU ";

/// `/init`. The program to run comes from `vgpu.run=` on the kernel command line (several,
/// comma-separated, run one after the other; default `/bin/vgpu-smi`), its arguments from
/// `vgpu.args=` with commas standing for spaces (`vgpu.args=selftest,--verbose`; the default is
/// `selftest` for vgpu-smi, none for other programs). Each program's end is printed as
/// `vgpu-guest: <name> exit=<code>`, then the first non-zero code (or 0) as
/// `vgpu-guest: exit=<code>` (before it, the vGPU's PCI driver: [`VGPU_DRIVER_MARKER`]).
/// `vgpu.then=hold` keeps the VM (and its vGPU connection) up
/// afterwards instead of powering off, for a test that destroys it from outside (libvirt's
/// `virsh destroy`). An image with a loader configuration (`/etc/ld.so.conf`, from
/// `scripts/guest-image.sh`) gets its cache checked: made by `ldconfig` here when the image
/// came without one, and its `libcuda` entries printed as `vgpu-guest: ld.so.cache: ...`.
const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "vgpu-guest: init"
n=0
for m in /lib/modules/*.ko; do
  [ -e "$m" ] || continue
  if insmod "$m"; then n=$((n+1)); else echo "vgpu-guest: insmod $m failed"; fi
done
[ "$n" -gt 0 ] && echo "vgpu-guest: loaded $n kernel modules"
if [ -e /etc/ld.so.conf ] && [ -x /sbin/ldconfig ]; then
  if [ ! -e /etc/ld.so.cache ]; then
    echo "vgpu-guest: no ld.so.cache in the image: running ldconfig"
    ldconfig
  fi
  ldconfig -p | grep 'libcuda[.]so' | sed 's/^[[:space:]]*/vgpu-guest: ld.so.cache: /'
fi
run=/bin/vgpu-smi
args=
args_given=0
then=poweroff
for w in $(cat /proc/cmdline); do
  case "$w" in
    vgpu.run=*) run=$(echo "${w#vgpu.run=}" | tr , ' ') ;;
    vgpu.args=*) args=$(echo "${w#vgpu.args=}" | tr , ' '); args_given=1 ;;
    vgpu.then=*) then="${w#vgpu.then=}" ;;
  esac
done
if [ "$args_given" = 0 ] && [ "$run" = /bin/vgpu-smi ]; then
  args=selftest
fi
code=0
for p in $run; do
  if [ -x "$p" ]; then
    echo "vgpu-guest: running ${p##*/} $args"
    "$p" $args
    c=$?
  else
    echo "vgpu-guest: no $p in this initramfs"
    c=127
  fi
  echo "vgpu-guest: ${p##*/} exit=$c"
  [ "$code" = 0 ] && code=$c
done
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] && [ "$(cat "$d/device" 2>/dev/null)" = 0x1110 ] || continue
  drv=none
  [ -e "$d/driver" ] && drv=$(readlink "$d/driver") && drv=${drv##*/}
  echo "vgpu-guest: vGPU ${d##*/} driver=$drv"
done
echo "vgpu-guest: exit=$code"
if [ "$then" = hold ]; then
  echo "vgpu-guest: holding (vgpu.then=hold)"
  while :; do sleep 3600; done
fi
poweroff -f
"#;

/// Builds the initramfs at `out` with `guest_bin` as `/bin/vgpu-smi` (none: busybox only),
/// `modules` (loaded by `/init` in this order) and a static `ldconfig` as `/sbin/ldconfig`
/// (for images that get CUDA programs appended). The file is rewritten only when its content
/// changed (so it follows the guest binary).
pub fn build(guest_bin: Option<&Path>, modules: &[PathBuf], out: &Path) -> Result<PathBuf> {
    let busybox = deps::busybox();
    if !elf::is_static(&busybox).with_context(|| format!("checking {}", busybox.display()))? {
        bail!(
            "{} is not statically linked: install busybox-static",
            busybox.display()
        );
    }
    let ldconfig = deps::static_ldconfig()?;
    let mut a = Archive::default();
    for dir in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "lib",
        "lib/modules",
    ] {
        a.dir(dir);
    }
    for (i, m) in modules.iter().enumerate() {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The index keeps the given order whatever the names.
        a.file(&format!("lib/modules/{i:02}-{name}"), 0o644, &read(m)?);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.char_dev("dev/null", 0o666, 1, 3);
    a.file("bin/busybox", 0o755, &read(&busybox)?);
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    if let Some(bin) = guest_bin {
        if !elf::is_static(bin)? {
            bail!(
                "{} is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\"",
                bin.display()
            );
        }
        a.file("bin/vgpu-smi", 0o755, &read(bin)?);
    }
    a.file("sbin/ldconfig", 0o755, &read(&ldconfig)?);
    a.file("init", 0o755, INIT_SCRIPT.as_bytes());
    write_if_changed(&a.finish(), out)?;
    Ok(out.to_path_buf())
}

/// Writes `base` followed by each of `layers` (cpio archives, e.g. from
/// `scripts/guest-image.sh`) to `out`: the kernel unpacks concatenated archives in order, a
/// later member replacing an earlier one of the same name.
pub fn append(base: &Path, layers: &[&Path], out: &Path) -> Result<PathBuf> {
    let mut bytes = read(base)?;
    for layer in layers {
        // Each archive starts 4-byte aligned (newc's alignment); both writers pad their ends.
        if bytes.len() % 4 != 0 {
            bail!("{} does not end 4-byte aligned", base.display());
        }
        let data = read(layer)?;
        if !data.starts_with(b"070701") {
            bail!("{} is not a newc cpio archive", layer.display());
        }
        bytes.extend_from_slice(&data);
    }
    write_if_changed(&bytes, out)?;
    Ok(out.to_path_buf())
}

fn write_if_changed(bytes: &[u8], out: &Path) -> Result<()> {
    if std::fs::read(out).ok().as_deref() != Some(bytes) {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, out)?;
    }
    Ok(())
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A newc ("070701") cpio archive being written.
#[derive(Default)]
struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs member over 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("name length"),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_prints_the_markers() {
        for marker in [
            INIT_MARKER,
            EXIT_MARKER,
            HOLD_MARKER,
            LDCACHE_MARKER.trim_end(),
            VGPU_DRIVER_MARKER.trim_end(),
        ] {
            assert!(INIT_SCRIPT.contains(marker), "{marker:?}");
        }
    }

    #[test]
    fn append_concatenates_archives() {
        let d = std::env::temp_dir().join(format!("xtask-append-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut a = Archive::default();
        a.file("init", 0o755, b"a");
        let base = a.finish();
        let mut b = Archive::default();
        b.file("usr/bin/x", 0o755, b"bb");
        let layer = b.finish();
        std::fs::write(d.join("base"), &base).unwrap();
        std::fs::write(d.join("layer"), &layer).unwrap();
        append(&d.join("base"), &[&d.join("layer")], &d.join("out")).unwrap();
        assert_eq!(
            std::fs::read(d.join("out")).unwrap(),
            [base, layer].concat()
        );
        std::fs::write(d.join("junk"), b"not cpio").unwrap();
        assert!(append(&d.join("base"), &[&d.join("junk")], &d.join("out2")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn newc_layout() {
        let mut a = Archive::default();
        a.file("init", 0o755, b"hello");
        let b = a.finish();
        assert_eq!(&b[..6], b"070701");
        // Header (110) + "init\0" (5) -> padded to 116, then 5 data bytes padded to 124.
        assert_eq!(&b[110..114], b"init");
        assert_eq!(&b[116..121], b"hello");
        assert_eq!(&b[124..130], b"070701");
        assert_eq!(b.len() % 4, 0);
        // File size field (7th field) is 5.
        assert_eq!(&b[6 + 6 * 8..6 + 7 * 8], b"00000005");
    }

    #[test]
    fn cpio_tool_reads_archive() {
        if deps::which(Path::new("cpio")).is_none() {
            return;
        }
        let mut a = Archive::default();
        a.dir("bin");
        a.file("bin/x", 0o755, b"abc");
        a.symlink("bin/y", "x");
        a.char_dev("console", 0o600, 5, 1);
        let bytes = a.finish();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("bin/x"), "{text}");
        assert!(text.contains("bin/y -> x"), "{text}");
        assert!(text.contains("console"), "{text}");
    }
}
