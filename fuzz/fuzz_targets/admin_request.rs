//! The admin protocol as a client speaks it: the bytes a client sends on the admin socket are
//! read by vgpud's request reader (`admin::read_request`, over a real socket pair, the client
//! side closed after the bytes) and answered by `admin::handle_request`.
//!
//! Checked, besides "never panics": the line read is at most `MAX_REQUEST_BYTES` and stops at
//! the first newline; a request that is too long is refused as such; every reply is a JSON
//! object; `ping` answers `{"ok":true}`, `stats` the registry, anything else an `error`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vgpu_mediator::admin::{handle_request, read_request, ReadError, MAX_REQUEST_BYTES};
use vgpu_mediator::config::Config;
use vgpu_mediator::stats::StatsRegistry;

fn registry() -> &'static StatsRegistry {
    static R: OnceLock<StatsRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let cfg = Config::from_toml(
            "[[vm]]\nname = \"a\"\nsocket = \"/nonexistent/a.sock\"\nvm_id = 1\n\
             [[vm]]\nname = \"b\"\nsocket = \"/nonexistent/b.sock\"\nvm_id = 2\npool_id = 1\n",
        )
        .expect("the fuzz target's config");
        StatsRegistry::for_config(&cfg)
    })
}

fuzz_target!(|data: &[u8]| {
    // More than a socket buffer would need a writer thread; the reader's cap is far below.
    let data = &data[..data.len().min(16 << 10)];
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    client.write_all(data).expect("write the request");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let line = match read_request(&server, Instant::now() + Duration::from_secs(5)) {
        Ok(line) => line,
        Err(ReadError::TooLong) => {
            assert!(
                !data[..MAX_REQUEST_BYTES.min(data.len())].contains(&b'\n'),
                "refused as too long although a newline came within the cap"
            );
            assert!(data.len() >= MAX_REQUEST_BYTES);
            return;
        }
        Err(e) => panic!("reading a request that is all there: {e}"),
    };
    assert!(
        line.len() < MAX_REQUEST_BYTES,
        "a line of {} bytes was accepted",
        line.len()
    );
    assert!(!line.contains(&b'\n'), "the line includes its newline");
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    assert_eq!(
        line,
        &data[..end],
        "the line is not the bytes before the first newline"
    );
    let reply = handle_request(&line, registry());
    assert!(reply.is_object(), "reply is not a JSON object: {reply}");
    match std::str::from_utf8(&line).map(str::trim) {
        Ok("ping") => assert_eq!(reply, serde_json::json!({"ok": true})),
        Ok("stats") => assert!(reply.get("vms").is_some(), "{reply}"),
        // Anything else is an error, or a version 2 (JSON) request answered in version 2.
        _ => assert!(
            reply.get("error").is_some() || reply.get("version") == Some(&serde_json::json!(2)),
            "{reply}"
        ),
    }
});
