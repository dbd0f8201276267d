//! frame_endpoint: a tiny test endpoint in the style of an sDDF component.
//!
//! It owns one IPv4 address on its single `nic` channel (side B) and answers
//! ARP requests and ICMP echo requests for it; every other frame is dropped
//! with a named reason. With `ping="<addr>"` it also pings that address once
//! a second and counts the replies, so two endpoints behind a switch prove
//! that they reach each other. Counters are reported by the `stats` control
//! verb. Protocol logic: [`responder`]; configuration: [`config`].

mod config;
mod responder;

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fragnet_host::{info, warn, Control, Env};
use packet_ring::linux::{Channel, ChannelFds, Waiter, Wake};
use packet_ring::{Endpoint, Side, State};
use responder::{DropReason, Responder};

/// Frames handled per round.
const BATCH: usize = 32;
/// Largest reply (a full Ethernet frame without FCS).
const MAX_FRAME: usize = 1514;
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// The endpoint's state: the protocol logic, its channel, reply buffers.
struct FrameEndpoint {
    responder: Responder,
    nic: Option<Channel>,
    replies: Box<[[u8; MAX_FRAME]; BATCH]>,
    reply_len: [usize; BATCH],
    next_ping: Instant,
}

impl FrameEndpoint {
    /// Receive a batch, answer it, send the next ping when due. Returns
    /// whether anything moved.
    fn notified(&mut self) -> bool {
        let Some(nic) = self.nic.as_mut() else {
            return false;
        };
        let mut n = 0;
        let (responder, replies, reply_len) =
            (&mut self.responder, &mut self.replies, &mut self.reply_len);
        let received = Endpoint::recv(nic, BATCH, |frame| {
            if let Some(len) = responder.handle(frame, &mut replies[n]) {
                reply_len[n] = len;
                n += 1;
            }
        })
        .unwrap_or(0);
        for k in 0..n {
            self.transmit(k);
        }
        let mut moved = received > 0;
        if Instant::now() >= self.next_ping {
            // One probe per interval, no burst to catch up after a stall.
            self.next_ping = Instant::now() + PING_INTERVAL;
            if let Some(len) = self.responder.ping_tick(&mut self.replies[0]) {
                self.reply_len[0] = len;
                self.transmit(0);
                moved = true;
            }
        }
        if let Some(nic) = self.nic.as_mut() {
            nic.flush();
            if let State::Disconnected(e) = nic.state() {
                warn!("nic channel disconnected: peer broke the ring protocol: {e}");
                self.nic = None;
            }
        }
        moved
    }

    fn transmit(&mut self, k: usize) {
        let Some(nic) = self.nic.as_mut() else {
            return;
        };
        match Endpoint::send(nic, &self.replies[k][..self.reply_len[k]]) {
            Ok(()) => self.responder.counters.tx_frames += 1,
            Err(_) => self.responder.counters.drop(DropReason::NoTxBuffer),
        }
    }

    fn attach(&mut self, label: &str, side: Side, fds: ChannelFds) -> Result<(), String> {
        if label != "nic" || side != Side::B {
            return Err(format!(
                "channel '{label}' (side {side:?}): frame_endpoint has one channel, 'nic' on side B"
            ));
        }
        let ch = Channel::attach(fds, side).map_err(|e| format!("attaching channel 'nic': {e}"))?;
        self.nic = Some(ch);
        info!("link up");
        Ok(())
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fragnet_host::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut env = Env::from_env().map_err(|e| e.to_string())?;
    fragnet_host::log::init(&env.name);
    let config = config::Config::parse(&env.config_xml, &env.name)?;
    info!(
        "{}/{} at {}{}",
        config.ip,
        config.prefix_len,
        config.mac,
        config
            .ping
            .map(|p| format!(", pinging {p}"))
            .unwrap_or_default()
    );
    let mut ep = FrameEndpoint {
        responder: Responder::new(config.mac, config.ip, config.ping),
        nic: None,
        replies: Box::new([[0; MAX_FRAME]; BATCH]),
        reply_len: [0; BATCH],
        next_ping: Instant::now() + PING_INTERVAL,
    };
    let channels = std::mem::take(&mut env.channels);
    if channels.len() != 1 {
        return Err(format!(
            "frame_endpoint needs exactly one channel ('nic', side B), got {}: route its Nic service",
            channels.len()
        ));
    }
    for spec in channels {
        ep.attach(&spec.label, spec.side, spec.fds)?;
    }
    let mut control = env.control.take();
    if let Some(c) = &control {
        c.set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
    }
    let mut waiter = Waiter::new();
    let mut last_control = Instant::now();
    loop {
        let moved = ep.notified();
        let timeout = ep.next_ping.saturating_duration_since(Instant::now());
        let control_fd = control.as_ref().map(|c| c.fd());
        let wake = waiter
            .wait(moved, ep.nic.as_mut(), control_fd.as_slice(), Some(timeout))
            .map_err(|e| format!("waiting: {e}"))?;
        // The control socket: when the waiter slept (it polls it), and at
        // least every 50 ms while frames flow.
        if matches!(wake, Wake::Woken | Wake::TimedOut)
            || last_control.elapsed() >= Duration::from_millis(50)
        {
            last_control = Instant::now();
            if let Some(c) = control.as_mut() {
                if !serve_control(c, &mut ep).map_err(|e| format!("control socket: {e}"))? {
                    return Ok(());
                }
            }
        }
    }
}

/// Answer every waiting control message; `Ok(false)` means exit.
fn serve_control(c: &mut Control, ep: &mut FrameEndpoint) -> io::Result<bool> {
    loop {
        let msg = match c.recv() {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                c.reply(&format!("error\n{e}"))?;
                continue;
            }
            Err(e) => return Err(e),
        };
        match msg.verb.as_str() {
            "ping" => c.reply("ok")?,
            "stats" => c.reply(&format!(
                "ok\nlink_up {}\n{}",
                u8::from(ep.nic.is_some()),
                ep.responder.counters.report()
            ))?,
            "channel" => {
                let result = match (&msg.args[..], <[_; 3]>::try_from(msg.fds)) {
                    ([label, side], Ok([memfd, wake_a, wake_b])) if side == "B" => ep.attach(
                        label,
                        Side::B,
                        ChannelFds {
                            memfd,
                            wake_a,
                            wake_b,
                        },
                    ),
                    _ => Err("channel: expected 'channel nic B' with 3 descriptors".to_string()),
                };
                match result {
                    Ok(()) => c.reply("ok")?,
                    Err(e) => c.reply(&format!("error\n{e}"))?,
                }
            }
            "nft" => c.reply("error\nnot supported: frame_endpoint has no filter")?,
            "shutdown" => {
                c.reply("ok")?;
                return Ok(false);
            }
            other => c.reply(&format!("error\nunknown verb '{other}'"))?,
        }
    }
}
