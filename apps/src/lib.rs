//! Example applications linked against the fragnet socket library.
//!
//! Every program runs either on its fragnet stack (started by `fragnet
//! run`, which hands it the `socket` channel) or on Linux kernel sockets
//! (`--net kernel`), so a benchmark compares the same program on the two
//! network subsystems. Options come from the command line or, under init,
//! from the attributes of the `<config>` element (`FRAGNET_CONFIG`), the
//! command line winning.
//!
//! [`Udp`] and [`Tcp`] wrap the two socket families behind one interface.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Which network subsystem to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    Fragnet,
    Kernel,
}

/// Command-line arguments, followed by `--key value` pairs made from the
/// `<config>` attributes (so clap parses both; the first occurrence wins
/// for options declared with `overrides_with`... we simply put the config
/// first and the real arguments last, and clap keeps the last).
pub fn args_with_config() -> Vec<String> {
    let mut argv: Vec<String> = std::env::args().collect();
    let Ok(xml) = std::env::var("FRAGNET_CONFIG") else {
        return argv;
    };
    let Ok(node) = fragnet_host::ConfigNode::parse(&xml) else {
        eprintln!("FRAGNET_CONFIG does not parse: {xml}");
        return argv;
    };
    let mut out = vec![argv.remove(0)];
    for (k, v) in &node.attrs {
        out.push(format!("--{}", k.replace('_', "-")));
        out.push(v.clone());
    }
    out.extend(argv);
    out
}

/// The fragnet stack of this process, or `None` on kernel sockets.
pub fn stack(net: Net) -> io::Result<Option<fragnet::Stack>> {
    match net {
        Net::Kernel => Ok(None),
        Net::Fragnet => fragnet::Stack::from_env().map(Some),
    }
}

/// A UDP socket of either kind.
pub enum Udp {
    Kernel(std::net::UdpSocket),
    Fragnet(fragnet::UdpSocket),
}

impl Udp {
    pub fn bind(stack: Option<&fragnet::Stack>, addr: SocketAddr) -> io::Result<Udp> {
        Ok(match stack {
            None => Udp::Kernel(std::net::UdpSocket::bind(addr)?),
            Some(s) => Udp::Fragnet(fragnet::UdpSocket::bind(s, addr)?),
        })
    }

    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self {
            Udp::Kernel(s) => s.send_to(buf, to),
            Udp::Fragnet(s) => s.send_to(buf, to),
        }
    }

    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            Udp::Kernel(s) => s.recv_from(buf),
            Udp::Fragnet(s) => s.recv_from(buf),
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Udp::Kernel(s) => s.set_read_timeout(t),
            Udp::Fragnet(s) => s.set_read_timeout(t),
        }
    }

    /// Receives a batch: at least one datagram (blocking), then whatever
    /// else is already there.
    pub fn recv_batch(
        &self,
        bufs: &mut [&mut [u8]],
        meta: &mut [fragnet::RecvMeta],
    ) -> io::Result<usize> {
        match self {
            Udp::Fragnet(s) => s.recv_batch(bufs, meta),
            Udp::Kernel(s) => {
                let (n, from) = s.recv_from(bufs[0])?;
                meta[0] = fragnet::RecvMeta { len: n, addr: from };
                s.set_nonblocking(true)?;
                let mut k = 1;
                while k < bufs.len().min(meta.len()) {
                    match s.recv_from(bufs[k]) {
                        Ok((n, from)) => {
                            meta[k] = fragnet::RecvMeta { len: n, addr: from };
                            k += 1;
                        }
                        Err(_) => break,
                    }
                }
                s.set_nonblocking(false)?;
                Ok(k)
            }
        }
    }

    pub fn send_batch(&self, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        match self {
            Udp::Fragnet(s) => s.send_batch(msgs),
            Udp::Kernel(s) => {
                for (b, to) in msgs {
                    s.send_to(b, *to)?;
                }
                Ok(msgs.len())
            }
        }
    }
}

/// A TCP stream of either kind.
pub enum Tcp {
    Kernel(std::net::TcpStream),
    Fragnet(fragnet::TcpStream),
}

impl Tcp {
    pub fn connect(stack: Option<&fragnet::Stack>, addr: SocketAddr) -> io::Result<Tcp> {
        Ok(match stack {
            None => {
                let s = std::net::TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Tcp::Kernel(s)
            }
            Some(st) => Tcp::Fragnet(fragnet::TcpStream::connect(st, addr)?),
        })
    }
}

impl Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Tcp::Kernel(s) => s.read(buf),
            Tcp::Fragnet(s) => s.read(buf),
        }
    }
}

impl Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Tcp::Kernel(s) => s.write(buf),
            Tcp::Fragnet(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes a result line to `out` (a file) if given, and to stdout.
pub fn report(out: Option<&std::path::Path>, line: &str) {
    println!("{line}");
    if let Some(p) = out {
        if let Err(e) = std::fs::write(p, format!("{line}\n")) {
            eprintln!("writing {}: {e}", p.display());
        }
    }
}
