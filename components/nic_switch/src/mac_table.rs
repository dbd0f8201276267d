//! The switch's MAC table: which port a unicast address was last seen on.
//!
//! Learning records the source address of every frame with its ingress port
//! and the time; an entry older than the aging time is treated as absent (so
//! its frames are flooded) and removed by the periodic [`MacTable::expire`].
//! The table has a fixed capacity reserved up front: learning never
//! allocates, and when the table is full new addresses are not learned
//! (counted) until aging frees room.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A port index of the switch.
pub type PortId = usize;

/// Where the table says a destination lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Known unicast address behind this port.
    Port(PortId),
    /// Broadcast, multicast, or an unknown/aged unicast address: send to
    /// every port but the ingress one.
    Flood,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    /// Time of the last frame from this address, in the caller's ticks.
    seen: u64,
}

/// A MAC address packed into the low 48 bits.
type Key = u64;

#[inline]
fn key(mac: &[u8; 6]) -> Key {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(mac);
    u64::from_le_bytes(b)
}

/// A multiplicative hash for 48-bit keys: one multiply, good spread in the
/// high bits hashbrown uses. SipHash would cost more than the forwarding.
#[derive(Default)]
pub struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// No key: MAC keys use only the low 48 bits.
const NO_KEY: Key = u64::MAX;

/// The learning table.
///
/// Frames come in bursts of one flow, so the table remembers the last
/// address it learned and the last lookup: a repeat costs a comparison
/// instead of a hash probe. The lookup memo is tied to a generation that
/// every change of an address's port (insert, move, removal) bumps, and to
/// the tick it was made in (aging works in whole ticks).
pub struct MacTable {
    entries: HashMap<Key, Entry, BuildHasherDefault<MacHasher>>,
    capacity: usize,
    /// Entries older than this many ticks are stale.
    aging: u64,
    /// Addresses not learned because the table was full.
    pub full_misses: u64,
    generation: u64,
    /// (source, port, tick) of the last refresh.
    last_learn: (Key, PortId, u64),
    /// (destination, tick, generation, answer) of the last lookup.
    last_lookup: (Key, u64, u64, Lookup),
}

impl MacTable {
    /// A table of at most `capacity` addresses aging after `aging` ticks.
    pub fn new(capacity: usize, aging: u64) -> Self {
        MacTable {
            entries: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            capacity,
            aging,
            full_misses: 0,
            generation: 0,
            last_learn: (NO_KEY, 0, 0),
            last_lookup: (NO_KEY, 0, 0, Lookup::Flood),
        }
    }

    /// Forget both memos (entries were removed).
    fn invalidate(&mut self) {
        self.generation += 1;
        self.last_learn.0 = NO_KEY;
        self.last_lookup.0 = NO_KEY;
    }

    /// Record that `src` was seen on `port` at `now`. Group addresses
    /// (multicast, broadcast) are never learned.
    #[inline]
    pub fn learn(&mut self, src: &[u8; 6], port: PortId, now: u64) {
        if src[0] & 1 != 0 {
            return;
        }
        let k = key(src);
        if self.last_learn == (k, port, now) {
            return;
        }
        if let Some(e) = self.entries.get_mut(&k) {
            if e.port != port {
                e.port = port;
                self.generation += 1;
            }
            e.seen = now;
        } else if self.entries.len() < self.capacity {
            self.entries.insert(k, Entry { port, seen: now });
            self.generation += 1;
        } else {
            self.full_misses += 1;
            return;
        }
        self.last_learn = (k, port, now);
    }

    /// Where to send a frame for `dst` at `now`.
    #[inline]
    pub fn lookup(&mut self, dst: &[u8; 6], now: u64) -> Lookup {
        if dst[0] & 1 != 0 {
            return Lookup::Flood;
        }
        let k = key(dst);
        let (mk, mnow, mgen, answer) = self.last_lookup;
        if mk == k && mnow == now && mgen == self.generation {
            return answer;
        }
        let answer = match self.entries.get(&k) {
            Some(e) if now.saturating_sub(e.seen) <= self.aging => Lookup::Port(e.port),
            _ => Lookup::Flood,
        };
        self.last_lookup = (k, now, self.generation, answer);
        answer
    }

    /// Remove entries not refreshed within the aging time.
    pub fn expire(&mut self, now: u64) {
        let aging = self.aging;
        self.entries
            .retain(|_, e| now.saturating_sub(e.seen) <= aging);
        self.invalidate();
    }

    /// Forget every address learned on `port` (its link went down).
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
        self.invalidate();
    }

    /// Number of (possibly stale) entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const BCAST: [u8; 6] = [0xff; 6];
    const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];

    #[test]
    fn learns_and_moves() {
        let mut t = MacTable::new(16, 300);
        assert_eq!(t.lookup(&A, 0), Lookup::Flood);
        t.learn(&A, 1, 0);
        assert_eq!(t.lookup(&A, 1), Lookup::Port(1));
        assert_eq!(t.lookup(&B, 1), Lookup::Flood);
        // A moved to port 3.
        t.learn(&A, 3, 2);
        assert_eq!(t.lookup(&A, 2), Lookup::Port(3));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn floods_group_addresses_and_never_learns_them() {
        let mut t = MacTable::new(16, 300);
        t.learn(&BCAST, 1, 0);
        t.learn(&MCAST, 1, 0);
        assert!(t.is_empty());
        assert_eq!(t.lookup(&BCAST, 0), Lookup::Flood);
        assert_eq!(t.lookup(&MCAST, 0), Lookup::Flood);
    }

    #[test]
    fn ages_out() {
        let mut t = MacTable::new(16, 300);
        t.learn(&A, 1, 100);
        t.learn(&B, 2, 350);
        assert_eq!(t.lookup(&A, 400), Lookup::Port(1));
        // Stale: flooded even before the sweep.
        assert_eq!(t.lookup(&A, 401), Lookup::Flood);
        t.expire(401);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&B, 401), Lookup::Port(2));
        // Refreshing keeps an entry alive.
        t.learn(&B, 2, 600);
        t.expire(800);
        assert_eq!(t.lookup(&B, 800), Lookup::Port(2));
    }

    #[test]
    fn memos_follow_every_change() {
        let mut t = MacTable::new(16, 300);
        // A flooded lookup is memoised, then A is learned in the same tick.
        assert_eq!(t.lookup(&A, 5), Lookup::Flood);
        t.learn(&A, 1, 5);
        assert_eq!(t.lookup(&A, 5), Lookup::Port(1));
        // A moves to port 2 in the same tick.
        t.learn(&A, 2, 5);
        assert_eq!(t.lookup(&A, 5), Lookup::Port(2));
        // Port 2 goes down; A is relearned on port 2 in the same tick (the
        // learn memo must not skip it).
        t.forget_port(2);
        assert_eq!(t.lookup(&A, 5), Lookup::Flood);
        t.learn(&A, 2, 5);
        assert_eq!(t.lookup(&A, 5), Lookup::Port(2));
        // Aging is seen across ticks even with a memo in place.
        assert_eq!(t.lookup(&A, 306), Lookup::Flood);
        t.expire(306);
        t.learn(&A, 3, 306);
        assert_eq!(t.lookup(&A, 306), Lookup::Port(3));
    }

    #[test]
    fn full_table_does_not_learn() {
        let mut t = MacTable::new(1, 300);
        t.learn(&A, 1, 0);
        t.learn(&B, 2, 0);
        assert_eq!(t.lookup(&B, 0), Lookup::Flood);
        assert_eq!(t.full_misses, 1);
        t.forget_port(1);
        t.learn(&B, 2, 0);
        assert_eq!(t.lookup(&B, 0), Lookup::Port(2));
    }
}
