//! The start-up environment of a component.
//!
//! `init` starts every component with a clean set of inherited descriptors
//! and the `FRAGNET_*` variables listed in `docs/INTERNALS.md`.
//! [`Env::from_env`] reads them, checks every descriptor number it names
//! (open, not stdio, not named twice), takes ownership of those descriptors
//! and marks them close-on-exec so they go no further.

use crate::config::{ConfigError, ConfigNode};
use crate::control::Control;
use packet_ring::linux::ChannelFds;
use packet_ring::Side;
use rustix::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// One channel handed to the component.
#[derive(Debug)]
pub struct ChannelSpec {
    /// `nic`, `socket`, … for a route (side B); `nic:kv0_stack` for a
    /// client of a provided service (side A).
    pub label: String,
    /// Which end of the channel this component holds.
    pub side: Side,
    /// The region and the two doorbells.
    pub fds: ChannelFds,
}

/// Everything `init` told the component.
#[derive(Debug)]
pub struct Env {
    /// `FRAGNET_NAME`: the `<start name>` (`nic_drv#1` for driver queue 1).
    pub name: String,
    /// `FRAGNET_CONFIG`: the `<config>` element, verbatim XML.
    pub config_xml: String,
    /// `FRAGNET_SCRIPT_DIR`: relative file names in the config are relative
    /// to it.
    pub script_dir: PathBuf,
    /// `FRAGNET_CHANNELS`, with the descriptors now owned.
    pub channels: Vec<ChannelSpec>,
    /// `FRAGNET_CONTROL_FD`, the socket to `init` (absent when started by hand).
    pub control: Option<Control>,
    /// `FRAGNET_QUEUE`: driver queue index.
    pub queue: Option<u32>,
    /// `FRAGNET_CPU`: the CPU `init` pinned the process to.
    pub cpu: Option<usize>,
}

/// Why the environment could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// A required variable is not set.
    Missing(&'static str),
    /// A variable does not parse.
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    /// A descriptor number is not usable.
    BadFd {
        var: &'static str,
        fd: RawFd,
        reason: String,
    },
    /// The descriptors were already taken by an earlier call.
    AlreadyTaken,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Missing(var) => write!(
                f,
                "{var} is not set: this program is a fragnet component; start it \
                 from a run script with `fragnet run <script.xml>`"
            ),
            EnvError::Invalid { var, value, reason } => {
                write!(f, "{var}=\"{value}\" is invalid: {reason}")
            }
            EnvError::BadFd { var, fd, reason } => {
                write!(f, "{var} names file descriptor {fd}, which {reason}")
            }
            EnvError::AlreadyTaken => write!(
                f,
                "Env::from_env() was already called: the inherited descriptors belong \
                 to the first caller"
            ),
        }
    }
}

impl std::error::Error for EnvError {}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// A parsed channel entry, descriptors not yet owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChannel {
    pub label: String,
    pub side: Side,
    pub memfd: RawFd,
    pub wake_a: RawFd,
    pub wake_b: RawFd,
}

/// Parses a `FRAGNET_CHANNELS` value (`label=side:memfd:wake_a:wake_b,…`)
/// without touching any descriptor. Labels may contain `:` but not `=` or `,`.
pub fn parse_channels(value: &str) -> Result<Vec<RawChannel>, EnvError> {
    let invalid = |reason: String| EnvError::Invalid {
        var: "FRAGNET_CHANNELS",
        value: value.to_string(),
        reason,
    };
    let mut out: Vec<RawChannel> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (label, rest) = entry.rsplit_once('=').ok_or_else(|| {
            invalid(format!(
                "entry \"{entry}\" is not label=side:memfd:wake_a:wake_b"
            ))
        })?;
        if label.is_empty() || label.contains('=') {
            return Err(invalid(format!("entry \"{entry}\" has a bad label")));
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let [side, memfd, wake_a, wake_b] = parts[..] else {
            return Err(invalid(format!(
                "entry \"{entry}\": expected side:memfd:wake_a:wake_b after '='"
            )));
        };
        let side = match side {
            "A" | "a" => Side::A,
            "B" | "b" => Side::B,
            other => {
                return Err(invalid(format!(
                    "entry \"{entry}\": side \"{other}\" is not A or B"
                )))
            }
        };
        let num = |s: &str| {
            s.parse::<RawFd>()
                .ok()
                .filter(|&fd| fd >= 0)
                .ok_or_else(|| {
                    invalid(format!(
                        "entry \"{entry}\": \"{s}\" is not a descriptor number"
                    ))
                })
        };
        if out.iter().any(|c| c.label == label) {
            return Err(invalid(format!("label \"{label}\" appears twice")));
        }
        out.push(RawChannel {
            label: label.to_string(),
            side,
            memfd: num(memfd)?,
            wake_a: num(wake_a)?,
            wake_b: num(wake_b)?,
        });
    }
    Ok(out)
}

fn check_fd(var: &'static str, fd: RawFd, seen: &mut Vec<RawFd>) -> Result<(), EnvError> {
    let bad = |reason: &str| EnvError::BadFd {
        var,
        fd,
        reason: reason.to_string(),
    };
    if fd <= 2 {
        return Err(bad("is standard input, output or error"));
    }
    if seen.contains(&fd) {
        return Err(bad("is named twice"));
    }
    // SAFETY: the borrow lives only for this call; fcntl(F_GETFD) on a
    // number that is not open fails with EBADF and touches nothing.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).map_err(|_| bad("is not open"))?;
    seen.push(fd);
    Ok(())
}

/// Takes ownership of a checked descriptor and marks it close-on-exec.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
unsafe fn own(fd: RawFd) -> OwnedFd {
    let owned = OwnedFd::from_raw_fd(fd);
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    owned
}

impl Env {
    /// Reads the environment and takes ownership of the descriptors it
    /// names. May be called once per process.
    pub fn from_env() -> Result<Env, EnvError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env) with variables from `lookup`
    /// (the descriptors are still this process's).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Env, EnvError> {
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(EnvError::AlreadyTaken);
        }
        let result = Self::parse_and_take(&lookup);
        if result.is_err() {
            // Nothing was taken: a corrected retry is allowed.
            TAKEN.store(false, Ordering::SeqCst);
        }
        result
    }

    fn parse_and_take(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Env, EnvError> {
        let name = lookup("FRAGNET_NAME")
            .filter(|n| !n.is_empty())
            .ok_or(EnvError::Missing("FRAGNET_NAME"))?;
        let config_xml = lookup("FRAGNET_CONFIG")
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| "<config/>".to_string());
        let script_dir = PathBuf::from(
            lookup("FRAGNET_SCRIPT_DIR")
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| ".".into()),
        );
        let number = |var: &'static str| -> Result<Option<u64>, EnvError> {
            match lookup(var).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|e| EnvError::Invalid {
                        var,
                        value: v.clone(),
                        reason: e.to_string(),
                    }),
            }
        };
        let queue = number("FRAGNET_QUEUE")?
            .map(|q| {
                u32::try_from(q).map_err(|e| EnvError::Invalid {
                    var: "FRAGNET_QUEUE",
                    value: q.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let cpu = number("FRAGNET_CPU")?.map(|c| c as usize);
        let control_fd = number("FRAGNET_CONTROL_FD")?
            .map(|fd| {
                RawFd::try_from(fd).map_err(|e| EnvError::Invalid {
                    var: "FRAGNET_CONTROL_FD",
                    value: fd.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let raw = parse_channels(&lookup("FRAGNET_CHANNELS").unwrap_or_default())?;

        // Check every number before owning any, so an error closes nothing.
        let mut seen = Vec::new();
        if let Some(fd) = control_fd {
            check_fd("FRAGNET_CONTROL_FD", fd, &mut seen)?;
            // SAFETY: checked open just above; borrowed for this call only.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            match rustix::net::sockopt::socket_type(b) {
                Ok(rustix::net::SocketType::SEQPACKET) => {}
                _ => {
                    return Err(EnvError::BadFd {
                        var: "FRAGNET_CONTROL_FD",
                        fd,
                        reason: "is not a SOCK_SEQPACKET socket".into(),
                    })
                }
            }
        }
        for c in &raw {
            for fd in [c.memfd, c.wake_a, c.wake_b] {
                check_fd("FRAGNET_CHANNELS", fd, &mut seen)?;
            }
        }
        // SAFETY (both blocks): every number was checked open, is not stdio,
        // appears once, and TAKEN guarantees no second owner in this process.
        let control = control_fd.map(|fd| Control::from_fd(unsafe { own(fd) }));
        let channels = raw
            .into_iter()
            .map(|c| ChannelSpec {
                label: c.label,
                side: c.side,
                fds: unsafe {
                    ChannelFds {
                        memfd: own(c.memfd),
                        wake_a: own(c.wake_a),
                        wake_b: own(c.wake_b),
                    }
                },
            })
            .collect();
        Ok(Env {
            name,
            config_xml,
            script_dir,
            channels,
            control,
            queue,
            cpu,
        })
    }

    /// The `<config>` element parsed.
    pub fn config(&self) -> Result<ConfigNode, ConfigError> {
        ConfigNode::parse(&self.config_xml)
    }

    /// Removes and returns the channel labelled `label`.
    pub fn take_channel(&mut self, label: &str) -> Option<ChannelSpec> {
        let i = self.channels.iter().position(|c| c.label == label)?;
        Some(self.channels.remove(i))
    }

    /// A file name from the config, resolved against the script directory.
    pub fn resolve(&self, file: impl AsRef<Path>) -> PathBuf {
        self.script_dir.join(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse() {
        let c = parse_channels("nic=B:3:4:5, nic:kv0_stack=A:6:7:8").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].label, "nic:kv0_stack");
        assert_eq!((c[1].side, c[1].memfd, c[1].wake_b), (Side::A, 6, 8));
        assert!(parse_channels("").unwrap().is_empty());
        for bad in [
            "nic",
            "nic=C:3:4:5",
            "nic=B:3:4",
            "nic=B:x:4:5",
            "=B:3:4:5",
            "a=B:3:4:5,a=A:6:7:8",
            "n=B:-1:4:5",
        ] {
            let e = parse_channels(bad).unwrap_err();
            assert!(e.to_string().contains("FRAGNET_CHANNELS"), "{bad}: {e}");
        }
    }
}
