//! The Prometheus endpoint (`[mediator] metrics_listen`) of a real vgpud: the values after
//! guest work (checked against the admin socket's stats), both exposition formats, `promtool
//! check metrics` when it is installed, 404/405/400, the request size cap, the deadline, the
//! connection cap, and a unix socket.

mod common;

use common::{start_with, ConfigBuilder, Rng, Vgpud, Vm};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_guest::Device;
use vgpu_mediator::metrics::{MAX_CONNECTIONS, MAX_REQUEST_BYTES, OPENMETRICS_CONTENT_TYPE};

/// What Prometheus 2.x sends (OpenMetrics first).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A vgpud with VMs `a` (pool 0, weight 3) and `b` (pool 1), metrics on a free TCP port.
fn vgpud() -> (Vgpud, SocketAddr) {
    let cfg = ConfigBuilder::from_toml(
        r#"
        [mediator]
        metrics_listen = "127.0.0.1:0"
        [[pool]]
        id = 0
        name = "gold"
        weight = 3
        [[pool]]
        id = 1
        name = "free"
        "#,
    )
    .unwrap();
    let mut b = Vm::new("b", 2);
    b.pool_id = 1;
    let d = start_with(&[Vm::new("a", 1), b], cfg);
    let addr = metrics_addr(&d);
    (d, addr)
}

/// The address vgpud logged for its endpoint (the port was chosen by the kernel).
fn metrics_addr(d: &Vgpud) -> SocketAddr {
    let log = d.log_text();
    let at = log
        .find("metrics: http://")
        .unwrap_or_else(|| panic!("no metrics line in the log:\n{log}"));
    let rest = &log[at + "metrics: http://".len()..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

/// A parsed HTTP response.
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Self {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` as is and reads the response to EOF.
fn exchange(mut c: impl Read + Write, request: &[u8]) -> Response {
    // A refusal may come (and the connection close) before the request is all written.
    let _ = c.write_all(request);
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    Response::parse(&raw)
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    exchange(
        tcp(addr),
        format!("GET {path} HTTP/1.1\r\nHost: vgpud\r\n{accept}\r\n").as_bytes(),
    )
}

/// The value of the sample `name{…}` whose labels include every one of `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{body}"))
}

/// `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

#[test]
fn a_scrape_after_guest_work_reports_what_the_vm_did() {
    let (d, addr) = vgpud();
    let dev = Device::connect(&d.socket("a")).unwrap();
    common::workload(&dev, &mut Rng(7));
    // Held while scraping: memory in use.
    let held = dev.alloc(3 << 20).unwrap();
    dev.copy_htod(held, &[1u8; 8192]).unwrap();

    let stats = d.vm_stats("a");
    let r = get(addr, "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = &r.body;
    let a = [
        ("vm", "a"),
        ("vm_id", "1"),
        ("pool", "gold"),
        ("device", "0"),
    ];
    let commands = sample(body, "vgpu_vm_commands_total", &a);
    assert!(commands >= 20.0, "{commands}");
    assert_eq!(commands, stats.commands as f64);
    assert!(
        !body.contains(r#"vgpu_vm_command_errors_total{vm="a""#),
        "no errors yet, no error series"
    );
    let bytes_in = sample(body, "vgpu_vm_host_to_device_bytes_total", &a);
    // workload: two 16 KiB vectors and three small matrices; then the 8 KiB above.
    assert!(bytes_in >= (2 * 16384 + 8192) as f64, "{bytes_in}");
    assert_eq!(bytes_in, stats.bytes_in as f64);
    let bytes_out = sample(body, "vgpu_vm_device_to_host_bytes_total", &a);
    assert!(bytes_out >= 16384.0, "{bytes_out}");
    assert_eq!(bytes_out, stats.bytes_out as f64);
    assert_eq!(
        sample(body, "vgpu_vm_memory_used_bytes", &a),
        (3 << 20) as f64
    );
    assert_eq!(
        sample(body, "vgpu_vm_memory_quota_bytes", &a),
        (256 << 20) as f64
    );
    assert_eq!(sample(body, "vgpu_vm_connected", &a), 1.0);
    assert_eq!(sample(body, "vgpu_vm_fenced", &a), 0.0);
    assert_eq!(sample(body, "vgpu_vm_fences_total", &a), 0.0);
    assert_eq!(sample(body, "vgpu_vm_queued_commands", &a), 0.0);
    assert_eq!(sample(body, "vgpu_vm_inflight_commands", &a), 0.0);
    assert!(sample(body, "vgpu_vm_device_time_seconds_total", &a) > 0.0);
    // Every command that ran has a latency sample; its +Inf bucket is the count.
    let lat = sample(body, "vgpu_vm_completion_latency_seconds_count", &a);
    assert!(lat >= 20.0 && lat <= commands, "{lat} of {commands}");
    let inf = [a.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(
        sample(body, "vgpu_vm_completion_latency_seconds_bucket", &inf),
        lat
    );
    let le10s = [a.as_slice(), &[("le", "10")]].concat();
    assert_eq!(
        sample(body, "vgpu_vm_completion_latency_seconds_bucket", &le10s),
        lat,
        "no command took 10 s"
    );
    assert!(sample(body, "vgpu_vm_completion_latency_seconds_sum", &a) > 0.0);
    assert_eq!(
        sample(body, "vgpu_vm_queue_wait_seconds_count", &a),
        lat,
        "each command that ran waited once"
    );
    // b did nothing and is not placed.
    let b = [("vm", "b"), ("pool", "free"), ("device", "")];
    assert_eq!(sample(body, "vgpu_vm_commands_total", &b), 0.0);
    assert_eq!(sample(body, "vgpu_vm_connected", &b), 0.0);

    // Pools: weights, entitlement 3:1 on the one device, and all device time was gold's.
    let gold = [("pool", "gold"), ("pool_id", "0"), ("device", "0")];
    let free = [("pool", "free"), ("pool_id", "1"), ("device", "0")];
    assert_eq!(sample(body, "vgpu_pool_weight", &gold[..2]), 3.0);
    assert_eq!(sample(body, "vgpu_pool_entitled_share", &gold), 0.75);
    assert_eq!(sample(body, "vgpu_pool_entitled_share", &free), 0.25);
    assert_eq!(sample(body, "vgpu_pool_device_time_share", &gold), 1.0);
    assert_eq!(sample(body, "vgpu_pool_device_time_share", &free), 0.0);
    let pool_time = sample(body, "vgpu_pool_device_time_seconds_total", &gold);
    let device_time = sample(body, "vgpu_device_time_seconds_total", &[("device", "0")]);
    assert!(
        pool_time > 0.0 && pool_time == device_time,
        "{pool_time} {device_time}"
    );
    assert_eq!(
        sample(body, "vgpu_pool_memory_used_bytes", &gold[..2]),
        (3 << 20) as f64
    );
    assert_eq!(sample(body, "vgpu_device_vms", &[("device", "0")]), 1.0);
    assert_eq!(
        sample(body, "vgpud_build_info", &[("backend", &common::backend())]),
        1.0
    );
    assert!(sample(body, "vgpud_uptime_seconds", &[]) > 0.0);
    assert!(sample(body, "vgpud_start_time_seconds", &[]) > 1.7e9);

    match promtool(body) {
        Some((ok, said)) => {
            println!(
                "promtool check metrics: {}",
                if ok { "OK" } else { "FAILED" }
            );
            print!("{said}");
            assert!(ok && said.trim().is_empty(), "promtool:\n{said}");
        }
        None => eprintln!("SKIPPED: promtool check metrics (promtool is not on PATH)"),
    }

    // What Prometheus asks for: OpenMetrics, the same values.
    let om = get(addr, "/metrics", Some(PROMETHEUS_ACCEPT));
    assert_eq!(om.status, 200);
    assert_eq!(om.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE vgpu_vm_commands counter\n"));
    assert!(om.body.contains("# UNIT vgpu_vm_memory_used_bytes bytes\n"));
    assert!(om.body.contains("# TYPE vgpud_build info\n"));
    assert_eq!(sample(&om.body, "vgpu_vm_commands_total", &a), commands);
    // The HEAD of the same: its length, no body.
    let head = exchange(tcp(addr), b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );

    // Errors are counted by status.
    assert!(dev.alloc(1 << 30).is_err(), "beyond the 256 MiB quota");
    let body = get(addr, "/metrics", None).body;
    let quota = [a.as_slice(), &[("status", "quota_exceeded")]].concat();
    assert_eq!(sample(&body, "vgpu_vm_command_errors_total", &quota), 1.0);
    assert_eq!(
        sample(&body, "vgpu_vm_commands_total", &a),
        commands + 1.0,
        "every command since, the failed one included"
    );

    dev.free(held).unwrap();
    drop(dev);
}

#[test]
fn other_paths_methods_and_garbage_are_refused() {
    let (_d, addr) = vgpud();
    let r = get(addr, "/", None);
    assert_eq!(r.status, 404, "{}", r.head);
    assert_eq!(get(addr, "/metrics/x", None).status, 404);
    assert_eq!(
        get(addr, "/metrics?x=1", None).status,
        200,
        "a query is ignored"
    );
    for m in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = exchange(
            tcp(addr),
            format!("{m} /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
        );
        assert_eq!(r.status, 405, "{m}: {}", r.head);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    for bad in [
        &b"hello\r\n\r\n"[..],
        b"GET /metrics HTTP/2.0\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ] {
        assert_eq!(exchange(tcp(addr), bad).status, 400, "{bad:?}");
    }
    // Bare newlines end a head too (what `nc` sends).
    assert_eq!(
        exchange(tcp(addr), b"GET /metrics HTTP/1.0\n\n").status,
        200
    );
}

#[test]
fn the_request_head_is_capped_and_must_come_in_time() {
    let (d, addr) = vgpud();
    // Exactly at the cap: served.
    let start = "GET /metrics HTTP/1.1\r\nX-Pad: ";
    let pad = MAX_REQUEST_BYTES - start.len() - 4;
    let at_cap = format!("{start}{}\r\n\r\n", "p".repeat(pad));
    assert_eq!(at_cap.len(), MAX_REQUEST_BYTES);
    assert_eq!(exchange(tcp(addr), at_cap.as_bytes()).status, 200);
    // One byte more: refused without the rest being read.
    let over = format!("{start}{}\r\n\r\n", "p".repeat(pad + 1));
    assert_eq!(exchange(tcp(addr), over.as_bytes()).status, 431);
    let huge = format!("{start}{}", "p".repeat(1 << 20));
    assert_eq!(exchange(tcp(addr), huge.as_bytes()).status, 431);

    // A head that trickles in is cut off at the deadline for the whole head, though each
    // read brings a byte: the request line, a byte every 100 ms for 1.5 s, then nothing.
    let c = tcp(addr);
    let t0 = Instant::now();
    let writer = {
        let mut c = c.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /metrics HT" {
                if c.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = exchange(c, b"");
    let took = t0.elapsed();
    writer.join().unwrap();
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(get(addr, "/metrics", None).status, 200, "still serving");
    drop(d);
}

#[test]
fn connections_beyond_the_cap_are_refused_at_once_and_the_slots_come_back() {
    let (_d, addr) = vgpud();
    // Idle connections hold every slot (until the request deadline frees them).
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| tcp(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let r = exchange(tcp(addr), b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop(idle);
    let t0 = Instant::now();
    loop {
        let r = get(addr, "/metrics", None);
        if r.status == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "slots not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_unix_socket_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.sock");
    let d = start_with(
        &[Vm::new("a", 1)],
        ConfigBuilder::new().mediator("metrics_listen", path.to_str().unwrap()),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "vgpud's user only");
    let c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = exchange(c, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        sample(&r.body, "vgpu_vm_commands_total", &[("vm", "a")]),
        0.0
    );
    // Removed at shutdown, like the admin socket.
    assert!(d.stop().success());
    assert!(!path.exists());
}

#[test]
fn the_shipped_alert_rules_parse_and_pass_their_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [
        ["check", "rules", "vgpu-alerts.yml"],
        ["test", "rules", "vgpu-alerts.test.yml"],
    ] {
        let out = match Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
        {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "SKIPPED: promtool {} (promtool is not on PATH)",
                    args.join(" ")
                );
                return;
            }
            Err(e) => panic!("running promtool: {e}"),
        };
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("promtool {}: {}", args.join(" "), said.trim());
        assert!(out.status.success(), "promtool {}:\n{said}", args.join(" "));
    }
}

#[test]
fn worker_processes_are_counted_per_device() {
    let d = start_with(
        &[Vm::new("a", 1), Vm::new("b", 2)],
        ConfigBuilder::new()
            .mediator("metrics_listen", "127.0.0.1:0")
            .mediator("fault_isolation", "process"),
    );
    let addr = metrics_addr(&d);
    let workers = || {
        let r = get(addr, "/metrics", None);
        sample(&r.body, "vgpu_device_worker_processes", &[("device", "0")])
    };
    assert_eq!(workers(), 0.0);
    let a = Device::connect(&d.socket("a")).unwrap();
    let b = Device::connect(&d.socket("b")).unwrap();
    a.alloc(4096).unwrap();
    b.alloc(4096).unwrap();
    assert_eq!(workers(), 2.0, "one per VM context");
    drop(a);
    let t0 = Instant::now();
    while workers() != 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a's worker still counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(b);
}
