//! Test support for fragnet's integration tests.
//!
//! Integration tests start real topologies: `fragnet run` on a run script,
//! inside a network namespace of their own, with the Linux kernel of that
//! namespace as the peer. This crate holds the pieces every such test needs:
//!
//! * [`bin_path`] finds a workspace binary next to the test executable
//!   (`target/<profile>/<name>`); the binaries must be built first
//!   (`cargo build --workspace --bins`, which the project's test script does);
//! * [`NetNs`] is a network namespace with a unique name, deleted (and every
//!   process left in it killed) when dropped, even when the test fails;
//! * [`Fragnet`] is a running `fragnet run <script>`, stopped with SIGTERM
//!   (then SIGKILL) when dropped, its output kept in a log file;
//! * [`TempDir`], [`write_script`], [`wait_for`]: small conveniences.
//!
//! Tests that need namespaces run as root (CI does).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>x<seq>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{}{}x{}",
        prefix,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The directory holding the workspace binaries of the current profile
/// (`target/debug` or `target/release`), found from the test executable,
/// which cargo places in `target/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Path of the workspace binary `name`; panics with a hint if it is not
/// built (tests cannot run `cargo build` themselves: cargo holds the lock).
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} not found at {}: build the workspace binaries first \
         (`cargo build --workspace --bins`, or run ./scripts/test.sh)",
        name,
        path.display()
    );
    path
}

/// Whether the tests run with root privileges (needed for namespaces, TAP).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run_quiet(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A network namespace owned by one test. Dropping it kills every process
/// still inside and deletes the namespace with all its devices.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix><pid>x<n>` with its loopback up. Panics with the
    /// `ip` error if it cannot (not root, no iproute2).
    pub fn new(prefix: &str) -> NetNs {
        let name = unique_name(prefix);
        run_quiet(Command::new("ip").args(["netns", "add", &name]))
            .unwrap_or_else(|e| panic!("creating netns {name}: {e}"));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ip <args>` inside the namespace; panics with its error.
    pub fn ip(&self, args: &[&str]) {
        run_quiet(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .unwrap_or_else(|e| panic!("in netns {}: {e}", self.name));
    }

    /// Runs a shell command line inside the namespace and returns its
    /// output (success or not).
    pub fn sh(&self, line: &str) -> std::process::Output {
        self.exec("sh")
            .args(["-c", line])
            .stdin(Stdio::null())
            .output()
            .expect("spawn sh in netns")
    }

    /// `ping -c count -W 1 addr` inside the namespace; true if every echo
    /// was answered.
    pub fn ping(&self, addr: &str, count: u32) -> bool {
        self.exec("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-W",
                "1",
                "-i",
                "0.2",
                addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Pids of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run_quiet(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A temporary directory removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes a run script `name` into `dir` and returns its path.
pub fn write_script(dir: &Path, name: &str, xml: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create script dir");
    }
    fs::write(&path, xml).expect("write script");
    path
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One counter of a component, from `fragnet stats --socket ctl name`
/// (run inside `ns` if given). Retried while the request fails (e.g. under
/// heavy load); panics with the error, or if there is no counter `key`.
pub fn stat(ns: Option<&NetNs>, ctl: &Path, name: &str, key: &str) -> u64 {
    let mut last = String::new();
    for _ in 0..5 {
        let fragnet = bin_path("fragnet");
        let mut cmd = match ns {
            Some(ns) => ns.exec(&fragnet),
            None => Command::new(&fragnet),
        };
        let out = cmd
            .arg("stats")
            .arg("--socket")
            .arg(ctl)
            .arg(name)
            .output()
            .expect("run fragnet stats");
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            return text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} has no counter {key}:\n{text}"));
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("fragnet stats {name} failed: {last}");
}

/// Runs `f` on a thread that entered network namespace `ns` (sockets it
/// opens, and threads it spawns, live in the namespace).
pub fn in_ns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let file = fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// Sends `count` datagrams from a Linux UDP socket in `ns` to the echo
/// service at `to`, one at a time, each waiting up to `wait` for its echo;
/// returns how many came back intact from `to`.
pub fn udp_echoes(ns: &NetNs, to: std::net::SocketAddrV4, count: u32, wait: Duration) -> u32 {
    in_ns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(wait)).expect("read timeout");
        let mut ok = 0;
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let msg = format!("echo request {i}");
            s.send_to(msg.as_bytes(), to).expect("send_to");
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                if &buf[..n] == msg.as_bytes() && from == std::net::SocketAddr::V4(to) {
                    ok += 1;
                }
            }
        }
        ok
    })
}

/// A running `fragnet run <script>`; SIGTERM then SIGKILL on drop.
pub struct Fragnet {
    child: Option<Child>,
    log: PathBuf,
}

impl Fragnet {
    /// Starts `fragnet run script`, inside `netns` if given. Output goes to
    /// `<script>.log` beside the script.
    pub fn start(netns: Option<&NetNs>, script: &Path) -> Fragnet {
        Self::start_with(netns, script, &[])
    }

    /// Like [`Fragnet::start`], with extra environment variables.
    pub fn start_with(netns: Option<&NetNs>, script: &Path, env: &[(&str, &str)]) -> Fragnet {
        let fragnet = bin_path("fragnet");
        let mut cmd = match netns {
            Some(ns) => ns.exec(&fragnet),
            None => Command::new(&fragnet),
        };
        let log = script.with_extension("log");
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("dup log");
        cmd.arg("run")
            .arg(script)
            .env("FRAGNET_BIN_DIR", bin_dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fragnet run");
        Fragnet {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything `fragnet run` and its components printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether `fragnet run` is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the
    /// exit status (None if it had to be killed).
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Fragnet {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!(
                "---- fragnet log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
    }

    #[test]
    fn wait_for_times_out_and_succeeds() {
        assert!(!wait_for(Duration::from_millis(60), || false));
        let mut n = 0;
        assert!(wait_for(Duration::from_secs(1), || {
            n += 1;
            n > 2
        }));
    }

    #[test]
    fn netns_is_created_and_removed() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let name;
        {
            let ns = NetNs::new("fntk");
            name = ns.name().to_string();
            let out = ns.sh("ip -o link show lo");
            assert!(String::from_utf8_lossy(&out.stdout).contains("UP"));
        }
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }
}
