//! `fragnet run`: start the plan, supervise, serve the control socket.
//!
//! One thread, one `poll` loop over a signalfd (SIGCHLD, SIGINT, SIGTERM,
//! SIGHUP), the listening control socket and its client connections, with
//! a one-second tick for restarts and for watching the run script and rule
//! files.
//!
//! Channels follow processes: when a component (re)starts, every one of
//! its links gets a fresh channel; the peer, if running, receives its new
//! end as `channel <label> <side>` + 3 fds on its control socket and drops
//! the old one (link down, link up). An end whose peer is not running yet
//! waits in the link until that peer starts.

use crate::rules::{self, Ruleset};
use crate::script::{Checks, Plan, Script};
use crate::spawn::{spawn, SpawnSpec};
use fragnet_host::{error, info, warn, Control};
use packet_ring::linux::ChannelFds;
use packet_ring::Side;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fd::{AsFd, FromRawFd, OwnedFd};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A component that ran at least this long had a real run: it is restarted
/// at once and its crash counter starts over.
const FAST_CRASH: Duration = Duration::from_secs(10);
/// Consecutive fast crashes after which a component is given up.
const MAX_FAST_CRASHES: u32 = 5;
/// Restart delay after a fast crash; doubles per consecutive one, up to 5 s.
const BACKOFF: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long init waits for a component's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long components get to exit after `shutdown`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    Running,
    /// Waiting to be restarted at the given time.
    Backoff(Instant),
    /// Crashed too often; not restarted.
    Failed,
}

struct Proc {
    child: Option<Child>,
    control: Option<Control>,
    state: State,
    started: Instant,
    restarts: u32,
    fast_crashes: u32,
    last_exit: Option<String>,
    /// Asked to stop for a restart with a new config: its exit is not a
    /// crash; SIGKILL if it is still there at this time.
    stopping: Option<Instant>,
    /// An `attach="manual"` start: no child; `control` is the connection
    /// of the attached process (if any), `held` its channel ends while
    /// nobody is attached.
    manual: bool,
    held: Vec<(String, Side, ChannelFds)>,
    /// Pid of the attached process (SO_PEERCRED).
    attached_pid: Option<u32>,
}

/// Destination steering of one multi-queue TAP device.
struct Steering {
    ifname: String,
    /// Driver instance -> the address of its queue's client.
    ips: HashMap<usize, std::net::Ipv4Addr>,
    /// Driver instances in the kernel's queue order.
    slots: Vec<usize>,
}

struct LinkState {
    /// An end waiting for the side that is not running, whose peer (running)
    /// holds the other end of the same channel.
    pending: Option<(Side, ChannelFds)>,
}

struct Client {
    ctl: Control,
    /// The peer's uid (SO_PEERCRED), for `attach`.
    uid: Option<u32>,
    pid: Option<u32>,
    /// Set for a peer whose uid is not allowed: every request it sends is
    /// answered with this refusal. (Answering per request rather than at
    /// accept means no request is left unread when the socket closes, which
    /// would reset the connection before the client reads the refusal.)
    refused: Option<String>,
}

/// What the control loop should do after a request.
pub struct Supervisor {
    script: Script,
    script_text: String,
    plan: Plan,
    procs: Vec<Proc>,
    links: Vec<LinkState>,
    taps: Vec<String>,
    listener: Option<OwnedFd>,
    socket_path: Option<PathBuf>,
    clients: Vec<Client>,
    sigfd: OwnedFd,
    /// Ruleset last loaded, per start index.
    rules_sent: HashMap<usize, Ruleset>,
    /// Steered TAP devices, per driver start index.
    steering: HashMap<usize, Steering>,
    cleaned: bool,
}

fn side_str(s: Side) -> &'static str {
    match s {
        Side::A => "A",
        Side::B => "B",
    }
}

/// Blocks the signals init handles and returns a signalfd for them.
fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: plain libc calls on a local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Drains the signalfd; returns the signal numbers seen.
fn read_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut out = Vec::new();
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>() * 8];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        for chunk in buf[..n].chunks_exact(size) {
            // ssi_signo is the first u32 of signalfd_siginfo.
            out.push(u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as i32);
        }
    }
    out
}

/// Binds the control socket, refusing to take over one a live fragnet serves.
fn bind_control(path: &Path) -> io::Result<OwnedFd> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("control socket {}: {what}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ctx("creating its directory", e))?;
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| ctx("bad path", e.into()))?;
    if path.exists() {
        let probe = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)?;
        if rustix::net::connect(&probe, &addr).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "control socket {} is in use by a running fragnet (stop it, or set <config control=\"…\">)",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| ctx("removing a stale socket", e))?;
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::bind(&fd, &addr).map_err(|e| ctx("bind", e.into()))?;
    // Anyone may connect; SO_PEERCRED decides who is served, and the others
    // get a refusal they can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| ctx("chmod", e))?;
    rustix::net::listen(&fd, 16).map_err(|e| ctx("listen", e.into()))?;
    Ok(fd)
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running `ip {}`: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Supervisor {
    /// Validates, binds the control socket, creates TAP devices and starts
    /// every component. On error, everything created is removed again.
    pub fn start(script_path: &Path) -> Result<Supervisor, String> {
        let checks = Checks::for_this_process();
        let script = Script::load(script_path, &checks).map_err(|e| e.to_string())?;
        let script_text = std::fs::read_to_string(script_path).unwrap_or_default();
        let plan = Plan::new(&script);
        let sigfd = signal_fd().map_err(|e| format!("signalfd: {e}"))?;
        let procs = plan
            .instances
            .iter()
            .map(|inst| Proc {
                manual: script.starts[inst.start].manual,
                held: Vec::new(),
                attached_pid: None,
                child: None,
                control: None,
                state: State::Backoff(Instant::now()),
                started: Instant::now(),
                restarts: 0,
                fast_crashes: 0,
                last_exit: None,
                stopping: None,
            })
            .collect();
        let links = plan
            .links
            .iter()
            .map(|_| LinkState { pending: None })
            .collect();
        let mut sup = Supervisor {
            script,
            script_text,
            plan,
            procs,
            links,
            taps: Vec::new(),
            listener: None,
            socket_path: None,
            clients: Vec::new(),
            sigfd,
            rules_sent: HashMap::new(),
            steering: HashMap::new(),
            cleaned: false,
        };
        // From here on, `sup` removes what it created when dropped.
        let path = sup.script.control_path.clone();
        sup.listener = Some(bind_control(&path).map_err(|e| e.to_string())?);
        sup.socket_path = Some(path);
        sup.create_taps()?;
        sup.plan_steering();
        for i in 0..sup.plan.instances.len() {
            sup.spawn_instance(i)?;
            // The ruleset is the first request a component gets.
            sup.send_rules(i);
            sup.queue_attached(i);
        }
        info!(
            "running {} ({} processes, {} channels); control socket {}",
            sup.script.path.display(),
            sup.plan.instances.len(),
            sup.plan.links.len(),
            sup.script.control_path.display()
        );
        Ok(sup)
    }

    fn create_taps(&mut self) -> Result<(), String> {
        let taps: Vec<_> = self
            .script
            .starts
            .iter()
            .filter_map(|s| {
                let at = format!(
                    "{}:{}:{}: start \"{}\"",
                    self.script.path.display(),
                    s.line,
                    s.col,
                    s.name
                );
                s.tap.clone().map(|t| (t, at, s.user))
            })
            .collect();
        for (t, at, user) in taps {
            let fail = |e: io::Error| format!("{at}: {e}");
            // A driver started with user= owns the device, so it can attach
            // its queue without privileges.
            fragnet_host::tap::create_persistent_for(&t.ifname, t.queues > 1, user)
                .map_err(fail)?;
            self.taps.push(t.ifname.clone());
            if let Some(mtu) = t.mtu {
                run_ip(&["link", "set", "dev", &t.ifname, "mtu", &mtu.to_string()])
                    .map_err(fail)?;
            }
            if let Some(ip) = &t.host_ip {
                run_ip(&["addr", "add", ip, "dev", &t.ifname]).map_err(fail)?;
            }
            run_ip(&["link", "set", "dev", &t.ifname, "up"]).map_err(fail)?;
            info!(
                "created TAP device {} ({} queue{}{})",
                t.ifname,
                t.queues,
                if t.queues == 1 { "" } else { "s" },
                t.host_ip
                    .as_deref()
                    .map(|ip| format!(", host side {ip}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// For a multi-queue TAP whose queue clients each have their own
    /// `ip=`, frames are steered by destination address to that client's
    /// queue (see `fragnet_host::tap::steer_by_ipv4`); otherwise the kernel
    /// spreads flows over the queues by hash. This finds those devices; the
    /// program follows the queues as they attach (`queue_attached`) and go
    /// (`queue_detached`).
    fn plan_steering(&mut self) {
        for (si, s) in self.script.starts.iter().enumerate() {
            let Some(t) = &s.tap else { continue };
            if t.queues < 2 {
                continue;
            }
            let mut ips: HashMap<usize, std::net::Ipv4Addr> = HashMap::new();
            for link in &self.plan.links {
                if self.plan.instances[link.provider].start != si {
                    continue;
                }
                let client = &self.script.starts[self.plan.instances[link.client].start];
                let ip = fragnet_host::ConfigNode::parse(&client.config_xml)
                    .ok()
                    .and_then(|c| c.attr("ip").map(str::to_string))
                    .and_then(|ip| {
                        ip.split('/')
                            .next()?
                            .trim()
                            .parse::<std::net::Ipv4Addr>()
                            .ok()
                    });
                match ip {
                    Some(ip) if !ips.values().any(|a| *a == ip) => {
                        ips.insert(link.provider, ip);
                    }
                    _ => {
                        ips.clear();
                        break;
                    }
                }
            }
            if ips.len() != t.queues as usize {
                info!(
                    "TAP device {}: the kernel spreads flows over its {} queues (queue clients without distinct ip=)",
                    t.ifname, t.queues
                );
                continue;
            }
            self.steering.insert(
                si,
                Steering {
                    ifname: t.ifname.clone(),
                    ips,
                    slots: Vec::new(),
                },
            );
        }
    }

    /// Waits until driver queue `i` has attached (it answers `ping` once
    /// its setup is done), records its kernel queue slot and re-steers.
    fn queue_attached(&mut self, i: usize) {
        let s = self.plan.instances[i].start;
        if !self.steering.contains_key(&s) {
            return;
        }
        match self.request(i, "ping", &[]) {
            Ok(r) if r.is_ok() => {}
            Ok(r) => warn!("{}: ping: {}", self.plan.instances[i].name, r.body.trim()),
            Err(e) => {
                warn!("{e}: its TAP queue is not steered");
                return;
            }
        }
        if let Some(st) = self.steering.get_mut(&s) {
            // The kernel numbers queues in the order they attach.
            st.slots.push(i);
        }
        self.apply_steering(s);
    }

    /// Driver queue `i` is gone: the kernel moved its last queue into the
    /// freed slot (as `Vec::swap_remove` does); re-steer.
    fn queue_detached(&mut self, i: usize) {
        let s = self.plan.instances[i].start;
        let Some(st) = self.steering.get_mut(&s) else {
            return;
        };
        if let Some(k) = st.slots.iter().position(|&x| x == i) {
            st.slots.swap_remove(k);
            self.apply_steering(s);
        }
    }

    fn apply_steering(&self, s: usize) {
        let Some(st) = self.steering.get(&s) else {
            return;
        };
        let map: Vec<(std::net::Ipv4Addr, u16)> = st
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, inst)| st.ips.get(inst).map(|ip| (*ip, slot as u16)))
            .collect();
        match fragnet_host::tap::steer_by_ipv4(&st.ifname, &map) {
            Ok(()) => info!(
                "TAP device {}: frames steered by destination: {}",
                st.ifname,
                map.iter()
                    .map(|(ip, q)| {
                        format!(
                            "{ip} -> {} (queue {q})",
                            self.plan.instances[st.slots[*q as usize]].name
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => error!("{e}"),
        }
    }

    fn running(&self, i: usize) -> bool {
        self.procs[i].state == State::Running
    }

    /// Starts instance `i` with fresh (or waiting) channel ends.
    fn spawn_instance(&mut self, i: usize) -> Result<(), String> {
        let inst = self.plan.instances[i].clone();
        let start = &self.script.starts[inst.start];
        let (ctl, child_ctl) = Control::pair().map_err(|e| format!("socketpair: {e}"))?;
        ctl.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut channels = Vec::new();
        let mut notify: Vec<(usize, String, Side, ChannelFds)> = Vec::new();
        for (li, link) in self.plan.links.iter().enumerate() {
            let (mine, peer, my_label, peer_label) = if link.provider == i {
                (
                    Side::A,
                    link.client,
                    &link.provider_label,
                    &link.client_label,
                )
            } else if link.client == i {
                (
                    Side::B,
                    link.provider,
                    &link.client_label,
                    &link.provider_label,
                )
            } else {
                continue;
            };
            let waiting = match self.links[li].pending.take() {
                Some((side, fds)) if side == mine => Some(fds),
                _ => None,
            };
            let fds = match waiting {
                Some(f) => f,
                None => {
                    let name = format!(
                        "fragnet:{}:{}",
                        self.plan.instances[link.provider].name, link.provider_label
                    );
                    let fresh = packet_ring::linux::create(&packet_ring::Config::default(), &name)
                        .map_err(|e| format!("creating channel {name}: {e}"))?;
                    let other = fresh
                        .try_clone()
                        .map_err(|e| format!("duplicating channel fds: {e}"))?;
                    if self.procs[peer].state == State::Running {
                        notify.push((peer, peer_label.clone(), mine.peer(), other));
                    } else {
                        self.links[li].pending = Some((mine.peer(), other));
                    }
                    fresh
                }
            };
            channels.push((my_label.clone(), mine, fds));
        }
        if start.manual {
            // Nobody runs it: init holds its ends until a process attaches.
            let p = &mut self.procs[i];
            p.held = channels;
            p.control = None;
            p.attached_pid = None;
            p.state = State::Running;
            p.started = Instant::now();
            info!(
                "{}: waiting for a process to attach (attach=\"manual\")",
                inst.name
            );
            for (peer, label, side, fds) in notify {
                self.send_channel(peer, &label, side, fds);
            }
            return Ok(());
        }
        let binary = start
            .binary_path
            .clone()
            .ok_or_else(|| format!("no binary for {}", inst.name))?;
        let child = spawn(SpawnSpec {
            name: &inst.name,
            binary: &binary,
            config_xml: &start.config_xml,
            script_dir: &self.script.dir,
            queue: inst.queue,
            cpu: start.cpu,
            user: start.user,
            control: child_ctl,
            channels,
        })
        .map_err(|e| e.to_string())?;
        info!(
            "started {} (pid {}{})",
            inst.name,
            child.id(),
            start.cpu.map(|c| format!(", cpu {c}")).unwrap_or_default()
        );
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.control = Some(ctl);
        p.state = State::Running;
        p.started = Instant::now();
        for (peer, label, side, fds) in notify {
            self.send_channel(peer, &label, side, fds);
        }
        Ok(())
    }

    fn send_channel(&mut self, peer: usize, label: &str, side: Side, fds: ChannelFds) {
        let name = self.plan.instances[peer].name.clone();
        if self.procs[peer].manual {
            if self.procs[peer].control.is_none() {
                // Nobody attached: the fresh end waits for the next attach.
                let held = &mut self.procs[peer].held;
                held.retain(|(l, _, _)| l != label);
                held.push((label.to_string(), side, fds));
                return;
            }
            // The attached process cannot take a new channel: its
            // attachment ends (its connection closes, the socket library
            // exits) and the start gets fresh channels for the next attach.
            // `fds` is the fresh end for this link (its peer, starting
            // now, holds the other): it waits in the link, so `detach`
            // gives the start this end and fresh channels only for its
            // other links (the starting peer gets no `channel` message
            // before its ruleset).
            warn!("{name}: the peer of {label} restarted; detaching the attached process");
            let li = self.plan.links.iter().position(|l| {
                (l.client == peer && l.client_label == label)
                    || (l.provider == peer && l.provider_label == label)
            });
            if let Some(li) = li {
                self.links[li].pending = Some((side, fds));
            }
            self.detach(peer, &format!("the peer of {label} restarted"));
            return;
        }
        let msg = format!("channel {label} {}", side_str(side));
        let borrowed = [fds.memfd.as_fd(), fds.wake_a.as_fd(), fds.wake_b.as_fd()];
        match self.request(peer, &msg, &borrowed) {
            Ok(r) if r.is_ok() => info!("{name}: new channel {label} (link re-established)"),
            Ok(r) => warn!("{name}: refused `{msg}`: {}", r.body.trim()),
            Err(e) => warn!("{name}: `{msg}` not acknowledged: {e}"),
        }
    }

    /// The process attached to manual start `i` is gone (or must go): drop
    /// its connection and give the start fresh channels (each running peer
    /// gets its new end as `channel <label> <side>`, dropping the old one).
    fn detach(&mut self, i: usize, why: &str) {
        let p = &mut self.procs[i];
        p.control = None;
        if let Some(pid) = p.attached_pid.take() {
            info!(
                "{}: attached process (pid {pid}) detached ({why})",
                self.plan.instances[i].name
            );
        }
        if let Err(e) = self.spawn_instance(i) {
            error!("{}: new channels: {e}", self.plan.instances[i].name);
        }
    }

    /// `attach NAME` from control client `c`: admits the peer to manual
    /// start NAME and hands it the start's channel ends. `Ok(reply)` is a
    /// refusal to send; `Err(())` means attached (the connection now
    /// belongs to the start).
    fn attach(&mut self, c: usize, name: &str) -> Result<String, ()> {
        let client = &self.clients[c];
        let Some(uid) = client.uid else {
            return Ok("error\npermission denied: no peer credentials".into());
        };
        let globally_allowed = self.script.allow_uids.contains(&uid);
        let manual_names = || {
            self.script
                .starts
                .iter()
                .filter(|s| s.manual)
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(i) = self
            .plan
            .instances
            .iter()
            .position(|inst| inst.name == name)
        else {
            return Ok(if globally_allowed {
                format!(
                    "error\nattach: no start named \"{name}\" (starts that allow attaching: {})",
                    manual_names()
                )
            } else {
                format!("error\nattach: no start named \"{name}\"")
            });
        };
        let start = &self.script.starts[self.plan.instances[i].start];
        if !start.manual {
            return Ok(format!(
                "error\nattach: start \"{name}\" is not attachable: init runs it (only attach=\"manual\" starts take a process started by hand)"
            ));
        }
        let allowed = start
            .attach_uids
            .as_ref()
            .unwrap_or(&self.script.allow_uids);
        if !allowed.contains(&uid) {
            warn!("{name}: refused attach from uid {uid}");
            return Ok(format!(
                "error\npermission denied: uid {uid} may not attach to \"{name}\" (allowed uids: {})",
                allowed
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.procs[i].control.is_some() {
            return Ok(format!(
                "error\nattach: \"{name}\" is already attached (pid {})",
                self.procs[i]
                    .attached_pid
                    .map_or("?".into(), |p| p.to_string())
            ));
        }
        let held = std::mem::take(&mut self.procs[i].held);
        let mut text = String::from("ok");
        let mut fds = Vec::new();
        for (label, side, f) in &held {
            text.push_str(&format!("\n{label} {}", side_str(*side)));
            fds.extend([f.memfd.as_fd(), f.wake_a.as_fd(), f.wake_b.as_fd()]);
        }
        let client = &self.clients[c];
        if let Err(e) = client.ctl.send_with_fds(&text, &fds) {
            warn!("{name}: handing over channels to the attaching process: {e}");
            drop(fds);
            self.procs[i].held = held;
            return Ok(format!("error\n{e}"));
        }
        drop(fds);
        // Handed over: init keeps none of them.
        drop(held);
        let conn = match client.ctl.fd().try_clone_to_owned() {
            Ok(fd) => Control::from_fd(fd),
            Err(e) => {
                error!("{name}: keeping the attach connection: {e}");
                self.detach(i, "connection lost");
                return Err(());
            }
        };
        let pid = client.pid;
        info!(
            "{name}: process {} (uid {uid}) attached",
            pid.map_or("?".into(), |p| p.to_string())
        );
        let p = &mut self.procs[i];
        p.control = Some(conn);
        p.attached_pid = pid;
        p.started = Instant::now();
        Err(())
    }

    /// Readable connection of the process attached to manual start `i`:
    /// end of file or an error means it is gone; stray messages are
    /// dropped (bounded).
    fn check_attached(&mut self, i: usize) {
        let Some(ctl) = self.procs[i].control.as_mut() else {
            return;
        };
        for _ in 0..64 {
            match ctl.recv() {
                Ok(Some(_)) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
                Ok(None) => {
                    self.detach(i, "connection closed");
                    return;
                }
                Err(e) => {
                    self.detach(i, &format!("connection: {e}"));
                    return;
                }
            }
        }
    }

    /// Sends one request to a running instance and waits for its reply.
    fn request(
        &mut self,
        i: usize,
        text: &str,
        fds: &[rustix::fd::BorrowedFd<'_>],
    ) -> Result<fragnet_host::ControlMsg, String> {
        let name = &self.plan.instances[i].name;
        let Some(ctl) = self.procs[i].control.as_mut() else {
            if self.procs[i].manual {
                return Err(format!("no process is attached to {name}"));
            }
            return Err(format!("{name} is not running"));
        };
        // Drop replies to earlier requests that timed out (bounded: a
        // component cannot keep init here by chattering).
        for _ in 0..64 {
            if !matches!(ctl.recv(), Ok(Some(_))) {
                break;
            }
        }
        ctl.send_with_fds(text, fds)
            .map_err(|e| format!("sending to {name}: {e}"))?;
        match ctl.recv_timeout(REPLY_TIMEOUT) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(format!("{name} closed its control socket")),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }

    /// Sends the start's ruleset to its running instances if it changed
    /// since it was last sent.
    fn load_rules(&mut self, s: usize) {
        let start = &self.script.starts[s];
        if start.nftables.is_empty() {
            return;
        }
        let rs = match rules::read(&start.nftables) {
            Ok(rs) => rs,
            Err(e) => {
                error!("{}: {e}", start.name);
                return;
            }
        };
        if self.rules_sent.get(&s) == Some(&rs) {
            return;
        }
        let what = rules::describe(&start.nftables);
        let insts: Vec<usize> = (0..self.plan.instances.len())
            .filter(|&i| self.plan.instances[i].start == s && self.running(i))
            .collect();
        for i in insts {
            let name = self.plan.instances[i].name.clone();
            match self.request(i, &format!("nft load\n{}", rs.text), &[]) {
                Ok(r) if r.is_ok() => info!("{name}: loaded ruleset {what}"),
                Ok(r) if r.body.contains("not supported") => {
                    warn!("{name}: does not support nft rules ({what} not loaded)")
                }
                Ok(r) => error!("{name}: ruleset rejected: {}", rs.locate(&r.body)),
                Err(e) => error!("{name}: loading {what}: {e}"),
            }
        }
        self.rules_sent.insert(s, rs);
    }

    /// Handles exits: logs them and schedules restarts.
    fn reap(&mut self, shutting_down: bool) {
        for i in 0..self.procs.len() {
            let status = match self.procs[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(st))) => st,
                _ => continue,
            };
            let name = self.plan.instances[i].name.clone();
            let p = &mut self.procs[i];
            let pid = p.child.as_ref().map_or(0, |c| c.id());
            p.child = None;
            p.control = None;
            p.last_exit = Some(status.to_string());
            for (li, link) in self.plan.links.iter().enumerate() {
                if link.provider == i || link.client == i {
                    // The other end of a waiting channel was this process's.
                    self.links[li].pending = None;
                }
            }
            if shutting_down {
                p.state = State::Failed;
                continue;
            }
            self.queue_detached(i);
            let p = &mut self.procs[i];
            if p.stopping.take().is_some() {
                p.state = State::Backoff(Instant::now());
                p.fast_crashes = 0;
                info!("{name} (pid {pid}) stopped ({status}); starting it with its new config");
                continue;
            }
            let ran = p.started.elapsed();
            // A crash after a real run is restarted at once; crashes soon
            // after starting back off, and too many in a row are given up.
            p.fast_crashes = if ran < FAST_CRASH {
                p.fast_crashes + 1
            } else {
                0
            };
            if p.fast_crashes > MAX_FAST_CRASHES {
                p.state = State::Failed;
                error!(
                    "{name} (pid {pid}) exited ({status}) — {} times in a row within {}s of starting; giving up on it",
                    p.fast_crashes,
                    FAST_CRASH.as_secs()
                );
                continue;
            }
            let delay = match p.fast_crashes {
                0 => Duration::ZERO,
                n => BACKOFF
                    .saturating_mul(1 << (n - 1).min(10))
                    .min(BACKOFF_MAX),
            };
            p.state = State::Backoff(Instant::now() + delay);
            warn!(
                "{name} (pid {pid}) exited ({status}) after {:.1}s; restarting in {} ms",
                ran.as_secs_f64(),
                delay.as_millis()
            );
        }
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.procs.len() {
            if let State::Backoff(at) = self.procs[i].state {
                if at <= now {
                    self.procs[i].restarts += 1;
                    match self.spawn_instance(i) {
                        // A fresh process has no rules: send them again
                        // (to this instance; the others have them).
                        Ok(()) => {
                            self.send_rules(i);
                            self.queue_attached(i);
                        }
                        Err(e) => {
                            error!("restarting {}: {e}", self.plan.instances[i].name);
                            let p = &mut self.procs[i];
                            p.fast_crashes += 1;
                            p.state = if p.fast_crashes > MAX_FAST_CRASHES {
                                State::Failed
                            } else {
                                State::Backoff(now + BACKOFF_MAX)
                            };
                        }
                    }
                }
            }
        }
    }

    /// Sends instance `i` its start's ruleset (the one last loaded, or read
    /// now).
    fn send_rules(&mut self, i: usize) {
        let s = self.plan.instances[i].start;
        let start = &self.script.starts[s];
        if start.nftables.is_empty() {
            return;
        }
        let rs = match self.rules_sent.entry(s) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(v) => match rules::read(&start.nftables) {
                Ok(rs) => v.insert(rs).clone(),
                Err(e) => {
                    error!("{}: {e}", start.name);
                    return;
                }
            },
        };
        let what = rules::describe(&start.nftables);
        let name = self.plan.instances[i].name.clone();
        match self.request(i, &format!("nft load\n{}", rs.text), &[]) {
            Ok(r) if r.is_ok() => info!("{name}: loaded ruleset {what}"),
            Ok(r) if r.body.contains("not supported") => {
                warn!("{name}: does not support nft rules ({what} not loaded)")
            }
            Ok(r) => error!("{name}: ruleset rejected: {}", rs.locate(&r.body)),
            Err(e) => error!("{name}: reloading rules: {e}"),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.procs
            .iter()
            .filter_map(|p| match p.state {
                State::Backoff(at) => Some(at),
                _ => p.stopping,
            })
            .min()
    }

    /// Restarts the instances of start `s` (its config changed): asks them
    /// to shut down; `reap` starts them again, `kill_overdue` helps.
    fn restart_start(&mut self, s: usize) {
        for i in 0..self.procs.len() {
            if self.plan.instances[i].start != s {
                continue;
            }
            let p = &mut self.procs[i];
            match p.state {
                State::Running => {
                    p.stopping = Some(Instant::now() + SHUTDOWN_GRACE);
                    if let Some(ctl) = &p.control {
                        let _ = ctl.send("shutdown");
                    }
                }
                // A given-up component gets another chance with a new config.
                State::Failed => {
                    p.fast_crashes = 0;
                    p.state = State::Backoff(Instant::now());
                }
                State::Backoff(_) => {}
            }
        }
    }

    /// SIGKILLs components that did not stop in time after `shutdown`.
    fn kill_overdue(&mut self) {
        let now = Instant::now();
        for (i, p) in self.procs.iter_mut().enumerate() {
            if p.stopping.is_some_and(|at| at <= now) {
                if let Some(c) = p.child.as_mut() {
                    warn!(
                        "{} (pid {}) did not stop after shutdown; killing it",
                        self.plan.instances[i].name,
                        c.id()
                    );
                    let _ = c.kill();
                }
                // Its exit (SIGCHLD) still counts as a requested stop.
                p.stopping = Some(now + Duration::from_secs(3600));
            }
        }
    }

    /// Re-reads the run script and the rule files; applies changed rules.
    fn watch(&mut self) {
        let text = std::fs::read_to_string(&self.script.path).unwrap_or_default();
        if !text.is_empty() && text != self.script_text {
            self.script_text = text.clone();
            self.reload_script(&text);
        }
        for s in 0..self.script.starts.len() {
            self.load_rules(s);
        }
    }

    fn reload_script(&mut self, text: &str) {
        let mut checks = Checks::for_this_process();
        checks.tap_absent = false;
        let new = match Script::parse(&self.script.path, text, &checks) {
            Ok(s) => s,
            Err(e) => {
                error!("run script changed but is invalid; keeping the running setup:\n{e}");
                return;
            }
        };
        info!("run script {} changed", self.script.path.display());
        let mut ignored = Vec::new();
        let mut restart = Vec::new();
        for (i, old) in self.script.starts.iter_mut().enumerate() {
            let Some(n) = new.start(&old.name) else {
                ignored.push(format!("{} (removed)", old.name));
                continue;
            };
            if n.nftables != old.nftables {
                old.nftables = n.nftables.clone();
                self.rules_sent.remove(&i);
            }
            if shape(n) != shape(old) {
                ignored.push(old.name.clone());
            } else if strip_nftables(&n.config_xml) != strip_nftables(&old.config_xml) {
                if old.tap.is_some() {
                    ignored.push(format!("{} (TAP device settings)", old.name));
                } else {
                    info!("{}: <config> changed; restarting it", old.name);
                    old.config_xml = n.config_xml.clone();
                    restart.push(i);
                }
            }
        }
        for s in restart {
            self.restart_start(s);
        }
        for n in &new.starts {
            if self.script.start(&n.name).is_none() {
                ignored.push(format!("{} (added)", n.name));
            }
        }
        if !ignored.is_empty() {
            warn!(
                "only <config> changes apply while running; restart fragnet to apply the changes to: {}",
                ignored.join(", ")
            );
        }
    }

    // --- control socket -------------------------------------------------

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        while let Ok(fd) = rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            let ctl = Control::from_fd(fd);
            // Replies such as `list ruleset` of a large ruleset are one
            // datagram too.
            ctl.make_room();
            let cred = rustix::net::sockopt::socket_peercred(ctl.fd());
            let pid = cred
                .as_ref()
                .ok()
                .map(|c| c.pid.as_raw_nonzero().get() as u32);
            let uid = cred.map(|c| c.uid.as_raw());
            let refused = match uid {
                Ok(uid) if self.script.allow_uids.contains(&uid) => None,
                Ok(uid) => {
                    warn!("refused control connection from uid {uid}");
                    Some(format!(
                        "error\npermission denied: uid {uid} may not control this fragnet (allowed uids: {})",
                        self.script
                            .allow_uids
                            .iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
                Err(e) => {
                    warn!("control connection without credentials: {e}");
                    Some(format!(
                        "error\npermission denied: no peer credentials ({e})"
                    ))
                }
            };
            let _ = ctl.set_nonblocking(true);
            self.clients.push(Client {
                ctl,
                uid: uid.ok(),
                pid,
                refused,
            });
        }
    }

    fn serve_client(&mut self, c: usize) -> bool {
        let msg = match self.clients[c].ctl.recv() {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                let reply = match &self.clients[c].refused {
                    Some(refusal) => refusal.clone(),
                    None => format!("error\n{e}"),
                };
                let _ = self.clients[c].ctl.reply(&reply);
                return true;
            }
        };
        if msg.verb == "attach" {
            // Decided per start (its allow_uids), not by `refused`.
            let reply = match msg.args.as_slice() {
                [name] => match self.attach(c, &name.clone()) {
                    Ok(refusal) => refusal,
                    // Attached: the connection now belongs to the start.
                    Err(()) => return false,
                },
                _ => "error\nusage: attach START_NAME".into(),
            };
            let _ = self.clients[c].ctl.reply(&reply);
            return true;
        }
        let reply = match &self.clients[c].refused {
            Some(refusal) => refusal.clone(),
            None => self.handle(msg),
        };
        let _ = self.clients[c].ctl.reply(&reply);
        true
    }

    /// Instances named by `target` (an instance name, or a start name for
    /// all of its instances).
    fn targets(&self, target: &str) -> Result<Vec<usize>, String> {
        let exact: Vec<usize> = (0..self.plan.instances.len())
            .filter(|&i| self.plan.instances[i].name == target)
            .collect();
        if !exact.is_empty() {
            return Ok(exact);
        }
        let by_start: Vec<usize> = (0..self.plan.instances.len())
            .filter(|&i| self.script.starts[self.plan.instances[i].start].name == target)
            .collect();
        if by_start.is_empty() {
            return Err(format!(
                "no component named \"{target}\" (running: {})",
                self.plan
                    .instances
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(by_start)
    }

    fn forward(&mut self, target: &str, text: &str) -> String {
        let insts = match self.targets(target) {
            Ok(v) => v,
            Err(e) => return format!("error\n{e}"),
        };
        if insts.len() == 1 {
            return match self.request(insts[0], text, &[]) {
                Ok(r) => reassemble(&r),
                Err(e) => format!("error\n{e}"),
            };
        }
        let mut ok = true;
        let mut body = String::new();
        for i in insts {
            let name = self.plan.instances[i].name.clone();
            let r = match self.request(i, text, &[]) {
                Ok(r) => r,
                Err(e) => {
                    ok = false;
                    body.push_str(&format!("# {name}: {e}\n"));
                    continue;
                }
            };
            ok &= r.is_ok();
            body.push_str(&format!("# {name}: {}\n{}", r.verb, r.body));
            if !body.ends_with('\n') {
                body.push('\n');
            }
        }
        format!("{}\n{body}", if ok { "ok" } else { "error" })
    }

    fn handle(&mut self, msg: fragnet_host::ControlMsg) -> String {
        match (msg.verb.as_str(), msg.args.as_slice()) {
            ("ping", []) => "ok".into(),
            ("list", []) => format!("ok\n{}", self.list()),
            ("stats", [target]) => self.forward(&target.clone(), "stats"),
            ("nft", [target, rest @ ..]) if !rest.is_empty() => {
                let mut text = format!("nft {}", rest.join(" "));
                if !msg.body.is_empty() {
                    text.push('\n');
                    text.push_str(&msg.body);
                }
                self.forward(&target.clone(), &text)
            }
            ("reload", []) => {
                let text = std::fs::read_to_string(&self.script.path).unwrap_or_default();
                self.script_text = text.clone();
                self.reload_script(&text);
                for s in 0..self.script.starts.len() {
                    self.load_rules(s);
                }
                "ok".into()
            }
            _ => format!(
                "error\nunknown request \"{}\" (known: ping, list, stats NAME, nft NAME ARGS…, reload, attach NAME)",
                msg.verb
            ),
        }
    }

    fn list(&self) -> String {
        let mut out = format!(
            "{:<20} {:>8} {:<10} {:>8} {:>4}  {}\n",
            "NAME", "PID", "STATE", "RESTARTS", "CPU", "LAST EXIT"
        );
        for (i, inst) in self.plan.instances.iter().enumerate() {
            let p = &self.procs[i];
            let start = &self.script.starts[inst.start];
            out.push_str(&format!(
                "{:<20} {:>8} {:<10} {:>8} {:>4}  {}\n",
                inst.name,
                p.child
                    .as_ref()
                    .map(|c| c.id())
                    .or(p.attached_pid)
                    .map_or("-".into(), |c| c.to_string()),
                match p.state {
                    State::Running if p.manual && p.control.is_some() => "attached",
                    State::Running if p.manual => "waiting",
                    State::Running => "running",
                    State::Backoff(_) => "restarting",
                    State::Failed => "failed",
                },
                p.restarts,
                start.cpu.map_or("-".into(), |c| c.to_string()),
                p.last_exit.as_deref().unwrap_or("-")
            ));
        }
        out
    }

    // --- main loop --------------------------------------------------------

    /// Runs until SIGINT/SIGTERM, then shuts down; returns the exit code.
    pub fn run(mut self) -> i32 {
        let mut last_watch = Instant::now();
        let mut failed = false;
        loop {
            let now = Instant::now();
            let mut timeout = Duration::from_secs(1).saturating_sub(now - last_watch);
            if let Some(at) = self.next_deadline() {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            let ts = Timespec {
                tv_sec: timeout.as_secs() as i64,
                tv_nsec: timeout.subsec_nanos() as i64,
            };
            let attached: Vec<usize> = (0..self.procs.len())
                .filter(|&i| self.procs[i].manual && self.procs[i].control.is_some())
                .collect();
            let (sig_ready, listen_ready, client_ready, attached_ready) = {
                let mut fds = vec![PollFd::new(&self.sigfd, PollFlags::IN)];
                if let Some(l) = &self.listener {
                    fds.push(PollFd::new(l, PollFlags::IN));
                }
                for c in &self.clients {
                    fds.push(PollFd::from_borrowed_fd(c.ctl.fd(), PollFlags::IN));
                }
                for &i in &attached {
                    if let Some(ctl) = &self.procs[i].control {
                        fds.push(PollFd::from_borrowed_fd(ctl.fd(), PollFlags::IN));
                    }
                }
                match poll(&mut fds, Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        error!("poll: {e}; shutting down");
                        failed = true;
                        break;
                    }
                }
                let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
                let nc = self.clients.len();
                (
                    ready[0],
                    ready[1],
                    ready[2..2 + nc].to_vec(),
                    ready[2 + nc..].to_vec(),
                )
            };
            for (k, &i) in attached.iter().enumerate() {
                if attached_ready.get(k).copied().unwrap_or(false) {
                    self.check_attached(i);
                }
            }
            if sig_ready {
                let mut stop = false;
                for s in read_signals(&self.sigfd) {
                    match s {
                        libc::SIGINT | libc::SIGTERM => stop = true,
                        libc::SIGHUP => {
                            info!("SIGHUP: re-reading run script and rule files");
                            let text =
                                std::fs::read_to_string(&self.script.path).unwrap_or_default();
                            self.script_text = text.clone();
                            self.reload_script(&text);
                        }
                        _ => {}
                    }
                }
                self.reap(false);
                if stop {
                    info!("shutting down");
                    break;
                }
            }
            if listen_ready {
                self.accept();
            }
            let mut keep = Vec::with_capacity(self.clients.len());
            for (c, ready) in client_ready.iter().enumerate() {
                keep.push(!*ready || self.serve_client(c));
            }
            let mut k = keep.into_iter();
            self.clients.retain(|_| k.next().unwrap_or(true));
            self.kill_overdue();
            self.restart_due();
            if last_watch.elapsed() >= Duration::from_secs(1) {
                last_watch = Instant::now();
                self.watch();
            }
        }
        self.cleanup();
        i32::from(failed)
    }

    /// Stops every component (`shutdown`, then SIGKILL), deletes TAP
    /// devices and the control socket. Idempotent.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for p in self.procs.iter_mut() {
            if let (Some(ctl), Some(_)) = (&p.control, &p.child) {
                let _ = ctl.send("shutdown");
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline && self.procs.iter().any(|p| p.child.is_some()) {
            self.reap(true);
            std::thread::sleep(Duration::from_millis(10));
        }
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(mut c) = p.child.take() {
                warn!(
                    "{} (pid {}) did not exit after shutdown; killing it",
                    self.plan.instances[i].name,
                    c.id()
                );
                let _ = c.kill();
                let _ = c.wait();
            }
            p.control = None;
        }
        self.links.clear();
        for t in self.taps.drain(..) {
            match fragnet_host::tap::destroy(&t) {
                Ok(()) => info!("deleted TAP device {t}"),
                Err(e) => error!("{e}"),
            }
        }
        if let Some(path) = self.socket_path.take() {
            self.listener = None;
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A component's reply as text again (verb line + body).
fn reassemble(m: &fragnet_host::ControlMsg) -> String {
    let mut s = m.verb.clone();
    for a in &m.args {
        s.push(' ');
        s.push_str(a);
    }
    if !m.body.is_empty() {
        s.push('\n');
        s.push_str(&m.body);
    }
    s
}

/// What of a start cannot change while running (positions left out).
fn shape(s: &crate::script::Start) -> impl PartialEq {
    (
        s.binary.clone(),
        s.cpu,
        s.provides.clone(),
        s.routes
            .iter()
            .map(|r| (r.service.clone(), r.child.clone(), r.queue))
            .collect::<Vec<_>>(),
        s.queues,
        s.is_driver,
        s.tap.clone(),
        s.user,
        s.manual,
        s.attach_uids.clone(),
    )
}

/// A `<config>` text without its `<nftables …/>` elements (to compare the
/// rest of two configs).
fn strip_nftables(xml: &str) -> String {
    match fragnet_host::ConfigNode::parse(xml) {
        Ok(node) => {
            let mut out = xml.to_string();
            let mut spans: Vec<_> = node
                .children_named("nftables")
                .map(|n| n.span.clone())
                .collect();
            spans.sort_by_key(|s| std::cmp::Reverse(s.start));
            for s in spans {
                out.replace_range(s, "");
            }
            out
        }
        Err(_) => xml.to_string(),
    }
}
