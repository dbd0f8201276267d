//! tcp_echo: echoes every TCP connection's bytes back; closes its side
//! after the peer closed and everything was echoed.
//!
//! `tcp_echo [--port 7] [--net fragnet|kernel]`. On fragnet all connections
//! are served by one thread with non-blocking sockets and the stack's
//! adaptive wait; on the kernel, one thread per connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use clap::Parser;
use fragnet_apps::{args_with_config, Net};

#[derive(Parser)]
struct Opt {
    #[arg(long, default_value_t = 7)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Net::Fragnet)]
    net: Net,
    #[arg(long, default_value_t = 128)]
    backlog: u32,
}

/// Bytes read and not yet echoed, per connection, at most.
const MAX_PENDING: usize = 4 << 20;

struct Conn {
    s: fragnet::TcpStream,
    buf: Vec<u8>,
    off: usize,
    eof: bool,
}

fn main() -> io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    let addr = SocketAddr::from(([0, 0, 0, 0], opt.port));
    eprintln!("tcp_echo: listening on port {} ({:?})", opt.port, opt.net);
    match opt.net {
        Net::Kernel => {
            let l = std::net::TcpListener::bind(addr)?;
            for s in l.incoming() {
                let mut s = s?;
                std::thread::spawn(move || {
                    let mut r = s.try_clone()?;
                    io::copy(&mut r, &mut s)?;
                    s.shutdown(Shutdown::Write)
                });
            }
            Ok(())
        }
        Net::Fragnet => serve(opt, addr),
    }
}

fn serve(opt: Opt, addr: SocketAddr) -> io::Result<()> {
    let stack = fragnet::Stack::from_env()?;
    let l = fragnet::TcpListener::bind_with_backlog(&stack, addr, opt.backlog)?;
    l.set_nonblocking(true)?;
    let mut conns: Vec<Conn> = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let mut work = false;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true)?;
                    conns.push(Conn {
                        s,
                        buf: Vec::with_capacity(64 * 1024),
                        off: 0,
                        eof: false,
                    });
                    work = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        conns.retain_mut(|c| {
            let mut alive = true;
            if c.off < c.buf.len() {
                match (&c.s).write(&c.buf[c.off..]) {
                    Ok(n) => {
                        c.off += n;
                        work = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return false,
                }
            }
            if c.off >= 256 * 1024 && c.off < c.buf.len() {
                c.buf.drain(..c.off);
                c.off = 0;
            }
            if c.off == c.buf.len() {
                c.buf.clear();
                c.off = 0;
                if c.eof {
                    let _ = c.s.shutdown(Shutdown::Write);
                    return false;
                }
            }
            // Keep reading while the echo waits to be written (up to
            // MAX_PENDING): a peer that sends everything before it reads
            // must not see our window close because our writes wait.
            if !c.eof && c.buf.len() - c.off < MAX_PENDING {
                match (&c.s).read(&mut tmp) {
                    Ok(0) => {
                        c.eof = true;
                        work = true;
                    }
                    Ok(n) => {
                        c.buf.extend_from_slice(&tmp[..n]);
                        work = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => alive = false,
                }
            }
            alive
        });
        stack.wait(work, Some(Duration::from_millis(100)))?;
    }
}
