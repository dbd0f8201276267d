//! Process-level tests of fragnet_host: taking inherited descriptors from
//! the environment, and TAP devices (those need root and skip otherwise).

use fragnet_host::{tap, Control, Env, EnvError};
use packet_ring::Side;
use rustix::fd::{AsRawFd, IntoRawFd};
use std::collections::HashMap;

#[test]
fn env_takes_named_descriptors_and_rejects_bad_ones() {
    let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let wa = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let wb = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let (mut init_end, child_end) = Control::pair().unwrap();
    let (m, a, b, c) = (
        memfd.into_raw_fd(),
        wa.into_raw_fd(),
        wb.into_raw_fd(),
        child_end.into_raw_fd(),
    );
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("FRAGNET_NAME", "kv0_stack".to_string()),
        ("FRAGNET_CONFIG", "<config ip=\"10.0.0.1/24\"/>".to_string()),
        ("FRAGNET_SCRIPT_DIR", "/srv/run".to_string()),
        ("FRAGNET_CHANNELS", format!("nic=B:{m}:{a}:{b}")),
        ("FRAGNET_CONTROL_FD", c.to_string()),
        ("FRAGNET_CPU", "1".to_string()),
    ]);

    // An fd that is not open is refused, naming the variable and number.
    vars.insert("FRAGNET_CHANNELS", format!("nic=B:{m}:{a}:999"));
    let e = Env::from_lookup(|k| vars.get(k).cloned()).unwrap_err();
    assert!(matches!(e, EnvError::BadFd { fd: 999, .. }), "{e}");
    assert!(e.to_string().contains("999") && e.to_string().contains("not open"));
    // Named twice, or stdio: refused.
    vars.insert("FRAGNET_CHANNELS", format!("nic=B:{m}:{a}:{a}"));
    assert!(Env::from_lookup(|k| vars.get(k).cloned())
        .unwrap_err()
        .to_string()
        .contains("twice"));
    vars.insert("FRAGNET_CHANNELS", format!("nic=B:{m}:{a}:1"));
    assert!(Env::from_lookup(|k| vars.get(k).cloned()).is_err());
    // The control fd must be a seqpacket socket.
    vars.insert("FRAGNET_CHANNELS", format!("nic=B:{m}:{a}:{b}"));
    vars.insert("FRAGNET_CONTROL_FD", m.to_string());
    let e = Env::from_lookup(|k| vars.get(k).cloned()).unwrap_err();
    assert!(e.to_string().contains("SOCK_SEQPACKET"), "{e}");
    vars.insert("FRAGNET_CONTROL_FD", c.to_string());
    // Missing name.
    let e = Env::from_lookup(|k| {
        if k == "FRAGNET_NAME" {
            None
        } else {
            vars.get(k).cloned()
        }
    })
    .unwrap_err();
    assert_eq!(e, EnvError::Missing("FRAGNET_NAME"));

    let mut env = Env::from_lookup(|k| vars.get(k).cloned()).unwrap();
    assert_eq!(env.name, "kv0_stack");
    assert_eq!(env.cpu, Some(1));
    assert_eq!(env.queue, None);
    assert_eq!(env.config().unwrap().attr("ip"), Some("10.0.0.1/24"));
    assert_eq!(
        env.resolve("etc/a.nft").to_str(),
        Some("/srv/run/etc/a.nft")
    );
    let ch = env.take_channel("nic").unwrap();
    assert_eq!(ch.side, Side::B);
    assert_eq!(
        (
            ch.fds.memfd.as_raw_fd(),
            ch.fds.wake_a.as_raw_fd(),
            ch.fds.wake_b.as_raw_fd()
        ),
        (m, a, b)
    );
    // The control socket works both ways.
    let mut ctl = env.control.take().unwrap();
    init_end.send("ping").unwrap();
    assert_eq!(ctl.recv().unwrap().unwrap().verb, "ping");
    ctl.reply("ok").unwrap();
    assert!(init_end.recv().unwrap().unwrap().is_ok());

    // A second call may not own the same descriptors again.
    assert_eq!(
        Env::from_lookup(|k| vars.get(k).cloned()).unwrap_err(),
        EnvError::AlreadyTaken
    );
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn tap_create_attach_destroy() {
    if !is_root() {
        eprintln!("skipped: TAP devices need root");
        return;
    }
    let name = format!("fninit{}h", std::process::id() % 1_000_000);
    for multi in [false, true] {
        tap::create_persistent(&name, multi).unwrap();
        assert!(tap::exists(&name));
        // A second create of the same name is refused, naming it.
        let e = tap::create_persistent(&name, multi).unwrap_err();
        assert!(e.to_string().contains(&name), "{e}");
        let q0 = tap::open_queue(&name, multi).unwrap();
        if multi {
            let _q1 = tap::open_queue(&name, multi).unwrap();
        } else {
            // Mismatching flags: a clear error.
            assert!(tap::open_queue(&name, true).is_err());
        }
        drop(q0);
        tap::destroy(&name).unwrap();
        assert!(!tap::exists(&name));
    }
    // An owned device names its user and group.
    tap::create_persistent_for(&name, true, Some((65534, 65533))).unwrap();
    let sys = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{name}/{f}")).unwrap();
    assert_eq!(sys("owner").trim(), "65534");
    assert_eq!(sys("group").trim(), "65533");
    tap::destroy(&name).unwrap();

    let e = tap::open_queue(&name, false).unwrap_err();
    assert!(e.to_string().contains("no such device"), "{e}");
    assert!(tap::destroy(&name).is_err());
}
