//! The stack's `<config>`: addresses and limits.
//!
//! `<config ip="10.77.0.10/24" gateway="10.77.0.1" mac="02:66:6e:00:00:0a"
//! max_sockets="1024" tcp_rx_buf="262144" tcp_tx_buf="262144"
//! udp_rx_buf="524288" udp_tx_buf="524288" udp_packets="512"
//! max_backlog="128" spin="64" yield_us="200"/>`. Only `ip` is required; the MAC defaults to a
//! locally administered address made from the IP (`02:66:6e` + its last
//! three bytes).

use fragnet_host::{ConfigError, ConfigNode};
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};

use crate::service::Limits;

/// Parsed configuration.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The run script names rule files (`<nftables file=…/>`): init sends
    /// the ruleset first, and no packet may pass before it is loaded.
    pub expect_rules: bool,
    /// Idle policy: rounds to spin, then µs to yield before sleeping.
    pub spin: u32,
    pub yield_us: u64,
    pub cidr: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
    pub mac: EthernetAddress,
    pub limits: Limits,
}

fn parse_mac(s: &str) -> Option<EthernetAddress> {
    let mut b = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut b {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let mac = EthernetAddress(b);
    mac.is_unicast().then_some(mac)
}

impl StackConfig {
    pub fn from_node(node: &ConfigNode) -> Result<StackConfig, ConfigError> {
        let ip = node.require_attr("ip")?;
        let (addr, len) = ip.split_once('/').unwrap_or((ip, "24"));
        let addr: Ipv4Address = addr
            .parse()
            .map_err(|_| node.error(format!("ip=\"{ip}\": not an IPv4 address")))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| node.error(format!("ip=\"{ip}\": bad prefix length")))?;
        let gateway = match node.attr("gateway") {
            None => None,
            Some(g) => Some(
                g.parse()
                    .map_err(|_| node.error(format!("gateway=\"{g}\": not an IPv4 address")))?,
            ),
        };
        let o = addr.octets();
        let mac = match node.attr("mac") {
            None => EthernetAddress([0x02, 0x66, 0x6e, o[1], o[2], o[3]]),
            Some(m) => parse_mac(m).ok_or_else(|| {
                node.error(format!("mac=\"{m}\": expected a unicast aa:bb:cc:dd:ee:ff"))
            })?,
        };
        let d = Limits::default();
        let limits = Limits {
            max_sockets: node.attr_or("max_sockets", d.max_sockets)?,
            tcp_rx_buf: node.attr_or("tcp_rx_buf", d.tcp_rx_buf)?,
            tcp_tx_buf: node.attr_or("tcp_tx_buf", d.tcp_tx_buf)?,
            udp_rx_buf: node.attr_or("udp_rx_buf", d.udp_rx_buf)?,
            udp_tx_buf: node.attr_or("udp_tx_buf", d.udp_tx_buf)?,
            udp_packets: node.attr_or("udp_packets", d.udp_packets)?,
            max_backlog: node.attr_or("max_backlog", d.max_backlog)?,
            ..d
        };
        if !(1..=65535).contains(&limits.max_sockets) {
            return Err(node.error("max_sockets must be 1..=65535".into()));
        }
        if limits.tcp_rx_buf < 1024 || limits.tcp_tx_buf < 1024 || limits.udp_packets == 0 {
            return Err(
                node.error("buffer sizes too small (tcp_*_buf ≥ 1024, udp_packets ≥ 1)".into())
            );
        }
        Ok(StackConfig {
            expect_rules: node.child("nftables").is_some(),
            spin: node.attr_or("spin", 64)?,
            yield_us: node.attr_or("yield_us", 200)?,
            cidr: Ipv4Cidr::new(addr, len),
            gateway,
            mac,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<StackConfig, ConfigError> {
        StackConfig::from_node(&ConfigNode::parse(xml).unwrap())
    }

    #[test]
    fn full_and_defaults() {
        let c =
            parse(r#"<config ip="10.77.0.10/24" gateway="10.77.0.1" max_sockets="8"/>"#).unwrap();
        assert_eq!(c.cidr.address(), Ipv4Address::new(10, 77, 0, 10));
        assert_eq!(c.cidr.prefix_len(), 24);
        assert_eq!(c.gateway, Some(Ipv4Address::new(10, 77, 0, 1)));
        assert_eq!(c.mac, EthernetAddress([2, 0x66, 0x6e, 77, 0, 10]));
        assert_eq!(c.limits.max_sockets, 8);
        let c = parse(r#"<config ip="10.0.0.2" mac="02:00:00:00:00:09"/>"#).unwrap();
        assert_eq!(c.mac, EthernetAddress([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn errors_name_the_attribute() {
        for (xml, what) in [
            (r#"<config/>"#, "ip"),
            (r#"<config ip="10.0.0.300/24"/>"#, "ip="),
            (r#"<config ip="10.0.0.3/40"/>"#, "prefix"),
            (r#"<config ip="10.0.0.3" gateway="x"/>"#, "gateway"),
            (r#"<config ip="10.0.0.3" mac="01:00:00:00:00:01"/>"#, "mac"),
            (r#"<config ip="10.0.0.3" max_sockets="0"/>"#, "max_sockets"),
            (r#"<config ip="10.0.0.3" tcp_rx_buf="lots"/>"#, "tcp_rx_buf"),
        ] {
            let e = parse(xml).unwrap_err();
            assert!(e.to_string().contains(what), "{xml}: {e}");
        }
    }
}
