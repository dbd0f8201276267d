//! The adaptive idle loop: spin, then yield, then sleep on doorbells.
//!
//! A component calls [`Waiter::wait`] once per iteration of its main loop,
//! saying whether that iteration moved anything. While work flows it returns
//! at once. When idle it first spins a few iterations (cheap, catches the
//! next batch of a peer on another core), then calls `sched_yield` for a
//! while (so processes sharing one core hand over at batch granularity),
//! and only then sleeps: it flushes every channel, runs the sleep protocol
//! on each (`prepare_sleep`; if any finds work it cancels them all and
//! returns), and blocks in `poll` on their doorbells plus the caller's extra
//! fds (TAP device, control socket, …), optionally with a timeout.
//!
//! ```no_run
//! # use packet_ring::linux::{Channel, Waiter, Wake};
//! # fn serve(ports: &mut Vec<Channel>, control: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
//! let mut waiter = Waiter::new();
//! loop {
//!     let mut moved = 0;
//!     for p in ports.iter_mut() {
//!         moved += p.recv(32, |frame| { /* … */ }).unwrap_or(0);
//!         p.flush();
//!     }
//!     let wake = waiter.wait(moved > 0, ports.iter_mut(), &[control], None)?;
//!     if matches!(wake, Wake::Woken) && waiter.extra_ready(0) {
//!         // read the control socket
//!     }
//! }
//! # }
//! ```
//!
//! Extra fds are only looked at when the waiter actually sleeps; under
//! sustained load the caller polls them itself now and then.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::Channel;

/// Longest sleep of a waiter with a channel blocked on a full ring (see
/// [`Waiter::sleep`]).
pub const BLOCKED_RECHECK: Duration = Duration::from_millis(5);

/// How long to stay awake when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Idle iterations that just spin (one `spin_loop` hint each).
    pub spin: u32,
    /// Then: how long to keep yielding the CPU before sleeping.
    pub yield_for: Duration,
}

impl Default for Policy {
    /// 64 spins, then 200 µs of `sched_yield`.
    fn default() -> Self {
        Policy {
            spin: 64,
            yield_for: Duration::from_micros(200),
        }
    }
}

/// What [`Waiter::wait`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The iteration did work: returned at once.
    Busy,
    /// Idle, spun once.
    Spun,
    /// Idle, yielded the CPU once.
    Yielded,
    /// Was about to sleep, but a channel had work (sleep cancelled).
    Pending,
    /// Slept and was woken by a doorbell or an extra fd.
    Woken,
    /// Slept until the timeout.
    TimedOut,
}

/// Counters of the waiter's decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaiterStats {
    pub spins: u64,
    pub yields: u64,
    /// Sleeps abandoned because `prepare_sleep` found work.
    pub pending: u64,
    /// Times blocked in `poll`.
    pub sleeps: u64,
    /// Sleeps ended by a channel doorbell.
    pub doorbell_wakes: u64,
    pub timeouts: u64,
}

/// The adaptive idle loop (see the module docs). Reuses its buffers: no
/// allocation once the number of fds stops growing.
#[derive(Debug, Default)]
pub struct Waiter {
    policy: Policy,
    idle: u32,
    idle_since: Option<Instant>,
    pollfds: Vec<libc::pollfd>,
    /// Channels armed for the current sleep; empty outside `wait`.
    armed: Vec<*mut Channel>,
    extra_ready: Vec<bool>,
    stats: WaiterStats,
}

// SAFETY: `armed` holds pointers only during a call to `wait`.
unsafe impl Send for Waiter {}

impl Waiter {
    /// A waiter with the default [`Policy`].
    pub fn new() -> Waiter {
        Waiter::with_policy(Policy::default())
    }

    pub fn with_policy(policy: Policy) -> Waiter {
        Waiter {
            policy,
            ..Waiter::default()
        }
    }

    pub fn stats(&self) -> WaiterStats {
        self.stats
    }

    /// After a [`Wake::Woken`]: was extra fd `i` (index into the last
    /// `extra` slice) readable or in error?
    pub fn extra_ready(&self, i: usize) -> bool {
        self.extra_ready.get(i).copied().unwrap_or(false)
    }

    /// Forget the idle spell (e.g. after doing work outside the channels).
    pub fn reset(&mut self) {
        self.idle = 0;
        self.idle_since = None;
    }

    /// One step of the idle policy. `did_work`: whether the caller's last
    /// iteration moved anything. `channels`: every channel the caller serves
    /// (disconnected ones are skipped); `extra`: other fds to wake on when
    /// readable; `timeout`: longest sleep (`None` = until woken).
    ///
    /// Before sleeping it flushes every channel (ringing doorbells as
    /// needed), so a forgotten flush cannot deadlock the pair.
    pub fn wait<'a, I>(
        &mut self,
        did_work: bool,
        channels: I,
        extra: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> io::Result<Wake>
    where
        I: IntoIterator<Item = &'a mut Channel>,
    {
        if did_work {
            self.reset();
            return Ok(Wake::Busy);
        }
        if self.idle < self.policy.spin {
            self.idle += 1;
            self.stats.spins += 1;
            std::hint::spin_loop();
            return Ok(Wake::Spun);
        }
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        if now.duration_since(since) < self.policy.yield_for {
            self.stats.yields += 1;
            rustix::thread::sched_yield();
            return Ok(Wake::Yielded);
        }
        self.sleep(channels, extra, timeout)
    }

    /// Skips the spin and yield phases: flush, arm and sleep right away.
    ///
    /// If a channel is blocked on a full ring ([`Endpoint::tx_blocked`]) the
    /// sleep lasts at most [`BLOCKED_RECHECK`]: the consumer's doorbell is
    /// the normal wake-up, this only bounds the stall if the consumer
    /// forgets to flush after receiving (the call then returns `TimedOut`
    /// even with `timeout` `None`).
    ///
    /// [`Endpoint::tx_blocked`]: crate::Endpoint::tx_blocked
    pub fn sleep<'a, I>(
        &mut self,
        channels: I,
        extra: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> io::Result<Wake>
    where
        I: IntoIterator<Item = &'a mut Channel>,
    {
        self.pollfds.clear();
        self.armed.clear();
        let mut work = false;
        let mut blocked = false;
        for ch in channels {
            if !ch.is_up() {
                continue;
            }
            ch.flush();
            if ch.prepare_sleep() {
                work = true;
                break;
            }
            self.pollfds.push(libc::pollfd {
                fd: ch.doorbell().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            blocked |= ch.tx_blocked();
            self.armed.push(ch as *mut Channel);
        }
        if work {
            self.disarm(false);
            self.reset();
            self.stats.pending += 1;
            return Ok(Wake::Pending);
        }
        for fd in extra {
            self.pollfds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // A channel blocked on a full ring waits for its consumer to return
        // buffers. A consumer that does not flush after `recv` (against the
        // contract) would never ring us: look again after a while anyway.
        let timeout = if blocked {
            Some(timeout.map_or(BLOCKED_RECHECK, |t| t.min(BLOCKED_RECHECK)))
        } else {
            timeout
        };
        let ms = match timeout {
            None => -1,
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        self.stats.sleeps += 1;
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs.
        let r = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ms,
            )
        };
        let err = if r < 0 {
            Some(io::Error::last_os_error())
        } else {
            None
        };
        let rang = self.disarm(true);
        self.extra_ready.clear();
        let first_extra = self.pollfds.len() - extra.len();
        for p in &self.pollfds[first_extra..] {
            self.extra_ready.push(p.revents != 0);
        }
        self.reset();
        match err {
            Some(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Wake::Woken),
            Some(e) => Err(e),
            None if r == 0 => {
                self.stats.timeouts += 1;
                Ok(Wake::TimedOut)
            }
            None => {
                if rang {
                    self.stats.doorbell_wakes += 1;
                }
                Ok(Wake::Woken)
            }
        }
    }

    /// Cancels the sleep of every armed channel and, after a poll, drains
    /// the doorbells that rang. Returns whether any rang.
    fn disarm(&mut self, polled: bool) -> bool {
        let mut rang = false;
        for (i, &ch) in self.armed.iter().enumerate() {
            // SAFETY: `ch` came from a `&'a mut Channel` handed to the current
            // call of `wait`/`sleep`, which is still borrowed; `armed` is
            // cleared before that call returns.
            let ch = unsafe { &mut *ch };
            ch.cancel_sleep();
            if polled && self.pollfds[i].revents != 0 {
                ch.clear_doorbell();
                rang = true;
            }
        }
        self.armed.clear();
        rang
    }
}
