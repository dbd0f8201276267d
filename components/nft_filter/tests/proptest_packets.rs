//! Property tests on the data path: no packet, however malformed, makes
//! the evaluator, the tracker or the reply builder panic, with a ruleset
//! that touches every field.

use nft_filter::reject::{build_reply, MAX_REPLY};
use nft_filter::{Filter, Hook, IfName, LinkType, PacketMeta, RejectWith};
use proptest::prelude::*;

const RULES: &str = "table inet t {
	chain i {
		type filter hook input priority 0; policy accept;
		ct state established,related counter
		ct direction reply counter
		meta l4proto { tcp, udp } meta length 1-100 counter
		meta nfproto ipv4 ip saddr 10.0.0.0/8 ip daddr != 1.2.3.4 ip protocol tcp ip length > 10 ip ttl < 200 counter
		ip6 saddr fd00::/8 ip6 daddr ::1 ip6 nexthdr udp counter
		tcp sport 1-1000 tcp dport != 22 tcp flags & (syn | ack) == syn counter
		udp sport 53 udp dport { 1, 2, 3 } udp length 8 counter
		icmp type echo-request icmp code 0 counter
		ether saddr 02:00:00:00:00:01 ether daddr 02:00:00:00:00:02 counter
		ether type ip6 counter
		iifname \"a\" oifname != \"b\" meta mark 0x00000001 counter
		tcp dport vmap { 1 : accept, 2 : drop }
		limit rate 5/second counter
		udp dport 9 reject
	}
	chain o {
		type filter hook output priority 0; policy accept;
		counter
	}
}
table bridge b {
	chain f {
		type filter hook forward priority 0; policy accept;
		ether type ip ip saddr 10.0.0.1 tcp dport 80 counter drop
		ether saddr 02:00:00:00:00:01 counter
	}
}
";

/// Mostly-plausible packets: real headers with random fields and lengths.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120),
        (
            prop::collection::vec(any::<u8>(), 0..100),
            any::<u8>(),
            0u8..=15
        )
            .prop_map(|(mut b, proto, ihl)| {
                let mut p = vec![
                    0x40 | ihl,
                    0,
                    0,
                    (20 + b.len()) as u8,
                    0,
                    0,
                    0,
                    0,
                    64,
                    proto,
                    0,
                    0,
                    10,
                    0,
                    0,
                    1,
                    10,
                    0,
                    0,
                    2,
                ];
                p.append(&mut b);
                p
            }),
        (
            prop::collection::vec(any::<u8>(), 0..100),
            any::<u8>(),
            any::<u16>()
        )
            .prop_map(|(mut b, nh, plen)| {
                let mut p = vec![0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, nh, 64];
                p.extend_from_slice(&[0xfd; 16]);
                p.extend_from_slice(&[0; 16]);
                p.append(&mut b);
                p
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn no_packet_panics(ip in packet(), eth_type in prop::sample::select(vec![0x0800u16, 0x86dd, 0x0806, 0])) {
        let mut f = Filter::new(256);
        f.replace(RULES).unwrap();
        let meta = PacketMeta { iif: IfName::new("a"), oif: IfName::new("b"), mark: 1 };
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        frame.extend_from_slice(&eth_type.to_be_bytes());
        frame.extend_from_slice(&ip);
        let mut out = [0u8; MAX_REPLY];
        for (i, hook) in [Hook::Input, Hook::Output, Hook::Forward].into_iter().enumerate() {
            f.evaluate(hook, LinkType::Ip, &ip, &meta, i as u64);
            f.evaluate(hook, LinkType::Ethernet, &frame, &meta, i as u64);
        }
        for w in [RejectWith::Default, RejectWith::TcpReset, RejectWith::Icmp(1), RejectWith::Icmpv6(4), RejectWith::Icmpx(2)] {
            let _ = build_reply(&ip, LinkType::Ip, w, &mut out);
            let _ = build_reply(&frame, LinkType::Ethernet, w, &mut out);
            let _ = build_reply(&frame, LinkType::Ethernet, w, &mut out[..70]);
        }
    }
}
