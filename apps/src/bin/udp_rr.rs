//! udp_rr: UDP request/response load against an echo server. Keeps
//! `--inflight` requests outstanding for `--duration` seconds and reports
//! requests per second and round-trip latency (p50, p99; hdrhistogram).
//!
//! `udp_rr --server 10.77.0.10:7 [--inflight 32] [--duration 5] [--size 64]
//! [--requests N] [--out FILE] [--net fragnet|kernel]`. A request carries
//! its send time and a sequence number; a lost one is re-sent after 200 ms.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use fragnet_apps::{args_with_config, report, stack, Net, Udp};
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Opt {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many responses (0: run for the duration).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = Net::Fragnet)]
    net: Net,
    /// Seconds to wait before starting (lets ARP and the peer come up).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
}

fn main() -> io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    std::thread::sleep(Duration::from_secs_f64(opt.delay));
    let stack = stack(opt.net)?;
    let sock = Udp::bind(stack.as_ref(), SocketAddr::from(([0, 0, 0, 0], 0)))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let size = opt.size.clamp(16, 1400);
    let inflight = opt.inflight.clamp(1, 1024);
    // Warm-up: one answered request (resolves ARP, wakes the server) before
    // the clock starts; the server may come up a little after us.
    let mut buf = [0u8; 2048];
    sock.warm_up(b"warm-up", opt.server)?;
    let start = Instant::now();
    let mut req = vec![0u8; size];
    let mut seq: u64 = 0;
    let send = |seq: u64, req: &mut [u8]| -> io::Result<()> {
        let t = start.elapsed().as_nanos() as u64;
        req[..8].copy_from_slice(&seq.to_le_bytes());
        req[8..16].copy_from_slice(&t.to_le_bytes());
        sock.send_to(req, opt.server).map(|_| ())
    };
    for _ in 0..inflight {
        send(seq, &mut req)?;
        seq += 1;
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds");
    let (mut done, mut lost, mut bad) = (0u64, 0u64, 0u64);
    let end = Duration::from_secs_f64(opt.duration);
    let mut timeouts_in_row = 0;
    while (opt.requests == 0 && start.elapsed() < end) || (opt.requests > 0 && done < opt.requests)
    {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                timeouts_in_row = 0;
                if n != size {
                    bad += 1;
                    continue;
                }
                let t0 = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
                let now = start.elapsed().as_nanos() as u64;
                hist.saturating_record(now.saturating_sub(t0).max(1));
                done += 1;
                send(seq, &mut req)?;
                seq += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Lost requests: put the window back to full.
                lost += inflight as u64;
                timeouts_in_row += 1;
                if timeouts_in_row > 50 {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer for 10 s",
                    ));
                }
                for _ in 0..inflight {
                    send(seq, &mut req)?;
                    seq += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(
        opt.out.as_deref(),
        &format!(
            "udp_rr net={:?} inflight={} size={} requests={} secs={:.3} rps={:.0} p50_us={:.1} p99_us={:.1} resent_windows={} bad={}",
            opt.net,
            inflight,
            size,
            done,
            secs,
            done as f64 / secs,
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            lost / inflight as u64,
            bad
        ),
    );
    Ok(())
}
