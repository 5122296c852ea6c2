//! Generates the exports of every driver function this library does not implement (each
//! returns CUDA_ERROR_NOT_SUPPORTED and is logged once) and the table of every export's address
//! that cuGetProcAddress answers from. The list of functions is NVIDIA's driver's own
//! (`data/driver-exports.txt`, from `gen/driver-table.sh` on the GPU host); a function counts as
//! implemented when a source file under `src/` defines `extern "C" fn <name>(` or invokes a
//! macro with it as the first argument (`name!(cuXxx, …)`; `vgpu-exports`).

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let list = root.join("data/driver-exports.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-changed=src");
    // The installed name programs load; the file itself is libvgpucuda.so (see Cargo.toml).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");

    let exports = vgpu_exports::export_list(&list);
    let done = vgpu_exports::implemented(&root.join("src"), &["cu"]);
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
