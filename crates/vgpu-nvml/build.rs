//! Generates the exports of every NVML function this library does not implement: each returns
//! NVML_ERROR_NOT_SUPPORTED and is logged once, so that a program's dlsym of any NVML 13 name
//! succeeds. The list of functions is NVML 13's own (`data/nvml-exports.txt`, from
//! `gen/nvml-exports.sh` and NVIDIA's nvml.h); a function counts as implemented when a source
//! file under `src/` defines `extern "C" fn <name>(`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

/// Names after `extern "C" fn ` in `src`.
fn implemented(src: &str, into: &mut BTreeSet<String>) {
    let key = "extern \"C\" fn ";
    let mut rest = src;
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with('(') {
            into.insert(name);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let list = root.join("data/nvml-exports.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-changed=src");
    // The installed name programs load; the file itself is libvgpunvml.so (see Cargo.toml).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");

    let exports: BTreeSet<String> = std::fs::read_to_string(&list)
        .unwrap_or_else(|e| panic!("reading {}: {e}", list.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();

    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut done = BTreeSet::new();
    for f in &files {
        let s = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        implemented(&s, &mut done);
    }
    let extra: Vec<_> = done.difference(&exports).collect();
    assert!(
        extra.iter().all(|n| !n.starts_with("nvml")),
        "implemented functions NVML does not export: {extra:?}"
    );

    let mut stubs = String::new();
    let mut names = format!("pub(crate) static NAMES: [&str; {}] = [\n", exports.len());
    for name in &exports {
        if !done.contains(name) {
            writeln!(
                stubs,
                "#[no_mangle]\npub extern \"C\" fn {name}() -> NvmlReturn {{ \
                 crate::unsupported::report(\"{name}\") }}"
            )
            .expect("write");
        }
        writeln!(names, "    {name:?},").expect("write");
    }
    names.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    std::fs::write(out.join("stubs.rs"), stubs).expect("writing stubs.rs");
    std::fs::write(out.join("names.rs"), names).expect("writing names.rs");
}
