//! Completion status codes.

use num_enum::TryFromPrimitive;

/// Completion status codes. Also used in the `last_error` register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, TryFromPrimitive)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The opcode is not one this device knows.
    UnknownOpcode = 1,
    /// A field is out of its allowed range (sizes, dimensions, widths, flags).
    InvalidArgument = 2,
    /// A staging (offset, length) does not lie inside the staging area.
    StagingOutOfRange = 3,
    /// A device pointer range is not inside one allocation of this VM.
    InvalidAddress = 4,
    /// The physical device is out of memory.
    OutOfMemory = 5,
    /// The allocation would exceed this VM's memory quota.
    QuotaExceeded = 6,
    /// The backend does not implement this operation.
    NotSupported = 7,
    /// A kernel faulted (illegal address); the device context is now broken until reset.
    KernelFault = 8,
    /// The device context is broken (an earlier fault); reset the device.
    ContextLost = 9,
    /// The function handle names no function.
    InvalidFunction = 10,
    /// An internal error in vgpud (a bug or a backend failure); logged on the host.
    Internal = 11,
    /// The device was reset while the command was queued; it did not run.
    Aborted = 12,
    /// The work the command asks about has not completed yet (e.g. an event's record).
    NotReady = 13,
    /// A per-VM limit of vgpud's config was reached (allocations, streams, events, modules,
    /// bytes of module images, queued or in-flight work, or a kernel's cost on the cpu device).
    LimitExceeded = 14,
    /// The VM's work ran past its pool's kernel time limit (`max_kernel_ms`); vgpud reset the
    /// device context to stop it. Reset the device to go on.
    KernelTimeout = 15,
    /// The device could not give the VM a context (the host is out of GPU memory or worker
    /// processes); reset the device to try again.
    ContextUnavailable = 16,
    /// The module has no symbol of the name asked for (1.5).
    NotFound = 17,
    /// The stream capture was invalidated (an operation it could not record, or a
    /// synchronisation of a capturing stream): it ended without a graph (1.7).
    CaptureInvalidated = 18,
    /// The operation is not allowed on a capturing stream (a synchronisation, a query, a wait
    /// for an event recorded outside the capture); the capture is invalidated (1.7).
    CaptureUnsupported = 19,
}

impl Status {
    /// Decodes a raw status.
    pub fn from_raw(v: u32) -> Option<Self> {
        Self::try_from(v).ok()
    }

    /// A short human description.
    pub fn describe(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "ok",
            UnknownOpcode => "unknown opcode",
            InvalidArgument => "invalid argument",
            StagingOutOfRange => "staging range outside the staging area",
            InvalidAddress => "device address not inside an allocation of this VM",
            OutOfMemory => "device out of memory",
            QuotaExceeded => "VM memory quota exceeded",
            NotSupported => "not supported by this backend",
            KernelFault => "kernel faulted; reset the device",
            ContextLost => "device context lost after a fault; reset the device",
            InvalidFunction => "invalid function handle",
            Internal => "internal mediator error",
            Aborted => "aborted by a device reset",
            NotReady => "not ready: the work has not completed yet",
            LimitExceeded => "a per-VM limit of the host's config was reached",
            KernelTimeout => "the VM's work ran past the kernel time limit; the context was reset",
            ContextUnavailable => "the host could not create a device context; reset to retry",
            NotFound => "the module has no symbol of that name",
            CaptureInvalidated => "the stream capture was invalidated; no graph was made",
            CaptureUnsupported => "not allowed on a capturing stream; the capture is invalidated",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.describe(), *self as u32)
    }
}
