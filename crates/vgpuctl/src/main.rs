//! `vgpuctl`: talks to a running vgpud over its admin socket.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "vgpuctl", version, about = "Admin CLI for vgpud")]
struct Args {
    /// vgpud's admin socket (`admin_socket` in its config).
    #[arg(long, env = "VGPU_ADMIN_SOCKET")]
    admin_socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-VM accounting as JSON.
    Stats,
    /// A table of the VMs.
    List,
    /// Checks that vgpud answers.
    Ping,
}

fn request(sock: &PathBuf, req: &str) -> Result<serde_json::Value> {
    let mut c = UnixStream::connect(sock)
        .with_context(|| format!("connecting to vgpud admin socket {}", sock.display()))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(c, "{req}")?;
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("vgpud sent invalid JSON")?;
    if let Some(e) = v.get("error") {
        bail!("vgpud: {e}");
    }
    Ok(v)
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Stats => println!("{}", request(&args.admin_socket, "stats")?),
        Cmd::Ping => {
            request(&args.admin_socket, "ping")?;
            println!("vgpud is up");
        }
        Cmd::List => {
            let v = request(&args.admin_socket, "stats")?;
            println!(
                "backend: {}  device: {}",
                v["backend"].as_str().unwrap_or("?"),
                v["device"].as_str().unwrap_or("?")
            );
            println!(
                "{:<12} {:>6} {:>5} {:>4} {:<13} {:>10} {:>7} {:>12} {:>12}",
                "NAME",
                "VM_ID",
                "POOL",
                "PRIO",
                "STATUS",
                "COMMANDS",
                "ERRORS",
                "MEM_USED",
                "MEM_QUOTA"
            );
            for vm in v["vms"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:>6} {:>5} {:>4} {:<13} {:>10} {:>7} {:>12} {:>12}",
                    vm["name"].as_str().unwrap_or("?"),
                    vm["vm_id"],
                    vm["pool_id"],
                    vm["priority"],
                    vm["status"].as_str().unwrap_or("?"),
                    vm["commands"],
                    vm["errors"],
                    vm["mem_used"],
                    vm["mem_quota"]
                );
            }
        }
    }
    Ok(())
}
