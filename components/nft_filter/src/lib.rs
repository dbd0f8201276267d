//! nft_filter: the packet filter of fragnet's stacks and switches.
//!
//! A ruleset is written in a subset of the nft language (see `SUBSET.md`;
//! every file the subset accepts is also valid input to `nft -c -f`) and
//! goes through three stages, in the manner of Fuchsia netstack3's filter
//! crate:
//!
//! * [`parser`]: text → [`ast`] (nom lexer + recursive descent), errors with
//!   line, column and token;
//! * [`compile`]: tree → [`Ruleset`], a validated program (the only way to
//!   obtain one, so later code cannot hold an unvalidated ruleset): chains
//!   resolved, loops refused, sets typed and indexed;
//! * [`eval`]: per-packet evaluation with the Linux kernel's semantics
//!   (base chains by priority, accept ends only its base chain, jump / goto /
//!   return, policies, counters), fed by a [`Conntrack`] of fixed capacity.
//!
//! [`Filter`] ties them together for a component: it holds the active
//! program behind a generation, swaps in updates atomically, evaluates
//! packets (allocation-free), and prints `list ruleset` / `list counters`.
//! A `reject` verdict comes back as [`Verdict::Reject`]; the caller sends
//! the reply that [`reject::build_reply`] builds.
//!
//! The core is `no_std` + `alloc`; the `std` feature only adds
//! `std::error::Error` impls.

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod ast;
pub mod compile;
pub mod conntrack;
pub mod eval;
pub mod filter;
pub mod packet;
pub mod parser;
pub mod reject;
pub mod types;

#[cfg(test)]
pub(crate) mod testutil;

pub use ast::{Command, Pos, RejectWith, Table};
pub use compile::{CompileError, Ruleset};
pub use conntrack::{Conntrack, CtStats};
pub use eval::Verdict;
pub use filter::{apply_commands, compile_text, list_tables, BuildJob, Error, Filter};
pub use packet::{IfName, LinkType, PacketMeta};
pub use parser::{parse, ParseError};
pub use types::{Family, Hook};
