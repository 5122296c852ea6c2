//! Just enough ELF parsing to tell whether an executable is statically linked.

use std::path::Path;

use anyhow::{bail, Context, Result};

const PT_INTERP: u32 = 3;

/// True when the 64-bit little-endian ELF file has no program interpreter (`PT_INTERP`), i.e. it
/// runs in an initramfs without a dynamic loader. Static-PIE binaries (Rust's `+crt-static` on
/// glibc) have a `PT_DYNAMIC` segment but no interpreter, so they count as static.
pub fn is_static(path: &Path) -> Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    is_static_bytes(&bytes).with_context(|| format!("parsing ELF {}", path.display()))
}

fn is_static_bytes(b: &[u8]) -> Result<bool> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if b[4] != 2 || b[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into()?) as usize;
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(ph) = b.get(off..off + 4) else {
            bail!("truncated program header table");
        };
        let p_type = u32::from_le_bytes(ph.try_into()?);
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert!(is_static_bytes(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn dynamic_binary_is_not_static() {
        // The test binary itself is dynamically linked on a default glibc target.
        let exe = std::env::current_exe().unwrap();
        if cfg!(target_env = "gnu") && !cfg!(target_feature = "crt-static") {
            assert!(!is_static(&exe).unwrap());
        }
    }
}
