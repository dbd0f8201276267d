//! Tests of the core on a heap region: the protocol, and a peer that writes
//! garbage.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;

use crate::layout::{self, Config};
use crate::*;

/// A zeroed, page-aligned heap region with guard bytes on both sides (no
/// guards with `PACKET_RING_TEST_EXACT=1`, so that AddressSanitizer sees any
/// access outside the region itself).
struct Region {
    base: *mut u8,
    layout: Layout,
    len: usize,
    cfg: Config,
    guard: usize,
}

fn guard() -> usize {
    if std::env::var_os("PACKET_RING_TEST_EXACT").is_some() {
        0
    } else {
        4096
    }
}
const CANARY: u8 = 0xA5;

impl Region {
    fn new(cfg: Config) -> Region {
        Region::with_start(cfg, 0)
    }

    fn with_start(cfg: Config, start: u32) -> Region {
        let len = cfg.region_size();
        let g = guard();
        let layout = Layout::from_size_align(len + 2 * g, 4096).unwrap();
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        unsafe {
            std::ptr::write_bytes(base, CANARY, g);
            std::ptr::write_bytes(base.add(g + len), CANARY, g);
            init_region_with_start(base.add(g), len, &cfg, start).unwrap();
        }
        Region {
            base,
            layout,
            len,
            cfg,
            guard: g,
        }
    }

    fn ptr(&self) -> *mut u8 {
        unsafe { self.base.add(self.guard) }
    }

    fn attach(&self, side: Side) -> Endpoint {
        unsafe { Endpoint::attach(self.ptr(), self.len, side).unwrap() }
    }

    fn pair(&self) -> (Endpoint, Endpoint) {
        (self.attach(Side::A), self.attach(Side::B))
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.len);
        unsafe { &*(self.ptr().add(off) as *const AtomicU32) }
    }

    /// Counter `which` (layout::ACTIVE_HEAD …) of direction `dir`.
    fn counter(&self, dir: usize, which: usize) -> &AtomicU32 {
        self.u32_at(layout::COUNTERS + dir * 4 * layout::LINE + which)
    }

    fn slot(&self, dir: usize, free: bool, i: u32) -> &AtomicU64 {
        let off = self.cfg.ring_offset(dir, free) + ((i & (self.cfg.ring_slots - 1)) as usize) * 8;
        unsafe { &*(self.ptr().add(off) as *const AtomicU64) }
    }

    /// Byte range of the pool of direction `dir`.
    fn pool(&self, dir: usize) -> std::ops::Range<usize> {
        let start = self.ptr() as usize + self.cfg.pool_offset(dir);
        start..start + self.cfg.pool_bytes()
    }

    fn guards_intact(&self) -> bool {
        unsafe {
            let g = self.guard;
            let lo = std::slice::from_raw_parts(self.base, g);
            let hi = std::slice::from_raw_parts(self.base.add(g + self.len), g);
            lo.iter().chain(hi).all(|&b| b == CANARY)
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        unsafe { dealloc(self.base, self.layout) }
    }
}

fn small(slots: u32, bufs: u32) -> Config {
    Config {
        ring_slots: slots,
        buf_size: 256,
        bufs,
    }
}

fn recv_all(ep: &mut Endpoint, max: usize) -> Result<Vec<Vec<u8>>, PeerError> {
    let mut out = Vec::new();
    ep.recv(max, |f| out.push(f.to_vec()))?;
    Ok(out)
}

#[test]
fn config_checks() {
    assert!(Config::default().validate().is_ok());
    assert!(Config::default().region_size() > 4 << 20);
    for bad in [
        small(3, 1),
        small(0, 0),
        small(8, 9),
        small(8, 0),
        Config {
            ring_slots: 8,
            buf_size: 100,
            bufs: 8,
        },
        Config {
            ring_slots: 1 << 21,
            buf_size: 64,
            bufs: 8,
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(Error::BadConfig { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn round_trip_both_directions() {
    let r = Region::new(small(16, 16));
    let (mut a, mut b) = r.pair();
    let big = vec![7u8; 256];
    a.send(b"hello").unwrap();
    a.send(b"").unwrap();
    a.send(&big).unwrap();
    assert_eq!(a.send(&[0u8; 257]), Err(TxError::TooLong));
    assert!(!a.flush());
    assert_eq!(
        recv_all(&mut b, 32).unwrap(),
        vec![b"hello".to_vec(), vec![], big.clone()]
    );
    b.send(b"back").unwrap();
    let n = b
        .send_with(200, |buf| {
            buf[..3].copy_from_slice(b"zc!");
            3
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(b.send_with(300, |_| 0), Err(TxError::TooLong));
    // Returning 0 cancels: nothing is queued, the buffer is not used up.
    let space = b.tx_space();
    let unflushed = b.tx_unflushed();
    assert_eq!(b.send_with(10, |_| 0), Ok(0));
    assert_eq!(b.tx_unflushed(), unflushed);
    assert_eq!(b.tx_space(), space);
    assert_eq!(b.send_with(10, |_| 11), Err(TxError::TooLong));
    b.flush();
    assert_eq!(
        recv_all(&mut a, 32).unwrap(),
        vec![b"back".to_vec(), b"zc!".to_vec()]
    );
    assert_eq!(a.state(), State::Up);
    assert_eq!(b.state(), State::Up);
}

#[test]
fn nothing_visible_before_flush_and_recv_respects_max() {
    let r = Region::new(small(64, 64));
    let (mut a, mut b) = r.pair();
    for i in 0..32u8 {
        a.send(&[i; 10]).unwrap();
    }
    assert_eq!(a.tx_unflushed(), 32);
    assert_eq!(b.rx_pending(), 0);
    assert_eq!(recv_all(&mut b, 32).unwrap().len(), 0);
    a.flush();
    assert_eq!(
        r.counter(0, layout::ACTIVE_HEAD).load(Ordering::Relaxed),
        32
    );
    assert_eq!(b.rx_pending(), 32);
    let first = recv_all(&mut b, 10).unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(first[9], vec![9u8; 10]);
    // Tail and free head are published once per recv.
    assert_eq!(
        r.counter(0, layout::ACTIVE_TAIL).load(Ordering::Relaxed),
        10
    );
    let rest = recv_all(&mut b, 100).unwrap();
    assert_eq!(rest.len(), 22);
    assert_eq!(rest[21], vec![31u8; 10]);
}

#[test]
fn full_ring_and_full_pool() {
    // Ring-limited.
    let r = Region::new(small(8, 8));
    let (mut a, mut b) = r.pair();
    assert_eq!(a.tx_space(), 8);
    for _ in 0..8 {
        a.send(b"x").unwrap();
    }
    assert_eq!(a.send(b"x"), Err(TxError::Full));
    assert_eq!(a.tx_space(), 0);
    a.flush();
    assert_eq!(recv_all(&mut b, 3).unwrap().len(), 3);
    assert_eq!(a.tx_space(), 3);
    // Pool-limited: 4 buffers, 16 slots.
    let r = Region::new(small(16, 4));
    let (mut a, mut b) = r.pair();
    assert_eq!(a.tx_space(), 4);
    for _ in 0..4 {
        a.send(b"y").unwrap();
    }
    assert_eq!(a.send(b"y"), Err(TxError::Full));
    a.flush();
    assert_eq!(recv_all(&mut b, 16).unwrap().len(), 4);
    assert_eq!(a.tx_space(), 4);
}

#[test]
fn buffers_are_recycled() {
    let r = Region::new(small(4, 4));
    let (mut a, mut b) = r.pair();
    let pool = r.pool(0);
    let mut seen = HashSet::new();
    for i in 0..10_000u32 {
        a.send(&i.to_le_bytes()).unwrap();
        a.flush();
        b.recv(1, |f| {
            assert!(pool.contains(&(f.as_ptr() as usize)));
            seen.insert(f.as_ptr() as usize);
            assert_eq!(f, i.to_le_bytes());
        })
        .unwrap();
    }
    assert_eq!(seen.len(), 4);
}

#[test]
fn u32_counters_wrap() {
    for start in [u32::MAX - 5, u32::MAX, u32::MAX - 1000] {
        let r = Region::with_start(small(16, 16), start);
        let (mut a, mut b) = r.pair();
        let mut next = 0u32;
        let mut expect = 0u32;
        for round in 0..300 {
            let n = 1 + round % 13;
            for _ in 0..n {
                match a.send(&next.to_le_bytes()) {
                    Ok(()) => next += 1,
                    Err(TxError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            a.flush();
            b.recv(1 + round as usize % 7, |f| {
                assert_eq!(f, expect.to_le_bytes());
                expect += 1;
            })
            .unwrap();
        }
        while b
            .recv(16, |f| {
                assert_eq!(f, expect.to_le_bytes());
                expect += 1;
            })
            .unwrap()
            > 0
        {}
        assert_eq!(expect, next);
        assert!(next > 1000);
        // The counters really wrapped.
        assert!(r.counter(0, layout::ACTIVE_HEAD).load(Ordering::Relaxed) < start);
    }
}

#[test]
fn sleep_protocol() {
    let r = Region::new(small(8, 8));
    let (mut a, mut b) = r.pair();
    // Nothing to do: B may sleep, its flag is set.
    assert!(!b.prepare_sleep());
    assert_eq!(
        r.u32_at(layout::FLAGS + layout::LINE)
            .load(Ordering::Relaxed),
        1
    );
    // A publishes: B must be signalled, once.
    a.send(b"wake").unwrap();
    assert!(a.flush());
    assert_eq!(
        r.u32_at(layout::FLAGS + layout::LINE)
            .load(Ordering::Relaxed),
        0
    );
    assert!(!a.flush());
    // Work pending: B must not sleep.
    assert!(b.prepare_sleep());
    b.cancel_sleep();
    assert_eq!(recv_all(&mut b, 8).unwrap().len(), 1);
    // Awake peer: no signal.
    a.send(b"x").unwrap();
    assert!(!a.flush());
    assert_eq!(recv_all(&mut b, 8).unwrap().len(), 1);

    // A blocked on a full ring sleeps until buffers come back.
    for _ in 0..8 {
        a.send(b"fill").unwrap();
    }
    assert_eq!(a.send(b"more"), Err(TxError::Full));
    a.flush();
    assert!(!a.prepare_sleep());
    assert_eq!(recv_all(&mut b, 2).unwrap().len(), 2);
    assert!(b.flush(), "returning buffers must wake a blocked producer");
    assert!(a.prepare_sleep(), "space is back");
    a.send(b"more").unwrap();
}

/// Asserts that `ep` is disconnected with `why` and refuses everything.
fn assert_dead(ep: &mut Endpoint, why: PeerError) {
    assert_eq!(ep.state(), State::Disconnected(why));
    assert_eq!(ep.send(b"x"), Err(TxError::Disconnected));
    assert_eq!(ep.send_with(1, |_| 1), Err(TxError::Disconnected));
    assert_eq!(
        ep.recv(8, |_| panic!("no frame after disconnect")),
        Err(why)
    );
    assert!(!ep.flush());
    assert!(!ep.prepare_sleep());
    assert_eq!(ep.rx_pending(), 0);
    assert_eq!(ep.tx_space(), 0);
}

#[test]
fn garbage_active_head() {
    let r = Region::new(small(8, 8));
    let (_a, mut b) = r.pair();
    r.counter(0, layout::ACTIVE_HEAD)
        .store(9, Ordering::Relaxed);
    let why = PeerError::ActiveIndexOutOfRange { head: 9, tail: 0 };
    assert_eq!(b.recv(8, |_| panic!()), Err(why));
    assert_dead(&mut b, why);
    // The region is no longer touched: even a repaired head is ignored.
    r.counter(0, layout::ACTIVE_HEAD)
        .store(0, Ordering::Relaxed);
    assert_dead(&mut b, why);
}

#[test]
fn garbage_active_head_backwards() {
    let r = Region::new(small(8, 8));
    let (mut a, mut b) = r.pair();
    for _ in 0..5 {
        a.send(b"x").unwrap();
    }
    a.flush();
    assert_eq!(b.rx_pending(), 5);
    r.counter(0, layout::ACTIVE_HEAD)
        .store(2, Ordering::Relaxed);
    let why = PeerError::ActiveIndexOutOfRange { head: 2, tail: 0 };
    assert_eq!(b.rx_pending(), 0);
    assert_dead(&mut b, why);
}

#[test]
fn garbage_descriptors() {
    let pool = small(8, 8).pool_bytes() as u32;
    for (offset, len) in [
        (pool, 1),
        (1, 1),
        (256, 257),
        (u32::MAX, u32::MAX),
        (pool - 256, 300),
    ] {
        let r = Region::new(small(8, 8));
        let (mut a, mut b) = r.pair();
        a.send(b"ok").unwrap();
        a.send(b"bad").unwrap();
        a.flush();
        r.slot(0, false, 1)
            .store(offset as u64 | (len as u64) << 32, Ordering::Relaxed);
        let mut got = 0;
        let why = PeerError::BadDescriptor { offset, len };
        assert_eq!(b.recv(8, |_| got += 1), Err(why));
        assert_eq!(got, 1, "the valid frame before the bad one is delivered");
        assert_dead(&mut b, why);
    }
}

#[test]
fn garbage_free_descriptor() {
    let r = Region::new(small(8, 8));
    let (mut a, _b) = r.pair();
    r.slot(0, true, 0).store(13, Ordering::Relaxed);
    assert_eq!(a.send(b"x"), Err(TxError::Disconnected));
    assert_dead(&mut a, PeerError::BadFreeDescriptor { offset: 13 });
}

#[test]
fn garbage_free_head() {
    let r = Region::new(small(8, 4));
    let (mut a, _b) = r.pair();
    // free.head may not exceed free.tail + slots.
    r.counter(0, layout::FREE_HEAD).store(9, Ordering::Relaxed);
    assert_eq!(a.tx_space(), 0);
    assert_dead(&mut a, PeerError::FreeIndexOutOfRange { head: 9, tail: 0 });
    // …nor go backwards.
    let r = Region::new(small(8, 4));
    let (mut a, _b) = r.pair();
    r.counter(0, layout::FREE_HEAD).store(3, Ordering::Relaxed);
    assert_eq!(a.tx_space(), 0);
    assert_dead(&mut a, PeerError::FreeIndexOutOfRange { head: 3, tail: 0 });
}

#[test]
fn garbage_active_tail() {
    let r = Region::new(small(8, 8));
    let (mut a, _b) = r.pair();
    a.send(b"x").unwrap();
    a.flush();
    // The consumer claims to have taken two frames of one.
    r.counter(0, layout::ACTIVE_TAIL)
        .store(2, Ordering::Relaxed);
    assert_eq!(a.tx_space(), 0);
    assert_dead(
        &mut a,
        PeerError::ActiveIndexOutOfRange { head: 1, tail: 2 },
    );
}

#[test]
fn garbage_free_tail() {
    let r = Region::new(small(8, 8));
    let (mut a, mut b) = r.pair();
    a.send(b"x").unwrap();
    a.flush();
    // The producer claims to have taken more buffers than B returned.
    r.counter(0, layout::FREE_TAIL).store(9, Ordering::Relaxed);
    let why = PeerError::FreeIndexOutOfRange { head: 8, tail: 9 };
    assert_eq!(b.recv(8, |_| ()), Err(why));
    assert_dead(&mut b, why);
}

#[test]
fn garbage_free_ring_overflow() {
    // The producer queues a frame without ever taking a buffer from the
    // (full) free ring: it would have more buffers than exist.
    let r = Region::new(small(8, 8));
    let (_a, mut b) = r.pair();
    r.slot(0, false, 0).store(4 << 32, Ordering::Relaxed);
    r.counter(0, layout::ACTIVE_HEAD)
        .store(1, Ordering::Relaxed);
    assert_eq!(b.recv(8, |_| ()), Err(PeerError::FreeRingOverflow));
    assert_dead(&mut b, PeerError::FreeRingOverflow);
}

#[test]
fn attach_checks_header_and_region() {
    let cfg = small(8, 8);
    let r = Region::new(cfg);
    let p = r.ptr();
    let len = r.len;
    unsafe {
        assert_eq!(
            Endpoint::attach(p, len - 1, Side::A).unwrap_err(),
            Error::RegionTooSmall {
                need: len,
                have: len - 1
            }
        );
        assert!(matches!(
            Endpoint::attach(p.add(8), len - 8, Side::A),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            Endpoint::attach(p, 100, Side::A),
            Err(Error::RegionTooSmall { .. })
        ));
    }
    let attach = |r: &Region| unsafe { Endpoint::attach(r.ptr(), r.len, Side::B) };
    r.u32_at(crate::layout::field::RING_SLOTS)
        .store(6, Ordering::Relaxed);
    assert!(matches!(
        attach(&r),
        Err(Error::BadConfig {
            field: "ring_slots",
            ..
        })
    ));
    r.u32_at(crate::layout::field::RING_SLOTS)
        .store(1 << 16, Ordering::Relaxed);
    assert!(matches!(attach(&r), Err(Error::RegionTooSmall { .. })));
    r.u32_at(crate::layout::field::RING_SLOTS)
        .store(8, Ordering::Relaxed);
    r.u32_at(crate::layout::field::VERSION)
        .store(99, Ordering::Relaxed);
    assert_eq!(attach(&r).unwrap_err(), Error::BadVersion(99));
    r.u32_at(crate::layout::field::MAGIC)
        .store(0, Ordering::Relaxed);
    assert_eq!(attach(&r).unwrap_err(), Error::BadMagic(0));

    let r = Region::new(cfg);
    r.counter(1, layout::ACTIVE_HEAD)
        .store(100, Ordering::Relaxed);
    assert_eq!(
        attach(&r).unwrap_err(),
        Error::Peer(PeerError::ActiveIndexOutOfRange { head: 100, tail: 0 })
    );
    assert!(r.guards_intact());
}

// ---- property tests ------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Send(bool, usize),
    Flush(bool),
    Recv(bool, usize),
    Space(bool),
    Sleep(bool),
    /// Write `value` at byte `offset` (4-aligned) of the control area.
    Scribble(usize, u32),
}

/// Operations of both sides, and (unless `honest`) scribbles by a hostile
/// peer: any word of the control area, with a bias towards the counters and
/// the descriptor rings, and towards values near the bounds of `cfg`.
fn op(cfg: Config, honest: bool) -> impl Strategy<Value = Op> {
    let side = any::<bool>();
    let ops = prop_oneof![
        4 => (side, 0usize..300).prop_map(|(s, l)| Op::Send(s, l)),
        2 => side.prop_map(Op::Flush),
        2 => (side, 0usize..40).prop_map(|(s, m)| Op::Recv(s, m)),
        1 => side.prop_map(Op::Space),
        1 => side.prop_map(Op::Sleep),
    ];
    if honest {
        return ops.boxed();
    }
    let pool = cfg.pool_bytes() as u32;
    let (buf, slots) = (cfg.buf_size, cfg.ring_slots);
    let value = prop_oneof![
        any::<u32>(),
        0u32..40,
        (0u32..4096).prop_map(|v| v * 64),
        prop::sample::select(vec![
            pool,
            pool - buf,
            pool + buf,
            pool - 1,
            buf,
            buf + 1,
            buf - 1,
            slots,
            slots + 1,
            2 * slots,
            u32::MAX,
            u32::MAX - slots,
        ]),
    ];
    let ctrl = cfg.ring_offset(1, true) + cfg.ring_bytes();
    let rings = cfg.ring_offset(0, false);
    let counters: Vec<usize> = (0..2)
        .flat_map(|d| {
            [
                layout::ACTIVE_HEAD,
                layout::ACTIVE_TAIL,
                layout::FREE_HEAD,
                layout::FREE_TAIL,
            ]
            .map(|w| layout::counter_offset(d, w))
        })
        .collect();
    let offset = prop_oneof![
        (0..ctrl / 4).prop_map(|w| w * 4),
        prop::sample::select(counters),
        (rings / 4..ctrl / 4).prop_map(|w| w * 4),
    ];
    prop_oneof![
        8 => ops,
        2 => (offset, value).prop_map(|(o, v)| Op::Scribble(o, v)),
    ]
    .boxed()
}

fn prop_config() -> impl Strategy<Value = Config> {
    (0u32..5, 1u32..=16).prop_map(|(s, b)| {
        let slots = 1 << s;
        Config {
            ring_slots: slots,
            buf_size: 256,
            bufs: b.min(slots),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A peer scribbling over counters, flags and rings never makes an
    /// endpoint panic, hand out memory outside its pool, or write outside the
    /// region; and each side keeps working or reports a violation.
    #[test]
    fn scribbling_peer_is_contained(
        (cfg, ops) in prop_config().prop_flat_map(|cfg| {
            (Just(cfg), proptest::collection::vec(op(cfg, false), 1..200))
        })
    ) {
        let r = Region::new(cfg);
        let (mut a, mut b) = r.pair();
        let pools = [r.pool(0), r.pool(1)];
        for op in ops {
            match op {
                Op::Scribble(off, v) => r.u32_at(off).store(v, Ordering::Relaxed),
                Op::Send(s, len) => {
                    let (ep, pool) = if s { (&mut a, &pools[0]) } else { (&mut b, &pools[1]) };
                    if len % 2 == 0 {
                        let _ = ep.send(&vec![0x5a; len]);
                    } else {
                        let _ = ep.send_with(len, |buf| {
                            let p = buf.as_ptr() as usize;
                            assert!(pool.contains(&p) && p + buf.len() <= pool.end);
                            buf.fill(0x3c);
                            buf.len()
                        });
                    }
                }
                Op::Flush(s) => { let _ = if s { a.flush() } else { b.flush() }; }
                Op::Recv(s, max) => {
                    let (ep, pool) = if s { (&mut a, &pools[1]) } else { (&mut b, &pools[0]) };
                    let _ = ep.recv(max, |f| {
                        let p = f.as_ptr() as usize;
                        assert!(pool.contains(&p) || f.is_empty() && p >= pool.start && p <= pool.end);
                        assert!(p + f.len() <= pool.end && f.len() <= 256);
                    });
                }
                Op::Space(s) => {
                    let ep = if s { &mut a } else { &mut b };
                    let n = ep.tx_space();
                    prop_assert!(n <= cfg.ring_slots as usize);
                    let _ = ep.rx_pending();
                }
                Op::Sleep(s) => {
                    let ep = if s { &mut a } else { &mut b };
                    if !ep.prepare_sleep() { ep.cancel_sleep(); }
                }
            }
        }
        prop_assert!(r.guards_intact());
    }

    /// Honest peers: every frame arrives once, in order, intact; no
    /// violation is ever reported.
    #[test]
    fn honest_peers_deliver_in_order(
        (cfg, ops) in prop_config().prop_flat_map(|cfg| {
            (Just(cfg), proptest::collection::vec(op(cfg, true), 1..300))
        })
    ) {
        let r = Region::new(cfg);
        let (mut a, mut b) = r.pair();
        // Per direction: queued-not-flushed and flushed-not-received frames.
        let mut unflushed: [VecDeque<Vec<u8>>; 2] = Default::default();
        let mut inflight: [VecDeque<Vec<u8>>; 2] = Default::default();
        let mut seq = 0u32;
        for op in ops {
            match op {
                Op::Send(s, len) => {
                    let d = if s { 0 } else { 1 };
                    let ep = if s { &mut a } else { &mut b };
                    seq += 1;
                    let mut frame = vec![(seq % 251) as u8; len];
                    if len >= 4 { frame[..4].copy_from_slice(&seq.to_le_bytes()); }
                    let free = ep.tx_space();
                    match ep.send(&frame) {
                        Ok(()) => { prop_assert!(len <= 256 && free > 0); unflushed[d].push_back(frame); }
                        Err(TxError::TooLong) => prop_assert!(len > 256),
                        Err(TxError::Full) => prop_assert_eq!(free, 0),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Flush(s) => {
                    let d = if s { 0 } else { 1 };
                    if s { a.flush(); } else { b.flush(); }
                    let moved: Vec<_> = unflushed[d].drain(..).collect();
                    inflight[d].extend(moved);
                }
                Op::Recv(s, max) => {
                    let d = if s { 1 } else { 0 };
                    let ep = if s { &mut a } else { &mut b };
                    let mut got = Vec::new();
                    let n = ep.recv(max, |f| got.push(f.to_vec())).unwrap();
                    prop_assert_eq!(n, got.len());
                    prop_assert_eq!(n, max.min(inflight[d].len()));
                    for g in got {
                        prop_assert_eq!(Some(g), inflight[d].pop_front());
                    }
                }
                Op::Space(s) => {
                    let d = if s { 1 } else { 0 };
                    let ep = if s { &mut a } else { &mut b };
                    prop_assert_eq!(ep.rx_pending(), inflight[d].len());
                }
                Op::Sleep(s) => {
                    let d = if s { 1 } else { 0 };
                    let ep = if s { &mut a } else { &mut b };
                    let work = ep.prepare_sleep();
                    if !inflight[d].is_empty() { prop_assert!(work); }
                    ep.cancel_sleep();
                }
                Op::Scribble(..) => unreachable!(),
            }
        }
        prop_assert_eq!(a.state(), State::Up);
        prop_assert_eq!(b.state(), State::Up);
    }

    /// One descriptor in the active ring replaced by the peer: the consumer
    /// delivers it if and only if it is valid, else reports exactly it.
    #[test]
    fn active_descriptor_oracle(
        (cfg, pending, victim, offset, len) in prop_config().prop_flat_map(|cfg| {
            let pool = cfg.pool_bytes() as u32;
            let b = cfg.buf_size;
            let offset = prop_oneof![
                any::<u32>(),
                (0..cfg.bufs + 2).prop_map(move |i| i * b),
                (0..cfg.bufs + 2).prop_map(move |i| i * b + 1),
                (0..cfg.bufs + 2).prop_map(move |i| (i * b).wrapping_sub(1)),
                prop::sample::select(vec![pool, pool + 64, u32::MAX]),
            ];
            let len = prop_oneof![0..b + 2, any::<u32>(), Just(u32::MAX)];
            (Just(cfg), 1..=cfg.bufs, any::<prop::sample::Index>(), offset, len)
        })
    ) {
        let r = Region::new(cfg);
        let (mut a, mut b) = r.pair();
        for i in 0..pending {
            a.send(&[i as u8; 7]).unwrap();
        }
        a.flush();
        let victim = victim.index(pending as usize) as u32;
        r.slot(0, false, victim).store(offset as u64 | (len as u64) << 32, Ordering::Relaxed);
        let valid = offset < cfg.pool_bytes() as u32 && offset % cfg.buf_size == 0 && len <= cfg.buf_size;
        let pool = r.pool(0);
        let mut got = 0u32;
        let res = b.recv(64, |f| {
            let p = f.as_ptr() as usize;
            assert!(p >= pool.start && p + f.len() <= pool.end, "frame outside the pool");
            if got == victim {
                assert_eq!(f.len(), len as usize);
            } else {
                assert_eq!(f, &[got as u8; 7]);
            }
            got += 1;
        });
        if valid {
            prop_assert_eq!(res, Ok(pending as usize));
        } else {
            let why = PeerError::BadDescriptor { offset, len };
            prop_assert_eq!(res, Err(why));
            prop_assert_eq!(got, victim);
            prop_assert_eq!(b.state(), State::Disconnected(why));
        }
        prop_assert!(r.guards_intact());
    }

    /// One descriptor in the free ring replaced by the peer: the producer
    /// uses it if and only if it is a valid buffer, else reports exactly it.
    #[test]
    fn free_descriptor_oracle(
        (cfg, victim, offset) in prop_config().prop_flat_map(|cfg| {
            let pool = cfg.pool_bytes() as u32;
            let b = cfg.buf_size;
            let offset = prop_oneof![
                any::<u32>(),
                (0..cfg.bufs + 2).prop_map(move |i| i * b),
                (0..cfg.bufs + 2).prop_map(move |i| i * b + 64),
                prop::sample::select(vec![pool, pool - 1, u32::MAX]),
            ];
            (Just(cfg), 0..cfg.bufs, offset)
        })
    ) {
        let r = Region::new(cfg);
        let (mut a, _b) = r.pair();
        r.slot(0, true, victim).store(offset as u64, Ordering::Relaxed);
        let valid = offset < cfg.pool_bytes() as u32 && offset % cfg.buf_size == 0;
        let pool = r.pool(0);
        for i in 0..cfg.bufs {
            let res = a.send_with(cfg.buf_size as usize, |buf| {
                let p = buf.as_ptr() as usize;
                assert!(p >= pool.start && p + buf.len() <= pool.end, "buffer outside the pool");
                buf.fill(0xee);
                buf.len()
            });
            if i == victim && !valid {
                prop_assert_eq!(res, Err(TxError::Disconnected));
                prop_assert_eq!(a.state(), State::Disconnected(PeerError::BadFreeDescriptor { offset }));
                break;
            }
            prop_assert_eq!(res, Ok(cfg.buf_size as usize));
        }
        prop_assert!(r.guards_intact());
    }
}
