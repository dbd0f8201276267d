//! Copying frames from one channel to another (the `wire` backend).

use crate::counters::{Direction, DropReason};
use packet_ring::linux::Channel;
use packet_ring::{Endpoint, TxError};

/// Move up to `batch` frames from `from` into `to`, counting in `dir`.
/// Returns how many frames were taken from `from`. The caller flushes.
#[inline]
pub fn pump(from: &mut Channel, to: &mut Channel, batch: usize, dir: &mut Direction) -> usize {
    Endpoint::recv(from, batch, |frame| match Endpoint::send(to, frame) {
        Ok(()) => dir.pass(frame.len()),
        Err(TxError::TooLong) => dir.drop(DropReason::TooLong),
        Err(_) => dir.drop(DropReason::ChannelFull),
    })
    .unwrap_or(0)
}

/// Take up to `batch` frames from `from` and drop them (the other end is
/// not connected), counting `link_down`.
pub fn discard(from: &mut Channel, batch: usize, dir: &mut Direction) -> usize {
    Endpoint::recv(from, batch, |_| dir.drop(DropReason::LinkDown)).unwrap_or(0)
}
