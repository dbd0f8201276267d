//! Starting one component process with exactly the descriptors it may hold.
//!
//! The child gets its control socket as fd 3 and its channels' fds from 4
//! on (memfd, wake_a, wake_b per channel, in `FRAGNET_CHANNELS` order).
//! Between fork and exec (async-signal-safe code only, no allocation) it:
//! moves the fds to those numbers (through a high scratch range so no source
//! is clobbered), marks every other descriptor close-on-exec, pins itself to
//! its CPU, leaves init's process group (so a terminal's Ctrl-C reaches only
//! init, which then shuts components down in order), asks to be killed if
//! init dies, and unblocks the signals init keeps blocked for its signalfd.
//! A start with `user="…"` runs under that uid/gid, without supplementary
//! groups, capabilities or the means to regain them (`no_new_privs`).

use packet_ring::linux::ChannelFds;
use packet_ring::Side;
use rustix::fd::{AsRawFd, OwnedFd, RawFd};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Fd number of the control socket in every component.
pub const CONTROL_FD: RawFd = 3;

/// What one component gets.
pub struct SpawnSpec<'a> {
    pub name: &'a str,
    pub binary: &'a Path,
    pub config_xml: &'a str,
    pub script_dir: &'a Path,
    pub queue: Option<u32>,
    pub cpu: Option<usize>,
    /// Run as this (uid, gid) with no supplementary groups; with
    /// `PR_SET_NO_NEW_PRIVS`. A non-root uid has no capabilities.
    pub user: Option<(u32, u32)>,
    pub control: OwnedFd,
    /// (label, side, fds) per channel.
    pub channels: Vec<(String, Side, ChannelFds)>,
}

/// Starts the component; the descriptors in `spec` are closed in this
/// process once the child has them.
pub fn spawn(spec: SpawnSpec<'_>) -> io::Result<Child> {
    let mut sources: Vec<RawFd> = vec![spec.control.as_raw_fd()];
    let mut entries = Vec::new();
    let mut next = CONTROL_FD + 1;
    for (label, side, fds) in &spec.channels {
        let side = match side {
            Side::A => "A",
            Side::B => "B",
        };
        entries.push(format!("{label}={side}:{}:{}:{}", next, next + 1, next + 2));
        next += 3;
        sources.extend([
            fds.memfd.as_raw_fd(),
            fds.wake_a.as_raw_fd(),
            fds.wake_b.as_raw_fd(),
        ]);
    }
    let targets: Vec<RawFd> = (CONTROL_FD..next).collect();
    let scratch_base = sources.iter().chain(&targets).copied().max().unwrap_or(0) + 1;
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    let first_free = next;

    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut cpuset: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if let Some(c) = spec.cpu {
        // SAFETY: CPU_SET writes within the set; `c` was validated to be a
        // CPU of this machine (< CPU_SETSIZE).
        unsafe { libc::CPU_SET(c, &mut cpuset) };
    }
    let pin = spec.cpu.is_some();
    let parent = std::process::id() as libc::pid_t;

    let mut cmd = Command::new(spec.binary);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("FRAGNET_") && k != "FRAGNET_LOG" && k != "FRAGNET_BIN_DIR" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.env("FRAGNET_NAME", spec.name)
        .env("FRAGNET_CONFIG", spec.config_xml)
        .env("FRAGNET_SCRIPT_DIR", spec.script_dir)
        .env("FRAGNET_CHANNELS", entries.join(","))
        .env("FRAGNET_CONTROL_FD", CONTROL_FD.to_string())
        .stdin(Stdio::null());
    if let Some(q) = spec.queue {
        cmd.env("FRAGNET_QUEUE", q.to_string());
    }
    if let Some(c) = spec.cpu {
        cmd.env("FRAGNET_CPU", c.to_string());
    }
    let sandbox = spec.user.is_some();
    if let Some((uid, gid)) = spec.user {
        // std (as root) drops supplementary groups, switches gid, then uid,
        // before the pre_exec closure runs (so the death signal set there
        // survives the credential change).
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: the closure runs in the forked child before exec and uses only
    // async-signal-safe system calls on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(rc)
                }
            }
            for (i, &src) in sources.iter().enumerate() {
                scratch[i] = check(libc::fcntl(src, libc::F_DUPFD_CLOEXEC, scratch_base))?;
            }
            for (i, &dst) in targets.iter().enumerate() {
                // dup2 leaves the new descriptor without FD_CLOEXEC.
                check(libc::dup2(scratch[i], dst))?;
            }
            // Everything from `first_free` up goes at exec (the scratch
            // copies, init's other descriptors); std's own exec-status pipe
            // is close-on-exec already and keeps working.
            let rc = libc::syscall(
                libc::SYS_close_range,
                first_free as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            if rc < 0 {
                let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as RawFd;
                for fd in first_free..max {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if pin {
                check(libc::sched_setaffinity(
                    0,
                    std::mem::size_of::<libc::cpu_set_t>(),
                    &cpuset,
                ))?;
            }
            check(libc::setpgid(0, 0))?;
            if sandbox {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if libc::getppid() != parent {
                // init died between fork and prctl.
                libc::_exit(1);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::pthread_sigmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("starting {} ({}): {e}", spec.name, spec.binary.display()),
        )
    })?;
    drop(spec.control);
    drop(spec.channels);
    Ok(child)
}
