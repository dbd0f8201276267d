//! The endpoint's `<config ip="10.77.0.10/24" mac="02:…" ping="10.77.0.11"/>`.

use fragnet_host::ConfigNode;
use smoltcp::wire::{EthernetAddress, Ipv4Address};

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub ip: Ipv4Address,
    pub prefix_len: u8,
    pub mac: EthernetAddress,
    pub ping: Option<Ipv4Address>,
}

impl Config {
    /// Parse the `<config>` element; `name` (the component's name) derives
    /// the MAC when the attribute is absent. Errors name the attribute and
    /// its line and column.
    pub fn parse(xml: &str, name: &str) -> Result<Config, String> {
        let node = ConfigNode::parse(xml).map_err(|e| format!("<config>: {e}"))?;
        let at = |msg: String| node.error(msg).to_string();
        for (k, _) in &node.attrs {
            if !matches!(k.as_str(), "ip" | "mac" | "ping") {
                return Err(at(format!(
                    "<config>: unknown attribute '{k}' (known: ip, mac, ping)"
                )));
            }
        }
        let ip_attr = node.attr("ip").ok_or_else(|| {
            at("<config>: missing attribute 'ip' (e.g. ip=\"10.77.0.10/24\")".into())
        })?;
        let (ip, prefix_len) = parse_cidr(ip_attr).map_err(at)?;
        let mac = match node.attr("mac") {
            Some(m) => parse_mac(m).map_err(at)?,
            None => derive_mac(name),
        };
        let ping = match node.attr("ping") {
            Some(p) => Some(
                p.parse::<Ipv4Address>()
                    .map_err(|_| at(format!("<config ping=\"{p}\">: not an IPv4 address")))?,
            ),
            None => None,
        };
        Ok(Config {
            ip,
            prefix_len,
            mac,
            ping,
        })
    }
}

fn parse_cidr(s: &str) -> Result<(Ipv4Address, u8), String> {
    let bad =
        || format!("<config ip=\"{s}\">: expected an IPv4 address with prefix, e.g. 10.77.0.10/24");
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let ip = addr.parse::<Ipv4Address>().map_err(|_| bad())?;
    let prefix_len = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(bad)?;
    Ok((ip, prefix_len))
}

fn parse_mac(s: &str) -> Result<EthernetAddress, String> {
    let bad = || format!("<config mac=\"{s}\">: expected six hex bytes like 02:00:00:00:00:01");
    let mut bytes = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut bytes {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    let mac = EthernetAddress(bytes);
    if !mac.is_unicast() {
        return Err(format!("<config mac=\"{s}\">: must be a unicast address"));
    }
    Ok(mac)
}

/// A locally administered unicast MAC derived from the component name
/// (02:fe + 32-bit FNV-1a of the name).
pub fn derive_mac(name: &str) -> EthernetAddress {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let h = h.to_be_bytes();
    EthernetAddress([0x02, 0xfe, h[0], h[1], h[2], h[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_config() {
        let c = Config::parse(
            r#"<config ip="10.77.0.10/24" mac="02:00:00:00:00:0a" ping="10.77.0.11"/>"#,
            "ep",
        )
        .unwrap();
        assert_eq!(c.ip, Ipv4Address::new(10, 77, 0, 10));
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.mac, EthernetAddress([2, 0, 0, 0, 0, 10]));
        assert_eq!(c.ping, Some(Ipv4Address::new(10, 77, 0, 11)));
    }

    #[test]
    fn derives_mac_from_name() {
        let a = Config::parse(r#"<config ip="10.0.0.1/8"></config>"#, "a").unwrap();
        let b = Config::parse(r#"<config ip="10.0.0.1/8"/>"#, "b").unwrap();
        assert_ne!(a.mac, b.mac);
        assert!(a.mac.is_unicast() && a.mac.is_local());
    }

    #[test]
    fn rejects_bad_input() {
        for (xml, needle) in [
            (r#"<config/>"#, "missing attribute 'ip'"),
            (r#"<config ip="10.0.0.300/24"/>"#, "ip=\"10.0.0.300/24\""),
            (r#"<config ip="10.0.0.1/33"/>"#, "ip=\"10.0.0.1/33\""),
            (
                r#"<config ip="10.0.0.1/24" mac="01:00:00:00:00:01"/>"#,
                "unicast",
            ),
            (r#"<config ip="10.0.0.1/24" mac="02:00"/>"#, "six hex bytes"),
            (
                r#"<config ip="10.0.0.1/24" pong="1"/>"#,
                "unknown attribute 'pong'",
            ),
        ] {
            let err = Config::parse(xml, "x").unwrap_err();
            assert!(err.contains(needle), "{xml}: {err}");
        }
    }
}
