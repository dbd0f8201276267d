//! Input classification: every received frame is checked once, here, before
//! smoltcp sees it, so that each frame the stack drops is counted under a
//! name (`stats` control verb) instead of vanishing inside the protocol
//! engine.
//!
//! The checks are the ones smoltcp would make (lengths, checksums,
//! addresses); since they are done here, the device tells smoltcp not to
//! verify received checksums again. Frames for a port without a socket are
//! counted but still delivered, so smoltcp answers them (TCP RST, ICMP port
//! unreachable) the way a kernel would.

#[cfg(feature = "tcp")]
use smoltcp::wire::TcpPacket;
#[cfg(any(feature = "udp", test))]
use smoltcp::wire::UdpPacket;
use smoltcp::wire::{
    ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet,
};

/// Why a frame was dropped (or, for `*NoSocket`, answered with an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    /// Shorter than an Ethernet header.
    EthRunt,
    /// Destination MAC is neither ours, broadcast nor multicast.
    EthNotForUs,
    /// An EtherType the stack does not speak (IPv6 without the feature, …).
    EthUnknownType,
    /// Truncated or inconsistent ARP packet.
    ArpMalformed,
    /// Bad IPv4 header: version, lengths, header checksum.
    Ipv4Malformed,
    /// IPv4 fragment (reassembly is not compiled in).
    Ipv4Fragment,
    /// IPv4 destination is not our address nor a broadcast.
    Ipv4NotForUs,
    /// An IP protocol whose support is not compiled in.
    IpUnknownProto,
    /// Truncated UDP header, bad length or checksum.
    UdpMalformed,
    /// UDP to a port without a socket (smoltcp answers port unreachable).
    UdpNoSocket,
    /// Truncated TCP header, bad data offset or checksum.
    TcpMalformed,
    /// TCP to a port without a listener or connection (answered by RST).
    TcpNoSocket,
    /// Bad ICMP length or checksum.
    IcmpMalformed,
    /// Dropped by the input filter hook.
    FilterInput,
    /// Dropped by the output filter hook.
    FilterOutput,
    /// A frame smoltcp built could not be queued: the NIC channel was full.
    TxRingFull,
}

/// Number of [`Reason`]s.
pub const REASONS: usize = Reason::TxRingFull as usize + 1;

impl Reason {
    /// All reasons in counter order.
    pub const ALL: [Reason; REASONS] = [
        Reason::EthRunt,
        Reason::EthNotForUs,
        Reason::EthUnknownType,
        Reason::ArpMalformed,
        Reason::Ipv4Malformed,
        Reason::Ipv4Fragment,
        Reason::Ipv4NotForUs,
        Reason::IpUnknownProto,
        Reason::UdpMalformed,
        Reason::UdpNoSocket,
        Reason::TcpMalformed,
        Reason::TcpNoSocket,
        Reason::IcmpMalformed,
        Reason::FilterInput,
        Reason::FilterOutput,
        Reason::TxRingFull,
    ];

    /// The counter's name in `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::EthRunt => "drop_eth_runt",
            Reason::EthNotForUs => "drop_eth_not_for_us",
            Reason::EthUnknownType => "drop_eth_unknown_type",
            Reason::ArpMalformed => "drop_arp_malformed",
            Reason::Ipv4Malformed => "drop_ipv4_malformed",
            Reason::Ipv4Fragment => "drop_ipv4_fragment",
            Reason::Ipv4NotForUs => "drop_ipv4_not_for_us",
            Reason::IpUnknownProto => "drop_ip_unknown_proto",
            Reason::UdpMalformed => "drop_udp_malformed",
            Reason::UdpNoSocket => "drop_udp_no_socket",
            Reason::TcpMalformed => "drop_tcp_malformed",
            Reason::TcpNoSocket => "drop_tcp_no_socket",
            Reason::IcmpMalformed => "drop_icmp_malformed",
            Reason::FilterInput => "drop_filter_input",
            Reason::FilterOutput => "drop_filter_output",
            Reason::TxRingFull => "drop_tx_ring_full",
        }
    }
}

/// Ports that have a socket, as bitmaps (8 KiB each), kept up to date by
/// the socket service and read here per frame.
pub struct Ports {
    udp: Box<[u64; 1024]>,
    tcp: Box<[u64; 1024]>,
    tcp_count: Box<[u16; 65536]>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            udp: Box::new([0; 1024]),
            tcp: Box::new([0; 1024]),
            tcp_count: vec![0u16; 65536]
                .into_boxed_slice()
                .try_into()
                .expect("65536"),
        }
    }
}

impl Ports {
    pub fn udp(&self, port: u16) -> bool {
        self.udp[port as usize / 64] & (1 << (port % 64)) != 0
    }
    #[cfg_attr(not(feature = "udp"), allow(dead_code))]
    pub fn set_udp(&mut self, port: u16, on: bool) {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        if on {
            self.udp[w] |= b
        } else {
            self.udp[w] &= !b
        }
    }
    pub fn tcp(&self, port: u16) -> bool {
        self.tcp[port as usize / 64] & (1 << (port % 64)) != 0
    }
    /// TCP ports are shared (a listener's sockets, connections on an
    /// ephemeral port): counted references.
    pub fn tcp_ref(&mut self, port: u16, add: bool) {
        let c = &mut self.tcp_count[port as usize];
        *c = if add {
            c.saturating_add(1)
        } else {
            c.saturating_sub(1)
        };
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        if *c > 0 {
            self.tcp[w] |= b
        } else {
            self.tcp[w] &= !b
        }
    }
}

/// What to do with a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand to smoltcp.
    Deliver,
    /// Hand to smoltcp (it answers with an error) and count the reason.
    DeliverCounted(Reason),
    /// Drop and count.
    Drop(Reason),
}

/// Our addresses, as the classifier needs them.
pub struct Local {
    pub mac: EthernetAddress,
    pub ip: Ipv4Address,
    pub broadcast: Ipv4Address,
}

/// Classifies one Ethernet frame. Never panics, whatever the bytes.
pub fn classify(frame: &[u8], local: &Local, ports: &Ports) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Verdict::Drop(Reason::EthRunt);
    };
    let dst = eth.dst_addr();
    if dst != local.mac && !dst.is_broadcast() && !dst.is_multicast() {
        return Verdict::Drop(Reason::EthNotForUs);
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => match ArpPacket::new_checked(eth.payload()) {
            Ok(arp) if arp.hardware_len() == 6 && arp.protocol_len() == 4 => Verdict::Deliver,
            _ => Verdict::Drop(Reason::ArpMalformed),
        },
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload(), local, ports),
        #[cfg(feature = "ipv6")]
        EthernetProtocol::Ipv6 => Verdict::Deliver,
        _ => Verdict::Drop(Reason::EthUnknownType),
    }
}

fn classify_ipv4(packet: &[u8], local: &Local, ports: &Ports) -> Verdict {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return Verdict::Drop(Reason::Ipv4Malformed);
    };
    if ip.version() != 4 || !ip.verify_checksum() {
        return Verdict::Drop(Reason::Ipv4Malformed);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Verdict::Drop(Reason::Ipv4Fragment);
    }
    let dst = ip.dst_addr();
    if dst != local.ip && dst != local.broadcast && !dst.is_broadcast() && !dst.is_multicast() {
        return Verdict::Drop(Reason::Ipv4NotForUs);
    }
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(dst));
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Icmp => {
            let ok = smoltcp::wire::Icmpv4Packet::new_checked(payload)
                .map(|p| p.verify_checksum())
                .unwrap_or(false);
            if ok {
                Verdict::Deliver
            } else {
                Verdict::Drop(Reason::IcmpMalformed)
            }
        }
        #[cfg(feature = "udp")]
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Verdict::Drop(Reason::UdpMalformed);
            };
            if !udp.verify_checksum(&src, &dst) {
                return Verdict::Drop(Reason::UdpMalformed);
            }
            if ports.udp(udp.dst_port()) {
                Verdict::Deliver
            } else {
                Verdict::DeliverCounted(Reason::UdpNoSocket)
            }
        }
        #[cfg(feature = "tcp")]
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Verdict::Drop(Reason::TcpMalformed);
            };
            if !tcp.verify_checksum(&src, &dst) {
                return Verdict::Drop(Reason::TcpMalformed);
            }
            if ports.tcp(tcp.dst_port()) {
                Verdict::Deliver
            } else {
                Verdict::DeliverCounted(Reason::TcpNoSocket)
            }
        }
        _ => {
            let _ = (src, dst);
            Verdict::Drop(Reason::IpUnknownProto)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x66, 0x6e, 0, 0, 10];

    fn local() -> Local {
        Local {
            mac: EthernetAddress(MAC),
            ip: Ipv4Address::new(10, 77, 0, 10),
            broadcast: Ipv4Address::new(10, 77, 0, 255),
        }
    }

    /// An Ethernet + IPv4 + UDP frame 10.77.0.1:5000 → 10.77.0.10:7 "hi".
    fn udp_frame() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 2];
        f[0..6].copy_from_slice(&MAC);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(30);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_src_addr(Ipv4Address::new(10, 77, 0, 1));
            ip.set_dst_addr(Ipv4Address::new(10, 77, 0, 10));
            ip.clear_flags();
            ip.fill_checksum();
        }
        {
            let mut udp = UdpPacket::new_unchecked(&mut f[34..]);
            udp.set_src_port(5000);
            udp.set_dst_port(7);
            udp.set_len(10);
            udp.payload_mut().copy_from_slice(b"hi");
            udp.fill_checksum(&IpAddress::v4(10, 77, 0, 1), &IpAddress::v4(10, 77, 0, 10));
        }
        f
    }

    #[test]
    fn good_udp_is_delivered_and_no_socket_counted() {
        let mut ports = Ports::default();
        let f = udp_frame();
        assert_eq!(
            classify(&f, &local(), &ports),
            Verdict::DeliverCounted(Reason::UdpNoSocket)
        );
        ports.set_udp(7, true);
        assert_eq!(classify(&f, &local(), &ports), Verdict::Deliver);
    }

    #[test]
    fn every_truncation_is_dropped_without_panic() {
        let mut ports = Ports::default();
        ports.set_udp(7, true);
        let f = udp_frame();
        for n in 0..f.len() {
            let v = classify(&f[..n], &local(), &ports);
            assert!(matches!(v, Verdict::Drop(_)), "{n}: {v:?}");
        }
    }

    #[test]
    fn corruption_is_named() {
        let ports = Ports::default();
        let mut f = udp_frame();
        f[0] = 0x04;
        assert_eq!(
            classify(&f, &local(), &ports),
            Verdict::Drop(Reason::EthNotForUs)
        );
        let mut f = udp_frame();
        f[14 + 8] ^= 1; // TTL: header checksum now wrong
        assert_eq!(
            classify(&f, &local(), &ports),
            Verdict::Drop(Reason::Ipv4Malformed)
        );
        let mut f = udp_frame();
        f[43] ^= 0xff; // payload: UDP checksum now wrong
        assert_eq!(
            classify(&f, &local(), &ports),
            Verdict::Drop(Reason::UdpMalformed)
        );
        let mut f = udp_frame();
        f[12] = 0x99;
        assert_eq!(
            classify(&f, &local(), &ports),
            Verdict::Drop(Reason::EthUnknownType)
        );
    }

    #[test]
    fn tcp_port_refcount() {
        let mut p = Ports::default();
        p.tcp_ref(80, true);
        p.tcp_ref(80, true);
        p.tcp_ref(80, false);
        assert!(p.tcp(80));
        p.tcp_ref(80, false);
        assert!(!p.tcp(80));
    }
}
