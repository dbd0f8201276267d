//! garbage_client: a hostile application for the stack's robustness tests.
//!
//! Writes `--garbage N` malformed messages on its socket channel (short
//! ones, unknown ops, events the application may not send, unknown socket
//! ids, absurd credit), reports how many error answers came back, then
//! behaves: binds UDP `--port` and echoes, proving the stack still serves
//! it. With N beyond the stack's violation limit the stack disconnects it,
//! and the echo phase fails (exit code 3).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use fragnet::proto::{Msg, Op, HDR_LEN};
use fragnet_apps::{args_with_config, report};

#[derive(Parser)]
struct Opt {
    #[arg(long, default_value_t = 20)]
    garbage: u32,
    #[arg(long, default_value_t = 7)]
    port: u16,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    let stack = fragnet::Stack::from_env()?;
    let mut x: u32 = 0x9e37_79b9;
    for k in 0..opt.garbage {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut m = [0u8; HDR_LEN + 16];
        for (i, b) in m.iter_mut().enumerate() {
            *b = (x >> (i % 4 * 8)) as u8 ^ i as u8;
        }
        let bytes: Vec<u8> = match k % 5 {
            0 => m[..(x % HDR_LEN as u32) as usize].to_vec(),
            1 => {
                m[0] = 0x42;
                m.to_vec()
            }
            2 => {
                let mut b = [0u8; HDR_LEN];
                Msg::new(Op::Accepted).sock(x).emit(&mut b);
                b.to_vec()
            }
            3 => {
                let mut b = [0u8; HDR_LEN + 8];
                Msg::new(Op::Send).sock(x | 0x8000_0000).emit(&mut b);
                b.to_vec()
            }
            _ => {
                let mut b = [0u8; HDR_LEN];
                Msg::new(Op::Bind).sock(x).tag(7).emit(&mut b);
                b.to_vec()
            }
        };
        stack.send_raw_for_tests(&bytes)?;
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        stack.poll()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let line = format!(
        "garbage sent={} errors={}",
        opt.garbage,
        stack.errors_received()
    );
    report(opt.out.as_deref(), &line);
    let sock = match fragnet::UdpSocket::bind(&stack, SocketAddr::from(([0, 0, 0, 0], opt.port))) {
        Ok(s) => s,
        Err(e) => {
            report(opt.out.as_deref(), &format!("{line} bind_error={e}"));
            std::process::exit(3);
        }
    };
    report(opt.out.as_deref(), &format!("{line} serving=yes"));
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], from)?;
    }
}
