//! frame_endpoint (work in progress)
mod config;
mod responder;
fn main() {}
