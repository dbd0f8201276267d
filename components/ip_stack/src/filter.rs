//! The stack's packet filter: `nft_filter` at the input and output hooks.
//!
//! `input` runs on every received frame that passed classification, before
//! smoltcp delivers it to a socket (the IP chains see the packet, `ether`
//! fields come from the received frame); `output` on every IP packet
//! smoltcp built, before it is queued on the NIC channel (ARP is not
//! filtered, as in the kernel). Until a ruleset is loaded (`nft load`
//! from init, which sends the run script's rule file before any other
//! request), both hooks are a single branch.
//!
//! A `reject` at input drops the packet and leaves the reply
//! (`nft_filter::reject::build_reply`: ICMP error or TCP RST, addressed back
//! to the sender) in [`Filter::take_reply`] for the device to send; at
//! output a reject is a drop.

use std::fmt::Write as _;

use nft_filter::{Hook, IfName, LinkType, PacketMeta};

/// A filter's decision on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// Conntrack capacity (flows), allocated once at start.
const CT_CAPACITY: usize = 16384;

/// The filter slot of the stack.
pub struct Filter {
    nft: nft_filter::Filter,
    /// A ruleset is loaded: the hooks evaluate.
    active: bool,
    /// The stack's clock (ns since it started), set once per poll round:
    /// conntrack timeouts and `limit` need no finer grain than a round, and
    /// reading the clock per packet was 2–3 % of a busy stack.
    now: u64,
    meta_in: PacketMeta,
    meta_out: PacketMeta,
    reply: Box<[u8]>,
    reply_len: usize,
    pub rejects_sent: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            nft: nft_filter::Filter::new(CT_CAPACITY),
            active: false,
            now: 0,
            meta_in: PacketMeta {
                iif: IfName::new("nic"),
                oif: None,
                mark: 0,
            },
            meta_out: PacketMeta {
                iif: None,
                oif: IfName::new("nic"),
                mark: 0,
            },
            reply: vec![0; 1514].into_boxed_slice(),
            reply_len: 0,
            rejects_sent: 0,
        }
    }
}

impl Filter {
    /// Sets the filter's clock (call once per poll round).
    #[inline]
    pub fn set_clock(&mut self, now_ns: u64) {
        self.now = now_ns;
    }

    /// Input hook: `frame` is a whole Ethernet frame addressed to us.
    #[inline]
    pub fn input(&mut self, frame: &[u8]) -> Verdict {
        if !self.active {
            return Verdict::Accept;
        }
        let now = self.now;
        match self
            .nft
            .evaluate(Hook::Input, LinkType::Ethernet, frame, &self.meta_in, now)
        {
            nft_filter::Verdict::Accept => Verdict::Accept,
            nft_filter::Verdict::Drop => Verdict::Drop,
            nft_filter::Verdict::Reject(with) => {
                if let Some(n) = nft_filter::reject::build_reply(
                    frame,
                    LinkType::Ethernet,
                    with,
                    &mut self.reply,
                ) {
                    self.reply_len = n;
                }
                Verdict::Drop
            }
        }
    }

    /// Output hook: `frame` is a whole Ethernet frame about to be sent.
    #[inline]
    pub fn output(&mut self, frame: &[u8]) -> Verdict {
        if !self.active || frame.len() < 14 || frame[12..14] == [0x08, 0x06] {
            return Verdict::Accept;
        }
        let now = self.now;
        match self.nft.evaluate(
            Hook::Output,
            LinkType::Ip,
            &frame[14..],
            &self.meta_out,
            now,
        ) {
            nft_filter::Verdict::Accept => Verdict::Accept,
            _ => Verdict::Drop,
        }
    }

    /// Generation of the loaded ruleset (0: none was ever loaded).
    pub fn generation(&self) -> u64 {
        self.nft.generation()
    }

    /// The reject reply built by the last `input`, if any (then cleared).
    pub fn take_reply(&mut self) -> Option<&[u8]> {
        let n = std::mem::take(&mut self.reply_len);
        (n > 0).then(|| &self.reply[..n])
    }

    /// For an `nft` request that changes the ruleset (`load` + body, `flush
    /// ruleset`, or one nft command): the parse-and-compile job, to run off
    /// the data path ([`Filter::finish_build`] installs its result). `None`
    /// for the requests answered at once (`list …`, errors).
    pub fn build_job(&self, args: &[String], body: &str) -> Option<nft_filter::BuildJob> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nft.request_job(&words, body)
    }

    /// Installs what a [`build_job`](Self::build_job) produced (between
    /// batches) and gives the reply for init.
    pub fn finish_build(
        &mut self,
        built: Result<std::sync::Arc<nft_filter::Ruleset>, nft_filter::Error>,
    ) -> String {
        match built {
            Ok(rs) => {
                self.nft.install(rs);
                self.active = !self.nft.ruleset().tables().is_empty();
                "ok".into()
            }
            Err(e) => format!("error\n{e}"),
        }
    }

    /// The `nft` control verb (see docs/INTERNALS.md): `load` + body,
    /// `list ruleset`, `list counters`, `flush ruleset`, or one nft command.
    /// Everything in this thread (used before any packet moves).
    pub fn control(&mut self, args: &[String], body: &str) -> String {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = match words.as_slice() {
            ["load"] => self.nft.replace(body).map(|_| String::new()),
            ["list", "ruleset"] => return format!("ok\n{}", self.nft.list_ruleset()),
            ["list", "counters"] => return format!("ok\n{}", self.nft.list_counters()),
            ["flush", "ruleset"] => self.nft.replace("").map(|_| String::new()),
            [] => return "error\nnft: missing subcommand".into(),
            _ => self.nft.apply(&words.join(" ")).map(|_| String::new()),
        };
        match result {
            Ok(_) => {
                self.active = !self.nft.ruleset().tables().is_empty();
                "ok".into()
            }
            Err(e) => format!("error\n{e}"),
        }
    }

    /// Lines for `stats`.
    pub fn stats(&self, out: &mut String) {
        let c = self.nft.conntrack_stats();
        let _ = writeln!(out, "filter_active {}", self.active as u8);
        let _ = writeln!(out, "filter_generation {}", self.nft.generation());
        let _ = writeln!(out, "filter_rejects_sent {}", self.rejects_sent);
        let _ = writeln!(out, "conntrack {c:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&5000u16.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..40].copy_from_slice(&8u16.to_be_bytes());
        f
    }

    #[test]
    fn inactive_until_loaded_then_drops_and_rejects() {
        let mut f = Filter::default();
        assert_eq!(f.input(&udp_frame(7)), Verdict::Accept);
        let r = f.control(
            &["load".into()],
            "table inet t {\n chain input { type filter hook input priority 0; policy accept;\n  udp dport 7 drop\n  udp dport 9 reject\n }\n}\n",
        );
        assert_eq!(r, "ok");
        assert_eq!(f.input(&udp_frame(7)), Verdict::Drop);
        assert!(f.take_reply().is_none());
        assert_eq!(f.input(&udp_frame(8)), Verdict::Accept);
        assert_eq!(f.input(&udp_frame(9)), Verdict::Drop);
        assert!(f.take_reply().is_some(), "reject builds an ICMP reply");
        assert!(f
            .control(&["list".into(), "ruleset".into()], "")
            .contains("dport 7"));
        assert_eq!(f.control(&["flush".into(), "ruleset".into()], ""), "ok");
        assert_eq!(f.input(&udp_frame(7)), Verdict::Accept);
    }

    #[test]
    fn the_benchmark_ruleset_loads() {
        let mut f = Filter::default();
        let text = include_str!("../bench_rules.nft");
        assert_eq!(f.control(&["load".into()], text), "ok");
        assert!(f.active);
    }

    #[test]
    fn bad_ruleset_changes_nothing_and_says_where() {
        let mut f = Filter::default();
        let r = f.control(&["load".into()], "table inet t {\n chain c { bogus }\n}\n");
        assert!(r.starts_with("error\n2:"), "{r}");
        assert_eq!(f.input(&udp_frame(7)), Verdict::Accept);
    }
}
