//! Generates the exports of every NVML function this library does not implement: each returns
//! NVML_ERROR_NOT_SUPPORTED and is logged once, so that a program's dlsym of any NVML 13 name
//! succeeds. The list of functions is NVML 13's own (`data/nvml-exports.txt`, from
//! `gen/nvml-exports.sh` and NVIDIA's nvml.h); a function counts as implemented when a source
//! file under `src/` defines `extern "C" fn <name>(`.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let list = root.join("data/nvml-exports.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-changed=src");
    // The installed name programs load; the file itself is libvgpunvml.so (see Cargo.toml).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");

    let exports = vgpu_exports::export_list(&list);
    let done = vgpu_exports::implemented(&root.join("src"), &[]);
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
