//! `cargo xtask soak` (being written).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Opts {}

pub fn main(_o: &Opts) -> ExitCode {
    eprintln!("xtask soak: not written yet");
    ExitCode::FAILURE
}
