//! The control socket between `init` and a component.
//!
//! A `SOCK_SEQPACKET` unix socket: one message per datagram, UTF-8 text whose
//! first line is the verb and its arguments (separated by blanks) and whose
//! remaining lines are the body; file descriptors ride along as
//! `SCM_RIGHTS`. Every request gets exactly one reply, whose verb is `ok` or
//! `error` (see `docs/INTERNALS.md`, "Control socket").
//!
//! ```text
//! channel nic B          (+ memfd, wake_a, wake_b)
//! nft load               (body: the ruleset text)
//! ok                     (a reply)
//! error                  (a reply; body: the message)
//! ```
//!
//! Messages are never empty, so a zero-length read is end of file: `init`
//! (or the component) has gone.

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

/// Largest control message (text), in bytes. Rulesets travel in one message.
pub const MAX_MSG: usize = 1 << 20;
/// Most file descriptors accepted with one message.
pub const MAX_FDS: usize = 16;

/// One parsed control message.
#[derive(Debug)]
pub struct ControlMsg {
    /// First word of the first line (`ping`, `channel`, `nft`, `ok`, …).
    pub verb: String,
    /// The remaining words of the first line.
    pub args: Vec<String>,
    /// Everything after the first line (no leading newline; may be empty).
    pub body: String,
    /// Descriptors that came with the message, owned (close-on-exec).
    pub fds: Vec<OwnedFd>,
}

impl ControlMsg {
    /// Parses message text (without descriptors).
    pub fn parse(text: &str) -> io::Result<ControlMsg> {
        let (head, body) = match text.split_once('\n') {
            Some((h, b)) => (h, b),
            None => (text, ""),
        };
        let mut words = head.split_ascii_whitespace();
        let verb = words.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "control message has an empty first line (expected a verb)",
            )
        })?;
        Ok(ControlMsg {
            verb: verb.to_string(),
            args: words.map(str::to_string).collect(),
            body: body.to_string(),
            fds: Vec::new(),
        })
    }

    /// The first line after the verb, exactly as sent (keeps quoting and
    /// spacing that `args` splits away; useful for `nft add rule …`).
    pub fn rest_of_line(text: &str) -> &str {
        let head = text.split('\n').next().unwrap_or("");
        let head = head.trim_start();
        match head.find(|c: char| c.is_ascii_whitespace()) {
            Some(i) => head[i..].trim(),
            None => "",
        }
    }

    /// `true` for an `ok` reply.
    pub fn is_ok(&self) -> bool {
        self.verb == "ok"
    }
}

/// One end of a control socket.
#[derive(Debug)]
pub struct Control {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// See [`Control::make_room`]. The forcing variants need CAP_NET_ADMIN;
/// without it, fall back to the capped ones (`net.core.wmem_max`).
fn make_room(fd: &OwnedFd) {
    let size = MAX_MSG + 64 * 1024;
    if rustix::net::sockopt::set_socket_send_buffer_size_force(fd, size).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, size);
    }
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(fd, size).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, size);
    }
}

impl Control {
    /// Wraps a `SOCK_SEQPACKET` unix socket.
    pub fn from_fd(fd: OwnedFd) -> Control {
        Control {
            fd,
            buf: Vec::new(),
        }
    }

    /// A connected pair: `init` keeps the [`Control`] and hands the
    /// [`OwnedFd`] to the child. Both ends are close-on-exec; the spawner
    /// clears that flag on the child's copy only.
    pub fn pair() -> io::Result<(Control, OwnedFd)> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        for fd in [&a, &b] {
            make_room(fd);
        }
        Ok((Control::from_fd(a), b))
    }

    /// Makes the socket's buffers big enough for a [`MAX_MSG`] message
    /// (rulesets travel in one datagram; an AF_UNIX datagram larger than the
    /// sender's buffer fails with EMSGSIZE). Every control connection needs
    /// it: init's children, `fragnet` clients, init's accepted connections.
    pub fn make_room(&self) {
        make_room(&self.fd);
    }

    /// The socket, for `poll`/`epoll` (readable: a message or EOF waits).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Gives the socket back.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Switches between blocking and non-blocking receive. In non-blocking
    /// mode [`recv`](Self::recv) returns `ErrorKind::WouldBlock` when no
    /// message waits.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let mut flags = rustix::fs::fcntl_getfl(&self.fd)?;
        flags.set(rustix::fs::OFlags::NONBLOCK, nonblocking);
        rustix::fs::fcntl_setfl(&self.fd, flags)?;
        Ok(())
    }

    /// Receives one message. `Ok(None)`: the peer closed the socket.
    ///
    /// A message that is not UTF-8, has no verb, is longer than [`MAX_MSG`]
    /// or carries more than [`MAX_FDS`] descriptors is consumed (its
    /// descriptors closed) and reported as an `InvalidData` error; the
    /// socket stays usable.
    pub fn recv(&mut self) -> io::Result<Option<ControlMsg>> {
        // Learn the size of the next message first (MSG_PEEK|MSG_TRUNC
        // returns its real length), so the buffer grows only for big ones.
        let mut probe = [0u8; 1];
        let len = loop {
            match rustix::net::recv(&self.fd, &mut probe, RecvFlags::PEEK | RecvFlags::TRUNC) {
                Ok((_, len)) => break len,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let want = len.clamp(1, MAX_MSG + 1);
        if self.buf.len() < want {
            self.buf
                .resize(want.next_power_of_two().min(MAX_MSG + 1), 0);
        }
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            match recvmsg(&self.fd, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
                Ok(m) => break m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Ok(None);
        }
        let bad = |what: String| Err(io::Error::new(io::ErrorKind::InvalidData, what));
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return bad(format!(
                "control message carried more than {MAX_FDS} file descriptors"
            ));
        }
        if msg.bytes > MAX_MSG || msg.flags.contains(ReturnFlags::TRUNC) {
            return bad(format!("control message longer than {MAX_MSG} bytes"));
        }
        let text = match std::str::from_utf8(&self.buf[..msg.bytes]) {
            Ok(t) => t,
            Err(e) => return bad(format!("control message is not UTF-8: {e}")),
        };
        let mut parsed = ControlMsg::parse(text)?;
        parsed.fds = fds;
        Ok(Some(parsed))
    }

    /// Like [`recv`](Self::recv), but gives up after `timeout` with
    /// `ErrorKind::TimedOut` (works in blocking and non-blocking mode).
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Option<ControlMsg>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply within {timeout:?}"),
                    ))
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            match self.recv() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Sends one message without descriptors.
    pub fn send(&self, text: &str) -> io::Result<()> {
        self.send_with_fds(text, &[])
    }

    /// Sends a reply (`ok`, `ok\n<body>`, `error\n<message>`).
    pub fn reply(&self, text: &str) -> io::Result<()> {
        self.send(text)
    }

    /// Sends one message with descriptors (at most [`MAX_FDS`]).
    pub fn send_with_fds(&self, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if text.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "control messages must not be empty",
            ));
        }
        if text.len() > MAX_MSG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control message of {} bytes is longer than {MAX_MSG}",
                    text.len()
                ),
            ));
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} descriptors is more than {MAX_FDS}", fds.len()),
            ));
        }
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other(
                "no room for descriptors in control message",
            ));
        }
        let iov = [IoSlice::new(text.as_bytes())];
        loop {
            match sendmsg(&self.fd, &iov, &mut cmsg, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a request and waits (at most `timeout`) for its one reply.
    /// `Ok(None)`: the peer closed the socket.
    pub fn request(
        &mut self,
        text: &str,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> io::Result<Option<ControlMsg>> {
        self.send_with_fds(text, fds)?;
        self.recv_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn parse_splits_verb_args_body() {
        let m = ControlMsg::parse("channel nic:kv0 A\nline1\nline2").unwrap();
        assert_eq!(m.verb, "channel");
        assert_eq!(m.args, vec!["nic:kv0", "A"]);
        assert_eq!(m.body, "line1\nline2");
        let m = ControlMsg::parse("ping").unwrap();
        assert_eq!(m.verb, "ping");
        assert!(m.args.is_empty() && m.body.is_empty());
        assert!(ControlMsg::parse("\nbody").is_err());
        assert_eq!(
            ControlMsg::rest_of_line("nft add rule inet f input  meta comment \"a b\"\nx"),
            "add rule inet f input  meta comment \"a b\""
        );
    }

    #[test]
    fn messages_and_fds_cross_and_eof_is_none() {
        let (mut init, child) = Control::pair().unwrap();
        let mut comp = Control::from_fd(child);
        let (r, w) = rustix::pipe::pipe().unwrap();
        comp.send_with_fds("channel nic B", &[w.as_fd(), r.as_fd()])
            .unwrap();
        let m = init.recv().unwrap().unwrap();
        assert_eq!((m.verb.as_str(), m.args.len()), ("channel", 2));
        assert_eq!(m.fds.len(), 2);
        // The passed write end reaches the same pipe.
        let mut passed_w = std::fs::File::from(m.fds.into_iter().next().unwrap());
        passed_w.write_all(b"hi").unwrap();
        drop(passed_w);
        drop(w);
        let mut got = [0u8; 2];
        std::fs::File::from(r).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");

        // A big body arrives whole.
        let body = "x".repeat(300_000);
        init.send(&format!("nft load\n{body}")).unwrap();
        let m = comp.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(m.body.len(), body.len());

        // Bad UTF-8 is an error, and the socket goes on working.
        rustix::net::send(init.fd(), b"\xff\xfe", SendFlags::empty()).unwrap();
        let e = comp.recv().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        init.reply("ok").unwrap();
        assert!(comp.recv().unwrap().unwrap().is_ok());

        // Non-blocking: nothing waiting.
        comp.set_nonblocking(true).unwrap();
        assert_eq!(comp.recv().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let e = comp.recv_timeout(Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        drop(init);
        assert!(comp.recv().unwrap().is_none());
    }
}
