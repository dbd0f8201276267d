//! The forwarding core: ports, one forwarding round, per-port counters.
//!
//! A [`Switch`] owns its ports (anything that implements [`PortIo`]: in the
//! component a packet_ring channel, see `port.rs`). [`Switch::poll`] runs one
//! round: every live port is drained of at most `batch` frames, each frame
//! is learned, looked up, passed through the filter hook and *copied* into
//! the transmit buffers of its egress port(s) (memory is private to each
//! pair of components, so a frame never leaves its ingress region by
//! reference). Each port that received or sent frames in the round is
//! flushed once, at the end: one doorbell at most per port and round.
//!
//! The same code runs in the `nic_switch` binary and in the forwarding
//! benchmark (`benches/forward.rs`).

use crate::filter::{Filter, Verdict};
use crate::mac_table::{Lookup, MacTable, PortId};

/// What the switch needs from a port.
pub trait PortIo {
    /// Receive up to `max` frames, calling `f` on each; returns how many.
    fn recv_batch<F: FnMut(&[u8])>(&mut self, max: usize, f: F) -> usize;
    /// Copy `frame` into a transmit buffer (not yet visible to the peer).
    /// Fails with [`DropReason::NoBuffer`] or [`DropReason::TooLong`].
    fn send_copy(&mut self, frame: &[u8]) -> Result<(), DropReason>;
    /// Publish what was sent since the last flush (and ring the doorbell if
    /// the peer sleeps).
    fn flush_tx(&mut self);
    /// Why the peer was disconnected, if it broke the ring protocol.
    fn violation(&self) -> Option<String>;
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header (counted at ingress).
    Malformed,
    /// Multicast/broadcast source address (counted at ingress).
    BadSource,
    /// The destination lives behind the ingress port (counted at ingress).
    SamePort,
    /// The destination's port is down (counted at ingress).
    LinkDown,
    /// The filter hook said drop (counted at egress).
    Filtered,
    /// The egress channel had no free buffer (counted at egress).
    NoBuffer,
    /// Larger than the egress channel's buffers (counted at egress).
    TooLong,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::BadSource,
        DropReason::SamePort,
        DropReason::LinkDown,
        DropReason::Filtered,
        DropReason::NoBuffer,
        DropReason::TooLong,
    ];

    /// Counter name (`drop_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadSource => "bad_source",
            DropReason::SamePort => "same_port",
            DropReason::LinkDown => "link_down",
            DropReason::Filtered => "filtered",
            DropReason::NoBuffer => "no_buffer",
            DropReason::TooLong => "too_long",
        }
    }
}

/// Counters of one port.
#[derive(Debug, Default, Clone)]
pub struct PortCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Indexed like [`DropReason::ALL`].
    pub drops: [u64; DropReason::ALL.len()],
    /// Times the peer was disconnected for breaking the ring protocol.
    pub violations: u64,
    /// Times the channel was (re)attached by a `channel` message.
    pub attaches: u64,
}

impl PortCounters {
    #[inline]
    fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Frames dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// One port: a label (the channel's), its I/O (absent while down), counters.
pub struct Port<P> {
    pub label: String,
    pub io: Option<P>,
    pub counters: PortCounters,
    /// Frames were queued since the last flush.
    dirty: bool,
}

/// A port went down during a round because its peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub port: PortId,
    pub label: String,
    pub reason: String,
}

/// The learning switch.
pub struct Switch<P> {
    ports: Vec<Port<P>>,
    table: MacTable,
    filter: Filter,
    batch: usize,
}

impl<P: PortIo> Switch<P> {
    /// A switch without ports: `batch` frames per port per round, MAC
    /// entries age after `aging` ticks (the unit of `now` in [`poll`]).
    ///
    /// [`poll`]: Switch::poll
    pub fn new(batch: usize, mac_capacity: usize, aging: u64) -> Self {
        Switch {
            ports: Vec::new(),
            table: MacTable::new(mac_capacity, aging),
            filter: Filter::default(),
            batch: batch.max(1),
        }
    }

    /// Attach `io` as the port labelled `label`: a new port, or the
    /// replacement of a port's channel (the old one is dropped: "link
    /// down", its MAC entries forgotten). Returns the port id.
    pub fn attach(&mut self, label: &str, io: P) -> PortId {
        let id = match self.ports.iter().position(|p| p.label == label) {
            Some(id) => {
                self.table.forget_port(id);
                id
            }
            None => {
                self.ports.push(Port {
                    label: label.to_string(),
                    io: None,
                    counters: PortCounters::default(),
                    dirty: false,
                });
                self.ports.len() - 1
            }
        };
        self.filter.name_port(id, label);
        let port = &mut self.ports[id];
        port.io = Some(io);
        port.dirty = false;
        port.counters.attaches += 1;
        id
    }

    /// The ports.
    pub fn ports(&self) -> &[Port<P>] {
        &self.ports
    }

    /// The live port I/O objects (for the waiter: doorbells).
    pub fn live_io_mut(&mut self) -> impl Iterator<Item = &mut P> {
        self.ports.iter_mut().filter_map(|p| p.io.as_mut())
    }

    /// The MAC table.
    pub fn table(&self) -> &MacTable {
        &self.table
    }

    /// The filter (for the `nft` control verb).
    pub fn filter_mut(&mut self) -> &mut Filter {
        &mut self.filter
    }

    /// Drop MAC entries older than the aging time.
    pub fn expire(&mut self, now: u64) {
        self.table.expire(now);
    }

    /// One forwarding round at time `now`. Returns how many frames were
    /// received and how many copies were delivered to egress ports; ports
    /// whose peer broke the protocol are taken down and reported through
    /// `on_disconnect`.
    ///
    /// A round that received frames but delivered none (every egress ring
    /// full) did no useful work: the caller should treat it as idle and let
    /// the consumers on its core run (the waiter yields).
    pub fn poll(&mut self, now: u64, mut on_disconnect: impl FnMut(Disconnect)) -> Round {
        let Switch {
            ports,
            table,
            filter,
            batch,
        } = self;
        let mut received = 0;
        let delivered_before = delivered_total(ports);
        filter.tick();
        for i in 0..ports.len() {
            let (before, rest) = ports.split_at_mut(i);
            let (ingress, after) = rest.split_first_mut().expect("i < len");
            let Some(io) = ingress.io.as_mut() else {
                continue;
            };
            let counters = &mut ingress.counters;
            let n = io.recv_batch(*batch, |frame| {
                forward_one(frame, i, counters, before, after, table, filter, now);
            });
            received += n;
            // Receiving returned buffers to the peer's free ring; a flush
            // publishes that and wakes a peer asleep on a full ring.
            if n > 0 {
                ingress.dirty = true;
            }
            // Replies to frames a `reject` rule refused go back out of the
            // port they came in on.
            if filter.has_replies() {
                let dirty = &mut ingress.dirty;
                filter.drain_replies(|reply| match io.send_copy(reply) {
                    Ok(()) => {
                        counters.tx_frames += 1;
                        counters.tx_bytes += reply.len() as u64;
                        *dirty = true;
                        true
                    }
                    Err(_) => false,
                });
            }
            if let Some(reason) = io.violation() {
                ingress.io = None;
                ingress.counters.violations += 1;
                table.forget_port(i);
                on_disconnect(Disconnect {
                    port: i,
                    label: ingress.label.clone(),
                    reason,
                });
            }
        }
        for (i, port) in ports.iter_mut().enumerate() {
            if !port.dirty {
                continue;
            }
            port.dirty = false;
            if let Some(io) = port.io.as_mut() {
                io.flush_tx();
                if let Some(reason) = io.violation() {
                    port.io = None;
                    port.counters.violations += 1;
                    table.forget_port(i);
                    on_disconnect(Disconnect {
                        port: i,
                        label: port.label.clone(),
                        reason,
                    });
                }
            }
        }
        Round {
            received,
            delivered: (delivered_total(ports) - delivered_before) as usize,
        }
    }

    /// `key value` lines for the `stats` verb.
    pub fn report(&self) -> String {
        let mut s = format!(
            "ports {}\nmac_entries {}\nmac_full_misses {}\n",
            self.ports.len(),
            self.table.len(),
            self.table.full_misses
        );
        self.filter.report(&mut s);
        for p in &self.ports {
            let c = &p.counters;
            let l = &p.label;
            s.push_str(&format!(
                "port.{l}.up {}\nport.{l}.rx_frames {}\nport.{l}.rx_bytes {}\n\
                 port.{l}.tx_frames {}\nport.{l}.tx_bytes {}\n\
                 port.{l}.violations {}\nport.{l}.attaches {}\n",
                u8::from(p.io.is_some()),
                c.rx_frames,
                c.rx_bytes,
                c.tx_frames,
                c.tx_bytes,
                c.violations,
                c.attaches
            ));
            for r in DropReason::ALL {
                s.push_str(&format!("port.{l}.drop_{} {}\n", r.name(), c.dropped(r)));
            }
        }
        s
    }
}

/// Copies delivered to all ports so far.
fn delivered_total<P>(ports: &[Port<P>]) -> u64 {
    ports.iter().map(|p| p.counters.tx_frames).sum()
}

/// What one forwarding round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// Frames taken from ingress rings.
    pub received: usize,
    /// Copies queued on egress rings.
    pub delivered: usize,
}

/// Learn, look up, filter and copy one frame that arrived on port `i`.
/// `before` are ports `0..i`, `after` ports `i+1..`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn forward_one<P: PortIo>(
    frame: &[u8],
    i: PortId,
    counters: &mut PortCounters,
    before: &mut [Port<P>],
    after: &mut [Port<P>],
    table: &mut MacTable,
    filter: &mut Filter,
    now: u64,
) {
    counters.rx_frames += 1;
    counters.rx_bytes += frame.len() as u64;
    let Some(header) = frame.get(..12) else {
        counters.drop(DropReason::Malformed);
        return;
    };
    if frame.len() < 14 {
        counters.drop(DropReason::Malformed);
        return;
    }
    let dst: &[u8; 6] = header[..6].try_into().expect("6 bytes");
    let src: &[u8; 6] = header[6..12].try_into().expect("6 bytes");
    if src[0] & 1 != 0 {
        counters.drop(DropReason::BadSource);
        return;
    }
    table.learn(src, i, now);
    match table.lookup(dst, now) {
        Lookup::Port(j) if j == i => counters.drop(DropReason::SamePort),
        Lookup::Port(j) => {
            let egress = if j < i {
                before.get_mut(j)
            } else {
                after.get_mut(j - i - 1)
            };
            match egress {
                Some(port) if port.io.is_some() => deliver(frame, i, j, port, filter),
                _ => counters.drop(DropReason::LinkDown),
            }
        }
        Lookup::Flood => {
            for (j, port) in before.iter_mut().enumerate() {
                if port.io.is_some() {
                    deliver(frame, i, j, port, filter);
                }
            }
            for (k, port) in after.iter_mut().enumerate() {
                if port.io.is_some() {
                    deliver(frame, i, i + 1 + k, port, filter);
                }
            }
        }
    }
}

#[inline]
fn deliver<P: PortIo>(
    frame: &[u8],
    ingress: PortId,
    egress: PortId,
    port: &mut Port<P>,
    filter: &mut Filter,
) {
    if filter.forward(frame, ingress, egress) == Verdict::Drop {
        port.counters.drop(DropReason::Filtered);
        return;
    }
    let Some(io) = port.io.as_mut() else {
        return;
    };
    match io.send_copy(frame) {
        Ok(()) => {
            port.counters.tx_frames += 1;
            port.counters.tx_bytes += frame.len() as u64;
            port.dirty = true;
        }
        Err(reason) => port.counters.drop(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// An in-memory port for the logic tests: a receive queue and a bounded
    /// transmit queue. (The integration tests use real channels.)
    #[derive(Default)]
    struct MemPort {
        rx: VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
        tx_room: usize,
        flushes: usize,
        broken: Option<String>,
    }

    impl MemPort {
        fn with_room(tx_room: usize) -> Self {
            MemPort {
                tx_room,
                ..Default::default()
            }
        }
    }

    impl PortIo for MemPort {
        fn recv_batch<F: FnMut(&[u8])>(&mut self, max: usize, mut f: F) -> usize {
            let mut n = 0;
            while n < max {
                let Some(frame) = self.rx.pop_front() else {
                    break;
                };
                f(&frame);
                n += 1;
            }
            n
        }
        fn send_copy(&mut self, frame: &[u8]) -> Result<(), DropReason> {
            if self.tx.len() >= self.tx_room {
                return Err(DropReason::NoBuffer);
            }
            self.tx.push(frame.to_vec());
            Ok(())
        }
        fn flush_tx(&mut self) {
            self.flushes += 1;
        }
        fn violation(&self) -> Option<String> {
            self.broken.clone()
        }
    }

    fn frame(dst: u8, src: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
        f[12] = 0x08;
        f
    }

    fn switch(n: usize) -> Switch<MemPort> {
        let mut s = Switch::new(4, 64, 300);
        for k in 0..n {
            s.attach(&format!("nic:p{k}"), MemPort::with_room(16));
        }
        s
    }

    fn io(s: &mut Switch<MemPort>, k: usize) -> &mut MemPort {
        s.ports[k].io.as_mut().unwrap()
    }

    #[test]
    fn floods_unknown_then_forwards_learned() {
        let mut s = switch(3);
        io(&mut s, 0).rx.push_back(frame(0xb, 0xa));
        s.poll(0, |_| panic!("no disconnect"));
        // Unknown destination: flooded to ports 1 and 2, not back to 0.
        assert_eq!(io(&mut s, 0).tx.len(), 0);
        assert_eq!(io(&mut s, 1).tx.len(), 1);
        assert_eq!(io(&mut s, 2).tx.len(), 1);
        // B answers from port 1: A is known, so only port 0 gets it.
        io(&mut s, 1).rx.push_back(frame(0xa, 0xb));
        s.poll(1, |_| {});
        assert_eq!(io(&mut s, 0).tx.len(), 1);
        assert_eq!(io(&mut s, 2).tx.len(), 1);
        // Now A -> B is unicast to port 1.
        io(&mut s, 0).rx.push_back(frame(0xb, 0xa));
        s.poll(2, |_| {});
        assert_eq!(io(&mut s, 1).tx.len(), 2);
        assert_eq!(io(&mut s, 2).tx.len(), 1);
        assert_eq!(s.ports[1].counters.tx_frames, 2);
        assert_eq!(s.ports[0].counters.rx_frames, 2);
    }

    #[test]
    fn broadcast_floods_and_aging_reverts_to_flood() {
        let mut s = switch(3);
        io(&mut s, 1).rx.push_back(frame(0xee, 0xb)); // unknown unicast
        let mut bcast = frame(0, 0xb);
        bcast[..6].copy_from_slice(&[0xff; 6]);
        io(&mut s, 1).rx.push_back(bcast);
        s.poll(0, |_| {});
        assert_eq!(io(&mut s, 0).tx.len(), 2);
        assert_eq!(io(&mut s, 2).tx.len(), 2);
        assert_eq!(io(&mut s, 1).tx.len(), 0);
        // B learned on port 1 at t=0; at t=301 it has aged: flood again.
        io(&mut s, 0).rx.push_back(frame(0xb, 0xa));
        s.poll(301, |_| {});
        assert_eq!(io(&mut s, 2).tx.len(), 3);
    }

    #[test]
    fn batches_and_flushes_once_per_round() {
        let mut s = switch(2);
        for _ in 0..10 {
            io(&mut s, 0).rx.push_back(frame(0xb, 0xa));
        }
        assert_eq!(
            s.poll(0, |_| {}),
            Round {
                received: 4,
                delivered: 4
            }
        );
        assert_eq!(io(&mut s, 1).tx.len(), 4);
        assert_eq!(io(&mut s, 1).flushes, 1);
        // The ingress port is flushed too: its returned buffers may be what
        // a producer blocked on a full ring waits for.
        assert_eq!(io(&mut s, 0).flushes, 1);
        s.poll(0, |_| {});
        assert_eq!(io(&mut s, 0).flushes, 2);
        assert_eq!(io(&mut s, 1).flushes, 2);
        // An idle round flushes nothing.
        io(&mut s, 0).rx.clear();
        s.poll(0, |_| {});
        assert_eq!(io(&mut s, 0).flushes, 2);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut s = switch(2);
        io(&mut s, 1).tx_room = 1;
        let p0 = io(&mut s, 0);
        p0.rx.push_back(vec![1, 2, 3]); // malformed
        p0.rx.push_back(frame(0xb, 0xa)); // flooded to 1
        p0.rx.push_back(frame(0xb, 0xa)); // no buffer on 1
        let mut bad_src = frame(0xb, 0xa);
        bad_src[6] = 0x01;
        p0.rx.push_back(bad_src);
        s.poll(0, |_| {});
        // A frame to A from port 0 where A lives: same port.
        io(&mut s, 0).rx.push_back(frame(0xa, 0xc));
        s.poll(0, |_| {});
        let c0 = &s.ports[0].counters;
        let c1 = &s.ports[1].counters;
        assert_eq!(c0.dropped(DropReason::Malformed), 1);
        assert_eq!(c0.dropped(DropReason::BadSource), 1);
        assert_eq!(c0.dropped(DropReason::SamePort), 1);
        assert_eq!(c1.dropped(DropReason::NoBuffer), 1);
        assert_eq!(c1.tx_frames, 1);
        let report = s.report();
        assert!(
            report.contains("port.nic:p1.drop_no_buffer 1\n"),
            "{report}"
        );
    }

    #[test]
    fn filter_drops_per_egress_port_and_rejects_back_to_ingress() {
        let mut s = switch(3);
        let r = s.filter_mut().control(
            &["load".into()],
            "table bridge sw {\n chain fwd {\n  type filter hook forward priority 0;\n  \
             oifname \"p1\" ip protocol icmp reject\n }\n}\n",
        );
        assert_eq!(r, "ok");
        // An ICMP echo request from port 0, flooded (destination unknown).
        let mut echo = frame(0xb, 0xa);
        echo.truncate(14 + 28);
        echo[12..14].copy_from_slice(&[8, 0]);
        echo[14] = 0x45;
        echo[16..18].copy_from_slice(&28u16.to_be_bytes());
        echo[22] = 64;
        echo[23] = 1;
        echo[26..30].copy_from_slice(&[10, 0, 0, 1]);
        echo[30..34].copy_from_slice(&[10, 0, 0, 2]);
        echo[34] = 8;
        io(&mut s, 0).rx.push_back(echo);
        s.poll(0, |_| {});
        // Port 1 refused it, port 2 got it, port 0 got the ICMP error back.
        assert_eq!(io(&mut s, 1).tx.len(), 0);
        assert_eq!(s.ports[1].counters.dropped(DropReason::Filtered), 1);
        assert_eq!(io(&mut s, 2).tx.len(), 1);
        let back = &io(&mut s, 0).tx;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0][..6], [2, 0, 0, 0, 0, 0xa]);
        assert_eq!(back[0][23], 1, "an ICMP reply");
        assert!(s.report().contains("filter_rejects_sent 1\n"));
    }

    #[test]
    fn violating_port_goes_down_others_keep_forwarding() {
        let mut s = switch(3);
        io(&mut s, 0).rx.push_back(frame(0xa, 0xc)); // learn C on port 0
        io(&mut s, 2).rx.push_back(frame(0xa, 0xb)); // learn B on port 2
        s.poll(0, |_| {});
        io(&mut s, 0).broken = Some("bad descriptor".into());
        let mut downs = Vec::new();
        s.poll(1, |d| downs.push(d));
        assert_eq!(downs.len(), 1);
        assert_eq!(downs[0].label, "nic:p0");
        assert!(s.ports[0].io.is_none());
        // C was forgotten with its port: a frame to C floods (to port 2
        // only, as 0 is down); a frame to B goes to port 2.
        let before = io(&mut s, 2).tx.len();
        io(&mut s, 1).rx.push_back(frame(0xb, 0xd));
        io(&mut s, 1).rx.push_back(frame(0xc, 0xd));
        s.poll(2, |_| panic!("no more disconnects"));
        assert_eq!(io(&mut s, 2).tx.len(), before + 2);
        // The port comes back when a new channel is attached.
        assert_eq!(s.attach("nic:p0", MemPort::with_room(4)), 0);
        assert_eq!(s.ports[0].counters.attaches, 2);
    }
}
