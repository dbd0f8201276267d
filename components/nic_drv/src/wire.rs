//! The `wire` backend: a shared-memory cable between two fragnet ports.
//!
//! Two modes, neither needs privileges:
//!
//! * **cable** (no `listen`/`connect`): the driver provides `Nic` to exactly
//!   two clients of the same run script (e.g. two switches) and copies
//!   frames between their channels — a cable with a process in the middle.
//! * **remote** (`listen="path"` on one side, `connect="path"` on the
//!   other, e.g. two `fragnet run` instances or a load generator): the
//!   listener creates a packet_ring channel (memfd + two eventfds) for each
//!   connection and passes the three descriptors to the connector over the
//!   unix socket (`SCM_RIGHTS`, message `wire 1`); the listener attaches as
//!   side A, the connector as side B. Each driver then copies frames between
//!   its one local client channel and the cable. The unix socket stays open
//!   as the liveness signal: when it closes, the cable is dropped ("link
//!   down"), the listener waits for the next connection and the connector
//!   retries every 200 ms.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::counters::Direction;
use crate::pump::{discard, pump};
use fragnet_host::{info, warn, Control};
use packet_ring::linux::{self as ring, Channel, ChannelFds, Waiter, Wake};
use packet_ring::{Config, Side, State};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Frames moved per direction and round.
pub const BATCH: usize = 64;
/// The handshake message that carries memfd, wake_a and wake_b.
const HELLO: &str = "wire 1";
const RECONNECT: Duration = Duration::from_millis(200);

/// Take a channel down if its peer broke the ring protocol.
fn check(ch: &mut Option<Channel>, what: &str) {
    if let Some(c) = ch {
        if let State::Disconnected(e) = c.state() {
            warn!("{what} disconnected: peer broke the ring protocol: {e}");
            *ch = None;
        }
    }
}

/// Copy between two local channels, `a` and `b`.
pub struct Cable {
    pub a: Option<Channel>,
    pub b: Option<Channel>,
    pub labels: [String; 2],
    pub a_to_b: Direction,
    pub b_to_a: Direction,
}

impl Cable {
    /// One round; returns the frames taken from either side.
    pub fn poll(&mut self) -> usize {
        let moved = match (self.a.as_mut(), self.b.as_mut()) {
            (Some(a), Some(b)) => {
                let n = pump(a, b, BATCH, &mut self.a_to_b) + pump(b, a, BATCH, &mut self.b_to_a);
                a.flush();
                b.flush();
                n
            }
            (Some(a), None) => {
                let n = discard(a, BATCH, &mut self.a_to_b);
                a.flush();
                n
            }
            (None, Some(b)) => {
                let n = discard(b, BATCH, &mut self.b_to_a);
                b.flush();
                n
            }
            (None, None) => 0,
        };
        check(&mut self.a, &self.labels[0]);
        check(&mut self.b, &self.labels[1]);
        moved
    }

    pub fn report(&self, out: &mut String) {
        for (label, ch, dir) in [
            (&self.labels[0], &self.a, &self.a_to_b),
            (&self.labels[1], &self.b, &self.b_to_a),
        ] {
            out.push_str(&format!("port.{label}.up {}\n", u8::from(ch.is_some())));
            dir.report(&format!("port.{label}.in"), out);
        }
    }
}

/// How this side of a remote wire finds the other.
enum Role {
    Listen { socket: OwnedFd, path: PathBuf },
    Connect { path: PathBuf, next_try: Instant },
}

/// One side of a wire between two fragnet instances.
pub struct Remote {
    role: Role,
    /// The local client (`nic:<client>`, side A).
    pub client: Option<Channel>,
    pub client_label: String,
    /// The cable and the socket that keeps it alive.
    cable: Option<(Channel, Control)>,
    /// Client → cable.
    pub to_wire: Direction,
    /// Cable → client.
    pub from_wire: Direction,
    connects: u64,
}

impl Remote {
    /// Listen on `path` (a stale socket file is replaced).
    pub fn listen(path: &Path, client: Channel, client_label: String) -> io::Result<Remote> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
            })?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("removing stale {}: {e}", path.display()),
                ))
            }
        }
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let addr = SocketAddrUnix::new(path)?;
        rustix::net::bind(&socket, &addr)
            .map_err(|e| io::Error::other(format!("binding {}: {e}", path.display())))?;
        rustix::net::listen(&socket, 1)?;
        info!("wire: listening on {}", path.display());
        Ok(Remote::new(
            Role::Listen {
                socket,
                path: path.to_path_buf(),
            },
            client,
            client_label,
        ))
    }

    /// Connect to the listener at `path` (retried until it is there).
    pub fn connect(path: &Path, client: Channel, client_label: String) -> Remote {
        Remote::new(
            Role::Connect {
                path: path.to_path_buf(),
                next_try: Instant::now(),
            },
            client,
            client_label,
        )
    }

    fn new(role: Role, client: Channel, client_label: String) -> Remote {
        Remote {
            role,
            client: Some(client),
            client_label,
            cable: None,
            to_wire: Direction::default(),
            from_wire: Direction::default(),
            connects: 0,
        }
    }

    /// Idle policy step: wait on the client and cable channels, the
    /// listening socket or the connection (readable on EOF), and the
    /// control socket. Wakes at least every 200 ms to retry a connect.
    pub fn wait(
        &mut self,
        waiter: &mut Waiter,
        moved: bool,
        control: Option<BorrowedFd<'_>>,
    ) -> io::Result<Wake> {
        let (cable, other) = match (self.cable.as_mut(), &self.role) {
            (Some((ch, conn)), _) => (Some(ch), Some(conn.fd())),
            (None, Role::Listen { socket, .. }) => (None, Some(socket.as_fd())),
            (None, Role::Connect { .. }) => (None, None),
        };
        let pair;
        let single;
        let fds: &[BorrowedFd<'_>] = match (control, other) {
            (Some(a), Some(b)) => {
                pair = [a, b];
                &pair
            }
            (Some(a), None) | (None, Some(a)) => {
                single = [a];
                &single
            }
            (None, None) => &[],
        };
        let channels = self.client.as_mut().into_iter().chain(cable);
        waiter.wait(moved, channels, fds, Some(RECONNECT))
    }

    /// One round of copying; returns the frames moved.
    pub fn poll(&mut self) -> usize {
        let Some(client) = self.client.as_mut() else {
            return 0;
        };
        let moved = match self.cable.as_mut() {
            Some((cable, _)) => {
                let n = pump(client, cable, BATCH, &mut self.to_wire)
                    + pump(cable, client, BATCH, &mut self.from_wire);
                cable.flush();
                n
            }
            None => discard(client, BATCH, &mut self.to_wire),
        };
        client.flush();
        check(&mut self.client, &self.client_label);
        if let Some((cable, _)) = &self.cable {
            if let State::Disconnected(e) = cable.state() {
                warn!("wire: far side broke the ring protocol ({e}): dropping the cable");
                self.cable = None;
            }
        }
        moved
    }

    /// Accept or connect when the cable is down; notice when the far side
    /// went away. Called now and then (not per round).
    pub fn housekeeping(&mut self) {
        if let Some((_, conn)) = self.cable.as_mut() {
            match conn.recv() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Ok(Some(m)) => {
                    warn!("wire: unexpected message '{}' from the far side", m.verb);
                    return;
                }
                Ok(None) => info!("wire: far side closed the connection: link down"),
                Err(e) => warn!("wire: connection failed ({e}): link down"),
            }
            self.cable = None;
        }
        let result = match &mut self.role {
            Role::Listen { socket, path } => accept(socket, path),
            Role::Connect { path, next_try } => {
                if Instant::now() < *next_try {
                    return;
                }
                *next_try = Instant::now() + RECONNECT;
                connect(path)
            }
        };
        match result {
            Ok(Some(cable)) => {
                self.connects += 1;
                info!("wire: link up");
                self.cable = Some(cable);
            }
            Ok(None) => {}
            Err(e) => warn!("wire: {e}"),
        }
    }

    pub fn report(&self, out: &mut String) {
        out.push_str(&format!(
            "link_up {}\nwire_up {}\nwire_connects {}\n",
            u8::from(self.client.is_some()),
            u8::from(self.cable.is_some()),
            self.connects
        ));
        self.to_wire.report("to_wire", out);
        self.from_wire.report("from_wire", out);
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Role::Listen { path, .. } = &self.role {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Listener: take a waiting connection, create a channel for it, send the
/// connector its descriptors, attach side A.
fn accept(socket: &OwnedFd, path: &Path) -> io::Result<Option<(Channel, Control)>> {
    let conn = match rustix::net::accept_with(socket, SocketFlags::CLOEXEC) {
        Ok(c) => c,
        Err(rustix::io::Errno::AGAIN) => return Ok(None),
        Err(e) => {
            return Err(io::Error::other(format!(
                "accept on {}: {e}",
                path.display()
            )))
        }
    };
    let conn = Control::from_fd(conn);
    let fds = ring::create(&Config::default(), "fragnet-wire")?;
    conn.send_with_fds(
        HELLO,
        &[fds.memfd.as_fd(), fds.wake_a.as_fd(), fds.wake_b.as_fd()],
    )?;
    conn.set_nonblocking(true)?;
    let cable = Channel::attach(fds, Side::A).map_err(io::Error::from)?;
    Ok(Some((cable, conn)))
}

/// Connector: connect, receive the channel's descriptors, attach side B.
fn connect(path: &Path) -> io::Result<Option<(Channel, Control)>> {
    // Non-blocking: a listener that is not accepting (stopped, backlog
    // full) must not stall this driver's loop.
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&socket, &addr) {
        Ok(()) => {}
        // Not listening yet, or not accepting: try again later, quietly.
        Err(rustix::io::Errno::NOENT)
        | Err(rustix::io::Errno::CONNREFUSED)
        | Err(rustix::io::Errno::AGAIN) => return Ok(None),
        Err(e) => {
            return Err(io::Error::other(format!(
                "connect to {}: {e}",
                path.display()
            )))
        }
    }
    let mut conn = Control::from_fd(socket);
    let msg = conn
        .recv_timeout(Duration::from_secs(2))?
        .ok_or_else(|| io::Error::other("listener closed the connection before the handshake"))?;
    if msg.verb != "wire" || msg.args != ["1"] {
        return Err(io::Error::other(format!(
            "unexpected handshake '{} {}' from {} (expected '{HELLO}')",
            msg.verb,
            msg.args.join(" "),
            path.display()
        )));
    }
    let Ok::<[OwnedFd; 3], _>([memfd, wake_a, wake_b]) = msg.fds.try_into() else {
        return Err(io::Error::other(
            "handshake must carry 3 descriptors (memfd, wake_a, wake_b)",
        ));
    };
    conn.set_nonblocking(true)?;
    let cable = Channel::attach(
        ChannelFds {
            memfd,
            wake_a,
            wake_b,
        },
        Side::B,
    )
    .map_err(|e| io::Error::other(format!("attaching the wire from {}: {e}", path.display())))?;
    Ok(Some((cable, conn)))
}
