//! What the guest libraries' build scripts share (`vgpu-cuda`'s `libcuda.so.1`, `vgpu-nvml`'s
//! `libnvidia-ml.so.1`): the functions the real library exports, read from a checked-in list,
//! and the entry points a crate's sources define, so that each build script generates a stub
//! for every export the crate does not implement.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The names in an export list: one per line; blank lines and `#` comments skipped. Panics
/// (a build script's error) when the file cannot be read.
pub fn export_list(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The entry points the `.rs` files under `dir` define: each name after `extern "C" fn ` and
/// followed by `(`, and, for each `prefix` in `macro_prefixes`, the first argument of macro
/// invocations that define entry points, `name!(<prefix>Xxx, ...)`.
pub fn implemented(dir: &Path, macro_prefixes: &[&str]) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut done = BTreeSet::new();
    for f in &files {
        let s = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        names_after(&s, "extern \"C\" fn ", "", '(', &mut done);
        for p in macro_prefixes {
            names_after(&s, "!(", p, ',', &mut done);
        }
    }
    done
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Adds to `into` every identifier that follows `key` in `src`, starts with `prefix` and is
/// followed by `next`.
fn names_after(src: &str, key: &str, prefix: &str, next: char, into: &mut BTreeSet<String>) {
    let mut rest = src;
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name.starts_with(prefix) && rest[name.len()..].starts_with(next) {
            into.insert(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_and_macro_entry_points() {
        let mut got = BTreeSet::new();
        let src = "pub extern \"C\" fn cuInit(flags: u32) {}\n\
                   extern \"C\" fn helper_no_paren;\n\
                   launch_kernel!(cuLaunchKernel, false);\n\
                   other!(notcu, 1);\n";
        names_after(src, "extern \"C\" fn ", "", '(', &mut got);
        names_after(src, "!(", "cu", ',', &mut got);
        let want: BTreeSet<String> = ["cuInit", "cuLaunchKernel"].map(String::from).into();
        assert_eq!(got, want);
    }
}
