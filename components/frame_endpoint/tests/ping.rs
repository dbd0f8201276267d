//! Two endpoints behind a switch reach each other: endpoint A pings B once
//! a second, B answers, A counts the replies; a third, silent endpoint sees
//! only the flooded ARP requests (the switch learned the rest). Real
//! processes started by `fragnet run`; no privileges needed (no TAP device).
//!
//! Build the workspace binaries first:
//! `cargo build --bins -p fragnet_init -p nic_switch -p frame_endpoint`.

use std::time::Duration;

use fragnet_testkit::{stat, wait_for, write_script, Fragnet, TempDir};

const TWO_ENDPOINTS: &str = r#"<config control="ctl.sock">
  <start name="switch">
    <binary name="nic_switch"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="ep_a">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.10/24" ping="10.77.0.11"/>
    <route><service name="Nic"><child name="switch"/></service></route>
  </start>
  <start name="ep_b">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.11/24" mac="02:00:00:00:00:0b"/>
    <route><service name="Nic"><child name="switch"/></service></route>
  </start>
  <start name="ep_c">
    <binary name="frame_endpoint"/>
    <config ip="10.77.0.12/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
  </start>
</config>
"#;

#[test]
fn two_endpoints_reach_each_other_through_a_switch() {
    let dir = TempDir::new("fnnic");
    let script = write_script(dir.path(), "two.xml", TWO_ENDPOINTS);
    let fragnet = Fragnet::start(None, &script);
    let ctl = dir.path().join("ctl.sock");
    assert!(
        wait_for(Duration::from_secs(10), || stat(
            None,
            &ctl,
            "ep_a",
            "ping_replies_received"
        ) >= 3),
        "A got no replies from B; A: {} sent, B: {} answered; log:\n{}",
        stat(None, &ctl, "ep_a", "ping_requests_sent"),
        stat(None, &ctl, "ep_b", "echo_requests_answered"),
        fragnet.log()
    );
    // A resolved B with ARP (one request, or more if B started late), B
    // answered each, and every echo.
    let arps = stat(None, &ctl, "ep_a", "ping_arp_requests_sent");
    assert!(arps >= 1);
    assert_eq!(stat(None, &ctl, "ep_b", "arp_requests_answered"), arps);
    let sent = stat(None, &ctl, "ep_a", "ping_requests_sent");
    let replies = stat(None, &ctl, "ep_a", "ping_replies_received");
    assert!(
        replies >= 3 && replies <= sent,
        "{replies} replies to {sent} requests"
    );
    assert!(stat(None, &ctl, "ep_b", "echo_requests_answered") >= replies);
    assert_eq!(stat(None, &ctl, "ep_a", "drop_unexpected_echo_reply"), 0);
    // The switch carried it: B's port saw A's frames.
    assert!(stat(None, &ctl, "switch", "port.nic:ep_b.tx_frames") >= 4);
    // A silent third endpoint got only the flooded ARP requests: once the
    // switch had learned A and B, their unicast frames went to them alone.
    assert_eq!(stat(None, &ctl, "switch", "port.nic:ep_c.tx_frames"), arps);
    assert_eq!(stat(None, &ctl, "ep_c", "rx_frames"), arps);
    assert_eq!(stat(None, &ctl, "ep_c", "drop_arp_not_for_us"), arps);
}
