//! Attaching a process started by hand to a start of a running fragnet.
//!
//! A run script may mark a start `attach="manual"`: init spawns nothing for
//! it but keeps its channel ends until a process connects to the control
//! socket and sends `attach NAME`. If the peer's uid is allowed and nobody
//! is attached yet, init replies `ok` with one `label side` line per channel
//! and the channels' descriptors (memfd, wake_a, wake_b each) as
//! SCM_RIGHTS. The connection then stays open: it is the process's control
//! socket (init sends `ping`, `stats`, `shutdown` on it) and its liveness
//! signal — when it closes, init gives the start fresh channels for the
//! next attach. See `components/init/README.md`.

use crate::control::Control;
use crate::env::ChannelSpec;
use packet_ring::linux::ChannelFds;
use packet_ring::Side;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for init's answer.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `FRAGNET_ATTACH` (`SOCKET_PATH:START_NAME`; the name is what
/// follows the last `:`).
pub fn parse_attach_var(v: &str) -> io::Result<(PathBuf, String)> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("FRAGNET_ATTACH=\"{v}\": {why} (expected SOCKET_PATH:START_NAME)"),
        )
    };
    let (path, name) = v.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
    if path.is_empty() {
        return Err(bad("empty socket path"));
    }
    if name.is_empty() {
        return Err(bad("empty start name"));
    }
    Ok((PathBuf::from(path), name.to_string()))
}

/// Connects to init's control socket at `socket` and attaches as start
/// `name`. Returns the connection (keep it open: closing it detaches) and
/// the channels, as [`crate::Env`] would list them.
pub fn attach(socket: &Path, name: &str) -> io::Result<(Control, Vec<ChannelSpec>)> {
    let ctx = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("attaching to \"{name}\" at {}: {e}", socket.display()),
        )
    };
    let addr = SocketAddrUnix::new(socket).map_err(|e| ctx(e.into()))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| ctx(e.into()))?;
    rustix::net::connect(&fd, &addr).map_err(|e| ctx(e.into()))?;
    let mut ctl = Control::from_fd(fd);
    let reply = ctl
        .request(&format!("attach {name}"), &[], ATTACH_TIMEOUT)
        .map_err(ctx)?
        .ok_or_else(|| ctx(io::Error::other("init closed the connection")))?;
    if !reply.is_ok() {
        let kind = if reply.body.contains("permission denied") {
            io::ErrorKind::PermissionDenied
        } else if reply.body.contains("already attached") {
            io::ErrorKind::AddrInUse
        } else if reply.body.contains("no start named") {
            io::ErrorKind::NotFound
        } else {
            io::ErrorKind::Other
        };
        return Err(ctx(io::Error::new(kind, reply.body.trim().to_string())));
    }
    let lines: Vec<&str> = reply.body.lines().filter(|l| !l.is_empty()).collect();
    if reply.fds.len() != 3 * lines.len() {
        return Err(ctx(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "init sent {} descriptors for {} channels",
                reply.fds.len(),
                lines.len()
            ),
        )));
    }
    let mut fds = reply.fds.into_iter();
    let mut channels = Vec::new();
    for l in lines {
        let bad = || {
            ctx(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad channel line \"{l}\" (expected `label A|B`)"),
            ))
        };
        let (label, side) = l.split_once(' ').ok_or_else(bad)?;
        let side = match side.trim() {
            "A" => Side::A,
            "B" => Side::B,
            _ => return Err(bad()),
        };
        let (Some(memfd), Some(wake_a), Some(wake_b)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(bad());
        };
        channels.push(ChannelSpec {
            label: label.to_string(),
            side,
            fds: ChannelFds {
                memfd,
                wake_a,
                wake_b,
            },
        });
    }
    Ok((ctl, channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_var_parses_and_names_what_is_wrong() {
        let (p, n) = parse_attach_var("/run/fragnet/x.sock:client").unwrap();
        assert_eq!(
            (p, n.as_str()),
            (PathBuf::from("/run/fragnet/x.sock"), "client")
        );
        let (p, n) = parse_attach_var("/tmp/a:b.sock:c").unwrap();
        assert_eq!((p, n.as_str()), (PathBuf::from("/tmp/a:b.sock"), "c"));
        for v in ["nocolon", ":name", "/path:"] {
            let e = parse_attach_var(v).unwrap_err().to_string();
            assert!(e.contains("FRAGNET_ATTACH") && e.contains(v), "{e}");
        }
    }

    #[test]
    fn attach_to_missing_socket_names_it() {
        let e = attach(Path::new("/nonexistent/fragnet.sock"), "x").unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/fragnet.sock") && e.to_string().contains("\"x\""),
            "{e}"
        );
    }
}
