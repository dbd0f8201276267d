//! Forwarding benchmark: generator process → nic_switch process → sink
//! process over real packet_ring channels (memfds), 64-byte frames, against
//! the Linux kernel forwarding the same frames through a bridge between
//! veths in a network namespace (AF_PACKET generator and sink).
//!
//! ```text
//! cargo bench -p nic_switch --bench forward            # 5 runs each, 2 s
//! FORWARD_RUNS=3 FORWARD_SECS=1 cargo bench -p nic_switch --bench forward
//! ```
//!
//! The switch is the real `nic_switch` binary (`CARGO_BIN_EXE_nic_switch`),
//! started the way `init` starts it (FRAGNET_* variables, inherited fds, a
//! control socket), so the forwarding code measured is the code that runs.
//! Two placements on this 2-core machine, each run in turn: open loop
//! (generator alone on CPU 0, switch and sink sharing CPU 1, the switch
//! drops what the sink's ring cannot take) and closed loop (the sink
//! publishes its count in a shared page, the generator keeps at most one
//! ring of frames in flight, nothing is dropped; switch alone on CPU 1,
//! generator and sink sharing CPU 0). The
//! kernel run uses the same two CPUs: the generator (and the bridge's
//! softirq work, which runs on the sending CPU) on CPU 0, the sink on CPU 1.
//! The kernel part needs root (network namespace); without it, it is
//! skipped. Prints frames/s of each run, the medians and their ratio.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fragnet_host::Control;
use packet_ring::linux::{create, Channel, ChannelFds, Policy, Waiter};
use packet_ring::{Config, Endpoint, Side};

const FRAME_LEN: usize = 64;
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Local experimental EtherType: never interpreted by anything.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const BATCH: usize = 64;

fn frame(dst: [u8; 6], src: [u8; 6]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE);
    f
}

fn pin(cpu: usize) {
    let _ = fragnet_host::pin_to_cpu(cpu);
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--role") {
        role(&args[i + 1..]);
        return;
    }
    let runs = env_num("FORWARD_RUNS", 5).max(1) as usize;
    let secs = env_num("FORWARD_SECS", 2).max(1);
    let kernel = fragnet_testkit::is_root();
    println!(
        "forward: 64-byte frames, {runs} runs of {secs} s each (alternating fragnet / kernel)"
    );
    // Other work on the machine skews every figure: show how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load average at start: {}", load.join(" "));
    let mut fragnet = Vec::new();
    let mut closed = Vec::new();
    let mut linux = Vec::new();
    for run in 0..runs {
        println!("run {run}:");
        let r = run_fragnet(secs, false);
        println!(
            "  fragnet nic_switch   {:>6.2} M frames/s delivered (switch drops: {})",
            r.0 / 1e6,
            r.1
        );
        fragnet.push(r.0);
        let c = run_fragnet(secs, true);
        println!(
            "  fragnet closed loop  {:>6.2} M frames/s delivered (switch drops: {})",
            c.0 / 1e6,
            c.1
        );
        closed.push(c.0);
        if kernel {
            let k = run_kernel(secs);
            println!(
                "  linux bridge (veth) {:>6.2} M frames/s delivered",
                k / 1e6
            );
            linux.push(k);
        }
    }
    let core = run_core();
    println!(
        "switch core alone (one thread, generator and sink inline): {:.2} M frames/s ({:.1} ns/frame)",
        core / 1e6,
        1e9 / core
    );
    let mf = median(&mut fragnet);
    let mc = median(&mut closed);
    println!("median fragnet nic_switch: {:.2} M frames/s", mf / 1e6);
    println!("median fragnet closed loop: {:.2} M frames/s", mc / 1e6);
    if kernel {
        let mk = median(&mut linux);
        println!("median linux bridge:       {:.2} M frames/s", mk / 1e6);
        println!("ratio fragnet / linux:     {:.1}x", mf / mk);
        println!("ratio closed loop / linux: {:.1}x", mc / mk);
    } else {
        println!("linux bridge reference skipped: needs root (network namespace)");
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// ---- fragnet ---------------------------------------------------------

/// Runs gen → switch → sink for `secs`; returns (sink frames/s, switch drops).
///
/// Open loop (`credit == false`): the generator sends as fast as it can, the
/// switch shares CPU 1 with the sink and drops what the sink's ring cannot
/// take. Closed loop (`credit == true`): the sink publishes how many frames
/// it received in a shared page and the generator keeps at most one sink
/// ring (1024 frames) in flight, so nothing is dropped; the switch has CPU 1
/// to itself and the generator and sink share CPU 0.
fn run_fragnet(secs: u64, credit: bool) -> (f64, u64) {
    let cfg = Config::default();
    let gen_ch = create(&cfg, "bench-gen").expect("create channel");
    let sink_ch = create(&cfg, "bench-sink").expect("create channel");
    let (mut control, control_child) = Control::pair().expect("control socketpair");

    let channels = format!(
        "nic:gen=A:{}:{}:{},nic:sink=A:{}:{}:{}",
        gen_ch.memfd.as_raw_fd(),
        gen_ch.wake_a.as_raw_fd(),
        gen_ch.wake_b.as_raw_fd(),
        sink_ch.memfd.as_raw_fd(),
        sink_ch.wake_a.as_raw_fd(),
        sink_ch.wake_b.as_raw_fd()
    );
    let mut switch = Command::new(env!("CARGO_BIN_EXE_nic_switch"));
    switch
        .env("FRAGNET_NAME", "bench_switch")
        .env("FRAGNET_CONFIG", r#"<config batch="64"/>"#)
        .env("FRAGNET_SCRIPT_DIR", ".")
        .env("FRAGNET_CHANNELS", &channels)
        .env("FRAGNET_CONTROL_FD", control_child.as_raw_fd().to_string())
        .env("FRAGNET_CPU", "1")
        .env("FRAGNET_LOG", "warn");
    let mut switch = spawn_with_fds(
        switch,
        &[
            gen_ch.memfd.as_fd(),
            gen_ch.wake_a.as_fd(),
            gen_ch.wake_b.as_fd(),
            sink_ch.memfd.as_fd(),
            sink_ch.wake_a.as_fd(),
            sink_ch.wake_b.as_fd(),
            control_child.as_fd(),
        ],
        Some(1),
    );
    drop(control_child);

    let credit_fd = credit.then(|| {
        let fd = rustix::fs::memfd_create("bench-credit", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd");
        rustix::fs::ftruncate(&fd, 4096).expect("ftruncate");
        fd
    });
    let sink_cpu = if credit { 0 } else { 1 };
    let sink = spawn_role("sink", &sink_ch, secs, sink_cpu, credit_fd.as_ref());
    let gen = spawn_role("gen", &gen_ch, secs, 0, credit_fd.as_ref());
    drop((gen_ch, sink_ch, credit_fd));

    let rate = collect_rate(sink);
    report_offered(collect_output(gen), secs);
    let stats = control
        .request("stats", &[], Duration::from_secs(2))
        .ok()
        .flatten()
        .map(|m| m.body)
        .unwrap_or_default();
    let drops: u64 = stats
        .lines()
        .filter(|l| l.contains(".drop_"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let _ = control.request("shutdown", &[], Duration::from_secs(2));
    let _ = switch.wait();
    (rate, drops)
}

/// Spawn this bench executable as `gen` or `sink` on side B of `ch`,
/// with the credit page if given.
fn spawn_role(
    name: &str,
    ch: &ChannelFds,
    secs: u64,
    cpu: usize,
    credit: Option<&OwnedFd>,
) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "--role",
        name,
        &ch.memfd.as_raw_fd().to_string(),
        &ch.wake_a.as_raw_fd().to_string(),
        &ch.wake_b.as_raw_fd().to_string(),
        &secs.to_string(),
        &cpu.to_string(),
    ])
    .stdout(Stdio::piped());
    let mut fds = vec![ch.memfd.as_fd(), ch.wake_a.as_fd(), ch.wake_b.as_fd()];
    if let Some(c) = credit {
        cmd.arg(c.as_raw_fd().to_string());
        fds.push(c.as_fd());
    }
    spawn_with_fds(cmd, &fds, None)
}

/// The sink's received-frames counter, shared with the generator.
struct Credit {
    ptr: *mut u8,
}

impl Credit {
    /// Maps the page passed as fd `fd` (owned from now on).
    fn map(fd: RawFd) -> Credit {
        // SAFETY: the parent passed an open 4096-byte memfd; the mapping is
        // never unmapped (the process exits).
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap credit page");
            libc::close(fd);
            Credit { ptr: p.cast() }
        }
    }

    fn counter(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: page-aligned, mapped for the life of the process.
        unsafe { &*(self.ptr as *const std::sync::atomic::AtomicU64) }
    }
}

/// Frames the generator may have in flight in closed loop: one sink ring.
const WINDOW: u64 = 1024;

/// Spawn `cmd` with `fds` inherited (close-on-exec cleared in the child
/// only), pinned to `cpu` if given.
fn spawn_with_fds(mut cmd: Command, fds: &[BorrowedFd<'_>], cpu: Option<usize>) -> Child {
    use std::os::unix::process::CommandExt;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: only async-signal-safe calls (fcntl, sched_setaffinity)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &raw {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn")
}

fn collect_output(child: Child) -> String {
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The generator prints `sent <frames>` (over warm-up + run + 0.3 s).
fn report_offered(out: String, secs: u64) {
    if let Some(sent) = out
        .lines()
        .find_map(|l| l.strip_prefix("sent ")?.parse::<f64>().ok())
    {
        let span = WARMUP.as_secs_f64() + secs as f64 + 0.3;
        print!("    offered {:>6.2} M frames/s", sent / span / 1e6);
    }
}

/// The sink prints `rate <frames/s>`.
fn collect_rate(child: Child) -> f64 {
    let out = collect_output(child);
    out.lines()
        .find_map(|l| l.strip_prefix("rate ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("sink printed no rate: {out:?}"))
}

fn role(args: &[String]) {
    let what = args[0].as_str();
    let num = |i: usize| -> i64 { args[i].parse().expect("numeric argument") };
    let secs = num(4) as u64;
    let cpu = num(5) as usize;
    pin(cpu);
    match what {
        "gen" | "sink" => {
            // SAFETY: the parent passed these fds, open, for us to own.
            let fds = unsafe {
                ChannelFds {
                    memfd: OwnedFd::from_raw_fd(num(1) as RawFd),
                    wake_a: OwnedFd::from_raw_fd(num(2) as RawFd),
                    wake_b: OwnedFd::from_raw_fd(num(3) as RawFd),
                }
            };
            let ch = Channel::attach(fds, Side::B).expect("attach");
            let credit = args.get(6).map(|_| Credit::map(num(6) as RawFd));
            if what == "gen" {
                generator(ch, secs, credit)
            } else {
                sink(ch, secs, credit)
            }
        }
        "kgen" => kernel_gen(&args[1], secs),
        "ksink" => kernel_sink(&args[1], secs),
        other => panic!("unknown role {other}"),
    }
}

/// Warm-up before measuring, and how long the generator outlives the
/// measurement window.
const WARMUP: Duration = Duration::from_millis(500);

fn generator(mut ch: Channel, secs: u64, credit: Option<Credit>) {
    use std::sync::atomic::Ordering;
    let f = frame(SINK_MAC, GEN_MAC);
    // In closed loop the generator shares its CPU with the sink: hand over
    // at once when the window is full.
    // Waiting for credit is not a doorbell wake-up: only yield, never sleep.
    let mut waiter = match credit {
        Some(_) => Waiter::with_policy(Policy {
            spin: 0,
            yield_for: Duration::from_secs(3600),
        }),
        None => Waiter::new(),
    };
    let end = Instant::now() + WARMUP + Duration::from_secs(secs) + Duration::from_millis(300);
    let mut sent: u64 = 0;
    let mut round: u32 = 0;
    loop {
        let room = match &credit {
            Some(c) => WINDOW.saturating_sub(sent - c.counter().load(Ordering::Acquire)),
            None => BATCH as u64,
        };
        let mut n = 0;
        while n < room.min(BATCH as u64) && Endpoint::send(&mut ch, &f).is_ok() {
            n += 1;
        }
        ch.flush();
        sent += n;
        round = round.wrapping_add(1);
        if round.is_multiple_of(1024) && Instant::now() >= end {
            break;
        }
        let _ = waiter.wait(
            n > 0,
            std::iter::once(&mut ch),
            &[],
            Some(Duration::from_millis(10)),
        );
    }
    println!("sent {sent}");
}

fn sink(mut ch: Channel, secs: u64, credit: Option<Credit>) {
    // Announce the sink's MAC so the switch learns it (unicast from then on).
    let hello = frame(GEN_MAC, SINK_MAC);
    let _ = Endpoint::send(&mut ch, &hello);
    ch.flush();
    // Shares a CPU with the switch: hand over at once when idle.
    let mut waiter = Waiter::with_policy(Policy {
        spin: 0,
        ..Policy::default()
    });
    let start = Instant::now();
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    let mut mark: Option<(Instant, u64)> = None;
    let end = start + WARMUP + Duration::from_secs(secs);
    loop {
        let n = Endpoint::recv(&mut ch, 256, |f| bytes += f.len() as u64 + u64::from(f[0]))
            .unwrap_or(0);
        count += n as u64;
        ch.flush();
        if let Some(c) = &credit {
            c.counter()
                .store(count, std::sync::atomic::Ordering::Release);
        }
        let now = Instant::now();
        if mark.is_none() && now >= start + WARMUP {
            mark = Some((now, count));
        }
        if now >= end {
            break;
        }
        let _ = waiter.wait(
            n > 0,
            std::iter::once(&mut ch),
            &[],
            Some(Duration::from_millis(10)),
        );
    }
    let (t0, c0) = mark.expect("warm-up passed");
    let rate = (count - c0) as f64 / t0.elapsed().as_secs_f64();
    println!("rate {rate}\nbytes {bytes}");
}

// ---- the forwarding core alone -----------------------------------------

/// The same `Switch` the binary runs, over two real channels, with the
/// generator and the sink inline in one thread (no scheduling in the way):
/// fill the generator's ring, run one round, drain the sink's ring.
fn run_core() -> f64 {
    let cfg = Config::default();
    let gen_fds = create(&cfg, "core-gen").expect("create");
    let sink_fds = create(&cfg, "core-sink").expect("create");
    let mut gen = Channel::attach(gen_fds.try_clone().expect("dup"), Side::B).expect("attach");
    let mut sink = Channel::attach(sink_fds.try_clone().expect("dup"), Side::B).expect("attach");
    let mut switch: nic_switch::Switch<Channel> = nic_switch::Switch::new(256, 4096, 300);
    switch.attach(
        "nic:gen",
        Channel::attach(gen_fds, Side::A).expect("attach"),
    );
    switch.attach(
        "nic:sink",
        Channel::attach(sink_fds, Side::A).expect("attach"),
    );
    let f = frame(SINK_MAC, GEN_MAC);
    Endpoint::send(&mut sink, &frame(GEN_MAC, SINK_MAC)).expect("send");
    sink.flush();
    let mut forwarded: u64 = 0;
    let start = Instant::now();
    let mut rounds = 0u32;
    let elapsed = loop {
        let mut n = 0;
        while n < 256 && Endpoint::send(&mut gen, &f).is_ok() {
            n += 1;
        }
        gen.flush();
        switch.poll(0, |d| panic!("disconnect: {d:?}"));
        forwarded += Endpoint::recv(&mut sink, 1024, |_| {}).unwrap_or(0) as u64;
        sink.flush();
        let _ = Endpoint::recv(&mut gen, 1024, |_| {});
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(256) {
            let e = start.elapsed();
            if e >= Duration::from_secs(1) {
                break e;
            }
        }
    };
    forwarded as f64 / elapsed.as_secs_f64()
}

// ---- Linux kernel reference -----------------------------------------

/// gen (CPU 0) → veth g0 ⇄ gb → bridge br0 → sb ⇄ s0 → sink (CPU 1), in a
/// fresh namespace. Returns sink frames/s.
fn run_kernel(secs: u64) -> f64 {
    let ns = fragnet_testkit::NetNs::new("fnnicb");
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    for (end, port) in [("g0", "gb"), ("s0", "sb")] {
        ns.ip(&["link", "add", end, "type", "veth", "peer", "name", port]);
        ns.ip(&["link", "set", port, "master", "br0"]);
    }
    for dev in ["br0", "g0", "gb", "s0", "sb"] {
        let _ = ns.sh(&format!("sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1"));
        ns.ip(&["link", "set", dev, "up"]);
    }
    // Plain bridging, as a tuned setup would have it: no netfilter calls
    // for bridged frames (these sysctls exist only if br_netfilter is
    // loaded, and are per namespace).
    for family in ["iptables", "ip6tables", "arptables"] {
        let _ = ns.sh(&format!("sysctl -qw net.bridge.bridge-nf-call-{family}=0"));
    }
    let mac = SINK_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&["link", "set", "s0", "address", &mac]);
    // The links come up asynchronously: wait for both bridge ports to
    // forward and both generator/sink ends to have carrier.
    let ready = fragnet_testkit::wait_for(Duration::from_secs(5), || {
        let links =
            String::from_utf8_lossy(&ns.sh("ip link show; bridge link show").stdout).into_owned();
        let forwarding = links.matches("state forwarding").count() == 2;
        let carrier = links
            .lines()
            .filter(|l| l.contains(": g0@") || l.contains(": s0@"))
            .all(|l| l.contains("LOWER_UP"));
        forwarding && carrier
    });
    assert!(ready, "veths/bridge never came up");
    let out = ns.sh(&format!("bridge fdb add {mac} dev sb master static"));
    assert!(
        out.status.success(),
        "bridge fdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let exe = std::env::current_exe().expect("current_exe");
    let spawn = |role: &str, dev: &str, cpu: usize| {
        ns.exec(&exe)
            .args([
                "--role",
                role,
                dev,
                "-",
                "-",
                &secs.to_string(),
                &cpu.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn kernel role")
    };
    let sink = spawn("ksink", "s0", 1);
    std::thread::sleep(Duration::from_millis(100));
    let gen = spawn("kgen", "g0", 0);
    let rate = collect_rate(sink);
    report_offered(collect_output(gen), secs);
    rate
}

fn packet_socket(dev: &str, protocol: u16) -> OwnedFd {
    // SAFETY: plain socket/bind calls with valid arguments.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol.to_be()));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(dev).expect("ifname");
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(ifindex > 0, "no device {dev}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert!(
            rc == 0,
            "bind AF_PACKET: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from_raw_fd(fd)
    }
}

fn kernel_gen(dev: &str, secs: u64) {
    // Protocol 0: a send-only socket (receives nothing).
    let fd = packet_socket(dev, 0);
    let f = frame(SINK_MAC, GEN_MAC);
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: f.as_ptr() as *mut _,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid; each points at one iovec above.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let end = Instant::now() + WARMUP + Duration::from_secs(secs) + Duration::from_millis(300);
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut last_error = None;
    while Instant::now() < end {
        // SAFETY: msgs/iov stay alive and valid for the call.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            errors += 1;
            last_error = Some(std::io::Error::last_os_error());
        }
    }
    println!("sent {sent}");
    if let Some(e) = last_error {
        eprintln!("kernel generator: {errors} failed sendmmsg calls, last: {e}");
    }
}

fn kernel_sink(dev: &str, secs: u64) {
    let fd = packet_socket(dev, u16::from_be_bytes(ETHERTYPE));
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let size: i32 = 8 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            4,
        );
    }
    let mut bufs = vec![[0u8; 128]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid; each points at one iovec above.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + WARMUP + Duration::from_secs(secs);
    let mut count: u64 = 0;
    let mut mark: Option<(Instant, u64)> = None;
    loop {
        // SAFETY: msgs/iov/bufs stay alive and valid for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            count += n as u64;
        }
        let now = Instant::now();
        if mark.is_none() && now >= start + WARMUP {
            mark = Some((now, count));
        }
        if now >= end {
            break;
        }
    }
    let (t0, c0) = mark.expect("warm-up passed");
    let rate = (count - c0) as f64 / t0.elapsed().as_secs_f64();
    println!("rate {rate}");
}
