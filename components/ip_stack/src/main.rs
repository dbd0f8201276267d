//! ip_stack: the TCP/IP stack of one fragnet application, as a process.
//!
//! Below, its `nic` channel (side B) leads to a driver queue or a switch
//! port; above, the `socket:<app>` channel (side A) to the one application
//! it serves. The protocol engine is smoltcp; this crate adds the parts
//! around it:
//!
//! * [`device`]: the smoltcp device over the packet ring (zero-copy tokens,
//!   one flush per poll round);
//! * [`classify`]: every received frame checked and every drop counted by
//!   name (`stats` control verb);
//! * [`filter`]: the input/output hook points for the nft filter;
//! * [`service`]: the socket channel: requests from the (untrusted)
//!   application, events and data back, credit-based flow control;
//! * [`config`]: `<config ip=… gateway=… mac=… …/>`.
//!
//! Protocols are Cargo features (`udp`, `tcp`, `icmp`, `ipv6`) mapped to
//! smoltcp's, so a UDP-only stack holds no TCP code.
//!
//! The main loop: apply the application's requests, poll smoltcp (frames
//! in and out), move socket news to the application, flush both channels,
//! and when nothing moved, wait adaptively (spin, yield, sleep on the
//! doorbells, the control socket and smoltcp's next timer).

// Without TCP, the connection bookkeeping shared with it is unused.
#![cfg_attr(not(feature = "tcp"), allow(dead_code))]

mod classify;
mod config;
mod device;
mod filter;
mod service;

use std::fmt::Write as _;
use std::process::ExitCode;

use fragnet_host::{error, info, warn, Control, ControlMsg, Env};
use packet_ring::linux::{Channel, ChannelFds, Policy, Waiter, Wake};
use packet_ring::{Endpoint, Side, State};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr};

use crate::classify::{Local, Reason};
use crate::config::StackConfig;
use crate::device::{FrameQueue, NicDevice};
use crate::service::{Cx, Service};

impl FrameQueue for Channel {
    fn rx_pending(&mut self) -> bool {
        Endpoint::rx_pending(self) > 0
    }

    fn recv_one<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut f = Some(f);
        let mut r = None;
        let _ = Endpoint::recv(self, 1, |frame| {
            if let Some(f) = f.take() {
                r = Some(f(frame));
            }
        });
        r
    }

    fn tx_room(&mut self) -> bool {
        Endpoint::tx_space(self) > 0
    }

    fn send_with(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> usize) -> bool {
        Endpoint::send_with(self, len, f).is_ok()
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn attach(fds: ChannelFds, side: Side, label: &str) -> Result<Channel, String> {
    Channel::attach(fds, side).map_err(|e| format!("channel `{label}`: {e}"))
}

/// Everything the loop owns.
struct Stack {
    iface: Interface,
    dev: NicDevice<Channel>,
    sockets: SocketSet<'static>,
    svc: Service,
    app: Option<Channel>,
    app_label: String,
    control: Option<Control>,
    start: std::time::Instant,
    rounds: u64,
    policy: Policy,
    expect_rules: bool,
    /// A ruleset being parsed and compiled on a helper thread (a 10,000-rule
    /// file takes ~15 ms: not on the data path). Control requests wait
    /// until it is installed and answered.
    building: Option<std::sync::mpsc::Receiver<BuildResult>>,
}

type BuildResult = Result<std::sync::Arc<nft_filter::Ruleset>, nft_filter::Error>;

fn run() -> Result<(), String> {
    let mut env = Env::from_env().map_err(|e| format!("environment: {e}"))?;
    fragnet_host::log::init(&env.name);
    let node = env.config().map_err(|e| format!("<config>: {e}"))?;
    let cfg = StackConfig::from_node(&node).map_err(|e| format!("<config>: {e}"))?;
    let nic = env
        .take_channel("nic")
        .ok_or("no `nic` channel: route the stack's Nic service to a driver or switch")?;
    let nic = attach(nic.fds, nic.side, "nic")?;
    let app_pos = env
        .channels
        .iter()
        .position(|c| c.label.starts_with("socket:"));
    let (app, app_label) = match app_pos {
        Some(i) => {
            let spec = env.channels.remove(i);
            (Some(attach(spec.fds, spec.side, &spec.label)?), spec.label)
        }
        None => {
            warn!("no `socket:<app>` channel: serving no application");
            (None, String::new())
        }
    };
    let mtu = nic.buf_size().min(1514);
    let local = Local {
        mac: cfg.mac,
        ip: cfg.cidr.address(),
        broadcast: cfg.cidr.broadcast().unwrap_or(cfg.cidr.address()),
    };
    let mut dev = NicDevice::new(nic, local, mtu);
    let mut icfg = smoltcp::iface::Config::new(HardwareAddress::Ethernet(cfg.mac));
    let start = std::time::Instant::now();
    icfg.random_seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut iface = Interface::new(icfg, &mut dev, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::Ipv4(cfg.cidr));
    });
    if let Some(gw) = cfg.gateway {
        iface
            .routes_mut()
            .add_default_ipv4_route(gw)
            .map_err(|_| "route table full".to_string())?;
    }
    let max_msg = app.as_ref().map(|a| a.buf_size()).unwrap_or(2048);
    let svc = Service::new(cfg.limits, cfg.cidr.address(), max_msg);
    if let Some(c) = &env.control {
        c.set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
    }
    info!(
        "up: {} mac {} mtu {}, application channel {}",
        cfg.cidr,
        cfg.mac,
        mtu,
        if app_label.is_empty() {
            "-"
        } else {
            &app_label
        }
    );
    let mut stack = Stack {
        iface,
        dev,
        sockets: SocketSet::new(Vec::new()),
        svc,
        app,
        app_label,
        control: env.control.take(),
        start,
        rounds: 0,
        expect_rules: cfg.expect_rules,
        building: None,
        policy: Policy {
            spin: cfg.spin,
            yield_for: std::time::Duration::from_micros(cfg.yield_us),
        },
    };
    stack.run()
}

impl Stack {
    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn run(&mut self) -> Result<(), String> {
        if self.expect_rules {
            self.wait_for_rules()?;
        }
        let mut waiter = Waiter::with_policy(self.policy);
        let mut check_control = true;
        loop {
            let work = self.round();
            self.rounds += 1;
            // The control socket is looked at when the waiter saw it
            // readable, and now and then under load (one recvmsg per 4096
            // rounds), not on every idle spin.
            if check_control || self.rounds.is_multiple_of(4096) {
                if let Some(exit) = self.control()? {
                    return Ok(exit);
                }
            }
            // smoltcp's next timer matters only when we may sleep.
            let mut delay = if work {
                None
            } else {
                let now = self.now();
                self.iface
                    .poll_delay(now, &self.sockets)
                    .map(|d| std::time::Duration::from_micros(d.total_micros()))
            };
            if self.building.is_some() {
                // Nothing wakes us when the build thread is done: look again
                // soon (a timeout makes the next round check the control
                // side, where the result is installed).
                let soon = std::time::Duration::from_millis(1);
                delay = Some(delay.map_or(soon, |d| d.min(soon)));
            }
            let Stack {
                dev, app, control, ..
            } = self;
            let one;
            let extra: &[std::os::fd::BorrowedFd<'_>] = match control {
                Some(c) => {
                    one = [c.fd()];
                    &one
                }
                None => &[],
            };
            let channels = std::iter::once(&mut dev.queue).chain(app.as_mut());
            let wake = waiter.wait(work, channels, extra, delay);
            check_control = match wake {
                Ok(Wake::Woken) => waiter.extra_ready(0),
                Ok(Wake::TimedOut) => true,
                Ok(_) => false,
                Err(_) => true,
            };
        }
    }

    /// One poll round; whether anything moved.
    fn round(&mut self) -> bool {
        // One clock read per round, for smoltcp and the filter.
        let elapsed = self.start.elapsed();
        let now = Instant::from_micros(elapsed.as_micros() as i64);
        self.dev
            .shared
            .filter
            .borrow_mut()
            .set_clock(elapsed.as_nanos() as u64);
        let Stack {
            iface,
            dev,
            sockets,
            svc,
            app,
            ..
        } = self;
        let (rx0, tx0) = (
            dev.shared.counters.rx_frames.get(),
            dev.shared.counters.tx_frames.get(),
        );
        let mut work = false;
        if let Some(a) = app.as_mut() {
            let mut cx = Cx {
                iface,
                sockets,
                ports: &mut dev.shared.ports,
            };
            work |= svc.handle_requests(&mut cx, a, 256) > 0;
        }
        iface.poll(now, dev, sockets);
        if let Some(a) = app.as_mut() {
            let mut cx = Cx {
                iface,
                sockets,
                ports: &mut dev.shared.ports,
            };
            work |= svc.poll_sockets(&mut cx, a);
            // Window updates and data queued just now leave this round.
            iface.poll(now, dev, sockets);
        }
        dev.flush_deferred();
        dev.queue.flush();
        if let Some(a) = app.as_mut() {
            a.flush();
        }
        if let State::Disconnected(why) = dev.queue.state() {
            // Keep running: init may hand a new channel (`channel nic B`).
            if self.rounds.is_multiple_of(100_000) {
                warn!("nic channel down: {why}");
            }
        }
        let app_down = match app.as_ref().map(|a| a.state()) {
            Some(State::Disconnected(why)) => Some(why.to_string()),
            _ => svc.disconnected.clone(),
        };
        if let Some(why) = app_down {
            warn!("application disconnected: {why}");
            if let Some(a) = app.as_mut().filter(|a| a.is_up()) {
                // Tell the application why, so its calls fail instead of
                // waiting for answers that will not come.
                let m = fragnet::proto::Msg::new(fragnet::proto::Op::Error)
                    .sock(fragnet::proto::SOCK_CHANNEL)
                    .val(-fragnet::proto::errno::ECONNABORTED);
                let mut b = [0u8; fragnet::proto::HDR_LEN];
                m.emit(&mut b);
                let _ = Endpoint::send(a, &b);
                a.flush();
            }
            *app = None;
            let mut cx = Cx {
                iface,
                sockets,
                ports: &mut dev.shared.ports,
            };
            svc.reset(&mut cx);
        }
        work || dev.shared.counters.rx_frames.get() != rx0
            || dev.shared.counters.tx_frames.get() != tx0
    }

    /// Before moving any packet: serve control messages until init has
    /// loaded the ruleset (it sends `nft load` first), at most 10 s.
    fn wait_for_rules(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.dev.shared.filter.borrow().generation() == 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(c) = self.control.as_mut() else {
                return Ok(());
            };
            if left.is_zero() {
                warn!("no ruleset from init after 10 s: running without one");
                return Ok(());
            }
            match c.recv_timeout(left) {
                Ok(Some(msg)) => {
                    let (reply, _) = self.control_msg(msg);
                    if let Some(c) = self.control.as_ref() {
                        let _ = c.reply(&reply);
                    }
                }
                Ok(None) => return Err("control socket closed before the ruleset came".into()),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("control socket: {e}")),
            }
        }
        Ok(())
    }

    /// Serves pending control messages. `Some(())`: exit now.
    fn control(&mut self) -> Result<Option<()>, String> {
        loop {
            if let Some(rx) = self.building.as_ref() {
                let reply = match rx.try_recv() {
                    Ok(built) => self.dev.shared.filter.borrow_mut().finish_build(built),
                    Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(None),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        "error\nthe ruleset build thread died; nothing changed".into()
                    }
                };
                self.building = None;
                if let Some(c) = self.control.as_ref() {
                    let _ = c.reply(&reply);
                }
            }
            let Some(c) = self.control.as_mut() else {
                return Ok(None);
            };
            let msg = match c.recv() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    info!("control socket closed (init is gone): exiting");
                    return Ok(Some(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let _ = c.reply(&format!("error\n{e}"));
                    continue;
                }
                Err(e) => return Err(format!("control socket: {e}")),
            };
            if msg.verb == "nft" {
                let job = self
                    .dev
                    .shared
                    .filter
                    .borrow()
                    .build_job(&msg.args, &msg.body);
                if let Some(job) = job {
                    self.start_build(job);
                    continue;
                }
            }
            let (reply, exit) = self.control_msg(msg);
            if let Some(c) = self.control.as_ref() {
                let _ = c.reply(&reply);
            }
            if exit {
                return Ok(Some(()));
            }
        }
    }

    /// Parses and compiles a ruleset change on a helper thread; the data
    /// path keeps running and installs the result between two rounds
    /// (`control`).
    fn start_build(&mut self, job: nft_filter::BuildJob) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("nft-build".into())
            .spawn(move || {
                let _ = tx.send(job.run());
            });
        match spawned {
            Ok(_) => self.building = Some(rx),
            Err(e) => {
                if let Some(c) = self.control.as_ref() {
                    let _ = c.reply(&format!(
                        "error\ncannot start the ruleset build thread ({e}); nothing changed"
                    ));
                }
            }
        }
    }

    fn control_msg(&mut self, msg: ControlMsg) -> (String, bool) {
        match msg.verb.as_str() {
            "ping" => ("ok".into(), false),
            "stats" => (format!("ok\n{}", self.stats()), false),
            "nft" => (
                self.dev
                    .shared
                    .filter
                    .borrow_mut()
                    .control(&msg.args, &msg.body),
                false,
            ),
            "shutdown" => ("ok".into(), true),
            "channel" => (self.replace_channel(msg), false),
            v => (format!("error\nunknown verb `{v}`"), false),
        }
    }

    fn replace_channel(&mut self, msg: ControlMsg) -> String {
        let (Some(label), Some(side)) = (msg.args.first(), msg.args.get(1)) else {
            return "error\nusage: channel <label> <A|B> with 3 fds".into();
        };
        let side = match side.as_str() {
            "A" => Side::A,
            "B" => Side::B,
            s => return format!("error\nside `{s}`: expected A or B"),
        };
        let mut fds = msg.fds.into_iter();
        let (Some(memfd), Some(wake_a), Some(wake_b)) = (fds.next(), fds.next(), fds.next()) else {
            return "error\nchannel needs 3 fds (memfd, wake_a, wake_b)".into();
        };
        let ch = match attach(
            ChannelFds {
                memfd,
                wake_a,
                wake_b,
            },
            side,
            label,
        ) {
            Ok(ch) => ch,
            Err(e) => return format!("error\n{e}"),
        };
        if label == "nic" {
            self.dev.queue = ch;
            info!("nic channel replaced (link up)");
        } else if label.starts_with("socket:") {
            let Stack {
                iface,
                dev,
                sockets,
                svc,
                ..
            } = self;
            let mut cx = Cx {
                iface,
                sockets,
                ports: &mut dev.shared.ports,
            };
            svc.reset(&mut cx);
            svc.set_max_msg(ch.buf_size());
            self.app = Some(ch);
            self.app_label = label.clone();
            info!("application channel {label} attached");
        } else {
            return format!("error\nunknown channel label `{label}`");
        }
        "ok".into()
    }

    fn stats(&self) -> String {
        let c = &self.dev.shared.counters;
        let mut out = String::new();
        let _ = writeln!(out, "rx_frames {}", c.rx_frames.get());
        let _ = writeln!(out, "tx_frames {}", c.tx_frames.get());
        let mut dropped = 0;
        for r in Reason::ALL {
            dropped += c.get(r);
            let _ = writeln!(out, "{} {}", r.name(), c.get(r));
        }
        let _ = writeln!(out, "drop_total {dropped}");
        self.svc.stats.lines(&mut out);
        self.dev.shared.filter.borrow().stats(&mut out);
        let (live, closing) = self.svc.counts();
        let _ = writeln!(out, "sockets_live {live}");
        let _ = writeln!(out, "tcp_closing {closing}");
        self.svc.socket_lines(&self.sockets, &mut out);
        let _ = writeln!(
            out,
            "app_channel {}",
            match &self.app {
                Some(a) if a.is_up() => "up",
                Some(_) => "down",
                None => "none",
            }
        );
        let _ = write!(
            out,
            "nic_channel {}",
            if self.dev.queue.is_up() { "up" } else { "down" }
        );
        out
    }
}
