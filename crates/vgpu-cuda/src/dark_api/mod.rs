//! The private tables the CUDA runtime asks for with `cuGetExportTable` (the "dark API").
//!
//! Every table has the shape NVIDIA's driver 580 gives it (measured, shared/driver-api-probe.md
//! §4): the same size word at [0] (none for the context-local-storage table), the same number of
//! words, NULL where the driver has NULL and a callable function in every slot where the driver
//! has code, because callers index fixed slots. Each table is a `static`, so every request gets
//! the same address: cudart hashes the addresses in its integrity check ([`integrity`]).
//! Slots whose meaning is known do what the driver does; the others answer
//! `CUDA_ERROR_NOT_SUPPORTED` and are reported once ([`unknown`]).

use std::ffi::c_void;

mod cls;
mod context_checks;
mod cudart;
mod driver;
mod integrity;
mod md2;
mod opaque;
mod tools;
mod unknown;

pub use cls::context_destroyed;
pub use integrity::{integrity_hash, DeviceHashInfo, IntegrityInputs};

/// A table as its callers read it: machine words, each a size, a function's address or NULL.
#[repr(transparent)]
pub(crate) struct Table<const N: usize>(pub(crate) [*const c_void; N]);

// SAFETY: a table is never written after its constant initialiser; its words are sizes and
// addresses of functions, which any thread may read.
unsafe impl<const N: usize> Sync for Table<N> {}

impl<const N: usize> Table<N> {
    /// The address handed to the caller.
    pub(crate) fn addr(&'static self) -> *const c_void {
        self.0.as_ptr().cast()
    }

    /// A table of `N` words: the size word (`N` words in bytes) at [0], the rest NULL.
    pub(crate) const fn sized() -> [*const c_void; N] {
        let mut w = [std::ptr::null(); N];
        w[0] = std::ptr::without_provenance(N * std::mem::size_of::<usize>());
        w
    }
}

/// The ids of the tables this library answers (bytes in the order of `CUuuid`).
pub(crate) mod ids {
    use super::uuid;

    /// Requested by every cudart copy first, before `cuInit` (answered NOT_FOUND: [`table`]).
    pub const F8CFF951: [u8; 16] = uuid("f8cff951-2146-8b4e-b9e2-fb469e7c0dd9");
    pub const CUDART_INTERFACE: [u8; 16] = uuid("6bd5fb6c-5bf4-e74a-8987-d93912fd9df9");
    pub const TOOLS_RUNTIME_CALLBACK_HOOKS: [u8; 16] = uuid("a094798c-2e74-2e74-93f2-0800200c0a66");
    pub const TOOLS_TLS: [u8; 16] = uuid("42d85a81-23f6-cb47-8298-f6e78a3aecdc");
    pub const CONTEXT_LOCAL_STORAGE: [u8; 16] = uuid("c693336e-1121-df11-a8c3-68f355d89593");
    pub const CONTEXT_CHECKS: [u8; 16] = uuid("263e8860-7cd2-6143-92f6-bbd5006dfa7e");
    pub const INTEGRITY_CHECK: [u8; 16] = uuid("d4082055-bde6-704b-8d34-ba123c66e1f2");
    /// Requested next to TOOLS_TLS by cuBLAS (and the libraries around it).
    pub const T21318C60: [u8; 16] = uuid("21318c60-9714-3248-8ca6-41ff7324c8f2");
    /// Requested in the TensorFlow/JAX processes, in JAX before any cudart.
    pub const T69A28E9F: [u8; 16] = uuid("69a28e9f-2449-8b47-b030-c5da330ea4e9");
    /// Requested by CuPy after its first initialisation.
    pub const DA9151D3: [u8; 16] = uuid("da9151d3-3ae6-cc41-a5c0-4f26d533e328");
    /// Requested in PyTorch's process at its first bf16 matrix product, next to 21318c60
    /// (cuBLASLt, inferred); it dereferences the table without checking the answer.
    pub const T1734DC26: [u8; 16] = uuid("1734dc26-800d-4745-8726-c0f1e7dd8bca");
}

/// The bytes of a UUID written as text (hex digits, dashes ignored), at compile time.
const fn uuid(s: &str) -> [u8; 16] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let s = s.as_bytes();
    let mut out = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < s.len() {
        if s[i] != b'-' {
            out[n / 2] |= nibble(s[i]) << if n % 2 == 0 { 4 } else { 0 };
            n += 1;
        }
        i += 1;
    }
    assert!(n == 32, "a UUID has 32 hex digits");
    out
}

/// The table with id `uuid` (bytes in the order of `CUuuid`), if this library has it.
pub fn table(uuid: &[u8; 16]) -> Option<*const c_void> {
    Some(match *uuid {
        // The real driver (580) returns a 2-slot table here that nothing calls, but with this
        // library cudart 13.0 calls its slot [1] at exit, whose meaning nobody knows.
        // Answering NOT_FOUND, as smolvm and Lupine do, keeps cudart off it; the runtime's
        // start-up is the same either way (tried with static and shared cudart 13.0).
        ids::F8CFF951 => return None,
        ids::CUDART_INTERFACE => cudart::TABLE.addr(),
        ids::TOOLS_RUNTIME_CALLBACK_HOOKS => tools::CALLBACK_HOOKS.addr(),
        ids::TOOLS_TLS => tools::TLS.addr(),
        ids::CONTEXT_LOCAL_STORAGE => cls::TABLE.addr(),
        ids::CONTEXT_CHECKS => context_checks::TABLE.addr(),
        ids::INTEGRITY_CHECK => integrity::TABLE.addr(),
        ids::T21318C60 => opaque::T21318C60.addr(),
        ids::T69A28E9F => opaque::T69A28E9F.addr(),
        ids::DA9151D3 => opaque::DA9151D3.addr(),
        ids::T1734DC26 => opaque::T1734DC26.addr(),
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests;
