//! nic_drv: the NIC driver component.
//!
//! Moves Ethernet frames between a device and fragnet channels. The backend
//! is chosen by `<config backend="…">`:
//!
//! * `tap` ([`tap`]): one queue of a persistent (multi-queue) TAP device
//!   that `init` created; one process per queue (`FRAGNET_QUEUE`), one
//!   client channel each. The Linux host is the peer.
//! * `wire` ([`wire`]): a shared-memory cable, either between two clients in
//!   one run script, or (`listen`/`connect`) between two fragnet instances.
//!
//! Counters ([`counters`]) are reported by the `stats` control verb; see
//! README.md for the attributes and counter names.

mod counters;
mod pump;
mod tap;
mod wire;

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fragnet_host::{info, warn, ChannelSpec, Control, Env};
use packet_ring::linux::{Channel, ChannelFds, Waiter, Wake};
use packet_ring::Side;

/// The running backend.
enum Backend {
    Tap(tap::TapQueue),
    Cable(wire::Cable),
    Remote(wire::Remote),
}

impl Backend {
    fn poll(&mut self) -> usize {
        match self {
            Backend::Tap(t) => t.poll(),
            Backend::Cable(c) => c.poll(),
            Backend::Remote(r) => r.poll(),
        }
    }

    fn housekeeping(&mut self) {
        if let Backend::Remote(r) = self {
            r.housekeeping();
        }
    }

    fn report(&self) -> String {
        let mut out = String::new();
        match self {
            Backend::Tap(t) => {
                out.push_str("backend tap\n");
                t.report(&mut out)
            }
            Backend::Cable(c) => {
                out.push_str("backend wire\n");
                c.report(&mut out)
            }
            Backend::Remote(r) => {
                out.push_str("backend wire\n");
                r.report(&mut out)
            }
        }
        out
    }

    /// `channel <label> <side>`: replace a client channel (its peer restarted).
    fn replace(&mut self, label: &str, side: Side, fds: ChannelFds) -> Result<(), String> {
        if side != Side::A {
            return Err(format!(
                "channel {label}: nic_drv holds only side A channels"
            ));
        }
        let slot = match self {
            Backend::Tap(t) => Some(&mut t.nic),
            Backend::Remote(r) if r.client_label == label => Some(&mut r.client),
            Backend::Remote(_) => None,
            Backend::Cable(c) => {
                if c.labels[0] == label {
                    Some(&mut c.a)
                } else if c.labels[1] == label {
                    Some(&mut c.b)
                } else {
                    None
                }
            }
        };
        let Some(slot) = slot else {
            return Err(format!("channel {label}: not one of this driver's clients"));
        };
        let ch = Channel::attach(fds, side).map_err(|e| format!("attaching {label}: {e}"))?;
        *slot = Some(ch);
        info!("client channel '{label}' replaced: link up");
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

/// Attach a channel of the driver: a client of its Nic service
/// (`nic:<client>`, side A), or, for the wire, also its own Nic route
/// (`nic`, side B: e.g. a wire that is a client of one switch and serves
/// another).
fn port(spec: ChannelSpec, allow_route: bool) -> Result<(String, Channel), String> {
    let ok = match spec.side {
        Side::A => spec.label.starts_with("nic:"),
        Side::B => allow_route && spec.label == "nic",
    };
    if !ok {
        return Err(format!(
            "channel '{}' (side {:?}): expected 'nic:<client>' on side A{}",
            spec.label,
            spec.side,
            if allow_route {
                " or 'nic' on side B"
            } else {
                " (a TAP queue serves one client)"
            }
        ));
    }
    let ch = Channel::attach(spec.fds, spec.side)
        .map_err(|e| format!("attaching channel '{}': {e}", spec.label))?;
    Ok((spec.label, ch))
}

fn setup(env: &mut Env) -> Result<Backend, String> {
    let config = env.config().map_err(|e| e.to_string())?;
    let backend = config.require_attr("backend").map_err(|e| e.to_string())?;
    let known: &[&str] = match backend {
        "tap" => &["backend", "ifname", "queues", "host_ip", "mtu"],
        "wire" => &["backend", "listen", "connect"],
        _ => &["backend"],
    };
    if let Some((k, _)) = config
        .attrs
        .iter()
        .find(|(k, _)| !known.contains(&k.as_str()))
    {
        return Err(config
            .error(format!(
                "<config backend=\"{backend}\">: unknown attribute '{k}' (known: {})",
                known.join(", ")
            ))
            .to_string());
    }
    let mut channels = std::mem::take(&mut env.channels);
    let count = channels.len();
    match backend {
        "tap" => {
            let ifname = config.require_attr("ifname").map_err(|e| e.to_string())?;
            let queues: u32 = config.attr_or("queues", 1).map_err(|e| e.to_string())?;
            if count != 1 {
                return Err(format!(
                    "backend tap: one client channel per queue process, got {count} \
                     (route one client to each queue: <child name=\"…\" queue=\"i\"/>)"
                ));
            }
            let (_, nic) = port(channels.remove(0), false)?;
            let fd = fragnet_host::tap::open_queue(ifname, queues > 1)
                .map_err(|e| format!("backend tap: {e}"))?;
            info!(
                "tap {ifname} queue {} of {queues} attached",
                env.queue.unwrap_or(0)
            );
            Ok(Backend::Tap(tap::TapQueue::new(fd, nic)))
        }
        "wire" => {
            let listen = config.attr("listen");
            let connect = config.attr("connect");
            match (listen, connect) {
                (Some(_), Some(_)) => Err(
                    "backend wire: give either listen=\"path\" or connect=\"path\", not both"
                        .into(),
                ),
                (None, None) => {
                    if count != 2 {
                        return Err(format!(
                            "backend wire (cable): needs exactly two channels (clients or a \
                             route), got {count}"
                        ));
                    }
                    let (la, a) = port(channels.remove(0), true)?;
                    let (lb, b) = port(channels.remove(0), true)?;
                    info!("wire: cable between '{la}' and '{lb}'");
                    Ok(Backend::Cable(wire::Cable {
                        a: Some(a),
                        b: Some(b),
                        labels: [la, lb],
                        a_to_b: Default::default(),
                        b_to_a: Default::default(),
                    }))
                }
                (listen, connect) => {
                    if count != 1 {
                        return Err(format!(
                            "backend wire (listen/connect): needs exactly one client, got {count}"
                        ));
                    }
                    let (label, ch) = port(channels.remove(0), true)?;
                    if let Some(p) = listen {
                        let path = env.resolve(p);
                        wire::Remote::listen(&path, ch, label)
                            .map(Backend::Remote)
                            .map_err(|e| format!("backend wire listen=\"{p}\": {e}"))
                    } else {
                        let p = connect.unwrap_or_default();
                        Ok(Backend::Remote(wire::Remote::connect(
                            &env.resolve(p),
                            ch,
                            label,
                        )))
                    }
                }
            }
        }
        other => Err(format!(
            "<config backend=\"{other}\">: unknown backend (known: tap, wire)"
        )),
    }
}

fn run() -> Result<(), String> {
    let mut env = Env::from_env().map_err(|e| e.to_string())?;
    fragnet_host::log::init(&env.name);
    let mut backend = setup(&mut env)?;
    let mut control = env.control.take();
    if let Some(c) = &control {
        c.set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
    }
    let mut waiter = Waiter::new();
    let mut last_housekeeping = Instant::now();
    backend.housekeeping();
    loop {
        let moved = backend.poll();
        let due = last_housekeeping.elapsed() >= Duration::from_millis(10);
        // Wait on the channels plus the device or socket and the control socket.
        let control_fd = control.as_ref().map(|c| c.fd());
        let wake = match &mut backend {
            Backend::Tap(t) => t.wait(&mut waiter, moved > 0, control_fd),
            Backend::Cable(c) => {
                let chans = c.a.as_mut().into_iter().chain(c.b.as_mut());
                waiter.wait(
                    moved > 0,
                    chans,
                    control_fd.as_slice(),
                    Some(Duration::from_secs(1)),
                )
            }
            Backend::Remote(r) => r.wait(&mut waiter, moved > 0, control_fd),
        }
        .map_err(|e| format!("waiting: {e}"))?;
        if due || matches!(wake, Wake::Woken | Wake::TimedOut) {
            last_housekeeping = Instant::now();
            backend.housekeeping();
            if let Some(c) = control.as_mut() {
                if !serve_control(c, &mut backend).map_err(|e| format!("control socket: {e}"))? {
                    return Ok(());
                }
            }
        }
    }
}

/// Answer every waiting control message; `Ok(false)` means exit.
fn serve_control(c: &mut Control, backend: &mut Backend) -> io::Result<bool> {
    loop {
        let msg = match c.recv() {
            Ok(Some(m)) => m,
            Ok(None) => {
                info!("control socket closed: exiting");
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                c.reply(&format!("error\n{e}"))?;
                continue;
            }
            Err(e) => return Err(e),
        };
        match msg.verb.as_str() {
            "ping" => c.reply("ok")?,
            "stats" => c.reply(&format!("ok\n{}", backend.report()))?,
            "channel" => {
                let result = match (&msg.args[..], <[_; 3]>::try_from(msg.fds)) {
                    ([label, side], Ok([memfd, wake_a, wake_b])) => {
                        let side = if side == "A" { Side::A } else { Side::B };
                        backend.replace(
                            label,
                            side,
                            ChannelFds {
                                memfd,
                                wake_a,
                                wake_b,
                            },
                        )
                    }
                    _ => Err("channel: expected '<label> <side>' with 3 descriptors".to_string()),
                };
                match result {
                    Ok(()) => c.reply("ok")?,
                    Err(e) => {
                        warn!("{e}");
                        c.reply(&format!("error\n{e}"))?
                    }
                }
            }
            "nft" => c.reply("error\nnot supported: nic_drv has no filter")?,
            "shutdown" => {
                c.reply("ok")?;
                return Ok(false);
            }
            other => c.reply(&format!("error\nunknown verb '{other}'"))?,
        }
    }
}
