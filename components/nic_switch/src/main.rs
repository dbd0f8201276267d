//! nic_switch: the learning Ethernet switch component.
//!
//! Started by `init` with one channel per port: `nic:<client>` (side A) for
//! each client of its `Nic` service and optionally `nic` (side B) for an
//! uplink route. Forwards frames between them with the core in
//! [`nic_switch::forward`], sleeps with packet_ring's adaptive `Waiter` when
//! idle, and serves the control socket (`ping`, `stats`, `channel`, `nft`,
//! `shutdown`). See README.md for the `<config>` attributes and counters.

use std::io;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fragnet_host::{info, warn, Control, ControlMsg, Env};
use nic_switch::Switch;
use packet_ring::linux::{Channel, ChannelFds, Policy, Waiter};
use packet_ring::Side;

/// `<config>` of the switch, defaults in one place.
struct Config {
    mac_aging_s: u64,
    mac_table_size: usize,
    batch: usize,
    /// Idle rounds spent spinning before the waiter starts yielding.
    spin: u32,
    /// The run script names rules (`<nftables>`): wait for them at start.
    has_rules: bool,
}

impl Config {
    fn from_env(env: &Env) -> Result<Config, String> {
        let node = env.config().map_err(|e| e.to_string())?;
        const KNOWN: [&str; 4] = ["mac_aging_s", "mac_table_size", "batch", "spin"];
        if let Some((k, _)) = node
            .attrs
            .iter()
            .find(|(k, _)| !KNOWN.contains(&k.as_str()))
        {
            return Err(node
                .error(format!(
                    "<config>: unknown attribute '{k}' (known: {})",
                    KNOWN.join(", ")
                ))
                .to_string());
        }
        let c = Config {
            mac_aging_s: node
                .attr_or("mac_aging_s", 300u64)
                .map_err(|e| e.to_string())?,
            mac_table_size: node
                .attr_or("mac_table_size", 4096usize)
                .map_err(|e| e.to_string())?,
            batch: node.attr_or("batch", 64usize).map_err(|e| e.to_string())?,
            spin: node.attr_or("spin", 0u32).map_err(|e| e.to_string())?,
            has_rules: node.child("nftables").is_some(),
        };
        if c.mac_table_size == 0 || c.batch == 0 {
            return Err("<config>: mac_table_size and batch must be at least 1".into());
        }
        Ok(c)
    }
}

/// Is `label`/`side` a channel the switch can use as a port?
fn check_port(label: &str, side: Side) -> Result<(), String> {
    match (label, side) {
        ("nic", Side::B) => Ok(()),
        (l, Side::A) if l.starts_with("nic:") && l.len() > 4 => Ok(()),
        _ => Err(format!(
            "channel '{label}' (side {side:?}) is not a switch port: expected 'nic:<client>' \
             on side A or 'nic' on side B"
        )),
    }
}

fn attach(
    switch: &mut Switch<Channel>,
    label: &str,
    side: Side,
    fds: ChannelFds,
) -> Result<(), String> {
    check_port(label, side)?;
    let ch = Channel::attach(fds, side).map_err(|e| format!("attaching channel '{label}': {e}"))?;
    let port = switch.attach(label, ch);
    info!("port {port} '{label}' up");
    Ok(())
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
    let config = Config::from_env(&env)?;
    let mut switch: Switch<Channel> =
        Switch::new(config.batch, config.mac_table_size, config.mac_aging_s);
    for spec in std::mem::take(&mut env.channels) {
        attach(&mut switch, &spec.label, spec.side, spec.fds)?;
    }
    let mut control = env.control.take();
    if let Some(c) = &control {
        c.set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
    }
    let mut waiter = Waiter::with_policy(Policy {
        spin: config.spin,
        ..Policy::default()
    });
    // A run script that gives the switch rules: init sends them first; no
    // frame moves before they are in (or refused).
    if config.has_rules {
        if let Some(c) = control.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while switch.filter_mut().loads() == 0 && Instant::now() < deadline {
                match c.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Some(msg)) => {
                        if !handle(c, msg, &mut switch, &waiter)
                            .map_err(|e| format!("control socket: {e}"))?
                        {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                    Err(e) => warn!("control socket: {e}"),
                }
            }
            if switch.filter_mut().loads() == 0 {
                warn!("no ruleset arrived within 10 s: forwarding unfiltered");
            }
        }
    }

    let start = Instant::now();
    let mut last_housekeeping = Instant::now();
    let mut last_expire = 0;
    let mut building: Option<Building> = None;
    loop {
        let now = start.elapsed().as_secs();
        let round = switch.poll(now, |d| {
            warn!(
                "port {} '{}' disconnected: peer broke the ring protocol: {}",
                d.port, d.label, d.reason
            )
        });
        // Aging: once a second. Control messages: when the waiter woke us
        // for them, and at least every 10 ms under load.
        if now != last_expire {
            last_expire = now;
            switch.expire(now);
        }
        let mut check_control = last_housekeeping.elapsed() >= Duration::from_millis(10);
        if check_control {
            last_housekeeping = Instant::now();
        }
        let control_fd = control.as_ref().map(|c| c.fd());
        // Nothing wakes us when a ruleset build finishes: look again soon.
        let timeout = if building.is_some() {
            Duration::from_millis(1)
        } else {
            Duration::from_secs(1)
        };
        let wake = waiter
            .wait(
                round.delivered > 0,
                switch.live_io_mut(),
                control_fd.as_slice(),
                Some(timeout),
            )
            .map_err(|e| format!("waiting: {e}"))?;
        if matches!(wake, packet_ring::linux::Wake::Woken) && waiter.extra_ready(0) {
            check_control = true;
        }
        if building.is_some() && matches!(wake, packet_ring::linux::Wake::TimedOut) {
            check_control = true;
        }
        if check_control {
            if let Some(c) = control.as_mut() {
                match serve_control(c, &mut switch, &waiter, &mut building) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => return Err(format!("control socket: {e}")),
                }
            }
        }
    }
}

/// Answer every waiting control message. `Ok(false)`: time to exit (init
/// closed the socket, or asked for shutdown).
fn serve_control(
    c: &mut Control,
    switch: &mut Switch<Channel>,
    waiter: &Waiter,
    building: &mut Option<Building>,
) -> io::Result<bool> {
    loop {
        // A ruleset build in progress: answer it when done; later requests
        // wait in the socket meanwhile (they may depend on it).
        if let Some(b) = building.as_ref() {
            let reply = match b.result.try_recv() {
                Ok(built) => switch.filter_mut().finish_build(built, b.load),
                Err(mpsc::TryRecvError::Empty) => return Ok(true),
                Err(mpsc::TryRecvError::Disconnected) => {
                    "error\nthe ruleset build thread died; nothing changed".into()
                }
            };
            *building = None;
            if let Some(e) = reply.strip_prefix("error\n") {
                warn!("nft: {e}");
            }
            c.reply(&reply)?;
        }
        let msg = match c.recv() {
            Ok(Some(m)) => m,
            Ok(None) => {
                info!("control socket closed: exiting");
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                warn!("bad control message: {e}");
                c.reply(&format!("error\n{e}"))?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if msg.verb == "nft" {
            if let Some(job) = switch.filter_mut().build_job(&msg.args, &msg.body) {
                let load = msg.args.first().is_some_and(|a| a == "load");
                match start_build(job, load) {
                    Ok(b) => *building = Some(b),
                    Err(e) => c.reply(&format!(
                        "error\ncannot start the ruleset build thread ({e}); nothing changed"
                    ))?,
                }
                continue;
            }
        }
        if !handle(c, msg, switch, waiter)? {
            return Ok(false);
        }
    }
}

/// A ruleset being parsed and compiled on a helper thread (thousands of
/// rules take milliseconds: not on the forwarding path).
struct Building {
    result: mpsc::Receiver<BuildResult>,
    /// It is an `nft load` (counted in the filter's loads).
    load: bool,
}

type BuildResult = Result<std::sync::Arc<nft_filter::Ruleset>, nft_filter::Error>;

fn start_build(job: nft_filter::BuildJob, load: bool) -> io::Result<Building> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("nft-build".into())
        .spawn(move || {
            let _ = tx.send(job.run());
        })?;
    Ok(Building { result: rx, load })
}

/// Answer one control message. `Ok(false)`: time to exit (shutdown).
fn handle(
    c: &mut Control,
    msg: ControlMsg,
    switch: &mut Switch<Channel>,
    waiter: &Waiter,
) -> io::Result<bool> {
    match msg.verb.as_str() {
        "ping" => c.reply("ok")?,
        "stats" => {
            let w = waiter.stats();
            c.reply(&format!(
                "ok\n{}waiter_sleeps {}\nwaiter_yields {}\n",
                switch.report(),
                w.sleeps,
                w.yields
            ))?
        }
        "channel" => match channel_msg(switch, &msg.args, msg.fds) {
            Ok(()) => c.reply("ok")?,
            Err(e) => {
                warn!("{e}");
                c.reply(&format!("error\n{e}"))?
            }
        },
        "nft" => {
            let reply = switch.filter_mut().control(&msg.args, &msg.body);
            if let Some(e) = reply.strip_prefix("error\n") {
                warn!("nft {}: {e}", msg.args.join(" "));
            }
            c.reply(&reply)?
        }
        "shutdown" => {
            c.reply("ok")?;
            info!("shutdown requested");
            return Ok(false);
        }
        other => c.reply(&format!("error\nunknown verb '{other}'"))?,
    }
    Ok(true)
}

/// `channel <label> <side>` with memfd, wake_a, wake_b: replace or add a port.
fn channel_msg(
    switch: &mut Switch<Channel>,
    args: &[String],
    fds: Vec<rustix::fd::OwnedFd>,
) -> Result<(), String> {
    let [label, side] = args else {
        return Err(format!("channel: expected '<label> <side>', got {args:?}"));
    };
    let side = match side.as_str() {
        "A" => Side::A,
        "B" => Side::B,
        s => return Err(format!("channel {label}: side must be A or B, got '{s}'")),
    };
    let Ok::<[rustix::fd::OwnedFd; 3], _>([memfd, wake_a, wake_b]) = fds.try_into() else {
        return Err(format!(
            "channel {label}: expected 3 descriptors (memfd, wake_a, wake_b)"
        ));
    };
    attach(
        switch,
        label,
        side,
        ChannelFds {
            memfd,
            wake_a,
            wake_b,
        },
    )
}
