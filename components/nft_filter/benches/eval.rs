//! Filter cost per packet and ruleset build time.
//!
//! `cargo bench -p nft_filter --bench eval` prints:
//! * ns/packet for 1,000 `tcp dport N drop` rules (a packet matching none,
//!   so it walks all of them) against the same policy as one set lookup;
//! * the realistic shape (`ct state established,related accept` first,
//!   then port and prefix matches and a named set) with 0/10/100/1000
//!   rules: a UDP request/response exchange on an established flow
//!   (input + output evaluation with conntrack), and a packet of a new flow
//!   that walks every rule (dropped by the policy, so it stays new);
//! * parse + compile time of a 10,000-rule ruleset.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use nft_filter::{Filter, Hook, LinkType, PacketMeta, Verdict};

fn csum(d: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in d.chunks(2) {
        s += (c[0] as u32) << 8 | *c.get(1).unwrap_or(&0) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = 20 + l4.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let c = csum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

/// Median of 5 runs of `iters` calls, in ns per call.
fn time(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..iters {
            f(i);
        }
        runs.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    runs[2]
}

fn realistic(n: usize) -> String {
    let mut s = String::from(
        "table inet filter {\n\tset blocked {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 192.168.0.0/16, 172.16.0.0/12 }\n\t}\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established,related accept\n",
    );
    for i in 0..n {
        match i % 4 {
            0 => writeln!(s, "\t\ttcp dport {} counter accept", 10000 + i).unwrap(),
            1 => writeln!(
                s,
                "\t\tip saddr 10.{}.{}.0/24 udp dport {} accept",
                (i / 256) % 256,
                i % 256,
                20000 + i
            )
            .unwrap(),
            2 => writeln!(s, "\t\tip saddr @blocked drop").unwrap(),
            _ => writeln!(
                s,
                "\t\tudp dport {{ {}, {} }} ip saddr != 10.0.0.0/8 drop",
                30000 + i,
                40000 + i
            )
            .unwrap(),
        }
    }
    s.push_str("\t}\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n");
    s
}

fn main() {
    let meta = PacketMeta::default();
    println!("nft_filter eval bench (ns per packet, median of 5 runs)");

    // 1,000 rules vs one set.
    let mut linear = String::from(
        "table inet t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n",
    );
    let mut set = String::from("table inet t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport { ");
    for i in 0..1000 {
        writeln!(linear, "\t\ttcp dport {} drop", 1000 + i).unwrap();
        write!(set, "{}{}", if i > 0 { ", " } else { "" }, 1000 + i).unwrap();
    }
    linear.push_str("\t}\n}\n");
    set.push_str(" } drop\n\t}\n}\n");
    let miss = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, &tcp(40000, 80));
    for (name, text) in [
        ("1000 rules, linear", &linear),
        ("1000 ports, one set", &set),
    ] {
        let mut f = Filter::new(1024);
        f.replace(text).unwrap();
        assert_eq!(
            f.evaluate(Hook::Input, LinkType::Ip, &miss, &meta, 0),
            Verdict::Accept
        );
        let ns = time(200_000, |i| {
            black_box(f.evaluate(Hook::Input, LinkType::Ip, black_box(&miss), &meta, i));
        });
        println!("{name:<40} {ns:>9.1} ns/packet (no rule matches)");
    }

    // Realistic shape.
    for n in [0usize, 10, 100, 1000] {
        let mut f = Filter::new(4096);
        f.replace(&realistic(n)).unwrap();
        let req = ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            17,
            &udp(40000, 6379, b"*1\r\n$4\r\nPING\r\n"),
        );
        let resp = ipv4(
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            17,
            &udp(6379, 40000, b"+PONG\r\n"),
        );
        // Establish: the stack answers, so the output hook sees the first packet.
        f.evaluate(Hook::Output, LinkType::Ip, &resp, &meta, 0);
        f.evaluate(Hook::Input, LinkType::Ip, &req, &meta, 1);
        let ns = time(500_000, |i| {
            let a = f.evaluate(Hook::Input, LinkType::Ip, black_box(&req), &meta, 2 + i);
            let b = f.evaluate(Hook::Output, LinkType::Ip, black_box(&resp), &meta, 2 + i);
            debug_assert_eq!((a, b), (Verdict::Accept, Verdict::Accept));
            black_box((a, b));
        });
        let newp = ipv4([10, 9, 9, 9], [10, 0, 0, 2], 17, &udp(40001, 9, b"x"));
        let ns_new = time(if n >= 1000 { 20_000 } else { 200_000 }, |i| {
            black_box(f.evaluate(Hook::Input, LinkType::Ip, black_box(&newp), &meta, 2 + i));
        });
        println!("realistic {n:>4} rules: established UDP request+response {ns:>7.1} ns/exchange; new-flow packet walking all rules {ns_new:>9.1} ns");
    }

    // Empty filter baseline (no rules, no conntrack).
    let mut f = Filter::new(64);
    let req = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, &udp(40000, 6379, b"x"));
    let ns = time(1_000_000, |i| {
        black_box(f.evaluate(Hook::Input, LinkType::Ip, black_box(&req), &meta, i));
    });
    println!("{:<40} {ns:>9.1} ns/packet", "empty ruleset");

    // Build time.
    let text = realistic(10_000);
    let t = Instant::now();
    let mut f = Filter::new(64);
    f.replace(&text).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "parse + compile 10,000-rule ruleset ({} KiB): {ms:.1} ms",
        text.len() / 1024
    );
    assert_eq!(f.ruleset().rule_count(), 10_001);
}
