//! ip_stack against the Linux kernel as its peer: a TAP device in a test
//! network namespace, `fragnet run` starting driver, stack and application
//! processes, and Linux sockets (from threads that entered the namespace)
//! on the other side. Also: two fragnet applications on two stacks through
//! nic_switch, malformed frames, a hostile application.
//!
//! Needs root and the workspace binaries built (`cargo build --workspace
//! --bins`); skipped (with a message) when not root.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fragnet_testkit::{bin_path, in_ns, is_root, wait_for, write_script, Fragnet, NetNs, TempDir};

const STACK_MAC: &str = "02:00:00:00:00:10";

struct Topo {
    ns: NetNs,
    fragnet: Fragnet,
    script: PathBuf,
    _dir: TempDir,
    /// 10.N.0.1 host side, 10.N.0.10 the stack.
    net: u8,
}

impl Topo {
    fn stack_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 10)
    }
    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 1)
    }

    /// tap → ip_stack (`stack`) → `app` with `app_config` attributes.
    fn tap(test: &str, net: u8, app: &str, app_config: &str) -> Topo {
        Topo::tap_with(test, net, "", app, app_config)
    }

    /// Like [`Topo::tap`], with extra attributes for the stack's config.
    fn tap_with(test: &str, net: u8, stack_config: &str, app: &str, app_config: &str) -> Topo {
        let ns = NetNs::new("fnstk");
        let dir = TempDir::new("fnstk");
        let ifname = format!("fs{}{}", std::process::id() % 100000, net);
        let ctl = dir.path().join("ctl.sock");
        let xml = format!(
            r#"<config control="{ctl}">
  <start name="nic_drv">
    <config backend="tap" ifname="{ifname}" queues="1" host_ip="10.{net}.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="stack">
    <binary name="ip_stack"/>
    <config ip="10.{net}.0.10/24" gateway="10.{net}.0.1" mac="{STACK_MAC}" {stack_config}/>
    <route><service name="Nic"><child name="nic_drv" queue="0"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="app">
    <binary name="{app}"/>
    <config {app_config}/>
    <route><service name="Socket"><child name="stack"/></service></route>
  </start>
</config>
"#,
            ctl = ctl.display()
        );
        let script = write_script(dir.path(), &format!("fnstk_{test}.xml"), &xml);
        let fragnet = Fragnet::start(Some(&ns), &script);
        let topo = Topo {
            ns,
            fragnet,
            script,
            _dir: dir,
            net,
        };
        let ip = topo.stack_ip().to_string();
        assert!(
            wait_for(Duration::from_secs(10), || topo.ns.ping(&ip, 1)),
            "stack never answered ping; log:\n{}",
            topo.fragnet.log()
        );
        topo
    }

    fn stats(&self, comp: &str) -> HashMap<String, u64> {
        stats(&self.script, Some(&self.ns), comp)
    }
}

fn stats(script: &Path, ns: Option<&NetNs>, comp: &str) -> HashMap<String, u64> {
    let fragnet = bin_path("fragnet");
    let mut cmd = match ns {
        Some(ns) => ns.exec(&fragnet),
        None => Command::new(&fragnet),
    };
    let out = cmd
        .args(["stats", "--script"])
        .arg(script)
        .arg(comp)
        .output()
        .expect("fragnet stats");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, TAP)");
            return;
        }
    };
}

fn udp_echoes(ns: &NetNs, to: Ipv4Addr, count: u32) -> u32 {
    fragnet_testkit::udp_echoes(
        ns,
        std::net::SocketAddrV4::new(to, 7),
        count,
        Duration::from_millis(500),
    )
}

#[test]
fn ping_udp_echo_and_app_holds_only_its_channel() {
    need_root!();
    let t = Topo::tap("udp", 81, "udp_echo", r#"port="7""#);
    assert!(t.ns.ping(&t.stack_ip().to_string(), 5));
    assert_eq!(udp_echoes(&t.ns, t.stack_ip(), 200), 200);

    // The application's descriptors: its socket channel (one memfd, two
    // eventfds), the control socket to init, stdio. Nothing of the
    // topology (no TAP, no other channel).
    let pid = t
        .ns
        .pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "udp_echo")
        })
        .expect("udp_echo process");
    let mut memfds = 0;
    let mut eventfds = 0;
    let mut other = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let n: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let target = std::fs::read_link(e.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(!target.contains("tun"), "application holds {target}");
        if target.starts_with("/memfd:") {
            memfds += 1;
        } else if target.contains("eventfd") {
            eventfds += 1;
        } else if n > 2 && !target.starts_with("socket:") {
            other.push(target);
        }
    }
    assert_eq!(memfds, 1, "exactly one channel region");
    assert_eq!(eventfds, 2, "the channel's two doorbells");
    assert!(other.is_empty(), "unexpected descriptors: {other:?}");

    // The application answers init on its control socket (served by the
    // socket library while the application waits) and leaves on `shutdown`
    // instead of being killed.
    let app = t.stats("app");
    assert_eq!(app.get("sockets"), Some(&1), "app stats: {app:?}");
    assert_eq!(app.get("bad_messages"), Some(&0), "app stats: {app:?}");
    let mut t = t;
    let status = t.fragnet.stop(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "fragnet exit: {status:?}"
    );
    let log = t.fragnet.log();
    assert!(
        !log.contains("did not exit after shutdown"),
        "a component had to be killed:\n{log}"
    );
}

#[test]
fn hundred_linux_tcp_connections_one_mib_each_way() {
    need_root!();
    // 64 KiB windows: 100 connections then have at most ~6 MiB in flight
    // towards the stack's 1024-frame NIC channel (256 KiB windows allow 25
    // MiB, and the frame loss that follows makes recovery slow: smoltcp
    // has no SACK).
    let t = Topo::tap_with(
        "tcp100",
        82,
        r#"tcp_rx_buf="65536" tcp_tx_buf="65536""#,
        "tcp_echo",
        r#"port="7" backlog="128""#,
    );
    let ip = t.stack_ip();
    let (ok, errors) = in_ns(&t.ns, move || {
        let handles: Vec<_> = (0..100u32)
            .map(|c| {
                std::thread::spawn(move || -> Result<(), String> {
                    let data: Vec<u8> = (0..1usize << 20)
                        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(c) as u8)
                        .collect();
                    let s = TcpStream::connect_timeout(
                        &SocketAddr::from((ip, 7)),
                        Duration::from_secs(20),
                    )
                    .map_err(|e| format!("conn {c}: connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut r = s.try_clone().unwrap();
                    let reader = std::thread::spawn(move || {
                        let mut got = Vec::with_capacity(1 << 20);
                        r.read_to_end(&mut got).map(|_| got)
                    });
                    (&s).write_all(&data)
                        .map_err(|e| format!("conn {c}: write: {e}"))?;
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let got = reader
                        .join()
                        .unwrap()
                        .map_err(|e| format!("conn {c}: read: {e}"))?;
                    if got != data {
                        return Err(format!("conn {c}: {} bytes back, differ", got.len()));
                    }
                    Ok(())
                })
            })
            .collect();
        let mut ok = 0;
        let mut errors = Vec::new();
        for h in handles {
            match h.join().unwrap() {
                Ok(()) => ok += 1,
                Err(e) => errors.push(e),
            }
        }
        (ok, errors)
    });
    assert_eq!(ok, 100, "errors: {errors:?}\nlog:\n{}", t.fragnet.log());
    let st = t.stats("stack");
    assert!(st["tcp_accepted"] >= 100, "{st:?}");
}

#[test]
fn fragnet_client_downloads_from_linux_server() {
    need_root!();
    const SIZE: usize = 8 << 20;
    let dir = TempDir::new("fnstk");
    let out = dir.path().join("bulk.txt");
    // The Linux server must listen before the client starts: bind first.
    let ns = NetNs::new("fnstk");
    let listener = in_ns(&ns, || {
        TcpListener::bind("0.0.0.0:9000").expect("bind 9000")
    });
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).expect("send");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let ifname = format!("fs{}d", std::process::id() % 100000);
    let xml = format!(
        r#"<config control="{ctl}">
  <start name="nic_drv">
    <config backend="tap" ifname="{ifname}" queues="1" host_ip="10.83.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="stack">
    <binary name="ip_stack"/>
    <config ip="10.83.0.10/24" gateway="10.83.0.1"/>
    <route><service name="Nic"><child name="nic_drv" queue="0"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="app">
    <binary name="tcp_bulk"/>
    <config connect="10.83.0.1:9000" delay="0.3" out="{out}"/>
    <route><service name="Socket"><child name="stack"/></service></route>
  </start>
</config>
"#,
        ctl = dir.path().join("ctl.sock").display(),
        out = out.display()
    );
    let script = write_script(dir.path(), "fnstk_download.xml", &xml);
    let f = Fragnet::start(Some(&ns), &script);
    let done = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("received="))
    });
    let result = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(done, "no result; log:\n{}", f.log());
    assert!(
        result.contains(&format!("received={SIZE} verified=true")),
        "{result}"
    );
    server.join().unwrap();
}

/// Ethernet + IPv4 header around `l4` (protocol `proto`), checksum right
/// unless told.
fn ipv4_frame(dst_ip: [u8; 4], proto: u8, l4: &[u8], tweak: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x10]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
    f[12..14].copy_from_slice(&[8, 0]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[10, 84, 0, 1]);
    ip[16..20].copy_from_slice(&dst_ip);
    f.extend_from_slice(l4);
    tweak(&mut f);
    let mut sum = 0u32;
    for i in (14..34).step_by(2) {
        if i != 24 {
            sum += u16::from_be_bytes([f[i], f[i + 1]]) as u32;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if f[24] == 0 && f[25] == 0 {
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    f
}

#[test]
fn malformed_frames_are_dropped_counted_and_the_stack_survives() {
    need_root!();
    let t = Topo::tap("corpus", 84, "udp_echo", r#"port="7""#);
    let me = [10, 84, 0, 10];
    let udp_bad_sum = [0x13, 0x88, 0, 7, 0, 10, 0x12, 0x34, b'h', b'i'];
    let udp_short = [0x13, 0x88, 0, 7, 0, 200, 0, 0, b'h', b'i'];
    let mut tcp_bad = vec![0u8; 20];
    tcp_bad[0..4].copy_from_slice(&[0x13, 0x88, 0, 7]);
    tcp_bad[12] = 0x50;
    tcp_bad[16] = 0xde;
    let mut tcp_off = tcp_bad.clone();
    tcp_off[12] = 0xf0; // data offset 60 bytes in a 20-byte segment
    let icmp_bad = [8u8, 0, 0xde, 0xad, 0, 1, 0, 1];
    let mut corpus: Vec<(Vec<u8>, &str)> = vec![
        // (A runt shorter than an Ethernet header cannot be written into a
        // TAP: the kernel refuses it. The classifier's unit tests cover it.)
        (vec![2, 0, 0, 0, 0, 0x10, 1, 2, 3, 4], ""),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| f[5] = 0x77),
            "drop_eth_not_for_us",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| {
                f[12..14].copy_from_slice(&[0x88, 0xb5])
            }),
            "drop_eth_unknown_type",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| f[12..14].copy_from_slice(&[8, 6])),
            "drop_arp_malformed",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| f[24] = 0xff),
            "drop_ipv4_malformed",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| f[17] = 0xff),
            "drop_ipv4_malformed",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| f[14] = 0x65),
            "drop_ipv4_malformed",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |f| f[20] = 0x20),
            "drop_ipv4_fragment",
        ),
        (
            ipv4_frame([10, 84, 0, 99], 17, &udp_bad_sum, |_| {}),
            "drop_ipv4_not_for_us",
        ),
        (
            ipv4_frame(me, 47, &udp_bad_sum, |_| {}),
            "drop_ip_unknown_proto",
        ),
        (
            ipv4_frame(me, 17, &udp_bad_sum, |_| {}),
            "drop_udp_malformed",
        ),
        (ipv4_frame(me, 17, &udp_short, |_| {}), "drop_udp_malformed"),
        (ipv4_frame(me, 6, &tcp_bad, |_| {}), "drop_tcp_malformed"),
        (ipv4_frame(me, 6, &tcp_off, |_| {}), "drop_tcp_malformed"),
        (
            ipv4_frame(me, 6, &tcp_bad[..12], |_| {}),
            "drop_tcp_malformed",
        ),
        (ipv4_frame(me, 1, &icmp_bad, |_| {}), "drop_icmp_malformed"),
    ];
    // Every truncation of a valid-looking UDP frame, too.
    let base = ipv4_frame(me, 17, &udp_bad_sum, |_| {});
    for n in (0..base.len()).step_by(3) {
        corpus.push((base[..n].to_vec(), ""));
    }
    let before = t.stats("stack");
    let ifname = format!("fs{}{}", std::process::id() % 100000, 84);
    let frames: Vec<Vec<u8>> = corpus.iter().map(|(f, _)| f.clone()).collect();
    let sent = in_ns(&t.ns, move || {
        // SAFETY: plain socket(2)/bind(2)/send(2) calls on a local fd.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let name = std::ffi::CString::new(ifname).unwrap();
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0);
            let mut sent = 0;
            for f in &frames {
                // The kernel refuses frames shorter than a header here;
                // the driver may also pad: count what went out.
                if libc::send(fd, f.as_ptr().cast(), f.len(), 0) == f.len() as isize {
                    sent += 1;
                }
            }
            libc::close(fd);
            sent
        }
    });
    assert!(sent >= 16, "only {sent} frames could be written");
    let ok = wait_for(Duration::from_secs(5), || {
        let after = t.stats("stack");
        after["drop_total"] >= before["drop_total"] + 16
    });
    let after = t.stats("stack");
    assert!(ok, "drops before {before:?} after {after:?}");
    for (_, name) in &corpus {
        if !name.is_empty() {
            assert!(
                after[*name] > before[*name],
                "{name} not counted: {after:?}"
            );
        }
    }
    // Still alive and serving.
    assert!(t.ns.ping(&t.stack_ip().to_string(), 3));
    assert_eq!(udp_echoes(&t.ns, t.stack_ip(), 20), 20);
    let _ = t.host_ip();
}

#[test]
fn hostile_application_gets_errors_and_the_stack_keeps_serving() {
    need_root!();
    let dir = TempDir::new("fnstk");
    let out = dir.path().join("garbage.txt");
    let t = Topo::tap(
        "garbage",
        85,
        "garbage_client",
        &format!(r#"garbage="30" port="7" out="{}""#, out.display()),
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.contains("serving=yes"))
        }),
        "log:\n{}",
        t.fragnet.log()
    );
    let result = std::fs::read_to_string(&out).unwrap();
    let errors: usize = result
        .split_whitespace()
        .find_map(|w| w.strip_prefix("errors="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(errors, 30, "one error answer per garbage message: {result}");
    // The same application, after its garbage, still gets UDP served.
    assert_eq!(udp_echoes(&t.ns, t.stack_ip(), 20), 20);
    let st = t.stats("stack");
    assert!(st["app_bad_msgs"] >= 30, "{st:?}");
    assert_eq!(st["app_disconnects"], 0);
}

#[test]
fn flooding_application_is_disconnected_stack_survives() {
    need_root!();
    let t = Topo::tap("flood", 86, "garbage_client", r#"garbage="200" port="7""#);
    let ok = wait_for(Duration::from_secs(10), || {
        t.stats("stack")
            .get("app_disconnects")
            .copied()
            .unwrap_or(0)
            >= 1
    });
    assert!(ok, "{:?}", t.stats("stack"));
    assert!(t.ns.ping(&t.stack_ip().to_string(), 3));
}

#[test]
fn two_fragnet_apps_on_two_stacks_through_the_switch() {
    need_root!();
    let dir = TempDir::new("fnstk");
    let rr = dir.path().join("rr.txt");
    let bulk = dir.path().join("bulk.txt");
    let xml = format!(
        r#"<config control="{ctl}">
  <start name="switch">
    <binary name="nic_switch"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="a_stack">
    <binary name="ip_stack"/>
    <config ip="10.87.0.10/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="a_udp">
    <binary name="udp_echo"/>
    <config port="7"/>
    <route><service name="Socket"><child name="a_stack"/></service></route>
  </start>
  <start name="b_stack">
    <binary name="ip_stack"/>
    <config ip="10.87.0.20/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="b_rr">
    <binary name="udp_rr"/>
    <config server="10.87.0.10:7" inflight="8" requests="5000" delay="0.3" out="{rr}"/>
    <route><service name="Socket"><child name="b_stack"/></service></route>
  </start>
  <start name="c_stack">
    <binary name="ip_stack"/>
    <config ip="10.87.0.30/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="c_bulk_server">
    <binary name="tcp_bulk"/>
    <config listen="9000" out="{bulk}"/>
    <route><service name="Socket"><child name="c_stack"/></service></route>
  </start>
  <start name="d_stack">
    <binary name="ip_stack"/>
    <config ip="10.87.0.40/24"/>
    <route><service name="Nic"><child name="switch"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="d_bulk_client">
    <binary name="tcp_bulk"/>
    <config connect="10.87.0.30:9000" send="16777216" delay="0.5"/>
    <route><service name="Socket"><child name="d_stack"/></service></route>
  </start>
</config>
"#,
        ctl = dir.path().join("ctl.sock").display(),
        rr = rr.display(),
        bulk = bulk.display()
    );
    let ns = NetNs::new("fnstk");
    let script = write_script(dir.path(), "fnstk_pair.xml", &xml);
    let f = Fragnet::start(Some(&ns), &script);
    let start = Instant::now();
    let done = wait_for(Duration::from_secs(40), || {
        std::fs::read_to_string(&rr).is_ok_and(|s| s.contains("requests="))
            && std::fs::read_to_string(&bulk).is_ok_and(|s| s.contains("received="))
    });
    let rr_line = std::fs::read_to_string(&rr).unwrap_or_default();
    let bulk_line = std::fs::read_to_string(&bulk).unwrap_or_default();
    assert!(
        done,
        "after {:?}: rr {rr_line:?} bulk {bulk_line:?}\n{}",
        start.elapsed(),
        f.log()
    );
    assert!(rr_line.contains("requests=5000"), "{rr_line}");
    assert!(
        bulk_line.contains("received=16777216 verified=true"),
        "{bulk_line}"
    );
}

#[test]
fn linux_http_client_gets_pages_from_fragnet_http_hello() {
    need_root!();
    let t = Topo::tap("http", 88, "http_hello", r#"port="80""#);
    let ip = t.stack_ip();
    let text = in_ns(&t.ns, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((ip, 80)), Duration::from_secs(10))
                .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Two pipelined keep-alive requests, the second asking to close.
        s.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text)
            .expect("read until the server closes");
        text
    });
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        text.contains("(Fragnet): /one\n") && text.contains("(Fragnet): /two\n"),
        "{text}"
    );
}

#[test]
fn ruleset_from_the_run_script_filters_and_can_be_flushed() {
    need_root!();
    let ns = NetNs::new("fnstk");
    let dir = TempDir::new("fnstk");
    std::fs::write(
        dir.path().join("stack.nft"),
        "table inet f {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    udp dport 7 counter drop\n  }\n}\n",
    )
    .unwrap();
    let ifname = format!("fs{}f", std::process::id() % 100000);
    let xml = format!(
        r#"<config control="{ctl}">
  <start name="nic_drv">
    <config backend="tap" ifname="{ifname}" queues="1" host_ip="10.89.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="stack">
    <binary name="ip_stack"/>
    <config ip="10.89.0.10/24"><nftables file="stack.nft"/></config>
    <route><service name="Nic"><child name="nic_drv" queue="0"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="app">
    <binary name="udp_echo"/>
    <config port="7"/>
    <route><service name="Socket"><child name="stack"/></service></route>
  </start>
</config>
"#,
        ctl = dir.path().join("ctl.sock").display()
    );
    let script = write_script(dir.path(), "fnstk_filter.xml", &xml);
    let f = Fragnet::start(Some(&ns), &script);
    let ip = Ipv4Addr::new(10, 89, 0, 10);
    assert!(
        wait_for(Duration::from_secs(10), || ns.ping("10.89.0.10", 1)),
        "{}",
        f.log()
    );
    assert_eq!(
        udp_echoes(&ns, ip, 5),
        0,
        "udp dport 7 is dropped by the rule"
    );
    let st = stats(&script, Some(&ns), "stack");
    assert!(st["drop_filter_input"] >= 5, "{st:?}");
    let out = ns
        .exec(bin_path("fragnet"))
        .args(["nft", "--script"])
        .arg(&script)
        .args(["--target", "stack", "list", "counters"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("packets 5"), "{text}");
    let out = ns
        .exec(bin_path("fragnet"))
        .args(["nft", "--script"])
        .arg(&script)
        .args(["--target", "stack", "flush", "ruleset"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(udp_echoes(&ns, ip, 5), 5, "after flush ruleset");

    // A 10,000-rule ruleset (~0.5 MiB of text, one control datagram) is
    // loaded through `fragnet nft -f`, built off the data path, and takes
    // effect: its last rule drops port 7; echoes on port 8 are not served
    // (no socket) but the stack keeps answering pings.
    let mut big = String::from("flush ruleset\ntable inet f {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    ct state established,related accept\n");
    for i in 0..9_999u32 {
        big.push_str(&format!(
            "    ip saddr 172.{}.{}.0/24 tcp dport {} counter drop\n",
            16 + i / 256 % 16,
            i % 256,
            1024 + i
        ));
    }
    big.push_str("    udp dport 7 counter drop\n  }\n}\n");
    assert!(big.len() > 300 * 1024, "{} bytes", big.len());
    let big_path = dir.path().join("big.nft");
    std::fs::write(&big_path, &big).unwrap();
    let out = ns
        .exec(bin_path("fragnet"))
        .args(["nft", "--script"])
        .arg(&script)
        .args(["--target", "stack", "-f"])
        .arg(&big_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loading 10,000 rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(udp_echoes(&ns, ip, 3), 0, "the big ruleset's last rule");
    assert!(ns.ping("10.89.0.10", 2), "stack still answers ping");
    let out = ns
        .exec(bin_path("fragnet"))
        .args(["nft", "--script"])
        .arg(&script)
        .args(["--target", "stack", "list", "ruleset"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listing.matches("tcp dport").count(),
        9_999,
        "the listing of 10,000 rules comes back whole"
    );
}
