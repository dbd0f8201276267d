//! The socket library against a scripted stack on a real memfd channel:
//! completions, data delivery, WouldBlock, and the doorbell fd that an
//! event loop polls.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use fragnet::proto::{Msg, Op, HDR_LEN, KIND_UDP};
use fragnet::{Stack, UdpSocket};
use packet_ring::linux::{create, Channel};
use packet_ring::{Config, Endpoint, Side};

/// A minimal stack side: answers Open/Bind, records Sends.
fn serve(ch: &mut Channel, sends: &mut Vec<(Msg, Vec<u8>)>) {
    let mut replies = Vec::new();
    let _ = ch.recv(64, |buf| {
        let (m, payload) = Msg::parse(buf).expect("library sent a valid message");
        match m.op {
            Op::Open => {
                assert_eq!(m.aux, KIND_UDP);
                replies.push(Msg::new(Op::Done).tag(m.tag).sock(0x10005));
            }
            Op::Bind => replies.push(
                Msg::new(Op::Done)
                    .tag(m.tag)
                    .sock(m.sock)
                    .addr("10.0.0.2:7".parse().unwrap()),
            ),
            Op::Send => sends.push((m, payload.to_vec())),
            _ => {}
        }
    });
    for r in replies {
        let mut b = [0u8; HDR_LEN];
        r.emit(&mut b);
        ch.send(&b).unwrap();
    }
    ch.flush();
}

fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn udp_over_a_scripted_stack() {
    let fds = create(&Config::default(), "fnstk-test").unwrap();
    let mut stack_side = Channel::attach(fds.try_clone().unwrap(), Side::A).unwrap();
    let app = Stack::attach(fds, Side::B).unwrap();
    let mut sends = Vec::new();

    // The stack runs in this thread: serve between the library's calls by
    // letting a helper thread drive the app while we answer.
    let t = std::thread::spawn(move || {
        let mut sends = Vec::new();
        for _ in 0..2000 {
            serve(&mut stack_side, &mut sends);
            if !sends.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (stack_side, sends)
    });
    let sock = UdpSocket::bind(&app, "0.0.0.0:7".parse().unwrap()).unwrap();
    assert_eq!(
        sock.local_addr().unwrap(),
        "10.0.0.2:7".parse::<SocketAddr>().unwrap()
    );
    sock.send_to(b"ping", "10.0.0.9:99".parse().unwrap())
        .unwrap();
    let (mut stack_side, s) = t.join().unwrap();
    sends.extend(s);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0.sock, 0x10005);
    assert_eq!(sends[0].0.addr, "10.0.0.9:99".parse().unwrap());
    assert_eq!(sends[0].1, b"ping");

    // Nothing there: WouldBlock, and the armed doorbell is quiet.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        sock.recv_from(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    assert!(!app.prepare_wait());
    assert!(!readable(app.as_raw_fd(), 0));

    // The stack delivers a datagram: the doorbell rings, recv gets it.
    let mut m = [0u8; HDR_LEN + 5];
    Msg::new(Op::Data)
        .sock(0x10005)
        .addr("10.0.0.9:99".parse().unwrap())
        .emit(&mut m);
    m[HDR_LEN..].copy_from_slice(b"hello");
    Endpoint::send(&mut stack_side, &m).unwrap();
    stack_side.flush();
    assert!(readable(app.as_raw_fd(), 1000), "doorbell not rung");
    app.poll().unwrap();
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from, "10.0.0.9:99".parse::<SocketAddr>().unwrap());
}
