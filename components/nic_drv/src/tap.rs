//! The `tap` backend: one queue of a (multi-queue) TAP device.
//!
//! `init` creates the persistent TAP device and gives the host side its
//! address; each nic_drv process (one per queue, `FRAGNET_QUEUE=i`) attaches
//! one queue and moves frames between it and its one client channel. TAP
//! hands out one frame per `read`, so receiving costs a system call per
//! frame (unavoidable with TAP); everything else works in batches: up to
//! `BATCH` reads until `EAGAIN`, one flush of the channel per round.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::counters::{Direction, DropReason};
use fragnet_host::warn;
use packet_ring::linux::{Channel, Waiter, Wake};
use packet_ring::{Endpoint, State, TxError};
use rustix::io::Errno;

/// Frames moved per direction and round.
const BATCH: usize = 64;
/// Largest frame read from the device (no offloads: MTU + header fits).
const MAX_TAP_FRAME: usize = 65536;

/// One TAP queue and its client.
pub struct TapQueue {
    tap: OwnedFd,
    /// The client channel (`nic:<client>`, side A); absent while down.
    pub nic: Option<Channel>,
    /// Device → client.
    pub rx: Direction,
    /// Client → device.
    pub tx: Direction,
    scratch: Box<[u8]>,
    read_errors: u64,
}

impl TapQueue {
    pub fn new(tap: OwnedFd, nic: Channel) -> TapQueue {
        TapQueue {
            tap,
            nic: Some(nic),
            rx: Direction::default(),
            tx: Direction::default(),
            scratch: vec![0; MAX_TAP_FRAME].into_boxed_slice(),
            read_errors: 0,
        }
    }

    /// Idle policy step: wait on the channel, the device queue and the
    /// control socket.
    pub fn wait(
        &mut self,
        waiter: &mut Waiter,
        moved: bool,
        control: Option<BorrowedFd<'_>>,
    ) -> io::Result<Wake> {
        let tap = self.tap.as_fd();
        let extra = [tap, control.unwrap_or(tap)];
        let n = if control.is_some() { 2 } else { 1 };
        waiter.wait(
            moved,
            self.nic.as_mut(),
            &extra[..n],
            Some(Duration::from_secs(1)),
        )
    }

    /// One round in both directions; returns the frames moved.
    pub fn poll(&mut self) -> usize {
        let mut moved = 0;
        // Device → client: read until EAGAIN or a full batch.
        for _ in 0..BATCH {
            let n = match rustix::io::read(&self.tap, &mut self.scratch[..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    if self.read_errors == 0 {
                        warn!("reading the TAP device: {e}");
                    }
                    self.read_errors += 1;
                    break;
                }
            };
            moved += 1;
            let frame = &self.scratch[..n];
            let Some(nic) = self.nic.as_mut() else {
                self.rx.drop(DropReason::LinkDown);
                continue;
            };
            match Endpoint::send(nic, frame) {
                Ok(()) => self.rx.pass(n),
                Err(TxError::TooLong) => self.rx.drop(DropReason::TooLong),
                Err(_) => self.rx.drop(DropReason::ChannelFull),
            }
        }
        let Some(nic) = self.nic.as_mut() else {
            return moved;
        };
        // Client → device: one write per frame.
        let (tap, tx) = (&self.tap, &mut self.tx);
        moved += Endpoint::recv(nic, BATCH, |frame| {
            if frame.len() < 14 {
                tx.drop(DropReason::Malformed);
                return;
            }
            match rustix::io::write(tap, frame) {
                Ok(_) => tx.pass(frame.len()),
                Err(Errno::AGAIN) => tx.drop(DropReason::TapFull),
                Err(_) => tx.drop(DropReason::TapError),
            }
        })
        .unwrap_or(0);
        nic.flush();
        if let State::Disconnected(e) = nic.state() {
            warn!("client channel disconnected: peer broke the ring protocol: {e}");
            self.nic = None;
        }
        moved
    }

    /// `stats` lines.
    pub fn report(&self, out: &mut String) {
        out.push_str(&format!("link_up {}\n", u8::from(self.nic.is_some())));
        self.rx.report("rx", out);
        self.tx.report("tx", out);
        out.push_str(&format!("tap_read_errors {}\n", self.read_errors));
    }
}
