//! `vgpuctl`: talks to a running vgpud over its admin socket (protocol: `docs/operations.md`,
//! "Admin socket").

mod client;
mod top;
mod view;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use client::Client;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "vgpuctl", version, about = "Admin CLI for vgpud")]
struct Args {
    /// vgpud's admin socket (`admin_socket` in its config).
    #[arg(long, visible_alias = "socket", env = "VGPU_ADMIN_SOCKET")]
    admin_socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every VM's and pool's accounting, as JSON (always JSON: scripts read it).
    Stats {
        /// Accepted for symmetry with the other read commands.
        #[arg(long)]
        json: bool,
    },
    /// A table of the VMs.
    List {
        /// vgpud's stats as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One VM's full state.
    Show {
        /// The VM's name.
        vm: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live table of the VMs and pools (q, Esc or Ctrl-C quits).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Resets a VM's device as its guest's reset would: its work is aborted and its context
    /// recreated; the guest sees a new generation and resets to go on.
    Reset {
        /// The VM's name.
        vm: String,
    },
    /// Changes a VM's priority or a pool's weight at run time. Without --persist it is not
    /// written to the config file (a restart or SIGHUP reload goes back to the file's value);
    /// with it, vgpud writes that one key to its config file first.
    Set {
        #[command(subcommand)]
        what: SetCmd,
    },
    /// Checks that vgpud answers.
    Ping,
}

#[derive(Subcommand)]
enum SetCmd {
    /// `set pool POOL weight W`: a pool's weight (1..=1000000).
    Pool {
        /// The pool's name.
        pool: String,
        /// Must be `weight`.
        #[arg(value_parser = ["weight"])]
        key: String,
        /// The new weight.
        weight: u32,
        /// Also write it to vgpud's config file.
        #[arg(long)]
        persist: bool,
    },
    /// `set VM priority N [--persist]`: a VM's priority (0 = lowest).
    #[command(external_subcommand)]
    Vm(Vec<String>),
}

/// `set VM priority N [--persist]`, whose first word is the VM's name (clap takes it as a
/// subcommand). Returns the VM, the priority and whether to persist it.
fn set_vm(words: &[String]) -> Result<(String, u32, bool)> {
    let persist = words.iter().any(|w| w == "--persist");
    let rest: Vec<&String> = words.iter().filter(|w| *w != "--persist").collect();
    match rest[..] {
        [vm, key, n] if key == "priority" => {
            let n = n
                .parse()
                .map_err(|_| anyhow!("priority must be an integer 0..=4294967295, not {n:?}"))?;
            Ok((vm.clone(), n, persist))
        }
        _ => Err(anyhow!(
            "usage: vgpuctl set VM priority N [--persist] | vgpuctl set pool POOL weight W [--persist]"
        )),
    }
}

/// How long a `set` lasts.
fn until(persisted: bool) -> &'static str {
    if persisted {
        "(also written to vgpud's config file)"
    } else {
        "(until restart or reload)"
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("vgpuctl: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let c = Client::new(&args.admin_socket);
    match args.cmd {
        // `stats` and `list` speak version 1 (bare words): they work with any vgpud.
        Cmd::Stats { json: _ } => println!("{}", legacy(&c, "stats")?),
        Cmd::Ping => {
            legacy(&c, "ping")?;
            println!("vgpud is up");
        }
        Cmd::List { json } => {
            let stats = legacy(&c, "stats")?;
            if json {
                println!("{stats}");
            } else {
                print!("{}", view::list_text(&stats));
            }
        }
        Cmd::Show { vm, json } => {
            let v = c.call(json!({"request": "show", "vm": vm}))?;
            let vm = &v["vm"];
            if json {
                println!("{vm}");
            } else {
                print!("{}", view::show_text(vm));
            }
        }
        Cmd::Top { interval } => {
            if !(0.1..=3600.0).contains(&interval) {
                return Err(anyhow!("--interval must be 0.1..=3600 seconds"));
            }
            top::run(&c, Duration::from_secs_f64(interval))?;
        }
        Cmd::Reset { vm } => {
            let v = c.call(json!({"request": "reset", "vm": vm}))?;
            println!(
                "{vm}: device reset (generation {}); the guest resets to go on",
                v["generation"]
            );
        }
        Cmd::Set { what } => {
            match what {
                SetCmd::Pool {
                    pool,
                    weight,
                    persist,
                    ..
                } => {
                    c.call(json!({"request": "set", "pool": pool, "weight": weight, "persist": persist}))?;
                    println!("pool {pool}: weight {weight} {}", until(persist));
                }
                SetCmd::Vm(words) => {
                    let (vm, priority, persist) = set_vm(&words)?;
                    c.call(json!({"request": "set", "vm": vm, "priority": priority, "persist": persist}))?;
                    println!("{vm}: priority {priority} {}", until(persist));
                }
            }
        }
    }
    Ok(())
}

/// A version 1 request (a bare word); an error reply becomes an error.
fn legacy(c: &Client, word: &str) -> Result<serde_json::Value> {
    let v = c.raw(word)?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!(
            "vgpud: {}",
            e.as_str().map_or_else(|| e.to_string(), str::to_owned)
        ));
    }
    Ok(v)
}
