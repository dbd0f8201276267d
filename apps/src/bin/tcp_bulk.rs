//! tcp_bulk: TCP bulk transfer, to measure throughput and check the bytes.
//!
//! Server: `tcp_bulk --listen 9000` accepts connections one after another;
//! each: sends `--send` bytes, reads to end of stream. Client: `tcp_bulk
//! --connect 10.77.0.10:9000 [--send BYTES] [--duration S]` does the same
//! from its side. Bytes follow a pattern (byte i = i mod 251) that the
//! receiver checks. Reports bytes each way, seconds and Gbit/s (to stdout
//! and `--out FILE`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use fragnet_apps::{args_with_config, report, stack, Net, Tcp};

#[derive(Parser)]
struct Opt {
    #[arg(long)]
    listen: Option<u16>,
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Bytes to send (0: none; with --duration: send for that long).
    #[arg(long, default_value_t = 0)]
    send: u64,
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = Net::Fragnet)]
    net: Net,
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
}

const CHUNK: usize = 64 * 1024;

fn pattern() -> Vec<u8> {
    // 251 is prime: a chunk boundary never lines up with the pattern.
    (0..CHUNK + 251).map(|i| (i % 251) as u8).collect()
}

/// Whether `data`, found at stream offset `at`, follows the pattern. The
/// pattern repeats every 251 bytes: whole slices are compared (memcmp)
/// against `pat` at the right phase.
fn matches_pattern(pat: &[u8], at: u64, data: &[u8]) -> bool {
    let mut k = 0;
    while k < data.len() {
        let off = ((at + k as u64) % 251) as usize;
        let m = (data.len() - k).min(pat.len() - 251);
        if data[k..k + m] != pat[off..off + m] {
            return false;
        }
        k += m;
    }
    true
}

/// Sends and receives on `s` until done; returns (sent, received, ok).
fn transfer(s: &mut Tcp, opt: &Opt, shutdown: impl Fn(&Tcp)) -> io::Result<(u64, u64, bool)> {
    let pat = pattern();
    let start = Instant::now();
    let until = opt.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut sent = 0u64;
    while (until.is_none() && sent < opt.send) || until.is_some_and(|u| Instant::now() < u) {
        let off = (sent % 251) as usize;
        let mut n = CHUNK as u64;
        if until.is_none() {
            n = n.min(opt.send - sent);
        }
        let w = s.write(&pat[off..off + n as usize])?;
        sent += w as u64;
    }
    // A pure receiver closes after the stream ended (a half-closed
    // receiver trips a zero-window stall in smoltcp 0.14: see BENCH_RESULTS).
    let half_close = sent > 0 || until.is_some();
    if half_close {
        shutdown(s);
    }
    let mut got = 0u64;
    let mut ok = true;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ok &= matches_pattern(&pat, got, &buf[..n]);
        got += n as u64;
    }
    if !half_close {
        shutdown(s);
    }
    Ok((sent, got, ok))
}

fn shut(s: &Tcp) {
    match s {
        Tcp::Kernel(k) => {
            let _ = k.shutdown(std::net::Shutdown::Write);
        }
        Tcp::Fragnet(f) => {
            let _ = f.shutdown(std::net::Shutdown::Write);
        }
    }
}

fn main() -> io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    std::thread::sleep(Duration::from_secs_f64(opt.delay));
    let stack = stack(opt.net)?;
    let start = Instant::now();
    let line = |sent: u64, got: u64, ok: bool, secs: f64| {
        format!(
            "tcp_bulk net={:?} sent={} received={} verified={} secs={:.3} gbit_s={:.3}",
            opt.net,
            sent,
            got,
            ok,
            secs,
            (sent.max(got) as f64 * 8.0) / secs / 1e9
        )
    };
    if let Some(addr) = opt.connect {
        let mut s = Tcp::connect(stack.as_ref(), addr)?;
        let (sent, got, ok) = transfer(&mut s, &opt, shut)?;
        report(
            opt.out.as_deref(),
            &line(sent, got, ok, start.elapsed().as_secs_f64()),
        );
        return Ok(());
    }
    let port = opt.listen.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "need --listen PORT or --connect ADDR",
        )
    })?;
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    match &stack {
        Some(st) => {
            let l = fragnet::TcpListener::bind(st, addr)?;
            loop {
                let (s, _) = l.accept()?;
                let t = Instant::now();
                let mut s = Tcp::Fragnet(s);
                let (sent, got, ok) = transfer(&mut s, &opt, shut)?;
                report(
                    opt.out.as_deref(),
                    &line(sent, got, ok, t.elapsed().as_secs_f64()),
                );
            }
        }
        None => {
            let l = std::net::TcpListener::bind(addr)?;
            loop {
                let (s, _) = l.accept()?;
                let t = Instant::now();
                let mut s = Tcp::Kernel(s);
                let (sent, got, ok) = transfer(&mut s, &opt, shut)?;
                report(
                    opt.out.as_deref(),
                    &line(sent, got, ok, t.elapsed().as_secs_f64()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_check_finds_any_wrong_byte() {
        let pat = pattern();
        let stream: Vec<u8> = (0..300_000u64).map(|i| (i % 251) as u8).collect();
        assert!(matches_pattern(&pat, 0, &stream));
        assert!(matches_pattern(&pat, 1000, &stream[1000..200_000]));
        for bad in [0usize, 250, 251, 65_535, 65_536, 299_999] {
            let mut s = stream.clone();
            s[bad] ^= 1;
            assert!(!matches_pattern(&pat, 0, &s), "flip at {bad} not seen");
        }
        assert!(!matches_pattern(&pat, 1, &stream[..10]), "wrong phase");
    }
}
