//! MD2 (RFC 1319), the digest under cudart's integrity check (as HMAC-MD2, RFC 2104).
//!
//! The state is kept the way the check's reference traces show it: the 48-byte buffer whose
//! second and third 16 bytes fill as message bytes arrive, the checksum, the count of bytes in
//! the current block and the checksum's last byte, so that the traces can be compared whole
//! ([`Md2::from_trace`], [`Md2::to_trace`]).

/// RFC 1319's substitution table, a permutation of 0..=255 made from the digits of pi.
const S: [u8; 256] = [
    41, 46, 67, 201, 162, 216, 124, 1, 61, 54, 84, 161, 236, 240, 6, 19, //
    98, 167, 5, 243, 192, 199, 115, 140, 152, 147, 43, 217, 188, 76, 130, 202, //
    30, 155, 87, 60, 253, 212, 224, 22, 103, 66, 111, 24, 138, 23, 229, 18, //
    190, 78, 196, 214, 218, 158, 222, 73, 160, 251, 245, 142, 187, 47, 238, 122, //
    169, 104, 121, 145, 21, 178, 7, 63, 148, 194, 16, 137, 11, 34, 95, 33, //
    128, 127, 93, 154, 90, 144, 50, 39, 53, 62, 204, 231, 191, 247, 151, 3, //
    255, 25, 48, 179, 72, 165, 181, 209, 215, 94, 146, 42, 172, 86, 170, 198, //
    79, 184, 56, 210, 150, 164, 125, 182, 118, 252, 107, 226, 156, 116, 4, 241, //
    69, 157, 112, 89, 100, 113, 135, 32, 134, 91, 207, 101, 230, 45, 168, 2, //
    27, 96, 37, 173, 174, 176, 185, 246, 28, 70, 97, 105, 52, 64, 126, 15, //
    85, 71, 163, 35, 221, 81, 175, 58, 195, 92, 249, 206, 186, 197, 234, 38, //
    44, 83, 13, 110, 133, 40, 132, 9, 211, 223, 205, 244, 65, 129, 77, 82, //
    106, 220, 55, 200, 108, 193, 171, 250, 36, 225, 123, 8, 12, 189, 177, 74, //
    120, 136, 149, 139, 227, 99, 232, 109, 233, 203, 213, 254, 59, 0, 29, 57, //
    242, 239, 183, 14, 102, 88, 208, 228, 166, 119, 114, 248, 235, 117, 75, 10, //
    49, 68, 80, 180, 143, 237, 31, 26, 219, 153, 141, 51, 159, 17, 131, 20, //
];

/// An MD2 computation in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Md2 {
    /// X: [0..16] the chaining value, [16..32] the block being filled, [32..48] their xor.
    x: [u8; 48],
    checksum: [u8; 16],
    /// Bytes of the current block received so far (0..16).
    filled: u8,
    /// The checksum byte last updated (RFC 1319's L).
    last: u8,
}

impl Md2 {
    pub(crate) fn new() -> Self {
        Md2 {
            x: [0; 48],
            checksum: [0; 16],
            filled: 0,
            last: 0,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        let i = usize::from(self.filled);
        self.x[16 + i] = b;
        self.x[32 + i] = self.x[i] ^ b;
        self.checksum[i] ^= S[usize::from(b ^ self.last)];
        self.last = self.checksum[i];
        self.filled = (self.filled + 1) % 16;
        if self.filled == 0 {
            self.compress();
        }
    }

    /// RFC 1319 step 4: 18 rounds over X.
    fn compress(&mut self) {
        let mut t = 0u8;
        for round in 0..18u8 {
            for v in self.x.iter_mut() {
                *v ^= S[usize::from(t)];
                t = *v;
            }
            t = t.wrapping_add(round);
        }
    }

    /// Pads (RFC 1319 step 1), appends the checksum (step 2) and answers the digest.
    pub(crate) fn finish(mut self) -> [u8; 16] {
        let pad = 16 - self.filled;
        for _ in 0..pad {
            self.byte(pad);
        }
        let checksum = self.checksum;
        self.update(&checksum);
        let mut out = [0; 16];
        out.copy_from_slice(&self.x[..16]);
        out
    }

    /// The state in the traces' 66-byte layout: X, checksum, count, last.
    #[cfg(test)]
    pub(crate) fn to_trace(&self) -> [u8; 66] {
        let mut t = [0; 66];
        t[..48].copy_from_slice(&self.x);
        t[48..64].copy_from_slice(&self.checksum);
        t[64] = self.filled;
        t[65] = self.last;
        t
    }

    #[cfg(test)]
    pub(crate) fn from_trace(t: &[u8; 66]) -> Self {
        let mut m = Md2::new();
        m.x.copy_from_slice(&t[..48]);
        m.checksum.copy_from_slice(&t[48..64]);
        m.filled = t[64];
        m.last = t[65];
        m
    }
}

/// HMAC (RFC 2104) over MD2 with a key of exactly one block (16 bytes), so the key is used as
/// it is: MD2((key ^ 0x5c..) ‖ MD2((key ^ 0x36..) ‖ message)). `message` feeds the inner digest.
pub(crate) fn hmac(key: &[u8; 16], message: impl FnOnce(&mut Md2)) -> [u8; 16] {
    let mut inner = Md2::new();
    inner.update(&key.map(|b| b ^ 0x36));
    message(&mut inner);
    let inner = inner.finish();
    let mut outer = Md2::new();
    outer.update(&key.map(|b| b ^ 0x5c));
    outer.update(&inner);
    outer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn md2(s: &str) -> String {
        let mut m = Md2::new();
        m.update(s.as_bytes());
        hex(m.finish())
    }

    #[test]
    fn the_table_is_a_permutation() {
        let mut seen = [false; 256];
        for b in S {
            assert!(!seen[usize::from(b)]);
            seen[usize::from(b)] = true;
        }
    }

    #[test]
    fn rfc_1319_test_suite() {
        assert_eq!(md2(""), "8350e5a3e24c153df2275c9f80692773");
        assert_eq!(md2("a"), "32ec01ec4a6dac72c0ab96fb34c0b5d1");
        assert_eq!(md2("abc"), "da853b0d3f88d99b30283a69e6ded6bb");
        assert_eq!(md2("message digest"), "ab4f496bfb2a530b219ff33031fe06b0");
        assert_eq!(
            md2("abcdefghijklmnopqrstuvwxyz"),
            "4e8ddff3650292ab5a4108c3aa47940b"
        );
        assert_eq!(
            md2("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
            "da33def2a42df13975352846c30338cd"
        );
        assert_eq!(
            md2(&"1234567890".repeat(8)),
            "d5976f79d83d3a0dc9806c3c66f3efd8"
        );
    }

    #[test]
    fn a_split_update_is_one_update() {
        let mut a = Md2::new();
        a.update(b"hello, ");
        a.update(b"world of sixteen-byte blocks");
        assert_eq!(hex(a.finish()), md2("hello, world of sixteen-byte blocks"));
    }
}
