//! Writes the committed seed corpus: `cargo run --manifest-path fuzz/Cargo.toml --example
//! gen_corpus` (from the repository root). A handful of small valid inputs per target; the
//! fuzzers find the rest. Re-running it rewrites the same files.

use std::fs;
use std::path::{Path, PathBuf};
use vgpu_abi::cmd::{
    Builtin, BusyParams, Command, LaunchBody, VectorAddParams, MAX_EVENTS, SQE_SIZE,
};
use zerocopy::IntoBytes;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn commands() -> Vec<(&'static str, Command)> {
    let busy = BusyParams {
        duration_us: 10,
        _pad: 0,
    };
    let vadd = VectorAddParams {
        a: 0x1000,
        b: 0x2000,
        c: 0x3000,
        n: 256,
        ..Default::default()
    };
    vec![
        ("nop", Command::Nop),
        ("get_info", Command::GetInfo),
        ("mem_alloc", Command::MemAlloc { size: 1 << 20 }),
        ("mem_free", Command::MemFree { ptr: 0x1000 }),
        (
            "memset",
            Command::Memset {
                dst: 0x1000,
                len: 64,
                value: 7,
                width: 4,
            },
        ),
        (
            "copy_h2d",
            Command::CopyH2D {
                dst: 0x1000,
                staging_offset: 0,
                len: 4096,
            },
        ),
        (
            "copy_d2h",
            Command::CopyD2H {
                src: 0x1000,
                staging_offset: 4096,
                len: 512,
            },
        ),
        (
            "copy_d2d",
            Command::CopyD2D {
                dst: 0x2000,
                src: 0x1000,
                len: 512,
            },
        ),
        (
            "launch_busy",
            Command::Launch {
                launch: LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], busy.as_bytes())
                    .expect("params fit"),
            },
        ),
        (
            "launch_vadd",
            Command::Launch {
                launch: LaunchBody::new(
                    Builtin::VectorAddF32.handle(),
                    [2, 1, 1],
                    [128, 1, 1],
                    vadd.as_bytes(),
                )
                .expect("params fit"),
            },
        ),
        (
            "module_load",
            Command::ModuleLoad {
                staging_offset: 0,
                len: 100,
                binary: false,
                more: false,
                cont: false,
            },
        ),
        (
            "module_get_global",
            Command::ModuleGetGlobal {
                module: 1,
                staging_offset: 0,
                name_len: 5,
            },
        ),
        ("module_unload", Command::ModuleUnload { module: 1 }),
        (
            "get_function",
            Command::GetFunction {
                module: 1,
                staging_offset: 0,
                name_len: 6,
            },
        ),
        (
            "func_param_info",
            Command::FuncParamInfo {
                func: Builtin::Saxpy.handle(),
                index: 1,
            },
        ),
        ("event_record", Command::EventRecord { event: 1 }),
        ("stream_wait_event", Command::StreamWaitEvent { event: 1 }),
        ("event_synchronize", Command::EventSynchronize { event: 2 }),
        (
            "event_elapsed",
            Command::EventElapsed {
                start: 1,
                end: MAX_EVENTS - 1,
            },
        ),
        ("synchronize", Command::Synchronize { all_streams: false }),
        (
            "synchronize_all",
            Command::Synchronize { all_streams: true },
        ),
        ("stream_query", Command::StreamQuery),
        ("mem_granularity", Command::MemGranularity),
        (
            "mem_address_reserve",
            Command::MemAddressReserve {
                size: 8 << 20,
                alignment: 0,
                addr: 0,
            },
        ),
        (
            "mem_address_free",
            Command::MemAddressFree {
                ptr: 0x7f00_0000_0000,
                size: 8 << 20,
            },
        ),
        ("mem_create", Command::MemCreate { size: 2 << 20 }),
        ("mem_release", Command::MemRelease { handle: 1 }),
        (
            "mem_map",
            Command::MemMap {
                ptr: 0x7f00_0000_0000,
                size: 2 << 20,
                offset: 0,
                handle: 1,
            },
        ),
        (
            "mem_unmap",
            Command::MemUnmap {
                ptr: 0x7f00_0000_0000,
                size: 2 << 20,
            },
        ),
        (
            "mem_set_access",
            Command::MemSetAccess {
                ptr: 0x7f00_0000_0000,
                size: 2 << 20,
                prot: vgpu_abi::cmd::PROT_READWRITE,
            },
        ),
        (
            "tensor_map_encode",
            Command::TensorMapEncode { staging_offset: 0 },
        ),
        ("stream_begin_capture", Command::StreamBeginCapture),
        ("stream_end_capture", Command::StreamEndCapture),
        ("graph_instantiate", Command::GraphInstantiate { graph: 1 }),
        ("graph_launch", Command::GraphLaunch { exec: 2 }),
        ("graph_exec_destroy", Command::GraphExecDestroy { exec: 2 }),
        ("graph_destroy", Command::GraphDestroy { graph: 1 }),
    ]
}

fn cmd_decode() {
    let dir = corpus("cmd_decode");
    for (i, (name, cmd)) in commands().into_iter().enumerate() {
        let sqe = cmd.encode(i as u32 % 3, 0x100 + i as u64);
        write(&dir, name, sqe.as_bytes());
    }
    // With an explicit (small) staging size: the copy no longer fits.
    let mut b = Command::CopyH2D {
        dst: 0x1000,
        staging_offset: 0,
        len: 4096,
    }
    .encode(0, 1)
    .as_bytes()
    .to_vec();
    b.extend_from_slice(&2048u64.to_le_bytes());
    write(&dir, "copy_h2d_small_staging", &b);
    // An unknown opcode.
    let mut s = Command::Nop.encode(0, 2);
    s.opcode = 0x77;
    write(&dir, "unknown_opcode", s.as_bytes());
}

/// Builds `channel_poll` scripts (see the op table in fuzz_targets/channel_poll.rs).
#[derive(Default)]
struct Script(Vec<u8>);

impl Script {
    fn submit(mut self, cmd: Command, tag: u64) -> Self {
        self.0.extend_from_slice(&[2, SQE_SIZE as u8]);
        self.0.extend_from_slice(cmd.encode(0, tag).as_bytes());
        self
    }
    fn submit_raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(&[2, bytes.len() as u8]);
        self.0.extend_from_slice(bytes);
        self
    }
    fn pending(mut self) -> Self {
        self.0.push(3);
        self
    }
    fn poll(mut self, budget: u8) -> Self {
        self.0.extend_from_slice(&[4, budget]);
        self
    }
    fn complete(mut self, sel: u8) -> Self {
        self.0.extend_from_slice(&[5, sel]);
        self
    }
    fn flush(mut self) -> Self {
        self.0.push(6);
        self
    }
    fn guest_reset(mut self) -> Self {
        self.0.push(7);
        self
    }
    fn host_reset(mut self) -> Self {
        self.0.push(8);
        self
    }
    fn consume(mut self) -> Self {
        self.0.push(9);
        self
    }
    fn irq(mut self, on: bool) -> Self {
        self.0.extend_from_slice(&[10, on as u8]);
        self
    }
    fn takeable(mut self) -> Self {
        self.0.push(12);
        self
    }
    fn store_u32(mut self, off: u16, v: u32) -> Self {
        self.0.push(1);
        self.0.extend_from_slice(&off.to_le_bytes());
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

fn channel_poll() {
    let dir = corpus("channel_poll");
    // SQ header at 0x1000, CQ header at 0x3000 (128 KiB region, 4 + 8 entries).
    let one = Script::default()
        .irq(true)
        .submit(Command::Nop, 1)
        .pending()
        .poll(8)
        .complete(0)
        .flush()
        .consume();
    write(&dir, "nop_roundtrip", &one.0);

    let mut s = Script::default().irq(true);
    for (i, (_, cmd)) in commands().into_iter().take(4).enumerate() {
        s = s.submit(cmd, 10 + i as u64);
    }
    s = s.takeable().poll(2).poll(8);
    for sel in [0, 1, 2, 3] {
        s = s.complete(sel);
    }
    let four = s.flush().consume();
    write(&dir, "four_commands", &four.0);

    // Invalid entries complete with an error at once.
    let bad = Script::default()
        .submit_raw(&[0x77, 0])
        .submit(Command::MemAlloc { size: 0 }, 2)
        .poll(4)
        .flush()
        .consume();
    write(&dir, "invalid_entries", &bad.0);

    // The CQ fills (8 completions not consumed), then the guest catches up.
    let mut full = Script::default();
    for round in 0..3u64 {
        for i in 0..4 {
            full = full.submit(Command::GetInfo, round * 4 + i);
        }
        full = full.poll(8);
        for _ in 0..4 {
            full = full.complete(0);
        }
        full = full.takeable();
    }
    let full = full.consume().poll(8).complete(0);
    write(&dir, "cq_full", &full.0);

    // Reset with work taken.
    let reset = Script::default()
        .submit(Command::Nop, 1)
        .poll(4)
        .guest_reset()
        .host_reset()
        .submit(Command::Nop, 2)
        .poll(4)
        .complete(0);
    write(&dir, "reset", &reset.0);

    // Impossible indices fence the VM: SQ tail 100 ahead, then (after a reset) CQ head ahead.
    let fence = Script::default()
        .store_u32(0x1000, 100)
        .pending()
        .poll(4)
        .guest_reset()
        .host_reset()
        .submit(Command::Nop, 3)
        .store_u32(0x3040, 9)
        .poll(4);
    write(&dir, "fence", &fence.0);

    // The guest scribbles on the host's SQ head word; a poll that takes nothing (budget 0)
    // leaves the scribble, the next one that takes an entry publishes the real head.
    let scribble = Script::default()
        .store_u32(0x1040, 11)
        .submit(Command::Nop, 4)
        .poll(0)
        .poll(4)
        .complete(0);
    write(&dir, "scribbled_sq_head", &scribble.0);
}

const CONFIGS: &[(&str, &str)] = &[
    (
        "minimal",
        "[[vm]]\nname = \"a\"\nsocket = \"/run/vgpu/a.sock\"\nvm_id = 1\n",
    ),
    (
        "two_vms",
        r#"[mediator]
backend = "cpu"
[[vm]]
name = "a"
socket = "/tmp/a.sock"
vm_id = 1
pool_id = 3
priority = 2
mem_quota = "64MiB"
shm_size = 1048576
[[vm]]
name = "b"
socket = "/tmp/b.sock"
vm_id = 2
"#,
    ),
    (
        "full",
        r#"[mediator]
backend = "auto"
admin_socket = "/run/vgpu/admin.sock"
admin_socket_mode = "0660"
admin_group = "vgpu"
poll_us = 50
max_kernel_us = 100000
cpu_slots = 2
cpu_devices = 2
cpu_device_mem = "1GiB"
executor_cpus = [3, 5]
fault_isolation = "process"
cuda_kernel_accounting = true

[scheduler]
policy = "priority"
max_wait_ms = 100
vm_max_queued = 64
vm_max_inflight = 8
device_depth = 4
reserve_slots = 1
reserve_priority = 3

[limits]
max_allocations = 1024
max_streams = 16
max_events = 256
max_modules = 8
max_module_bytes = "4MiB"
max_kernel_ms = 2000

[[pool]]
id = 0
name = "gold"
gpus = [0, 1]
weight = 3
mem_quota = "8GiB"
isolation = "context"
max_kernel_ms = 500

[[pool]]
id = 1
name = "bronze"

[[vm]]
name = "vm-a"
socket = "/run/vgpu/vm-a.sock"
vm_id = 1
pool = 0
priority = 2
mem_quota = "256MiB"
shm_size = "16MiB"
sq_entries = 256
cq_entries = 512
socket_owner = "libvirt-qemu"
socket_group = 107
socket_mode = 0o660

[[vm]]
name = "vm-b"
socket = "/run/vgpu/vm-b.sock"
vm_id = 2
pool_id = 1
shm_size = "128KiB"
sq_entries = 2
cq_entries = 2
"#,
    ),
];

fn config() {
    let dir = corpus("config");
    for (name, text) in CONFIGS {
        write(&dir, &format!("{name}.toml"), text.as_bytes());
    }
}

fn main() {
    cmd_decode();
    channel_poll();
    config();
    println!(
        "seed corpus written under {}/corpus",
        env!("CARGO_MANIFEST_DIR")
    );
}
