//! Brings the built-in kernels' CUDA C (`crates/vgpu-mediator/kernels/builtins.cu`, the code the
//! cuda backend runs) into `OUT_DIR`, so that `vgpu-bench gpu` compiles exactly the same source
//! for its native side. Where the file does not exist (yet), an empty copy is written and the
//! benchmark says so at run time (or takes `--kernels-cu FILE`).

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let src = manifest.join("../vgpu-mediator/kernels/builtins.cu");
    // A missing file would make cargo rerun this (and rebuild the crate) on every build: until
    // the file exists, watch the crate that will hold it instead.
    let watch = if src.exists() {
        src.clone()
    } else {
        manifest.join("../vgpu-mediator")
    };
    println!("cargo:rerun-if-changed={}", watch.display());
    let text = std::fs::read_to_string(&src).unwrap_or_default();
    std::fs::write(out.join("builtins.cu"), text).expect("writing OUT_DIR/builtins.cu");
}
