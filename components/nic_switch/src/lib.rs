//! nic_switch: a learning Ethernet switch between fragnet channels.
//!
//! Every channel the switch is given is a port: one per client of its `Nic`
//! service (`nic:<client>`, side A) and optionally an uplink route (`nic`,
//! side B, e.g. to a `nic_drv`). Frames are *copied* between ports, so each
//! channel's memory stays private to its pair of components.
//!
//! * [`mac_table`]: learning with aging;
//! * [`filter`]: the per-frame hook (bridge family, forward hook);
//! * [`forward`]: ports, counters and the batched forwarding round, the
//!   code shared by the binary and the benchmark;
//! * [`port`]: a packet_ring channel as a switch port.

pub mod filter;
pub mod forward;
pub mod mac_table;
pub mod port;

pub use forward::{Disconnect, DropReason, Port, PortCounters, PortIo, Round, Switch};
pub use mac_table::{Lookup, MacTable, PortId};
