//! Processes started by hand attach to an `attach="manual"` start: real
//! `fragnet run` in a network namespace (TAP → ip_stack → manual start),
//! the real `udp_echo` app started by the test with `FRAGNET_ATTACH`, a
//! Linux UDP client in the namespace. Needs root and the workspace binaries
//! (`cargo build --release --workspace --bins`).

use fragnet_testkit::{bin_path, is_root, wait_for, write_script, Fragnet, NetNs, TempDir};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams to `to:7` from a Linux socket in `ns` that came back intact.
fn udp_echoes(ns: &NetNs, to: Ipv4Addr, count: u32) -> u32 {
    fragnet_testkit::udp_echoes(
        ns,
        std::net::SocketAddrV4::new(to, 7),
        count,
        Duration::from_millis(300),
    )
}

/// A process started by hand; SIGKILLed on drop.
struct HandStarted(Child);

impl HandStarted {
    /// `udp_echo` attaching as `name` through `sock`, optionally under
    /// another uid (`setpriv`).
    fn udp_echo(sock: &Path, name: &str, uid: Option<u32>) -> HandStarted {
        let echo = bin_path("udp_echo");
        let mut cmd = match uid {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={u}"))
                    .arg("--clear-groups")
                    .arg(&echo);
                c
            }
            None => Command::new(&echo),
        };
        cmd.args(["--port", "7"])
            .env_remove("FRAGNET_CHANNELS")
            .env_remove("FRAGNET_CONTROL_FD")
            .env_remove("FRAGNET_CONFIG")
            .env("FRAGNET_NAME", name)
            .env("FRAGNET_ATTACH", format!("{}:{name}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        HandStarted(cmd.spawn().expect("spawn udp_echo"))
    }

    /// Waits up to `timeout` for the exit; `None` if it still runs.
    fn exit_within(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, String)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.0.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.0.stderr.take() {
                    let _ = io::Read::read_to_string(&mut e, &mut err);
                }
                return Some((st, err));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for HandStarted {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ps(script: &Path) -> String {
    let out = Command::new(bin_path("fragnet"))
        .args(["ps", "--script"])
        .arg(script)
        .output()
        .expect("fragnet ps");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `client` row of `fragnet ps`: (pid, state).
fn client_row(script: &Path) -> Option<(String, String)> {
    row(script, "client")
}

/// A row of `fragnet ps`: (pid, state).
fn row(script: &Path, name: &str) -> Option<(String, String)> {
    let text = ps(script);
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    Some((w.get(1)?.to_string(), w.get(2)?.to_string()))
}

struct Topo {
    ns: NetNs,
    fragnet: Fragnet,
    script: PathBuf,
    sock: PathBuf,
    _dir: TempDir,
    ip: Ipv4Addr,
}

fn topo(net: u8) -> Topo {
    let ns = NetNs::new("fnat");
    let dir = TempDir::new("fnat");
    // A uid other than root must reach the socket to be refused by init
    // (rather than by the file system).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ifname = format!("fa{}{}", std::process::id() % 100000, net);
    let sock = dir.path().join("ctl.sock");
    let xml = format!(
        r#"<config control="{sock}">
  <start name="nic_drv">
    <config backend="tap" ifname="{ifname}" queues="1" host_ip="10.{net}.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="stack">
    <binary name="ip_stack"/>
    <config ip="10.{net}.0.10/24" gateway="10.{net}.0.1"/>
    <route><service name="Nic"><child name="nic_drv"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="client" attach="manual" allow_uids="0">
    <route><service name="Socket"><child name="stack"/></service></route>
  </start>
</config>
"#,
        sock = sock.display()
    );
    let script = write_script(dir.path(), "fnat.xml", &xml);
    let out = Command::new(bin_path("fragnet"))
        .args(["check", "-v"])
        .arg(&script)
        .env("FRAGNET_BIN_DIR", fragnet_testkit::bin_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("(attach)"),
        "fragnet check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fragnet = Fragnet::start(Some(&ns), &script);
    let ip = Ipv4Addr::new(10, net, 0, 10);
    let t = Topo {
        ns,
        fragnet,
        script,
        sock,
        _dir: dir,
        ip,
    };
    let ips = ip.to_string();
    assert!(
        wait_for(Duration::from_secs(10), || t.ns.ping(&ips, 1)),
        "stack never answered ping; log:\n{}",
        t.fragnet.log()
    );
    t
}

/// Waits until a Linux client in the namespace gets an echo.
fn echoes_come(t: &Topo) -> bool {
    wait_for(Duration::from_secs(10), || udp_echoes(&t.ns, t.ip, 1) == 1)
}

#[test]
fn hand_started_app_attaches_refusals_and_reattach() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP, setpriv)");
        return;
    }
    let t = topo(93);
    assert_eq!(
        client_row(&t.script).map(|r| r.1),
        Some("waiting".into()),
        "{}",
        ps(&t.script)
    );
    // Nobody attached: nothing answers on port 7.
    assert_eq!(udp_echoes(&t.ns, t.ip, 2), 0);

    // 1. A hand-started udp_echo attaches as "client" and echoes.
    let mut first = HandStarted::udp_echo(&t.sock, "client", None);
    assert!(echoes_come(&t), "no echo; log:\n{}", t.fragnet.log());
    assert_eq!(udp_echoes(&t.ns, t.ip, 100), 100);
    assert_eq!(
        client_row(&t.script),
        Some((first.0.id().to_string(), "attached".into())),
        "{}",
        ps(&t.script)
    );

    // Init handed over the channel and nothing else: one memfd, its two
    // eventfds, besides the connection to init (the rest is what the test
    // harness let it inherit: stdio and the like).
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", first.0.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    let count = |what: &str| fds.iter().filter(|f| f.starts_with(what)).count();
    assert_eq!(
        (
            count("/memfd:fragnet:stack:socket:client"),
            count("/memfd:"),
            count("anon_inode:[eventfd]"),
            count("socket:")
        ),
        (1, 1, 2, 1),
        "fds of the attached process: {fds:?}"
    );

    // 2. Refusals, each with a clear message; the attached one keeps going.
    let refuse = |name: &str| match fragnet_host::attach::attach(&t.sock, name) {
        Ok(_) => panic!("attach {name} was admitted"),
        Err(e) => e,
    };
    let e = refuse("nosuch");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains("no start named \"nosuch\"")
            && e.to_string().contains("allow attaching: client"),
        "{e}"
    );
    let e = refuse("stack");
    assert!(e.to_string().contains("\"stack\" is not attachable"), "{e}");
    let e = refuse("client");
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("already attached (pid {})", first.0.id())),
        "{e}"
    );
    // A second hand-started app fails the same way (and exits).
    let mut second = HandStarted::udp_echo(&t.sock, "client", None);
    let (st, err) = second
        .exit_within(Duration::from_secs(10))
        .expect("second attach should fail and exit");
    assert!(
        !st.success() && err.contains("already attached"),
        "{st}: {err}"
    );
    // A uid the start does not allow.
    let mut nobody = HandStarted::udp_echo(&t.sock, "client", Some(65534));
    let (st, err) = nobody
        .exit_within(Duration::from_secs(10))
        .expect("uid 65534 should be refused");
    assert!(
        !st.success() && err.contains("permission denied: uid 65534 may not attach to"),
        "{st}: {err}"
    );
    assert_eq!(
        udp_echoes(&t.ns, t.ip, 50),
        50,
        "after the refusals; first app: {:?}; log:\n{}",
        first.exit_within(Duration::from_millis(10)),
        t.fragnet.log()
    );

    // 3. The first app dies: init notices (its connection closed), gives
    // the stack a fresh channel, and the next process attaches to it.
    first.kill();
    assert!(
        wait_for(Duration::from_secs(10), || client_row(&t.script)
            .is_some_and(|r| r.1 == "waiting")),
        "{}\nlog:\n{}",
        ps(&t.script),
        t.fragnet.log()
    );
    let log = t.fragnet.log();
    assert!(
        log.contains("detached") && log.contains("new channel socket:client"),
        "{log}"
    );
    assert_eq!(udp_echoes(&t.ns, t.ip, 2), 0, "nobody attached");
    let mut again = HandStarted::udp_echo(&t.sock, "client", None);
    assert!(
        echoes_come(&t),
        "no echo after re-attach; log:\n{}",
        t.fragnet.log()
    );
    assert_eq!(udp_echoes(&t.ns, t.ip, 100), 100);
    let stats = Command::new(bin_path("fragnet"))
        .args(["stats", "--script"])
        .arg(&t.script)
        .arg("client")
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains("sockets 1"),
        "stats of the attached app: {stats}"
    );

    // 4. init stops: the attached app sees its connection close and exits.
    let mut t = t;
    assert!(t.fragnet.stop(Duration::from_secs(10)).is_some());
    let (st, _) = again
        .exit_within(Duration::from_secs(10))
        .expect("attached app should exit when init is gone");
    assert!(st.success(), "{st}");
}

#[test]
fn stack_restart_ends_the_attachment_and_a_new_process_attaches() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let t = topo(94);
    let mut first = HandStarted::udp_echo(&t.sock, "client", None);
    assert!(echoes_come(&t), "no echo; log:\n{}", t.fragnet.log());
    let stack_pid: i32 = row(&t.script, "stack")
        .and_then(|r| r.0.parse().ok())
        .expect("stack pid");
    // SAFETY: kill has no memory-safety preconditions; the pid is the
    // stack init started for this test.
    assert_eq!(unsafe { libc::kill(stack_pid, libc::SIGKILL) }, 0);
    // The attached app cannot follow the stack to a new channel: init
    // closes its connection and the socket library exits.
    let (st, err) = first
        .exit_within(Duration::from_secs(10))
        .expect("attached app should exit when its stack restarts");
    assert!(st.success(), "{st}: {err}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            row(&t.script, "stack")
                .is_some_and(|r| r.1 == "running" && r.0 != stack_pid.to_string())
                && client_row(&t.script).is_some_and(|r| r.1 == "waiting")
        }),
        "{}\nlog:\n{}",
        ps(&t.script),
        t.fragnet.log()
    );
    let mut again = HandStarted::udp_echo(&t.sock, "client", None);
    assert!(
        echoes_come(&t),
        "no echo after the stack restart; log:\n{}",
        t.fragnet.log()
    );
    assert_eq!(udp_echoes(&t.ns, t.ip, 100), 100);
    again.kill();
}
