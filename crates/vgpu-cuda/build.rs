//! Generates the exports of every driver function this library does not implement (each
//! returns CUDA_ERROR_NOT_SUPPORTED and is logged once) and the table of every export's address
//! that cuGetProcAddress answers from. The list of functions is NVIDIA's driver's own
//! (`data/driver-exports.txt`, from `gen/driver-table.sh` on the GPU host); a function counts as
//! implemented when a source file under `src/` defines `extern "C" fn <name>(`.

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

/// Names after `extern "C" fn ` in `src`, and the first argument of macro invocations that
/// define entry points (`name!(cuXxx, ...)`).
fn implemented(src: &str, into: &mut BTreeSet<String>) {
    for (key, next) in [("extern \"C\" fn ", '('), ("!(cu", ',')] {
        let mut rest = src;
        while let Some(i) = rest.find(key) {
            // The macro pattern's "cu" belongs to the name.
            let skip = if key.ends_with("cu") {
                key.len() - 2
            } else {
                key.len()
            };
            rest = &rest[i + skip..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && rest[name.len()..].starts_with(next) {
                into.insert(name);
            }
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let list = root.join("data/driver-exports.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-changed=src");
    // The installed name programs load; the file itself is libvgpucuda.so (see Cargo.toml).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");

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
        extra.iter().all(|n| !n.starts_with("cu")),
        "implemented functions the driver does not export: {extra:?}"
    );

    let mut stubs = String::new();
    // The table names every export through an extern declaration of its symbol, so that it
    // needs no knowledge of which module defines it or with which signature.
    let mut decls = String::from("unsafe extern \"C\" {\n");
    let mut table = format!(
        "pub(crate) static EXPORTS: [(&str, Export); {}] = [\n",
        exports.len()
    );
    for name in &exports {
        if !done.contains(name) {
            writeln!(
                stubs,
                "#[no_mangle]\npub extern \"C\" fn {name}() -> CUresult {{ \
                 crate::unsupported::report(\"{name}\") }}"
            )
            .expect("write");
        }
        writeln!(decls, "    fn {name}();").expect("write");
        writeln!(table, "    ({name:?}, {name}),").expect("write");
    }
    decls.push_str("}\n");
    table.push_str("];\n");
    let table = decls + &table;
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    std::fs::write(out.join("stubs.rs"), stubs).expect("writing stubs.rs");
    std::fs::write(out.join("export_table.rs"), table).expect("writing export_table.rs");
}
