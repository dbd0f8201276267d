//! Where everything sits inside a channel region.
//!
//! ```text
//! offset                         what                              written by
//! 0                              header (magic, version, config)    creator only
//! 1 * LINE                       need_wakeup of side A              A (set), B (clear on signal)
//! 2 * LINE                       need_wakeup of side B              B (set), A (clear on signal)
//! 3 * LINE + d * 4 * LINE        direction d counters, one line each:
//!     + 0 * LINE                   active.head                      producer of d
//!     + 1 * LINE                   active.tail                      consumer of d
//!     + 2 * LINE                   free.head                        consumer of d
//!     + 3 * LINE                   free.tail                        producer of d
//! RINGS (= 11 * LINE)            per direction d: active ring, then free ring,
//!                                `ring_slots` descriptors of 8 bytes each
//! POOLS (page aligned)           per direction d: `bufs` buffers of `buf_size` bytes
//! ```
//!
//! Direction 0 is A→B, direction 1 is B→A. `LINE` is 128 bytes (two cache
//! lines: the adjacent-line prefetcher of x86 pulls pairs). All counters are
//! `u32` wrapping counters stored little-endian in an `AtomicU32`;
//! descriptors are `{offset: u32, len: u32}` stored as one `AtomicU64`
//! (`offset | len << 32`, so the same bytes as a `#[repr(C)]` struct on a
//! little-endian machine). A descriptor offset is relative to the start of
//! its direction's pool; the free ring carries `len = 0`.

use crate::Error;

/// Spacing of independently written words (two 64-byte cache lines).
pub const LINE: usize = 128;
/// `b"FRNG"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FRNG");
/// Layout version; bump on any incompatible change.
pub const VERSION: u32 = 1;

/// Required alignment of the region start.
pub const REGION_ALIGN: usize = 64;
const PAGE: usize = 4096;

/// Largest ring accepted (keeps all arithmetic far from overflow).
pub const MAX_RING_SLOTS: u32 = 1 << 20;
/// Largest buffer accepted.
pub const MAX_BUF_SIZE: u32 = 1 << 20;
/// Buffers are multiples of this (keeps every buffer cache-line aligned).
pub const BUF_ALIGN: u32 = 64;

pub mod field {
    //! Byte offsets inside the header line.
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const RING_SLOTS: usize = 8;
    pub const BUF_SIZE: usize = 12;
    pub const BUFS: usize = 16;
    /// Total region size in bytes (u64) as computed by the creator.
    pub const REGION_SIZE: usize = 24;
}

/// Offset of side A's `need_wakeup` word (side B's is one `LINE` further).
pub const FLAGS: usize = LINE;
/// Offset of the counters of direction 0; direction `d` adds `d * 4 * LINE`.
pub const COUNTERS: usize = 3 * LINE;
/// Offset of the first ring.
pub const RINGS: usize = 11 * LINE;

/// Offsets of the counters of a direction relative to its counter block.
pub const ACTIVE_HEAD: usize = 0;
pub const ACTIVE_TAIL: usize = LINE;
pub const FREE_HEAD: usize = 2 * LINE;
pub const FREE_TAIL: usize = 3 * LINE;

/// Offset of counter `which` ([`ACTIVE_HEAD`] …) of direction `dir`.
pub const fn counter_offset(dir: usize, which: usize) -> usize {
    COUNTERS + dir * 4 * LINE + which
}

/// Shape of a channel: ring size, buffer size and buffers per direction.
///
/// Both directions use the same shape. `bufs` may not exceed `ring_slots`
/// (so a free ring can always hold every buffer of its pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Descriptors per ring (power of two).
    pub ring_slots: u32,
    /// Bytes per buffer (multiple of 64); the largest frame a channel carries.
    pub buf_size: u32,
    /// Buffers per direction (`1..=ring_slots`).
    pub bufs: u32,
}

impl Default for Config {
    /// 1024 slots, 2048-byte buffers, 1024 buffers per direction (≈ 4.1 MiB).
    fn default() -> Self {
        Config {
            ring_slots: 1024,
            buf_size: 2048,
            bufs: 1024,
        }
    }
}

impl Config {
    /// Checks the shape; the error names the offending field.
    pub fn validate(&self) -> Result<(), Error> {
        let Config {
            ring_slots,
            buf_size,
            bufs,
        } = *self;
        if ring_slots == 0 || !ring_slots.is_power_of_two() || ring_slots > MAX_RING_SLOTS {
            return Err(Error::BadConfig {
                field: "ring_slots",
                value: ring_slots,
                why: "must be a power of two in 1..=1048576",
            });
        }
        if buf_size == 0 || buf_size % BUF_ALIGN != 0 || buf_size > MAX_BUF_SIZE {
            return Err(Error::BadConfig {
                field: "buf_size",
                value: buf_size,
                why: "must be a multiple of 64 in 64..=1048576",
            });
        }
        if bufs == 0 || bufs > ring_slots {
            return Err(Error::BadConfig {
                field: "bufs",
                value: bufs,
                why: "must be in 1..=ring_slots",
            });
        }
        if (bufs as u64) * (buf_size as u64) > u32::MAX as u64 {
            return Err(Error::BadConfig {
                field: "bufs",
                value: bufs,
                why: "bufs * buf_size must fit in 32 bits",
            });
        }
        Ok(())
    }

    /// Bytes of one ring (`ring_slots` descriptors), line aligned.
    pub fn ring_bytes(&self) -> usize {
        round_up(self.ring_slots as usize * 8, LINE)
    }

    /// Offset of the active (`free == false`) or free ring of direction `dir`.
    pub fn ring_offset(&self, dir: usize, free: bool) -> usize {
        RINGS + (dir * 2 + free as usize) * self.ring_bytes()
    }

    /// Bytes of one direction's buffer pool.
    pub fn pool_bytes(&self) -> usize {
        self.bufs as usize * self.buf_size as usize
    }

    /// Offset of the buffer pool of direction `dir`.
    pub fn pool_offset(&self, dir: usize) -> usize {
        round_up(RINGS + 4 * self.ring_bytes(), PAGE) + dir * round_up(self.pool_bytes(), PAGE)
    }

    /// Bytes a region with this shape needs. Meaningful only for a shape
    /// that passes [`Config::validate`] (an invalid one may give any size).
    pub fn region_size(&self) -> usize {
        let c = Config {
            ring_slots: self.ring_slots.min(MAX_RING_SLOTS),
            buf_size: self.buf_size.min(MAX_BUF_SIZE),
            bufs: self.bufs.min(MAX_RING_SLOTS),
        };
        c.pool_offset(2)
    }
}

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}
