//! The switch's packet filter: `nft_filter` at the `bridge` family's
//! `forward` hook.
//!
//! [`Filter::forward`] is called once per frame and egress port (a flooded
//! frame is judged per port, as the kernel bridge does), after the MAC
//! lookup and before the copy, with `iifname`/`oifname` set to the port
//! names (the client's name for `nic:<client>`, `nic` for the uplink).
//! Until a ruleset is loaded it is a single branch. A `reject` drops the
//! frame and queues the reply (`nft_filter::reject::build_reply`: ICMP
//! error or TCP RST, addressed back to the sender) for the ingress port;
//! the forwarding round sends it after that port's batch. Rulesets arrive
//! by the `nft` control verb (see docs/INTERNALS.md) and are swapped in
//! between rounds.

use std::fmt::Write as _;
use std::time::Instant;

use nft_filter::{Hook, IfName, LinkType, PacketMeta};

use crate::mac_table::PortId;

/// The filter's decision for one frame on one egress port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the frame.
    Pass,
    /// Drop it (counted as `drop_filtered` on the egress port; a `reject`
    /// also queued its reply for the ingress port).
    Drop,
}

/// Conntrack capacity (flows), allocated once at start.
const CT_CAPACITY: usize = 16384;
/// Reject replies queued per ingress batch at most (the rest are counted
/// in `filter_rejects_dropped`).
const MAX_REPLIES: usize = 16;
/// Largest reply frame.
const REPLY_SIZE: usize = 1514;

/// The filter slot of the switch.
pub struct Filter {
    nft: nft_filter::Filter,
    /// A ruleset is loaded: the hook evaluates.
    active: bool,
    start: Instant,
    now_ns: u64,
    /// `iifname`/`oifname` of each port.
    names: Vec<Option<IfName>>,
    replies: Vec<Box<[u8]>>,
    reply_lens: [usize; MAX_REPLIES],
    queued: usize,
    rejects_sent: u64,
    rejects_dropped: u64,
    loads: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            nft: nft_filter::Filter::new(CT_CAPACITY),
            active: false,
            start: Instant::now(),
            now_ns: 0,
            names: Vec::new(),
            replies: (0..MAX_REPLIES)
                .map(|_| vec![0u8; REPLY_SIZE].into_boxed_slice())
                .collect(),
            reply_lens: [0; MAX_REPLIES],
            queued: 0,
            rejects_sent: 0,
            rejects_dropped: 0,
            loads: 0,
        }
    }
}

/// The interface name rules see for a port labelled `label`: the client
/// name of `nic:<client>`, `nic` for the uplink; cut to 15 bytes (IFNAMSIZ).
pub fn port_name(label: &str) -> Option<IfName> {
    let name = label.strip_prefix("nic:").unwrap_or(label);
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    IfName::new(&name[..end])
}

impl Filter {
    /// Names port `port` after its channel label.
    pub fn name_port(&mut self, port: PortId, label: &str) {
        if self.names.len() <= port {
            self.names.resize(port + 1, None);
        }
        self.names[port] = port_name(label);
    }

    /// Whether a ruleset is loaded.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// `nft load` requests handled so far (accepted or refused).
    pub fn loads(&self) -> u64 {
        self.loads
    }

    /// Reads the clock once per round (conntrack timeouts, limits).
    #[inline]
    pub fn tick(&mut self) {
        if self.active {
            self.now_ns = self.start.elapsed().as_nanos() as u64;
        }
    }

    /// The verdict for `frame` travelling from port `ingress` to `egress`.
    #[inline]
    pub fn forward(&mut self, frame: &[u8], ingress: PortId, egress: PortId) -> Verdict {
        if !self.active {
            return Verdict::Pass;
        }
        let meta = PacketMeta {
            iif: self.names.get(ingress).copied().flatten(),
            oif: self.names.get(egress).copied().flatten(),
            mark: 0,
        };
        match self
            .nft
            .evaluate(Hook::Forward, LinkType::Ethernet, frame, &meta, self.now_ns)
        {
            nft_filter::Verdict::Accept => Verdict::Pass,
            nft_filter::Verdict::Drop => Verdict::Drop,
            nft_filter::Verdict::Reject(with) => {
                if self.queued < MAX_REPLIES {
                    let buf = &mut self.replies[self.queued];
                    if let Some(n) =
                        nft_filter::reject::build_reply(frame, LinkType::Ethernet, with, buf)
                    {
                        self.reply_lens[self.queued] = n;
                        self.queued += 1;
                    }
                } else {
                    self.rejects_dropped += 1;
                }
                Verdict::Drop
            }
        }
    }

    /// Hands each queued reject reply to `send` (which returns whether it
    /// was sent) and empties the queue.
    pub fn drain_replies(&mut self, mut send: impl FnMut(&[u8]) -> bool) {
        for k in 0..self.queued {
            if send(&self.replies[k][..self.reply_lens[k]]) {
                self.rejects_sent += 1;
            } else {
                self.rejects_dropped += 1;
            }
        }
        self.queued = 0;
    }

    /// Whether reject replies wait to be sent.
    #[inline]
    pub fn has_replies(&self) -> bool {
        self.queued > 0
    }

    /// For an `nft` request that changes the ruleset: the parse-and-compile
    /// job, to run on a helper thread while frames keep moving
    /// ([`Filter::finish_build`] installs the result). `None` for requests
    /// answered at once.
    pub fn build_job(&self, args: &[String], body: &str) -> Option<nft_filter::BuildJob> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nft.request_job(&words, body)
    }

    /// Installs a finished build between two forwarding rounds; `load`:
    /// it was a `nft load` (counted in [`Filter::loads`]). The reply for
    /// init.
    pub fn finish_build(
        &mut self,
        built: Result<std::sync::Arc<nft_filter::Ruleset>, nft_filter::Error>,
        load: bool,
    ) -> String {
        if load {
            // Counted whether or not it built, as in `control`: a refused
            // ruleset also ends the wait for rules at start.
            self.loads += 1;
        }
        match built {
            Ok(rs) => {
                self.nft.install(rs);
                self.active = !self.nft.ruleset().tables().is_empty();
                self.tick();
                "ok".into()
            }
            Err(e) => format!("error\n{e}"),
        }
    }

    /// The `nft` control verb (see docs/INTERNALS.md): `load` + body,
    /// `list ruleset`, `list counters`, `flush ruleset`, or one nft command.
    pub fn control(&mut self, args: &[String], body: &str) -> String {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = match words.as_slice() {
            ["load"] => {
                self.loads += 1;
                self.nft.replace(body)
            }
            ["list", "ruleset"] => return format!("ok\n{}", self.nft.list_ruleset()),
            ["list", "counters"] => return format!("ok\n{}", self.nft.list_counters()),
            ["flush", "ruleset"] => self.nft.replace(""),
            [] => return "error\nnft: missing subcommand".into(),
            _ => self.nft.apply(&words.join(" ")),
        };
        match result {
            Ok(_) => {
                self.active = !self.nft.ruleset().tables().is_empty();
                self.tick();
                "ok".into()
            }
            Err(e) => format!("error\n{e}"),
        }
    }

    /// Lines for `stats`.
    pub fn report(&self, out: &mut String) {
        let c = self.nft.conntrack_stats();
        let _ = writeln!(out, "filter_active {}", u8::from(self.active));
        let _ = writeln!(out, "filter_generation {}", self.nft.generation());
        let _ = writeln!(out, "filter_rejects_sent {}", self.rejects_sent);
        let _ = writeln!(out, "filter_rejects_dropped {}", self.rejects_dropped);
        let _ = writeln!(out, "conntrack {c:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + ICMP echo request frame 10.0.0.1 -> 10.0.0.2.
    fn echo_frame() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[22] = 64;
        f[23] = 1;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34] = 8;
        f
    }

    fn load(f: &mut Filter, rules: &str) {
        let r = f.control(&["load".into()], rules);
        assert_eq!(r, "ok", "{r}");
    }

    #[test]
    fn port_names_follow_labels() {
        assert_eq!(port_name("nic:kv0_stack"), IfName::new("kv0_stack"));
        assert_eq!(port_name("nic"), IfName::new("nic"));
        assert_eq!(
            port_name("nic:a_very_long_client_name"),
            IfName::new("a_very_long_cli")
        );
    }

    #[test]
    fn passes_until_a_ruleset_is_loaded_then_matches_port_names() {
        let mut f = Filter::default();
        f.name_port(0, "nic");
        f.name_port(1, "nic:ep");
        f.name_port(2, "nic:other");
        assert_eq!(f.forward(&echo_frame(), 0, 1), Verdict::Pass);
        load(
            &mut f,
            "table bridge sw {\n chain fwd {\n  type filter hook forward priority 0; policy accept;\n  \
             oifname \"ep\" icmp type echo-request counter drop\n }\n}\n",
        );
        assert_eq!(f.forward(&echo_frame(), 0, 1), Verdict::Drop);
        assert_eq!(f.forward(&echo_frame(), 0, 2), Verdict::Pass);
        assert!(f
            .control(&["list".into(), "counters".into()], "")
            .contains("packets 1"));
        assert_eq!(f.control(&["flush".into(), "ruleset".into()], ""), "ok");
        assert!(!f.is_active());
        assert_eq!(f.forward(&echo_frame(), 0, 1), Verdict::Pass);
    }

    #[test]
    fn reject_queues_a_reply_to_the_sender() {
        let mut f = Filter::default();
        f.name_port(0, "nic:a");
        f.name_port(1, "nic:b");
        load(
            &mut f,
            "table bridge sw {\n chain fwd {\n  type filter hook forward priority 0;\n  \
             ip daddr 10.0.0.2 reject\n }\n}\n",
        );
        assert_eq!(f.forward(&echo_frame(), 0, 1), Verdict::Drop);
        assert!(f.has_replies());
        let mut sent = Vec::new();
        f.drain_replies(|r| {
            sent.push(r.to_vec());
            true
        });
        assert_eq!(sent.len(), 1);
        // Back to the sender's MAC, from the destination's.
        assert_eq!(&sent[0][..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&sent[0][6..12], &[2, 0, 0, 0, 0, 2]);
        assert!(!f.has_replies());
    }

    #[test]
    fn bad_ruleset_changes_nothing_and_names_the_place() {
        let mut f = Filter::default();
        let r = f.control(
            &["load".into()],
            "table bridge sw {\n chain fwd { bogus }\n}\n",
        );
        assert!(r.starts_with("error\n2:"), "{r}");
        assert!(!f.is_active());
    }
}
