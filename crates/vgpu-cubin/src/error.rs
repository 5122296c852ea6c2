//! The one error type of the crate.

/// Why an image could not be parsed. Every malformed input ends here, never in a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes start with none of the magics this crate knows (fatbin, ELF, PTX text).
    #[error("not a fatbin, ELF cubin or PTX image")]
    UnknownFormat,
    /// The bytes are a `__fatBinC_Wrapper_t` ([`crate::Wrapper`]): its fatbin lives at the
    /// address in its `data` field, which only the caller can follow.
    #[error("a fatbin wrapper, not an image: parse the fatbin its data pointer points at")]
    Wrapper,
    /// A structure runs past the end of the bytes given.
    #[error("{what} truncated: needs {needed} bytes, {available} available")]
    Truncated {
        /// The structure that was being read.
        what: &'static str,
        /// How many bytes it needs (offset + length).
        needed: u64,
        /// How many bytes there are.
        available: u64,
    },
    /// A field holds a value this parser does not accept.
    #[error("bad {what}: {value:#x}")]
    BadField {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A compressed entry did not decompress.
    #[error("{codec} decompression failed: {reason}")]
    Decompress {
        /// `"LZ4"` or `"Zstandard"`.
        codec: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// Decompressing would produce more than the limit allows.
    #[error("decompressed data would exceed the limit of {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The image has no code that a device of this compute capability can run
    /// (`CUDA_ERROR_NO_BINARY_FOR_GPU`).
    #[error("no code for compute capability {}.{}", arch / 10, arch % 10)]
    NoCodeFor {
        /// The device's compute capability (90 for 9.0).
        arch: u32,
    },
    /// PTX text that this parser cannot read.
    #[error("PTX line {line}: {reason}")]
    Ptx {
        /// 1-based line of the offending token.
        line: u32,
        /// What was wrong.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
