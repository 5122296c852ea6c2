//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a bounded
//! time against a temporary copy of its committed seed corpus; fails on any crash.
//!
//! Works on a stable toolchain: the targets are built with `--sanitizer none` (no `-Z` flag
//! is needed then; libFuzzer's coverage instrumentation is stable `-C` options). See
//! docs/fuzzing.md.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::paths;

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Let the run add the inputs it finds to the committed corpus (fuzz/corpus/<target>/)
    /// instead of a temporary copy of it.
    #[arg(long)]
    pub update_corpus: bool,
    /// Targets to run (default: every target in fuzz/Cargo.toml).
    pub targets: Vec<String>,
}

pub fn main(o: &Opts) -> ExitCode {
    match run(o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask fuzz: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What one target's run came to.
struct Outcome {
    executions: u64,
    exec_per_sec: u64,
    corpus_before: usize,
    corpus_after: usize,
    /// Crash, timeout or out-of-memory inputs libFuzzer wrote.
    artifacts: Vec<String>,
    /// The panic (or libFuzzer's deadly-signal) lines, for the summary.
    reason: Vec<String>,
    ok: bool,
}

fn fuzz_dir() -> PathBuf {
    paths::root().join("fuzz")
}

/// A target dir of its own: the fuzz build's flags differ from every other build of the
/// same target triple (e.g. the static guest binary), which would otherwise rebuild each other.
fn target_dir() -> PathBuf {
    paths::target_dir().join("fuzz")
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new(paths::cargo());
    c.current_dir(paths::root()).arg("fuzz");
    c
}

fn ensure_cargo_fuzz() -> Result<String> {
    let version = || -> Option<String> {
        let out = cargo_fuzz()
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    println!("fuzz: cargo-fuzz not found; installing it: cargo install cargo-fuzz --locked");
    let st = Command::new(paths::cargo())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz --locked failed ({st})");
    }
    version().context("cargo-fuzz installed but `cargo fuzz --version` fails")
}

fn list_targets() -> Result<Vec<String>> {
    let out = cargo_fuzz()
        .args(["list", "--fuzz-dir"])
        .arg(fuzz_dir())
        .output()
        .context("cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    if let Ok(entries) = fs::read_dir(from) {
        for e in entries.flatten() {
            if e.path().is_file() {
                fs::copy(e.path(), to.join(e.file_name()))
                    .with_context(|| format!("copying {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

fn relative(p: &Path) -> String {
    p.strip_prefix(paths::root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// The number after `key` on a libFuzzer line such as `stat::number_of_executed_units: 1234`
/// or `#1234\tpulse ...` (key `#`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = line.strip_prefix(key)?.trim_start_matches([':', ' ', '\t']);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn run_target(name: &str, seconds: u64, update_corpus: bool, logs: &Path) -> Result<Outcome> {
    let committed = fuzz_dir().join("corpus").join(name);
    let corpus_before = count_files(&committed);
    let (corpus, scratch) = if update_corpus {
        fs::create_dir_all(&committed)?;
        (committed.clone(), None)
    } else {
        let tmp = target_dir()
            .join("tmp-corpus")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        copy_dir(&committed, &tmp)?;
        (tmp.clone(), Some(tmp))
    };
    let log_path = logs.join(format!("{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "--sanitizer", "none", "--target-dir"])
        .arg(target_dir())
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .arg(name)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input running this long is a hang: reported like a crash.
        .arg("-timeout=10")
        .arg("-print_final_stats=1");
    let dict = fuzz_dir().join("dict").join(format!("{name}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let started = Instant::now();
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running cargo fuzz run")?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    let corpus_after = count_files(&corpus);
    if let Some(tmp) = scratch {
        let _ = fs::remove_dir_all(tmp);
    }

    let mut executions = None;
    let mut last_pulse = 0;
    let mut exec_per_sec = None;
    let mut artifacts = Vec::new();
    let mut reason = Vec::new();
    // Lines of the panic message still to keep (it ends at the backtrace or a note).
    let mut message_lines = 0;
    let mut want_frame = false;
    let text = BufReader::new(fs::File::open(&log_path)?);
    for line in text.lines() {
        let line = line.unwrap_or_default();
        let trimmed = line.trim();
        if let Some(n) = number_after(&line, "stat::number_of_executed_units") {
            executions = Some(n);
        } else if let Some(n) = number_after(&line, "stat::average_exec_per_sec") {
            exec_per_sec = Some(n);
        } else if let Some(n) = number_after(&line, "#") {
            last_pulse = n;
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            artifacts.push(relative(Path::new(path.trim())));
        }
        if line.contains(" panicked at ") {
            reason.push(trimmed.to_string());
            message_lines = 3;
            // A panic inside std (an overflow, an index) says little: name the caller too.
            want_frame = !(line.contains("crates/") || line.contains("fuzz_targets/"));
        } else if message_lines > 0 {
            if trimmed.starts_with("stack backtrace:") || trimmed.starts_with("note:") {
                message_lines = 0;
            } else {
                reason.push(trimmed.to_string());
                message_lines -= 1;
            }
        } else if want_frame
            && trimmed.starts_with("at ")
            && (trimmed.contains("crates/") || trimmed.contains("fuzz_targets/"))
            && !trimmed.contains(".cargo/registry")
        {
            // The innermost frame in the project's own code (the panic may be inside std).
            reason.push(format!("first project frame: {trimmed}"));
            want_frame = false;
        } else if line.starts_with("==") && line.contains("ERROR: libFuzzer") {
            reason.push(trimmed.to_string());
        }
    }
    let executions = executions.unwrap_or(last_pulse);
    let exec_per_sec = match exec_per_sec {
        Some(n) if n > 0 => n,
        // A run that crashed in its first second reports 0.
        _ => (executions as f64 / elapsed) as u64,
    };
    let ok = status.success() && artifacts.is_empty();
    if !ok && artifacts.is_empty() {
        reason.push(format!(
            "cargo fuzz run exited with {status}; see {}",
            relative(&log_path)
        ));
    }
    Ok(Outcome {
        executions,
        exec_per_sec,
        corpus_before,
        corpus_after,
        artifacts,
        reason,
        ok,
    })
}

fn run(o: &Opts) -> Result<bool> {
    if !fuzz_dir().join("Cargo.toml").is_file() {
        bail!("{} not found", fuzz_dir().join("Cargo.toml").display());
    }
    if o.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let version = ensure_cargo_fuzz()?;
    let all = list_targets()?;
    let targets: Vec<String> = if o.targets.is_empty() {
        all.clone()
    } else {
        for t in &o.targets {
            if !all.contains(t) {
                bail!("unknown fuzz target {t:?} (targets: {})", all.join(", "));
            }
        }
        o.targets.clone()
    };

    println!(
        "fuzz: {version}; building {} (sanitizer none, target dir {})",
        targets.join(", "),
        relative(&target_dir())
    );
    let logs = target_dir().join("logs");
    fs::create_dir_all(&logs)?;
    let build_log = logs.join("build.log");
    let mut build = cargo_fuzz();
    build
        .args(["build", "--sanitizer", "none", "--target-dir"])
        .arg(target_dir())
        .arg("--fuzz-dir")
        .arg(fuzz_dir());
    if targets.len() == 1 {
        build.arg(&targets[0]);
    }
    let out = build.output().context("running cargo fuzz build")?;
    fs::write(&build_log, [&out.stdout[..], &out.stderr[..]].concat())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        // libfuzzer-sys compiles libFuzzer itself: without a C++ compiler that is what fails.
        let no_cxx = err.contains("failed to find tool") || err.contains("c++: not found");
        bail!(
            "cargo fuzz build failed (full log: {}){}",
            relative(&build_log),
            if no_cxx {
                "; libFuzzer needs a C++ compiler (g++)"
            } else {
                ""
            }
        );
    }

    let mut all_ok = true;
    for name in &targets {
        let r = run_target(name, o.seconds, o.update_corpus, &logs)?;
        let crashes = r.artifacts.len();
        println!(
            "fuzz: {name:<13} {:>4} s  {:>10} execs  {:>7} exec/s  corpus {} -> {}  crashes {crashes}",
            o.seconds, r.executions, r.exec_per_sec, r.corpus_before, r.corpus_after
        );
        if !r.ok {
            all_ok = false;
            for l in r.reason.iter().take(8) {
                println!("      {l}");
            }
            for a in &r.artifacts {
                println!("      artifact: {a}");
                println!(
                    "      reproduce: cargo fuzz run --sanitizer none --target-dir {} {name} {a}",
                    relative(&target_dir())
                );
            }
            println!("      log: {}", relative(&logs.join(format!("{name}.log"))));
        }
    }
    if all_ok {
        println!(
            "fuzz: {} target(s), {} s each, no crash",
            targets.len(),
            o.seconds
        );
    } else {
        println!("fuzz: FAILED (see docs/fuzzing.md, \"Reproducing a crash\")");
    }
    Ok(all_ok)
}
