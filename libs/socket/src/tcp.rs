//! TCP listeners and streams.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::proto::{Msg, Op, HDR_LEN, KIND_TCP, OPT_NODELAY, SHUT_WR};
use crate::stack::{errno_err, return_credit, SockState, Stack, WINDOW};
use crate::udp::v4;

/// Default listen backlog: smoltcp listening sockets kept per port.
pub const DEFAULT_BACKLOG: u32 = 64;

fn open_tcp(stack: &Stack) -> io::Result<u32> {
    let d = stack.call_ok(Msg::new(Op::Open).aux(KIND_TCP).val(WINDOW as i32))?;
    stack.add_sock(d.sock, SockState::new(false, WINDOW));
    Ok(d.sock)
}

/// A listening TCP socket, like `std::net::TcpListener`.
pub struct TcpListener {
    stack: Stack,
    id: u32,
    local: SocketAddrV4,
    nonblocking: Cell<bool>,
}

impl TcpListener {
    /// Binds and listens with the default backlog.
    pub fn bind(stack: &Stack, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind_with_backlog(stack, addr, DEFAULT_BACKLOG)
    }

    /// Binds and listens; `backlog` connections can be pending (in the
    /// handshake or waiting for `accept`) at once.
    pub fn bind_with_backlog(
        stack: &Stack,
        addr: SocketAddr,
        backlog: u32,
    ) -> io::Result<TcpListener> {
        let addr = v4(addr)?;
        let id = open_tcp(stack)?;
        let r = stack
            .call_ok(Msg::new(Op::Bind).sock(id).addr(addr))
            .and_then(|d| {
                stack.call_ok(
                    Msg::new(Op::Listen)
                        .sock(id)
                        .aux(backlog)
                        .val(WINDOW as i32),
                )?;
                Ok(d.addr)
            });
        match r {
            Ok(local) => Ok(TcpListener {
                stack: stack.clone(),
                id,
                local,
                nonblocking: Cell::new(false),
            }),
            Err(e) => {
                stack.remove_sock(id);
                Err(e)
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.set(nonblocking);
        Ok(())
    }

    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let id = self.id;
        let (sid, peer) = self.stack.wait_for(self.nonblocking.get(), None, |i| {
            let l = i.st.socks.get_mut(&id)?;
            l.accepted.pop_front().map(Ok)
        })?;
        let stream = TcpStream {
            stack: self.stack.clone(),
            id: sid,
            local: self.local,
            peer,
            nonblocking: Cell::new(false),
            read_timeout: Cell::new(None),
            read_shut: Cell::new(false),
        };
        Ok((stream, SocketAddr::V4(peer)))
    }

    /// An iterator over accepted connections, like `std`'s.
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<TcpStream>> + '_ {
        std::iter::from_fn(move || Some(self.accept().map(|(s, _)| s)))
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.stack.remove_sock(self.id);
    }
}

/// A TCP connection, like `std::net::TcpStream` (`Read` + `Write`).
pub struct TcpStream {
    stack: Stack,
    id: u32,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    nonblocking: Cell<bool>,
    read_timeout: Cell<Option<Duration>>,
    read_shut: Cell<bool>,
}

impl TcpStream {
    /// Connects (blocking until established or refused).
    pub fn connect(stack: &Stack, addr: SocketAddr) -> io::Result<TcpStream> {
        let peer = v4(addr)?;
        let id = open_tcp(stack)?;
        match stack.call_ok(Msg::new(Op::Connect).sock(id).addr(peer)) {
            Ok(d) => Ok(TcpStream {
                stack: stack.clone(),
                id,
                local: d.addr,
                peer,
                nonblocking: Cell::new(false),
                read_timeout: Cell::new(None),
                read_shut: Cell::new(false),
            }),
            Err(e) => {
                stack.remove_sock(id);
                Err(e)
            }
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.peer))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.set(nonblocking);
        Ok(())
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(t);
        Ok(())
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.stack.call_ok(
            Msg::new(Op::SetOpt)
                .sock(self.id)
                .aux(OPT_NODELAY)
                .val(nodelay as i32),
        )?;
        Ok(())
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.read_shut.set(true);
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.stack
                .call_ok(Msg::new(Op::Shutdown).sock(self.id).aux(SHUT_WR))?;
        }
        Ok(())
    }

    /// Reads what is there (blocking for at least one byte unless
    /// non-blocking); `Ok(0)` at end of stream.
    pub fn read_bytes(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.read_shut.get() {
            return Ok(0);
        }
        let id = self.id;
        self.stack
            .wait_for(self.nonblocking.get(), self.read_timeout.get(), |i| {
                let s = i.st.socks.get_mut(&id)?;
                if !s.rx.is_empty() {
                    let n = buf.len().min(s.rx.len());
                    let (a, b) = s.rx.as_slices();
                    let first = n.min(a.len());
                    buf[..first].copy_from_slice(&a[..first]);
                    buf[first..n].copy_from_slice(&b[..n - first]);
                    s.rx.drain(..n);
                    s.unreported += n as u32;
                    return_credit(i, id);
                    return Some(Ok(n));
                }
                if s.eof {
                    return Some(Ok(0));
                }
                s.error.take().map(|e| {
                    s.eof = true;
                    Err(errno_err(e))
                })
            })
    }

    /// Queues as much of `buf` as the stack has room for (at least one
    /// byte, blocking unless non-blocking).
    pub fn write_bytes(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id;
        let nonblocking = self.nonblocking.get();
        self.stack.wait_for(nonblocking, None, |i| {
            let max = i.ch.buf_size() - HDR_LEN;
            let s = i.st.socks.get_mut(&id)?;
            if let Some(e) = s.error {
                return Some(Err(errno_err(e)));
            }
            let credit = s.credit();
            if credit == 0 {
                return None;
            }
            let total = credit.min(buf.len());
            let mut done = 0;
            while done < total {
                let n = (total - done).min(max);
                if let Err(e) = i.send(&Msg::new(Op::Send).sock(id), &buf[done..done + n]) {
                    return Some(if done > 0 { Ok(done) } else { Err(e) });
                }
                done += n;
                if let Some(s) = i.st.socks.get_mut(&id) {
                    s.used = s.used.wrapping_add(n as u32);
                }
            }
            Some(Ok(done))
        })
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_bytes(buf)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_bytes(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        self.stack.remove_sock(self.id);
    }
}
