//! Packet builders for tests (IPv4/IPv6 with TCP, UDP, ICMP; valid
//! checksums so the same bytes can be sent to a kernel).

#![allow(dead_code)]

use alloc::vec::Vec;

pub fn csum(data: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in data.chunks(2) {
        s += (c[0] as u32) << 8 | *c.get(1).unwrap_or(&0) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

pub fn ip4(a: [u8; 4]) -> [u8; 4] {
    a
}

/// An IPv4 packet around an L4 payload; fixes the TCP/UDP checksum.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, mut l4: Vec<u8>) -> Vec<u8> {
    let total = 20 + l4.len();
    let mut p = alloc::vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        ttl,
        proto,
        0,
        0
    ];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let c = csum(&p, 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let ck = match proto {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    };
    if let Some(o) = ck {
        l4[o] = 0;
        l4[o + 1] = 0;
        let mut init = 0u32;
        for c in src.chunks(2).chain(dst.chunks(2)) {
            init += (c[0] as u32) << 8 | c[1] as u32;
        }
        init += proto as u32 + l4.len() as u32;
        let mut c = csum(&l4, init);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        l4[o..o + 2].copy_from_slice(&c.to_be_bytes());
    } else if proto == 1 {
        l4[2] = 0;
        l4[3] = 0;
        let c = csum(&l4, 0);
        l4[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

pub fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub fn icmp(ty: u8, code: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut i = alloc::vec![ty, code, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&seq.to_be_bytes());
    i.extend_from_slice(payload);
    i
}

/// An IPv6 packet around an L4 payload; fixes the TCP/UDP/ICMPv6 checksum.
pub fn ipv6(src: u128, dst: u128, nh: u8, mut l4: Vec<u8>) -> Vec<u8> {
    let ck = match nh {
        6 => Some(16),
        17 => Some(6),
        58 => Some(2),
        _ => None,
    };
    if let Some(o) = ck {
        l4[o] = 0;
        l4[o + 1] = 0;
        let mut init = 0u32;
        for c in src
            .to_be_bytes()
            .chunks(2)
            .chain(dst.to_be_bytes().chunks(2))
        {
            init += (c[0] as u32) << 8 | c[1] as u32;
        }
        init += nh as u32 + l4.len() as u32;
        let mut c = csum(&l4, init);
        if nh == 17 && c == 0 {
            c = 0xffff;
        }
        l4[o..o + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = alloc::vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.push(nh);
    p.push(64);
    p.extend_from_slice(&src.to_be_bytes());
    p.extend_from_slice(&dst.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

pub fn ether(dst: [u8; 6], src: [u8; 6], ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ty.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
