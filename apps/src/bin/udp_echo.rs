//! udp_echo: sends every datagram back to its sender, in batches.
//!
//! `udp_echo [--port 7] [--net fragnet|kernel]`; under init the options can
//! be `<config port="7"/>` attributes.

use std::net::SocketAddr;

use clap::Parser;
use fragnet_apps::{args_with_config, stack, Net, Udp};

#[derive(Parser)]
struct Opt {
    #[arg(long, default_value_t = 7)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Net::Fragnet)]
    net: Net,
}

fn main() -> std::io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    let stack = stack(opt.net)?;
    let sock = Udp::bind(stack.as_ref(), SocketAddr::from(([0, 0, 0, 0], opt.port)))?;
    eprintln!("udp_echo: listening on port {} ({:?})", opt.port, opt.net);
    // No allocation per batch: the slices are rebuilt on the stack.
    let mut arena = vec![0u8; BATCH * SLOT];
    let mut meta = [fragnet::RecvMeta::default(); BATCH];
    loop {
        let n = {
            let mut it = arena.chunks_mut(SLOT);
            let mut bufs: [&mut [u8]; BATCH] =
                std::array::from_fn(|_| it.next().unwrap_or_default());
            sock.recv_batch(&mut bufs, &mut meta)?
        };
        let mut it = arena.chunks(SLOT).zip(meta.iter());
        let msgs: [(&[u8], SocketAddr); BATCH] = std::array::from_fn(|_| match it.next() {
            Some((b, m)) => (&b[..m.len], m.addr),
            None => (&[][..], meta[0].addr),
        });
        sock.send_batch(&msgs[..n])?;
    }
}

const BATCH: usize = 32;
const SLOT: usize = 2048;
