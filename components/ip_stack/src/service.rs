//! The socket service: the application's requests on the socket channel
//! applied to smoltcp sockets, and the sockets' news (data, accepted
//! connections, credit, end of stream, errors) sent back.
//!
//! The application is untrusted. Every message is parsed and checked (op,
//! socket id with its generation, kind, addresses, lengths, credit) before
//! it touches a socket; a bad one is answered with an error completion and
//! counted, and an application that keeps sending garbage is disconnected
//! while the stack goes on (answering ARP and ping, waiting for a new
//! channel). Protocol: see `fragnet::proto`.
//!
//! Socket ids are per application: `generation << 16 | slot`, so a stale id
//! (a closed socket whose slot was reused) is refused, never confused with
//! the new socket.

use std::collections::VecDeque;

use fragnet::proto::{errno, Msg, Op, HDR_LEN};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
#[cfg(feature = "tcp")]
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

use crate::classify::Ports;
use crate::device::FrameQueue;

#[cfg(not(any(feature = "udp", feature = "tcp")))]
compile_error!("ip_stack needs at least one of the features `udp`, `tcp`");

/// Resource limits (from the `<config>`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sockets: usize,
    pub tcp_rx_buf: usize,
    pub tcp_tx_buf: usize,
    pub udp_rx_buf: usize,
    pub udp_tx_buf: usize,
    pub udp_packets: usize,
    pub max_backlog: usize,
    /// Ceiling of the receive credit an application may grant itself.
    pub max_credit: u32,
    /// Protocol violations before the application is disconnected.
    pub max_violations: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sockets: 1024,
            tcp_rx_buf: 256 * 1024,
            tcp_tx_buf: 256 * 1024,
            udp_rx_buf: 512 * 1024,
            udp_tx_buf: 512 * 1024,
            udp_packets: 512,
            max_backlog: 128,
            max_credit: 16 << 20,
            max_violations: 64,
        }
    }
}

/// Counters of the socket service, named in `stats`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub app_msgs: u64,
    pub app_bad_msgs: u64,
    pub app_disconnects: u64,
    pub app_ring_full: u64,
    pub udp_tx_full: u64,
    pub udp_rx_truncated: u64,
    pub tcp_accepted: u64,
    pub tcp_send_overrun: u64,
    pub sockets_open: u64,
}

impl Stats {
    pub fn lines(&self, out: &mut String) {
        use std::fmt::Write;
        let Stats {
            app_msgs,
            app_bad_msgs,
            app_disconnects,
            app_ring_full,
            udp_tx_full,
            udp_rx_truncated,
            tcp_accepted,
            tcp_send_overrun,
            sockets_open,
        } = self;
        for (k, v) in [
            ("app_msgs", app_msgs),
            ("app_bad_msgs", app_bad_msgs),
            ("app_disconnects", app_disconnects),
            ("app_ring_full", app_ring_full),
            ("drop_udp_tx_full", udp_tx_full),
            ("udp_rx_truncated", udp_rx_truncated),
            ("tcp_accepted", tcp_accepted),
            ("tcp_send_overrun", tcp_send_overrun),
            ("sockets_open", sockets_open),
        ] {
            let _ = writeln!(out, "{k} {v}");
        }
    }
}

enum Kind {
    #[cfg(feature = "udp")]
    Udp,
    #[cfg(feature = "tcp")]
    Tcp,
    #[cfg(feature = "tcp")]
    Listener {
        credit: u32,
        handles: Vec<SocketHandle>,
    },
}

struct Sock {
    id: u32,
    kind: Kind,
    handle: Option<SocketHandle>,
    /// Local port, 0 while unbound; holds a reference in [`Ports`].
    port: u16,
    rx_credit: u32,
    connect_tag: Option<u32>,
    /// Bytes taken from the application (TCP), wrapping.
    enqueued: u32,
    /// Last cumulative send credit sent, wrapping.
    granted: u32,
    credit_started: bool,
    /// Connected (established once, or accepted): only then can it report
    /// end of stream or a reset. A fresh socket sits in smoltcp's `Closed`.
    live: bool,
    fin_seen: bool,
    eof_sent: bool,
    err_sent: bool,
    shut_wr: bool,
    /// Bytes taken out of a full smoltcp receive buffer ahead of the
    /// application's credit (see `poll_tcp`), delivered before anything
    /// else; empty (and unallocated) unless needed.
    stash: Vec<u8>,
    stash_off: usize,
}

impl Sock {
    fn new(id: u32, kind: Kind, handle: Option<SocketHandle>, rx_credit: u32) -> Sock {
        Sock {
            id,
            kind,
            handle,
            port: 0,
            rx_credit,
            connect_tag: None,
            enqueued: 0,
            granted: 0,
            credit_started: false,
            live: false,
            fin_seen: false,
            eof_sent: false,
            err_sent: false,
            shut_wr: false,
            stash: Vec::new(),
            stash_off: 0,
        }
    }
}

/// What a request handler needs besides the service itself.
pub struct Cx<'a, 's> {
    pub iface: &'a mut Interface,
    pub sockets: &'a mut SocketSet<'s>,
    pub ports: &'a mut Ports,
}

/// The socket service of one application.
pub struct Service {
    slots: Vec<Option<Sock>>,
    gens: Vec<u16>,
    free: Vec<u16>,
    /// Indices of the occupied slots, so a poll round touches live sockets
    /// only (not all `max_sockets` slots).
    live: Vec<u16>,
    /// Closed TCP sockets finishing their FIN handshake: (handle, port).
    zombies: Vec<(SocketHandle, u16)>,
    /// Completions that found the ring full, sent before anything else.
    pending: VecDeque<Msg>,
    next_port: u16,
    limits: Limits,
    ip: Ipv4Address,
    max_msg: usize,
    violations: u64,
    pub stats: Stats,
    /// Why the application was disconnected, if it was.
    pub disconnected: Option<String>,
    scratch: Vec<(usize, usize)>,
}

fn ep_v4(ep: IpEndpoint) -> core::net::SocketAddrV4 {
    match ep.addr {
        #[allow(unreachable_patterns)]
        IpAddress::Ipv4(a) => core::net::SocketAddrV4::new(a, ep.port),
        #[allow(unreachable_patterns)]
        _ => core::net::SocketAddrV4::new(Ipv4Address::UNSPECIFIED, ep.port),
    }
}

impl Service {
    /// `max_msg` is the buffer size of the socket channel.
    pub fn new(limits: Limits, ip: Ipv4Address, max_msg: usize) -> Service {
        let n = limits.max_sockets.clamp(1, 65535);
        Service {
            slots: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            free: (0..n as u16).rev().collect(),
            live: Vec::with_capacity(n),
            zombies: Vec::new(),
            pending: VecDeque::new(),
            next_port: 49152,
            limits,
            ip,
            max_msg,
            violations: 0,
            stats: Stats::default(),
            disconnected: None,
            scratch: Vec::new(),
        }
    }

    /// A new application channel may have another buffer size.
    pub fn set_max_msg(&mut self, max_msg: usize) {
        self.max_msg = max_msg;
    }

    /// Largest payload of one message.
    fn max_payload(&self) -> usize {
        self.max_msg.saturating_sub(HDR_LEN)
    }

    /// Forgets every socket of the application (after a disconnect or when
    /// a new channel replaces the old one).
    pub fn reset(&mut self, cx: &mut Cx<'_, '_>) {
        while let Some(&idx) = self.live.last() {
            self.close_slot(cx, idx as usize, true);
        }
        for (h, port) in self.zombies.drain(..) {
            cx.sockets.remove(h);
            #[cfg(feature = "tcp")]
            cx.ports.tcp_ref(port, false);
            let _ = port;
        }
        self.pending.clear();
        self.violations = 0;
        self.disconnected = None;
    }

    fn lookup(&mut self, id: u32) -> Option<usize> {
        let idx = (id & 0xffff) as usize;
        match self.slots.get(idx) {
            Some(Some(s)) if s.id == id => Some(idx),
            _ => None,
        }
    }

    fn alloc(&mut self, kind: Kind, handle: Option<SocketHandle>, credit: u32) -> Option<usize> {
        let idx = self.free.pop()? as usize;
        self.gens[idx] = self.gens[idx].wrapping_add(1).max(1);
        let id = (self.gens[idx] as u32) << 16 | idx as u32;
        self.slots[idx] = Some(Sock::new(id, kind, handle, credit));
        self.live.push(idx as u16);
        self.stats.sockets_open += 1;
        Some(idx)
    }

    /// Returns slot `idx` (already emptied) to the free list.
    fn release(&mut self, idx: usize) {
        self.free.push(idx as u16);
        if let Some(k) = self.live.iter().position(|&i| i as usize == idx) {
            self.live.swap_remove(k);
        }
        self.stats.sockets_open = self.stats.sockets_open.saturating_sub(1);
    }

    fn ephemeral(&mut self, ports: &Ports, tcp: bool) -> Option<u16> {
        for _ in 0..16384 {
            let p = self.next_port;
            self.next_port = if p == 65535 { 49152 } else { p + 1 };
            let used = if tcp { ports.tcp(p) } else { ports.udp(p) };
            if !used {
                return Some(p);
            }
        }
        None
    }

    fn credit(&self, val: i32) -> u32 {
        if val <= 0 {
            64 * 1024
        } else {
            (val as u32).min(self.limits.max_credit)
        }
    }

    /// Counts a protocol violation; too many disconnect the application.
    fn violation(&mut self, what: &str) {
        self.stats.app_bad_msgs += 1;
        self.violations += 1;
        if self.violations >= self.limits.max_violations && self.disconnected.is_none() {
            self.disconnected = Some(format!(
                "{} protocol violations (last: {what})",
                self.violations
            ));
            self.stats.app_disconnects += 1;
        }
    }

    /// Reads and applies up to `budget` requests. Returns how many.
    pub fn handle_requests<A: FrameQueue>(
        &mut self,
        cx: &mut Cx<'_, '_>,
        app: &mut A,
        budget: usize,
    ) -> usize {
        // Completions that did not fit last time go first.
        while let Some(m) = self.pending.front() {
            let m = *m;
            if !emit(app, &m, &[]) {
                self.stats.app_ring_full += 1;
                return 0;
            }
            self.pending.pop_front();
        }
        let mut n = 0;
        while n < budget && self.disconnected.is_none() && app.rx_pending() {
            let mut reply = None;
            app.recv_one(|buf| reply = self.handle(cx, buf));
            n += 1;
            if let Some(m) = reply {
                if !emit(app, &m, &[]) {
                    self.stats.app_ring_full += 1;
                    self.pending.push_back(m);
                    break;
                }
            }
        }
        self.stats.app_msgs += n as u64;
        n
    }

    /// Applies one request; returns the message to answer with.
    fn handle(&mut self, cx: &mut Cx<'_, '_>, buf: &[u8]) -> Option<Msg> {
        let (m, payload) = match Msg::parse(buf) {
            Ok(x) => x,
            Err(e) => {
                self.violation(&e.to_string());
                return Some(Msg::new(Op::Error).val(-errno::EINVAL));
            }
        };
        let done = |val: i32| Some(Msg::new(Op::Done).tag(m.tag).sock(m.sock).val(val));
        if !m.op.is_request() {
            self.violation("event op sent by the application");
            return done(-errno::EINVAL);
        }
        if m.op == Op::Open {
            return self.open(cx, &m);
        }
        let Some(idx) = self.lookup(m.sock) else {
            self.violation("unknown socket id");
            return match m.op {
                Op::Send | Op::Recv | Op::Close => {
                    Some(Msg::new(Op::Error).sock(m.sock).val(-errno::EBADF))
                }
                _ => done(-errno::EBADF),
            };
        };
        match m.op {
            Op::Bind => self.bind(cx, idx, &m),
            Op::Connect => self.connect(cx, idx, &m),
            Op::Listen => self.listen(cx, idx, &m),
            Op::Send => self.send(cx, idx, &m, payload),
            Op::Recv => {
                if m.val <= 0 {
                    self.violation("non-positive receive credit");
                    return Some(Msg::new(Op::Error).sock(m.sock).val(-errno::EINVAL));
                }
                let max = self.limits.max_credit;
                let s = self.slots[idx].as_mut()?;
                s.rx_credit = s.rx_credit.saturating_add(m.val as u32).min(max);
                None
            }
            Op::Close => {
                self.close_slot(cx, idx, false);
                None
            }
            Op::Shutdown => self.shutdown(cx, idx, &m),
            Op::SetOpt => self.setopt(cx, idx, &m),
            _ => done(-errno::EINVAL),
        }
    }

    fn open(&mut self, cx: &mut Cx<'_, '_>, m: &Msg) -> Option<Msg> {
        let credit = self.credit(m.val);
        let reply = |val: i32, sock: u32| Some(Msg::new(Op::Done).tag(m.tag).sock(sock).val(val));
        if self.free.is_empty() {
            return reply(-errno::EMFILE, 0);
        }
        let l = self.limits;
        let (kind, handle) = match m.aux {
            #[cfg(feature = "udp")]
            fragnet::proto::KIND_UDP => {
                use smoltcp::socket::udp;
                let rx = udp::PacketBuffer::new(
                    vec![udp::PacketMetadata::EMPTY; l.udp_packets],
                    vec![0; l.udp_rx_buf],
                );
                let tx = udp::PacketBuffer::new(
                    vec![udp::PacketMetadata::EMPTY; l.udp_packets],
                    vec![0; l.udp_tx_buf],
                );
                (Kind::Udp, cx.sockets.add(udp::Socket::new(rx, tx)))
            }
            #[cfg(feature = "tcp")]
            fragnet::proto::KIND_TCP => (Kind::Tcp, cx.sockets.add(new_tcp(&l))),
            _ => {
                self.violation("socket kind not supported");
                return reply(-errno::EPROTONOSUPPORT, 0);
            }
        };
        let idx = self.alloc(kind, Some(handle), credit)?;
        reply(0, self.slots[idx].as_ref()?.id)
    }

    fn bind(&mut self, cx: &mut Cx<'_, '_>, idx: usize, m: &Msg) -> Option<Msg> {
        let reply = |val: i32, port: u16, ip: Ipv4Address| {
            Some(
                Msg::new(Op::Done)
                    .tag(m.tag)
                    .sock(m.sock)
                    .val(val)
                    .addr(core::net::SocketAddrV4::new(ip, port)),
            )
        };
        let ip = *m.addr.ip();
        if !ip.is_unspecified() && ip != self.ip {
            return reply(-errno::EADDRNOTAVAIL, 0, ip);
        }
        let s = self.slots[idx].as_ref()?;
        if s.port != 0 {
            return reply(-errno::EINVAL, s.port, self.ip);
        }
        let is_tcp = !self.is_udp(idx);
        let port = match m.addr.port() {
            0 => match self.ephemeral(cx.ports, is_tcp) {
                Some(p) => p,
                None => return reply(-errno::EADDRINUSE, 0, ip),
            },
            p if (is_tcp && cx.ports.tcp(p)) || (!is_tcp && cx.ports.udp(p)) => {
                return reply(-errno::EADDRINUSE, p, ip)
            }
            p => p,
        };
        if let Err(e) = self.bind_port(cx, idx, port) {
            return reply(-e, port, ip);
        }
        reply(0, port, self.ip)
    }

    fn is_udp(&self, idx: usize) -> bool {
        #[cfg(feature = "udp")]
        if let Some(Sock {
            kind: Kind::Udp, ..
        }) = &self.slots[idx]
        {
            return true;
        }
        let _ = idx;
        false
    }

    /// Binds slot `idx` to a free `port`; errno on failure.
    fn bind_port(&mut self, cx: &mut Cx<'_, '_>, idx: usize, port: u16) -> Result<(), i32> {
        let s = self.slots[idx].as_mut().ok_or(errno::EBADF)?;
        match &s.kind {
            #[cfg(feature = "udp")]
            Kind::Udp => {
                let h = s.handle.ok_or(errno::EBADF)?;
                let udp = cx.sockets.get_mut::<smoltcp::socket::udp::Socket>(h);
                udp.bind(port).map_err(|_| errno::EINVAL)?;
                cx.ports.set_udp(port, true);
            }
            #[cfg(feature = "tcp")]
            Kind::Tcp => cx.ports.tcp_ref(port, true),
            #[cfg(feature = "tcp")]
            Kind::Listener { .. } => return Err(errno::EINVAL),
        }
        s.port = port;
        Ok(())
    }

    fn ensure_bound(&mut self, cx: &mut Cx<'_, '_>, idx: usize) -> Result<u16, i32> {
        let port = self.slots[idx].as_ref().ok_or(errno::EBADF)?.port;
        if port != 0 {
            return Ok(port);
        }
        let tcp = !self.is_udp(idx);
        let p = self.ephemeral(cx.ports, tcp).ok_or(errno::EADDRINUSE)?;
        self.bind_port(cx, idx, p)?;
        Ok(p)
    }

    fn connect(&mut self, cx: &mut Cx<'_, '_>, idx: usize, m: &Msg) -> Option<Msg> {
        let ip = self.ip;
        let done = |val: i32, local: u16| {
            Some(
                Msg::new(Op::Done)
                    .tag(m.tag)
                    .sock(m.sock)
                    .val(val)
                    .addr(core::net::SocketAddrV4::new(ip, local)),
            )
        };
        if m.addr.ip().is_unspecified() || m.addr.port() == 0 {
            return done(-errno::EINVAL, 0);
        }
        let local = match self.ensure_bound(cx, idx) {
            Ok(p) => p,
            Err(e) => return done(-e, 0),
        };
        if self.is_udp(idx) {
            // The library keeps the default peer; the stack only binds.
            return done(0, local);
        }
        #[cfg(feature = "tcp")]
        {
            let s = self.slots[idx].as_mut()?;
            let Kind::Tcp = s.kind else {
                return done(-errno::EINVAL, local);
            };
            if s.connect_tag.is_some() {
                return done(-errno::EINVAL, local);
            }
            let h = s.handle?;
            let tcp = cx.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
            let remote = IpEndpoint::new(IpAddress::Ipv4(*m.addr.ip()), m.addr.port());
            match tcp.connect(cx.iface.context(), remote, local) {
                Ok(()) => {
                    tcp.set_timeout(Some(Duration::from_secs(10)));
                    s.connect_tag = Some(m.tag);
                    None
                }
                Err(smoltcp::socket::tcp::ConnectError::InvalidState) => {
                    done(-errno::EISCONN, local)
                }
                Err(_) => done(-errno::ENETUNREACH, local),
            }
        }
        #[cfg(not(feature = "tcp"))]
        done(-errno::EOPNOTSUPP, local)
    }

    fn listen(&mut self, cx: &mut Cx<'_, '_>, idx: usize, m: &Msg) -> Option<Msg> {
        let done = |val: i32| Some(Msg::new(Op::Done).tag(m.tag).sock(m.sock).val(val));
        #[cfg(feature = "tcp")]
        {
            if !matches!(self.slots[idx].as_ref()?.kind, Kind::Tcp) {
                return done(-errno::EOPNOTSUPP);
            }
            let port = match self.ensure_bound(cx, idx) {
                Ok(p) => p,
                Err(e) => return done(-e),
            };
            let backlog = (m.aux as usize).clamp(1, self.limits.max_backlog);
            let credit = self.credit(m.val);
            let l = self.limits;
            let s = self.slots[idx].as_mut()?;
            let first = s.handle.take()?;
            let mut handles = Vec::with_capacity(backlog);
            handles.push(first);
            for _ in 1..backlog {
                handles.push(cx.sockets.add(new_tcp(&l)));
            }
            for &h in &handles {
                let tcp = cx.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
                if tcp.listen(port).is_err() {
                    s.handle = Some(first);
                    for &h in &handles[1..] {
                        cx.sockets.remove(h);
                    }
                    return done(-errno::EINVAL);
                }
            }
            s.kind = Kind::Listener { credit, handles };
            done(0)
        }
        #[cfg(not(feature = "tcp"))]
        {
            let _ = (cx, idx);
            done(-errno::EOPNOTSUPP)
        }
    }

    fn send(&mut self, cx: &mut Cx<'_, '_>, idx: usize, m: &Msg, payload: &[u8]) -> Option<Msg> {
        let err = |e: i32| Some(Msg::new(Op::Error).sock(m.sock).val(-e));
        if self.is_udp(idx) {
            #[cfg(feature = "udp")]
            {
                if m.addr.ip().is_unspecified() || m.addr.port() == 0 {
                    return err(errno::EINVAL);
                }
                if let Err(e) = self.ensure_bound(cx, idx) {
                    return err(e);
                }
                let h = self.slots[idx].as_ref()?.handle?;
                let udp = cx.sockets.get_mut::<smoltcp::socket::udp::Socket>(h);
                let to = IpEndpoint::new(IpAddress::Ipv4(*m.addr.ip()), m.addr.port());
                return match udp.send_slice(payload, to) {
                    Ok(()) => None,
                    Err(smoltcp::socket::udp::SendError::BufferFull) => {
                        self.stats.udp_tx_full += 1;
                        None
                    }
                    Err(_) => err(errno::EINVAL),
                };
            }
        }
        #[cfg(feature = "tcp")]
        {
            let s = self.slots[idx].as_mut()?;
            let (Kind::Tcp, Some(h)) = (&s.kind, s.handle) else {
                return err(errno::EOPNOTSUPP);
            };
            let tcp = cx.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
            if !tcp.may_send() || s.shut_wr {
                return err(errno::EPIPE);
            }
            let n = tcp.send_slice(payload).unwrap_or(0);
            s.enqueued = s.enqueued.wrapping_add(n as u32);
            if n < payload.len() {
                // Beyond the granted credit: the library's bug or malice.
                self.stats.tcp_send_overrun += 1;
                self.violation("send beyond the granted credit");
                return err(errno::ENOBUFS);
            }
            None
        }
        #[cfg(not(feature = "tcp"))]
        {
            let _ = (cx, payload);
            err(errno::EOPNOTSUPP)
        }
    }

    fn shutdown(&mut self, cx: &mut Cx<'_, '_>, idx: usize, m: &Msg) -> Option<Msg> {
        let done = |val: i32| Some(Msg::new(Op::Done).tag(m.tag).sock(m.sock).val(val));
        #[cfg(feature = "tcp")]
        {
            let s = self.slots[idx].as_mut()?;
            if let (Kind::Tcp, Some(h)) = (&s.kind, s.handle) {
                if m.aux == fragnet::proto::SHUT_WR {
                    cx.sockets
                        .get_mut::<smoltcp::socket::tcp::Socket>(h)
                        .close();
                    s.shut_wr = true;
                }
                return done(0);
            }
        }
        let _ = (cx, idx);
        done(-errno::EOPNOTSUPP)
    }

    fn setopt(&mut self, cx: &mut Cx<'_, '_>, idx: usize, m: &Msg) -> Option<Msg> {
        use fragnet::proto::OPT_TTL;
        #[cfg(feature = "tcp")]
        use fragnet::proto::{OPT_KEEPALIVE_MS, OPT_NODELAY};
        let done = |val: i32| Some(Msg::new(Op::Done).tag(m.tag).sock(m.sock).val(val));
        let s = self.slots[idx].as_ref()?;
        let Some(h) = s.handle else {
            return done(-errno::ENOPROTOOPT);
        };
        let ttl = (m.aux == OPT_TTL).then(|| u8::try_from(m.val).ok().filter(|t| *t > 0));
        if ttl == Some(None) {
            return done(-errno::EINVAL);
        }
        match &s.kind {
            #[cfg(feature = "udp")]
            Kind::Udp => match ttl {
                Some(t) => cx
                    .sockets
                    .get_mut::<smoltcp::socket::udp::Socket>(h)
                    .set_hop_limit(t),
                None => return done(-errno::ENOPROTOOPT),
            },
            #[cfg(feature = "tcp")]
            Kind::Tcp => {
                let tcp = cx.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
                match m.aux {
                    OPT_NODELAY => tcp.set_nagle_enabled(m.val == 0),
                    OPT_KEEPALIVE_MS if m.val >= 0 => {
                        tcp.set_keep_alive((m.val > 0).then(|| Duration::from_millis(m.val as u64)))
                    }
                    OPT_TTL => tcp.set_hop_limit(ttl.flatten()),
                    _ => return done(-errno::ENOPROTOOPT),
                }
            }
            #[cfg(feature = "tcp")]
            Kind::Listener { .. } => return done(-errno::ENOPROTOOPT),
        }
        done(0)
    }

    /// Frees slot `idx`. A TCP connection is closed gracefully (FIN after
    /// queued data) unless `abort`.
    fn close_slot(&mut self, cx: &mut Cx<'_, '_>, idx: usize, abort: bool) {
        let _ = abort;
        let Some(s) = self.slots[idx].take() else {
            return;
        };
        self.release(idx);
        match s.kind {
            #[cfg(feature = "udp")]
            Kind::Udp => {
                if let Some(h) = s.handle {
                    cx.sockets.remove(h);
                }
                if s.port != 0 {
                    cx.ports.set_udp(s.port, false);
                }
            }
            #[cfg(feature = "tcp")]
            Kind::Tcp => {
                let Some(h) = s.handle else { return };
                let tcp = cx.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
                use smoltcp::socket::tcp::State;
                if abort || matches!(tcp.state(), State::Closed | State::Listen) {
                    tcp.abort();
                    cx.sockets.remove(h);
                    if s.port != 0 {
                        cx.ports.tcp_ref(s.port, false);
                    }
                } else {
                    tcp.close();
                    tcp.set_timeout(Some(Duration::from_secs(10)));
                    self.zombies.push((h, s.port));
                }
            }
            #[cfg(feature = "tcp")]
            Kind::Listener { handles, .. } => {
                for h in handles {
                    cx.sockets
                        .get_mut::<smoltcp::socket::tcp::Socket>(h)
                        .abort();
                    cx.sockets.remove(h);
                }
                cx.ports.tcp_ref(s.port, false);
            }
        }
    }

    /// Moves the sockets' news to the application. Returns whether any
    /// message was sent.
    pub fn poll_sockets<A: FrameQueue>(&mut self, cx: &mut Cx<'_, '_>, app: &mut A) -> bool {
        if self.disconnected.is_some() {
            return false;
        }
        let mut work = false;
        #[cfg(feature = "tcp")]
        {
            work |= self.accept(cx, app);
            self.reap(cx);
        }
        let max = self.max_payload();
        for k in 0..self.live.len() {
            let idx = self.live[k] as usize;
            let Some(s) = self.slots[idx].as_mut() else {
                continue;
            };
            match s.kind {
                #[cfg(feature = "udp")]
                Kind::Udp => work |= poll_udp(s, cx, app, max, &mut self.stats),
                #[cfg(feature = "tcp")]
                Kind::Tcp => work |= poll_tcp(s, cx, app, max),
                #[cfg(feature = "tcp")]
                Kind::Listener { .. } => {}
            }
        }
        work
    }

    /// Listeners: connections that completed their handshake become
    /// sockets of the application, and a fresh listening socket takes the
    /// place of each (the backlog stays full).
    #[cfg(feature = "tcp")]
    fn accept<A: FrameQueue>(&mut self, cx: &mut Cx<'_, '_>, app: &mut A) -> bool {
        use smoltcp::socket::tcp::{Socket, State};
        let mut ready = std::mem::take(&mut self.scratch);
        ready.clear();
        for &idx in &self.live {
            let idx = idx as usize;
            if let Some(Sock {
                kind: Kind::Listener { handles, .. },
                ..
            }) = &self.slots[idx]
            {
                for (i, &h) in handles.iter().enumerate() {
                    let st = cx.sockets.get::<Socket>(h).state();
                    if !matches!(st, State::Listen | State::SynReceived) {
                        ready.push((idx, i));
                    }
                }
            }
        }
        let mut work = false;
        let l = self.limits;
        for &(idx, i) in &ready {
            let Some(Sock {
                id: lid,
                kind: Kind::Listener { credit, handles },
                port,
                ..
            }) = self.slots[idx].as_ref()
            else {
                continue;
            };
            let (lid, credit, port, h) = (*lid, *credit, *port, handles[i]);
            let tcp = cx.sockets.get_mut::<Socket>(h);
            if !matches!(tcp.state(), State::Established | State::CloseWait) {
                // Reset during the handshake: listen again.
                tcp.abort();
                let _ = cx.sockets.get_mut::<Socket>(h).listen(port);
                continue;
            }
            let peer = tcp
                .remote_endpoint()
                .map(ep_v4)
                .unwrap_or(core::net::SocketAddrV4::new(Ipv4Address::UNSPECIFIED, 0));
            let Some(new) = self.alloc(Kind::Tcp, Some(h), credit) else {
                break; // no slot: stays in the backlog
            };
            let nid = self.slots[new].as_ref().map(|s| s.id).unwrap_or(0);
            let msg = Msg::new(Op::Accepted).sock(lid).aux(nid).addr(peer);
            if !emit(app, &msg, &[]) {
                self.slots[new] = None;
                self.release(new);
                self.stats.app_ring_full += 1;
                break;
            }
            work = true;
            self.stats.tcp_accepted += 1;
            if let Some(s) = self.slots[new].as_mut() {
                s.port = port;
                s.live = true;
            }
            cx.ports.tcp_ref(port, true);
            let fresh = cx.sockets.add(new_tcp(&l));
            let _ = cx.sockets.get_mut::<Socket>(fresh).listen(port);
            if let Some(Sock {
                kind: Kind::Listener { handles, .. },
                ..
            }) = self.slots[idx].as_mut()
            {
                handles[i] = fresh;
            }
        }
        self.scratch = ready;
        work
    }

    #[cfg(feature = "tcp")]
    fn reap(&mut self, cx: &mut Cx<'_, '_>) {
        use smoltcp::socket::tcp::{Socket, State};
        let mut i = 0;
        while i < self.zombies.len() {
            let (h, port) = self.zombies[i];
            if matches!(
                cx.sockets.get::<Socket>(h).state(),
                State::Closed | State::TimeWait
            ) {
                cx.sockets.remove(h);
                if port != 0 {
                    cx.ports.tcp_ref(port, false);
                }
                self.zombies.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// One line per live TCP connection (for `stats`): state, credit,
    /// queued bytes.
    pub fn socket_lines(&self, sockets: &SocketSet<'_>, out: &mut String) {
        #[cfg(feature = "tcp")]
        use std::fmt::Write;
        for s in self.slots.iter().flatten() {
            #[cfg(feature = "tcp")]
            if let (Kind::Tcp, Some(h)) = (&s.kind, s.handle) {
                let t = sockets.get::<smoltcp::socket::tcp::Socket>(h);
                let _ = writeln!(
                    out,
                    "tcp_sock_{:x} state={} rx_credit={} stash={} recv_queue={} send_queue={} granted={} enqueued={} eof_sent={} err_sent={}",
                    s.id,
                    t.state(),
                    s.rx_credit,
                    s.stash.len() - s.stash_off,
                    t.recv_queue(),
                    t.send_queue(),
                    s.granted,
                    s.enqueued,
                    s.eof_sent,
                    s.err_sent
                );
            }
            let _ = (s, sockets, &out);
        }
    }

    /// Number of live sockets and closing connections.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.slots.iter().filter(|s| s.is_some()).count(),
            self.zombies.len(),
        )
    }
}

/// Receive window kept open while data is in flight (see `poll_tcp`).
#[cfg(feature = "tcp")]
const WINDOW_RESERVE: usize = 8 * 1024;
/// Most bytes stashed per connection for that.
#[cfg(feature = "tcp")]
const STASH_MAX: usize = 16 * 1024;

#[cfg(feature = "tcp")]
fn new_tcp(l: &Limits) -> smoltcp::socket::tcp::Socket<'static> {
    use smoltcp::socket::tcp;
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; l.tcp_rx_buf]),
        tcp::SocketBuffer::new(vec![0; l.tcp_tx_buf]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

/// Sends one message (header and payload) to the application.
fn emit<A: FrameQueue>(app: &mut A, m: &Msg, payload: &[u8]) -> bool {
    let len = HDR_LEN + payload.len();
    app.send_with(len, |buf| {
        let Some(buf) = buf.get_mut(..len) else {
            return 0;
        };
        m.emit(buf);
        buf[HDR_LEN..].copy_from_slice(payload);
        len
    })
}

#[cfg(feature = "udp")]
fn poll_udp<A: FrameQueue>(
    s: &mut Sock,
    cx: &mut Cx<'_, '_>,
    app: &mut A,
    max: usize,
    stats: &mut Stats,
) -> bool {
    let Some(h) = s.handle else { return false };
    let udp = cx.sockets.get_mut::<smoltcp::socket::udp::Socket>(h);
    let mut work = false;
    while s.rx_credit > 0 {
        let Ok((payload, meta)) = udp.peek() else {
            break;
        };
        let n = payload.len().min(max);
        if n as u32 > s.rx_credit {
            break;
        }
        let msg = Msg::new(Op::Data).sock(s.id).addr(ep_v4(meta.endpoint));
        if n < payload.len() {
            stats.udp_rx_truncated += 1;
        }
        if !emit(app, &msg, &payload[..n]) {
            stats.app_ring_full += 1;
            break;
        }
        let _ = udp.recv();
        s.rx_credit -= n as u32;
        work = true;
    }
    work
}

#[cfg(feature = "tcp")]
fn poll_tcp<A: FrameQueue>(s: &mut Sock, cx: &mut Cx<'_, '_>, app: &mut A, max: usize) -> bool {
    use smoltcp::socket::tcp::{Socket, State};
    let Some(h) = s.handle else { return false };
    let tcp = cx.sockets.get_mut::<Socket>(h);
    let state = tcp.state();
    let mut work = false;
    if let Some(tag) = s.connect_tag {
        let (val, done) = match state {
            State::SynSent | State::SynReceived => (0, false),
            State::Established | State::CloseWait => (0, true),
            _ => (-errno::ECONNREFUSED, true),
        };
        if !done {
            return false;
        }
        let local = tcp
            .local_endpoint()
            .map(ep_v4)
            .unwrap_or(core::net::SocketAddrV4::new(Ipv4Address::UNSPECIFIED, 0));
        if !emit(
            app,
            &Msg::new(Op::Done).tag(tag).sock(s.id).val(val).addr(local),
            &[],
        ) {
            return false;
        }
        s.connect_tag = None;
        work = true;
        if val != 0 {
            s.err_sent = true;
            return true;
        }
        s.live = true;
        tcp.set_timeout(None);
    }
    if !s.live {
        return work;
    }
    // Bytes stashed earlier go first.
    while s.rx_credit > 0 && s.stash_off < s.stash.len() {
        let n = (s.stash.len() - s.stash_off)
            .min(max)
            .min(s.rx_credit as usize);
        let chunk = &s.stash[s.stash_off..s.stash_off + n];
        if !emit(app, &Msg::new(Op::Data).sock(s.id), chunk) {
            break;
        }
        s.stash_off += n;
        s.rx_credit -= n as u32;
        work = true;
        if s.stash_off == s.stash.len() {
            s.stash.clear();
            s.stash_off = 0;
        }
    }
    // Received bytes, as far as the application granted credit.
    while s.stash.is_empty() && s.rx_credit > 0 && tcp.can_recv() {
        let cap = max.min(s.rx_credit as usize).min(tcp.recv_queue());
        let mut got = 0;
        let id = s.id;
        let sent = app.send_with(HDR_LEN + cap, |buf| {
            let Some(buf) = buf.get_mut(..HDR_LEN + cap) else {
                return 0;
            };
            got = tcp.recv_slice(&mut buf[HDR_LEN..]).unwrap_or(0);
            if got == 0 {
                return 0;
            }
            Msg::new(Op::Data).sock(id).emit(buf);
            HDR_LEN + got
        });
        if !sent || got == 0 {
            break;
        }
        s.rx_credit -= got as u32;
        work = true;
    }
    // Keep the receive window from closing completely while we have data
    // in flight: smoltcp 0.14 ignores the acknowledgement carried by a
    // segment that arrives in a zero window, so a peer that keeps sending
    // into it can never acknowledge our data, and an application that
    // waits for its writes before reading more (an echo server) deadlocks
    // with it. A few KiB moved out of smoltcp's buffer ahead of the credit
    // keep the window open; they are delivered first when credit comes.
    let room = tcp.recv_capacity() - tcp.recv_queue();
    if room < WINDOW_RESERVE && tcp.send_queue() > 0 && s.stash.len() < STASH_MAX {
        let old = s.stash.len();
        let want = (STASH_MAX - old).min(tcp.recv_queue());
        s.stash.resize(old + want, 0);
        let got = tcp.recv_slice(&mut s.stash[old..]).unwrap_or(0);
        s.stash.truncate(old + got);
        work |= got > 0;
    }
    if matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    ) {
        s.fin_seen = true;
    }
    if !s.eof_sent && !s.err_sent && !tcp.can_recv() && s.stash.is_empty() {
        if s.fin_seen && !tcp.may_recv() {
            if emit(app, &Msg::new(Op::Eof).sock(s.id), &[]) {
                s.eof_sent = true;
                work = true;
            }
        } else if state == State::Closed
            && emit(
                app,
                &Msg::new(Op::Error).sock(s.id).val(-errno::ECONNRESET),
                &[],
            )
        {
            s.err_sent = true;
            work = true;
        }
    }
    // Send credit: bytes taken so far plus the room left.
    if matches!(state, State::Established | State::CloseWait) && !s.shut_wr {
        let cap = tcp.send_capacity();
        let free = cap - tcp.send_queue();
        let g = s.enqueued.wrapping_add(free as u32);
        let step = g.wrapping_sub(s.granted);
        if step != 0
            && (!s.credit_started || step as usize >= cap / 4 || free == cap)
            && emit(app, &Msg::new(Op::SendCredit).sock(s.id).aux(g), &[])
        {
            s.granted = g;
            s.credit_started = true;
            work = true;
        }
    }
    work
}
