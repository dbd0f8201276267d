//! Persistent, optionally multi-queue TAP devices (`/dev/net/tun`).
//!
//! `init` creates the device ([`create_persistent`]), configures it (address,
//! up) and deletes it at shutdown ([`destroy`]); each `nic_drv` queue
//! process attaches one queue with [`open_queue`]. Creating needs
//! `CAP_NET_ADMIN`; the errors say so and name the device.

use rustix::fd::{AsRawFd, OwnedFd};
use std::io;
use std::path::Path;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFNAMSIZ: usize = 16;

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Checks a Linux interface name: 1–15 bytes, no `/`, blanks, `:` or NUL.
pub fn check_ifname(ifname: &str) -> io::Result<()> {
    let bad = ifname.is_empty()
        || ifname.len() >= IFNAMSIZ
        || ifname == "."
        || ifname == ".."
        || ifname
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "\"{ifname}\" is not a valid interface name (1 to 15 characters, no '/', ':' or blanks)"
            ),
        ));
    }
    Ok(())
}

/// Whether a network device of that name exists (in this network namespace).
pub fn exists(ifname: &str) -> bool {
    check_ifname(ifname).is_ok() && Path::new("/sys/class/net").join(ifname).exists()
}

fn open_tun(ifname: &str, what: &str, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC;
    if nonblocking {
        flags |= rustix::fs::OFlags::NONBLOCK;
    }
    rustix::fs::open("/dev/net/tun", flags, rustix::fs::Mode::empty()).map_err(|e| {
        let e = io::Error::from(e);
        let hint = match e.kind() {
            io::ErrorKind::NotFound => " (/dev/net/tun is missing: load the tun module)",
            io::ErrorKind::PermissionDenied => " (needs CAP_NET_ADMIN: run as root)",
            _ => "",
        };
        io::Error::new(
            e.kind(),
            format!("{what} TAP device {ifname}: opening /dev/net/tun failed: {e}{hint}"),
        )
    })
}

fn set_iff(fd: &OwnedFd, ifname: &str, flags: libc::c_short, what: &str) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                " — needs CAP_NET_ADMIN (run as root)".to_string()
            }
            Some(libc::EINVAL) | Some(libc::EBUSY) => {
                format!(" — {ifname} exists with other flags, or all its queues are taken")
            }
            _ => String::new(),
        };
        return Err(io::Error::new(
            e.kind(),
            format!("{what} TAP device {ifname} failed: {e}{hint}"),
        ));
    }
    Ok(())
}

fn set_persist(fd: &OwnedFd, ifname: &str, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, on as libc::c_ulong) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "making TAP device {ifname} {} failed: {e}",
                if on { "persistent" } else { "non-persistent" }
            ),
        ));
    }
    Ok(())
}

fn tap_flags(multi_queue: bool) -> libc::c_short {
    IFF_TAP | IFF_NO_PI | if multi_queue { IFF_MULTI_QUEUE } else { 0 }
}

/// Creates a persistent TAP device (no packet-info header; multi-queue when
/// asked). Refuses to take over a device that already exists.
pub fn create_persistent(ifname: &str, multi_queue: bool) -> io::Result<()> {
    check_ifname(ifname)?;
    if exists(ifname) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("creating TAP device {ifname}: a network device of that name already exists"),
        ));
    }
    let what = "creating";
    let fd = open_tun(ifname, what, false).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                e.kind(),
                format!("creating TAP device {ifname} needs CAP_NET_ADMIN (run as root): {e}"),
            )
        } else {
            e
        }
    })?;
    set_iff(&fd, ifname, tap_flags(multi_queue), what).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                e.kind(),
                format!("creating TAP device {ifname} needs CAP_NET_ADMIN (run as root)"),
            )
        } else {
            e
        }
    })?;
    set_persist(&fd, ifname, true)
}

/// Attaches one queue of an existing TAP device; the descriptor is
/// non-blocking and close-on-exec. Frames are read and written whole, with
/// no packet-info header.
pub fn open_queue(ifname: &str, multi_queue: bool) -> io::Result<OwnedFd> {
    check_ifname(ifname)?;
    if !exists(ifname) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("attaching to TAP device {ifname}: no such device"),
        ));
    }
    let what = "attaching a queue of";
    let fd = open_tun(ifname, what, true)?;
    set_iff(&fd, ifname, tap_flags(multi_queue), what)?;
    Ok(fd)
}

/// Deletes a persistent TAP device (whatever its queue flags were). Queues
/// still attached keep it alive until they are closed.
pub fn destroy(ifname: &str) -> io::Result<()> {
    check_ifname(ifname)?;
    let sys = Path::new("/sys/class/net").join(ifname);
    if !sys.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("deleting TAP device {ifname}: no such device"),
        ));
    }
    // The device's own flags tell whether it is multi-queue; attaching with
    // different ones fails.
    let multi = std::fs::read_to_string(sys.join("tun_flags"))
        .ok()
        .and_then(|s| i64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .map(|f| f & IFF_MULTI_QUEUE as i64 != 0);
    let what = "deleting";
    let fd = open_tun(ifname, what, true)?;
    match multi {
        Some(m) => set_iff(&fd, ifname, tap_flags(m), what)?,
        None => set_iff(&fd, ifname, tap_flags(true), what)
            .or_else(|_| set_iff(&fd, ifname, tap_flags(false), what))?,
    }
    set_persist(&fd, ifname, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "0123456789abcdef", "a b", ".", "a:1"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
        check_ifname("fn0").unwrap();
        assert!(!exists("a/b"));
    }
}
