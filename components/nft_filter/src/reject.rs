//! The reply a `reject` verdict asks the caller to send: an ICMP/ICMPv6
//! destination-unreachable quoting the packet, or a TCP RST, built the way
//! the kernel's `nf_send_unreach` / `nf_send_reset` build them. Written into
//! a caller buffer, nothing allocated.

use crate::ast::RejectWith;
use crate::packet::{be16, be32, LinkType, View};

/// Largest reply: IPv6 minimum MTU.
pub const MAX_REPLY: usize = 1280 + 14;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMP code the reply uses for an IPv4 / IPv6 packet.
fn icmp_code(with: RejectWith, v6: bool) -> Option<u8> {
    Some(match (with, v6) {
        (RejectWith::Default, false) => 3,
        (RejectWith::Default, true) => 4,
        (RejectWith::Icmp(c), false) => c,
        (RejectWith::Icmpv6(c), true) => c,
        (RejectWith::Icmpx(x), false) => [0, 3, 1, 13][x.min(3) as usize],
        (RejectWith::Icmpx(x), true) => [0, 4, 3, 1][x.min(3) as usize],
        _ => return None,
    })
}

/// Builds the reply to `packet` (an IP packet, or an Ethernet frame for
/// `LinkType::Ethernet`, in which case the reply is a frame too, addressed
/// back to the sender). Returns its length, or `None` when the kernel would
/// not answer (an ICMP error, a RST, a non-first fragment, a multicast or
/// broadcast destination, a reply that does not fit `out`).
pub fn build_reply(
    packet: &[u8],
    link: LinkType,
    with: RejectWith,
    out: &mut [u8],
) -> Option<usize> {
    let v = View::parse(packet, link);
    let hdr = if link == LinkType::Ethernet { 14 } else { 0 };
    if out.len() < hdr + 60 {
        return None;
    }
    let n = match (with, v.ipver) {
        (RejectWith::TcpReset, 4 | 6) => tcp_reset(&v, &mut out[hdr..])?,
        (_, 4) => icmp4(&v, icmp_code(with, false)?, &mut out[hdr..])?,
        (_, 6) => icmp6(&v, icmp_code(with, true)?, &mut out[hdr..])?,
        _ => return None,
    };
    if hdr != 0 {
        out[0..6].copy_from_slice(&packet[6..12]);
        out[6..12].copy_from_slice(&packet[0..6]);
        out[12..14].copy_from_slice(&packet[12..14]);
    }
    Some(hdr + n)
}

fn icmp4(v: &View<'_>, code: u8, out: &mut [u8]) -> Option<usize> {
    let d = v.data;
    let l3 = v.l3;
    let (src, dst) = (be32(d, l3 + 12)?, be32(d, l3 + 16)?);
    if v.l4.is_none() || dst == u32::MAX || (dst >> 28) == 0xe {
        return None;
    }
    if v.l4proto == Some(1) {
        // Never answer an ICMP error.
        let t = *d.get(v.l4?)?;
        if matches!(t, 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }
    let quote = (v.l3_end - l3)
        .min(576 - 28)
        .min(out.len().saturating_sub(28));
    let total = 28 + quote;
    let o = &mut out[..total];
    o[0] = 0x45;
    o[1] = 0;
    o[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    o[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    o[8] = 64;
    o[9] = 1;
    o[10..12].copy_from_slice(&[0, 0]);
    o[12..16].copy_from_slice(&dst.to_be_bytes());
    o[16..20].copy_from_slice(&src.to_be_bytes());
    let c = csum_fold(csum_add(0, &o[..20]));
    o[10..12].copy_from_slice(&c.to_be_bytes());
    o[20] = 3;
    o[21] = code;
    o[22..28].copy_from_slice(&[0; 6]);
    o[28..].copy_from_slice(&d[l3..l3 + quote]);
    let c = csum_fold(csum_add(0, &o[20..]));
    o[22..24].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn pseudo6(src: &[u8], dst: &[u8], len: usize, nh: u8) -> u32 {
    let mut s = csum_add(0, src);
    s = csum_add(s, dst);
    s += (len as u32 >> 16) + (len as u32 & 0xffff) + nh as u32;
    s
}

fn icmp6(v: &View<'_>, code: u8, out: &mut [u8]) -> Option<usize> {
    let d = v.data;
    let l3 = v.l3;
    if d.get(l3 + 24)? == &0xff || v.l4.is_none() {
        return None;
    }
    if v.l4proto == Some(58) && (*d.get(v.l4?)? < 128) {
        return None;
    }
    let quote = (v.l3_end - l3)
        .min(1280 - 48)
        .min(out.len().saturating_sub(48));
    let total = 48 + quote;
    let o = &mut out[..total];
    o[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    o[4..6].copy_from_slice(&((8 + quote) as u16).to_be_bytes());
    o[6] = 58;
    o[7] = 64;
    o[8..24].copy_from_slice(&d[l3 + 24..l3 + 40]);
    o[24..40].copy_from_slice(&d[l3 + 8..l3 + 24]);
    o[40] = 1;
    o[41] = code;
    o[42..48].copy_from_slice(&[0; 6]);
    o[48..].copy_from_slice(&d[l3..l3 + quote]);
    let (a, b) = o.split_at(40);
    let c = csum_fold(csum_add(pseudo6(&a[8..24], &a[24..40], 8 + quote, 58), b));
    o[42..44].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn tcp_reset(v: &View<'_>, out: &mut [u8]) -> Option<usize> {
    let d = v.data;
    let th = v.l4_field(6, 0, 20)?;
    let flags = d[th + 13];
    if flags & 0x04 != 0 {
        return None;
    }
    let doff = (d[th + 12] >> 4) as usize * 4;
    let payload = (v.l3_end).checked_sub(th + doff)?;
    let (sport, dport) = (be16(d, th)?, be16(d, th + 2)?);
    let (seq, ack) = (be32(d, th + 4)?, be32(d, th + 8)?);
    let (rseq, rack, rflags) = if flags & 0x10 != 0 {
        (ack, 0, 0x04)
    } else {
        (
            0,
            seq.wrapping_add(
                payload as u32 + (flags & 0x02 != 0) as u32 + (flags & 0x01 != 0) as u32,
            ),
            0x14,
        )
    };
    let iph = if v.ipver == 4 { 20 } else { 40 };
    let total = iph + 20;
    let o = &mut out[..total];
    let l3 = v.l3;
    if v.ipver == 4 {
        o[0] = 0x45;
        o[1] = 0;
        o[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        o[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
        o[8] = 64;
        o[9] = 6;
        o[10..12].copy_from_slice(&[0, 0]);
        o[12..16].copy_from_slice(&d[l3 + 16..l3 + 20]);
        o[16..20].copy_from_slice(&d[l3 + 12..l3 + 16]);
        let c = csum_fold(csum_add(0, &o[..20]));
        o[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        o[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
        o[4..6].copy_from_slice(&20u16.to_be_bytes());
        o[6] = 6;
        o[7] = 64;
        o[8..24].copy_from_slice(&d[l3 + 24..l3 + 40]);
        o[24..40].copy_from_slice(&d[l3 + 8..l3 + 24]);
    }
    let t = &mut o[iph..];
    t[0..2].copy_from_slice(&dport.to_be_bytes());
    t[2..4].copy_from_slice(&sport.to_be_bytes());
    t[4..8].copy_from_slice(&rseq.to_be_bytes());
    t[8..12].copy_from_slice(&rack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = rflags;
    t[14..20].copy_from_slice(&[0; 6]);
    let (ip, t) = o.split_at_mut(iph);
    let sum = if v.ipver == 4 {
        let mut s = csum_add(0, &ip[12..20]);
        s += 6 + 20;
        s
    } else {
        pseudo6(&ip[8..24], &ip[24..40], 20, 6)
    };
    let c = csum_fold(csum_add(sum, t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn sum_ok(b: &[u8]) -> bool {
        csum(b, 0) == 0
    }

    #[test]
    fn icmp_port_unreachable() {
        let p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, 64, udp(1000, 9, b"hello"));
        let mut out = [0u8; MAX_REPLY];
        let n = build_reply(&p, LinkType::Ip, RejectWith::Default, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(n, 28 + p.len());
        assert_eq!(&r[12..16], &[10, 0, 0, 2]);
        assert_eq!(&r[16..20], &[10, 0, 0, 1]);
        assert_eq!((r[20], r[21]), (3, 3));
        assert!(sum_ok(&r[..20]) && sum_ok(&r[20..]));
        assert_eq!(&r[28..], &p[..]);
        // No reply to an ICMP error.
        let e = ipv4(
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            1,
            64,
            icmp(3, 3, 0, 0, &r[28..]),
        );
        assert_eq!(
            build_reply(&e, LinkType::Ip, RejectWith::Default, &mut out),
            None
        );
    }

    #[test]
    fn ethernet_and_ipv6_replies() {
        let ip = ipv6(
            0x2001_0db8u128 << 96 | 1,
            0x2001_0db8u128 << 96 | 2,
            17,
            udp(5, 9, b"x"),
        );
        let frame = ether([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0x86dd, &ip);
        let mut out = [0u8; MAX_REPLY];
        let n = build_reply(&frame, LinkType::Ethernet, RejectWith::Default, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(&r[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&r[6..12], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&r[12..14], &[0x86, 0xdd]);
        let v6 = &r[14..];
        assert_eq!((v6[6], v6[40], v6[41]), (58, 1, 4));
        assert_eq!(&v6[24..40], &ip[8..24]);
        assert_eq!(&v6[48..], &ip[..]);
        // ICMPv6 checksum over the pseudo-header.
        let mut init = 0u32;
        for c in v6[8..40].chunks(2) {
            init += (c[0] as u32) << 8 | c[1] as u32;
        }
        init += 58 + (v6.len() - 40) as u32;
        assert_eq!(csum(&v6[40..], init), 0);
    }

    #[test]
    fn tcp_reset_fields() {
        let syn = ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            6,
            64,
            tcp(1000, 80, 0x02, 7, 0, &[]),
        );
        let mut out = [0u8; MAX_REPLY];
        let n = build_reply(&syn, LinkType::Ip, RejectWith::TcpReset, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(n, 40);
        assert_eq!(u16::from_be_bytes([r[20], r[21]]), 80);
        assert_eq!(u32::from_be_bytes([r[28], r[29], r[30], r[31]]), 8); // ack = seq + SYN
        assert_eq!(r[33], 0x14);
        assert!(sum_ok(&r[..20]));
        let mut pseudo = alloc::vec::Vec::new();
        pseudo.extend_from_slice(&r[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&r[20..]);
        assert!(sum_ok(&pseudo));
        let ack = ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            6,
            64,
            tcp(1000, 80, 0x10, 7, 99, b"data"),
        );
        let n = build_reply(&ack, LinkType::Ip, RejectWith::TcpReset, &mut out).unwrap();
        assert_eq!(u32::from_be_bytes([out[24], out[25], out[26], out[27]]), 99);
        assert_eq!(out[33], 0x04);
        assert_eq!(n, 40);
    }
}
