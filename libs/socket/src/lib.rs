//! fragnet: the socket library an application links to reach its own
//! `ip_stack` process over a shared-memory socket channel.
//!
//! (The socket types arrive with the channel machinery; [`proto`] defines
//! the messages on the channel.)

pub mod proto;
