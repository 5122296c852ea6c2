//! The admin socket: `vgpuctl` sends one request line, gets one JSON line back.
//! It is a management interface only; no guest data ever crosses it.

use crate::stats::StatsRegistry;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Binds the admin socket (replacing a stale one) and serves it on a thread.
pub fn spawn(path: &Path, stats: Arc<StatsRegistry>) -> std::io::Result<()> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "admin socket {} is in use by another server",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("vgpud-admin".into())
        .spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = serve(c, &stats) {
                            warn!("admin connection: {e}");
                        }
                    }
                    Err(e) => warn!("admin accept: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve(c: UnixStream, stats: &StatsRegistry) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line)?;
    let reply = match line.trim() {
        "stats" => stats.to_json(),
        "ping" => serde_json::json!({"ok": true}),
        other => serde_json::json!({"error": format!("unknown request {other:?}; try \"stats\"")}),
    };
    let mut w = &c;
    writeln!(w, "{reply}")
}
