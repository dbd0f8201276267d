//! The endpoint's protocol logic: one IPv4 address on one Ethernet port.
//!
//! [`Responder::handle`] takes one received frame and either writes the
//! reply (ARP reply, ICMP echo reply) into a caller-supplied buffer or names
//! the reason the frame was dropped. [`Responder::ping_tick`] writes the next
//! outgoing probe when the endpoint pings a peer: an ARP request until the
//! peer's MAC is known, then one ICMP echo request per tick. No allocation:
//! frames are parsed and emitted in place with `smoltcp::wire`.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv4Repr,
};

/// ICMP identifier of the endpoint's own echo requests ("FN").
pub const PING_IDENT: u16 = 0x464e;
/// Payload of the endpoint's own echo requests.
const PING_DATA: &[u8; 32] = b"fragnet frame_endpoint ping data";

/// Why a received frame produced no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    MalformedEthernet,
    /// Destination MAC is neither ours nor broadcast.
    NotOurMac,
    /// EtherType other than ARP and IPv4.
    UnsupportedEthertype,
    /// ARP packet too short or not Ethernet/IPv4.
    MalformedArp,
    /// ARP for another IPv4 address.
    ArpNotForUs,
    /// ARP operation other than request and reply.
    UnsupportedArpOperation,
    /// IPv4 header invalid (length, version, checksum) or a fragment.
    MalformedIpv4,
    /// IPv4 destination is not our address.
    Ipv4NotForUs,
    /// IP protocol other than ICMP.
    UnsupportedIpProtocol,
    /// ICMP message too short or bad checksum.
    MalformedIcmp,
    /// ICMP message other than echo request/reply.
    UnsupportedIcmpType,
    /// An echo reply that does not answer one of our requests.
    UnexpectedEchoReply,
    /// The reply would not fit the transmit buffer.
    ReplyTooLarge,
    /// The channel had no free transmit buffer for the reply.
    NoTxBuffer,
}

impl DropReason {
    /// Every reason, in the order `stats` reports them.
    pub const ALL: [DropReason; 14] = [
        DropReason::MalformedEthernet,
        DropReason::NotOurMac,
        DropReason::UnsupportedEthertype,
        DropReason::MalformedArp,
        DropReason::ArpNotForUs,
        DropReason::UnsupportedArpOperation,
        DropReason::MalformedIpv4,
        DropReason::Ipv4NotForUs,
        DropReason::UnsupportedIpProtocol,
        DropReason::MalformedIcmp,
        DropReason::UnsupportedIcmpType,
        DropReason::UnexpectedEchoReply,
        DropReason::ReplyTooLarge,
        DropReason::NoTxBuffer,
    ];

    /// The counter name (`drop_<name>` in `stats`).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::MalformedEthernet => "malformed_ethernet",
            DropReason::NotOurMac => "not_our_mac",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::MalformedArp => "malformed_arp",
            DropReason::ArpNotForUs => "arp_not_for_us",
            DropReason::UnsupportedArpOperation => "unsupported_arp_operation",
            DropReason::MalformedIpv4 => "malformed_ipv4",
            DropReason::Ipv4NotForUs => "ipv4_not_for_us",
            DropReason::UnsupportedIpProtocol => "unsupported_ip_protocol",
            DropReason::MalformedIcmp => "malformed_icmp",
            DropReason::UnsupportedIcmpType => "unsupported_icmp_type",
            DropReason::UnexpectedEchoReply => "unexpected_echo_reply",
            DropReason::ReplyTooLarge => "reply_too_large",
            DropReason::NoTxBuffer => "no_tx_buffer",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// What the endpoint counted so far.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub arp_requests_answered: u64,
    pub arp_replies_received: u64,
    pub echo_requests_answered: u64,
    pub ping_arp_requests_sent: u64,
    pub ping_requests_sent: u64,
    pub ping_replies_received: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// Count one dropped frame.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Frames dropped for `reason`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// `key value` lines, as the `stats` verb reports them.
    pub fn report(&self) -> String {
        let Counters {
            rx_frames,
            tx_frames,
            arp_requests_answered,
            arp_replies_received,
            echo_requests_answered,
            ping_arp_requests_sent,
            ping_requests_sent,
            ping_replies_received,
            drops,
        } = self;
        let mut s = format!(
            "rx_frames {rx_frames}\ntx_frames {tx_frames}\n\
             arp_requests_answered {arp_requests_answered}\n\
             arp_replies_received {arp_replies_received}\n\
             echo_requests_answered {echo_requests_answered}\n\
             ping_arp_requests_sent {ping_arp_requests_sent}\n\
             ping_requests_sent {ping_requests_sent}\n\
             ping_replies_received {ping_replies_received}\n"
        );
        for (reason, n) in DropReason::ALL.iter().zip(drops) {
            s.push_str(&format!("drop_{} {}\n", reason.name(), n));
        }
        s
    }
}

/// The peer the endpoint pings, and what it knows about it.
#[derive(Debug, Clone)]
struct Pinger {
    target: Ipv4Address,
    target_mac: Option<EthernetAddress>,
    next_seq: u16,
}

/// One IPv4 address on one Ethernet port.
#[derive(Debug, Clone)]
pub struct Responder {
    mac: EthernetAddress,
    ip: Ipv4Address,
    pinger: Option<Pinger>,
    pub counters: Counters,
}

impl Responder {
    /// An endpoint owning `ip` at `mac`, pinging `ping` if given.
    pub fn new(mac: EthernetAddress, ip: Ipv4Address, ping: Option<Ipv4Address>) -> Self {
        Responder {
            mac,
            ip,
            pinger: ping.map(|target| Pinger {
                target,
                target_mac: None,
                next_seq: 0,
            }),
            counters: Counters::default(),
        }
    }

    /// Handle one received frame; `Ok(Some(n))` means a reply of `n`
    /// bytes was written to `out`. Counts the frame and any drop.
    pub fn handle(&mut self, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        self.counters.rx_frames += 1;
        match self.handle_inner(frame, out) {
            Ok(reply) => reply,
            Err(reason) => {
                self.counters.drop(reason);
                None
            }
        }
    }

    fn handle_inner(&mut self, frame: &[u8], out: &mut [u8]) -> Result<Option<usize>, DropReason> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::MalformedEthernet)?;
        let dst = eth.dst_addr();
        if dst != self.mac && !dst.is_broadcast() {
            return Err(DropReason::NotOurMac);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(eth.payload(), out),
            EthernetProtocol::Ipv4 => self.handle_ipv4(eth.src_addr(), eth.payload(), out),
            _ => Err(DropReason::UnsupportedEthertype),
        }
    }

    fn handle_arp(&mut self, payload: &[u8], out: &mut [u8]) -> Result<Option<usize>, DropReason> {
        let packet = ArpPacket::new_checked(payload).map_err(|_| DropReason::MalformedArp)?;
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = ArpRepr::parse(&packet).map_err(|_| DropReason::MalformedArp)?
        else {
            return Err(DropReason::MalformedArp);
        };
        if target_protocol_addr != self.ip {
            return Err(DropReason::ArpNotForUs);
        }
        if let Some(p) = &mut self.pinger {
            if source_protocol_addr == p.target && source_hardware_addr.is_unicast() {
                p.target_mac = Some(source_hardware_addr);
            }
        }
        match operation {
            ArpOperation::Request => {
                let reply = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: self.mac,
                    source_protocol_addr: self.ip,
                    target_hardware_addr: source_hardware_addr,
                    target_protocol_addr: source_protocol_addr,
                };
                let n = self.emit_arp(source_hardware_addr, &reply, out)?;
                self.counters.arp_requests_answered += 1;
                Ok(Some(n))
            }
            ArpOperation::Reply => {
                self.counters.arp_replies_received += 1;
                Ok(None)
            }
            _ => Err(DropReason::UnsupportedArpOperation),
        }
    }

    fn handle_ipv4(
        &mut self,
        src_mac: EthernetAddress,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Option<usize>, DropReason> {
        let caps = ChecksumCapabilities::default();
        let packet = Ipv4Packet::new_checked(payload).map_err(|_| DropReason::MalformedIpv4)?;
        let ip = Ipv4Repr::parse(&packet, &caps).map_err(|_| DropReason::MalformedIpv4)?;
        if ip.dst_addr != self.ip {
            return Err(DropReason::Ipv4NotForUs);
        }
        if ip.next_header != IpProtocol::Icmp {
            return Err(DropReason::UnsupportedIpProtocol);
        }
        let icmp =
            Icmpv4Packet::new_checked(packet.payload()).map_err(|_| DropReason::MalformedIcmp)?;
        if !matches!(
            icmp.msg_type(),
            Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply
        ) {
            return Err(DropReason::UnsupportedIcmpType);
        }
        match Icmpv4Repr::parse(&icmp, &caps).map_err(|_| DropReason::MalformedIcmp)? {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                let n = self.emit_icmp(src_mac, ip.src_addr, &reply, out)?;
                self.counters.echo_requests_answered += 1;
                Ok(Some(n))
            }
            Icmpv4Repr::EchoReply { ident, seq_no, .. } => {
                let ours = self.pinger.as_ref().is_some_and(|p| {
                    p.target == ip.src_addr
                        && ident == PING_IDENT
                        && seq_no < p.next_seq
                        && p.next_seq - seq_no <= 64
                });
                if !ours {
                    return Err(DropReason::UnexpectedEchoReply);
                }
                self.counters.ping_replies_received += 1;
                Ok(None)
            }
            _ => Err(DropReason::UnsupportedIcmpType),
        }
    }

    /// Write the next probe to the pinged peer into `out`: an ARP request
    /// while its MAC is unknown, else an echo request. `None` when this
    /// endpoint pings nobody.
    pub fn ping_tick(&mut self, out: &mut [u8]) -> Option<usize> {
        let pinger = self.pinger.as_mut()?;
        let target = pinger.target;
        match pinger.target_mac {
            None => {
                let request = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr: self.mac,
                    source_protocol_addr: self.ip,
                    target_hardware_addr: EthernetAddress([0; 6]),
                    target_protocol_addr: target,
                };
                let n = self
                    .emit_arp(EthernetAddress::BROADCAST, &request, out)
                    .ok()?;
                self.counters.ping_arp_requests_sent += 1;
                Some(n)
            }
            Some(mac) => {
                let seq_no = pinger.next_seq;
                pinger.next_seq = pinger.next_seq.wrapping_add(1);
                let request = Icmpv4Repr::EchoRequest {
                    ident: PING_IDENT,
                    seq_no,
                    data: PING_DATA,
                };
                let n = self.emit_icmp(mac, target, &request, out).ok()?;
                self.counters.ping_requests_sent += 1;
                Some(n)
            }
        }
    }

    fn emit_arp(
        &self,
        dst: EthernetAddress,
        arp: &ArpRepr,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: dst,
            ethertype: EthernetProtocol::Arp,
        };
        let len = eth.buffer_len() + arp.buffer_len();
        let out = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
        let mut frame = EthernetFrame::new_unchecked(out);
        eth.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        Ok(len)
    }

    fn emit_icmp(
        &self,
        dst_mac: EthernetAddress,
        dst_ip: Ipv4Address,
        icmp: &Icmpv4Repr,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let caps = ChecksumCapabilities::default();
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        let ip = Ipv4Repr {
            src_addr: self.ip,
            dst_addr: dst_ip,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let len = eth.buffer_len() + ip.buffer_len() + icmp.buffer_len();
        let out = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
        let mut frame = EthernetFrame::new_unchecked(out);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &caps);
        icmp.emit(
            &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
            &caps,
        );
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x10]);
    const HOST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const OUR_IP: Ipv4Address = Ipv4Address::new(10, 77, 0, 10);
    const HOST_IP: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);

    /// ARP request "who has 10.77.0.10? tell 10.77.0.1" as Linux sends it
    /// (broadcast, padded to 60 bytes).
    const ARP_REQUEST: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08,
        0x06, // eth
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype ptype hlen plen op=request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 77, 0, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 77, 0, 10, // target
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
    ];

    /// ICMP echo request 10.77.0.1 -> 10.77.0.10, id 0x1234 seq 1, data "abcd".
    const ECHO_REQUEST: [u8; 46] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x10, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08,
        0x00, // eth
        0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x40, 0x00, 0x40, 0x01, 0x26, 0x38, // ip
        10, 77, 0, 1, 10, 77, 0, 10, // addrs
        0x08, 0x00, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd', // icmp
    ];

    fn responder() -> Responder {
        Responder::new(OUR_MAC, OUR_IP, None)
    }

    #[test]
    fn fixtures_are_valid() {
        // The echo request fixture carries correct checksums (checked by smoltcp).
        let eth = EthernetFrame::new_checked(&ECHO_REQUEST[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
    }

    #[test]
    fn answers_arp_request() {
        let mut r = responder();
        let mut out = [0u8; 1514];
        let n = r.handle(&ARP_REQUEST, &mut out).expect("reply");
        let expected: [u8; 42] = [
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 0x10, 0x08, 0x06, // eth
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // op=reply
            0x02, 0, 0, 0, 0, 0x10, 10, 77, 0, 10, // sender = us
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 77, 0, 1, // target = asker
        ];
        assert_eq!(&out[..n], &expected[..]);
        assert_eq!(r.counters.arp_requests_answered, 1);
    }

    #[test]
    fn answers_echo_request() {
        let mut r = responder();
        let mut out = [0u8; 1514];
        let n = r.handle(&ECHO_REQUEST, &mut out).expect("reply");
        let expected: [u8; 46] = [
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 0x10, 0x08, 0x00, // eth
            0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x26, 0x39, // ip
            10, 77, 0, 10, 10, 77, 0, 1, // addrs swapped
            0x00, 0x00, 0x29, 0x04, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd', // reply
        ];
        assert_eq!(&out[..n], &expected[..]);
        assert_eq!(r.counters.echo_requests_answered, 1);
    }

    #[test]
    fn drops_are_named() {
        let mut r = responder();
        let mut out = [0u8; 1514];
        // Too short for Ethernet.
        assert_eq!(r.handle(&ARP_REQUEST[..10], &mut out), None);
        assert_eq!(r.counters.drops(DropReason::MalformedEthernet), 1);
        // ARP for another address.
        let mut other = ARP_REQUEST;
        other[41] = 99;
        assert_eq!(r.handle(&other, &mut out), None);
        assert_eq!(r.counters.drops(DropReason::ArpNotForUs), 1);
        // Unicast to another MAC.
        let mut other = ECHO_REQUEST;
        other[5] = 0x11;
        assert_eq!(r.handle(&other, &mut out), None);
        assert_eq!(r.counters.drops(DropReason::NotOurMac), 1);
        // Corrupted IPv4 checksum.
        let mut bad = ECHO_REQUEST;
        bad[24] ^= 0xff;
        assert_eq!(r.handle(&bad, &mut out), None);
        assert_eq!(r.counters.drops(DropReason::MalformedIpv4), 1);
        // Corrupted ICMP checksum.
        let mut bad = ECHO_REQUEST;
        bad[36] ^= 0xff;
        assert_eq!(r.handle(&bad, &mut out), None);
        assert_eq!(r.counters.drops(DropReason::MalformedIcmp), 1);
        // IPv6 ethertype.
        let mut v6 = ECHO_REQUEST;
        v6[12] = 0x86;
        v6[13] = 0xdd;
        assert_eq!(r.handle(&v6, &mut out), None);
        assert_eq!(r.counters.drops(DropReason::UnsupportedEthertype), 1);
        // Reply buffer too small.
        assert_eq!(r.handle(&ECHO_REQUEST, &mut out[..20]), None);
        assert_eq!(r.counters.drops(DropReason::ReplyTooLarge), 1);
        assert_eq!(r.counters.rx_frames, 7);
        assert!(r.counters.report().contains("drop_arp_not_for_us 1\n"));
    }

    #[test]
    fn two_endpoints_ping_each_other() {
        let mut a = Responder::new(OUR_MAC, OUR_IP, Some(HOST_IP));
        let mut b = Responder::new(HOST_MAC, HOST_IP, None);
        let (mut fa, mut fb) = ([0u8; 1514], [0u8; 1514]);
        for _ in 0..3 {
            let n = a.ping_tick(&mut fa).expect("probe");
            if let Some(m) = b.handle(&fa[..n], &mut fb) {
                assert_eq!(a.handle(&fb[..m], &mut fa), None);
            }
        }
        // First tick resolves the MAC, the next two are answered echoes.
        assert_eq!(a.counters.ping_arp_requests_sent, 1);
        assert_eq!(a.counters.arp_replies_received, 1);
        assert_eq!(a.counters.ping_requests_sent, 2);
        assert_eq!(a.counters.ping_replies_received, 2);
        assert_eq!(b.counters.echo_requests_answered, 2);
        // A replayed reply with a sequence number never sent is refused.
        let n = a.ping_tick(&mut fa).unwrap();
        let m = b.handle(&fa[..n], &mut fb).unwrap();
        fb[m - 32 - 3] = 0xff; // seq_no high byte (checksum now wrong too)
        assert_eq!(a.handle(&fb[..m], &mut fa), None);
    }
}
