//! Errors: setting a region up, sending, and what a misbehaving peer did.

use core::fmt;

/// Why a region could not be initialised or attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The shape is unusable (`field` holds `value`, `why` says what is allowed).
    BadConfig {
        field: &'static str,
        value: u32,
        why: &'static str,
    },
    /// The region is smaller than its shape needs.
    RegionTooSmall { need: usize, have: usize },
    /// The region does not start on a 64-byte boundary.
    Misaligned { addr: usize },
    /// The header does not start with the magic `FRNG`.
    BadMagic(u32),
    /// The header carries a layout version this code does not speak.
    BadVersion(u32),
    /// The ring counters found at attach time are inconsistent.
    Peer(PeerError),
    /// A system call failed (Linux glue): `op` names it, `errno` says why.
    Os { op: &'static str, errno: i32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadConfig { field, value, why } => {
                write!(f, "bad channel config: {field} = {value}: {why}")
            }
            Error::RegionTooSmall { need, have } => {
                write!(
                    f,
                    "channel region too small: need {need} bytes, have {have}"
                )
            }
            Error::Misaligned { addr } => {
                write!(f, "channel region at {addr:#x} is not 64-byte aligned")
            }
            Error::BadMagic(m) => write!(f, "channel region has bad magic {m:#010x}"),
            Error::BadVersion(v) => write!(f, "channel region has unknown version {v}"),
            Error::Peer(e) => write!(f, "channel region inconsistent at attach: {e}"),
            Error::Os { op, errno } => write!(f, "{op} failed: errno {errno}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

#[cfg(feature = "std")]
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Os { errno, .. } => std::io::Error::from_raw_os_error(errno),
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// What the peer did wrong. Once seen, the endpoint is disconnected for good.
///
/// `head`/`tail` are the counter values as read (the peer's one and our own
/// private copy); `offset`/`len` the descriptor as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerError {
    /// The peer moved an active ring counter backwards or past the other end.
    ActiveIndexOutOfRange { head: u32, tail: u32 },
    /// The peer moved a free ring counter backwards or past the other end.
    FreeIndexOutOfRange { head: u32, tail: u32 },
    /// An active descriptor points outside the pool, not at a buffer start,
    /// or is longer than a buffer.
    BadDescriptor { offset: u32, len: u32 },
    /// A returned (free) descriptor points outside the pool or not at a
    /// buffer start.
    BadFreeDescriptor { offset: u32 },
    /// The peer queued frames while keeping our free ring full: it returned
    /// more buffers than exist (duplicates).
    FreeRingOverflow,
    /// The region header is not a valid channel header.
    BadHeader,
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::ActiveIndexOutOfRange { head, tail } => {
                write!(
                    f,
                    "peer violation: active ring index out of range (head {head}, tail {tail})"
                )
            }
            PeerError::FreeIndexOutOfRange { head, tail } => {
                write!(
                    f,
                    "peer violation: free ring index out of range (head {head}, tail {tail})"
                )
            }
            PeerError::BadDescriptor { offset, len } => {
                write!(
                    f,
                    "peer violation: bad descriptor (offset {offset}, len {len})"
                )
            }
            PeerError::BadFreeDescriptor { offset } => {
                write!(f, "peer violation: bad free descriptor (offset {offset})")
            }
            PeerError::FreeRingOverflow => {
                write!(
                    f,
                    "peer violation: free ring overflow (buffers returned twice)"
                )
            }
            PeerError::BadHeader => write!(f, "peer violation: bad region header"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PeerError {}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// No free buffer or no free ring slot right now: flush, let the peer
    /// drain, retry (or drop the frame and count it).
    Full,
    /// The frame is longer than a buffer ([`crate::Endpoint::buf_size`]).
    TooLong,
    /// The endpoint is disconnected ([`crate::Endpoint::state`] says why).
    Disconnected,
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Full => f.write_str("channel full"),
            TxError::TooLong => f.write_str("frame longer than a channel buffer"),
            TxError::Disconnected => f.write_str("channel disconnected"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TxError {}
