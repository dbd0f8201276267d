//! probe: a tiny component for init's integration tests.
//!
//! It takes its environment with `fragnet_host::Env` like every component
//! and attaches every channel it was given. On side-A channels (services it
//! provides) it echoes each frame back; on side-B channels (its routes) it
//! sends a numbered frame every 20 ms and counts the echoes. On its control
//! socket it answers `ping`, `stats` (counters per link), `channel LABEL
//! SIDE` (+3 fds: replaces or adds that link), `shutdown`, and the `nft`
//! requests of docs/INTERNALS.md through a real `nft_filter::Filter` (it
//! holds the ruleset; it does not filter the probe frames). Config:
//! `exit_after_ms="N" exit_code="C"` makes it exit by itself (to test
//! restarts and giving up); `nft="no"` makes it a component without a
//! filter.

use fragnet_host::{ChannelSpec, ControlMsg, Env};
use packet_ring::linux::{Channel, ChannelFds};
use packet_ring::Side;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::io;
use std::time::{Duration, Instant};

struct Link {
    label: String,
    side: Side,
    ch: Channel,
    sent: u64,
    echoed: u64,
    echo_rx: u64,
}

fn attach(label: String, side: Side, fds: ChannelFds) -> Result<Link, String> {
    let ch = Channel::attach(fds, side).map_err(|e| format!("attaching {label}: {e}"))?;
    Ok(Link {
        label,
        side,
        ch,
        sent: 0,
        echoed: 0,
        echo_rx: 0,
    })
}

struct Probe {
    links: Vec<Link>,
    replaced: u64,
    filter: Option<nft_filter::Filter>,
    loads: u64,
}

impl Probe {
    fn handle(&mut self, m: ControlMsg) -> Option<String> {
        Some(match (m.verb.as_str(), m.args.as_slice()) {
            ("ping", []) => "ok".into(),
            ("shutdown", []) => return None,
            ("stats", []) => {
                let mut s = format!(
                    "ok\nlinks {}\nreplaced {}\nnft_loads {}\n",
                    self.links.len(),
                    self.replaced,
                    self.loads
                );
                for l in &self.links {
                    s.push_str(&format!(
                        "sent:{0} {1}\nechoed:{0} {2}\necho_rx:{0} {3}\n",
                        l.label, l.sent, l.echoed, l.echo_rx
                    ));
                }
                s
            }
            ("channel", [label, side]) => {
                let side = match side.as_str() {
                    "A" => Side::A,
                    "B" => Side::B,
                    _ => return Some(format!("error\nbad side {side}")),
                };
                let mut fds = m.fds.into_iter();
                let (Some(memfd), Some(wake_a), Some(wake_b), None) =
                    (fds.next(), fds.next(), fds.next(), fds.next())
                else {
                    return Some("error\nchannel needs exactly 3 descriptors".into());
                };
                match attach(
                    label.clone(),
                    side,
                    ChannelFds {
                        memfd,
                        wake_a,
                        wake_b,
                    },
                ) {
                    Ok(link) => {
                        if let Some(i) = self.links.iter().position(|l| &l.label == label) {
                            self.links[i] = link;
                            self.replaced += 1;
                        } else {
                            self.links.push(link);
                        }
                        "ok".into()
                    }
                    Err(e) => format!("error\n{e}"),
                }
            }
            ("nft", _) if self.filter.is_none() => {
                "error\nnot supported: probe started with nft=\"no\"".into()
            }
            ("nft", args) => {
                let Some(f) = self.filter.as_mut() else {
                    return Some("error\nnot supported".into());
                };
                let words: Vec<&str> = args.iter().map(String::as_str).collect();
                let result = match words.as_slice() {
                    ["load"] => f.replace(&m.body).map(|_| String::new()),
                    ["list", "ruleset"] => Ok(f.list_ruleset()),
                    ["list", "counters"] => Ok(f.list_counters()),
                    [] => return Some("error\nnft: missing command".into()),
                    cmd => f.apply(&cmd.join(" ")).map(|_| String::new()),
                };
                match result {
                    Ok(text) => {
                        if words == ["load"] {
                            self.loads += 1;
                        }
                        format!("ok\n{text}")
                    }
                    Err(e) => format!("error\n{e}"),
                }
            }
            _ => format!("error\nunknown verb {}", m.verb),
        })
    }

    fn pump(&mut self, tick: bool) {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for l in &mut self.links {
            frames.clear();
            if l.ch.recv(64, |f| frames.push(f.to_vec())).is_err() {
                continue;
            }
            match l.side {
                Side::A => {
                    for f in &frames {
                        if l.ch.send(f).is_ok() {
                            l.echoed += 1;
                        }
                    }
                }
                Side::B => {
                    l.echo_rx += frames.len() as u64;
                    if tick && l.ch.send(format!("probe {}", l.sent).as_bytes()).is_ok() {
                        l.sent += 1;
                    }
                }
            }
            l.ch.flush();
        }
    }
}

fn main() {
    let mut env = match Env::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("probe: {e}");
            std::process::exit(2);
        }
    };
    fragnet_host::log::init(&env.name);
    let config = env.config().unwrap_or_else(|e| {
        fragnet_host::error!("bad config: {e}");
        std::process::exit(2)
    });
    let exit_after = config
        .attr_parse::<u64>("exit_after_ms")
        .ok()
        .flatten()
        .map(Duration::from_millis);
    let exit_code = config.attr_or("exit_code", 3i32).unwrap_or(3);
    let Some(mut ctl) = env.control.take() else {
        fragnet_host::error!("no control socket");
        std::process::exit(2);
    };
    ctl.set_nonblocking(true)
        .expect("nonblocking control socket");
    let with_nft = config.attr_bool("nft", true).unwrap_or(true);
    let mut probe = Probe {
        links: Vec::new(),
        replaced: 0,
        filter: with_nft.then(|| nft_filter::Filter::new(64)),
        loads: 0,
    };
    for ChannelSpec { label, side, fds } in std::mem::take(&mut env.channels) {
        match attach(label, side, fds) {
            Ok(l) => probe.links.push(l),
            Err(e) => fragnet_host::error!("{e}"),
        }
    }
    fragnet_host::info!("up with {} links", probe.links.len());
    let born = Instant::now();
    let mut last_tick = Instant::now();
    loop {
        if exit_after.is_some_and(|d| born.elapsed() >= d) {
            std::process::exit(exit_code);
        }
        loop {
            match ctl.recv() {
                Ok(Some(m)) => match probe.handle(m) {
                    Some(reply) => {
                        let _ = ctl.reply(&reply);
                    }
                    None => {
                        let _ = ctl.reply("ok");
                        std::process::exit(0);
                    }
                },
                Ok(None) => std::process::exit(0), // init is gone
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    let _ = ctl.reply(&format!("error\n{e}"));
                }
            }
        }
        let tick = last_tick.elapsed() >= Duration::from_millis(20);
        if tick {
            last_tick = Instant::now();
        }
        probe.pump(tick);
        // Sleep until a doorbell, the control socket, or the next tick.
        let pending = probe.links.iter_mut().any(|l| l.ch.prepare_sleep());
        if !pending {
            let mut fds = vec![PollFd::from_borrowed_fd(ctl.fd(), PollFlags::IN)];
            for l in &probe.links {
                fds.push(PollFd::from_borrowed_fd(l.ch.doorbell(), PollFlags::IN));
            }
            let ts = Timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            let _ = poll(&mut fds, Some(&ts));
        }
        for l in &mut probe.links {
            l.ch.cancel_sleep();
            l.ch.clear_doorbell();
        }
    }
}
