//! The layer order of vgpu-mediator's modules, and the test that holds the source to it
//! (compiled for tests only).
//!
//! Lowest first; a module may name (`crate::…`, in code, not in comments) only modules of a
//! lower layer. Modules of one layer do not use each other. `main.rs` (the binary) sits above
//! them all and wires them together. See `docs/architecture.md`, "Module layout".
//!
//! The data flows transport → channel → scheduler → executor → backend, but the executor owns
//! the channels and the scheduler and drives the backend, so in the layer order it is above
//! them; the transport's pieces (the shared region, eventfd notification, the `Setup` it
//! hands over) are used by the layers above it and use none of them.

/// The layers, lowest first.
const LAYERS: &[&[&str]] = &[
    // Plain data and helpers: the configuration, log throttling, pool memory quotas, the
    // systemd readiness protocol.
    &["config", "throttle", "quota", "sd_notify", "deadline_io"],
    // Socket permissions; per-VM and per-pool counters.
    &["access", "stats"],
    // The front doors: the ivshmem server for VMs (and its shared region and notification),
    // the admin socket for operators, the metrics endpoint for Prometheus.
    &["transport", "admin", "metrics"],
    // The devices.
    &["backend"],
    // A VM's device state and checks; the work-queue seam (`Job`, `Gate`, `WorkQueue`).
    &["device", "queue"],
    // A VM's rings; the scheduler (what one device runs next).
    &["channel", "sched"],
    // One per device: owns the channels and the scheduler, drives the backend.
    &["executor"],
    // Places VMs on devices and forwards events and reloads to the executors.
    &["router"],
    // For code that starts a real vgpud (tests, benchmarks): its config file and stats, typed.
    &["testkit"],
];

/// The layer of top-level module `module`.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// `src` with comments removed and the contents of string and char literals blanked, so
    /// that only code is searched.
    fn code_only(src: &str) -> String {
        let b = src.as_bytes();
        let mut out = String::with_capacity(src.len());
        let mut i = 0;
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        while i < b.len() {
            let c = b[i];
            if src[i..].starts_with("//") {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            } else if src[i..].starts_with("/*") {
                let mut depth = 0;
                while i < b.len() {
                    if src[i..].starts_with("/*") {
                        depth += 1;
                        i += 2;
                    } else if src[i..].starts_with("*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            } else if c == b'r' && (i == 0 || !ident(b[i - 1])) && {
                let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
                b.get(i + 1 + hashes) == Some(&b'"')
            } {
                // A raw string: ends at `"` followed by as many `#`.
                let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
                let end = format!("\"{}", "#".repeat(hashes));
                let body = i + 2 + hashes;
                i = src[body..]
                    .find(&end)
                    .map_or(b.len(), |e| body + e + end.len());
                out.push_str("\"\"");
            } else if c == b'"' {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            } else if c == b'\'' {
                // A char literal ('x', '\n', '\u{..}'), or else a lifetime (left as it is).
                let len = if b.get(i + 1) == Some(&b'\\') {
                    // The quote after the escaped character (`'\''`, `'\u{..}'`).
                    src.get(i + 3..).and_then(|r| r.find('\'')).map(|e| e + 4)
                } else {
                    let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + ch) == Some(&b'\'')).then_some(ch + 2)
                };
                match len {
                    Some(n) => {
                        out.push_str("' '");
                        i += n;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            } else {
                let ch = src[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        out
    }

    /// The top-level modules named by the `crate::` paths in `code` (comments and literals
    /// already removed), in order, with repeats.
    fn crate_paths(code: &str) -> Vec<String> {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let first_ident =
            |s: &str| -> String { s.trim_start().chars().take_while(|&c| ident(c)).collect() };
        let mut names = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| ident(c) || c == '$') {
                continue;
            }
            let rest = code[at + "crate::".len()..].trim_start();
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::X, b::{Y, Z}}`: the first name of each top-level item.
                let mut depth = 0;
                let mut item_start = 0;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            names.push(first_ident(&group[item_start..j]));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.push(first_ident(&group[item_start..j]));
                            item_start = j + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                names.push(first_ident(rest));
            }
        }
        names.retain(|n| !n.is_empty() && n != "self");
        names
    }

    /// What in `src`, a file of top-level module `module`, names a module of the same or a
    /// higher layer, or one in no layer.
    fn violations(module: &str, src: &str) -> Vec<String> {
        let Some(own) = layer_of(module) else {
            return vec![format!("module `{module}` is in no layer of LAYERS")];
        };
        let mut bad: Vec<String> = crate_paths(&code_only(src))
            .into_iter()
            .filter(|n| n != module)
            .filter_map(|n| match layer_of(&n) {
                Some(l) if l < own => None,
                Some(l) => Some(format!(
                    "`{module}` (layer {own}) names `crate::{n}` (layer {l})"
                )),
                None => Some(format!(
                    "`{module}` names `crate::{n}`, which is in no layer"
                )),
            })
            .collect();
        bad.dedup();
        bad
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("reading src/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    fn src_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn no_module_names_a_module_of_its_layer_or_above() {
        let src = src_dir();
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        files.sort();
        let mut bad = Vec::new();
        let mut checked = 0;
        for f in &files {
            let rel = f.strip_prefix(&src).expect("under src/");
            let first = rel.components().next().expect("a path");
            let module = first.as_os_str().to_str().expect("utf-8 name");
            let module = module.strip_suffix(".rs").unwrap_or(module);
            // The crate root and the binary sit above every layer; this file is the checker.
            if matches!(module, "lib" | "main" | "layers") {
                continue;
            }
            let text = std::fs::read_to_string(f).expect("reading a source file");
            for v in violations(module, &text) {
                bad.push(format!("{}: {v}", rel.display()));
            }
            checked += 1;
        }
        assert!(
            checked > 20,
            "only {checked} files found under {}",
            src.display()
        );
        assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
    }

    #[test]
    fn every_module_of_the_crate_has_a_layer() {
        let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
        let declared: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub mod "))
            .map(|l| l.trim_end_matches(';'))
            .collect();
        let mut layered: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
        let mut declared_sorted = declared.clone();
        declared_sorted.sort_unstable();
        layered.sort_unstable();
        assert_eq!(
            declared_sorted, layered,
            "lib.rs's modules and LAYERS differ"
        );
    }

    #[test]
    fn the_scanner_sees_code_only() {
        let src = r#"
            use crate::config::Config; // crate::executor in a comment
            /* crate::router /* nested */ crate::router */
            /// [`crate::router`] in a doc comment
            const S: &str = "crate::router \" crate::router";
            const R: &str = r"crate::router";
            const Q: char = '"';
            fn f<'a>(x: &'a str) -> char { let _ = crate::stats::VmStats::bump; '\'' }
            use crate::{backend::{Backend, Issued}, queue::Job, self};
            let _ = $crate::router::x; let _ = mycrate::router::y;
            pub(in crate::device) fn g() {}
        "#;
        assert_eq!(
            crate_paths(&code_only(src)),
            ["config", "stats", "backend", "queue", "device"]
        );
    }

    #[test]
    fn an_upward_or_sideways_import_is_reported() {
        assert_eq!(
            violations("sched", "use crate::executor::ExecEvent;"),
            ["`sched` (layer 5) names `crate::executor` (layer 6)"]
        );
        assert_eq!(
            violations("channel", "use crate::sched::is_control;").len(),
            1
        );
        assert_eq!(
            violations("stats", "use crate::nowhere::X;"),
            ["`stats` names `crate::nowhere`, which is in no layer"]
        );
        assert_eq!(violations("nowhere", "").len(), 1);
        assert!(violations("executor", "use crate::sched::is_control;").is_empty());
        assert!(violations("router", "use crate::router::Placement;").is_empty());
    }
}
