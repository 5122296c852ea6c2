//! The stock QEMU `ivshmem-doorbell` device: its PCI ids and BAR0 registers.

/// PCI vendor id (Red Hat / virtio).
pub const PCI_VENDOR: u16 = 0x1af4;
/// PCI device id of ivshmem.
pub const PCI_DEVICE: u16 = 0x1110;
/// BAR0 size in bytes.
pub const BAR0_SIZE: usize = 256;
/// BAR0: interrupt mask.
pub const REG_INTR_MASK: usize = 0x0;
/// BAR0: interrupt status.
pub const REG_INTR_STATUS: usize = 0x4;
/// BAR0: our own peer id, assigned by the server (read-only).
pub const REG_IV_POSITION: usize = 0x8;
/// BAR0: doorbell; write `(peer << 16) | vector`.
pub const REG_DOORBELL: usize = 0xC;

/// On each VM's socket, QEMU (or a process client) is peer 0.
pub const CLIENT_PEER_ID: u16 = 0;
/// On each VM's socket, vgpud is peer 1.
pub const MEDIATOR_PEER_ID: u16 = 1;
/// Number of interrupt vectors vgpud offers (QEMU needs `vectors=` at least this).
pub const VECTORS: u16 = 1;
/// ivshmem server protocol version.
pub const PROTOCOL_VERSION: i64 = 0;

/// The value to write to [`REG_DOORBELL`] to ring `vector` of `peer`.
pub const fn doorbell_value(peer: u16, vector: u16) -> u32 {
    ((peer as u32) << 16) | vector as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn doorbell() {
        assert_eq!(doorbell_value(1, 0), 0x0001_0000);
        assert_eq!(doorbell_value(0x1234, 3), 0x1234_0003);
    }
}
