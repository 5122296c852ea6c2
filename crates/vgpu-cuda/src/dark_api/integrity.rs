//! INTEGRITY_CHECK (d4082055, 3 words): cudart checks that the driver answering it is the one
//! it expects. It calls [1] with its version and the time and compares the answer with its own
//! computation, failing its initialisation on a mismatch.
//!
//! The answer (learned from ZLUDA's reverse engineering, vosen/ZLUDA dark_api/src/lib.rs
//! `integrity_check` and its tests, and zluda/src/impl/driver.rs for the inputs): for a version
//! ending in 0 or 1 a fixed pair; otherwise HMAC-MD2 under a fixed key of a 48-byte record
//! (driver version, the runtime's version, pid, `pthread_self` truncated to 32 bits, the
//! addresses of the CUDART_INTERFACE table, of this table and of its slot [1], the time) followed
//! by a 28-byte record per device (UUID, PCI domain, bus and device ids), all in memory order,
//! read back as two native-endian u64.

use std::ffi::{c_int, c_void};

use super::driver::{self, ok};
use super::md2::{self, Md2};
use super::unknown::{self, unknown_slots};
use super::{cudart, Table};
use crate::api::guard;
use crate::types::{CUdevice_attribute, CUresult, CUuuid};

pub(crate) static TABLE: Table<3> = Table({
    let mut w = Table::<3>::sized();
    w[1] = integrity_check as *const c_void;
    unknown_slots!(w, unknown::INTEGRITY_CHECK; 2);
    w
});

/// The HMAC key (what the first stage of the runtime's computation always produces).
const KEY: [u8; 16] = [
    0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52, 0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f,
];

/// The answer for versions ending in 0 and 1.
fn fixed_answer(version: u32) -> Option<[u64; 2]> {
    match version % 10 {
        0 => Some([0x3341_181c_03cb_675c, 0x8ed3_83aa_1f4c_d1e8]),
        1 => Some([0x1841_181c_03cb_675c, 0x8ed3_83aa_1f4c_d1e8]),
        _ => None,
    }
}

/// One device as the check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceHashInfo {
    /// `cuDeviceGetUuid_v2`.
    pub uuid: [u8; 16],
    pub pci_domain: i32,
    pub pci_bus: i32,
    pub pci_device: i32,
}

impl DeviceHashInfo {
    fn bytes(&self) -> [u8; 28] {
        let mut b = [0; 28];
        b[..16].copy_from_slice(&self.uuid);
        b[16..20].copy_from_slice(&self.pci_domain.to_ne_bytes());
        b[20..24].copy_from_slice(&self.pci_bus.to_ne_bytes());
        b[24..28].copy_from_slice(&self.pci_device.to_ne_bytes());
        b
    }
}

/// Everything the answer depends on, as plain values.
#[derive(Clone, Debug)]
pub struct IntegrityInputs<'a> {
    /// The runtime's argument: its version.
    pub version: u32,
    /// The runtime's argument: the time.
    pub unix_seconds: u64,
    /// What `cuDriverGetVersion` answers.
    pub driver_version: u32,
    pub process: u32,
    /// `pthread_self()` truncated to 32 bits.
    pub thread: u32,
    pub cudart_table: usize,
    pub integrity_table: usize,
    /// The address in this table's slot [1].
    pub function: usize,
    pub devices: &'a [DeviceHashInfo],
}

impl IntegrityInputs<'_> {
    /// The 48-byte record, laid out as a C struct of these fields in this order.
    fn record(&self) -> Vec<u8> {
        let mut r = Vec::with_capacity(48);
        r.extend_from_slice(&self.driver_version.to_ne_bytes());
        r.extend_from_slice(&self.version.to_ne_bytes());
        r.extend_from_slice(&self.process.to_ne_bytes());
        r.extend_from_slice(&self.thread.to_ne_bytes());
        r.extend_from_slice(&self.cudart_table.to_ne_bytes());
        r.extend_from_slice(&self.integrity_table.to_ne_bytes());
        r.extend_from_slice(&self.function.to_ne_bytes());
        r.extend_from_slice(&self.unix_seconds.to_ne_bytes());
        r
    }
}

/// The answer of INTEGRITY_CHECK[1] for `i`.
pub fn integrity_hash(i: &IntegrityInputs<'_>) -> [u64; 2] {
    if let Some(a) = fixed_answer(i.version) {
        return a;
    }
    let d = md2::hmac(&KEY, |m: &mut Md2| {
        m.update(&i.record());
        for dev in i.devices {
            m.update(&dev.bytes());
        }
    });
    let (lo, hi) = d.split_at(8);
    [
        u64::from_ne_bytes(lo.try_into().expect("8 bytes")),
        u64::from_ne_bytes(hi.try_into().expect("8 bytes")),
    ]
}

// `pthread_t` is an unsigned long on Linux.
unsafe extern "C" {
    fn pthread_self() -> usize;
}

/// The devices through this library's own entry points.
fn devices() -> Result<Vec<DeviceHashInfo>, CUresult> {
    let mut count: c_int = 0;
    // SAFETY: a valid out-pointer.
    ok(unsafe { driver::cuDeviceGetCount(&mut count) })?;
    (0..count)
        .map(|dev| {
            let mut uuid = CUuuid { bytes: [0; 16] };
            // SAFETY: a valid out-pointer.
            ok(unsafe { driver::cuDeviceGetUuid_v2(&mut uuid, dev) })?;
            let attr = |a: CUdevice_attribute| {
                let mut v: c_int = 0;
                // SAFETY: a valid out-pointer.
                ok(unsafe { driver::cuDeviceGetAttribute(&mut v, a, dev) }).map(|()| v)
            };
            Ok(DeviceHashInfo {
                uuid: uuid.bytes.map(|b| b as u8),
                pci_domain: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
                pci_bus: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
                pci_device: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
            })
        })
        .collect()
}

fn answer(version: u32, unix_seconds: u64) -> Result<[u64; 2], CUresult> {
    if let Some(a) = fixed_answer(version) {
        return Ok(a);
    }
    let mut driver_version: c_int = 0;
    // SAFETY: a valid out-pointer.
    ok(unsafe { driver::cuDriverGetVersion(&mut driver_version) })?;
    let devices = devices()?;
    // SAFETY: pthread_self has no preconditions.
    let thread = unsafe { pthread_self() } as u32;
    Ok(integrity_hash(&IntegrityInputs {
        version,
        unix_seconds,
        driver_version: driver_version as u32,
        process: std::process::id(),
        thread,
        cudart_table: cudart::TABLE.addr() as usize,
        integrity_table: TABLE.addr() as usize,
        function: TABLE.0[1] as usize,
        devices: &devices,
    }))
}

/// [1] `(u32 version, u64 unix_seconds, u64 out[2])`.
///
/// # Safety
/// `out` is NULL or valid for a write of two u64.
unsafe extern "C" fn integrity_check(
    version: u32,
    unix_seconds: u64,
    out: *mut [u64; 2],
) -> CUresult {
    guard("INTEGRITY_CHECK[1]", || {
        if out.is_null() {
            return CUresult::CUDA_ERROR_INVALID_VALUE;
        }
        match answer(version, unix_seconds) {
            Ok(a) => {
                // SAFETY: non-NULL, valid for a write (the caller's promise).
                unsafe { out.write(a) };
                CUresult::CUDA_SUCCESS
            }
            Err(e) => e,
        }
    })
}

#[cfg(test)]
mod tests {
    //! The reference traces are ZLUDA's (vosen/ZLUDA dark_api/src/lib.rs, tests of
    //! `integrity_check`): the 66-byte MD2 state before and after each stage, taken from the
    //! runtime computing the check (CUDA 12.8 on Linux).
    use super::*;

    const AFTER_KEY: [u8; 66] = [
        0x8b, 0x21, 0x9a, 0x49, 0xe8, 0x6d, 0x1a, 0xee, 0xf2, 0x37, 0xf9, 0xb5, 0x4a, 0x8c, 0x3c,
        0x75, 0xc7, 0x1e, 0xee, 0x21, 0xcf, 0x29, 0x8a, 0xe5, 0x13, 0x83, 0xf4, 0xec, 0x33, 0x04,
        0xe2, 0xfd, 0xb0, 0x2f, 0x09, 0x01, 0x4f, 0xf7, 0x68, 0x6d, 0x69, 0x46, 0x43, 0x7e, 0xb6,
        0x2b, 0x21, 0xed, 0x57, 0xa1, 0x10, 0x86, 0x0e, 0x60, 0x44, 0x1e, 0x70, 0x5f, 0x67, 0xd1,
        0xeb, 0x67, 0xa1, 0x3d, 0x00, 0x3d,
    ];

    #[test]
    fn versions_ending_in_0_or_1_get_the_fixed_answers() {
        let mut i = inputs(&[]);
        i.version = 13000;
        assert_eq!(integrity_hash(&i), [0x3341181C03CB675C, 0x8ED383AA1F4CD1E8]);
        i.version = 12081;
        assert_eq!(integrity_hash(&i), [0x1841181C03CB675C, 0x8ED383AA1F4CD1E8]);
    }

    #[test]
    fn one_byte_into_a_traced_state() {
        let before = [
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x38, 0xc0, 0x9b, 0xf7, 0xff, 0x7f, 0x00, 0x00, 0xa3, 0x61, 0xe4, 0x42,
            0xf6, 0x67, 0x94, 0xff, 0x18, 0xc0, 0x9b, 0xf7, 0xff, 0x7f, 0x00, 0x00, 0xa4, 0x57,
            0x72, 0xf7, 0xff, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let after = [
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x22, 0xc0, 0x9b, 0xf7, 0xff, 0x7f, 0x00, 0x00, 0xa3, 0x61, 0xe4, 0x42,
            0xf6, 0x67, 0x94, 0xff, 0x22, 0xc0, 0x9b, 0xf7, 0xff, 0x7f, 0x00, 0x00, 0xa4, 0x57,
            0x72, 0xf7, 0xff, 0x7f, 0x00, 0x00, 0x57, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x57,
        ];
        let mut m = Md2::from_trace(&before);
        m.update(&[34]);
        assert_eq!(m.to_trace(), after);
    }

    #[test]
    fn the_inner_key_block() {
        let mut m = Md2::new();
        m.update(&KEY.map(|b| b ^ 0x36));
        assert_eq!(m.to_trace(), AFTER_KEY);
    }

    fn inputs(devices: &[DeviceHashInfo]) -> IntegrityInputs<'_> {
        IntegrityInputs {
            version: 12082,
            unix_seconds: 0x682b9cee,
            driver_version: 12080,
            process: 0x002fa423,
            thread: 0xf79c1000,
            cudart_table: 0x7fff_f695_8240,
            integrity_table: 0x7fff_f695_8220,
            function: 0x7fff_f2aa_f4a0,
            devices,
        }
    }

    #[test]
    fn the_record() {
        let r = inputs(&[]).record();
        assert_eq!(r.len(), 48);
        let mut m = Md2::from_trace(&AFTER_KEY);
        m.update(&r);
        let expected = [
            0x0a, 0xfd, 0xab, 0xc9, 0xff, 0x9b, 0xa0, 0xbe, 0x4d, 0x30, 0x32, 0x82, 0x74, 0x4f,
            0xa7, 0x48, 0x9d, 0x23, 0x82, 0xa3, 0x87, 0xfa, 0x6c, 0xdb, 0x92, 0x49, 0xd9, 0xb5,
            0x4b, 0x2b, 0x5e, 0x51, 0x6e, 0xf7, 0xf9, 0x4d, 0x28, 0x8a, 0x64, 0x06, 0x19, 0xb3,
            0xe6, 0xbe, 0xa4, 0xec, 0x7e, 0x54, 0x64, 0x28, 0xd9, 0xe1, 0xd4, 0x34, 0xc0, 0xa9,
            0x49, 0x88, 0xc9, 0x61, 0x58, 0xdd, 0x66, 0x74, 0x00, 0x74,
        ];
        assert_eq!(m.to_trace(), expected);
    }

    #[test]
    fn a_device_record() {
        let before = [
            0x84, 0xfd, 0x93, 0x10, 0xc6, 0xdb, 0xb3, 0xbc, 0x49, 0xc2, 0x25, 0xe7, 0xda, 0x6e,
            0x22, 0x6f, 0x9b, 0xbd, 0x81, 0x59, 0xc3, 0x01, 0x9a, 0x7a, 0x26, 0x34, 0x39, 0x0f,
            0x2a, 0x56, 0x13, 0xb1, 0xf6, 0xbc, 0x7f, 0xa1, 0x8f, 0x04, 0xa5, 0x4d, 0x0d, 0x78,
            0xab, 0x20, 0xf8, 0x23, 0x20, 0xa5, 0x3f, 0x67, 0x36, 0xe2, 0xde, 0x8a, 0xe5, 0xdf,
            0xe1, 0xf2, 0x03, 0x94, 0xad, 0xdc, 0x9a, 0xda, 0x00, 0xda,
        ];
        let after = [
            0x1f, 0xd8, 0x25, 0xd2, 0xdf, 0xfa, 0x64, 0xc7, 0xb6, 0x1a, 0xaf, 0x22, 0xb8, 0x79,
            0xfb, 0x96, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x7c, 0x9d, 0x46, 0xd2, 0x1f, 0xd8, 0x25, 0xd2, 0xdd, 0xfa, 0x64, 0xc7, 0xb6, 0x1a,
            0xaf, 0x22, 0xe6, 0x17, 0xbd, 0x3a, 0xd7, 0xdd, 0x5f, 0x82, 0x8c, 0x87, 0xce, 0x86,
            0x66, 0xaf, 0xa0, 0x50, 0x7a, 0x7d, 0xbb, 0xbc, 0x0c, 0x50,
        ];
        let mut uuid = [0u8; 16];
        for (c, w) in uuid
            .chunks_mut(4)
            .zip([0x8a2bfe9au32, 0x382d25ac, 0xc5ae37ea, 0x5f32716d])
        {
            c.copy_from_slice(&w.to_ne_bytes());
        }
        let dev = DeviceHashInfo {
            uuid,
            pci_domain: 0,
            pci_bus: 2,
            pci_device: 0,
        };
        let mut m = Md2::from_trace(&before);
        m.update(&dev.bytes());
        assert_eq!(m.to_trace(), after);
    }

    #[test]
    fn the_digest_of_a_traced_state() {
        let before = [
            0x3e, 0x4b, 0xf2, 0x95, 0x71, 0xf5, 0x6b, 0x51, 0x07, 0xbf, 0x4b, 0xf1, 0x04, 0x0e,
            0x8e, 0x0b, 0x5f, 0x4d, 0x30, 0x0c, 0x0f, 0x0c, 0xae, 0xfb, 0x48, 0xaf, 0x23, 0xb5,
            0xea, 0x4c, 0xc2, 0xdb, 0xd7, 0xdf, 0x88, 0x74, 0x39, 0x58, 0x16, 0x3a, 0x1f, 0x7c,
            0x9b, 0x20, 0x7e, 0x7e, 0x94, 0xc8, 0x8b, 0xc6, 0xb2, 0x38, 0x0d, 0x07, 0x7d, 0xbd,
            0x90, 0xd5, 0x39, 0x63, 0xeb, 0x1d, 0x4f, 0x40, 0x00, 0x40,
        ];
        let digest = [
            0x00, 0x23, 0x53, 0x06, 0x5e, 0x96, 0xf6, 0x9c, 0x61, 0xaa, 0x96, 0x2d, 0x2e, 0xcd,
            0xa8, 0x58,
        ];
        assert_eq!(Md2::from_trace(&before).finish(), digest);
    }

    #[test]
    fn the_hash_is_hmac_md2_of_the_records() {
        let dev = DeviceHashInfo {
            uuid: [7; 16],
            pci_domain: 1,
            pci_bus: 2,
            pci_device: 3,
        };
        let i = inputs(std::slice::from_ref(&dev));
        let mut inner = Md2::from_trace(&AFTER_KEY);
        inner.update(&i.record());
        inner.update(&dev.bytes());
        let mut outer = Md2::new();
        outer.update(&KEY.map(|b| b ^ 0x5c));
        outer.update(&inner.finish());
        let d = outer.finish();
        let h = integrity_hash(&i);
        assert_eq!(h[0].to_ne_bytes(), d[..8]);
        assert_eq!(h[1].to_ne_bytes(), d[8..]);
        assert_ne!(h, integrity_hash(&inputs(&[])), "devices count");
    }

    #[test]
    fn the_slot_answers_the_fixed_versions_without_a_device() {
        let mut out = [0u64; 2];
        // SAFETY: a valid out-pointer.
        let rc = unsafe { integrity_check(13000, 0x682b9cee, &mut out) };
        assert_eq!(rc, CUresult::CUDA_SUCCESS);
        assert_eq!(out, fixed_answer(13000).unwrap());
        // SAFETY: NULL is answered without a write.
        let rc = unsafe { integrity_check(13002, 0, std::ptr::null_mut()) };
        assert_eq!(rc, CUresult::CUDA_ERROR_INVALID_VALUE);
    }

    #[test]
    fn the_slot_hashes_this_process_and_this_library() {
        let mut out = [0u64; 2];
        // SAFETY: a valid out-pointer.
        let rc = unsafe { integrity_check(13002, 0x682b9cee, &mut out) };
        // Device queries may not be implemented yet; then the slot passes their error on.
        match answer(13002, 0x682b9cee) {
            Ok(a) => {
                assert_eq!(rc, CUresult::CUDA_SUCCESS);
                assert_eq!(out, a);
            }
            Err(e) => assert_eq!(rc, e),
        }
    }
}
