//! Prints what vgpu-cubin finds in image files (fatbin, cubin or PTX): a developer's look at
//! what the guest driver and vgpud will see.
//!
//! `cargo run -p vgpu-cubin --example cubin-dump -- FILE... [--arch 90]`

use vgpu_cubin::{image_len, Fatbin, Image};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let arch = match args.iter().position(|a| a == "--arch") {
        Some(i) if i + 1 < args.len() => {
            let arch = args.remove(i + 1);
            args.remove(i);
            Some(
                arch.parse::<u32>()
                    .expect("--arch takes a number such as 90"),
            )
        }
        _ => None,
    };
    for path in args {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        println!(
            "{path}: {} bytes, image_len {:?}",
            bytes.len(),
            image_len(&bytes)
        );
        if let Ok(f) = Fatbin::parse(&bytes) {
            for e in &f.entries {
                println!(
                    "  entry @{:#x}: {:?} arch {} {:?} flags {:#x}, {} bytes stored, {} uncompressed",
                    e.offset,
                    e.kind,
                    e.arch,
                    e.compression,
                    e.flags,
                    e.payload.len(),
                    e.uncompressed_size
                );
            }
        }
        let image = match Image::parse(&bytes) {
            Ok(i) => i,
            Err(e) => {
                println!("  error: {e}");
                continue;
            }
        };
        for m in &image.modules {
            println!(
                "  module {:?}: {} kernels, {} globals",
                m.source,
                m.kernels.len(),
                m.globals.len()
            );
        }
        if let Some(arch) = arch {
            println!(
                "  for sm_{arch}: {:?}",
                image.for_arch(arch).map(|m| m.source)
            );
        }
        for k in &image.kernels {
            let params: Vec<String> = k
                .params
                .iter()
                .map(|p| format!("{}+{}", p.offset, p.size))
                .collect();
            println!(
                "  kernel {} ({} bytes: {})",
                k.name,
                k.param_size,
                params.join(", ")
            );
        }
        for g in &image.globals {
            let managed = if g.managed { " managed" } else { "" };
            println!(
                "  global {} {:?}{managed}, {} bytes",
                g.name, g.space, g.size
            );
        }
    }
}
