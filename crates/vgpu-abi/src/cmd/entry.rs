//! The ring entries (128-byte submission, 32-byte completion) and how a command's fields are
//! packed into a submission entry's body.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Size of a submission entry.
pub const SQE_SIZE: usize = 128;
/// Size of a completion entry.
pub const CQE_SIZE: usize = 32;
/// Size of the opcode-specific body of a submission entry.
pub const SQE_BODY: usize = SQE_SIZE - 16;

/// A submission entry (guest → host). Copied out of shared memory once, then validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Sqe {
    /// [`super::Opcode`] as `u16`.
    pub opcode: u16,
    /// Opcode-specific flags.
    pub flags: u16,
    /// Stream id; commands on one stream complete in order. 0 is the default stream.
    pub stream: u32,
    /// Chosen by the submitter; returned in the completion.
    pub tag: u64,
    /// Opcode-specific body: the command's fields, see [`Field`].
    pub body: [u8; SQE_BODY],
}

impl Default for Sqe {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// A completion entry (host → guest).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Cqe {
    /// The submitter's tag.
    pub tag: u64,
    /// [`super::Status`] as `u32`.
    pub status: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// First result (e.g. the device pointer of an allocation).
    pub result0: u64,
    /// Second result.
    pub result1: u64,
}

/// A value a command carries in its entry's body.
///
/// A body holds the command's fields in their declared order, each at the next offset that is
/// a multiple of its alignment, little-endian; every byte after the last field is zero (a
/// decoder refuses an entry whose trailing bytes are not, so later ABI versions can give
/// them a meaning).
pub trait Field: Copy {
    /// Bytes in the body.
    const SIZE: usize;
    /// Alignment in the body.
    const ALIGN: usize;
    /// Reads the value from exactly [`Field::SIZE`] bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Writes the value into exactly [`Field::SIZE`] bytes.
    fn write(&self, bytes: &mut [u8]);
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            const ALIGN: usize = core::mem::size_of::<$t>();
            fn read(bytes: &[u8]) -> Self {
                let mut b = [0u8; core::mem::size_of::<$t>()];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
            fn write(&self, bytes: &mut [u8]) {
                bytes.copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
int_field!(u32, u64);

/// Bytes a body with fields of these `(size, align)` occupies (the offset after the last).
pub const fn body_len(fields: &[(usize, usize)]) -> usize {
    let mut at: usize = 0;
    let mut i = 0;
    while i < fields.len() {
        let (size, align) = fields[i];
        at = at.next_multiple_of(align) + size;
        i += 1;
    }
    at
}

/// Reads a body's fields in order.
pub struct BodyReader<'a> {
    body: &'a [u8; SQE_BODY],
    at: usize,
}

impl<'a> BodyReader<'a> {
    /// A reader at the first field.
    pub fn new(body: &'a [u8; SQE_BODY]) -> Self {
        Self { body, at: 0 }
    }

    /// The next field. Every declaration's body fits (checked when the command set is
    /// compiled), so this never reads past the body.
    pub fn field<T: Field>(&mut self) -> T {
        let at = self.at.next_multiple_of(T::ALIGN);
        self.at = at + T::SIZE;
        T::read(&self.body[at..at + T::SIZE])
    }

    /// Whether every byte after the fields read is zero.
    pub fn rest_is_zero(&self) -> bool {
        self.body[self.at..].iter().all(|&b| b == 0)
    }
}

/// Writes a body's fields in order (the body starts zeroed).
pub struct BodyWriter<'a> {
    body: &'a mut [u8; SQE_BODY],
    at: usize,
}

impl<'a> BodyWriter<'a> {
    /// A writer at the first field of a zeroed body.
    pub fn new(body: &'a mut [u8; SQE_BODY]) -> Self {
        Self { body, at: 0 }
    }

    /// Writes the next field.
    pub fn field<T: Field>(&mut self, v: &T) {
        let at = self.at.next_multiple_of(T::ALIGN);
        self.at = at + T::SIZE;
        v.write(&mut self.body[at..at + T::SIZE]);
    }
}
