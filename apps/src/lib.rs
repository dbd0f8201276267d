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
            Udp::Kernel(s) => kernel::recv_batch(s, bufs, meta),
        }
    }

    pub fn send_batch(&self, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        match self {
            Udp::Fragnet(s) => s.send_batch(msgs),
            Udp::Kernel(s) => kernel::send_batch(s, msgs),
        }
    }

    /// Before a load generator's clock starts: sends `probe` to `server`
    /// until one answer comes back (resolves ARP, wakes the server, which
    /// may come up a little after us), for at most 10 s. Uses the socket's
    /// read timeout between tries.
    pub fn warm_up(&self, probe: &[u8], server: SocketAddr) -> io::Result<()> {
        let mut buf = [0u8; 2048];
        let start = std::time::Instant::now();
        loop {
            self.send_to(probe, server)?;
            match self.recv_from(&mut buf) {
                Ok(_) => return Ok(()),
                Err(e)
                    if start.elapsed() < Duration::from_secs(10)
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                Err(e) => return Err(e),
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
    /// Connects, retrying for up to 5 s while the server is not listening
    /// yet (connection refused): components start in parallel.
    pub fn connect(stack: Option<&fragnet::Stack>, addr: SocketAddr) -> io::Result<Tcp> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match Tcp::connect_once(stack, addr) {
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    fn connect_once(stack: Option<&fragnet::Stack>, addr: SocketAddr) -> io::Result<Tcp> {
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

/// Batched kernel UDP I/O: `recvmmsg` (blocking for the first datagram,
/// `MSG_WAITFORONE`) and `sendmmsg`, as a best-practice kernel server does.
mod kernel {
    use std::io;
    use std::mem::zeroed;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::os::fd::AsRawFd;

    const MAX: usize = 64;

    pub fn recv_batch(
        s: &std::net::UdpSocket,
        bufs: &mut [&mut [u8]],
        meta: &mut [fragnet::RecvMeta],
    ) -> io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(MAX);
        // SAFETY: zeroed iovec/mmsghdr/sockaddr_in are valid "empty" values;
        // every pointer set below points into `bufs`/`addrs`, which outlive
        // the call.
        unsafe {
            let mut iov: [libc::iovec; MAX] = zeroed();
            let mut addrs: [libc::sockaddr_in; MAX] = zeroed();
            let mut hdrs: [libc::mmsghdr; MAX] = zeroed();
            for k in 0..n {
                iov[k].iov_base = bufs[k].as_mut_ptr().cast();
                iov[k].iov_len = bufs[k].len();
                hdrs[k].msg_hdr.msg_iov = &mut iov[k];
                hdrs[k].msg_hdr.msg_iovlen = 1;
                hdrs[k].msg_hdr.msg_name = (&mut addrs[k] as *mut libc::sockaddr_in).cast();
                hdrs[k].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            }
            let got = libc::recvmmsg(
                s.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            );
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            for k in 0..got as usize {
                let a = &addrs[k];
                meta[k] = fragnet::RecvMeta {
                    len: hdrs[k].msg_len as usize,
                    addr: SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                        u16::from_be(a.sin_port),
                    )),
                };
            }
            Ok(got as usize)
        }
    }

    pub fn send_batch(s: &std::net::UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        let mut done = 0;
        while done < msgs.len() {
            let chunk = &msgs[done..msgs.len().min(done + MAX)];
            // SAFETY: as in `recv_batch`; the kernel only reads the buffers.
            let sent = unsafe {
                let mut iov: [libc::iovec; MAX] = zeroed();
                let mut addrs: [libc::sockaddr_in; MAX] = zeroed();
                let mut hdrs: [libc::mmsghdr; MAX] = zeroed();
                for (k, (b, to)) in chunk.iter().enumerate() {
                    let SocketAddr::V4(to) = to else {
                        return Err(io::ErrorKind::Unsupported.into());
                    };
                    iov[k].iov_base = b.as_ptr() as *mut _;
                    iov[k].iov_len = b.len();
                    addrs[k].sin_family = libc::AF_INET as u16;
                    addrs[k].sin_port = to.port().to_be();
                    addrs[k].sin_addr.s_addr = u32::from(*to.ip()).to_be();
                    hdrs[k].msg_hdr.msg_iov = &mut iov[k];
                    hdrs[k].msg_hdr.msg_iovlen = 1;
                    hdrs[k].msg_hdr.msg_name = (&mut addrs[k] as *mut libc::sockaddr_in).cast();
                    hdrs[k].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                }
                libc::sendmmsg(s.as_raw_fd(), hdrs.as_mut_ptr(), chunk.len() as u32, 0)
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            done += sent as usize;
        }
        Ok(done)
    }
}
