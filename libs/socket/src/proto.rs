//! The socket channel protocol between an application and its `ip_stack`.
//!
//! The application is side `B` of the channel labelled `socket` (the stack
//! sees it as `socket:<app name>`, side `A`). Every ring buffer carries one
//! message: a fixed 24-byte header, then an optional payload (the bytes of a
//! send or of received data). Messages flow in batches; nothing here
//! allocates.
//!
//! Requests (application → stack): [`Op::Open`], [`Op::Bind`],
//! [`Op::Connect`], [`Op::Listen`], [`Op::Send`], [`Op::Recv`] (grants
//! receive credit), [`Op::Close`], [`Op::Shutdown`], [`Op::SetOpt`].
//! Requests that take a `tag` are answered by one [`Op::Done`] completion
//! carrying the same tag; `Send`, `Recv`, `Close` are not answered (their
//! failures arrive as an [`Op::Error`] event on the socket).
//!
//! Events (stack → application): [`Op::Done`], [`Op::Data`],
//! [`Op::Accepted`], [`Op::SendCredit`], [`Op::Eof`], [`Op::Error`].
//!
//! Flow control is by credit in both directions, so no data is lost between
//! the two processes and no side buffers without bound:
//!
//! * receive: the stack moves bytes out of a smoltcp socket only while the
//!   application has granted credit for them (the `val` of `Open`/`Listen` is
//!   the initial credit, each `Recv` adds to it as the application consumes);
//!   a slow reader closes the TCP window, as in the kernel;
//! * send: the stack grants the application a cumulative byte count
//!   ([`Op::SendCredit`], wrapping `u32`) that it may have sent on a stream;
//!   it equals the bytes the stack took so far plus the room left in the
//!   smoltcp send buffer, so a `Send` within its credit always fits. A `Send`
//!   beyond the credit is a protocol violation and is answered by an error.
//!
//! Layout of the header (little-endian):
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 0 | `op` | [`Op`] |
//! | 1 | `flags` | op-specific |
//! | 2..4 | `port` | a port (bind/connect/send_to target, data source, …) |
//! | 4..8 | `sock` | socket id (assigned by the stack in `Done` of `Open`) |
//! | 8..12 | `tag` | request tag, echoed by `Done` |
//! | 12..16 | `addr` | IPv4 address, network byte order |
//! | 16..20 | `val` | result (≥ 0, or a negated errno), credit, option value |
//! | 20..24 | `aux` | socket kind, backlog, option id, new socket id, … |

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

/// Length of the fixed message header.
pub const HDR_LEN: usize = 24;

/// Socket kinds for [`Op::Open`] (`aux`).
pub const KIND_UDP: u32 = 1;
/// TCP stream socket.
pub const KIND_TCP: u32 = 2;

/// Options for [`Op::SetOpt`] (`aux`), value in `val`.
pub const OPT_NODELAY: u32 = 1;
/// TCP keep-alive interval in milliseconds (0: off).
pub const OPT_KEEPALIVE_MS: u32 = 2;
/// IP time-to-live / hop limit.
pub const OPT_TTL: u32 = 3;

/// `sock` of an [`Op::Error`] about the channel itself: the stack closed
/// it (the application broke the protocol too often); `val` says why.
pub const SOCK_CHANNEL: u32 = u32::MAX;

/// `how` for [`Op::Shutdown`] (`aux`): no more sends (a FIN).
pub const SHUT_WR: u32 = 1;

/// Errno values the protocol carries (Linux numbering, the library maps them
/// to `std::io::ErrorKind`).
pub mod errno {
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EINVAL: i32 = 22;
    pub const EMFILE: i32 = 24;
    pub const EPIPE: i32 = 32;
    pub const EMSGSIZE: i32 = 90;
    pub const EPROTOTYPE: i32 = 91;
    pub const ENOPROTOOPT: i32 = 92;
    pub const EPROTONOSUPPORT: i32 = 93;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EADDRINUSE: i32 = 98;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
    pub const ECONNABORTED: i32 = 103;
    pub const ECONNRESET: i32 = 104;
    pub const ENOBUFS: i32 = 105;
    pub const EISCONN: i32 = 106;
    pub const ENOTCONN: i32 = 107;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
}

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Create a socket of kind `aux`; `val` = initial receive credit.
    Open = 1,
    /// Bind to `addr:port` (port 0: an ephemeral port).
    Bind = 2,
    /// TCP: connect to `addr:port`; answered when established or failed.
    Connect = 3,
    /// TCP: listen with backlog `aux`; `val` = receive credit of each
    /// accepted connection.
    Listen = 4,
    /// Payload to send (UDP: to `addr:port`; TCP: stream bytes).
    Send = 5,
    /// Grant `val` more bytes of receive credit.
    Recv = 6,
    /// Close the socket; its id is free afterwards.
    Close = 7,
    /// Shut down direction `aux` ([`SHUT_WR`]).
    Shutdown = 8,
    /// Set option `aux` to `val`.
    SetOpt = 9,

    /// Completion of the request with this `tag`: `val` ≥ 0 or -errno,
    /// `sock` the (new) socket, `addr:port` a local address where relevant.
    Done = 0x80,
    /// Received bytes on `sock` (UDP: from `addr:port`).
    Data = 0x81,
    /// Listener `sock` accepted a connection, now socket `aux`, from
    /// `addr:port`.
    Accepted = 0x82,
    /// Cumulative send credit `aux` on `sock`.
    SendCredit = 0x83,
    /// The peer closed its sending side: no more data on `sock`.
    Eof = 0x84,
    /// An asynchronous error `val` (-errno) on `sock` (reset, refused …).
    Error = 0x85,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Open,
            2 => Op::Bind,
            3 => Op::Connect,
            4 => Op::Listen,
            5 => Op::Send,
            6 => Op::Recv,
            7 => Op::Close,
            8 => Op::Shutdown,
            9 => Op::SetOpt,
            0x80 => Op::Done,
            0x81 => Op::Data,
            0x82 => Op::Accepted,
            0x83 => Op::SendCredit,
            0x84 => Op::Eof,
            0x85 => Op::Error,
            _ => return None,
        })
    }

    /// Whether the application may send this op (the rest are events).
    pub fn is_request(self) -> bool {
        (self as u8) < 0x80
    }
}

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
    pub op: Op,
    pub flags: u8,
    pub sock: u32,
    pub tag: u32,
    pub addr: SocketAddrV4,
    pub val: i32,
    pub aux: u32,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// Shorter than the header.
    Truncated(usize),
    /// Unknown op byte.
    UnknownOp(u8),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Truncated(n) => {
                write!(
                    f,
                    "message of {n} bytes is shorter than the {HDR_LEN}-byte header"
                )
            }
            ProtoError::UnknownOp(op) => write!(f, "unknown op 0x{op:02x}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl Msg {
    /// A message with every field zero except `op`.
    pub const fn new(op: Op) -> Msg {
        Msg {
            op,
            flags: 0,
            sock: 0,
            tag: 0,
            addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            val: 0,
            aux: 0,
        }
    }

    pub const fn sock(mut self, sock: u32) -> Msg {
        self.sock = sock;
        self
    }

    pub const fn tag(mut self, tag: u32) -> Msg {
        self.tag = tag;
        self
    }

    pub const fn addr(mut self, addr: SocketAddrV4) -> Msg {
        self.addr = addr;
        self
    }

    pub const fn val(mut self, val: i32) -> Msg {
        self.val = val;
        self
    }

    pub const fn aux(mut self, aux: u32) -> Msg {
        self.aux = aux;
        self
    }

    /// Writes the header into `buf[..HDR_LEN]`; returns `HDR_LEN`, or 0 if
    /// `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let Some(h) = buf.get_mut(..HDR_LEN) else {
            return 0;
        };
        let Msg {
            op,
            flags,
            sock,
            tag,
            addr,
            val,
            aux,
        } = *self;
        h[0] = op as u8;
        h[1] = flags;
        h[2..4].copy_from_slice(&addr.port().to_le_bytes());
        h[4..8].copy_from_slice(&sock.to_le_bytes());
        h[8..12].copy_from_slice(&tag.to_le_bytes());
        h[12..16].copy_from_slice(&addr.ip().octets());
        h[16..20].copy_from_slice(&val.to_le_bytes());
        h[20..24].copy_from_slice(&aux.to_le_bytes());
        HDR_LEN
    }

    /// Decodes a message: its header and its payload (the rest of `buf`).
    pub fn parse(buf: &[u8]) -> Result<(Msg, &[u8]), ProtoError> {
        if buf.len() < HDR_LEN {
            return Err(ProtoError::Truncated(buf.len()));
        }
        let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let op = Op::from_u8(buf[0]).ok_or(ProtoError::UnknownOp(buf[0]))?;
        let port = u16::from_le_bytes([buf[2], buf[3]]);
        let ip = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let msg = Msg {
            op,
            flags: buf[1],
            sock: u32_at(4),
            tag: u32_at(8),
            addr: SocketAddrV4::new(ip, port),
            val: u32_at(16) as i32,
            aux: u32_at(20),
        };
        Ok((msg, &buf[HDR_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Msg::new(Op::Connect)
            .sock(0x0102_0304)
            .tag(77)
            .addr(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 8080))
            .val(-errno::ECONNREFUSED)
            .aux(0xdead_beef);
        let mut buf = [0u8; 40];
        assert_eq!(m.emit(&mut buf), HDR_LEN);
        buf[HDR_LEN..HDR_LEN + 3].copy_from_slice(b"abc");
        let (back, payload) = Msg::parse(&buf[..HDR_LEN + 3]).unwrap();
        assert_eq!(back, m);
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn fixed_bytes() {
        let bytes: [u8; HDR_LEN] = [
            0x05, 0x00, 0x39, 0x30, // Send, port 12345
            0x07, 0x00, 0x01, 0x00, // sock 0x10007
            0x00, 0x00, 0x00, 0x00, // tag
            10, 0, 0, 2, // addr
            0xff, 0xff, 0xff, 0xff, // val -1
            0x00, 0x00, 0x00, 0x00,
        ];
        let (m, p) = Msg::parse(&bytes).unwrap();
        assert_eq!(m.op, Op::Send);
        assert_eq!(m.sock, 0x10007);
        assert_eq!(m.addr, "10.0.0.2:12345".parse().unwrap());
        assert_eq!(m.val, -1);
        assert!(p.is_empty());
        let mut out = [0u8; HDR_LEN];
        m.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert_eq!(Msg::parse(&[]), Err(ProtoError::Truncated(0)));
        assert_eq!(Msg::parse(&[1; 23]), Err(ProtoError::Truncated(23)));
        let mut b = [0u8; HDR_LEN];
        b[0] = 0x42;
        assert_eq!(Msg::parse(&b), Err(ProtoError::UnknownOp(0x42)));
        // Every op byte either parses or is an error, never a panic.
        for op in 0..=255u8 {
            b[0] = op;
            let _ = Msg::parse(&b);
        }
        assert_eq!(Msg::new(Op::Open).emit(&mut [0u8; 10]), 0);
    }

    #[test]
    fn requests_and_events_are_split() {
        assert!(Op::Open.is_request() && Op::SetOpt.is_request());
        assert!(!Op::Done.is_request() && !Op::Error.is_request());
    }
}
