//! The application's handle on its stack: the socket channel, the state of
//! every socket as far as the channel told us, and blocking waits.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use packet_ring::linux::{Channel, ChannelFds, Waiter, Wake};
use packet_ring::{Endpoint, Side, State};

use crate::proto::{Msg, Op, HDR_LEN};

/// Default receive window of a socket (bytes of credit granted to the stack).
pub(crate) const WINDOW: u32 = 256 * 1024;

/// What the library knows of one socket.
pub(crate) struct SockState {
    pub udp: bool,
    /// TCP: stream bytes. UDP: records `[len u16][ip 4][port 2][payload]`.
    pub rx: VecDeque<u8>,
    /// Bytes consumed and not yet granted back to the stack.
    pub unreported: u32,
    pub window: u32,
    pub eof: bool,
    pub error: Option<i32>,
    pub granted: u32,
    pub used: u32,
    pub accepted: VecDeque<(u32, SocketAddrV4)>,
    pub child_window: u32,
}

impl SockState {
    pub fn new(udp: bool, window: u32) -> SockState {
        SockState {
            udp,
            rx: VecDeque::with_capacity(window as usize + 64),
            unreported: 0,
            window,
            eof: false,
            error: None,
            granted: 0,
            used: 0,
            accepted: VecDeque::new(),
            child_window: window,
        }
    }

    /// Send credit left (bytes).
    pub fn credit(&self) -> usize {
        (self.granted.wrapping_sub(self.used) as i32).max(0) as usize
    }
}

pub(crate) struct Inner {
    pub ch: Channel,
    pub st: St,
    waiter: Waiter,
    /// The control socket to `init` (applications started by init): served
    /// when the application waits, see [`Inner::serve_control`].
    control: Option<fragnet_host::Control>,
}

/// Everything but the channel (so the channel can be borrowed while the
/// state is updated from its messages).
pub(crate) struct St {
    pub socks: HashMap<u32, SockState>,
    pub done: HashMap<u32, Msg>,
    pub next_tag: u32,
    /// Messages from the stack that made no sense (counted, skipped).
    pub bad: u64,
    /// Error completions and error events received.
    pub errors: u64,
    /// The stack closed the channel (errno).
    pub closed: Option<i32>,
}

impl St {
    fn dispatch(&mut self, buf: &[u8]) {
        let Ok((m, payload)) = Msg::parse(buf) else {
            self.bad += 1;
            return;
        };
        match m.op {
            Op::Done => {
                if m.val < 0 {
                    self.errors += 1;
                }
                self.done.insert(m.tag, m);
            }
            Op::Data => {
                let Some(s) = self.socks.get_mut(&m.sock) else {
                    return;
                };
                if s.udp {
                    let len = payload.len().min(u16::MAX as usize);
                    s.rx.extend((len as u16).to_le_bytes());
                    s.rx.extend(m.addr.ip().octets());
                    s.rx.extend(m.addr.port().to_le_bytes());
                    s.rx.extend(&payload[..len]);
                } else {
                    s.rx.extend(payload);
                }
            }
            Op::Accepted => {
                let Some(l) = self.socks.get_mut(&m.sock) else {
                    return;
                };
                l.accepted.push_back((m.aux, m.addr));
                let w = l.child_window;
                self.socks.insert(m.aux, SockState::new(false, w));
            }
            Op::SendCredit => {
                if let Some(s) = self.socks.get_mut(&m.sock) {
                    s.granted = m.aux;
                }
            }
            Op::Eof => {
                if let Some(s) = self.socks.get_mut(&m.sock) {
                    s.eof = true;
                }
            }
            Op::Error if m.sock == crate::proto::SOCK_CHANNEL => {
                self.errors += 1;
                self.closed = Some(m.val.saturating_neg());
            }
            Op::Error => {
                self.errors += 1;
                if let Some(s) = self.socks.get_mut(&m.sock) {
                    s.error = Some(m.val.saturating_neg());
                } else {
                    self.bad += 1;
                }
            }
            _ => self.bad += 1,
        }
    }
}

fn env_policy() -> packet_ring::linux::Policy {
    let mut p = packet_ring::linux::Policy::default();
    if let Some(s) = std::env::var("FRAGNET_SPIN")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        p.spin = s;
    }
    if let Some(us) = std::env::var("FRAGNET_YIELD_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        p.yield_for = Duration::from_micros(us);
    }
    p
}

/// The application's stack: a handle shared by all its sockets
/// (single-threaded; clone it freely).
#[derive(Clone)]
pub struct Stack {
    pub(crate) inner: Rc<RefCell<Inner>>,
}

fn down(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("socket channel down: {why}"),
    )
}

pub(crate) fn errno_err(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Stack {
    /// The stack `init` connected this application to: the channel labelled
    /// `socket` in `FRAGNET_CHANNELS` (side B). A process started by hand
    /// (no `FRAGNET_CHANNELS`) attaches instead as `FRAGNET_ATTACH` says
    /// (`SOCKET_PATH:START_NAME`, see [`Stack::attach_to`]).
    pub fn from_env() -> io::Result<Stack> {
        if std::env::var_os("FRAGNET_CHANNELS").is_none() {
            if let Ok(v) = std::env::var("FRAGNET_ATTACH") {
                let (path, name) = fragnet_host::attach::parse_attach_var(&v)?;
                return Stack::attach_to(&path, &name);
            }
        }
        let mut env = fragnet_host::Env::from_env()
            .map_err(|e| io::Error::other(format!("fragnet environment: {e}")))?;
        let spec = env.take_channel("socket").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no `socket` channel in FRAGNET_CHANNELS: route this application's \
                 Socket service to an ip_stack in the run script",
            )
        })?;
        let stack = Stack::attach(spec.fds, spec.side)?;
        if let Some(control) = env.control.take() {
            control.set_nonblocking(true)?;
            stack.inner.borrow_mut().control = Some(control);
        }
        Ok(stack)
    }

    /// Attaches a process started by hand to the start `name` of the
    /// fragnet whose control socket is `socket`. The run script must mark
    /// that start `attach="manual"` and allow this process's uid; init then
    /// hands over the start's `socket` channel. The connection to init stays
    /// open for as long as the process runs (it serves `ping`, `stats`,
    /// `shutdown` like a spawned application's control socket, and the
    /// process exits when init is gone); when the process ends, init gives
    /// the start a fresh channel for the next attach.
    pub fn attach_to(socket: &std::path::Path, name: &str) -> io::Result<Stack> {
        let (control, mut channels) = fragnet_host::attach::attach(socket, name)?;
        let i = channels
            .iter()
            .position(|c| c.label == "socket")
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "start \"{name}\" has no `socket` channel: route its Socket service to an ip_stack in the run script"
                    ),
                )
            })?;
        let spec = channels.swap_remove(i);
        let stack = Stack::attach(spec.fds, spec.side)?;
        control.set_nonblocking(true)?;
        stack.inner.borrow_mut().control = Some(control);
        Ok(stack)
    }

    /// Attaches to a socket channel given by its fds.
    pub fn attach(fds: ChannelFds, side: Side) -> io::Result<Stack> {
        let ch = Channel::attach(fds, side).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Stack {
            inner: Rc::new(RefCell::new(Inner {
                ch,
                st: St {
                    socks: HashMap::new(),
                    done: HashMap::new(),
                    next_tag: 1,
                    bad: 0,
                    errors: 0,
                    closed: None,
                },
                waiter: Waiter::with_policy(env_policy()),
                control: None,
            })),
        })
    }

    /// Largest payload of one message (a UDP datagram, a TCP chunk).
    pub fn max_payload(&self) -> usize {
        self.inner.borrow().ch.buf_size() - HDR_LEN
    }

    /// Takes in everything the stack sent. Returns how many messages.
    pub fn poll(&self) -> io::Result<usize> {
        self.inner.borrow_mut().pump()
    }

    /// Before waiting on [`AsRawFd`] in an event loop: flushes and arms the
    /// doorbell. `true`: messages are already waiting (call [`poll`]
    /// instead of sleeping).
    ///
    /// [`poll`]: Stack::poll
    pub fn prepare_wait(&self) -> bool {
        let mut i = self.inner.borrow_mut();
        i.ch.flush();
        let work = i.ch.prepare_sleep();
        i.ch.clear_doorbell();
        work
    }

    /// For an application's own loop over non-blocking sockets: takes in
    /// what the stack sent and, if nothing came and `did_work` is false,
    /// waits adaptively (spin, yield, then sleep on the doorbell up to
    /// `timeout`).
    pub fn wait(&self, did_work: bool, timeout: Option<Duration>) -> io::Result<()> {
        let mut i = self.inner.borrow_mut();
        i.ch.flush();
        if i.pump()? > 0 {
            return Ok(());
        }
        i.wait_step(did_work, timeout)?;
        i.pump().map(|_| ())
    }

    /// Sends `bytes` as one raw message, unchecked. For tests that play a
    /// hostile application (the stack must answer garbage with an error or
    /// a disconnect, never crash); a real application has no use for it.
    pub fn send_raw_for_tests(&self, bytes: &[u8]) -> io::Result<()> {
        let mut i = self.inner.borrow_mut();
        let len = bytes.len();
        Endpoint::send_with(&mut i.ch, len, |buf| {
            buf[..len].copy_from_slice(bytes);
            len
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
        i.ch.flush();
        Ok(())
    }

    /// Error completions and error events received so far (what the
    /// stack answers garbage with).
    pub fn errors_received(&self) -> u64 {
        self.inner.borrow().st.errors
    }

    /// How the blocking calls wait when nothing arrived: spin `spin`
    /// rounds, yield the CPU for `yield_for`, then sleep on the doorbell.
    /// Defaults: `FRAGNET_SPIN` / `FRAGNET_YIELD_US` from the environment,
    /// else 64 and 200 µs.
    pub fn set_wait_policy(&self, policy: packet_ring::linux::Policy) {
        self.inner.borrow_mut().waiter = Waiter::with_policy(policy);
    }

    /// Messages from the stack that were skipped as malformed.
    pub fn bad_messages(&self) -> u64 {
        self.inner.borrow().st.bad
    }
}

impl AsRawFd for Stack {
    /// The channel's doorbell (an eventfd): readable when the stack sent
    /// something after [`Stack::prepare_wait`].
    fn as_raw_fd(&self) -> RawFd {
        self.inner.borrow().ch.doorbell().as_raw_fd()
    }
}

impl AsFd for Stack {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the doorbell lives as long as the channel, which lives as
        // long as `self` (the Rc holds it).
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

impl Inner {
    pub fn check_up(&self) -> io::Result<()> {
        if let Some(e) = self.st.closed {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "the stack closed the socket channel: {}",
                    io::Error::from_raw_os_error(e)
                ),
            ));
        }
        match self.ch.state() {
            State::Up => Ok(()),
            State::Disconnected(why) => Err(down(why)),
        }
    }

    /// Receives everything waiting.
    pub fn pump(&mut self) -> io::Result<usize> {
        let Inner { ch, st, .. } = self;
        let mut total = 0;
        loop {
            let n = ch.recv(64, |buf| st.dispatch(buf)).map_err(down)?;
            total += n;
            if n < 64 {
                break;
            }
        }
        if total > 0 {
            // Buffers returned: the stack may be waiting for them.
            ch.flush();
        }
        Ok(total)
    }

    /// Queues a message (waiting for a free buffer if needed).
    pub fn send(&mut self, m: &Msg, payload: &[u8]) -> io::Result<()> {
        let len = HDR_LEN + payload.len();
        if len > self.ch.buf_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message longer than a channel buffer",
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = Endpoint::send_with(&mut self.ch, len, |buf| {
                m.emit(buf);
                buf[HDR_LEN..len].copy_from_slice(payload);
                len
            });
            match r {
                Ok(_) => return Ok(()),
                Err(packet_ring::TxError::Full) => {
                    self.ch.flush();
                    self.pump()?;
                    if Instant::now() > deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "socket channel stayed full for 30 s (stack not serving)",
                        ));
                    }
                    self.wait_once(Some(Duration::from_millis(10)))?;
                }
                Err(e) => {
                    self.check_up()?;
                    return Err(io::Error::other(e.to_string()));
                }
            }
        }
    }

    /// One step of the adaptive wait (spin, yield, then sleep on the
    /// doorbell). `did_work` resets the idle spell.
    pub fn wait_step(&mut self, did_work: bool, timeout: Option<Duration>) -> io::Result<()> {
        self.check_up()?;
        let Inner {
            ch,
            waiter,
            control,
            ..
        } = self;
        let control_fd;
        let extra: &[BorrowedFd<'_>] = match control {
            Some(c) => {
                control_fd = [c.fd()];
                &control_fd
            }
            None => &[],
        };
        let wake = waiter.wait(did_work, std::iter::once(ch), extra, timeout)?;
        // The control socket is looked at only when the application was
        // idle long enough to sleep: no system call on a busy path.
        let control_due = match wake {
            Wake::Woken => waiter.extra_ready(0),
            Wake::TimedOut => true,
            _ => false,
        };
        if control_due && self.control.is_some() {
            self.serve_control();
        }
        Ok(())
    }

    /// Answers `init`'s requests on the control socket (INTERNALS.md,
    /// "Control socket"): `ping`, `stats` (this library's counters),
    /// `shutdown` (exit now, cleanly) and nothing else — an application
    /// holds no filter and no other channel. A closed control socket means
    /// init is gone: the application exits, as every component does.
    fn serve_control(&mut self) {
        loop {
            let Some(control) = self.control.as_mut() else {
                return;
            };
            let msg = match control.recv() {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    fragnet_host::info!("control socket closed (init is gone): exiting");
                    std::process::exit(0);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    fragnet_host::warn!("control socket: {e}");
                    return;
                }
            };
            let reply = match msg.verb.as_str() {
                "ping" => "ok".to_string(),
                "stats" => format!(
                    "ok\nsockets {}\nbad_messages {}\nerrors_received {}",
                    self.st.socks.len(),
                    self.st.bad,
                    self.st.errors
                ),
                "shutdown" => {
                    let _ = control.reply("ok");
                    self.ch.flush();
                    std::process::exit(0);
                }
                other => format!("error\n'{other}' is not supported by an application"),
            };
            if let Err(e) = control.reply(&reply) {
                fragnet_host::warn!("control socket: {e}");
                return;
            }
        }
    }

    fn wait_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_step(false, timeout)
    }

    pub fn tag(&mut self) -> u32 {
        let t = self.st.next_tag;
        self.st.next_tag = t.wrapping_add(1).max(1);
        t
    }
}

impl Stack {
    /// Sends a request and waits for its completion. Returns the `Done`.
    pub(crate) fn call(&self, m: Msg, payload: &[u8]) -> io::Result<Msg> {
        let mut i = self.inner.borrow_mut();
        i.check_up()?;
        let tag = i.tag();
        i.send(&m.tag(tag), payload)?;
        i.ch.flush();
        let mut work = true;
        // The stack answers every request; a connect gives up after 10 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            work |= i.pump()? > 0;
            if let Some(d) = i.st.done.remove(&tag) {
                return Ok(d);
            }
            i.check_up()?;
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the stack did not answer a request within 60 s",
                ));
            }
            i.wait_step(work, Some(Duration::from_millis(100)))?;
            work = false;
        }
    }

    /// Like [`call`](Self::call), failing with the completion's errno.
    pub(crate) fn call_ok(&self, m: Msg) -> io::Result<Msg> {
        let d = self.call(m, &[])?;
        if d.val < 0 {
            Err(errno_err(-d.val))
        } else {
            Ok(d)
        }
    }

    /// Waits until `ready` returns `Some`, pumping the channel. With
    /// `nonblocking`, one pump only, then `WouldBlock`.
    pub(crate) fn wait_for<T>(
        &self,
        nonblocking: bool,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&mut Inner) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut i = self.inner.borrow_mut();
        let mut work = i.pump()? > 0;
        loop {
            i.check_up()?;
            if let Some(r) = ready(&mut i) {
                // Credit returns and other requests made by `ready` go now.
                i.ch.flush();
                return r;
            }
            if nonblocking {
                i.ch.flush();
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    Some(d - now)
                }
                None => None,
            };
            i.wait_step(work, left.or(Some(Duration::from_millis(100))))?;
            work = i.pump()? > 0;
        }
    }

    /// Registers a socket's state under its id.
    pub(crate) fn add_sock(&self, id: u32, s: SockState) {
        self.inner.borrow_mut().st.socks.insert(id, s);
    }

    pub(crate) fn remove_sock(&self, id: u32) {
        let mut i = self.inner.borrow_mut();
        i.st.socks.remove(&id);
        let _ = i.send(&Msg::new(Op::Close).sock(id), &[]);
        i.ch.flush();
    }
}

/// Returns consumed receive credit to the stack once a quarter window
/// accumulated.
pub(crate) fn return_credit(i: &mut Inner, id: u32) {
    let Some(s) = i.st.socks.get_mut(&id) else {
        return;
    };
    if s.unreported >= s.window / 4 {
        let n = std::mem::take(&mut s.unreported);
        let _ = i.send(&Msg::new(Op::Recv).sock(id).val(n as i32), &[]);
    }
}
