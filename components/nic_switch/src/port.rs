//! A packet_ring channel as a switch port.

use crate::forward::{DropReason, PortIo};
use packet_ring::linux::Channel;
use packet_ring::{Endpoint, State, TxError};

impl PortIo for Channel {
    #[inline]
    fn recv_batch<F: FnMut(&[u8])>(&mut self, max: usize, f: F) -> usize {
        // A peer error leaves the endpoint Disconnected; `violation` reports it.
        Endpoint::recv(self, max, f).unwrap_or(0)
    }

    #[inline]
    fn send_copy(&mut self, frame: &[u8]) -> Result<(), DropReason> {
        match Endpoint::send(self, frame) {
            Ok(()) => Ok(()),
            Err(TxError::TooLong) => Err(DropReason::TooLong),
            Err(_) => Err(DropReason::NoBuffer),
        }
    }

    #[inline]
    fn flush_tx(&mut self) {
        Channel::flush(self);
    }

    fn violation(&self) -> Option<String> {
        match self.state() {
            State::Up => None,
            State::Disconnected(e) => Some(e.to_string()),
        }
    }
}
