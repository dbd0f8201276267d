//! http_hello: a small HTTP/1.1 server (keep-alive, GET/HEAD) answering
//! every path with a short text page that names the path and the network
//! subsystem. One thread, non-blocking sockets, like `tcp_echo`.
//!
//! `http_hello [--port 80] [--net fragnet|kernel]`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fragnet_apps::{args_with_config, Net};

#[derive(Parser)]
struct Opt {
    #[arg(long, default_value_t = 80)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Net::Fragnet)]
    net: Net,
}

/// One connection: bytes of requests not yet answered, answer bytes not
/// yet written.
struct Conn<S> {
    s: S,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    off: usize,
    close: bool,
}

/// Answers every complete request in `inbuf`. Returns false on a request
/// too large or malformed (the connection then closes after a 400).
fn answer(inbuf: &mut Vec<u8>, out: &mut Vec<u8>, net: Net) -> bool {
    loop {
        let Some(end) = inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return inbuf.len() <= 16 * 1024;
        };
        let head = String::from_utf8_lossy(&inbuf[..end]).into_owned();
        inbuf.drain(..end + 4);
        let mut words = head.lines().next().unwrap_or("").split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let close = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("connection:")
                && l.to_ascii_lowercase().contains("close")
        });
        let (status, body) = match method {
            "GET" | "HEAD" if path.starts_with('/') => (
                "200 OK",
                format!("hello from fragnet http_hello ({net:?}): {path}\n"),
            ),
            "GET" | "HEAD" => ("400 Bad Request", "bad request\n".to_string()),
            _ => ("405 Method Not Allowed", "only GET and HEAD\n".to_string()),
        };
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if method != "HEAD" {
            out.extend_from_slice(body.as_bytes());
        }
        if close || status.starts_with('4') {
            return false;
        }
    }
}

/// Serves `c` once: write what is pending, read what came, answer it.
/// Returns (alive, did_work).
fn step<S>(c: &mut Conn<S>, tmp: &mut [u8], net: Net) -> (bool, bool)
where
    for<'a> &'a S: Read + Write,
{
    let mut work = false;
    if c.off < c.out.len() {
        match (&c.s).write(&c.out[c.off..]) {
            Ok(n) => {
                c.off += n;
                work = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return (false, true),
        }
    }
    if c.off == c.out.len() {
        c.out.clear();
        c.off = 0;
        if c.close {
            return (false, true);
        }
    }
    if !c.close {
        match (&c.s).read(tmp) {
            Ok(0) => return (false, true),
            Ok(n) => {
                c.inbuf.extend_from_slice(&tmp[..n]);
                c.close = !answer(&mut c.inbuf, &mut c.out, net);
                work = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return (false, true),
        }
    }
    (true, work)
}

fn main() -> io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    let addr = SocketAddr::from(([0, 0, 0, 0], opt.port));
    eprintln!("http_hello: port {} ({:?})", opt.port, opt.net);
    let mut tmp = vec![0u8; 16 * 1024];
    match opt.net {
        Net::Fragnet => {
            let stack = fragnet::Stack::from_env()?;
            let l = fragnet::TcpListener::bind(&stack, addr)?;
            l.set_nonblocking(true)?;
            let mut conns: Vec<Conn<fragnet::TcpStream>> = Vec::new();
            loop {
                let mut work = false;
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true)?;
                    conns.push(Conn {
                        s,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        off: 0,
                        close: false,
                    });
                    work = true;
                }
                conns.retain_mut(|c| {
                    let (alive, w) = step(c, &mut tmp, opt.net);
                    work |= w;
                    alive
                });
                stack.wait(work, Some(Duration::from_millis(100)))?;
            }
        }
        Net::Kernel => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            let mut conns: Vec<Conn<std::net::TcpStream>> = Vec::new();
            loop {
                let mut work = false;
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true)?;
                    conns.push(Conn {
                        s,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        off: 0,
                        close: false,
                    });
                    work = true;
                }
                conns.retain_mut(|c| {
                    let (alive, w) = step(c, &mut tmp, opt.net);
                    work |= w;
                    alive
                });
                if !work {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_requests_and_errors() {
        let mut inb = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c".to_vec();
        let mut out = Vec::new();
        assert!(answer(&mut inb, &mut out, Net::Kernel));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("200 OK").count(), 2);
        assert!(text.contains(": /a\n"));
        assert!(!text.contains(": /b\n"), "HEAD has no body");
        assert_eq!(inb, b"GET /c");
        let mut inb = b"POST / HTTP/1.1\r\n\r\n".to_vec();
        let mut out = Vec::new();
        assert!(!answer(&mut inb, &mut out, Net::Kernel));
        assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 405"));
        let mut inb = vec![b'x'; 20000];
        assert!(!answer(&mut inb, &mut Vec::new(), Net::Kernel));
    }
}
