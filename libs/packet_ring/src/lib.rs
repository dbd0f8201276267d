//! packet_ring: the shared-memory channel every fragnet component talks over.
//!
//! A channel joins two sides, `A` and `B`, through one memory region (a memfd
//! on Linux) that holds two *directions* (A→B and B→A). Each direction has a
//! pool of fixed-size packet buffers and two single-producer/single-consumer
//! rings of `{offset, len}` descriptors: the **active** ring carries frames
//! from producer to consumer, the **free** ring hands the buffers back. This
//! is the queue pair of seL4 sDDF, Genode's packet stream and AF_XDP.
//!
//! * [`layout`]: where everything sits in the region, and [`Config`].
//! * [`Endpoint`]: one side's handle — batched [`send`](Endpoint::send) /
//!   [`flush`](Endpoint::flush) / [`recv`](Endpoint::recv), and the sleep
//!   protocol ([`prepare_sleep`](Endpoint::prepare_sleep)). It works over a
//!   raw pointer and length, needs no allocator and no OS (`no_std`).
//! * [`linux`] (feature `std`, on by default): memfd + eventfd channels
//!   ([`linux::create`], [`linux::Channel`]) and the adaptive
//!   [`linux::Waiter`] (spin, yield, then sleep in `poll`).
//!
//! The peer is untrusted: every counter and descriptor read from the region
//! is checked before use, and a violation disconnects the endpoint with a
//! [`PeerError`] naming it. Nothing read from shared memory can make this
//! crate panic or access memory outside the region.
//!
//! ```
//! use packet_ring::{init_region, Config, Endpoint, Side};
//! let cfg = Config { ring_slots: 64, buf_size: 2048, bufs: 64 };
//! let layout = std::alloc::Layout::from_size_align(cfg.region_size(), 4096).unwrap();
//! let mem = unsafe { std::alloc::alloc_zeroed(layout) };
//! unsafe { init_region(mem, layout.size(), &cfg).unwrap() };
//! let mut a = unsafe { Endpoint::attach(mem, layout.size(), Side::A).unwrap() };
//! let mut b = unsafe { Endpoint::attach(mem, layout.size(), Side::B).unwrap() };
//! a.send(b"hello").unwrap();
//! a.flush();
//! let mut got = Vec::new();
//! b.recv(32, |frame| got.extend_from_slice(frame)).unwrap();
//! assert_eq!(got, b"hello");
//! # drop((a, b)); unsafe { std::alloc::dealloc(mem, layout) };
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod endpoint;
mod error;
pub mod layout;
#[cfg(feature = "std")]
pub mod linux;

pub use endpoint::{init_region, init_region_with_start, Endpoint, Side, State};
pub use error::{Error, PeerError, TxError};
pub use layout::Config;

#[cfg(test)]
mod tests;
