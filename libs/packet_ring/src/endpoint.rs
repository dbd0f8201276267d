//! One side's handle on a channel region: batched send, receive and the
//! sleep protocol.
//!
//! Everything read from the region is untrusted. The endpoint keeps its own
//! counters and the ring capacity privately, copies each descriptor out of
//! shared memory exactly once (one 64-bit atomic load), checks it, and only
//! then uses it. A counter or descriptor the peer could not honestly have
//! written disconnects the endpoint for good: from then on it never touches
//! the region again and every call reports `Disconnected`.
//!
//! Memory ordering: slots are written with relaxed stores and published by a
//! release store of the counter; the other side acquires the counter before
//! reading slots. The sleep protocol is a Dekker pair: the sleeper stores its
//! `need_wakeup`, fences (SeqCst), re-reads the counters; the producer stores
//! its counter, fences (SeqCst), reads `need_wakeup`. At least one of them
//! sees the other's store, so no wake-up is lost.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::layout::{self, field, Config};
use crate::{Error, PeerError, TxError};

/// Which end of a channel this is. `A` is conventionally the service
/// provider, `B` the client (see docs/INTERNALS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// Index of the direction this side sends on (0 = A→B, 1 = B→A).
    fn tx_dir(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Whether an endpoint still talks to its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// The peer broke the protocol; the endpoint no longer touches the region.
    Disconnected(PeerError),
}

/// Initialises a region for `config`: header, counters, every buffer of each
/// direction in that direction's free ring, both `need_wakeup` flags clear.
/// Buffer contents are left as they are (a fresh memfd is zeroed).
///
/// # Safety
/// `ptr` must be valid for reads and writes of `len` bytes, and nobody may
/// use the region concurrently while it is being initialised.
pub unsafe fn init_region(ptr: *mut u8, len: usize, config: &Config) -> Result<(), Error> {
    // SAFETY: forwarded from the caller.
    unsafe { init_region_with_start(ptr, len, config, 0) }
}

/// Like [`init_region`], but all ring counters start at `start` instead of 0
/// (used by tests to exercise the wrap-around of the `u32` counters).
///
/// # Safety
/// As for [`init_region`].
#[doc(hidden)]
pub unsafe fn init_region_with_start(
    ptr: *mut u8,
    len: usize,
    config: &Config,
    start: u32,
) -> Result<(), Error> {
    config.validate()?;
    check_region(ptr, len, config)?;
    // SAFETY: the caller gave us exclusive access to `len` bytes at `ptr`,
    // and `check_region` proved every offset below lies inside them and is
    // suitably aligned.
    unsafe {
        let u32_at = |off: usize| &*(ptr.add(off) as *const AtomicU32);
        for off in [
            field::VERSION,
            field::RING_SLOTS,
            field::BUF_SIZE,
            field::BUFS,
        ] {
            u32_at(off).store(0, Ordering::Relaxed);
        }
        u32_at(field::VERSION).store(layout::VERSION, Ordering::Relaxed);
        u32_at(field::RING_SLOTS).store(config.ring_slots, Ordering::Relaxed);
        u32_at(field::BUF_SIZE).store(config.buf_size, Ordering::Relaxed);
        u32_at(field::BUFS).store(config.bufs, Ordering::Relaxed);
        let size = config.region_size() as u64;
        u32_at(field::REGION_SIZE).store(size as u32, Ordering::Relaxed);
        u32_at(field::REGION_SIZE + 4).store((size >> 32) as u32, Ordering::Relaxed);
        u32_at(layout::FLAGS).store(0, Ordering::Relaxed);
        u32_at(layout::FLAGS + layout::LINE).store(0, Ordering::Relaxed);
        let mask = config.ring_slots - 1;
        for dir in 0..2 {
            let c = layout::COUNTERS + dir * 4 * layout::LINE;
            u32_at(c + layout::ACTIVE_HEAD).store(start, Ordering::Relaxed);
            u32_at(c + layout::ACTIVE_TAIL).store(start, Ordering::Relaxed);
            u32_at(c + layout::FREE_TAIL).store(start, Ordering::Relaxed);
            let free = ptr.add(config.ring_offset(dir, true)) as *const AtomicU64;
            for i in 0..config.bufs {
                let slot = start.wrapping_add(i) & mask;
                (*free.add(slot as usize)).store((i * config.buf_size) as u64, Ordering::Relaxed);
            }
            u32_at(c + layout::FREE_HEAD).store(start.wrapping_add(config.bufs), Ordering::Relaxed);
        }
        // The magic goes last: a region is valid only once it is complete.
        u32_at(field::MAGIC).store(layout::MAGIC, Ordering::Release);
    }
    Ok(())
}

fn check_region(ptr: *mut u8, len: usize, config: &Config) -> Result<(), Error> {
    if ptr as usize % layout::REGION_ALIGN != 0 {
        return Err(Error::Misaligned { addr: ptr as usize });
    }
    let need = config.region_size();
    if len < need {
        return Err(Error::RegionTooSmall { need, have: len });
    }
    Ok(())
}

/// The sending half: my descriptors go out on `active`, buffers come back on
/// `free`. Counters without `_pub` are private working copies.
struct Tx {
    active: *const AtomicU64,
    free: *const AtomicU64,
    pool: *mut u8,
    /// active.head (mine) and free.tail (mine) in shared memory.
    head_at: *const AtomicU32,
    free_tail_at: *const AtomicU32,
    /// active.tail and free.head (the peer's) in shared memory.
    tail_at: *const AtomicU32,
    free_head_at: *const AtomicU32,
    head: u32,
    head_pub: u32,
    /// Last validated value of the peer's active.tail.
    tail: u32,
    free_tail: u32,
    free_tail_pub: u32,
    /// Last validated value of the peer's free.head.
    free_head: u32,
}

/// The receiving half: descriptors arrive on `active`, buffers go back on
/// `free`.
struct Rx {
    active: *const AtomicU64,
    free: *const AtomicU64,
    pool: *const u8,
    /// active.head and free.tail (the peer's) in shared memory.
    head_at: *const AtomicU32,
    free_tail_at: *const AtomicU32,
    /// active.tail and free.head (mine) in shared memory.
    tail_at: *const AtomicU32,
    free_head_at: *const AtomicU32,
    /// Last validated value of the peer's active.head.
    head: u32,
    tail: u32,
    free_head: u32,
    /// Last validated value of the peer's free.tail.
    free_tail: u32,
}

/// One side of a channel, attached to a region initialised by
/// [`init_region`].
///
/// Not `Sync`: one thread drives an endpoint. It may move between threads.
pub struct Endpoint {
    side: Side,
    slots: u32,
    mask: u32,
    buf_size: u32,
    /// `buf_size - 1` when `buf_size` is a power of two (alignment checks
    /// without a division), else 0.
    buf_mask: u32,
    pool_bytes: u32,
    my_flag: *const AtomicU32,
    peer_flag: *const AtomicU32,
    tx: Tx,
    rx: Rx,
    state: State,
    /// `send` failed with `Full` since the last successful send: a sleeper
    /// must also wake when buffers come back.
    tx_blocked: bool,
    /// Something was published since the last look at the peer's flag.
    signal_due: bool,
}

// SAFETY: the raw pointers point into a shared region that outlives the
// endpoint (attach's contract); all access to it goes through atomics or
// through buffers this side owns under the ring protocol.
unsafe impl Send for Endpoint {}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("side", &self.side)
            .field("ring_slots", &self.slots)
            .field("buf_size", &self.buf_size)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Attaches `side` to an initialised region. The header is read once and
    /// checked against `len`; from then on the shape lives in the handle.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for the whole
    /// life of the endpoint. The region may be written concurrently by the
    /// peer (it is never trusted), but by nobody else acting as `side`.
    pub unsafe fn attach(ptr: *mut u8, len: usize, side: Side) -> Result<Endpoint, Error> {
        if ptr as usize % layout::REGION_ALIGN != 0 {
            return Err(Error::Misaligned { addr: ptr as usize });
        }
        if len < layout::RINGS {
            return Err(Error::RegionTooSmall {
                need: layout::RINGS,
                have: len,
            });
        }
        // SAFETY: `len >= RINGS`, so the header line is inside the region.
        let u32_at = |off: usize| unsafe { &*(ptr.add(off) as *const AtomicU32) };
        let magic = u32_at(field::MAGIC).load(Ordering::Acquire);
        if magic != layout::MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = u32_at(field::VERSION).load(Ordering::Relaxed);
        if version != layout::VERSION {
            return Err(Error::BadVersion(version));
        }
        let config = Config {
            ring_slots: u32_at(field::RING_SLOTS).load(Ordering::Relaxed),
            buf_size: u32_at(field::BUF_SIZE).load(Ordering::Relaxed),
            bufs: u32_at(field::BUFS).load(Ordering::Relaxed),
        };
        config.validate()?;
        check_region(ptr, len, &config)?;

        let tx_dir = side.tx_dir();
        let rx_dir = 1 - tx_dir;
        let counter = |dir: usize, which: usize| {
            u32_at(layout::COUNTERS + dir * 4 * layout::LINE + which) as *const AtomicU32
        };
        // SAFETY: `check_region` proved the whole layout of `config` fits.
        let (tx_active, tx_free, tx_pool, rx_active, rx_free, rx_pool) = unsafe {
            (
                ptr.add(config.ring_offset(tx_dir, false)) as *const AtomicU64,
                ptr.add(config.ring_offset(tx_dir, true)) as *const AtomicU64,
                ptr.add(config.pool_offset(tx_dir)),
                ptr.add(config.ring_offset(rx_dir, false)) as *const AtomicU64,
                ptr.add(config.ring_offset(rx_dir, true)) as *const AtomicU64,
                ptr.add(config.pool_offset(rx_dir)) as *const u8,
            )
        };
        let (my_flag, peer_flag) = {
            let a = u32_at(layout::FLAGS) as *const AtomicU32;
            let b = u32_at(layout::FLAGS + layout::LINE) as *const AtomicU32;
            match side {
                Side::A => (a, b),
                Side::B => (b, a),
            }
        };
        let load = |p: *const AtomicU32| {
            // SAFETY: every counter pointer lies inside the checked region.
            unsafe { (*p).load(Ordering::Acquire) }
        };
        let slots = config.ring_slots;
        let mut tx = Tx {
            active: tx_active,
            free: tx_free,
            pool: tx_pool,
            head_at: counter(tx_dir, layout::ACTIVE_HEAD),
            free_tail_at: counter(tx_dir, layout::FREE_TAIL),
            tail_at: counter(tx_dir, layout::ACTIVE_TAIL),
            free_head_at: counter(tx_dir, layout::FREE_HEAD),
            head: 0,
            head_pub: 0,
            tail: 0,
            free_tail: 0,
            free_tail_pub: 0,
            free_head: 0,
        };
        tx.head = load(tx.head_at);
        tx.head_pub = tx.head;
        tx.tail = load(tx.tail_at);
        tx.free_tail = load(tx.free_tail_at);
        tx.free_tail_pub = tx.free_tail;
        tx.free_head = load(tx.free_head_at);
        let mut rx = Rx {
            active: rx_active,
            free: rx_free,
            pool: rx_pool,
            head_at: counter(rx_dir, layout::ACTIVE_HEAD),
            free_tail_at: counter(rx_dir, layout::FREE_TAIL),
            tail_at: counter(rx_dir, layout::ACTIVE_TAIL),
            free_head_at: counter(rx_dir, layout::FREE_HEAD),
            head: 0,
            tail: 0,
            free_head: 0,
            free_tail: 0,
        };
        rx.head = load(rx.head_at);
        rx.tail = load(rx.tail_at);
        rx.free_head = load(rx.free_head_at);
        rx.free_tail = load(rx.free_tail_at);
        for (head, tail, free) in [
            (tx.head, tx.tail, false),
            (tx.free_head, tx.free_tail, true),
            (rx.head, rx.tail, false),
            (rx.free_head, rx.free_tail, true),
        ] {
            if head.wrapping_sub(tail) > slots {
                return Err(Error::Peer(if free {
                    PeerError::FreeIndexOutOfRange { head, tail }
                } else {
                    PeerError::ActiveIndexOutOfRange { head, tail }
                }));
            }
        }
        let buf_mask = if config.buf_size.is_power_of_two() {
            config.buf_size - 1
        } else {
            0
        };
        Ok(Endpoint {
            side,
            slots,
            mask: slots - 1,
            buf_size: config.buf_size,
            buf_mask,
            pool_bytes: config.bufs * config.buf_size,
            my_flag,
            peer_flag,
            tx,
            rx,
            state: State::Up,
            tx_blocked: false,
            signal_due: false,
        })
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Largest frame this channel carries.
    pub fn buf_size(&self) -> usize {
        self.buf_size as usize
    }

    /// Descriptors per ring.
    pub fn ring_slots(&self) -> usize {
        self.slots as usize
    }

    /// `Up`, or `Disconnected` with the peer's violation.
    pub fn state(&self) -> State {
        self.state
    }

    /// True while the peer has broken no rule.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    fn violation(&mut self, e: PeerError) -> PeerError {
        self.state = State::Disconnected(e);
        e
    }

    fn check_up(&self) -> Result<(), PeerError> {
        match self.state {
            State::Up => Ok(()),
            State::Disconnected(e) => Err(e),
        }
    }

    /// Is `offset` the start of a buffer of a pool?
    #[inline]
    fn valid_offset(&self, offset: u32) -> bool {
        offset < self.pool_bytes
            && if self.buf_mask != 0 {
                offset & self.buf_mask == 0
            } else {
                offset % self.buf_size == 0
            }
    }

    // ---- sending -------------------------------------------------------

    /// Re-reads the peer's active.tail; it may only have moved forward, and
    /// not past what I published.
    fn refresh_tx_tail(&mut self) -> Result<(), PeerError> {
        // SAFETY: pointer into the region (attach's contract).
        let t = unsafe { (*self.tx.tail_at).load(Ordering::Acquire) };
        if t.wrapping_sub(self.tx.tail) > self.tx.head_pub.wrapping_sub(self.tx.tail) {
            return Err(self.violation(PeerError::ActiveIndexOutOfRange {
                head: self.tx.head_pub,
                tail: t,
            }));
        }
        self.tx.tail = t;
        Ok(())
    }

    /// Re-reads the peer's free.head; it may only have moved forward, and
    /// only into slots I have released.
    fn refresh_tx_free_head(&mut self) -> Result<(), PeerError> {
        // SAFETY: pointer into the region (attach's contract).
        let h = unsafe { (*self.tx.free_head_at).load(Ordering::Acquire) };
        let limit = self
            .tx
            .free_tail_pub
            .wrapping_add(self.slots)
            .wrapping_sub(self.tx.free_head);
        if h.wrapping_sub(self.tx.free_head) > limit {
            return Err(self.violation(PeerError::FreeIndexOutOfRange {
                head: h,
                tail: self.tx.free_tail_pub,
            }));
        }
        self.tx.free_head = h;
        Ok(())
    }

    /// Finds a free buffer and a free slot; returns the buffer's offset.
    #[inline]
    fn tx_reserve(&mut self) -> Result<u32, TxError> {
        if self.state != State::Up {
            return Err(TxError::Disconnected);
        }
        if self.tx.head.wrapping_sub(self.tx.tail) >= self.slots {
            self.refresh_tx_tail().map_err(|_| TxError::Disconnected)?;
            if self.tx.head.wrapping_sub(self.tx.tail) >= self.slots {
                self.tx_blocked = true;
                return Err(TxError::Full);
            }
        }
        if self.tx.free_tail == self.tx.free_head {
            self.refresh_tx_free_head()
                .map_err(|_| TxError::Disconnected)?;
            if self.tx.free_tail == self.tx.free_head {
                self.tx_blocked = true;
                return Err(TxError::Full);
            }
        }
        let slot = (self.tx.free_tail & self.mask) as usize;
        // SAFETY: slot < ring_slots; the free ring lies inside the region.
        let d = unsafe { (*self.tx.free.add(slot)).load(Ordering::Relaxed) };
        let offset = d as u32;
        if !self.valid_offset(offset) {
            self.violation(PeerError::BadFreeDescriptor { offset });
            return Err(TxError::Disconnected);
        }
        Ok(offset)
    }

    #[inline]
    fn tx_commit(&mut self, offset: u32, len: u32) {
        let slot = (self.tx.head & self.mask) as usize;
        // SAFETY: slot < ring_slots; the active ring lies inside the region.
        unsafe {
            (*self.tx.active.add(slot)).store(offset as u64 | (len as u64) << 32, Ordering::Relaxed)
        };
        self.tx.head = self.tx.head.wrapping_add(1);
        self.tx.free_tail = self.tx.free_tail.wrapping_add(1);
        self.tx_blocked = false;
    }

    /// Copies `frame` into a buffer and queues it. Nothing is visible to the
    /// peer until [`flush`](Self::flush).
    #[inline]
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxError> {
        if frame.len() > self.buf_size as usize {
            return Err(TxError::TooLong);
        }
        let offset = self.tx_reserve()?;
        // SAFETY: `offset` was validated as a buffer start inside the pool and
        // `frame.len() <= buf_size`; the buffer is ours until the peer gets
        // its descriptor.
        unsafe {
            core::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                self.tx.pool.add(offset as usize),
                frame.len(),
            )
        };
        self.tx_commit(offset, frame.len() as u32);
        Ok(())
    }

    /// Zero-copy send: `fill` gets a buffer of `max_len` bytes and returns how
    /// many it wrote; that many bytes are queued. Returning 0 cancels: nothing
    /// is queued, the buffer stays free, and `Ok(0)` is returned (so a caller
    /// that decides late not to send, e.g. a filter drop, sends no empty
    /// frame). A length above `max_len` queues nothing and returns
    /// `TooLong`. Not visible before `flush`.
    ///
    /// The buffer lies in memory the peer can also write (a hostile peer
    /// could scribble on it); treat it as output only.
    #[inline]
    pub fn send_with<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        max_len: usize,
        fill: F,
    ) -> Result<usize, TxError> {
        if max_len > self.buf_size as usize {
            return Err(TxError::TooLong);
        }
        let offset = self.tx_reserve()?;
        // SAFETY: as in `send`.
        let buf =
            unsafe { core::slice::from_raw_parts_mut(self.tx.pool.add(offset as usize), max_len) };
        let len = fill(buf);
        if len > max_len {
            return Err(TxError::TooLong);
        }
        if len == 0 {
            // Nothing was taken off the free ring yet (`tx_commit` does
            // that), so cancelling is just not committing.
            return Ok(0);
        }
        self.tx_commit(offset, len as u32);
        Ok(len)
    }

    /// Frames that can be queued right now (free slots and free buffers).
    /// Refreshes the view of the peer's counters. 0 when disconnected.
    pub fn tx_space(&mut self) -> usize {
        if self.state != State::Up
            || self.refresh_tx_tail().is_err()
            || self.refresh_tx_free_head().is_err()
        {
            return 0;
        }
        let slots = self.slots - self.tx.head.wrapping_sub(self.tx.tail);
        let bufs = self.tx.free_head.wrapping_sub(self.tx.free_tail);
        slots.min(bufs) as usize
    }

    /// The last `send` failed with `Full` and none has succeeded since: a
    /// sleeper waits for buffers to come back as well as for frames.
    pub fn tx_blocked(&self) -> bool {
        self.tx_blocked
    }

    /// Frames queued by `send` and not yet published by `flush`.
    pub fn tx_unflushed(&self) -> usize {
        self.tx.head.wrapping_sub(self.tx.head_pub) as usize
    }

    /// Publishes everything queued since the last flush (one store), and
    /// returns whether the peer asked to be woken and must now be signalled
    /// (its doorbell written). Also reports a needed wake-up after `recv`
    /// returned buffers to a peer waiting for them, so call it once per
    /// loop iteration even on a receive-only side.
    #[inline]
    pub fn flush(&mut self) -> bool {
        if self.state != State::Up {
            return false;
        }
        if self.tx.head != self.tx.head_pub {
            // free.tail before active.head: the consumer, having acquired the
            // new head, must not count a buffer both as queued and as free.
            if self.tx.free_tail != self.tx.free_tail_pub {
                // SAFETY: pointer into the region (attach's contract).
                unsafe { (*self.tx.free_tail_at).store(self.tx.free_tail, Ordering::Release) };
                self.tx.free_tail_pub = self.tx.free_tail;
            }
            // SAFETY: as above.
            unsafe { (*self.tx.head_at).store(self.tx.head, Ordering::Release) };
            self.tx.head_pub = self.tx.head;
            self.signal_due = true;
        }
        if !self.signal_due {
            return false;
        }
        self.signal_due = false;
        fence(Ordering::SeqCst);
        // SAFETY: pointer into the region (attach's contract).
        let peer_flag = unsafe { &*self.peer_flag };
        if peer_flag.load(Ordering::Relaxed) != 0 {
            peer_flag.store(0, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    // ---- receiving -----------------------------------------------------

    /// Re-reads the peer's active.head: forward only, at most a ring ahead
    /// of what I consumed.
    fn refresh_rx_head(&mut self) -> Result<(), PeerError> {
        // SAFETY: pointer into the region (attach's contract).
        let h = unsafe { (*self.rx.head_at).load(Ordering::Acquire) };
        let limit = self
            .rx
            .tail
            .wrapping_add(self.slots)
            .wrapping_sub(self.rx.head);
        if h.wrapping_sub(self.rx.head) > limit {
            return Err(self.violation(PeerError::ActiveIndexOutOfRange {
                head: h,
                tail: self.rx.tail,
            }));
        }
        self.rx.head = h;
        Ok(())
    }

    /// Re-reads the peer's free.tail: forward only, not past what I returned.
    fn refresh_rx_free_tail(&mut self) -> Result<(), PeerError> {
        // SAFETY: pointer into the region (attach's contract).
        let t = unsafe { (*self.rx.free_tail_at).load(Ordering::Acquire) };
        if t.wrapping_sub(self.rx.free_tail) > self.rx.free_head.wrapping_sub(self.rx.free_tail) {
            return Err(self.violation(PeerError::FreeIndexOutOfRange {
                head: self.rx.free_head,
                tail: t,
            }));
        }
        self.rx.free_tail = t;
        Ok(())
    }

    /// Frames waiting to be received (re-reads the peer's head). 0 when
    /// disconnected.
    pub fn rx_pending(&mut self) -> usize {
        if self.state != State::Up || self.refresh_rx_head().is_err() {
            return 0;
        }
        self.rx.head.wrapping_sub(self.rx.tail) as usize
    }

    /// Hands up to `max` waiting frames to `frame`, in order, then returns
    /// their buffers to the peer and publishes the new tail (one store each
    /// per call). Returns how many frames were handled.
    ///
    /// The slice lies in shared memory: a hostile peer could change it while
    /// `frame` looks at it. Parse it once (or copy it) and do not rely on
    /// reading the same bytes twice.
    #[inline]
    pub fn recv<F: FnMut(&[u8])>(&mut self, max: usize, mut frame: F) -> Result<usize, PeerError> {
        self.check_up()?;
        let max = max.min(self.slots as usize) as u32;
        if self.rx.head.wrapping_sub(self.rx.tail) < max {
            self.refresh_rx_head()?;
        }
        let mut n = self.rx.head.wrapping_sub(self.rx.tail).min(max);
        if n == 0 {
            return Ok(0);
        }
        let mut space = self.slots - self.rx.free_head.wrapping_sub(self.rx.free_tail);
        if space < n {
            self.refresh_rx_free_tail()?;
            space = self.slots - self.rx.free_head.wrapping_sub(self.rx.free_tail);
            if space == 0 {
                // An honest peer cannot hold more buffers than exist.
                return Err(self.violation(PeerError::FreeRingOverflow));
            }
            n = n.min(space);
        }
        for i in 0..n {
            let slot = (self.rx.tail.wrapping_add(i) & self.mask) as usize;
            // SAFETY: slot < ring_slots; the active ring lies in the region.
            let d = unsafe { (*self.rx.active.add(slot)).load(Ordering::Relaxed) };
            let (offset, len) = (d as u32, (d >> 32) as u32);
            if len > self.buf_size || !self.valid_offset(offset) {
                return Err(self.violation(PeerError::BadDescriptor { offset, len }));
            }
            // SAFETY: offset + len lies inside the pool (checked above).
            let data = unsafe {
                core::slice::from_raw_parts(self.rx.pool.add(offset as usize), len as usize)
            };
            frame(data);
            let fslot = (self.rx.free_head.wrapping_add(i) & self.mask) as usize;
            // SAFETY: fslot < ring_slots; the free ring lies in the region,
            // and this slot is ours (space was checked).
            unsafe { (*self.rx.free.add(fslot)).store(offset as u64, Ordering::Relaxed) };
        }
        self.rx.tail = self.rx.tail.wrapping_add(n);
        self.rx.free_head = self.rx.free_head.wrapping_add(n);
        // SAFETY: pointers into the region (attach's contract).
        unsafe {
            (*self.rx.free_head_at).store(self.rx.free_head, Ordering::Release);
            (*self.rx.tail_at).store(self.rx.tail, Ordering::Release);
        }
        self.signal_due = true;
        Ok(n as usize)
    }

    // ---- sleeping ------------------------------------------------------

    /// First half of going to sleep: sets my `need_wakeup`, fences, and
    /// re-checks the rings. Returns true if work arrived meanwhile (frames to
    /// receive, or buffers back after a `Full` send): then the flag is
    /// cleared again and the caller must not sleep. On false, block on the
    /// doorbell, then call [`cancel_sleep`](Self::cancel_sleep).
    ///
    /// Flush before this: unflushed frames are not looked at. A
    /// disconnected endpoint returns false (there is nothing to wait for).
    pub fn prepare_sleep(&mut self) -> bool {
        if self.state != State::Up {
            return false;
        }
        // SAFETY: pointer into the region (attach's contract).
        let flag = unsafe { &*self.my_flag };
        flag.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let work = self.rx_pending() > 0 || (self.tx_blocked && self.tx_space() > 0);
        if work {
            flag.store(0, Ordering::Relaxed);
        }
        work
    }

    /// Clears my `need_wakeup` (after waking up, or to abandon a sleep).
    pub fn cancel_sleep(&mut self) {
        if self.state != State::Up {
            return;
        }
        // SAFETY: pointer into the region (attach's contract).
        unsafe { (*self.my_flag).store(0, Ordering::Relaxed) };
    }
}
