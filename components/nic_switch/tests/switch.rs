//! End-to-end tests of nic_switch: real processes started by `fragnet run`
//! inside a network namespace, the Linux host as a peer through a TAP
//! device, and a hostile peer writing garbage into a ring.
//!
//! Needs root (namespaces, TAP) and the workspace binaries built first:
//! `cargo build --bins -p fragnet_init -p nic_drv -p nic_switch -p frame_endpoint`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fragnet_host::Control;
use fragnet_testkit::{
    bin_path, is_root, stat, unique_name, wait_for, write_script, Fragnet, NetNs, TempDir,
};
use packet_ring::linux::{create, Channel, ChannelFds};
use packet_ring::{Config, Endpoint, Side};

/// tap → switch → endpoint, the host at 10.77.0.1, the endpoint at .10.
fn tap_switch_endpoint(ifname: &str) -> String {
    format!(
        r#"<config control="ctl.sock">
  <start name="tap0">
    <binary name="nic_drv"/>
    <affinity cpu="0"/>
    <config backend="tap" ifname="{ifname}" host_ip="10.77.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="switch">
    <binary name="nic_switch"/>
    <affinity cpu="1"/>
    <config mac_aging_s="300"/>
    <route><service name="Nic"><child name="tap0"/></service></route>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.10/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
  </start>
</config>
"#
    )
}

#[test]
fn host_pings_endpoint_behind_switch() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let ns = NetNs::new("fnnic");
    let dir = TempDir::new("fnnic");
    let script = write_script(
        dir.path(),
        "tse.xml",
        &tap_switch_endpoint(&unique_name("fnnic")),
    );
    let fragnet = Fragnet::start(Some(&ns), &script);
    let ctl = dir.path().join("ctl.sock");
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "endpoint never answered; log:\n{}",
        fragnet.log()
    );
    assert!(ns.ping("10.77.0.10", 3), "log:\n{}", fragnet.log());
    assert!(stat(Some(&ns), &ctl, "ep", "echo_requests_answered") >= 4);
    // The switch learned both MACs and forwarded both ways.
    assert_eq!(stat(Some(&ns), &ctl, "switch", "mac_entries"), 2);
    assert!(stat(Some(&ns), &ctl, "switch", "port.nic:ep.tx_frames") >= 4);
    assert!(stat(Some(&ns), &ctl, "switch", "port.nic:ep.rx_frames") >= 4);
}

/// Kills the process named `comm` (SIGKILL) while the host pings the
/// endpoint every 50 ms, then checks that `init` restarted it and pings
/// resume. Returns the fragnet log.
fn kill_mid_traffic_and_recover(comm: &str) -> String {
    let ns = NetNs::new("fnnic");
    let dir = TempDir::new("fnnic");
    let script = write_script(
        dir.path(),
        "tse.xml",
        &tap_switch_endpoint(&unique_name("fnnic")),
    );
    let fragnet = Fragnet::start(Some(&ns), &script);
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "endpoint never answered; log:\n{}",
        fragnet.log()
    );
    // Traffic in flight while the process dies: a ping every 50 ms for 4 s.
    let mut background = ns
        .exec("ping")
        .args(["-n", "-q", "-i", "0.05", "-w", "4", "10.77.0.10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("background ping");
    std::thread::sleep(Duration::from_millis(500));
    let pid = ns
        .pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .unwrap_or_else(|| panic!("{comm} runs in the namespace"));
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "pings did not resume after {comm} was killed; log:\n{}",
        fragnet.log()
    );
    eprintln!(
        "pings resumed {:?} after SIGKILL of {comm}",
        killed.elapsed()
    );
    assert!(ns.ping("10.77.0.10", 3), "log:\n{}", fragnet.log());
    let _ = background.wait();
    let log = fragnet.log();
    assert!(
        log.contains("SIGKILL") || log.contains("signal: 9"),
        "log:\n{log}"
    );
    log
}

#[test]
fn switch_restarted_after_sigkill_and_pings_resume() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let log = kill_mid_traffic_and_recover("nic_switch");
    // Its peers were handed fresh channels.
    assert!(
        log.contains("[tap0#0] info: client channel 'nic:switch' replaced"),
        "log:\n{log}"
    );
}

#[test]
fn endpoint_restarted_switch_replaces_its_port() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let log = kill_mid_traffic_and_recover("frame_endpoint");
    // The switch got the new channel with a `channel` message.
    assert!(
        log.contains("[switch] info: port 1 'nic:ep' up"),
        "log:\n{log}"
    );
}

/// `fragnet nft --socket <ctl> --target <name> <args…>` inside `ns`;
/// returns (success, stdout + stderr).
fn nft(ns: &NetNs, ctl: &Path, target: &str, args: &[&str]) -> (bool, String) {
    let out = ns
        .exec(bin_path("fragnet"))
        .arg("nft")
        .arg("--socket")
        .arg(ctl)
        .arg("--target")
        .arg(target)
        .args(args)
        .output()
        .expect("run fragnet nft");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A bridge-family ruleset in the run script (loaded by init before any
/// frame moves) drops the host's echo requests to the endpoint's port;
/// `fragnet nft` lists its counters and flushes it, and pings pass again.
#[test]
fn bridge_ruleset_filters_forwarded_frames() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let ns = NetNs::new("fnnic");
    let dir = TempDir::new("fnnic");
    let rules = r#"table bridge sw {
  chain fwd {
    type filter hook forward priority 0; policy accept;
    oifname "ep" icmp type echo-request counter drop
  }
}
"#;
    let xml = tap_switch_endpoint(&unique_name("fnnic")).replace(
        r#"<config mac_aging_s="300"/>"#,
        &format!(r#"<config mac_aging_s="300"><nftables>{rules}</nftables></config>"#),
    );
    let script = write_script(dir.path(), "nft.xml", &xml);
    let fragnet = Fragnet::start(Some(&ns), &script);
    let ctl = dir.path().join("ctl.sock");
    assert!(
        wait_for(Duration::from_secs(10), || stat(
            Some(&ns),
            &ctl,
            "switch",
            "filter_active"
        ) == 1),
        "ruleset never loaded; log:\n{}",
        fragnet.log()
    );
    // ARP passes (the host resolves the endpoint), echo requests do not.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let _ = ns.ping("10.77.0.10", 1);
            stat(Some(&ns), &ctl, "ep", "arp_requests_answered") >= 1
        }),
        "ARP never answered; log:\n{}",
        fragnet.log()
    );
    let before = stat(Some(&ns), &ctl, "switch", "port.nic:ep.drop_filtered");
    assert!(!ns.ping("10.77.0.10", 2), "pings passed a drop rule");
    let dropped = stat(Some(&ns), &ctl, "switch", "port.nic:ep.drop_filtered");
    assert!(dropped >= before + 2, "{before} -> {dropped}");
    assert_eq!(stat(Some(&ns), &ctl, "ep", "echo_requests_answered"), 0);
    // The rule's counter saw every dropped request.
    let (ok, counters) = nft(&ns, &ctl, "switch", &["list", "counters"]);
    let packets: u64 = counters
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        ok && packets == dropped,
        "{dropped} dropped, counters:\n{counters}"
    );
    let (ok, text) = nft(&ns, &ctl, "switch", &["flush", "ruleset"]);
    assert!(ok, "{text}");
    assert!(
        wait_for(Duration::from_secs(5), || ns.ping("10.77.0.10", 1)),
        "pings still dropped after flush; log:\n{}",
        fragnet.log()
    );
    // A bad ruleset is refused with its place and changes nothing.
    let (ok, text) = nft(
        &ns,
        &ctl,
        "switch",
        &["add", "rule", "bridge", "sw", "fwd", "bogus"],
    );
    assert!(!ok && text.contains(':'), "{text}");
    assert!(ns.ping("10.77.0.10", 2));
}

/// Attaches side B of `fds` (a port of the switch as seen by its client).
fn client_side(fds: &ChannelFds) -> Channel {
    Channel::attach(fds.try_clone().expect("dup fds"), Side::B).expect("attach")
}

fn frame(dst: u8, src: u8, tag: u8) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14] = tag;
    f
}

/// Receive frames on `ch` for up to `timeout`; returns the tags seen.
fn drain(ch: &mut Channel, want: usize, timeout: Duration) -> Vec<u8> {
    let mut tags = Vec::new();
    let end = Instant::now() + timeout;
    while tags.len() < want && Instant::now() < end {
        let n = Endpoint::recv(ch, 64, |f| tags.push(f.get(14).copied().unwrap_or(0))).unwrap_or(0);
        ch.flush();
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    tags
}

/// The switch process with three ports whose clients are this test: one
/// of them scribbles over its ring counters. The switch must disconnect
/// that port (counted, logged) and keep forwarding between the others.
#[test]
fn garbage_writing_peer_is_disconnected_others_keep_forwarding() {
    let cfg = Config::default();
    let ports: Vec<ChannelFds> = (0..3)
        .map(|i| create(&cfg, &format!("test-port{i}")).expect("create channel"))
        .collect();
    let labels = ["nic:bad", "nic:left", "nic:right"];
    let (mut control, control_child) = Control::pair().expect("control pair");
    let mut env_channels = Vec::new();
    let mut inherit = Vec::new();
    for (label, p) in labels.iter().zip(&ports) {
        env_channels.push(format!(
            "{label}=A:{}:{}:{}",
            p.memfd.as_raw_fd(),
            p.wake_a.as_raw_fd(),
            p.wake_b.as_raw_fd()
        ));
        inherit.extend([
            p.memfd.as_raw_fd(),
            p.wake_a.as_raw_fd(),
            p.wake_b.as_raw_fd(),
        ]);
    }
    inherit.push(control_child.as_raw_fd());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nic_switch"));
    cmd.env("FRAGNET_NAME", "switch")
        .env("FRAGNET_CONFIG", "<config/>")
        .env("FRAGNET_SCRIPT_DIR", ".")
        .env("FRAGNET_CHANNELS", env_channels.join(","))
        .env("FRAGNET_CONTROL_FD", control_child.as_raw_fd().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let switch = cmd.spawn().expect("spawn nic_switch");
    drop(control_child);
    let stats = |control: &mut Control| -> String {
        control
            .request("stats", &[], Duration::from_secs(5))
            .expect("stats request")
            .expect("switch alive")
            .body
    };

    let mut bad = client_side(&ports[0]);
    let mut left = client_side(&ports[1]);
    let mut right = client_side(&ports[2]);

    // Honest traffic first: left (MAC 1) ↔ right (MAC 2).
    Endpoint::send(&mut left, &frame(2, 1, 10)).unwrap();
    left.flush();
    assert_eq!(drain(&mut right, 1, Duration::from_secs(5)), vec![10]);
    // The flood of that first frame also reached the bad port.
    assert_eq!(drain(&mut bad, 1, Duration::from_secs(5)), vec![10]);

    // Garbage: move the B→A active ring head of the bad port a billion
    // slots ahead (layout: counters of direction 1 at 7 * LINE).
    {
        use packet_ring::layout::LINE;
        let len = 8 * LINE;
        // SAFETY: a fresh shared mapping of the (larger) region; we write
        // one aligned u32 inside it.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                ports[0].memfd.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let head = (p as *mut u8).add(7 * LINE) as *mut u32;
            std::ptr::write_volatile(head, 1_000_000_000);
            libc::munmap(p, len);
        }
        // Ring the switch's doorbell for that port so it looks.
        let _ = rustix::io::write(&ports[0].wake_a, &1u64.to_ne_bytes());
    }
    assert!(
        wait_for(Duration::from_secs(5), || stats(&mut control)
            .contains("port.nic:bad.up 0")),
        "bad port not disconnected:\n{}",
        stats(&mut control)
    );
    let s = stats(&mut control);
    assert!(s.contains("port.nic:bad.violations 1\n"), "{s}");

    // The others keep forwarding, both ways, in volume.
    for tag in 0..100u8 {
        Endpoint::send(&mut right, &frame(1, 2, tag)).unwrap();
    }
    right.flush();
    let got = drain(&mut left, 100, Duration::from_secs(5));
    assert_eq!(got, (0..100u8).collect::<Vec<_>>());
    Endpoint::send(&mut left, &frame(2, 1, 200)).unwrap();
    left.flush();
    assert_eq!(drain(&mut right, 1, Duration::from_secs(5)), vec![200]);
    assert!(stats(&mut control).contains("port.nic:left.up 1"));

    let reply = control
        .request("shutdown", &[], Duration::from_secs(5))
        .expect("shutdown")
        .expect("reply");
    assert!(reply.is_ok());
    let out = switch.wait_with_output().expect("switch exit");
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("'nic:bad' disconnected") && log.contains("peer broke the ring protocol"),
        "switch log:\n{log}"
    );
}
