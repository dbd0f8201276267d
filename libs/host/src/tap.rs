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
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
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
    create_persistent_for(ifname, multi_queue, None)
}

/// Like [`create_persistent`]; with `owner` = (uid, gid), processes of that
/// user or group may attach queues without CAP_NET_ADMIN (TUNSETOWNER,
/// TUNSETGROUP), so a driver can run unprivileged.
pub fn create_persistent_for(
    ifname: &str,
    multi_queue: bool,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
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
    if let Some((uid, gid)) = owner {
        for (req, id, what) in [(TUNSETOWNER, uid, "owner"), (TUNSETGROUP, gid, "group")] {
            // SAFETY: TUNSETOWNER/TUNSETGROUP take the id by value.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, id as libc::c_ulong) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("setting the {what} of TAP device {ifname} to {id} failed: {e}"),
                ));
            }
        }
    }
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

// --- queue steering ---------------------------------------------------------

/// `_IOR('T', 224, int)`: attach an eBPF program that picks the queue.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8, // dst (low nibble), src (high nibble)
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The steering program: frames to (IPv4 packets) or asking for (ARP) one
/// of `map`'s addresses go to its queue; everything else to queue 0.
fn steering_program(map: &[(std::net::Ipv4Addr, u16)]) -> Vec<Insn> {
    const MOV64_X: u8 = 0xbf; // r_dst = r_src
    const MOV64_K: u8 = 0xb7; // r_dst = imm
    const LDABS_H: u8 = 0x28; // r0 = ntohs(*(u16 *)(skb->data + imm))
    const LDABS_W: u8 = 0x20; // r0 = ntohl(*(u32 *)(skb->data + imm))
    const JEQ32_K: u8 = 0x16;
    const JNE32_K: u8 = 0x56;
    const JA: u8 = 0x05;
    const EXIT: u8 = 0x95;
    let mut p = vec![
        insn(MOV64_X, 6, 1, 0, 0),      // 0: r6 = skb (LD_ABS needs it)
        insn(LDABS_H, 0, 0, 0, 12),     // 1: ethertype
        insn(JEQ32_K, 0, 0, 3, 0x0800), // 2: IPv4 -> 6
        insn(JEQ32_K, 0, 0, 4, 0x0806), // 3: ARP -> 8
        insn(MOV64_K, 0, 0, 0, 0),      // 4: other: queue 0
        insn(EXIT, 0, 0, 0, 0),         // 5
        insn(LDABS_W, 0, 0, 0, 30),     // 6: IPv4 destination
        insn(JA, 0, 0, 1, 0),           // 7: -> 9
        insn(LDABS_W, 0, 0, 0, 38),     // 8: ARP target address
    ];
    for (ip, q) in map {
        p.push(insn(JNE32_K, 0, 0, 2, u32::from(*ip) as i32));
        p.push(insn(MOV64_K, 0, 0, 0, i32::from(*q)));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

fn load_socket_filter(prog: &[Insn]) -> io::Result<OwnedFd> {
    use rustix::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    // union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns,
    // license, log_level, log_size, log_buf; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SOCKET_FILTER.to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
    attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) reads `attr` (128 bytes), the program, the license and
    // writes at most `log.len()` bytes of verifier log; all outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(0);
        let msg = String::from_utf8_lossy(&log[..end]);
        return Err(io::Error::new(
            e.kind(),
            format!(
                "loading the queue steering program failed: {e} {}",
                msg.trim()
            ),
        ));
    }
    // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes a multi-queue TAP device deliver each frame for (or an ARP
/// request asking for) one of `map`'s IPv4 addresses on that address's
/// queue, and everything else on queue 0 — destination steering like a
/// NIC's n-tuple filters, so that each queue's stack sees its own traffic.
/// Without it the kernel spreads flows by hash. The program stays with
/// the device until it is deleted. Needs CAP_NET_ADMIN (and BPF).
pub fn steer_by_ipv4(ifname: &str, map: &[(std::net::Ipv4Addr, u16)]) -> io::Result<()> {
    check_ifname(ifname)?;
    let prog = load_socket_filter(&steering_program(map))
        .map_err(|e| io::Error::new(e.kind(), format!("TAP device {ifname}: {e}")))?;
    let what = "steering queues of";
    // Briefly attach one more queue to reach the device.
    let fd = open_tun(ifname, what, true)?;
    set_iff(&fd, ifname, tap_flags(true), what)?;
    let prog_fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads one int (the program fd).
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            TUNSETSTEERINGEBPF as _,
            &prog_fd as *const libc::c_int,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{what} TAP device {ifname}: TUNSETSTEERINGEBPF failed: {e}"),
        ));
    }
    Ok(())
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

    #[test]
    fn steering_program_shape() {
        let ip = std::net::Ipv4Addr::new(192, 168, 0, 10);
        let p = steering_program(&[(ip, 1)]);
        assert_eq!(p.len(), 9 + 3 + 2);
        // The address is compared as the 32-bit value LD_ABS produces.
        assert_eq!(p[9].imm as u32, 0xc0a8_000a);
        assert_eq!((p[10].code, p[10].imm), (0xb7, 1));
    }
}
