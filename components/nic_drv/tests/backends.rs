//! End-to-end tests of nic_drv's backends with real processes started by
//! `fragnet run` inside a network namespace (the Linux host of that
//! namespace is the peer through the TAP device):
//!
//! * tap: host → TAP → nic_drv → nic_switch → frame_endpoint;
//! * wire (cable): tap → switch1 → wire → switch2 → endpoint;
//! * wire (listen/connect): two `fragnet run` instances joined by a wire
//!   over a unix socket (memfd + eventfds passed with SCM_RIGHTS).
//!
//! Needs root and the workspace binaries built first:
//! `cargo build --bins -p fragnet_init -p nic_drv -p nic_switch -p frame_endpoint`.

use std::time::Duration;

use fragnet_testkit::{
    is_root, stat, unique_name, wait_for, write_script, Fragnet, NetNs, TempDir,
};

fn tap_start(ifname: &str) -> String {
    format!(
        r#"  <start name="tap0">
    <binary name="nic_drv"/>
    <config backend="tap" ifname="{ifname}" host_ip="10.77.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
"#
    )
}

fn wait_ping(ns: &NetNs, fragnet: &Fragnet, addr: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping(addr, 1)),
        "{addr} never answered; log:\n{}",
        fragnet.log()
    );
    assert!(ns.ping(addr, 3), "log:\n{}", fragnet.log());
}

#[test]
fn tap_backend_host_pings_endpoint() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let ns = NetNs::new("fnnic");
    let dir = TempDir::new("fnnic");
    let xml = format!(
        r#"<config control="ctl.sock">
{}  <start name="switch">
    <binary name="nic_switch"/>
    <route><service name="Nic"><child name="tap0"/></service></route>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.10/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
  </start>
</config>
"#,
        tap_start(&unique_name("fnnic"))
    );
    let script = write_script(dir.path(), "tap.xml", &xml);
    let fragnet = Fragnet::start(Some(&ns), &script);
    wait_ping(&ns, &fragnet, "10.77.0.10");
    let ctl = dir.path().join("ctl.sock");
    // Host → endpoint: echo requests (and ARP) read from the TAP device;
    // endpoint → host: replies written to it.
    assert!(stat(Some(&ns), &ctl, "tap0", "rx_frames") >= 4);
    assert!(stat(Some(&ns), &ctl, "tap0", "tx_frames") >= 4);
    assert_eq!(stat(Some(&ns), &ctl, "tap0", "rx_drop_channel_full"), 0);
}

#[test]
fn wire_cable_joins_two_switches() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let ns = NetNs::new("fnnic");
    let dir = TempDir::new("fnnic");
    let xml = format!(
        r#"<config control="ctl.sock">
{}  <start name="switch1">
    <binary name="nic_switch"/>
    <route><service name="Nic"><child name="tap0"/></service></route>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="wire0">
    <binary name="nic_drv"/>
    <config backend="wire"/>
    <route><service name="Nic"><child name="switch1"/></service></route>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="switch2">
    <binary name="nic_switch"/>
    <route><service name="Nic"><child name="wire0"/></service></route>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.10/24"/>
    <route><service name="Nic"><child name="switch2"/></service></route>
  </start>
</config>
"#,
        tap_start(&unique_name("fnnic"))
    );
    let script = write_script(dir.path(), "wire.xml", &xml);
    let fragnet = Fragnet::start(Some(&ns), &script);
    wait_ping(&ns, &fragnet, "10.77.0.10");
    let ctl = dir.path().join("ctl.sock");
    // Both directions crossed the cable.
    assert!(stat(Some(&ns), &ctl, "wire0", "port.nic.in_frames") >= 4);
    assert!(stat(Some(&ns), &ctl, "wire0", "port.nic:switch2.in_frames") >= 4);
    assert!(stat(Some(&ns), &ctl, "switch2", "port.nic:ep.tx_frames") >= 4);
}

#[test]
fn wire_listen_connect_joins_two_fragnet_instances() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespace, TAP)");
        return;
    }
    let ns = NetNs::new("fnnic");
    let dir_a = TempDir::new("fnnica");
    let dir_b = TempDir::new("fnnicb");
    let sock = dir_a.path().join("w0.sock");
    // Instance A: host ⇄ TAP ⇄ switch ⇄ wire (listening).
    let xml_a = format!(
        r#"<config control="ctl.sock">
{}  <start name="switch">
    <binary name="nic_switch"/>
    <route><service name="Nic"><child name="tap0"/></service></route>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="wire">
    <binary name="nic_drv"/>
    <config backend="wire" listen="w0.sock"/>
    <route><service name="Nic"><child name="switch"/></service></route>
  </start>
</config>
"#,
        tap_start(&unique_name("fnnic"))
    );
    // Instance B: wire (connecting) ⇄ endpoint.
    let xml_b = format!(
        r#"<config control="ctl.sock">
  <start name="wire">
    <binary name="nic_drv"/>
    <config backend="wire" connect="{}"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.10/24"/>
    <route><service name="Nic"><child name="wire"/></service></route>
  </start>
</config>
"#,
        sock.display()
    );
    // Start the connector first: it retries until the listener is there.
    let script_b = write_script(dir_b.path(), "b.xml", &xml_b);
    let fragnet_b = Fragnet::start(Some(&ns), &script_b);
    let script_a = write_script(dir_a.path(), "a.xml", &xml_a);
    let fragnet_a = Fragnet::start(Some(&ns), &script_a);
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "no answer across the wire; log A:\n{}\nlog B:\n{}",
        fragnet_a.log(),
        fragnet_b.log()
    );
    assert!(ns.ping("10.77.0.10", 3));
    let ctl_a = dir_a.path().join("ctl.sock");
    let ctl_b = dir_b.path().join("ctl.sock");
    assert_eq!(stat(Some(&ns), &ctl_a, "wire", "wire_up"), 1);
    assert_eq!(stat(Some(&ns), &ctl_b, "wire", "wire_up"), 1);
    assert!(stat(Some(&ns), &ctl_a, "wire", "to_wire_frames") >= 4);
    assert!(stat(Some(&ns), &ctl_b, "wire", "from_wire_frames") >= 4);

    // The far side goes away: the listener notices (link down) and the
    // same instance B reconnects when A comes back.
    drop(fragnet_a);
    assert!(
        wait_for(Duration::from_secs(5), || stat(
            Some(&ns),
            &ctl_b,
            "wire",
            "wire_up"
        ) == 0),
        "connector did not notice the listener going away; log B:\n{}",
        fragnet_b.log()
    );
    let fragnet_a = Fragnet::start(Some(&ns), &script_a);
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.77.0.10", 1)),
        "no answer after the listener came back; log A:\n{}\nlog B:\n{}",
        fragnet_a.log(),
        fragnet_b.log()
    );
    assert_eq!(stat(Some(&ns), &ctl_b, "wire", "wire_connects"), 2);
}
