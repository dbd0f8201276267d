//! A read-only view of the packet being filtered: where its layers start
//! and the few header values the evaluator and the tracker ask for. Built
//! once per packet, no allocation; every access is bounds-checked and a
//! truncated or malformed header simply makes the fields of that layer
//! unavailable (a match on them fails, as in the kernel).

/// What the caller hands to the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// An IPv4 or IPv6 packet (stacks: hooks input/output).
    Ip,
    /// An Ethernet frame (switch: hook forward).
    Ethernet,
}

/// Interface name as nft compares it: up to 15 bytes, NUL padded to 16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfName(pub [u8; 16]);

impl IfName {
    /// `None` when the name is empty or longer than 15 bytes.
    pub fn new(name: &str) -> Option<IfName> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 15 {
            return None;
        }
        let mut n = [0u8; 16];
        n[..b.len()].copy_from_slice(b);
        Some(IfName(n))
    }
    pub(crate) fn value(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

/// Metadata a packet carries besides its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct PacketMeta {
    /// Interface the packet came in on (input, forward).
    pub iif: Option<IfName>,
    /// Interface it leaves through (output, forward).
    pub oif: Option<IfName>,
    /// `meta mark`.
    pub mark: u32,
}

/// Parsed layer offsets of one packet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a> {
    pub data: &'a [u8],
    /// Ethernet header present (offset 0).
    pub l2: bool,
    /// 0 (no IP), 4 or 6.
    pub ipver: u8,
    pub l3: usize,
    /// End of the IP packet (trimmed to the IP length field).
    pub l3_end: usize,
    /// Transport protocol (after IPv6 extension headers).
    pub l4proto: Option<u8>,
    /// Transport header offset; `None` for non-first fragments.
    pub l4: Option<usize>,
    /// `skb->len` as the kernel sees it at this hook.
    pub len: u32,
}

pub(crate) fn be16(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(o)?, *d.get(o + 1)?]))
}
pub(crate) fn be32(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(o..o + 4)?.try_into().ok()?))
}
pub(crate) fn be128(d: &[u8], o: usize) -> Option<u128> {
    Some(u128::from_be_bytes(d.get(o..o + 16)?.try_into().ok()?))
}

impl<'a> View<'a> {
    pub fn parse(data: &'a [u8], link: LinkType) -> View<'a> {
        let mut v = View {
            data,
            l2: false,
            ipver: 0,
            l3: 0,
            l3_end: data.len(),
            l4proto: None,
            l4: None,
            len: data.len() as u32,
        };
        if link == LinkType::Ethernet {
            v.l2 = true;
            v.l3 = 14;
            // The bridge hook sees skb->len without the Ethernet header.
            v.len = data.len().saturating_sub(14) as u32;
            match be16(data, 12) {
                Some(0x0800) => v.parse_ipv4(),
                Some(0x86dd) => v.parse_ipv6(),
                _ => {}
            }
        } else {
            match data.first().map(|b| b >> 4) {
                Some(4) => v.parse_ipv4(),
                Some(6) => v.parse_ipv6(),
                _ => {}
            }
            if v.ipver != 0 {
                v.len = (v.l3_end - v.l3) as u32;
            }
        }
        v
    }

    fn parse_ipv4(&mut self) {
        let d = self.data;
        let o = self.l3;
        let Some(&vihl) = d.get(o) else { return };
        let ihl = (vihl & 0x0f) as usize * 4;
        if vihl >> 4 != 4 || ihl < 20 || d.len() < o + ihl {
            return;
        }
        let Some(tot) = be16(d, o + 2) else { return };
        let tot = tot as usize;
        if tot < ihl || o + tot > d.len() {
            return;
        }
        self.ipver = 4;
        self.l3_end = o + tot;
        self.l4proto = Some(d[o + 9]);
        let frag = be16(d, o + 6).unwrap_or(0) & 0x1fff;
        if frag == 0 {
            self.l4 = Some(o + ihl);
        }
    }

    fn parse_ipv6(&mut self) {
        let d = self.data;
        let o = self.l3;
        if d.len() < o + 40 || d[o] >> 4 != 6 {
            return;
        }
        let plen = be16(d, o + 4).unwrap_or(0) as usize;
        if o + 40 + plen > d.len() {
            return;
        }
        self.ipver = 6;
        self.l3_end = o + 40 + plen;
        let mut nh = d[o + 6];
        let mut off = o + 40;
        // Walk hop-by-hop, routing, fragment and destination options.
        for _ in 0..8 {
            match nh {
                0 | 43 | 60 => {
                    let (Some(&n), Some(&l)) = (d.get(off), d.get(off + 1)) else {
                        return;
                    };
                    nh = n;
                    off += (l as usize + 1) * 8;
                }
                44 => {
                    let (Some(&n), Some(fo)) = (d.get(off), be16(d, off + 2)) else {
                        return;
                    };
                    nh = n;
                    off += 8;
                    if fo & 0xfff8 != 0 {
                        self.l4proto = Some(nh);
                        return;
                    }
                }
                _ => break,
            }
        }
        if off > self.l3_end {
            return;
        }
        self.l4proto = Some(nh);
        self.l4 = Some(off);
    }

    /// Transport header bytes `[o, o+n)` if the packet is of protocol
    /// `proto` and holds them.
    pub fn l4_field(&self, proto: u8, o: usize, n: usize) -> Option<usize> {
        if self.l4proto != Some(proto) {
            return None;
        }
        let l4 = self.l4?;
        (l4 + o + n <= self.l3_end).then_some(l4 + o)
    }
}
