//! UDP sockets.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::proto::{Msg, Op, KIND_UDP};
use crate::stack::{errno_err, return_credit, Inner, SockState, Stack, WINDOW};

pub(crate) fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "IPv6 is not supported by the socket channel",
        )),
    }
}

/// Metadata of one datagram of [`UdpSocket::recv_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes copied into the buffer (the datagram is cut to the buffer).
    pub len: usize,
    pub addr: SocketAddr,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        }
    }
}

/// A UDP socket on the application's fragnet stack, like
/// `std::net::UdpSocket`.
pub struct UdpSocket {
    stack: Stack,
    id: u32,
    local: SocketAddrV4,
    peer: Cell<Option<SocketAddrV4>>,
    nonblocking: Cell<bool>,
    read_timeout: Cell<Option<Duration>>,
}

/// Takes one datagram out of `s.rx` into `buf`; (len, from).
fn pop_datagram(i: &mut Inner, id: u32, buf: &mut [u8]) -> Option<(usize, SocketAddrV4)> {
    let s = i.st.socks.get_mut(&id)?;
    if s.rx.len() < 8 {
        return None;
    }
    let mut h = [0u8; 8];
    for (k, b) in s.rx.drain(..8).enumerate() {
        h[k] = b;
    }
    let len = u16::from_le_bytes([h[0], h[1]]) as usize;
    let from = SocketAddrV4::new(
        Ipv4Addr::new(h[2], h[3], h[4], h[5]),
        u16::from_le_bytes([h[6], h[7]]),
    );
    let n = len.min(buf.len());
    let (a, b) = s.rx.as_slices();
    let first = n.min(a.len());
    buf[..first].copy_from_slice(&a[..first]);
    buf[first..n].copy_from_slice(&b[..n - first]);
    s.rx.drain(..len);
    s.unreported += len as u32;
    Some((n, from))
}

impl UdpSocket {
    /// Creates a socket bound to `addr` (port 0: an ephemeral port; the IP
    /// must be unspecified or the stack's).
    pub fn bind(stack: &Stack, addr: SocketAddr) -> io::Result<UdpSocket> {
        let addr = v4(addr)?;
        let open = stack.call_ok(Msg::new(Op::Open).aux(KIND_UDP).val(WINDOW as i32))?;
        let id = open.sock;
        stack.add_sock(id, SockState::new(true, WINDOW));
        let d = match stack.call_ok(Msg::new(Op::Bind).sock(id).addr(addr)) {
            Ok(d) => d,
            Err(e) => {
                stack.remove_sock(id);
                return Err(e);
            }
        };
        Ok(UdpSocket {
            stack: stack.clone(),
            id,
            local: d.addr,
            peer: Cell::new(None),
            nonblocking: Cell::new(false),
            read_timeout: Cell::new(None),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.peer
            .get()
            .map(SocketAddr::V4)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.set(nonblocking);
        Ok(())
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(t);
        Ok(())
    }

    /// Sets the default peer of `send`/`recv` (datagrams from others are
    /// then dropped by `recv`).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        let addr = v4(addr)?;
        self.stack
            .call_ok(Msg::new(Op::Connect).sock(self.id).addr(addr))?;
        self.peer.set(Some(addr));
        Ok(())
    }

    fn queue(&self, i: &mut Inner, buf: &[u8], to: SocketAddrV4) -> io::Result<()> {
        if buf.len() > i.ch.buf_size() - crate::proto::HDR_LEN {
            return Err(errno_err(crate::proto::errno::EMSGSIZE));
        }
        if let Some(e) = i.st.socks.get_mut(&self.id).and_then(|s| s.error.take()) {
            return Err(errno_err(e));
        }
        i.send(&Msg::new(Op::Send).sock(self.id).addr(to), buf)
    }

    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        let to = v4(addr)?;
        let mut i = self.stack.inner.borrow_mut();
        self.queue(&mut i, buf, to)?;
        i.ch.flush();
        Ok(buf.len())
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let to = self
            .peer
            .get()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        self.send_to(buf, SocketAddr::V4(to))
    }

    /// Queues several datagrams and flushes once. Returns how many.
    pub fn send_batch(&self, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        let mut i = self.stack.inner.borrow_mut();
        for (k, (buf, addr)) in msgs.iter().enumerate() {
            if let Err(e) = v4(*addr).and_then(|to| self.queue(&mut i, buf, to)) {
                i.ch.flush();
                return if k == 0 { Err(e) } else { Ok(k) };
            }
        }
        i.ch.flush();
        Ok(msgs.len())
    }

    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (id, peer) = (self.id, self.peer.get());
        self.stack
            .wait_for(self.nonblocking.get(), self.read_timeout.get(), |i| loop {
                let (n, from) = pop_datagram(i, id, buf)?;
                return_credit(i, id);
                if peer.is_none_or(|p| p == from) {
                    return Some(Ok((n, SocketAddr::V4(from))));
                }
            })
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_from(buf).map(|(n, _)| n)
    }

    /// Receives up to `bufs.len()` datagrams (at least one unless
    /// non-blocking). Returns how many; `meta[k]` describes `bufs[k]`.
    pub fn recv_batch(&self, bufs: &mut [&mut [u8]], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let max = bufs.len().min(meta.len());
        if max == 0 {
            return Ok(0);
        }
        let (id, peer) = (self.id, self.peer.get());
        self.stack
            .wait_for(self.nonblocking.get(), self.read_timeout.get(), |i| {
                let mut k = 0;
                while k < max {
                    let Some((n, from)) = pop_datagram(i, id, bufs[k]) else {
                        break;
                    };
                    if peer.is_none_or(|p| p == from) {
                        meta[k] = RecvMeta {
                            len: n,
                            addr: SocketAddr::V4(from),
                        };
                        k += 1;
                    }
                }
                return_credit(i, id);
                (k > 0).then_some(Ok(k))
            })
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        self.stack.remove_sock(self.id);
    }
}
