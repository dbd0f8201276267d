//! Linux glue: a channel is a sealed memfd plus one eventfd doorbell per side.
//!
//! [`create`] makes the fds (done by `init`), [`Channel::attach`] maps them
//! (done by each component), and [`Waiter`] puts a component to sleep on all
//! its doorbells and other fds once it has been idle for a while.
//!
//! The memfd is sealed against shrinking, so a peer cannot truncate it under
//! our mapping (which would turn our next access into SIGBUS); `attach`
//! refuses an unsealed memfd.

mod waiter;

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::{init_region, Config, Endpoint, Error, Side};

pub use waiter::{Policy, Waiter, WaiterStats, Wake, BLOCKED_RECHECK};

/// The capabilities of one channel: the region and the two doorbells.
#[derive(Debug)]
pub struct ChannelFds {
    /// The region (sealed against shrinking).
    pub memfd: OwnedFd,
    /// Doorbell of side A (A sleeps on it, B writes it).
    pub wake_a: OwnedFd,
    /// Doorbell of side B.
    pub wake_b: OwnedFd,
}

impl ChannelFds {
    /// Duplicates all three fds (e.g. to keep a copy while handing one out).
    pub fn try_clone(&self) -> io::Result<ChannelFds> {
        Ok(ChannelFds {
            memfd: self.memfd.try_clone()?,
            wake_a: self.wake_a.try_clone()?,
            wake_b: self.wake_b.try_clone()?,
        })
    }
}

fn os(op: &'static str) -> impl Fn(rustix::io::Errno) -> Error {
    move |e| Error::Os {
        op,
        errno: e.raw_os_error(),
    }
}

/// Creates a channel: a memfd named `name` (shows in /proc/*/fd) sized and
/// initialised for `config`, sealed against shrinking, and two non-blocking
/// eventfds. All fds are close-on-exec.
pub fn create(config: &Config, name: &str) -> io::Result<ChannelFds> {
    config.validate()?;
    let len = config.region_size();
    let memfd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&memfd, len as u64)?;
    fcntl_add_seals(
        &memfd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    let map = Mapping::new(&memfd, len).map_err(io::Error::from)?;
    // SAFETY: a fresh private mapping of `len` bytes; nobody else has the fd.
    unsafe { init_region(map.ptr, len, config)? };
    drop(map);
    let flags = EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC;
    Ok(ChannelFds {
        memfd,
        wake_a: eventfd(0, flags)?,
        wake_b: eventfd(0, flags)?,
    })
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> Result<Mapping, Error> {
        // SAFETY: a fresh mapping chosen by the kernel; aliasing nothing.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(os("mmap"))?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range; nothing refers to it any more.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A mapped channel: an [`Endpoint`] (through `Deref`) plus its doorbells.
///
/// [`Channel::flush`] shadows [`Endpoint::flush`]: it publishes and, when the
/// peer sleeps, rings its doorbell. Use it rather than the endpoint's.
pub struct Channel {
    // Field order matters: the endpoint must go before the mapping.
    ep: Endpoint,
    map: Mapping,
    fds: ChannelFds,
    side: Side,
    signals: u64,
}

// SAFETY: the endpoint is Send and the mapping is owned by the channel.
unsafe impl Send for Channel {}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("endpoint", &self.ep)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Maps the memfd (its size is taken from `fstat`) and attaches as `side`.
    pub fn attach(fds: ChannelFds, side: Side) -> Result<Channel, Error> {
        let st = fstat(&fds.memfd).map_err(os("fstat"))?;
        let seals = fcntl_get_seals(&fds.memfd).map_err(os("fcntl(F_GET_SEALS)"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::Os {
                op: "attach: memfd not sealed against shrinking (F_SEAL_SHRINK)",
                errno: libc::EPERM,
            });
        }
        let len = usize::try_from(st.st_size).unwrap_or(0);
        if len < crate::layout::RINGS {
            return Err(Error::RegionTooSmall {
                need: crate::layout::RINGS,
                have: len,
            });
        }
        let map = Mapping::new(&fds.memfd, len)?;
        // SAFETY: the mapping lives as long as the channel, and is dropped
        // after the endpoint (field order).
        let ep = unsafe { Endpoint::attach(map.ptr, map.len, side)? };
        Ok(Channel {
            ep,
            map,
            fds,
            side,
            signals: 0,
        })
    }

    /// Publishes queued frames / returned buffers and rings the peer's
    /// doorbell if it asked for a wake-up. Returns whether it rang.
    #[inline]
    pub fn flush(&mut self) -> bool {
        if self.ep.flush() {
            self.signal_peer();
            true
        } else {
            false
        }
    }

    /// Rings the peer's doorbell unconditionally.
    pub fn signal_peer(&mut self) {
        let fd = match self.side {
            Side::A => &self.fds.wake_b,
            Side::B => &self.fds.wake_a,
        };
        // Cannot fail short of 2^64 - 1 unread rings.
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        self.signals += 1;
    }

    /// My doorbell, to wait on with poll/epoll (readable = rung).
    pub fn doorbell(&self) -> BorrowedFd<'_> {
        match self.side {
            Side::A => self.fds.wake_a.as_fd(),
            Side::B => self.fds.wake_b.as_fd(),
        }
    }

    /// Drains my doorbell so that it stops polling readable.
    pub fn clear_doorbell(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(self.doorbell(), &mut buf);
    }

    /// How often this side rang the peer's doorbell.
    pub fn signals_sent(&self) -> u64 {
        self.signals
    }

    /// The fds the channel was attached with.
    pub fn fds(&self) -> &ChannelFds {
        &self.fds
    }

    /// Region size in bytes.
    pub fn region_len(&self) -> usize {
        self.map.len
    }
}

impl Deref for Channel {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

impl DerefMut for Channel {
    fn deref_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn create_attach_signal_and_wait() {
        let cfg = Config {
            ring_slots: 64,
            buf_size: 2048,
            bufs: 64,
        };
        let fds = create(&cfg, "test-chan").unwrap();
        let mut a = Channel::attach(fds.try_clone().unwrap(), Side::A).unwrap();
        let mut b = Channel::attach(fds, Side::B).unwrap();
        assert_eq!(a.region_len(), cfg.region_size());
        let mut w = Waiter::new();
        // Nothing to do: B sleeps until the timeout.
        assert_eq!(
            w.sleep([&mut b], &[], Some(Duration::from_millis(5)))
                .unwrap(),
            Wake::TimedOut
        );
        // B arms, A sends: the doorbell rings and B wakes.
        assert!(!b.prepare_sleep());
        a.send(b"ping").unwrap();
        assert!(a.flush());
        assert_eq!(a.signals_sent(), 1);
        assert_eq!(
            w.sleep([&mut b], &[], Some(Duration::from_secs(5)))
                .unwrap(),
            Wake::Pending
        );
        b.cancel_sleep();
        assert_eq!(
            w.sleep([&mut b], &[], Some(Duration::from_secs(5)))
                .unwrap(),
            Wake::Pending
        );
        let mut got = Vec::new();
        b.recv(8, |f| got.extend_from_slice(f)).unwrap();
        assert_eq!(got, b"ping");
        // The doorbell is still readable from A's ring; the waiter drains it.
        assert_eq!(
            w.sleep([&mut b], &[], Some(Duration::from_secs(5)))
                .unwrap(),
            Wake::Woken
        );
        assert_eq!(w.stats().doorbell_wakes, 1);
        assert_eq!(
            w.sleep([&mut b], &[], Some(Duration::from_millis(1)))
                .unwrap(),
            Wake::TimedOut
        );
    }

    #[test]
    fn attach_refuses_unsealed_or_short_memfd() {
        let memfd = memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&memfd, 1 << 20).unwrap();
        let fds = ChannelFds {
            memfd,
            wake_a: eventfd(0, EventfdFlags::NONBLOCK).unwrap(),
            wake_b: eventfd(0, EventfdFlags::NONBLOCK).unwrap(),
        };
        assert!(matches!(
            Channel::attach(fds, Side::A),
            Err(Error::Os {
                errno: libc::EPERM,
                ..
            })
        ));
        assert!(create(
            &Config {
                ring_slots: 3,
                ..Config::default()
            },
            "bad"
        )
        .is_err());
    }

    #[test]
    fn waiter_spins_then_yields_then_sleeps_and_watches_extra_fds() {
        let fds = create(&Config::default(), "waiter").unwrap();
        let mut b = Channel::attach(fds.try_clone().unwrap(), Side::B).unwrap();
        let mut a = Channel::attach(fds, Side::A).unwrap();
        let mut w = Waiter::with_policy(Policy {
            spin: 3,
            yield_for: Duration::from_millis(2),
        });
        let (rd, wr) = rustix::pipe::pipe().unwrap();
        let t = Some(Duration::from_millis(1));
        assert_eq!(
            w.wait(true, [&mut b], &[rd.as_fd()], t).unwrap(),
            Wake::Busy
        );
        for _ in 0..3 {
            assert_eq!(
                w.wait(false, [&mut b], &[rd.as_fd()], t).unwrap(),
                Wake::Spun
            );
        }
        let mut yields = 0;
        let wake = loop {
            match w.wait(false, [&mut b], &[rd.as_fd()], t).unwrap() {
                Wake::Yielded => yields += 1,
                other => break other,
            }
            assert!(yields < 1_000_000, "never stopped yielding");
        };
        assert!(yields > 0);
        assert_eq!(wake, Wake::TimedOut);
        assert!(!w.extra_ready(0));
        // Work done resets the idle spell: spinning again.
        assert_eq!(w.wait(true, [&mut b], &[], t).unwrap(), Wake::Busy);
        assert_eq!(w.wait(false, [&mut b], &[], t).unwrap(), Wake::Spun);
        // An extra fd wakes the sleeper and is reported.
        rustix::io::write(&wr, b"x").unwrap();
        let long = Some(Duration::from_secs(5));
        assert_eq!(w.sleep([&mut b], &[rd.as_fd()], long).unwrap(), Wake::Woken);
        assert!(w.extra_ready(0));
        assert!(!w.extra_ready(1));
        let mut byte = [0u8; 1];
        rustix::io::read(&rd, &mut byte).unwrap();
        // The sleep flag is cleared after waking: the peer rings no more.
        a.send(b"x").unwrap();
        assert!(!a.flush());
        assert_eq!(
            w.sleep([&mut b], &[rd.as_fd()], long).unwrap(),
            Wake::Pending
        );
        // A blocked producer sleeps until the consumer returns buffers.
        b.recv(8, |_| ()).unwrap();
        b.flush();
        while a.send(b"fill").is_ok() {}
        a.flush();
        assert_eq!(
            w.sleep([&mut a], &[], Some(Duration::from_millis(1)))
                .unwrap(),
            Wake::TimedOut
        );
        assert!(!a.prepare_sleep());
        b.recv(1, |_| ()).unwrap();
        assert!(b.flush(), "the consumer rings the blocked producer");
        assert_eq!(w.sleep([&mut a], &[], long).unwrap(), Wake::Pending);
        let stats = w.stats();
        assert_eq!(stats.timeouts, 2);
        assert!(stats.spins >= 4 && stats.yields > 0 && stats.pending == 2);
    }

    #[test]
    fn blocked_producer_rechecks_when_the_consumer_never_flushes() {
        let cfg = Config {
            ring_slots: 8,
            buf_size: 64,
            bufs: 8,
        };
        let fds = create(&cfg, "blocked").unwrap();
        let mut a = Channel::attach(fds.try_clone().unwrap(), Side::A).unwrap();
        let mut b = Channel::attach(fds, Side::B).unwrap();
        while a.send(b"x").is_ok() {}
        assert!(a.tx_blocked());
        a.flush();
        b.clear_doorbell();
        let mut w = Waiter::new();
        // While A sleeps, the consumer takes the frames but (against the
        // contract) never flushes, so it never rings A.
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(b.recv(8, |_| ()).unwrap(), 8);
            b
        });
        let t = std::time::Instant::now();
        assert_eq!(w.sleep([&mut a], &[], None).unwrap(), Wake::TimedOut);
        assert!(t.elapsed() >= BLOCKED_RECHECK && t.elapsed() < Duration::from_secs(2));
        let _b = consumer.join().unwrap();
        assert_eq!(w.sleep([&mut a], &[], None).unwrap(), Wake::Pending);
        assert_eq!(a.tx_space(), 8);
        a.send(b"y").unwrap();
        assert!(!a.tx_blocked());
    }
}
