//! fragnet_host: the Linux glue every fragnet component uses.
//!
//! A component is a Linux process started by `init` (the `fragnet` command).
//! Everything it needs from its host lives here, so the component code
//! itself stays free of Linux specifics and a Genode or seL4 host is a port
//! of this crate, not a rewrite:
//!
//! * [`env`]: the start-up environment (`FRAGNET_*` variables and the
//!   inherited channel fds), parsed by [`Env::from_env`];
//! * [`control`]: the `SOCK_SEQPACKET` control socket to `init`
//!   (text messages with file descriptors riding along);
//! * [`config`]: a small XML tree for the component's `<config>` element;
//! * [`cpu`]: CPU pinning;
//! * [`tap`]: persistent, multi-queue TAP devices;
//! * [`attach`]: a process started by hand attaching to a manual start;
//! * [`log`]: `[name] message` lines on stderr, filtered by `FRAGNET_LOG`.
//!
//! The contracts are in `docs/INTERNALS.md` ("Start-up environment" and
//! "Control socket").

pub mod attach;
pub mod config;
pub mod control;
pub mod cpu;
pub mod env;
pub mod log;
pub mod tap;

pub use config::{ConfigError, ConfigNode};
pub use control::{Control, ControlMsg};
pub use cpu::{available_cpus, pin_to_cpu};
pub use env::{ChannelSpec, Env, EnvError};
