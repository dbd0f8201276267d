//! Two real processes sharing a channel: the test binary re-runs itself as
//! the peer (`child_entry`, selected by `PACKET_RING_CHILD`), with the
//! channel's fds inherited at fixed numbers.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use packet_ring::layout::{self, Config};
use packet_ring::linux::{create, Channel, ChannelFds, Policy, Waiter};
use packet_ring::{PeerError, Side, State, TxError};

const ROLE: &str = "PACKET_RING_CHILD";
/// First fd number the child finds its channels at (3 fds per channel).
const CHILD_FD_BASE: RawFd = 10;
const FRAMES: u64 = 1_000_000;
const DEADLINE: Duration = Duration::from_secs(120);

// ---- the frames of test (a) ------------------------------------------------

fn frame_len(seq: u64) -> usize {
    16 + (seq.wrapping_mul(7919) % 200) as usize
}

fn fill_frame(seq: u64, buf: &mut [u8]) -> usize {
    let len = frame_len(seq);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in &mut buf[8..len - 4] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sum = checksum(&buf[..len - 4]);
    buf[len - 4..len].copy_from_slice(&sum.to_le_bytes());
    len
}

/// FNV-1a.
fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// Checks a frame of test (a); returns its sequence number.
fn check_frame(f: &[u8]) -> Result<u64, String> {
    if f.len() < 12 {
        return Err(format!("short frame ({} bytes)", f.len()));
    }
    let seq = u64::from_le_bytes(f[..8].try_into().unwrap());
    if f.len() != frame_len(seq) {
        return Err(format!(
            "frame {seq}: length {} != {}",
            f.len(),
            frame_len(seq)
        ));
    }
    let (body, sum) = f.split_at(f.len() - 4);
    if checksum(body) != u32::from_le_bytes(sum.try_into().unwrap()) {
        return Err(format!("frame {seq}: bad checksum"));
    }
    Ok(seq)
}

// ---- process plumbing -------------------------------------------------------

/// A child process killed and reaped on drop (so a failing test leaves none).
struct Peer(Option<Child>);

impl Peer {
    /// Starts this test binary as `role`, handing it `channels` at fds
    /// 10, 11, 12 (memfd, wake_a, wake_b), 13, 14, 15, …
    fn spawn(role: &str, channels: &[&ChannelFds]) -> Peer {
        let raw: Vec<RawFd> = channels
            .iter()
            .flat_map(|c| {
                [
                    c.memfd.as_raw_fd(),
                    c.wake_a.as_raw_fd(),
                    c.wake_b.as_raw_fd(),
                ]
            })
            .collect();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--ignored",
            "--exact",
            "child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env("PACKET_RING_CHANNELS", channels.len().to_string())
        .stdout(Stdio::piped());
        // SAFETY: only dup2 (async-signal-safe, no allocation) runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Park the sources at 200.. first, so that no target
                // overwrites a source that is still to be copied.
                for (i, &fd) in raw.iter().enumerate() {
                    if libc::dup2(fd, 200 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for i in 0..raw.len() {
                    if libc::dup2(200 + i as RawFd, CHILD_FD_BASE + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Peer(Some(cmd.spawn().expect("spawn peer process")))
    }

    /// Waits (bounded) for the child; returns its `RESULT` line's fields.
    fn finish(mut self, limit: Duration) -> Vec<(String, String)> {
        let mut child = self.0.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("peer process did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(status.success(), "peer failed ({status}):\n{out}");
        let line = out
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no RESULT line from peer:\n{out}"));
        line.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn is_running(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    &fields
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
        .1
}

fn num(fields: &[(String, String)], key: &str) -> u64 {
    field(fields, key).parse().unwrap()
}

/// The channels handed to this (child) process.
fn inherited_channels() -> Vec<ChannelFds> {
    let n: usize = std::env::var("PACKET_RING_CHANNELS")
        .unwrap()
        .parse()
        .unwrap();
    (0..n)
        .map(|i| {
            let fd = |k: usize| {
                // SAFETY: the parent dup2'd these fds for us; nothing else owns them.
                unsafe { OwnedFd::from_raw_fd(CHILD_FD_BASE + (3 * i + k) as RawFd) }
            };
            ChannelFds {
                memfd: fd(0),
                wake_a: fd(1),
                wake_b: fd(2),
            }
        })
        .collect()
}

/// Entry point of the peer process (not a test by itself).
#[test]
#[ignore = "entry point of the peer process, started by the other tests"]
fn child_entry() {
    let role = std::env::var(ROLE).expect("run by the two-process tests only");
    let result = match role.as_str() {
        "consumer" => child_consumer(),
        "head" | "desc" | "scribble" => child_hostile(&role),
        other => panic!("unknown role {other}"),
    };
    println!("RESULT {result}");
}

// ---- (a) a million frames, consumer sleeping and woken -----------------------

/// Side B: receives and checks every frame until the last one.
fn child_consumer() -> String {
    let fds = inherited_channels().pop().unwrap();
    let mut ch = Channel::attach(fds, Side::B).unwrap();
    let mut waiter = Waiter::with_policy(Policy {
        spin: 16,
        yield_for: Duration::from_micros(100),
    });
    let mut expect = 0u64;
    let mut bad = String::new();
    let start = Instant::now();
    while expect < FRAMES && start.elapsed() < DEADLINE {
        let n = ch
            .recv(64, |f| match check_frame(f) {
                Ok(seq) if seq == expect => expect += 1,
                Ok(seq) if bad.is_empty() => bad = format!("got frame {seq}, expected {expect}"),
                Err(e) if bad.is_empty() => bad = e,
                _ => {}
            })
            .unwrap();
        if !bad.is_empty() {
            panic!("{bad}");
        }
        ch.flush();
        waiter
            .wait(n > 0, [&mut ch], &[], Some(Duration::from_secs(1)))
            .unwrap();
    }
    let s = waiter.stats();
    format!(
        "received={expect} sleeps={} doorbell_wakes={} signals={}",
        s.sleeps,
        s.doorbell_wakes,
        ch.signals_sent()
    )
}

#[test]
fn million_frames_in_order_with_sleeping_consumer() {
    let cfg = Config {
        ring_slots: 256,
        buf_size: 256,
        bufs: 256,
    };
    let fds = create(&cfg, "ring-test-a").unwrap();
    let mut ch = Channel::attach(fds.try_clone().unwrap(), Side::A).unwrap();
    let peer = Peer::spawn("consumer", &[&fds]);
    drop(fds);
    let mut waiter = Waiter::with_policy(Policy {
        spin: 16,
        yield_for: Duration::from_micros(100),
    });
    let start = Instant::now();
    let mut seq = 0u64;
    let mut pauses = 0;
    while seq < FRAMES {
        assert!(start.elapsed() < DEADLINE, "producer stuck at frame {seq}");
        let mut sent = 0;
        while sent < 64 && seq < FRAMES {
            match ch.send_with(256, |buf| fill_frame(seq, buf)) {
                Ok(_) => {
                    seq += 1;
                    sent += 1;
                }
                Err(TxError::Full) => break,
                Err(e) => panic!("send: {e} ({:?})", ch.state()),
            }
        }
        ch.flush();
        // Now and then go quiet so that the consumer falls asleep and has to
        // be woken by the doorbell.
        if sent > 0 && seq % 50_000 < sent as u64 {
            std::thread::sleep(Duration::from_millis(3));
            pauses += 1;
        }
        waiter
            .wait(sent > 0, [&mut ch], &[], Some(Duration::from_secs(1)))
            .unwrap();
    }
    let r = peer.finish(DEADLINE);
    assert_eq!(num(&r, "received"), FRAMES);
    assert_eq!(ch.state(), State::Up);
    let sleeps = num(&r, "sleeps");
    let wakes = num(&r, "doorbell_wakes");
    eprintln!(
        "{FRAMES} frames in {:?}; {pauses} producer pauses; consumer slept {sleeps}x, \
         woken by doorbell {wakes}x; producer rang {}x, consumer rang {}x; producer waiter {:?}",
        start.elapsed(),
        ch.signals_sent(),
        num(&r, "signals"),
        waiter.stats()
    );
    assert!(sleeps >= 5, "consumer slept only {sleeps} times");
    assert!(wakes >= 5, "consumer woken by doorbell only {wakes} times");
    assert!(ch.signals_sent() >= 5);
    // Under load no doorbell is rung per batch: far fewer rings than batches.
    assert!(ch.signals_sent() < FRAMES / 64 / 10);
}

// ---- (b) a hostile peer ------------------------------------------------------

/// Side B of two channels: channel 0 is attacked (how: `role`), channel 1 is
/// used honestly — frames sent and their echoes checked.
fn child_hostile(role: &str) -> String {
    let mut chans = inherited_channels();
    let good_fds = chans.pop().unwrap();
    let bad_fds = chans.pop().unwrap();
    let mut good = Channel::attach(good_fds, Side::B).unwrap();

    // Map the attacked region raw and write what no honest side would.
    let len = rustix::fs::fstat(&bad_fds.memfd).unwrap().st_size as usize;
    // SAFETY: a fresh shared mapping of the whole memfd.
    let base = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            bad_fds.memfd.as_fd(),
            0,
        )
        .unwrap()
    } as *mut u8;
    let word = |off: usize| {
        assert!(off + 4 <= len);
        // SAFETY: inside the mapping, 4-aligned.
        unsafe { &*(base.add(off) as *const AtomicU32) }
    };
    let cfg = Config {
        ring_slots: word(layout::field::RING_SLOTS).load(Ordering::Relaxed),
        buf_size: word(layout::field::BUF_SIZE).load(Ordering::Relaxed),
        bufs: word(layout::field::BUFS).load(Ordering::Relaxed),
    };
    // B sends on direction 1 (B→A).
    match role {
        "head" => word(layout::counter_offset(1, layout::ACTIVE_HEAD))
            .store(0x7fff_0000, Ordering::Release),
        "desc" => {
            // Take one buffer honestly, then queue a descriptor pointing
            // past the pool.
            word(layout::counter_offset(1, layout::FREE_TAIL)).store(1, Ordering::Release);
            let slot = cfg.ring_offset(1, false);
            word(slot).store(cfg.pool_bytes() as u32 + 64, Ordering::Relaxed);
            word(slot + 4).store(100, Ordering::Relaxed);
            word(layout::counter_offset(1, layout::ACTIVE_HEAD)).store(1, Ordering::Release);
        }
        _ => {}
    }

    let mut waiter = Waiter::new();
    let total = 10_000u32;
    let (mut sent, mut echoed) = (0u32, 0u32);
    let mut x = 0x1234_5678u32;
    let start = Instant::now();
    while echoed < total && start.elapsed() < DEADLINE {
        if role == "scribble" {
            // Random values into every counter, over and over.
            for dir in 0..2 {
                for which in [
                    layout::ACTIVE_HEAD,
                    layout::ACTIVE_TAIL,
                    layout::FREE_HEAD,
                    layout::FREE_TAIL,
                ] {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    word(layout::counter_offset(dir, which)).store(x, Ordering::Relaxed);
                }
            }
        }
        let mut moved = 0;
        while sent < total && sent - echoed < 64 && good.send(&sent.to_le_bytes()).is_ok() {
            sent += 1;
            moved += 1;
        }
        good.flush();
        moved += good
            .recv(64, |f| {
                assert_eq!(f, echoed.to_le_bytes(), "echo out of order");
                echoed += 1;
            })
            .unwrap();
        good.flush();
        waiter
            .wait(moved > 0, [&mut good], &[], Some(Duration::from_millis(50)))
            .unwrap();
    }
    format!("echoed={echoed}")
}

/// Side A serving two channels; the peer attacks the first one in the way
/// `role` names. Returns the first channel's final state.
fn serve_hostile(role: &str) -> State {
    let cfg = Config {
        ring_slots: 64,
        buf_size: 256,
        bufs: 64,
    };
    let bad_fds = create(&cfg, "ring-test-bad").unwrap();
    let good_fds = create(&cfg, "ring-test-good").unwrap();
    let mut bad = Channel::attach(bad_fds.try_clone().unwrap(), Side::A).unwrap();
    let mut good = Channel::attach(good_fds.try_clone().unwrap(), Side::A).unwrap();
    let mut peer = Peer::spawn(role, &[&bad_fds, &good_fds]);
    drop((bad_fds, good_fds));
    let mut waiter = Waiter::new();
    let mut echo = Vec::with_capacity(64);
    let mut served = 0u64;
    let start = Instant::now();
    while peer.is_running() {
        assert!(start.elapsed() < DEADLINE, "hostile test did not finish");
        let mut moved = 0;
        // Use the attacked channel in every way, so every check is reached.
        let _ = bad.recv(64, |_| {});
        let _ = bad.tx_space();
        let _ = bad.send(b"to the hostile peer");
        bad.flush();
        // Echo everything on the healthy channel.
        moved += good.recv(64, |f| echo.push(f.to_vec())).unwrap();
        for f in echo.drain(..) {
            good.send(&f).unwrap();
            served += 1;
        }
        good.flush();
        waiter
            .wait(
                moved > 0,
                [&mut good, &mut bad],
                &[],
                Some(Duration::from_millis(50)),
            )
            .unwrap();
    }
    let r = peer.finish(Duration::from_secs(5));
    assert_eq!(num(&r, "echoed"), 10_000);
    assert_eq!(served, 10_000);
    assert_eq!(good.state(), State::Up);
    eprintln!("{role}: attacked channel ended {:?}", bad.state());
    bad.state()
}

#[test]
fn hostile_head_disconnects_and_healthy_channel_keeps_working() {
    assert_eq!(
        serve_hostile("head"),
        State::Disconnected(PeerError::ActiveIndexOutOfRange {
            head: 0x7fff_0000,
            tail: 0
        })
    );
}

#[test]
fn hostile_descriptor_disconnects_and_healthy_channel_keeps_working() {
    assert_eq!(
        serve_hostile("desc"),
        State::Disconnected(PeerError::BadDescriptor {
            offset: 64 * 256 + 64,
            len: 100
        })
    );
}

#[test]
fn scribbled_counters_disconnect_and_healthy_channel_keeps_working() {
    assert!(matches!(
        serve_hostile("scribble"),
        State::Disconnected(
            PeerError::ActiveIndexOutOfRange { .. } | PeerError::FreeIndexOutOfRange { .. }
        )
    ));
}
