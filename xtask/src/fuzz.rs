//! `cargo xtask fuzz` (being written).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Opts {}

pub fn main(_o: &Opts) -> ExitCode {
    eprintln!("xtask fuzz: not written yet");
    ExitCode::FAILURE
}
