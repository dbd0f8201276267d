//! fragnet: the socket library an application links to reach its own
//! `ip_stack` process over a shared-memory socket channel.
//!
//! ```no_run
//! use fragnet::{Stack, UdpSocket};
//! let stack = Stack::from_env()?; // the `socket` channel init handed us
//! let sock = UdpSocket::bind(&stack, "0.0.0.0:7".parse().unwrap())?;
//! let mut buf = [0u8; 2048];
//! loop {
//!     let (n, from) = sock.recv_from(&mut buf)?;
//!     sock.send_to(&buf[..n], from)?;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The types mirror `std::net` ([`UdpSocket`], [`TcpListener`],
//! [`TcpStream`] with `Read`/`Write`), return `std::io::Error` (kinds
//! `WouldBlock`, `ConnectionRefused`, `ConnectionReset`, …), and add batch
//! calls ([`UdpSocket::recv_batch`], [`UdpSocket::send_batch`]). A [`Stack`]
//! is single-threaded: its sockets share one channel. Its doorbell is a
//! pollable fd ([`Stack::as_raw_fd`]) for event loops: call
//! [`Stack::prepare_wait`] and, if it returns false, wait for the fd to be
//! readable, then [`Stack::poll`].
//!
//! Under the hood ([`proto`]): requests and payloads go to the stack as
//! messages in ring buffers, completions, data and events come back; both
//! directions are credit-based, so nothing is lost and a send blocks (or
//! returns `WouldBlock`) while the stack's socket buffer is full.

pub mod proto;
mod stack;
mod tcp;
mod udp;

pub use stack::Stack;
pub use tcp::{TcpListener, TcpStream};
pub use udp::{RecvMeta, UdpSocket};
