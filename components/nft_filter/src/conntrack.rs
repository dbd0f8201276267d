//! Connection tracking, modelled on Linux `nf_conntrack`: a fixed-capacity
//! open-addressing table (allocated once, nothing allocated per packet)
//! keyed by the original-direction tuple, with the kernel's timeouts.
//!
//! What a packet's `ct state` is, as in the kernel:
//! * first packet of a flow: **new**; the entry is created only if the
//!   packet is finally accepted (the kernel "confirms" an entry at the last
//!   hook and discards it when the packet is dropped);
//! * later packets in the original direction: **new** until a reply was
//!   seen, then **established**; reply-direction packets: **established**;
//! * ICMP/ICMPv6 errors whose embedded packet belongs to a tracked flow:
//!   **related**;
//! * the reply a `reject` sends (ICMP error or RST), when it next passes
//!   the output hook: **related**, reply direction, as the kernel attaches
//!   the rejected packet's entry to it;
//! * ICMPv6 neighbour discovery and MLD: **untracked**;
//! * everything the tracker refuses: **invalid** (no entry): ICMP replies
//!   and non-error types without a request, TCP packets whose flags are an
//!   invalid combination or whose transition is invalid in the kernel's
//!   TCP state table (e.g. a first packet that is a lone FIN or RST).
//!
//! TCP follows the kernel's state table with `nf_conntrack_tcp_loose = 1`
//! (a first packet that is a plain ACK picks up the connection as NEW) but
//! does not do sequence-window tracking (`tcp_in_window`).

use alloc::vec::Vec;

use crate::packet::{be128, be16, be32, View};

/// `ct state` bits (NF_CT_STATE_*_BIT values as nft uses them).
pub mod state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;
}

const SECOND: u64 = 1_000_000_000;
const UDP_TIMEOUT: u64 = 30 * SECOND;
const UDP_STREAM_TIMEOUT: u64 = 120 * SECOND;
const ICMP_TIMEOUT: u64 = 30 * SECOND;
const GENERIC_TIMEOUT: u64 = 600 * SECOND;
/// Longest probe sequence; a full window means the table is full there.
const PROBE: usize = 32;

// TCP conntrack states (enum tcp_conntrack).
const S_NO: u8 = 0;
const S_SS: u8 = 1;
const S_SR: u8 = 2;
const S_ES: u8 = 3;
const S_FW: u8 = 4;
const S_CW: u8 = 5;
const S_LA: u8 = 6;
const S_TW: u8 = 7;
const S_CL: u8 = 8;
const S_S2: u8 = 9;
const S_IV: u8 = 10;
const S_IG: u8 = 11;

/// tcp_conntracks[dir][index][state] from nf_conntrack_proto_tcp.c.
/// index: 0 syn, 1 synack, 2 fin, 3 ack, 4 rst, 5 none.
#[rustfmt::skip]
const TCP_TABLE: [[[u8; 10]; 6]; 2] = [
    [
        [S_SS, S_SS, S_IG, S_IG, S_IG, S_IG, S_IG, S_SS, S_SS, S_S2],
        [S_IV, S_IV, S_SR, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_SR],
        [S_IV, S_IV, S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, S_IV],
        [S_ES, S_IV, S_ES, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, S_IV],
        [S_IV, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        [S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV],
    ],
    [
        [S_IV, S_S2, S_IV, S_IV, S_IV, S_IV, S_IV, S_SS, S_IV, S_S2],
        [S_IV, S_SR, S_IG, S_IG, S_IG, S_IG, S_IG, S_IG, S_IG, S_SR],
        [S_IV, S_IV, S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, S_IV],
        [S_IV, S_IG, S_SR, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, S_IG],
        [S_IV, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        [S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV],
    ],
];

fn tcp_timeout(s: u8) -> u64 {
    SECOND
        * match s {
            S_SS | S_S2 => 120,
            S_SR => 60,
            S_ES => 432_000,
            S_FW => 120,
            S_CW => 60,
            S_LA => 30,
            S_TW => 120,
            _ => 10,
        }
}

/// The tuple of one direction of a flow. For ICMP, `sport` is the echo
/// identifier and `dport` the ICMP type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub v6: bool,
}

impl Tuple {
    /// Addresses and ports exchanged (the tuple of an answer to this packet).
    fn swapped(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    fn reply(&self) -> Tuple {
        let (sport, dport) = if is_icmp(self.proto) {
            (
                self.sport,
                icmp_reply_type(self.proto, self.dport as u8).unwrap_or(255) as u16,
            )
        } else {
            (self.dport, self.sport)
        };
        Tuple {
            src: self.dst,
            dst: self.src,
            sport,
            dport,
            proto: self.proto,
            v6: self.v6,
        }
    }
    /// Same value for both directions of a flow (endpoints are ordered;
    /// for ICMP the type is left out, the identifier kept).
    fn hash(&self, seed: u64) -> u64 {
        let (sp, dp) = if is_icmp(self.proto) {
            (self.sport, self.sport)
        } else {
            (self.sport, self.dport)
        };
        let (a, b) = if (self.src, sp) <= (self.dst, dp) {
            ((self.src, sp), (self.dst, dp))
        } else {
            ((self.dst, dp), (self.src, sp))
        };
        let fold =
            |x: u128, p: u16| (x as u64) ^ ((x >> 64) as u64).rotate_left(23) ^ (p as u64) << 40;
        let w1 = fold(a.0, a.1) ^ seed;
        let w2 = fold(b.0, b.1) ^ (self.proto as u64) << 56 ^ (self.v6 as u64) << 63;
        let h = w1.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w2.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        h ^ (h >> 29)
    }
}

fn is_icmp(p: u8) -> bool {
    p == 1 || p == 58
}

/// For an ICMP query type, the type of its answer.
fn icmp_reply_type(proto: u8, t: u8) -> Option<u8> {
    match (proto, t) {
        (1, 8) => Some(0),
        (1, 13) => Some(14),
        (1, 15) => Some(16),
        (1, 17) => Some(18),
        (58, 128) => Some(129),
        (58, 130) => Some(131),
        _ => None,
    }
}

fn icmp_is_error(proto: u8, t: u8) -> bool {
    match proto {
        1 => matches!(t, 3 | 4 | 5 | 11 | 12),
        _ => matches!(t, 1..=4),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Empty,
    Used,
    Deleted,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    orig: Tuple,
    seen_reply: bool,
    tcp: u8,
    expires: u64,
}

const EMPTY: Slot = Slot {
    state: SlotState::Empty,
    orig: Tuple {
        src: 0,
        dst: 0,
        sport: 0,
        dport: 0,
        proto: 0,
        v6: false,
    },
    seen_reply: false,
    tcp: 0,
    expires: 0,
};

/// What the tracker says about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtInfo {
    /// `ct state` bit.
    pub state: u32,
    /// `ct direction`: 0 original, 1 reply; `None` without an entry.
    pub direction: Option<u8>,
    /// A new flow to enter if the packet is accepted.
    pub(crate) pending: Option<Pending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    orig: Tuple,
    tcp: u8,
    timeout: u64,
}

/// Counters of the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    pub entries: usize,
    pub inserted: u64,
    /// New flows refused because the table was full around their slot.
    pub full: u64,
    /// Packets classified invalid / new / established / related.
    pub invalid: u64,
    pub new: u64,
    pub established: u64,
    pub related: u64,
}

/// A connection tracker of fixed capacity.
pub struct Conntrack {
    slots: Vec<Slot>,
    /// Tuple of the packet being classified, and of the last tracked one.
    cur: Option<Tuple>,
    last: Option<(Tuple, u8)>,
    /// The flow of a packet just rejected: the kernel attaches its conntrack
    /// entry to the reply `reject` sends (`nf_ct_attach`), so that reply is
    /// RELATED (reply direction) and is not tracked on its own.
    attached: Option<(Tuple, u8)>,
    mask: usize,
    seed: u64,
    stats: CtStats,
}

impl Conntrack {
    /// A tracker for about `capacity` flows (rounded up to a power of two,
    /// at least 64). This is the only allocation it makes.
    pub fn new(capacity: usize, seed: u64) -> Conntrack {
        let n = capacity.max(64).next_power_of_two();
        Conntrack {
            slots: alloc::vec![EMPTY; n],
            cur: None,
            last: None,
            attached: None,
            mask: n - 1,
            seed,
            stats: CtStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn stats(&self) -> CtStats {
        self.stats
    }

    /// The packet just classified was rejected: its flow goes with the
    /// reply `reject` sends (see `attached`).
    pub(crate) fn attach_last(&mut self) {
        self.attached = self.last.take();
    }

    /// Drop every entry.
    pub fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.stats.entries = 0;
    }

    fn live(&self, i: usize, now: u64) -> bool {
        let s = &self.slots[i];
        s.state == SlotState::Used && s.expires > now
    }

    /// Finds the entry of `t`: (slot, direction).
    fn find(&self, t: &Tuple, now: u64) -> Option<(usize, u8)> {
        let h = t.hash(self.seed) as usize;
        for k in 0..PROBE {
            let i = (h + k) & self.mask;
            match self.slots[i].state {
                SlotState::Empty => return None,
                SlotState::Deleted => continue,
                SlotState::Used => {
                    if !self.live(i, now) {
                        continue;
                    }
                    let o = &self.slots[i].orig;
                    if o == t {
                        return Some((i, 0));
                    }
                    if &o.reply() == t {
                        return Some((i, 1));
                    }
                }
            }
        }
        None
    }

    fn remove(&mut self, i: usize) {
        self.slots[i].state = SlotState::Deleted;
        self.stats.entries = self.stats.entries.saturating_sub(1);
    }

    /// Enters a flow that was accepted. `false` if the table is full.
    pub(crate) fn confirm(&mut self, p: &Pending, now: u64) -> bool {
        if self.find(&p.orig, now).is_some() {
            return true;
        }
        let h = p.orig.hash(self.seed) as usize;
        for k in 0..PROBE {
            let i = (h + k) & self.mask;
            let s = self.slots[i];
            if s.state != SlotState::Used || s.expires <= now {
                if s.state == SlotState::Used {
                    self.stats.entries = self.stats.entries.saturating_sub(1);
                }
                self.slots[i] = Slot {
                    state: SlotState::Used,
                    orig: p.orig,
                    seen_reply: false,
                    tcp: p.tcp,
                    expires: now + p.timeout,
                };
                self.stats.entries += 1;
                self.stats.inserted += 1;
                return true;
            }
        }
        self.stats.full += 1;
        false
    }

    fn invalid(&mut self) -> CtInfo {
        self.stats.invalid += 1;
        CtInfo {
            state: state::INVALID,
            direction: None,
            pending: None,
        }
    }

    /// Classifies a packet and updates its entry (as `nf_conntrack_in`
    /// does before the filter runs).
    pub(crate) fn track(&mut self, v: &View<'_>, now: u64) -> CtInfo {
        self.cur = None;
        let info = self.classify(v, now);
        self.last = match (self.cur, info.direction) {
            (Some(t), Some(dir)) if info.state != state::RELATED => Some((t, dir)),
            _ => None,
        };
        match info.state {
            state::NEW => self.stats.new += 1,
            state::ESTABLISHED => self.stats.established += 1,
            state::RELATED => self.stats.related += 1,
            _ => {}
        }
        info
    }

    fn classify(&mut self, v: &View<'_>, now: u64) -> CtInfo {
        let d = v.data;
        let (src, dst) = match v.ipver {
            4 => (
                be32(d, v.l3 + 12).map(u128::from),
                be32(d, v.l3 + 16).map(u128::from),
            ),
            6 => (be128(d, v.l3 + 8), be128(d, v.l3 + 24)),
            // Not IP (ARP at a bridge): no conntrack entry, which `ct state`
            // reads as invalid.
            _ => {
                return CtInfo {
                    state: state::INVALID,
                    direction: None,
                    pending: None,
                }
            }
        };
        let (Some(src), Some(dst)) = (src, dst) else {
            return self.invalid();
        };
        let Some(proto) = v.l4proto else {
            return self.invalid();
        };
        let v6 = v.ipver == 6;
        let mut t = Tuple {
            src,
            dst,
            sport: 0,
            dport: 0,
            proto,
            v6,
        };
        let Some(l4) = v.l4 else {
            // A fragment: the kernel reassembles first; we do not.
            return self.invalid();
        };
        match proto {
            6 | 17 => {
                let (Some(sp), Some(dp)) = (be16(d, l4), be16(d, l4 + 2)) else {
                    return self.invalid();
                };
                t.sport = sp;
                t.dport = dp;
            }
            1 | 58 => {
                let (Some(&ty), Some(id)) = (d.get(l4), be16(d, l4 + 4)) else {
                    return self.invalid();
                };
                if (proto == 1 && v6) || (proto == 58 && !v6) {
                    return self.invalid();
                }
                if icmp_is_error(proto, ty) {
                    return self.related(v, l4, proto, now);
                }
                // Neighbour discovery and MLD are never tracked
                // (nf_conntrack_proto_icmpv6 `noct_valid_new`): untracked.
                if proto == 58 && matches!(ty, 130..=136 | 143) {
                    return CtInfo {
                        state: state::UNTRACKED,
                        direction: None,
                        pending: None,
                    };
                }
                t.sport = id;
                t.dport = ty as u16;
            }
            _ => {}
        }
        if let Some((a, dir)) = self.attached {
            if t == a.swapped() {
                self.attached = None;
                return CtInfo {
                    state: state::RELATED,
                    direction: Some(dir ^ 1),
                    pending: None,
                };
            }
        }
        self.cur = Some(t);
        if proto == 6 {
            return self.track_tcp(v, l4, t, now);
        }
        match self.find(&t, now) {
            Some((i, dir)) => {
                let s = &mut self.slots[i];
                if dir == 1 {
                    s.seen_reply = true;
                }
                let timeout = match proto {
                    17 if s.seen_reply => UDP_STREAM_TIMEOUT,
                    17 => UDP_TIMEOUT,
                    1 | 58 => ICMP_TIMEOUT,
                    _ => GENERIC_TIMEOUT,
                };
                s.expires = now + timeout;
                let st = if dir == 1 || s.seen_reply {
                    state::ESTABLISHED
                } else {
                    state::NEW
                };
                CtInfo {
                    state: st,
                    direction: Some(dir),
                    pending: None,
                }
            }
            None => {
                let timeout = match proto {
                    17 => UDP_TIMEOUT,
                    1 | 58 => {
                        if icmp_reply_type(proto, t.dport as u8).is_none() {
                            // Not a query: nothing to track.
                            return self.invalid();
                        }
                        ICMP_TIMEOUT
                    }
                    _ => GENERIC_TIMEOUT,
                };
                CtInfo {
                    state: state::NEW,
                    direction: Some(0),
                    pending: Some(Pending {
                        orig: t,
                        tcp: 0,
                        timeout,
                    }),
                }
            }
        }
    }

    fn track_tcp(&mut self, v: &View<'_>, l4: usize, t: Tuple, now: u64) -> CtInfo {
        let d = v.data;
        let (Some(&off), Some(&flags)) = (d.get(l4 + 12), d.get(l4 + 13)) else {
            return self.invalid();
        };
        let doff = (off >> 4) as usize * 4;
        if doff < 20 || l4 + doff > v.l3_end {
            return self.invalid();
        }
        // tcp_valid_flags[], ignoring ECE, CWR and PSH.
        let f = flags & !(0x40 | 0x80 | 0x08);
        const FIN: u8 = 1;
        const SYN: u8 = 2;
        const RST: u8 = 4;
        const ACK: u8 = 0x10;
        const URG: u8 = 0x20;
        let valid = matches!(
            f,
            x if x == SYN || x == SYN | URG || x == SYN | ACK || x == RST || x == RST | ACK
                || x == FIN | ACK || x == FIN | ACK | URG || x == ACK || x == ACK | URG
        );
        if !valid {
            return self.invalid();
        }
        let index = if f & RST != 0 {
            4
        } else if f & SYN != 0 {
            if f & ACK != 0 {
                1
            } else {
                0
            }
        } else if f & FIN != 0 {
            2
        } else if f & ACK != 0 {
            3
        } else {
            5
        };
        if let Some((i, dir)) = self.find(&t, now) {
            let old = self.slots[i].tcp;
            let new = TCP_TABLE[dir as usize][index][old as usize];
            if new == S_SS && dir == 0 && old >= S_TW {
                // A new SYN on a closed flow reopens it: the old entry goes.
                self.remove(i);
            } else if new == S_IV {
                return self.invalid();
            } else {
                let s = &mut self.slots[i];
                if dir == 1 {
                    s.seen_reply = true;
                }
                if new != S_IG {
                    s.tcp = new;
                    s.expires = now + tcp_timeout(new);
                }
                let st = if dir == 1 || s.seen_reply {
                    state::ESTABLISHED
                } else {
                    state::NEW
                };
                return CtInfo {
                    state: st,
                    direction: Some(dir),
                    pending: None,
                };
            }
        }
        let new = TCP_TABLE[0][index][S_NO as usize];
        if new == S_IV {
            return self.invalid();
        }
        CtInfo {
            state: state::NEW,
            direction: Some(0),
            pending: Some(Pending {
                orig: t,
                tcp: new,
                timeout: tcp_timeout(new),
            }),
        }
    }

    /// ICMP error: related to the flow of the packet it quotes.
    fn related(&mut self, v: &View<'_>, l4: usize, proto: u8, now: u64) -> CtInfo {
        let d = v.data;
        let inner = l4 + 8;
        let mut t = Tuple {
            proto: 0,
            v6: v.ipver == 6,
            ..Tuple::default()
        };
        let il4 = if v.ipver == 4 {
            let Some(&vihl) = d.get(inner) else {
                return self.invalid();
            };
            let ihl = (vihl & 0xf) as usize * 4;
            let (Some(s), Some(dd), Some(&p)) =
                (be32(d, inner + 12), be32(d, inner + 16), d.get(inner + 9))
            else {
                return self.invalid();
            };
            if vihl >> 4 != 4 || ihl < 20 {
                return self.invalid();
            }
            t.src = s as u128;
            t.dst = dd as u128;
            t.proto = p;
            inner + ihl
        } else {
            let (Some(s), Some(dd), Some(&p)) =
                (be128(d, inner + 8), be128(d, inner + 24), d.get(inner + 6))
            else {
                return self.invalid();
            };
            t.src = s;
            t.dst = dd;
            t.proto = p;
            inner + 40
        };
        match t.proto {
            6 | 17 => {
                let (Some(sp), Some(dp)) = (be16(d, il4), be16(d, il4 + 2)) else {
                    return self.invalid();
                };
                t.sport = sp;
                t.dport = dp;
            }
            1 | 58 => {
                let (Some(&ty), Some(id)) = (d.get(il4), be16(d, il4 + 4)) else {
                    return self.invalid();
                };
                t.sport = id;
                t.dport = ty as u16;
            }
            _ => {}
        }
        let _ = proto;
        if let Some((a, dir)) = self.attached {
            if t == a {
                self.attached = None;
                return CtInfo {
                    state: state::RELATED,
                    direction: Some(dir ^ 1),
                    pending: None,
                };
            }
        }
        match self.find(&t, now) {
            // The error travels opposite to the packet it quotes.
            Some((_, dir)) => CtInfo {
                state: state::RELATED,
                direction: Some(dir ^ 1),
                pending: None,
            },
            None => self.invalid(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::LinkType;
    use crate::testutil::*;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn track(ct: &mut Conntrack, p: &[u8], now: u64) -> (u32, Option<u8>) {
        let v = View::parse(p, LinkType::Ip);
        let i = ct.track(&v, now);
        if let Some(pd) = i.pending {
            assert!(ct.confirm(&pd, now));
        }
        (i.state, i.direction)
    }

    #[test]
    fn tcp_handshake() {
        let mut ct = Conntrack::new(64, 1);
        let syn = ipv4(A, B, 6, 64, tcp(1000, 80, 0x02, 100, 0, &[]));
        let synack = ipv4(B, A, 6, 64, tcp(80, 1000, 0x12, 500, 101, &[]));
        let ack = ipv4(A, B, 6, 64, tcp(1000, 80, 0x10, 101, 501, &[]));
        assert_eq!(track(&mut ct, &syn, 0), (state::NEW, Some(0)));
        assert_eq!(track(&mut ct, &syn, 1), (state::NEW, Some(0)));
        assert_eq!(track(&mut ct, &synack, 2), (state::ESTABLISHED, Some(1)));
        assert_eq!(track(&mut ct, &ack, 3), (state::ESTABLISHED, Some(0)));
        assert_eq!(ct.stats().entries, 1);
    }

    #[test]
    fn tcp_first_packets() {
        let mut ct = Conntrack::new(64, 1);
        // Loose pickup: a plain ACK starts a flow as NEW.
        let ack = ipv4(A, B, 6, 64, tcp(1, 2, 0x10, 1, 1, &[]));
        assert_eq!(track(&mut ct, &ack, 0).0, state::NEW);
        // FIN, RST, SYN+ACK, no flags, SYN+FIN: invalid, nothing tracked.
        for fl in [0x11u8, 0x04, 0x12, 0x00, 0x03] {
            let p = ipv4(A, B, 6, 64, tcp(3, 4, fl, 1, 1, &[]));
            assert_eq!(
                track(&mut ct, &p, 0),
                (state::INVALID, None),
                "flags {fl:#x}"
            );
        }
        assert_eq!(ct.stats().entries, 1);
    }

    #[test]
    fn icmp_echo_and_timeouts() {
        let mut ct = Conntrack::new(64, 1);
        let req = ipv4(A, B, 1, 64, icmp(8, 0, 77, 1, b"x"));
        let rep = ipv4(B, A, 1, 64, icmp(0, 0, 77, 1, b"x"));
        assert_eq!(track(&mut ct, &rep, 0).0, state::INVALID);
        assert_eq!(track(&mut ct, &req, 0).0, state::NEW);
        assert_eq!(track(&mut ct, &rep, 1).0, state::ESTABLISHED);
        assert_eq!(track(&mut ct, &req, 2).0, state::ESTABLISHED);
        // 30 s after the last packet the flow is gone.
        assert_eq!(track(&mut ct, &req, 2 + 31 * SECOND).0, state::NEW);
        let udp1 = ipv4(A, B, 17, 64, udp(5, 6, b""));
        assert_eq!(track(&mut ct, &udp1, 0).0, state::NEW);
        assert_eq!(track(&mut ct, &udp1, 29 * SECOND).0, state::NEW);
    }

    #[test]
    fn neighbour_discovery_is_untracked() {
        let mut ct = Conntrack::new(64, 1);
        let ns = ipv6(
            0xfd01u128 << 112 | 1,
            0xfd00u128 << 112 | 1,
            58,
            icmp(135, 0, 0, 0, &[0; 16]),
        );
        assert_eq!(track(&mut ct, &ns, 0), (state::UNTRACKED, None));
        let echo = ipv6(
            0xfd01u128 << 112 | 1,
            0xfd00u128 << 112 | 1,
            58,
            icmp(128, 0, 9, 1, b"x"),
        );
        assert_eq!(track(&mut ct, &echo, 0), (state::NEW, Some(0)));
        assert_eq!(ct.stats().entries, 1);
    }

    #[test]
    fn full_table_refuses() {
        let mut ct = Conntrack::new(64, 1);
        let mut refused = 0;
        for port in 0..200u16 {
            let v = ipv4(A, B, 17, 64, udp(port, 9, b""));
            let view = View::parse(&v, LinkType::Ip);
            let i = ct.track(&view, 0);
            if !ct.confirm(&i.pending.unwrap(), 0) {
                refused += 1;
            }
        }
        assert_eq!(ct.stats().entries + refused, 200);
        assert!(ct.stats().entries <= 64);
    }
}
