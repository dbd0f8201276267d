//! The vocabulary of the filter: families, hooks, the packet fields a rule
//! can match (`ip saddr`, `tcp dport`, …), their data types, and the
//! symbolic constants nft knows for them (`tcp`, `echo-request`,
//! `established`, …). Values of every type are held as a `u128` in network
//! (big-endian) order, so one comparison engine serves addresses, ports,
//! interface names and flags alike.

use alloc::string::String;
use core::fmt;

/// Address family of a table (`table <family> <name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 and IPv6 packets (stacks).
    Inet,
    /// IPv4 packets only.
    Ip,
    /// IPv6 packets only.
    Ip6,
    /// Ethernet frames crossing a switch.
    Bridge,
}

impl Family {
    pub(crate) fn from_name(s: &str) -> Option<Family> {
        Some(match s {
            "inet" => Family::Inet,
            "ip" => Family::Ip,
            "ip6" => Family::Ip6,
            "bridge" => Family::Bridge,
            _ => return None,
        })
    }
    /// The nft keyword.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        }
    }
}

/// Netfilter hook a base chain is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Packets addressed to this stack (after reception).
    Input,
    /// Packets the stack sends.
    Output,
    /// Frames a switch forwards between ports (bridge family).
    Forward,
}

impl Hook {
    pub(crate) fn from_name(s: &str) -> Option<Hook> {
        Some(match s {
            "input" => Hook::Input,
            "output" => Hook::Output,
            "forward" => Hook::Forward,
            _ => return None,
        })
    }
    /// The nft keyword.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Output => "output",
            Hook::Forward => "forward",
        }
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Data type of a field, a set key or a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    /// Port number (`inet_service`).
    InetService,
    /// IP protocol number (`inet_proto`).
    InetProto,
    /// `meta nfproto` (ipv4 = 2, ipv6 = 10).
    NfProto,
    /// Plain unsigned integer of the given width in bits.
    Integer(u8),
    /// Packet mark (`mark`).
    Mark,
    /// Interface name, up to 16 bytes, NUL padded.
    IfName,
    EtherAddr,
    EtherType,
    /// TCP flag bitmask.
    TcpFlag,
    IcmpType,
    /// Conntrack state bitmask.
    CtState,
    CtDir,
}

impl DataType {
    /// Width of the value in bits.
    pub fn bits(self) -> u32 {
        match self {
            DataType::Ipv4Addr => 32,
            DataType::Ipv6Addr => 128,
            DataType::InetService => 16,
            DataType::InetProto => 8,
            DataType::NfProto => 8,
            DataType::Integer(b) => b as u32,
            DataType::Mark => 32,
            DataType::IfName => 128,
            DataType::EtherAddr => 48,
            DataType::EtherType => 16,
            DataType::TcpFlag => 8,
            DataType::IcmpType => 8,
            DataType::CtState => 32,
            DataType::CtDir => 8,
        }
    }
    /// Bitmask types: an implicit match (`tcp flags syn`) means `x & v != 0`.
    pub fn is_bitmask(self) -> bool {
        matches!(self, DataType::TcpFlag | DataType::CtState)
    }
    /// Name in a named set declaration (`type ipv4_addr`).
    pub fn set_type_name(self) -> Option<&'static str> {
        Some(match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetService => "inet_service",
            DataType::InetProto => "inet_proto",
            DataType::Mark => "mark",
            DataType::IfName => "ifname",
            DataType::EtherAddr => "ether_addr",
            DataType::EtherType => "ether_type",
            DataType::IcmpType => "icmp_type",
            DataType::CtState => "ct_state",
            _ => return None,
        })
    }
    pub(crate) fn from_set_type_name(s: &str) -> Option<DataType> {
        Some(match s {
            "ipv4_addr" => DataType::Ipv4Addr,
            "ipv6_addr" => DataType::Ipv6Addr,
            "inet_service" => DataType::InetService,
            "inet_proto" => DataType::InetProto,
            "mark" => DataType::Mark,
            "ifname" => DataType::IfName,
            "ether_addr" => DataType::EtherAddr,
            "ether_type" => DataType::EtherType,
            "icmp_type" => DataType::IcmpType,
            "ct_state" => DataType::CtState,
            _ => return None,
        })
    }
    /// Whether prefixes (`a/len`) make sense for this type.
    pub fn allows_prefix(self) -> bool {
        matches!(self, DataType::Ipv4Addr | DataType::Ipv6Addr)
    }
    /// All-ones value of this width.
    pub fn full_mask(self) -> u128 {
        let b = self.bits();
        if b >= 128 {
            u128::MAX
        } else {
            (1u128 << b) - 1
        }
    }
}

/// A packet field a rule can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    MetaL4proto,
    MetaNfproto,
    MetaLength,
    MetaIifname,
    MetaOifname,
    MetaMark,
    IpSaddr,
    IpDaddr,
    IpProtocol,
    IpLength,
    IpTtl,
    Ip6Saddr,
    Ip6Daddr,
    Ip6Nexthdr,
    TcpSport,
    TcpDport,
    TcpFlags,
    UdpSport,
    UdpDport,
    UdpLength,
    IcmpType,
    IcmpCode,
    EtherSaddr,
    EtherDaddr,
    EtherType,
    CtState,
    CtDirection,
}

/// `(field, protocol keyword, field keyword)`, the table the parser and the
/// printer share.
const FIELDS: &[(Field, &str, &str)] = &[
    (Field::MetaL4proto, "meta", "l4proto"),
    (Field::MetaNfproto, "meta", "nfproto"),
    (Field::MetaLength, "meta", "length"),
    (Field::MetaIifname, "meta", "iifname"),
    (Field::MetaOifname, "meta", "oifname"),
    (Field::MetaMark, "meta", "mark"),
    (Field::IpSaddr, "ip", "saddr"),
    (Field::IpDaddr, "ip", "daddr"),
    (Field::IpProtocol, "ip", "protocol"),
    (Field::IpLength, "ip", "length"),
    (Field::IpTtl, "ip", "ttl"),
    (Field::Ip6Saddr, "ip6", "saddr"),
    (Field::Ip6Daddr, "ip6", "daddr"),
    (Field::Ip6Nexthdr, "ip6", "nexthdr"),
    (Field::TcpSport, "tcp", "sport"),
    (Field::TcpDport, "tcp", "dport"),
    (Field::TcpFlags, "tcp", "flags"),
    (Field::UdpSport, "udp", "sport"),
    (Field::UdpDport, "udp", "dport"),
    (Field::UdpLength, "udp", "length"),
    (Field::IcmpType, "icmp", "type"),
    (Field::IcmpCode, "icmp", "code"),
    (Field::EtherSaddr, "ether", "saddr"),
    (Field::EtherDaddr, "ether", "daddr"),
    (Field::EtherType, "ether", "type"),
    (Field::CtState, "ct", "state"),
    (Field::CtDirection, "ct", "direction"),
];

impl Field {
    pub(crate) fn lookup(proto: &str, name: &str) -> Option<Field> {
        FIELDS
            .iter()
            .find(|(_, p, n)| *p == proto && *n == name)
            .map(|(f, _, _)| *f)
    }
    pub(crate) fn is_protocol_keyword(s: &str) -> bool {
        FIELDS.iter().any(|(_, p, _)| *p == s)
    }
    /// The two keywords naming the field, e.g. `("tcp", "dport")`.
    pub fn keywords(self) -> (&'static str, &'static str) {
        let (_, p, n) = FIELDS
            .iter()
            .find(|(f, _, _)| *f == self)
            .expect("every field is in FIELDS");
        (p, n)
    }
    /// The field's data type.
    pub fn data_type(self) -> DataType {
        use Field::*;
        match self {
            MetaL4proto | IpProtocol | Ip6Nexthdr => DataType::InetProto,
            MetaNfproto => DataType::NfProto,
            MetaLength => DataType::Integer(32),
            MetaIifname | MetaOifname => DataType::IfName,
            MetaMark => DataType::Mark,
            IpSaddr | IpDaddr => DataType::Ipv4Addr,
            IpLength | UdpLength => DataType::Integer(16),
            IpTtl => DataType::Integer(8),
            Ip6Saddr | Ip6Daddr => DataType::Ipv6Addr,
            TcpSport | TcpDport | UdpSport | UdpDport => DataType::InetService,
            TcpFlags => DataType::TcpFlag,
            IcmpType => DataType::IcmpType,
            IcmpCode => DataType::Integer(8),
            EtherSaddr | EtherDaddr => DataType::EtherAddr,
            EtherType => DataType::EtherType,
            CtState => DataType::CtState,
            CtDirection => DataType::CtDir,
        }
    }
}

/// Symbolic constants per type, `(name, value)`.
fn symbols(t: DataType) -> &'static [(&'static str, u128)] {
    match t {
        DataType::InetProto => &[
            ("icmp", 1),
            ("igmp", 2),
            ("tcp", 6),
            ("udp", 17),
            ("ipv6-icmp", 58),
            ("icmpv6", 58),
            ("sctp", 132),
        ],
        DataType::NfProto => &[("ipv4", 2), ("ipv6", 10)],
        DataType::EtherType => &[
            ("ip", 0x0800),
            ("arp", 0x0806),
            ("ip6", 0x86dd),
            ("vlan", 0x8100),
        ],
        DataType::TcpFlag => &[
            ("fin", 0x01),
            ("syn", 0x02),
            ("rst", 0x04),
            ("psh", 0x08),
            ("ack", 0x10),
            ("urg", 0x20),
            ("ecn", 0x40),
            ("cwr", 0x80),
        ],
        DataType::IcmpType => &[
            ("echo-reply", 0),
            ("destination-unreachable", 3),
            ("source-quench", 4),
            ("redirect", 5),
            ("echo-request", 8),
            ("router-advertisement", 9),
            ("router-solicitation", 10),
            ("time-exceeded", 11),
            ("parameter-problem", 12),
            ("timestamp-request", 13),
            ("timestamp-reply", 14),
            ("info-request", 15),
            ("info-reply", 16),
            ("address-mask-request", 17),
            ("address-mask-reply", 18),
        ],
        DataType::CtState => &[
            ("invalid", 1),
            ("established", 2),
            ("related", 4),
            ("new", 8),
            ("untracked", 64),
        ],
        DataType::CtDir => &[("original", 0), ("reply", 1)],
        _ => &[],
    }
}

pub(crate) fn symbol_value(t: DataType, name: &str) -> Option<u128> {
    symbols(t).iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn symbol_name(t: DataType, v: u128) -> Option<&'static str> {
    symbols(t).iter().find(|(_, x)| *x == v).map(|(n, _)| *n)
}

/// Parse one literal of type `t` (no ranges, no prefixes).
pub(crate) fn parse_literal(t: DataType, s: &str) -> Result<u128, String> {
    use alloc::format;
    let bad = || format!("'{s}' is not a valid {}", type_desc(t));
    if let Some(v) = symbol_value(t, s) {
        return Ok(v);
    }
    let v = match t {
        DataType::Ipv4Addr => parse_ipv4(s).ok_or_else(bad)?,
        DataType::Ipv6Addr => parse_ipv6(s).ok_or_else(bad)?,
        DataType::EtherAddr => parse_mac(s).ok_or_else(bad)?,
        DataType::IfName => {
            let b = s.as_bytes();
            if b.is_empty() || b.len() > 15 || b.contains(&0) {
                return Err(format!("'{s}' is not a valid interface name (1..15 bytes)"));
            }
            if b.contains(&b'*') {
                return Err(format!("interface name wildcards are not supported: '{s}'"));
            }
            let mut buf = [0u8; 16];
            buf[..b.len()].copy_from_slice(b);
            u128::from_be_bytes(buf)
        }
        _ => parse_number(s).ok_or_else(bad)?,
    };
    if v > t.full_mask() {
        return Err(format!(
            "value '{s}' exceeds the {}-bit {}",
            t.bits(),
            type_desc(t)
        ));
    }
    Ok(v)
}

fn parse_number(s: &str) -> Option<u128> {
    if let Some(h) = s.strip_prefix("0x") {
        u128::from_str_radix(h, 16).ok()
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

pub(crate) fn parse_ipv4(s: &str) -> Option<u128> {
    let a: core::net::Ipv4Addr = s.parse().ok()?;
    Some(u32::from(a) as u128)
}

pub(crate) fn parse_ipv6(s: &str) -> Option<u128> {
    let a: core::net::Ipv6Addr = s.parse().ok()?;
    Some(u128::from(a))
}

fn parse_mac(s: &str) -> Option<u128> {
    let mut v: u128 = 0;
    let mut n = 0;
    for part in s.split(':') {
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        v = (v << 8) | u8::from_str_radix(part, 16).ok()? as u128;
        n += 1;
    }
    (n == 6).then_some(v)
}

/// Human description of a type for error messages.
pub fn type_desc(t: DataType) -> &'static str {
    match t {
        DataType::Ipv4Addr => "IPv4 address",
        DataType::Ipv6Addr => "IPv6 address",
        DataType::InetService => "port (inet_service)",
        DataType::InetProto => "protocol (inet_proto)",
        DataType::NfProto => "nfproto (ipv4/ipv6)",
        DataType::Integer(_) => "integer",
        DataType::Mark => "mark",
        DataType::IfName => "interface name",
        DataType::EtherAddr => "Ethernet address",
        DataType::EtherType => "ether type",
        DataType::TcpFlag => "TCP flag",
        DataType::IcmpType => "ICMP type",
        DataType::CtState => "ct state",
        DataType::CtDir => "ct direction",
    }
}

/// Formats one value of a type the way `nft list` does.
pub struct Literal(pub DataType, pub u128);

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Literal(t, v) = *self;
        match t {
            DataType::Ipv4Addr => write!(f, "{}", core::net::Ipv4Addr::from(v as u32)),
            DataType::Ipv6Addr => write!(f, "{}", core::net::Ipv6Addr::from(v)),
            DataType::EtherAddr => {
                let b = (v as u64).to_be_bytes();
                write!(
                    f,
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    b[2], b[3], b[4], b[5], b[6], b[7]
                )
            }
            DataType::IfName => {
                let b = v.to_be_bytes();
                let n = b.iter().position(|&c| c == 0).unwrap_or(16);
                f.write_str("\"")?;
                for &c in &b[..n] {
                    write!(f, "{}", c as char)?;
                }
                f.write_str("\"")
            }
            DataType::TcpFlag | DataType::CtState if symbol_name(t, v).is_none() && v != 0 => {
                // A combination of bits prints as a comma list.
                let mut first = true;
                for (name, bit) in symbols(t) {
                    if v & bit != 0 {
                        if !first {
                            f.write_str(",")?;
                        }
                        first = false;
                        f.write_str(name)?;
                    }
                }
                Ok(())
            }
            DataType::Mark => write!(f, "0x{v:08x}"),
            DataType::EtherType if symbol_name(t, v).is_none() => write!(f, "0x{v:04x}"),
            _ => match symbol_name(t, v) {
                // nft prints protocols and ports numerically in
                // `inet_service`, names for the rest.
                Some(n) if t != DataType::InetService => f.write_str(n),
                _ => write!(f, "{v}"),
            },
        }
    }
}
