//! The smoltcp [`Device`] of the stack: Ethernet frames to and from the
//! `nic` channel.
//!
//! The device is written against [`FrameQueue`], a small frame-queue trait
//! that the packet ring implements (and a test can implement over a
//! `VecDeque`). Tokens reach ring buffers directly: a received frame is
//! handed to smoltcp as the slice inside the shared-memory buffer, and a
//! transmitted frame is written by smoltcp straight into a ring buffer
//! (`send_with`). Nothing is allocated per frame, and the ring is flushed
//! (one doorbell at most) once per poll round by the caller.
//!
//! smoltcp builds immediate answers (ARP replies, echo replies, RSTs) with
//! the tx token it got *together with* the rx token, while the received
//! frame is still borrowed; such a frame is built in a small ring of
//! held-back frames (64, allocated once) and queued as soon as the received
//! frame is released, or in a later round if the channel is full (reception
//! pauses while that ring is full, so no answer is lost).
//!
//! Every received frame is classified first ([`crate::classify`]) and passed
//! through the input filter hook; every transmitted one through the output
//! filter hook. A dropped received frame is handed to smoltcp as an empty
//! slice, which it ignores.

use core::cell::{Cell, RefCell};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::classify::{self, Local, Ports, Reason, Verdict, REASONS};
use crate::filter::{self, Filter};

/// A queue of Ethernet frames in both directions (one channel).
pub trait FrameQueue {
    /// Whether a received frame is waiting.
    fn rx_pending(&mut self) -> bool;
    /// Hands the next received frame to `f`, then releases its buffer.
    /// `None` when no frame is waiting (or the channel is down).
    fn recv_one<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R>;
    /// Whether one more frame can be queued for transmission right now.
    fn tx_room(&mut self) -> bool;
    /// Queues a frame written by `f` into a buffer of at least `len` bytes;
    /// `f` returns the frame's final length (0: nothing is sent). False if
    /// no buffer was free.
    fn send_with(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> usize) -> bool;
}

/// Frame counters of the device.
pub struct Counters {
    pub rx_frames: Cell<u64>,
    pub tx_frames: Cell<u64>,
    pub drops: [Cell<u64>; REASONS],
}

impl Counters {
    fn new() -> Self {
        Counters {
            rx_frames: Cell::new(0),
            tx_frames: Cell::new(0),
            drops: core::array::from_fn(|_| Cell::new(0)),
        }
    }

    pub fn count(&self, reason: Reason) {
        let c = &self.drops[reason as usize];
        c.set(c.get() + 1);
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.drops[reason as usize].get()
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// State the tokens share (they live at the same time, so by `&`).
pub struct Shared {
    pub local: Local,
    pub ports: Ports,
    pub counters: Counters,
    pub filter: RefCell<Filter>,
    /// Answers smoltcp built while a received frame was borrowed, waiting
    /// for room in the ring.
    deferred: RefCell<Deferred>,
}

/// Frames held back: a fixed ring of `DEFERRED` frame buffers (allocated
/// once), so an answer is not lost when the ring is momentarily full.
struct Deferred {
    bufs: Box<[u8]>,
    lens: [usize; DEFERRED],
    head: usize,
    count: usize,
    mtu: usize,
    /// Where a frame is built that cannot be queued anywhere (then dropped).
    scratch: Box<[u8]>,
}

/// Frames the device holds back at most.
const DEFERRED: usize = 64;

impl Deferred {
    fn new(mtu: usize) -> Deferred {
        Deferred {
            bufs: vec![0; mtu * DEFERRED].into_boxed_slice(),
            lens: [0; DEFERRED],
            head: 0,
            count: 0,
            mtu,
            scratch: vec![0; mtu].into_boxed_slice(),
        }
    }

    /// The buffer of the next free slot, if any.
    fn slot(&mut self) -> Option<(usize, &mut [u8])> {
        if self.count == DEFERRED {
            return None;
        }
        let i = (self.head + self.count) % DEFERRED;
        Some((i, &mut self.bufs[i * self.mtu..(i + 1) * self.mtu]))
    }
}

/// The device: a frame queue and the shared state of its tokens.
pub struct NicDevice<Q> {
    pub queue: Q,
    pub shared: Shared,
    mtu: usize,
}

impl<Q: FrameQueue> NicDevice<Q> {
    /// `mtu` is the largest Ethernet frame (header included) the channel
    /// carries.
    pub fn new(queue: Q, local: Local, mtu: usize) -> Self {
        NicDevice {
            queue,
            shared: Shared {
                local,
                ports: Ports::default(),
                counters: Counters::new(),
                filter: RefCell::new(Filter::default()),
                deferred: RefCell::new(Deferred::new(mtu)),
            },
            mtu,
        }
    }

    /// Queues the frames held back, as far as the ring has room.
    pub fn flush_deferred(&mut self) {
        flush_deferred(&mut self.queue, &self.shared);
    }
}

fn flush_deferred<Q: FrameQueue>(queue: &mut Q, shared: &Shared) {
    let mut d = shared.deferred.borrow_mut();
    while d.count > 0 {
        let (i, mtu) = (d.head, d.mtu);
        let len = d.lens[i];
        let frame = &d.bufs[i * mtu..i * mtu + len];
        let sent = queue.send_with(len, |buf| match buf.get_mut(..len) {
            Some(out) => {
                out.copy_from_slice(frame);
                len
            }
            None => 0,
        });
        if !sent {
            return; // kept for the next round
        }
        bump(&shared.counters.tx_frames);
        d.head = (d.head + 1) % DEFERRED;
        d.count -= 1;
    }
}

fn send_reject<Q: FrameQueue>(queue: &mut Q, shared: &Shared) {
    let mut filter = shared.filter.borrow_mut();
    let Some(reply) = filter.take_reply() else {
        return;
    };
    let len = reply.len();
    let sent = queue.send_with(len, |buf| match buf.get_mut(..len) {
        Some(out) => {
            out.copy_from_slice(reply);
            len
        }
        None => 0,
    });
    if sent {
        filter.rejects_sent += 1;
        bump(&shared.counters.tx_frames);
    } else {
        shared.counters.count(Reason::TxRingFull);
    }
}

impl<Q: FrameQueue> phy::Device for NicDevice<Q> {
    type RxToken<'a>
        = RxToken<'a, Q>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, Q>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_, Q>, TxToken<'_, Q>)> {
        if !self.queue.rx_pending() {
            return None;
        }
        // No room for an answer: receive again once frames went out.
        if self.shared.deferred.borrow().count == DEFERRED {
            flush_deferred(&mut self.queue, &self.shared);
            if self.shared.deferred.borrow().count == DEFERRED {
                return None;
            }
        }
        let NicDevice { queue, shared, .. } = self;
        let shared = &*shared;
        Some((
            RxToken { queue, shared },
            TxToken {
                queue: None,
                shared,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, Q>> {
        if !self.queue.tx_room() {
            return None;
        }
        let NicDevice { queue, shared, .. } = self;
        Some(TxToken {
            queue: Some(queue),
            shared,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        // Received checksums were verified by the classifier.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.udp = Checksum::Tx;
        sums.tcp = Checksum::Tx;
        sums.icmpv4 = Checksum::Tx;
        caps.checksum = sums;
        caps
    }
}

/// A received frame, read in place from its ring buffer.
pub struct RxToken<'a, Q> {
    queue: &'a mut Q,
    shared: &'a Shared,
}

impl<Q: FrameQueue> phy::RxToken for RxToken<'_, Q> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let RxToken { queue, shared } = self;
        let mut f = Some(f);
        let mut result = None;
        queue.recv_one(|frame| {
            bump(&shared.counters.rx_frames);
            let pass = match classify::classify(frame, &shared.local, &shared.ports) {
                Verdict::Drop(reason) => {
                    shared.counters.count(reason);
                    false
                }
                Verdict::DeliverCounted(reason) => {
                    shared.counters.count(reason);
                    true
                }
                Verdict::Deliver => true,
            };
            let pass = pass
                && match shared.filter.borrow_mut().input(frame) {
                    filter::Verdict::Accept => true,
                    filter::Verdict::Drop => {
                        shared.counters.count(Reason::FilterInput);
                        false
                    }
                };
            if let Some(f) = f.take() {
                result = Some(f(if pass { frame } else { &[] }));
            }
        });
        // An answer built while the frame was borrowed goes out now, and so
        // does a reply to a packet the filter rejected.
        flush_deferred(queue, shared);
        send_reject(queue, shared);
        match result {
            Some(r) => r,
            // The queue had lost its frame (channel went down between
            // `receive` and here): smoltcp ignores an empty frame.
            None => (f.take().expect("f is only taken when result is set"))(&[]),
        }
    }
}

/// A frame to transmit: straight into a ring buffer, or (while a received
/// frame is borrowed) into the scratch buffer.
pub struct TxToken<'a, Q> {
    queue: Option<&'a mut Q>,
    shared: &'a Shared,
}

impl<Q: FrameQueue> phy::TxToken for TxToken<'_, Q> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let TxToken { queue, shared } = self;
        let mut f = Some(f);
        let mut result = None;
        let mut build = |buf: &mut [u8]| -> usize {
            let Some(frame) = buf.get_mut(..len) else {
                return 0;
            };
            if let Some(f) = f.take() {
                result = Some(f(frame));
            }
            match shared.filter.borrow_mut().output(frame) {
                filter::Verdict::Accept => len,
                filter::Verdict::Drop => {
                    shared.counters.count(Reason::FilterOutput);
                    0
                }
            }
        };
        match queue {
            Some(queue) => {
                let mut queued = 0;
                if !queue.send_with(len, |buf| {
                    queued = build(buf);
                    queued
                }) {
                    shared.counters.count(Reason::TxRingFull);
                } else if queued > 0 {
                    bump(&shared.counters.tx_frames);
                }
            }
            None => {
                let mut d = shared.deferred.borrow_mut();
                if let Some((i, buf)) = d.slot() {
                    let n = build(buf);
                    if n > 0 {
                        d.lens[i] = n;
                        d.count += 1;
                    }
                } else {
                    shared.counters.count(Reason::TxRingFull);
                }
            }
        }
        match result {
            Some(r) => r,
            // No buffer: smoltcp still needs its closure run; the frame is
            // built into the scratch buffer and dropped (counted above).
            None => {
                let mut d = shared.deferred.borrow_mut();
                let n = len.min(d.scratch.len());
                (f.take().expect("f is only taken when result is set"))(&mut d.scratch[..n])
            }
        }
    }
}
