//! End-to-end tests of `fragnet`: real processes, real channels, real TAP
//! devices. Components are the `probe` example (an echoing test component,
//! built by `cargo test`) and, when built, the real nic_drv / nic_switch /
//! frame_endpoint. Tests that need root skip with a message otherwise.

use fragnet_testkit::{
    bin_dir, is_root, unique_name, wait_for, write_script, Fragnet, NetNs, TempDir,
};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn fragnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fragnet"))
}

fn examples_dir() -> PathBuf {
    bin_dir().join("examples")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run fragnet");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn client(sock: &Path, args: &[&str]) -> Output {
    // Options go before the nft command words, which take everything after.
    fragnet()
        .arg(args[0])
        .arg("--socket")
        .arg(sock)
        .args(&args[1..])
        .output()
        .expect("run fragnet client")
}

#[derive(Debug, Clone)]
struct PsLine {
    name: String,
    pid: Option<u32>,
    state: String,
    restarts: u32,
}

fn ps(sock: &Path) -> Vec<PsLine> {
    let out = client(sock, &["ps"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| PsLine {
                name: f[0].to_string(),
                pid: f[1].parse().ok(),
                state: f[2].to_string(),
                restarts: f[3].parse().unwrap_or(0),
            })
        })
        .collect()
}

fn pid_of(sock: &Path, name: &str) -> Option<u32> {
    ps(sock)
        .into_iter()
        .find(|l| l.name == name && l.state == "running")
        .and_then(|l| l.pid)
}

fn stats(sock: &Path, name: &str, key: &str) -> Option<u64> {
    let out = client(sock, &["stats", name]);
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn fds(pid: u32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/pid/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn fd_target(pid: u32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn fd_inode(pid: u32, fd: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Inodes of the memfds a process holds.
fn memfds(pid: u32) -> Vec<u64> {
    fds(pid)
        .into_iter()
        .filter(|&fd| fd_target(pid, fd).starts_with("/memfd:"))
        .map(|fd| fd_inode(pid, fd))
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie would still have /proc/pid; fragnet reaps its children.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn last_cpu() -> usize {
    fragnet_host::available_cpus()
        .unwrap()
        .last()
        .copied()
        .unwrap()
}

/// Processes whose environment says FRAGNET_NAME=<name>.
fn processes_named(name: &str) -> Vec<u32> {
    let needle = format!("FRAGNET_NAME={name}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

// --- validation -------------------------------------------------------------

/// Whether a test that starts real components can run here: as root
/// (`what` it needs root for), with the component binaries `bins` built.
/// Says why when it cannot.
fn runnable(what: &str, bins: &[&str]) -> bool {
    if !is_root() {
        eprintln!("skipped: needs root ({what})");
        return false;
    }
    for b in bins {
        if !bin_dir().join(b).is_file() {
            eprintln!("skipped: {b} not built (cargo build --workspace --bins)");
            return false;
        }
    }
    true
}

fn check_fails(script: &Path, expect: &[&str]) {
    for verb in ["check", "run"] {
        let out = fragnet()
            .arg(verb)
            .arg(script)
            .env("FRAGNET_BIN_DIR", examples_dir())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "fragnet {verb}: {err}");
        for e in expect {
            assert!(err.contains(e), "fragnet {verb}: expected {e:?} in:\n{err}");
        }
    }
}

#[test]
fn bad_scripts_are_rejected_with_line_and_column_and_nothing_starts() {
    let dir = TempDir::new("fninit-check");
    let d = dir.path();
    let cpus = fragnet_host::available_cpus().unwrap();
    let bad_cpu = cpus.last().unwrap() + 1;
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "xml.xml",
            "<config control=\"x.sock\">\n  <start name=\"a\">\n    <binary name=\"probe\"/>\n  </strat>\n</config>\n".into(),
            vec!["xml.xml:4:".into(), "malformed XML".into()],
        ),
        (
            "bin.xml",
            "<config control=\"x.sock\">\n  <start name=\"a\">\n    <binary name=\"no_such_component\"/>\n  </start>\n</config>\n".into(),
            vec!["bin.xml:2:3:".into(), "binary \"no_such_component\" not found".into()],
        ),
        (
            "svc.xml",
            "<config control=\"x.sock\">\n  <start name=\"a\"><binary name=\"probe\"/></start>\n  <start name=\"b\"><binary name=\"probe\"/>\n    <route><service name=\"Nic\"><child name=\"a\"/></service></route>\n  </start>\n</config>\n".into(),
            vec!["svc.xml:4:32:".into(), "does not provide it (no start provides it)".into()],
        ),
        (
            "child.xml",
            "<config control=\"x.sock\">\n  <start name=\"b\"><binary name=\"probe\"/>\n    <route><service name=\"Nic\"><child name=\"ghost\"/></service></route>\n  </start>\n</config>\n".into(),
            vec!["child.xml:3:".into(), "\"ghost\", which is not started".into()],
        ),
        (
            "cpu.xml",
            format!("<config control=\"x.sock\">\n  <start name=\"a\">\n    <binary name=\"probe\"/>\n    <affinity cpu=\"{bad_cpu}\"/>\n  </start>\n</config>\n"),
            vec!["cpu.xml:4:5:".into(), format!("CPU {bad_cpu} is not available")],
        ),
        (
            "dup.xml",
            "<config control=\"x.sock\">\n  <start name=\"a\"><binary name=\"probe\"/></start>\n  <start name=\"a\"><binary name=\"probe\"/></start>\n</config>\n".into(),
            vec!["dup.xml:3:3:".into(), "duplicate start name \"a\"".into()],
        ),
    ];
    for (name, xml, expect) in &cases {
        let p = write_script(d, name, xml);
        let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
        check_fails(&p, &expect);
        assert!(!d.join("x.sock").exists(), "{name}: control socket created");
    }
    // A good script checks fine.
    let p = write_script(
        d,
        "good.xml",
        "<config control=\"x.sock\"><start name=\"a\"><binary name=\"probe\"/></start></config>",
    );
    let out = run_ok(
        fragnet()
            .arg("check")
            .arg(&p)
            .env("FRAGNET_BIN_DIR", examples_dir()),
    );
    assert!(out.contains("ok (1 processes, 0 channels)"), "{out}");
}

#[test]
fn tap_without_privilege_is_refused_and_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root (to drop to uid 65534 with setpriv)");
        return;
    }
    let dir = TempDir::new("fninit-tap");
    let ifname = format!("fninit{}t", std::process::id() % 100_000);
    let client = unique_name("fninitc");
    // Everything uid 65534 needs sits in the temp dir with explicit modes
    // (the build tree may not be readable to it). The component binaries
    // are only looked up, never run: validation fails first.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for (from, to) in [
        (PathBuf::from(env!("CARGO_BIN_EXE_fragnet")), "fragnet"),
        (examples_dir().join("probe"), "nic_drv"),
        (examples_dir().join("probe"), "probe"),
    ] {
        std::fs::copy(&from, bins.join(to)).unwrap();
        mode(&bins.join(to), 0o755);
    }
    mode(dir.path(), 0o755);
    mode(&bins, 0o755);
    let script = write_script(
        dir.path(),
        "tap.xml",
        &format!(
            "<config control=\"tap.sock\">\n  <start name=\"nic_drv\">\n    <config backend=\"tap\" ifname=\"{ifname}\"/>\n    <provides><service name=\"Nic\"/></provides>\n  </start>\n  <start name=\"{client}\"><binary name=\"probe\"/>\n    <route><service name=\"Nic\"><child name=\"nic_drv\"/></service></route>\n  </start>\n</config>\n"
        ),
    );
    mode(&script, 0o644);
    for verb in ["check", "run"] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bins.join("fragnet"))
            .arg(verb)
            .arg(&script)
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{verb}: {err}");
        assert!(
            err.contains(&format!("tap.xml:2:3: start \"nic_drv\": creating TAP device {ifname} needs CAP_NET_ADMIN (run as root)")),
            "{verb}: {err}"
        );
        assert!(
            !fragnet_host::tap::exists(&ifname),
            "device {ifname} was created"
        );
        assert!(
            processes_named(&client).is_empty(),
            "a component was started"
        );
        assert!(!dir.path().join("tap.sock").exists());
        // That was the only problem (the binaries were found).
        assert_eq!(
            err.lines().filter(|l| l.contains("tap.xml:")).count(),
            1,
            "{err}"
        );
    }
}

// --- a running topology of probes -----------------------------------------------

/// A small valid ruleset with table `name`.
fn ruleset(name: &str) -> String {
    format!(
        "table inet {name} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n  }}\n}}\n"
    )
}

fn probe_script(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/cli.nft"), ruleset("f")).unwrap();
    write_script(
        dir,
        "probes.xml",
        &format!(
            r#"<config control="ctl.sock">
  <start name="srv">
    <binary name="probe"/>
    <affinity cpu="0"/>
    <provides><service name="Echo"/></provides>
  </start>
  <start name="cli">
    <binary name="probe"/>
    <affinity cpu="{}"/>
    <config><nftables file="etc/cli.nft"/></config>
    <route><service name="Echo"><child name="srv"/></service></route>
  </start>
  <start name="lone"><binary name="probe"/><config nft="no"/></start>
  {extra}
</config>
"#,
            last_cpu()
        ),
    )
}

fn start_probes(script: &Path) -> Fragnet {
    let examples = examples_dir().display().to_string();
    let f = Fragnet::start_with(None, script, &[("FRAGNET_BIN_DIR", &examples)]);
    let sock = script.with_file_name("ctl.sock");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let l = ps(&sock);
            !l.is_empty() && l.iter().all(|p| p.state == "running")
        }),
        "topology did not come up:\n{}",
        f.log()
    );
    f
}

#[test]
fn components_hold_only_their_routed_descriptors() {
    let dir = TempDir::new("fninit-fds");
    let script = probe_script(dir.path(), "");
    let f = start_probes(&script);
    let sock = dir.path().join("ctl.sock");
    let (srv, cli, lone) = (
        pid_of(&sock, "srv").unwrap(),
        pid_of(&sock, "cli").unwrap(),
        pid_of(&sock, "lone").unwrap(),
    );
    // stdio, control socket at 3, one channel (memfd + 2 eventfds) at 4..6.
    for pid in [srv, cli] {
        assert_eq!(
            fds(pid),
            BTreeSet::from([0, 1, 2, 3, 4, 5, 6]),
            "pid {pid}\n{}",
            f.log()
        );
        assert!(fd_target(pid, 3).starts_with("socket:"));
        assert!(
            fd_target(pid, 4).starts_with("/memfd:fragnet"),
            "{}",
            fd_target(pid, 4)
        );
        assert_eq!(fd_target(pid, 5), "anon_inode:[eventfd]");
        assert_eq!(fd_target(pid, 6), "anon_inode:[eventfd]");
    }
    assert_eq!(fds(lone), BTreeSet::from([0, 1, 2, 3]));
    // Both ends of the one channel are the same memory; lone shares nothing.
    assert_eq!(fd_inode(srv, 4), fd_inode(cli, 4));
    // Pinned as the script says.
    let cpus = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap()
    };
    assert_eq!(cpus(srv), "0");
    assert_eq!(cpus(cli), last_cpu().to_string());
    // Frames really cross: cli's pings come back from srv.
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock,
        "cli",
        "echo_rx:echo"
    )
    .unwrap_or(0)
        >= 5));
    assert!(stats(&sock, "srv", "echoed:echo:cli").unwrap() >= 5);

    // Both ends die at once: whichever restarts first creates the channel,
    // its end for the other waits in init until that one starts.
    unsafe {
        libc::kill(srv as i32, libc::SIGKILL);
        libc::kill(cli as i32, libc::SIGKILL);
    }
    assert!(
        wait_for(Duration::from_secs(5), || {
            let l = ps(&sock);
            ["srv", "cli"].iter().all(|n| {
                l.iter()
                    .any(|p| p.name == *n && p.restarts == 1 && p.state == "running")
            })
        }),
        "{}",
        f.log()
    );
    let (srv2, cli2) = (pid_of(&sock, "srv").unwrap(), pid_of(&sock, "cli").unwrap());
    assert_eq!(memfds(srv2).len(), 1);
    assert_eq!(
        memfds(srv2),
        memfds(cli2),
        "the restarted pair shares one channel"
    );
    assert_eq!(fds(cli2).len(), 7);
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock,
        "cli",
        "echo_rx:echo"
    )
    .unwrap_or(0)
        >= 5));
}

#[test]
fn restart_gives_the_peer_a_fresh_channel_and_rules_follow_files() {
    let dir = TempDir::new("fninit-restart");
    let script = probe_script(dir.path(), "");
    let mut f = start_probes(&script);
    let sock = dir.path().join("ctl.sock");
    let srv = pid_of(&sock, "srv").unwrap();
    let cli = pid_of(&sock, "cli").unwrap();
    let old_inode = fd_inode(cli, 4);

    // The rule file named by the script was loaded at start (the probe
    // holds a real nft_filter::Filter, so `list ruleset` is its listing).
    let list = |sock: &Path| {
        String::from_utf8_lossy(
            &client(sock, &["nft", "--target", "cli", "list", "ruleset"]).stdout,
        )
        .into_owned()
    };
    assert!(
        wait_for(Duration::from_secs(5), || list(&sock)
            .starts_with("table inet f {")),
        "{}",
        list(&sock)
    );

    // SIGKILL the provider: init restarts it, and cli gets a fresh channel.
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock,
        "cli",
        "echo_rx:echo"
    )
    .unwrap_or(0)
        > 0));
    unsafe { libc::kill(srv as i32, libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(5), || ps(&sock).iter().any(|l| l.name
            == "srv"
            && l.restarts == 1
            && l.state == "running"
            && l.pid != Some(srv))),
        "{}",
        f.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || stats(&sock, "cli", "replaced")
            == Some(1)),
        "{}",
        f.log()
    );
    let new_srv = pid_of(&sock, "srv").unwrap();
    assert_eq!(
        pid_of(&sock, "cli"),
        Some(cli),
        "the peer was not restarted"
    );
    // cli received the new ends over its control socket (so at new fd
    // numbers) and dropped the old ones: still one channel, a new one,
    // the same one the new srv holds.
    assert_eq!(memfds(cli).len(), 1, "old channel leaked: {:?}", fds(cli));
    assert_eq!(fds(cli).len(), 7, "{:?}", fds(cli));
    assert_ne!(
        memfds(cli),
        vec![old_inode],
        "cli still holds the old channel"
    );
    assert_eq!(
        memfds(cli),
        memfds(new_srv),
        "cli and new srv share the fresh channel"
    );
    // Echoes flow over the new channel.
    let before = stats(&sock, "cli", "echo_rx:echo").unwrap();
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock,
        "cli",
        "echo_rx:echo"
    )
    .unwrap_or(0)
        > before + 3));
    assert!(
        f.log().contains("exited (signal: 9 (SIGKILL))"),
        "{}",
        f.log()
    );

    // Editing the rule file re-sends it.
    let rules = dir.path().join("etc/cli.nft");
    std::fs::write(&rules, ruleset("g")).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || list(&sock)
            .starts_with("table inet g {")),
        "{}",
        list(&sock)
    );
    // A broken edit is refused with file:line:col in init's log, and the
    // component keeps the ruleset it had.
    std::fs::write(
        &rules,
        ruleset("g").replace("policy accept;", "policy accept;\n    tcp dport bogus drop"),
    )
    .unwrap();
    let rules_str = rules.display().to_string();
    assert!(
        wait_for(Duration::from_secs(5), || f
            .log()
            .contains(&format!("cli: ruleset rejected: {rules_str}:4:15: "))),
        "{}",
        f.log()
    );
    assert!(list(&sock).starts_with("table inet g {"));
    // Editing the run script to name another file applies it.
    std::fs::write(dir.path().join("etc/other.nft"), ruleset("other")).unwrap();
    let text = std::fs::read_to_string(&script)
        .unwrap()
        .replace("etc/cli.nft", "etc/other.nft");
    std::fs::write(&script, text).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || list(&sock)
            .starts_with("table inet other {")),
        "{}",
        f.log()
    );
    // `fragnet nft -f` loads a file by hand ...
    let own = dir.path().join("own.nft");
    std::fs::write(&own, ruleset("mine")).unwrap();
    let out = client(
        &sock,
        &["nft", "--target", "cli", "-f", own.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(list(&sock).starts_with("table inet mine {"));
    // ... and prints a rejection as file:line:col, changing nothing.
    let bad = dir.path().join("bad.nft");
    std::fs::write(
        &bad,
        "table inet x {\n  chain c {\n    ip saddr 10.0.0.300 drop\n  }\n}\n",
    )
    .unwrap();
    let out = client(
        &sock,
        &["nft", "--target", "cli", "-f", bad.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.starts_with(&format!("{}:3:", bad.display())), "{err}");
    assert!(list(&sock).starts_with("table inet mine {"));
    // Commands: add rule, list counters.
    let out = client(
        &sock,
        &[
            "nft", "--target", "cli", "add", "rule", "inet", "mine", "input", "tcp", "dport", "22",
            "counter", "drop",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        list(&sock).contains("tcp dport 22 counter packets 0 bytes 0 drop"),
        "{}",
        list(&sock)
    );
    let out = client(&sock, &["nft", "--target", "cli", "list", "counters"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inet mine input 0 packets 0 bytes 0\n"
    );
    // A component without a filter says so; an unknown name is named.
    let out = client(&sock, &["nft", "--target", "lone", "list", "ruleset"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
    let out = client(&sock, &["nft", "--target", "nobody", "list", "ruleset"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no component named \"nobody\""));

    // SIGTERM: exit 0, no component left, socket gone.
    let status = f
        .stop(Duration::from_secs(10))
        .expect("fragnet did not exit on SIGTERM");
    assert!(status.success(), "{status:?}");
    for pid in [new_srv, cli] {
        assert!(!alive(pid), "component {pid} survived shutdown");
    }
    assert!(!sock.exists(), "control socket left behind");
}

#[test]
fn control_socket_refuses_uids_not_allowed() {
    if !is_root() {
        eprintln!("skipped: needs root (to connect as uid 65534)");
        return;
    }
    let dir = TempDir::new("fninit-uid");
    let script = probe_script(dir.path(), "");
    let _f = start_probes(&script);
    let sock = dir.path().join("ctl.sock");
    // uid 65534 runs a copy of the client from the (world-readable) temp dir.
    use std::os::unix::fs::PermissionsExt;
    let client_bin = dir.path().join("fragnet-client");
    std::fs::copy(env!("CARGO_BIN_EXE_fragnet"), &client_bin).unwrap();
    std::fs::set_permissions(&client_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&client_bin)
        .args(["nft", "--socket"])
        .arg(&sock)
        .args(["--target", "cli", "flush", "ruleset"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied: uid 65534 may not control this fragnet (allowed uids: 0)"),
        "{err}"
    );
    // The refused request did nothing; root is served.
    let rules = client(&sock, &["nft", "--target", "cli", "list", "ruleset"]);
    assert!(
        String::from_utf8_lossy(&rules.stdout).starts_with("table inet f {"),
        "the refused flush went through"
    );
}

#[test]
fn repeated_fast_crashes_are_given_up() {
    let dir = TempDir::new("fninit-crash");
    let script = probe_script(
        dir.path(),
        r#"<start name="crasher"><binary name="probe"/><config exit_after_ms="10" exit_code="7"/></start>"#,
    );
    let examples = examples_dir().display().to_string();
    let f = Fragnet::start_with(None, &script, &[("FRAGNET_BIN_DIR", &examples)]);
    let sock = dir.path().join("ctl.sock");
    assert!(
        wait_for(Duration::from_secs(15), || ps(&sock)
            .iter()
            .any(|l| l.name == "crasher" && l.state == "failed")),
        "{}",
        f.log()
    );
    let l = ps(&sock).into_iter().find(|l| l.name == "crasher").unwrap();
    assert_eq!(l.restarts, 5);
    assert!(f.log().contains("exit status: 7"), "{}", f.log());
    assert!(f.log().contains("giving up on it"), "{}", f.log());
    // The others keep running.
    assert!(pid_of(&sock, "cli").is_some());
}

// --- the demo topology over a real TAP device ------------------------------------

#[test]
fn demo_over_tap_survives_a_switch_restart_and_cleans_up() {
    if !runnable(
        "network namespace, TAP",
        &["nic_drv", "nic_switch", "frame_endpoint"],
    ) {
        return;
    }
    let ns = NetNs::new("fninit");
    let dir = TempDir::new("fninit-demo");
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../run/demo.xml"))
        .unwrap()
        .replacen("<config>", "<config control=\"demo.sock\">", 1);
    let script = write_script(dir.path(), "demo.xml", &demo);
    let mut f = Fragnet::start(Some(&ns), &script);
    let sock = dir.path().join("demo.sock");
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "{}",
        f.log()
    );
    assert!(ns.ping("10.77.0.11", 2), "{}", f.log());
    let pids: Vec<u32> = ps(&sock).iter().filter_map(|l| l.pid).collect();
    assert_eq!(pids.len(), 4);

    let switch = pid_of(&sock, "switch").unwrap();
    unsafe { libc::kill(switch as i32, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(5), || ps(&sock).iter().any(
        |l| l.name == "switch" && l.restarts == 1 && l.state == "running"
    )));
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "{}",
        f.log()
    );
    assert!(ns.ping("10.77.0.11", 2), "{}", f.log());
    assert!(
        f.log().contains("nic_drv#0: new channel nic:switch"),
        "{}",
        f.log()
    );

    let status = f.stop(Duration::from_secs(10)).expect("no clean exit");
    assert!(status.success());
    let links = ns.sh("ip -o link show");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("fn0"),
        "TAP device left behind"
    );
    for pid in pids.into_iter().chain(pid_of(&sock, "switch")) {
        assert!(!alive(pid), "pid {pid} left running");
    }
    assert!(ns.pids().is_empty(), "processes left in the namespace");
}

#[test]
fn a_component_failing_to_start_undoes_everything() {
    if !runnable("network namespace, TAP", &["nic_drv"]) {
        return;
    }
    let ns = NetNs::new("fninit");
    let dir = TempDir::new("fninit-undo");
    // An executable whose interpreter does not exist: found, but exec fails.
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    let broken = bins.join("broken");
    std::fs::write(&broken, "#!/nonexistent/interpreter\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let drv = unique_name("fninitd");
    let script = write_script(
        dir.path(),
        "undo.xml",
        &format!(
            r#"<config control="undo.sock">
  <start name="{drv}">
    <binary name="nic_drv"/>
    <config backend="tap" ifname="fnundo0" host_ip="10.79.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="client">
    <binary name="broken"/>
    <route><service name="Nic"><child name="{drv}"/></service></route>
  </start>
</config>
"#
        ),
    );
    let out = ns
        .exec(env!("CARGO_BIN_EXE_fragnet"))
        .arg("run")
        .arg(&script)
        .env("FRAGNET_BIN_DIR", &bins)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("starting client ("), "{err}");
    // The driver had been started and the device created: both are gone.
    assert!(err.contains(&format!("started {drv}#0")), "{err}");
    assert!(err.contains("deleted TAP device fnundo0"), "{err}");
    let links = ns.sh("ip -o link show");
    assert!(!String::from_utf8_lossy(&links.stdout).contains("fnundo0"));
    assert!(
        processes_named(&format!("{drv}#0")).is_empty(),
        "driver left running"
    );
    assert!(ns.pids().is_empty());
    assert!(!dir.path().join("undo.sock").exists());
}

#[test]
fn a_changed_config_restarts_that_component_with_it() {
    let dir = TempDir::new("fninit-config");
    let script = probe_script(dir.path(), "");
    let f = start_probes(&script);
    let sock = dir.path().join("ctl.sock");
    let srv = pid_of(&sock, "srv").unwrap();
    let cli = pid_of(&sock, "cli").unwrap();
    let lone = pid_of(&sock, "lone").unwrap();
    let text = std::fs::read_to_string(&script).unwrap().replace(
        "<binary name=\"probe\"/>\n    <affinity cpu=\"0\"/>",
        "<binary name=\"probe\"/>\n    <affinity cpu=\"0\"/>\n    <config mark=\"2\"/>",
    );
    std::fs::write(&script, &text).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || ps(&sock)
            .iter()
            .any(|l| l.name == "srv"
                && l.restarts == 1
                && l.state == "running")),
        "{}",
        f.log()
    );
    let new_srv = pid_of(&sock, "srv").unwrap();
    assert_ne!(new_srv, srv);
    let environ = std::fs::read(format!("/proc/{new_srv}/environ")).unwrap();
    let needle = b"FRAGNET_CONFIG=<config mark=\"2\"/>\0";
    assert!(environ.windows(needle.len()).any(|w| w == needle));
    // The peer got the fresh channel; the others were left alone.
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock, "cli", "replaced"
    ) == Some(1)));
    assert_eq!(pid_of(&sock, "cli"), Some(cli));
    assert_eq!(pid_of(&sock, "lone"), Some(lone));
    assert!(
        f.log().contains("srv: <config> changed; restarting it"),
        "{}",
        f.log()
    );
    assert!(
        !f.log().contains("exited"),
        "a requested stop counted as a crash:\n{}",
        f.log()
    );
    // Topology changes are reported, not applied.
    let end = text.rfind("</config>").unwrap();
    let with_extra = format!(
        "{}<start name=\"extra\"><binary name=\"probe\"/></start>\n{}",
        &text[..end],
        &text[end..]
    );
    std::fs::write(&script, with_extra).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || f
            .log()
            .contains("to: extra (added)")),
        "{}",
        f.log()
    );
    assert!(ps(&sock).iter().all(|l| l.name != "extra"));
    assert!(!f.log().contains("invalid"), "{}", f.log());
}

#[test]
fn multi_queue_tap_runs_a_driver_per_queue_and_steers_by_address() {
    if !runnable("network namespace, TAP", &["nic_drv", "frame_endpoint"]) {
        return;
    }
    let ns = NetNs::new("fninit");
    let dir = TempDir::new("fninit-mq");
    let script = write_script(
        dir.path(),
        "mq.xml",
        r#"<config control="mq.sock">
  <start name="nic_drv">
    <config backend="tap" ifname="fnmq0" queues="2" host_ip="10.78.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep1"><binary name="frame_endpoint"/><config ip="10.78.0.10/24"/>
    <route><service name="Nic"><child name="nic_drv"/></service></route></start>
  <start name="ep2"><binary name="frame_endpoint"/><config ip="10.78.0.11/24"/>
    <route><service name="Nic"><child name="nic_drv"/></service></route></start>
</config>
"#,
    );
    let mut f = Fragnet::start(Some(&ns), &script);
    let sock = dir.path().join("mq.sock");
    assert!(
        wait_for(Duration::from_secs(10), || ps(&sock).len() == 4
            && ps(&sock).iter().all(|l| l.state == "running")),
        "{}",
        f.log()
    );
    // One driver process per queue, each told its queue.
    for q in 0..2 {
        let pid = pid_of(&sock, &format!("nic_drv#{q}")).unwrap();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let needle = format!("FRAGNET_QUEUE={q}\0");
        assert!(env.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
    let out = ns.sh("ip -d link show fnmq0");
    assert!(String::from_utf8_lossy(&out.stdout).contains("multi_queue numqueues 2"));
    // Each endpoint sits on its own queue; steering by destination gets
    // every ping (and ARP) to the right one (once the endpoints are up).
    for ip in ["10.78.0.10", "10.78.0.11"] {
        assert!(
            wait_for(Duration::from_secs(10), || ns.ping(ip, 1)),
            "{ip}\n{}",
            f.log()
        );
    }
    for _ in 0..5 {
        assert!(ns.ping("10.78.0.10", 1), "{}", f.log());
        assert!(ns.ping("10.78.0.11", 1), "{}", f.log());
    }
    assert!(
        f.log()
            .contains("10.78.0.10 -> nic_drv#0 (queue 0), 10.78.0.11 -> nic_drv#1 (queue 1)"),
        "{}",
        f.log()
    );
    // Restarting queue 0's driver makes the kernel move queue 1 into slot
    // 0 and the new driver takes slot 1; the steering follows.
    let drv0 = pid_of(&sock, "nic_drv#0").unwrap();
    unsafe { libc::kill(drv0 as i32, libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(5), || f.log().contains(
            "10.78.0.11 -> nic_drv#1 (queue 0), 10.78.0.10 -> nic_drv#0 (queue 1)"
        )),
        "{}",
        f.log()
    );
    for ip in ["10.78.0.10", "10.78.0.11"] {
        assert!(
            wait_for(Duration::from_secs(10), || ns.ping(ip, 1)),
            "{ip}\n{}",
            f.log()
        );
    }
    for _ in 0..5 {
        assert!(ns.ping("10.78.0.10", 1), "{}", f.log());
        assert!(ns.ping("10.78.0.11", 1), "{}", f.log());
    }
    assert!(f.stop(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let links = ns.sh("ip -o link show");
    assert!(!String::from_utf8_lossy(&links.stdout).contains("fnmq0"));
}

#[test]
fn user_runs_a_component_unprivileged() {
    if !is_root() {
        eprintln!("skipped: needs root (to switch to uid 65534)");
        return;
    }
    let dir = TempDir::new("fninit-user");
    use std::os::unix::fs::PermissionsExt;
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::copy(examples_dir().join("probe"), bins.join("probe")).unwrap();
    for (p, m) in [
        (bins.join("probe"), 0o755),
        (bins.clone(), 0o755),
        (dir.path().to_path_buf(), 0o755),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let script = write_script(
        dir.path(),
        "user.xml",
        r#"<config control="ctl.sock">
  <start name="srv" user="65534">
    <binary name="probe"/>
    <provides><service name="Echo"/></provides>
  </start>
  <start name="cli" user="65534:65534">
    <binary name="probe"/>
    <route><service name="Echo"><child name="srv"/></service></route>
  </start>
</config>
"#,
    );
    let bins_str = bins.display().to_string();
    let f = Fragnet::start_with(None, &script, &[("FRAGNET_BIN_DIR", &bins_str)]);
    let sock = dir.path().join("ctl.sock");
    assert!(
        wait_for(Duration::from_secs(10), || ps(&sock).len() == 2
            && ps(&sock).iter().all(|l| l.state == "running")),
        "{}",
        f.log()
    );
    let status = |pid: u32, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_default()
    };
    for name in ["srv", "cli"] {
        let pid = pid_of(&sock, name).unwrap();
        assert_eq!(status(pid, "Uid:"), "65534 65534 65534 65534", "{name}");
        assert_eq!(status(pid, "Gid:"), "65534 65534 65534 65534", "{name}");
        assert_eq!(status(pid, "Groups:"), "", "{name}");
        assert_eq!(status(pid, "CapEff:"), "0000000000000000", "{name}");
        assert_eq!(status(pid, "CapPrm:"), "0000000000000000", "{name}");
        assert_eq!(status(pid, "NoNewPrivs:"), "1", "{name}");
    }
    // Channels work as before, and so does a restart with a fresh one.
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock,
        "cli",
        "echo_rx:echo"
    )
    .unwrap_or(0)
        >= 3));
    let srv = pid_of(&sock, "srv").unwrap();
    unsafe { libc::kill(srv as i32, libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(5), || stats(&sock, "cli", "replaced")
            == Some(1)),
        "{}",
        f.log()
    );
    let srv2 = pid_of(&sock, "srv").unwrap();
    assert_eq!(status(srv2, "Uid:"), "65534 65534 65534 65534");
    let before = stats(&sock, "cli", "echo_rx:echo").unwrap();
    assert!(wait_for(Duration::from_secs(5), || stats(
        &sock,
        "cli",
        "echo_rx:echo"
    )
    .unwrap_or(0)
        > before + 2));
}

#[test]
fn an_unprivileged_driver_owns_its_tap() {
    if !runnable(
        "network namespace, TAP, mount namespace",
        &["nic_drv", "frame_endpoint"],
    ) {
        return;
    }
    let ns = NetNs::new("fninit");
    let dir = TempDir::new("fninit-owner");
    // Copies uid 65534 can execute wherever the build tree is (fragnet
    // too: its own directory is searched first).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for (from, to) in [
        (bin_dir().join("nic_drv"), "nic_drv"),
        (bin_dir().join("frame_endpoint"), "frame_endpoint"),
        (PathBuf::from(env!("CARGO_BIN_EXE_fragnet")), "fragnet"),
    ] {
        std::fs::copy(from, bins.join(to)).unwrap();
        std::fs::set_permissions(bins.join(to), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for d in [dir.path(), bins.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = write_script(
        dir.path(),
        "owner.xml",
        r#"<config control="owner.sock">
  <start name="nic_drv" user="65534">
    <config backend="tap" ifname="fnown0" host_ip="10.80.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep" user="65534">
    <binary name="frame_endpoint"/>
    <config ip="10.80.0.10/24"/>
    <route><service name="Nic"><child name="nic_drv"/></service></route>
  </start>
</config>
"#,
    );
    // Where /dev/net/tun is root-only, the check says so up front.
    let tun_mode = std::fs::metadata("/dev/net/tun").unwrap().mode();
    if tun_mode & 0o006 != 0o006 {
        let out = fragnet().arg("check").arg(&script).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("runs as uid 65534, which may not open /dev/net/tun"),
            "{err}"
        );
    }
    // Run it in a private mount namespace where /dev/net/tun is the usual
    // mode 0666 (a node of our own bound over it; nothing global changes).
    let node = dir.path().join("tun");
    let made = Command::new("mknod")
        .arg(&node)
        .args(["c", "10", "200"])
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    let log_path = dir.path().join("owner.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = ns
        .exec("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind '{}' /dev/net/tun && exec '{}' run '{}'",
            node.display(),
            bins.join("fragnet").display(),
            script.display()
        ))
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let sock = dir.path().join("owner.sock");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ok = wait_for(Duration::from_secs(10), || ns.ping("10.80.0.10", 1));
    let drv = pid_of(&sock, "nic_drv#0");
    let caps = drv.map(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("Uid:") || l.starts_with("CapEff:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    });
    // Restart the driver: it attaches again, still without privileges.
    if let Some(p) = drv {
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    let again = wait_for(Duration::from_secs(10), || {
        pid_of(&sock, "nic_drv#0").is_some_and(|p| Some(p) != drv) && ns.ping("10.80.0.10", 1)
    });
    // `sh` exec'd fragnet, so the child is fragnet itself.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(ok, "{}", log());
    assert_eq!(
        caps.unwrap_or_default(),
        vec!["Uid: 65534 65534 65534 65534", "CapEff: 0000000000000000"],
        "{}",
        log()
    );
    assert!(again, "{}", log());
    assert!(status.success(), "{status:?}\n{}", log());
    let links = ns.sh("ip -o link show");
    assert!(!String::from_utf8_lossy(&links.stdout).contains("fnown0"));
}
