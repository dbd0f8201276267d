//! Differential tests against the Linux kernel's nftables.
//!
//! `kernel_differential` (stacks: input hook, ip/inet tables, IPv4+IPv6):
//! for each of `NFT_DIFF_RULESETS` (default 30) seeded random rulesets in
//! the supported subset, a fresh network namespace gets a TAP device with
//! IPv4 and IPv6 addresses, a TCP listener and a UDP echo socket; the
//! ruleset is loaded into the kernel (`nft -f`) and into `nft_filter`. Then
//! `NFT_DIFF_PACKETS` (default 60) crafted frames are written into the TAP
//! one at a time, so they traverse the kernel's input hook. An observer
//! table counts every packet at priority -1000 (reached the hook) and at
//! priority 1000 (accepted by every base chain), which gives the kernel's
//! verdict per packet. After each packet the kernel's counters
//! (`nft list ruleset`) must equal ours rule for rule, and the verdicts
//! must agree; for `reject` our reply must equal the one the kernel sent.
//! Whatever the kernel sends back out of the TAP (echo replies, SYN-ACKs,
//! RSTs, ICMP errors, UDP replies, MLD) goes through our output hook, so
//! both connection trackers see the same traffic; multi-packet flows (ICMP
//! echo, TCP handshake to the listener, UDP exchange, SYN to a closed port,
//! ICMP errors quoting a flow) exercise `ct state`.
//!
//! `kernel_differential_bridge` (switch: bridge table, forward hook): a
//! kernel bridge with two TAP ports; frames go in at one port and must come
//! out of the other exactly when both filters accept them; counters compared
//! after every frame. (No `ct` and no `reject` there: this kernel has
//! neither nf_conntrack_bridge nor nft_reject_bridge.)
//!
//! `NFT_DIFF_SEED` (hex) changes the seed; `NFT_DIFF_FIRST=k` starts at
//! ruleset `k` (to replay a reported mismatch). Needs root and the `nft` binary
//! (package `nftables`), `ip` and `bridge` (package `iproute2`).

extern crate alloc;

#[path = "../src/testutil.rs"]
mod testutil;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nft_filter::reject::{build_reply, MAX_REPLY};
use nft_filter::{Filter, Hook, IfName, LinkType, PacketMeta, Verdict};
use testutil::*;

const LOCAL: [u8; 4] = [10, 200, 0, 1];
const LOCAL2: [u8; 4] = [10, 200, 0, 5];
const TAP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const TCP_LISTEN: u16 = 8080;
const UDP_ECHO: u16 = 5353;

// ---------------------------------------------------------------- helpers

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new(cmd);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().map_err(|e| format!("{cmd}: {e}"))?;
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(s.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace removed on drop (with everything in it).
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Netns {
        let _ = run("ip", &["netns", "del", &name], None);
        run("ip", &["netns", "add", &name], None).expect("ip netns add");
        Netns { name }
    }
    fn exec(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(args);
        run("ip", &a, stdin)
    }
    /// Runs `f` on a thread that entered this namespace.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name], None);
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Opens a TAP device (created in the calling thread's namespace).
fn open_tap(name: &str) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: 0x0002 | 0x1000,
        _pad: [0; 22],
    }; // IFF_TAP | IFF_NO_PI
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq we own.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x400454ca, &mut req as *mut IfReq) };
    assert!(r >= 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    // SAFETY: fcntl on our own fd.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    f
}

/// Frames the kernel sent out of the TAP, waiting up to `wait` for the
/// first one and then until the device is quiet.
fn drain(tap: &mut File, wait: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        match tap.read(&mut buf) {
            Ok(n) => {
                out.push(buf[..n].to_vec());
                quiet_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let waited = start.elapsed();
                if (out.is_empty() && waited >= wait)
                    || (!out.is_empty() && quiet_since.elapsed() > Duration::from_millis(3))
                {
                    return out;
                }
                if out.is_empty() && wait.is_zero() && waited > Duration::from_millis(2) {
                    return out;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => panic!("tap read: {e}"),
        }
    }
}

// -------------------------------------------------------------- generator

/// Values the packets should probe (boundaries of what rules test).
#[derive(Default)]
struct Hints {
    saddrs: Vec<u32>,
    saddrs6: Vec<u128>,
    ports: Vec<u16>,
}

fn ip_s(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn is_local(a: u32) -> bool {
    a >> 16 == 0x0ac8 // 10.200.0.0/16
}

struct Gen<'r> {
    r: &'r mut Rng,
    h: Hints,
    regular: Vec<String>,
    tap: String,
    /// An inet table: IPv6 and `meta nfproto` matches are allowed.
    inet: bool,
    /// A bridge table on the forward hook (no ct, no reject: this
    /// kernel has neither nf_conntrack_bridge nor nft_reject_bridge); `tap`
    /// is then the egress port.
    bridge: Option<String>,
}

impl Gen<'_> {
    fn src_base(&mut self) -> u32 {
        loop {
            let a = 0x0a00_0000 | (self.r.below(1 << 24) as u32);
            if !is_local(a) {
                return a;
            }
        }
    }

    fn prefix(&mut self) -> (u32, u8) {
        let len = *self.r.pick(&[8u8, 12, 16, 20, 24, 28, 30, 31, 32]);
        let a = self.src_base();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let net = a & mask;
        let last = net | !mask;
        for x in [net.wrapping_sub(1), net, last, last.wrapping_add(1)] {
            self.h.saddrs.push(x);
        }
        (net, len)
    }

    fn port(&mut self) -> u16 {
        let p = match self.r.below(4) {
            0 => self.r.below(1024) as u16,
            1 => *self
                .r
                .pick(&[22u16, 53, 80, 443, TCP_LISTEN, UDP_ECHO, 1023, 1024, 65535]),
            _ => 1024 + self.r.below(64511) as u16,
        };
        self.h
            .ports
            .extend([p.saturating_sub(1), p, p.saturating_add(1)]);
        p
    }

    fn port_range(&mut self) -> (u16, u16) {
        let a = self.port();
        let b = a.saturating_add(self.r.below(300) as u16);
        self.h.ports.extend([b, b.saturating_add(1)]);
        (a, b)
    }

    /// Disjoint sorted port ranges/values for a set.
    fn port_set(&mut self, allow_ranges: bool) -> String {
        let n = 1 + self.r.below(4);
        let mut items: Vec<(u16, u16)> = Vec::new();
        for _ in 0..n {
            let (a, b) = if allow_ranges && self.r.chance(40) {
                self.port_range()
            } else {
                let p = self.port();
                (p, p)
            };
            if items
                .iter()
                .all(|&(x, y)| b < x.saturating_sub(1) || a > y.saturating_add(1))
            {
                items.push((a, b));
            }
        }
        items.sort();
        let parts: Vec<String> = items
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        format!("{{ {} }}", parts.join(", "))
    }

    fn op(&mut self) -> &'static str {
        if self.r.chance(20) {
            "!= "
        } else {
            ""
        }
    }

    /// A match that fits the rule's protocols so far (nft refuses
    /// conflicting ones, e.g. `ip saddr …` and `ip6 saddr …` in one rule).
    fn matcher(&mut self, proto: &mut Option<&'static str>, l3: &mut Option<u8>) -> String {
        loop {
            let mut p2 = *proto;
            let m = self.matcher_inner(&mut p2);
            let want = if m.starts_with("ip6 ")
                || m.contains("nfproto ipv6")
                || m.starts_with("ether type ip6")
            {
                Some(6)
            } else if m.starts_with("ip ")
                || m.starts_with("icmp ")
                || m.contains("nfproto ipv4")
                || m == "ether type ip"
            {
                Some(4)
            } else {
                None
            };
            if want.is_some() && l3.is_some() && want != *l3 {
                continue;
            }
            if want.is_some() {
                *l3 = want;
            }
            *proto = p2;
            return m;
        }
    }

    fn prefix6(&mut self) -> (u128, u8) {
        let len = *self.r.pick(&[16u8, 32, 48, 64, 96, 120, 127, 128]);
        let a = 0xfd01u128 << 112
            | (self.r.next() as u128) << 48
            | self.r.next() as u128 & 0xffff_ffff_ffff;
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        let net = a & mask;
        let last = net | !mask;
        for x in [net.wrapping_sub(1), net, last, last.wrapping_add(1)] {
            self.h.saddrs6.push(x);
        }
        (net, len)
    }

    fn matcher_inner(&mut self, proto: &mut Option<&'static str>) -> String {
        loop {
            let k = self.r.below(21);
            let m = match k {
                0 => {
                    let (n, l) = self.prefix();
                    let op = self.op();
                    format!("ip saddr {op}{}/{l}", ip_s(n))
                }
                1 => {
                    let a = self.src_base();
                    let b = a.saturating_add(self.r.below(5000) as u32);
                    self.h
                        .saddrs
                        .extend([a.wrapping_sub(1), a, b, b.wrapping_add(1)]);
                    let op = self.op();
                    format!("ip saddr {op}{}-{}", ip_s(a), ip_s(b))
                }
                2 => {
                    let op = self.op();
                    let d = self
                        .r
                        .pick(&[
                            "10.200.0.1",
                            "10.200.0.5",
                            "10.200.0.0/30",
                            "10.200.0.4/31",
                            "{ 10.200.0.5, 10.200.0.9 }",
                        ])
                        .to_string();
                    format!("ip daddr {op}{d}")
                }
                3 => {
                    // nft refuses conflicting protocols (`meta l4proto udp
                    // tcp dport 1`), so a protocol match comes first or not at all.
                    if proto.is_some() {
                        continue;
                    }
                    let p = *self.r.pick(&["tcp", "udp", "icmp"]);
                    if self.r.chance(50) {
                        *proto = Some(p);
                        format!("meta l4proto {p}")
                    } else if self.r.chance(50) {
                        let op = self.op();
                        *proto = Some(if op.is_empty() { p } else { "set" });
                        format!("ip protocol {op}{p}")
                    } else {
                        *proto = Some("set");
                        "meta l4proto { tcp, udp }".to_string()
                    }
                }
                4..=6 => {
                    let l4 = match proto {
                        Some(p) if *p == "tcp" || *p == "udp" => *p,
                        Some(_) => continue,
                        None => *self.r.pick(&["tcp", "udp"]),
                    };
                    *proto = Some(l4);
                    let f = if self.r.chance(70) { "dport" } else { "sport" };
                    let rhs = match self.r.below(5) {
                        0 => self.port().to_string(),
                        1 => {
                            let (a, b) = self.port_range();
                            format!("{a}-{b}")
                        }
                        2 => self.port_set(true),
                        3 => format!("< {}", self.port()),
                        _ => format!(">= {}", self.port()),
                    };
                    let op = if rhs.starts_with(['<', '>']) {
                        ""
                    } else {
                        self.op()
                    };
                    format!("{l4} {f} {op}{rhs}")
                }
                7 => {
                    if proto.is_some_and(|p| p != "tcp") {
                        continue;
                    }
                    *proto = Some("tcp");
                    self.r
                        .pick(&[
                            "tcp flags syn",
                            "tcp flags & (syn | ack) == syn",
                            "tcp flags & (syn | ack) == syn | ack",
                            "tcp flags == ack",
                            "tcp flags != syn",
                            "tcp flags & (fin | rst) != 0",
                            "tcp flags { syn, ack }",
                            "tcp flags fin,rst",
                        ])
                        .to_string()
                }
                8 => {
                    if proto.is_some_and(|p| p != "icmp") {
                        continue;
                    }
                    *proto = Some("icmp");
                    self.r
                        .pick(&[
                            "icmp type echo-request",
                            "icmp type { echo-request, destination-unreachable }",
                            "icmp type != echo-request",
                            "icmp code 0",
                        ])
                        .to_string()
                }
                9 | 10 if self.bridge.is_some() => continue,
                9 | 10 => self
                    .r
                    .pick(&[
                        "ct state new",
                        "ct state established",
                        "ct state established,related",
                        "ct state invalid",
                        "ct state related",
                        "ct state { new, established }",
                        "ct state != established",
                        "ct state new,invalid",
                        "ct direction original",
                        "ct direction reply",
                    ])
                    .to_string(),
                11 => self
                    .r
                    .pick(&[
                        "ip ttl 64",
                        "ip ttl < 64",
                        "ip ttl > 63",
                        "ip ttl { 1, 255 }",
                        "ip length 20-60",
                        "ip length > 60",
                        "meta length < 41",
                        "meta length 40-80",
                    ])
                    .to_string(),
                12 => {
                    if proto.is_some_and(|p| p != "udp") {
                        continue;
                    }
                    *proto = Some("udp");
                    self.r
                        .pick(&["udp length 8-16", "udp length > 20", "udp length 12"])
                        .to_string()
                }
                13 if self.bridge.is_some() => {
                    let out = self.bridge.clone().unwrap();
                    match self.r.below(3) {
                        0 => format!("iifname \"{}\"", self.tap),
                        1 => format!("oifname \"{out}\""),
                        _ => format!("oifname != \"{out}\""),
                    }
                }
                13 => {
                    if self.r.chance(50) {
                        format!("iifname \"{}\"", self.tap)
                    } else {
                        "meta iifname != \"nothere0\"".to_string()
                    }
                }
                14 => "ip saddr @srcs".to_string(),
                16 | 17 if self.inet || self.bridge.is_some() => {
                    let op = self.op();
                    if self.r.chance(60) {
                        let (n, l) = self.prefix6();
                        format!("ip6 saddr {op}{}/{l}", std::net::Ipv6Addr::from(n))
                    } else {
                        let (n, _) = self.prefix6();
                        let b = n + self.r.below(100_000) as u128;
                        self.h.saddrs6.extend([b, b + 1]);
                        format!(
                            "ip6 saddr {op}{}-{}",
                            std::net::Ipv6Addr::from(n),
                            std::net::Ipv6Addr::from(b)
                        )
                    }
                }
                18 if self.inet || self.bridge.is_some() => {
                    let op = self.op();
                    let d = self
                        .r
                        .pick(&[
                            "fd00:200::1",
                            "fd00:200::5",
                            "fd00:200::/64",
                            "fd00:200::4/126",
                            "{ fd00:200::5, fd00:200::9 }",
                        ])
                        .to_string();
                    format!("ip6 daddr {op}{d}")
                }
                19 => self
                    .r
                    .pick(&[
                        "ether saddr 02:00:00:00:00:02",
                        "ether saddr != 02:00:00:00:00:99",
                        "ether daddr 02:00:00:00:00:01",
                        "ether type ip",
                        "ether type ip6",
                    ])
                    .to_string(),
                20 if self.inet => {
                    if self.r.chance(50) {
                        self.r
                            .pick(&["meta nfproto ipv4", "meta nfproto ipv6"])
                            .to_string()
                    } else {
                        if proto.is_some() {
                            continue;
                        }
                        let p = *self.r.pick(&["tcp", "udp", "ipv6-icmp"]);
                        *proto = Some(if p == "ipv6-icmp" { "set" } else { p });
                        format!("ip6 nexthdr {p}")
                    }
                }
                16..=20 => continue,
                _ => "meta mark 0x00000000".to_string(),
            };
            return m;
        }
    }

    fn verdict(&mut self, level: usize, proto: Option<&str>, l3: Option<u8>) -> String {
        let jumpable: Vec<String> = self.regular.iter().skip(level).cloned().collect();
        loop {
            match self.r.below(20) {
                0..=4 => return "accept".into(),
                5..=7 => return "drop".into(),
                8..=10 => return String::new(),
                11..=13 if !jumpable.is_empty() => {
                    let c = self.r.pick(&jumpable).clone();
                    return format!("{} {c}", if self.r.chance(60) { "jump" } else { "goto" });
                }
                14 => return "return".into(),
                15..=17 | 19 if self.bridge.is_some() => {}
                15 => return "reject".into(),
                16 if proto == Some("tcp") => return "reject with tcp reset".into(),
                17 if l3 != Some(6) => return "reject with icmp type host-unreachable".into(),
                19 if self.inet && l3 != Some(4) => {
                    return "reject with icmpv6 type admin-prohibited".into()
                }
                19 if self.inet => return "reject with icmpx type admin-prohibited".into(),
                18 if !jumpable.is_empty() && matches!(proto, None | Some("tcp")) => {
                    let c = self.r.pick(&jumpable).clone();
                    let p1 = self.port();
                    let p2 = p1.wrapping_add(1 + self.r.below(5) as u16);
                    if p2 <= p1 {
                        continue;
                    }
                    return format!("tcp dport vmap {{ {p1} : accept, {p2} : jump {c} }}");
                }
                _ => {}
            }
        }
    }

    fn rule(&mut self, level: usize) -> String {
        let mut parts = Vec::new();
        let mut proto = None;
        let mut l3 = None;
        let n = self.r.below(4);
        // A counter goes before or after all matches: nft 1.0.6 merges
        // matches on adjacent fields of one header (`ip ttl 64 … ip protocol
        // tcp`) and may move the merged match across a counter between them
        // (see SUBSET.md), which changes what that counter counts.
        let counter_at = if self.r.chance(75) {
            Some(if self.r.chance(50) { 0 } else { n })
        } else {
            None
        };
        for i in 0..=n {
            if counter_at == Some(i) {
                parts.push("counter".to_string());
            }
            if i < n {
                parts.push(self.matcher(&mut proto, &mut l3));
            }
        }
        let v = self.verdict(level, proto, l3);
        if !v.is_empty() {
            parts.push(v);
        }
        if parts.is_empty() {
            parts.push("counter".into());
        }
        parts.join(" ")
    }

    /// A rule for the output chain: it never drops (a packet the kernel
    /// drops at output never reaches us to be compared) and skips ICMPv6,
    /// so asynchronous MLD reports stay out of the counters.
    fn rule_out(&mut self) -> String {
        let mut parts = vec!["meta l4proto != ipv6-icmp".to_string()];
        let (mut proto, mut l3) = (None, None);
        let n = self.r.below(3);
        let counter_at = if self.r.chance(50) { 0 } else { n };
        for i in 0..=n {
            if counter_at == i {
                parts.push("counter".to_string());
            }
            if i < n {
                parts.push(self.matcher(&mut proto, &mut l3));
            }
        }
        if self.r.chance(40) {
            parts.push("accept".into());
        }
        parts.join(" ")
    }

    fn ruleset(&mut self) -> String {
        let family = if self.bridge.is_some() {
            "bridge"
        } else {
            *self.r.pick(&["ip", "inet", "inet"])
        };
        self.inet = family == "inet";
        let hook = if self.bridge.is_some() {
            "forward"
        } else {
            "input"
        };
        let nreg = self.r.below(4) as usize;
        self.regular = (0..nreg).map(|i| format!("r{i}")).collect();
        let mut s = String::new();
        let _ = writeln!(s, "table {family} gen {{");
        // A named interval set of disjoint source prefixes.
        let mut elems: Vec<(u32, u32, String)> = Vec::new();
        for _ in 0..1 + self.r.below(4) {
            let (n, l) = self.prefix();
            let last = n | if l == 32 { 0 } else { u32::MAX >> l };
            if elems.iter().all(|(a, b, _)| last < *a || n > *b) {
                elems.push((n, last, format!("{}/{l}", ip_s(n))));
            }
        }
        elems.sort();
        let e: Vec<&str> = elems.iter().map(|x| x.2.as_str()).collect();
        let _ = writeln!(
            s,
            "\tset srcs {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}",
            e.join(", ")
        );
        let nbase = 1 + self.r.below(3);
        for b in 0..nbase {
            let prio = if self.bridge.is_some() {
                *self.r.pick(&[-210i32, -200, -200, 0, 10])
            } else {
                *self.r.pick(&[-20i32, -10, 0, 0, 10, 20])
            };
            let policy = if self.r.chance(25) { "drop" } else { "accept" };
            let _ = writeln!(
                s,
                "\tchain b{b} {{\n\t\ttype filter hook {hook} priority {prio}; policy {policy};"
            );
            for _ in 0..1 + self.r.below(7) {
                let r = self.rule(0);
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        }
        if self.bridge.is_none() && self.r.chance(60) {
            let prio = *self.r.pick(&[-10i32, 0, 10]);
            let _ = writeln!(
                s,
                "\tchain o0 {{\n\t\ttype filter hook output priority {prio}; policy accept;"
            );
            for _ in 0..1 + self.r.below(5) {
                let r = self.rule_out();
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        }
        for i in 0..nreg {
            let _ = writeln!(s, "\tchain r{i} {{");
            for _ in 0..self.r.below(5) {
                let r = self.rule(i + 1);
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        }
        s.push_str("}\n");
        s
    }
}

const OBSERVER: &str = "table inet zzobs {\n\tchain pre {\n\t\ttype filter hook input priority -1000; policy accept;\n\t\tcounter\n\t}\n\tchain post {\n\t\ttype filter hook input priority 1000; policy accept;\n\t\tcounter\n\t}\n}\n";

/// Counters of a kernel listing: (table, chain) → (packets, bytes) of
/// each counter, in order.
type KernelCounters = HashMap<(String, String), Vec<(u64, u64)>>;

/// Kernel counters once the observer chains saw a packet past `reached`
/// (or after 2 s): the listing's counters, and the packet counts of the
/// observer's `pre` (reached the hook) and `post` (accepted) rules.
fn await_observer(ns: &Netns, reached: u64) -> (KernelCounters, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let listing = ns
            .exec(&["nft", "list", "ruleset"], None)
            .expect("nft list");
        let kc = kernel_counters(&listing);
        let count = |rule: &str| {
            kc.get(&("zzobs".into(), rule.into()))
                .and_then(|v| v.first())
                .map(|c| c.0)
                .unwrap_or(0)
        };
        let (pre, post) = (count("pre"), count("post"));
        if pre > reached || Instant::now() > deadline {
            return (kc, pre, post);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Counters per (table, chain) from `nft list ruleset` text.
fn kernel_counters(text: &str) -> KernelCounters {
    let mut m: HashMap<(String, String), Vec<(u64, u64)>> = HashMap::new();
    let (mut table, mut chain) = (String::new(), String::new());
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() == Some(&"table") && w.len() >= 3 {
            table = w[2].to_string();
        } else if w.first() == Some(&"chain") && w.len() >= 2 {
            chain = w[1].to_string();
            m.entry((table.clone(), chain.clone())).or_default();
        }
        if let Some(i) = w.iter().position(|x| *x == "counter") {
            if w.get(i + 1) == Some(&"packets") {
                let p = w[i + 2].parse().unwrap();
                let b = w[i + 4].parse().unwrap();
                m.entry((table.clone(), chain.clone()))
                    .or_default()
                    .push((p, b));
            }
        }
    }
    m
}

fn our_counters(f: &Filter) -> HashMap<(String, String), Vec<(u64, u64)>> {
    let mut m: HashMap<(String, String), Vec<(u64, u64)>> = HashMap::new();
    for t in f.ruleset().tables() {
        for c in &t.chains {
            m.entry((t.name.clone(), c.name.clone())).or_default();
        }
    }
    for line in f.list_counters().lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        m.entry((w[1].to_string(), w[2].to_string()))
            .or_default()
            .push((w[5].parse().unwrap(), w[7].parse().unwrap()));
    }
    m
}

// ---------------------------------------------------------------- packets

const LOCAL6: u128 = 0xfd00_0200u128 << 96 | 1;
const LOCAL6_2: u128 = 0xfd00_0200u128 << 96 | 5;

/// A peer address of either family.
#[derive(Clone, Copy, Debug)]
enum Addr {
    V4([u8; 4]),
    V6(u128),
}

impl Addr {
    fn local(self, second: bool) -> Addr {
        match (self, second) {
            (Addr::V4(_), false) => Addr::V4(LOCAL),
            (Addr::V4(_), true) => Addr::V4(LOCAL2),
            (Addr::V6(_), false) => Addr::V6(LOCAL6),
            (Addr::V6(_), true) => Addr::V6(LOCAL6_2),
        }
    }
}

/// An IP packet from `src` to `dst` (same family); `proto` 1 means the
/// family's ICMP.
fn ip(src: Addr, dst: Addr, proto: u8, ttl: u8, l4: Vec<u8>) -> Vec<u8> {
    match (src, dst) {
        (Addr::V4(s), Addr::V4(d)) => ipv4(s, d, proto, ttl, l4),
        (Addr::V6(s), Addr::V6(d)) => {
            let mut p = ipv6(s, d, if proto == 1 { 58 } else { proto }, l4);
            p[7] = ttl;
            p
        }
        _ => unreachable!("mixed families"),
    }
}

/// (version, transport protocol, transport offset) of a packet we built or
/// the kernel sent (no IPv6 extension headers in either).
fn l3(p: &[u8]) -> (u8, u8, usize) {
    if p[0] >> 4 == 4 {
        (4, p[9], (p[0] & 15) as usize * 4)
    } else {
        (6, p[6], 40)
    }
}

fn addrs(p: &[u8]) -> (&[u8], &[u8]) {
    if p[0] >> 4 == 4 {
        (&p[12..16], &p[16..20])
    } else {
        (&p[8..24], &p[24..40])
    }
}

fn dport(p: &[u8]) -> u16 {
    let (_, _, o) = l3(p);
    u16::from_be_bytes([p[o + 2], p[o + 3]])
}

/// One step of the packet script.
enum Step {
    Raw(Vec<u8>),
    /// Complete the handshake of the flow from `sport` to the listener,
    /// acknowledging the SYN-ACK the kernel sent (if any), with data.
    TcpAck {
        src: Addr,
        sport: u16,
        seq: u32,
    },
    /// A port-unreachable from the peer quoting the last UDP packet the
    /// kernel sent to `dport` (related to the flow).
    IcmpErrorForUdp {
        peer: Addr,
        dport: u16,
    },
}

fn rand_src(r: &mut Rng, h: &Hints) -> Addr {
    if r.chance(35) {
        let a = if !h.saddrs6.is_empty() && r.chance(80) {
            *r.pick(&h.saddrs6)
        } else {
            0xfd01u128 << 112 | (r.next() as u128) << 32 | r.next() as u128 & 0xffff
        };
        // Never on-link (the kernel would need neighbour discovery).
        return Addr::V6(if a >> 112 != 0xfd01 {
            0xfd01u128 << 112 | 7
        } else {
            a
        });
    }
    let a = if !h.saddrs.is_empty() && r.chance(80) {
        *r.pick(&h.saddrs)
    } else {
        0x0a00_0000 | r.below(1 << 24) as u32
    };
    let a = if is_local(a) || a >> 24 != 10 {
        0x0a01_0203
    } else {
        a
    };
    Addr::V4(a.to_be_bytes())
}

fn script(r: &mut Rng, h: &Hints, n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut used_sport = HashSet::new();
    let mut fresh = |r: &mut Rng| loop {
        let p = 20000 + r.below(40000) as u16;
        if used_sport.insert(p) {
            return p;
        }
    };
    while steps.len() < n {
        let src = rand_src(r, h);
        let v6 = matches!(src, Addr::V6(_));
        let dst = src.local(r.chance(20));
        let ttl = *r.pick(&[64u8, 64, 63, 65, 1, 255]);
        let port = |r: &mut Rng| {
            if !h.ports.is_empty() && r.chance(85) {
                *r.pick(&h.ports)
            } else {
                r.below(65536) as u16
            }
        };
        let payload = vec![0x61u8; *r.pick(&[0usize, 0, 1, 4, 12, 40])];
        let (echo, echo_reply) = if v6 { (128u8, 129u8) } else { (8, 0) };
        match r.below(10) {
            0..=2 => {
                let flags =
                    *r.pick(&[0x02u8, 0x02, 0x10, 0x18, 0x12, 0x11, 0x04, 0x14, 0x03, 0x00]);
                let (sport, dport) = if r.chance(25) {
                    (port(r), fresh(r))
                } else {
                    (fresh(r), port(r))
                };
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    6,
                    ttl,
                    tcp(
                        sport,
                        dport,
                        flags,
                        r.next() as u32,
                        r.next() as u32,
                        &payload,
                    ),
                )));
            }
            3 | 4 => {
                let (sport, dport) = if r.chance(25) {
                    (port(r), fresh(r))
                } else {
                    (fresh(r), port(r))
                };
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    17,
                    ttl,
                    udp(sport, dport, &payload),
                )));
            }
            5 => {
                let ty = *r.pick(&[
                    echo,
                    echo,
                    echo_reply,
                    if v6 { 1 } else { 3 },
                    if v6 { 135 } else { 13 },
                ]);
                let id = fresh(r);
                // ICMPv6 neighbour discovery needs hop limit 255.
                let ttl = if ty == 135 { 255 } else { ttl };
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    1,
                    ttl,
                    icmp(ty, 0, id, 1, &payload),
                )));
            }
            6 => {
                // Echo twice: the second is established if the kernel replied.
                let id = fresh(r);
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    1,
                    ttl,
                    icmp(echo, 0, id, 1, b"ping"),
                )));
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    1,
                    ttl,
                    icmp(echo, 0, id, 2, b"ping"),
                )));
            }
            7 => {
                // TCP handshake with the listener, then data.
                let sport = fresh(r);
                let seq = r.next() as u32;
                steps.push(Step::Raw(ip(
                    src,
                    src.local(false),
                    6,
                    64,
                    tcp(sport, TCP_LISTEN, 0x02, seq, 0, &[]),
                )));
                steps.push(Step::TcpAck { src, sport, seq });
            }
            8 => {
                // UDP exchange with the echo socket, again, and an ICMP error
                // quoting the echo's reply (related).
                let sport = fresh(r);
                steps.push(Step::Raw(ip(
                    src,
                    src.local(false),
                    17,
                    64,
                    udp(sport, UDP_ECHO, b"hello"),
                )));
                steps.push(Step::Raw(ip(
                    src,
                    src.local(false),
                    17,
                    64,
                    udp(sport, UDP_ECHO, b"again"),
                )));
                steps.push(Step::IcmpErrorForUdp {
                    peer: src,
                    dport: sport,
                });
            }
            _ => {
                // SYN to a closed port, answered by RST; then SYN again.
                let sport = fresh(r);
                let dport = 7000 + r.below(100) as u16;
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    6,
                    64,
                    tcp(sport, dport, 0x02, 1000, 0, &[]),
                )));
                steps.push(Step::Raw(ip(
                    src,
                    dst,
                    6,
                    64,
                    tcp(sport, dport, 0x02, 5000, 0, &[]),
                )));
            }
        }
    }
    steps
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP listener and a UDP echo socket per local address.
fn listeners(ns: &Netns) -> Listeners {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for addr in ["10.200.0.1", "fd00:200::1"] {
        let s1 = stop.clone();
        threads.push(ns.spawn(move || {
            let l = std::net::TcpListener::bind((addr, TCP_LISTEN)).expect("bind tcp");
            l.set_nonblocking(true).unwrap();
            let mut conns = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s1.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((c, _)) = l.accept() {
                    conns.push(c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
        let s2 = stop.clone();
        threads.push(ns.spawn(move || {
            let u = std::net::UdpSocket::bind((addr, UDP_ECHO)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        }));
    }
    Listeners { stop, threads }
}

#[derive(Default)]
struct Tally {
    rulesets: usize,
    packets: usize,
    packets_v6: usize,
    not_reached: usize,
    accepted: usize,
    dropped: usize,
    rejected: usize,
    counters_compared: usize,
    replies: usize,
    replies_compared: usize,
    ct: [u64; 4],
    mismatches: Vec<String>,
}

fn one_ruleset(k: usize, seed: u64, npackets: usize, t: &mut Tally) {
    let mut r = Rng(seed | 1);
    let tap_name = format!("fnnft{}t", std::process::id() % 100000);
    let mut g = Gen {
        r: &mut r,
        h: Hints::default(),
        regular: Vec::new(),
        tap: tap_name.clone(),
        inet: false,
        bridge: None,
    };
    let text = g.ruleset();
    let hints = std::mem::take(&mut g.h);
    let ns = Netns::new(format!("fnnft{}_{k}", std::process::id()));
    ns.exec(
        &[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_ra=0",
            "net.ipv6.conf.default.accept_ra=0",
            "net.ipv6.conf.default.router_solicitations=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=100000",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.conf.all.accept_local=1",
        ],
        None,
    )
    .expect("sysctl");
    let tn = tap_name.clone();
    let mut tap = ns.spawn(move || open_tap(&tn)).join().expect("tap thread");
    let batch = format!(
        "link set lo up\nlink set {tap_name} address 02:00:00:00:00:01\nlink set {tap_name} up\n\
         addr add 10.200.0.1/24 dev {tap_name}\naddr add 10.200.0.5/32 dev {tap_name}\n\
         addr add fd00:200::1/64 dev {tap_name} nodad\naddr add fd00:200::5/128 dev {tap_name} nodad\n\
         neigh add 10.200.0.2 lladdr 02:00:00:00:00:02 dev {tap_name} nud permanent\n\
         neigh add fd00:200::2 lladdr 02:00:00:00:00:02 dev {tap_name} nud permanent\n\
         route add default via 10.200.0.2\nroute add ::/0 via fd00:200::2\n"
    );
    run("ip", &["-n", &ns.name, "-batch", "-"], Some(&batch)).expect("ip batch");
    let _l = listeners(&ns);
    std::thread::sleep(Duration::from_millis(30));
    let full = format!("flush ruleset\n{text}{OBSERVER}");
    if let Err(e) = ns.exec(&["nft", "-f", "-"], Some(&full)) {
        panic!("kernel refused generated ruleset {k} (seed {seed}): {e}\n{full}");
    }
    let mut f = Filter::new(4096);
    if let Err(e) = f.replace(&text) {
        panic!("nft_filter refused ruleset {k} that the kernel took: {e}\n{text}");
    }
    check_listing(&ns, &f, &mut t.mismatches);
    let meta = PacketMeta {
        iif: IfName::new(&tap_name),
        oif: None,
        mark: 0,
    };
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_nanos() as u64 + 1;
    // Link-up chatter (MLD reports) goes through our output hook too.
    for fr in drain(&mut tap, Duration::from_millis(20)) {
        feed_output(&mut f, &fr, now(), &tap_name, &mut t.mismatches);
    }
    let steps = script(g.r, &hints, npackets);
    let mut reached = 0u64;
    let mut accepted_k = 0u64;
    let mut last_synack: HashMap<u16, u32> = HashMap::new();
    let mut last_udp_out: HashMap<u16, Vec<u8>> = HashMap::new();
    t.rulesets += 1;
    for (i, step) in steps.iter().enumerate() {
        let pkt = match step {
            Step::Raw(p) => p.clone(),
            Step::TcpAck { src, sport, seq } => match last_synack.get(sport) {
                Some(&kseq) => ip(
                    *src,
                    src.local(false),
                    6,
                    64,
                    tcp(
                        *sport,
                        TCP_LISTEN,
                        0x18,
                        seq.wrapping_add(1),
                        kseq.wrapping_add(1),
                        b"data",
                    ),
                ),
                None => continue,
            },
            Step::IcmpErrorForUdp { peer, dport } => match last_udp_out.get(dport) {
                Some(q) => {
                    let (ty, code, keep) = if matches!(peer, Addr::V4(_)) {
                        (3, 3, 28 + 8)
                    } else {
                        (1, 4, 48 + 8)
                    };
                    ip(
                        *peer,
                        peer.local(false),
                        1,
                        64,
                        icmp(ty, code, 0, 0, &q[..q.len().min(keep)]),
                    )
                }
                None => continue,
            },
        };
        let (ver, _, _) = l3(&pkt);
        let frame = ether(
            TAP_MAC,
            PEER_MAC,
            if ver == 4 { 0x0800 } else { 0x86dd },
            &pkt,
        );
        // The frame, so that `ether` matches see the MAC header as the kernel does.
        let ours = f.evaluate(Hook::Input, LinkType::Ethernet, &frame, &meta, now());
        tap.write_all(&frame).expect("tap write");
        // Wait until the kernel's input hook saw it.
        let (listing, pre, post) = await_observer(&ns, reached);
        if pre == reached {
            // The kernel dropped it before the input hook; nothing to compare.
            t.not_reached += 1;
            continue;
        }
        reached = pre;
        let kernel_accepted = post > accepted_k;
        accepted_k = post;
        t.packets += 1;
        t.packets_v6 += (ver == 6) as usize;
        match ours {
            Verdict::Accept => t.accepted += 1,
            Verdict::Drop => t.dropped += 1,
            Verdict::Reject(_) => t.rejected += 1,
        }
        if kernel_accepted != (ours == Verdict::Accept) {
            t.mismatches.push(format!(
                "ruleset {k} (seed {seed:#x}) packet {i}: kernel {} ours {ours:?}\npacket {:02x?}\n{text}",
                if kernel_accepted { "accept" } else { "drop" },
                pkt
            ));
        }
        drop(listing);
        // Replies the kernel sent; expected ones get time to arrive.
        let (_, proto, o) = l3(&pkt);
        let expect_reply = (ours == Verdict::Accept
            && matches!(step, Step::Raw(_))
            && ((proto == 1 && pkt[o] == 8)
                || (proto == 58 && pkt[o] == 128)
                || (proto == 17 && dport(&pkt) == UDP_ECHO)
                || (proto == 6 && dport(&pkt) == TCP_LISTEN)))
            || matches!(ours, Verdict::Reject(_));
        let wait = if expect_reply {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        };
        let our_reply = match ours {
            Verdict::Reject(w) => {
                let mut b = [0u8; MAX_REPLY];
                build_reply(&pkt, LinkType::Ip, w, &mut b).map(|n| b[..n].to_vec())
            }
            _ => None,
        };
        let mut kernel_reply: Option<Vec<u8>> = None;
        for fr in drain(&mut tap, wait) {
            feed_output(&mut f, &fr, now(), &tap_name, &mut t.mismatches);
            t.replies += 1;
            if fr.len() < 54 || !(fr[12..14] == [0x08, 0x00] || fr[12..14] == [0x86, 0xdd]) {
                continue;
            }
            let rp = &fr[14..];
            let (_, rproto, ro) = l3(rp);
            if rp.len() < ro + 14 {
                continue;
            }
            if rproto == 6 && rp[ro + 13] & 0x12 == 0x12 {
                last_synack.insert(
                    dport(rp),
                    u32::from_be_bytes([rp[ro + 4], rp[ro + 5], rp[ro + 6], rp[ro + 7]]),
                );
            }
            if rproto == 17 {
                last_udp_out.insert(dport(rp), rp.to_vec());
            }
            let (ps, pd) = addrs(&pkt);
            let (rs, rd) = addrs(rp);
            let answers_pkt = rs == pd && rd == ps;
            let is_reject_reply = (rproto == 1 && rp[ro] == 3)
                || (rproto == 58 && rp[ro] == 1)
                || (rproto == 6 && rp[ro + 13] & 0x04 != 0);
            if matches!(ours, Verdict::Reject(_))
                && kernel_reply.is_none()
                && answers_pkt
                && is_reject_reply
            {
                kernel_reply = Some(rp.to_vec());
            }
        }
        if let Verdict::Reject(w) = ours {
            // The reply we would send must be the one the kernel sent: same
            // ICMP type, code and quote, or same RST ports, seq, ack, flags.
            let same = match (&our_reply, &kernel_reply) {
                (Some(o), Some(kr)) => {
                    let (_, p1, o1) = l3(o);
                    let (_, p2, o2) = l3(kr);
                    let quote = if o[0] >> 4 == 4 { 28 } else { 48 };
                    o.len() == kr.len()
                        && p1 == p2
                        && o1 == o2
                        && if p1 == 6 {
                            o[o1..o1 + 14] == kr[o2..o2 + 14]
                        } else {
                            o[o1..o1 + 2] == kr[o2..o2 + 2] && o[quote..] == kr[quote..]
                        }
                }
                (None, None) => true,
                _ => false,
            };
            t.replies_compared += (our_reply.is_some() && kernel_reply.is_some()) as usize;
            if !same {
                t.mismatches.push(format!(
                    "ruleset {k} (seed {seed:#x}) packet {i}: reject reply ({w:?}) differs\nours   {our_reply:02x?}\nkernel {kernel_reply:02x?}\npacket {pkt:02x?}"
                ));
            }
        }
        // Counters, rule for rule, once the kernel's output (some of it
        // asynchronous: the echo socket, delayed ACKs, retransmissions) has
        // reached us too: retry a few times while frames keep arriving.
        for attempt in 0..4 {
            let kc = kernel_counters(
                &ns.exec(&["nft", "list", "ruleset"], None)
                    .expect("nft list"),
            );
            let mut diffs = Vec::new();
            let oc = our_counters(&f);
            for ((tb, ch), ours_c) in &oc {
                let kern = kc
                    .get(&(tb.clone(), ch.clone()))
                    .cloned()
                    .unwrap_or_default();
                if &kern != ours_c {
                    diffs.push(format!("ruleset {k} (seed {seed:#x}) packet {i}: counters of {tb}/{ch}: kernel {kern:?} ours {ours_c:?}\npacket {pkt:02x?}\n{text}"));
                }
            }
            let late = if diffs.is_empty() {
                Vec::new()
            } else {
                drain(&mut tap, Duration::from_millis(50))
            };
            if diffs.is_empty() || (late.is_empty() && attempt > 0) || attempt == 3 {
                t.counters_compared += oc.values().map(|v| v.len()).sum::<usize>();
                t.mismatches.extend(diffs);
                break;
            }
            for fr in late {
                feed_output(&mut f, &fr, now(), &tap_name, &mut t.mismatches);
                t.replies += 1;
            }
        }
        if t.mismatches.len() > 20 {
            break;
        }
    }
    let st = f.conntrack_stats();
    for (a, b) in
        t.ct.iter_mut()
            .zip([st.new, st.established, st.related, st.invalid])
    {
        *a += b;
    }
}

/// Our `list ruleset` of what we loaded must be valid for `nft -c` and
/// parse back to the same listing.
fn check_listing(ns: &Netns, f: &Filter, mismatches: &mut Vec<String>) {
    let listing = f.list_ruleset();
    if let Err(e) = ns.exec(&["nft", "-c", "-f", "-"], Some(&listing)) {
        mismatches.push(format!("nft -c refuses our listing: {e}\n{listing}"));
    }
    let mut again = Filter::new(64);
    match again.replace(&listing) {
        Ok(_) if again.list_ruleset() == listing => {}
        Ok(_) => mismatches.push(format!(
            "listing does not round-trip:\n{listing}\n{}",
            again.list_ruleset()
        )),
        Err(e) => mismatches.push(format!("we refuse our own listing: {e}\n{listing}")),
    }
}

/// Runs a frame the kernel sent (so its output hook accepted it) through
/// our output hook; it must pass there too.
fn feed_output(f: &mut Filter, frame: &[u8], now: u64, oif: &str, mismatches: &mut Vec<String>) {
    if frame.len() > 14 && (frame[12..14] == [0x08, 0x00] || frame[12..14] == [0x86, 0xdd]) {
        let meta = PacketMeta {
            iif: None,
            oif: IfName::new(oif),
            mark: 0,
        };
        let v = f.evaluate(Hook::Output, LinkType::Ip, &frame[14..], &meta, now);
        if v != Verdict::Accept {
            mismatches.push(format!(
                "output: the kernel sent a packet our output hook would {v:?}: {:02x?}",
                &frame[14..]
            ));
        }
    }
}

const BR_OBSERVER: &str = "table bridge zzobs {\n\tchain pre {\n\t\ttype filter hook forward priority -1000; policy accept;\n\t\tcounter\n\t}\n\tchain post {\n\t\ttype filter hook forward priority 1000; policy accept;\n\t\tcounter\n\t}\n}\n";

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

/// The switch case: a kernel bridge with two TAP ports; frames written
/// into port A addressed to a MAC learnt (static) behind port B traverse
/// the bridge forward hook. Bridge tables, no ct and no reject (see Gen).
fn one_bridge_ruleset(k: usize, seed: u64, npackets: usize, t: &mut Tally) {
    let mut r = Rng(seed | 1);
    let pid = std::process::id() % 100000;
    let (port_a, port_b) = (format!("fnnft{pid}a"), format!("fnnft{pid}b"));
    let mut g = Gen {
        r: &mut r,
        h: Hints::default(),
        regular: Vec::new(),
        tap: port_a.clone(),
        inet: false,
        bridge: Some(port_b.clone()),
    };
    let text = g.ruleset();
    let hints = std::mem::take(&mut g.h);
    let ns = Netns::new(format!("fnnft{}_br{k}", std::process::id()));
    ns.exec(
        &[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        None,
    )
    .expect("sysctl");
    let (a, b) = (port_a.clone(), port_b.clone());
    let (mut tap_a, mut tap_b) = ns
        .spawn(move || (open_tap(&a), open_tap(&b)))
        .join()
        .expect("tap thread");
    let batch = format!(
        "link set lo up\nlink add fnnftbr0 type bridge\nlink set {port_a} master fnnftbr0\nlink set {port_b} master fnnftbr0\n\
         link set {port_a} up\nlink set {port_b} up\nlink set fnnftbr0 up\n"
    );
    run("ip", &["-n", &ns.name, "-batch", "-"], Some(&batch)).expect("ip batch");
    run(
        "bridge",
        &[
            "-n",
            &ns.name,
            "fdb",
            "add",
            "02:00:00:00:00:bb",
            "dev",
            &port_b,
            "master",
            "static",
        ],
        None,
    )
    .expect("bridge fdb");
    let full = format!("flush ruleset\n{text}{BR_OBSERVER}");
    if let Err(e) = ns.exec(&["nft", "-f", "-"], Some(&full)) {
        panic!("kernel refused generated bridge ruleset {k} (seed {seed}): {e}\n{full}");
    }
    let mut f = Filter::new(1024);
    if let Err(e) = f.replace(&text) {
        panic!("nft_filter refused bridge ruleset {k} that the kernel took: {e}\n{text}");
    }
    check_listing(&ns, &f, &mut t.mismatches);
    let meta = PacketMeta {
        iif: IfName::new(&port_a),
        oif: IfName::new(&port_b),
        mark: 0,
    };
    std::thread::sleep(Duration::from_millis(20));
    drain(&mut tap_a, Duration::ZERO);
    drain(&mut tap_b, Duration::ZERO);
    let steps = script(g.r, &hints, npackets);
    let (mut reached, mut accepted_k, mut delivered) = (0u64, 0u64, 0usize);
    t.rulesets += 1;
    for (i, step) in steps.iter().enumerate() {
        let Step::Raw(pkt) = step else { continue };
        let (ver, _, _) = l3(pkt);
        let frame = ether(MAC_B, MAC_A, if ver == 4 { 0x0800 } else { 0x86dd }, pkt);
        let ours = f.evaluate(
            Hook::Forward,
            LinkType::Ethernet,
            &frame,
            &meta,
            1 + i as u64,
        );
        tap_a.write_all(&frame).expect("tap write");
        let (listing, pre, post) = await_observer(&ns, reached);
        if pre == reached {
            t.not_reached += 1;
            continue;
        }
        reached = pre;
        let kernel_accepted = post > accepted_k;
        accepted_k = post;
        t.packets += 1;
        t.packets_v6 += (ver == 6) as usize;
        match ours {
            Verdict::Accept => t.accepted += 1,
            _ => t.dropped += 1,
        }
        // What came out of port B must be exactly the accepted frames.
        let out = drain(
            &mut tap_b,
            if kernel_accepted {
                Duration::from_millis(200)
            } else {
                Duration::ZERO
            },
        );
        delivered += out.iter().filter(|o| **o == frame).count();
        if kernel_accepted != (ours == Verdict::Accept) || out.contains(&frame) != kernel_accepted {
            t.mismatches.push(format!(
                "bridge ruleset {k} (seed {seed:#x}) frame {i}: kernel {} (port B got {} frames) ours {ours:?}\nframe {:02x?}\n{text}",
                if kernel_accepted { "accept" } else { "drop" },
                out.len(),
                frame
            ));
        }
        for ((tb, ch), ours_c) in &our_counters(&f) {
            let kern = listing
                .get(&(tb.clone(), ch.clone()))
                .cloned()
                .unwrap_or_default();
            t.counters_compared += ours_c.len();
            if &kern != ours_c {
                t.mismatches.push(format!("bridge ruleset {k} (seed {seed:#x}) frame {i}: counters of {tb}/{ch}: kernel {kern:?} ours {ours_c:?}\nframe {frame:02x?}\n{text}"));
            }
        }
        if t.mismatches.len() > 20 {
            break;
        }
    }
    t.replies += delivered;
}

#[test]
fn kernel_differential_bridge() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("the differential test needs root (network namespaces, TAP, nft)");
    }
    if run("nft", &["--version"], None).is_err() {
        panic!("the differential test needs the nft binary: apt-get install -y nftables");
    }
    let rulesets = env_usize("NFT_DIFF_RULESETS", 30) / 2;
    let packets = env_usize("NFT_DIFF_PACKETS", 60);
    let seed0 = std::env::var("NFT_DIFF_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x0b1d_9e00_5eed);
    let mut t = Tally::default();
    let start = Instant::now();
    let first = env_usize("NFT_DIFF_FIRST", 0);
    for k in first..first + rulesets.max(1) {
        let seed = seed0
            .wrapping_add(k as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        one_bridge_ruleset(k, seed, packets, &mut t);
        if t.mismatches.len() > 20 {
            break;
        }
    }
    println!(
        "differential (bridge forward): {} rulesets, {} frames compared ({} IPv6; {} accepted, {} dropped), {} accepted frames seen leaving the egress port, {} counter values compared, {} frames not reaching the hook, {} mismatches, {:.1}s",
        t.rulesets,
        t.packets,
        t.packets_v6,
        t.accepted,
        t.dropped,
        t.replies,
        t.counters_compared,
        t.not_reached,
        t.mismatches.len(),
        start.elapsed().as_secs_f64()
    );
    for m in t.mismatches.iter().take(5) {
        println!("MISMATCH {m}");
    }
    assert!(t.mismatches.is_empty(), "{} mismatches", t.mismatches.len());
    assert!(
        t.packets >= rulesets * packets / 2,
        "too few frames reached the bridge forward hook: {}",
        t.packets
    );
}

#[test]
fn kernel_differential() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("the differential test needs root (network namespaces, TAP, nft)");
    }
    if run("nft", &["--version"], None).is_err() {
        panic!("the differential test needs the nft binary: apt-get install -y nftables");
    }
    let rulesets = env_usize("NFT_DIFF_RULESETS", 30);
    let packets = env_usize("NFT_DIFF_PACKETS", 60);
    let seed0 = std::env::var("NFT_DIFF_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x00c0_ffee_1234_5678);
    let mut t = Tally::default();
    let start = Instant::now();
    let first = env_usize("NFT_DIFF_FIRST", 0);
    for k in first..first + rulesets {
        let seed = seed0
            .wrapping_add(k as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        one_ruleset(k, seed, packets, &mut t);
        if t.mismatches.len() > 20 {
            break;
        }
    }
    println!(
        "differential: {} rulesets, {} packets compared ({} IPv6; {} accepted, {} dropped, {} rejected), {} counter values compared, {} kernel replies fed to our output hook, {} reject replies compared byte-wise, ct states seen by our tracker (both hooks) new/established/related/invalid {:?}, {} packets not reaching the hook, {} mismatches, {:.1}s",
        t.rulesets,
        t.packets,
        t.packets_v6,
        t.accepted,
        t.dropped,
        t.rejected,
        t.counters_compared,
        t.replies,
        t.replies_compared,
        t.ct,
        t.not_reached,
        t.mismatches.len(),
        start.elapsed().as_secs_f64()
    );
    for m in t.mismatches.iter().take(5) {
        println!("MISMATCH {m}");
    }
    assert!(t.mismatches.is_empty(), "{} mismatches", t.mismatches.len());
    assert!(
        t.packets >= rulesets * packets / 2,
        "too few packets reached the kernel's input hook: {}",
        t.packets
    );
}
