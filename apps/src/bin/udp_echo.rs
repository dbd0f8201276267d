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
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

fn main() -> std::io::Result<()> {
    let opt = Opt::parse_from(args_with_config());
    let stack = stack(opt.net)?;
    let sock = Udp::bind(stack.as_ref(), SocketAddr::from(([0, 0, 0, 0], opt.port)))?;
    eprintln!("udp_echo: listening on port {} ({:?})", opt.port, opt.net);
    let batch = opt.batch.clamp(1, 256);
    let mut store = vec![[0u8; 2048]; batch];
    let mut meta = vec![fragnet::RecvMeta::default(); batch];
    loop {
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| &mut b[..]).collect();
        let n = sock.recv_batch(&mut bufs, &mut meta)?;
        let msgs: Vec<(&[u8], SocketAddr)> = (0..n)
            .map(|k| (&store[k][..meta[k].len], meta[k].addr))
            .collect();
        sock.send_batch(&msgs)?;
    }
}
