//! filter_rr: UDP request/response load that counts every request, for the
//! filter benchmarks (tools/filterbench): it keeps `--inflight` requests
//! outstanding, each in its own slot with a sequence number, and reports
//! requests sent vs answered, requests lost (no answer within `--loss-ms`),
//! late answers, the latency distribution (p50 … p99.99, max), and a
//! timeline of 1 ms buckets (`--timeline FILE`: `epoch_ms answers
//! max_latency_us` per line) so that stalls can be matched to events such
//! as a ruleset swap.
//!
//! `filter_rr --server 10.90.0.10:7 [--inflight 32] [--duration 10]
//! [--size 64] [--loss-ms 1000] [--out FILE] [--timeline FILE]
//! [--net fragnet|kernel] [--delay S]`.

use std::io;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use fragnet_apps::{args_with_config, report, stack, Net, Udp};
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Opt {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// A request unanswered for this long counts as lost (and is replaced).
    #[arg(long, default_value_t = 1000)]
    loss_ms: u64,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = Net::Fragnet)]
    net: Net,
    /// Seconds to wait before starting (lets ARP and the peer come up).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
}

/// One outstanding request.
#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    sent_ns: u64,
    open: bool,
}

/// Per-millisecond bucket of the timeline.
#[derive(Clone, Copy, Default)]
struct Bucket {
    answers: u32,
    max_us: u32,
}

/// Request layout: seq (8 bytes LE), send time ns (8), slot (4), padding.
fn encode(req: &mut [u8], seq: u64, t: u64, slot: u32) {
    req[..8].copy_from_slice(&seq.to_le_bytes());
    req[8..16].copy_from_slice(&t.to_le_bytes());
    req[16..20].copy_from_slice(&slot.to_le_bytes());
}

fn decode(b: &[u8]) -> (u64, u64, u32) {
    let u = |r: std::ops::Range<usize>| b[r].iter().rev().fold(0u64, |a, &x| a << 8 | x as u64);
    (u(0..8), u(8..16), u(16..20) as u32)
}

fn main() -> io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    std::thread::sleep(Duration::from_secs_f64(opt.delay));
    let stack = stack(opt.net)?;
    let sock = Udp::bind(stack.as_ref(), SocketAddr::from(([0, 0, 0, 0], 0)))?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let size = opt.size.clamp(20, 1400);
    let inflight = opt.inflight.clamp(1, 1024);
    let mut buf = [0u8; 2048];
    // Warm-up: one answered request before the clock starts.
    sock.warm_up(&[0xffu8; 20], opt.server)?;
    // Stray warm-up answers may still arrive; they fail the slot check.
    let epoch_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(io::Error::other)?
        .as_nanos() as u64;
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let end_ns = (opt.duration * 1e9) as u64;
    let drain_ns = end_ns + opt.loss_ms.max(500) * 1_000_000;
    let loss_ns = opt.loss_ms * 1_000_000;
    let mut timeline = vec![Bucket::default(); (drain_ns / 1_000_000 + 2) as usize];
    let mut slots = vec![
        Slot {
            seq: 0,
            sent_ns: 0,
            open: false
        };
        inflight
    ];
    let mut req = vec![0u8; size];
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds");
    let (mut seq, mut sent, mut answered, mut lost, mut late, mut bad) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, s) in slots.iter_mut().enumerate() {
        let t = now();
        encode(&mut req, seq, t, i as u32);
        sock.send_to(&req, opt.server)?;
        *s = Slot {
            seq,
            sent_ns: t,
            open: true,
        };
        seq += 1;
        sent += 1;
    }
    let mut last_scan = 0u64;
    loop {
        let t_now = now();
        let sending = t_now < end_ns;
        if !sending && (t_now >= drain_ns || slots.iter().all(|s| !s.open)) {
            break;
        }
        // Requests unanswered for loss_ms are lost; replace them.
        if t_now - last_scan > 10_000_000 {
            last_scan = t_now;
            for (i, s) in slots.iter_mut().enumerate() {
                if s.open && t_now - s.sent_ns > loss_ns {
                    lost += 1;
                    s.open = false;
                    if sending {
                        encode(&mut req, seq, t_now, i as u32);
                        sock.send_to(&req, opt.server)?;
                        *s = Slot {
                            seq,
                            sent_ns: t_now,
                            open: true,
                        };
                        seq += 1;
                        sent += 1;
                    }
                }
            }
        }
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if n != size {
            bad += 1;
            continue;
        }
        let (rseq, t0, slot) = decode(&buf[..n]);
        let t = now();
        let Some(s) = slots.get_mut(slot as usize) else {
            bad += 1;
            continue;
        };
        if !s.open || s.seq != rseq {
            // Answer to a request already counted lost (or a duplicate).
            late += 1;
            continue;
        }
        let lat = t.saturating_sub(t0).max(1);
        hist.saturating_record(lat);
        answered += 1;
        if let Some(b) = timeline.get_mut((t / 1_000_000) as usize) {
            b.answers += 1;
            b.max_us = b.max_us.max((lat / 1000).min(u32::MAX as u64) as u32);
        }
        s.open = false;
        if t < end_ns {
            encode(&mut req, seq, t, slot);
            sock.send_to(&req, opt.server)?;
            *s = Slot {
                seq,
                sent_ns: t,
                open: true,
            };
            seq += 1;
            sent += 1;
        }
    }
    let unanswered = slots.iter().filter(|s| s.open).count() as u64;
    let secs = (end_ns as f64 / 1e9).min(start.elapsed().as_secs_f64());
    // Longest stretch of the sending period without any answer.
    let mut gap_ms = 0u64;
    let mut run = 0u64;
    for b in timeline.iter().take((end_ns / 1_000_000) as usize) {
        run = if b.answers == 0 { run + 1 } else { 0 };
        gap_ms = gap_ms.max(run);
    }
    if let Some(p) = &opt.timeline {
        let mut w = io::BufWriter::new(std::fs::File::create(p)?);
        for (i, b) in timeline.iter().enumerate() {
            writeln!(
                w,
                "{} {} {}",
                epoch_ns / 1_000_000 + i as u64,
                b.answers,
                b.max_us
            )?;
        }
        w.flush()?;
    }
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    report(
        opt.out.as_deref(),
        &format!(
            "filter_rr net={:?} inflight={} size={} sent={} answered={} lost={} late={} unanswered_at_end={} bad={} secs={:.3} rps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} p9999_us={:.1} max_us={:.1} longest_gap_ms={} start_epoch_ms={}",
            opt.net,
            inflight,
            size,
            sent,
            answered,
            lost,
            late,
            unanswered,
            bad,
            secs,
            answered as f64 / secs,
            q(0.5),
            q(0.99),
            q(0.999),
            q(0.9999),
            hist.max() as f64 / 1000.0,
            gap_ms,
            epoch_ns / 1_000_000
        ),
    );
    Ok(())
}
