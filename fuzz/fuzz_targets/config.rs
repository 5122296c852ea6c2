//! `Config::from_toml` on arbitrary UTF-8 text (vgpud's config file, also re-read on SIGHUP).
//!
//! Input: the file's text; inputs that are not UTF-8 are skipped (`Config::load` reads the file
//! with `read_to_string`, which refuses them before the parser sees them).
//!
//! Checked, besides "never panics": a config that loads passes `validate()` again, a reload to
//! itself has no unsafe changes (`unsafe_changes` of the config and a clone is empty), and the
//! lookups vgpud makes on a loaded config (every VM's pool, kernel limit and layout, every
//! pool's devices, the executor CPUs) do not panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpu_mediator::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    if let Err(e) = cfg.validate() {
        panic!("a loaded config fails validate(): {e}");
    }
    let same = cfg.unsafe_changes(&cfg);
    assert!(same.is_empty(), "reload to itself is unsafe: {same:?}");
    let again = cfg.clone();
    let same = cfg.unsafe_changes(&again);
    assert!(same.is_empty(), "reload to a clone is unsafe: {same:?}");

    for vm in 0..cfg.vms.len() {
        let pool = cfg.vm_pool(vm);
        assert_eq!(cfg.pools[pool].id, cfg.vms[vm].pool_id);
        let _ = cfg.kernel_limit(vm);
        let layout = cfg.vms[vm].layout().expect("validated layout");
        assert!(layout.staging_offset + layout.staging_size == layout.shm_size);
    }
    for devices in [1, 2, 8] {
        let _ = cfg.check_devices(devices);
        for pool in 0..cfg.pools.len() {
            assert!(cfg.pool_devices(pool, devices).iter().all(|&d| d < devices));
        }
        for i in 0..devices {
            let _ = cfg.mediator.executor_cpu(i);
        }
    }
});
