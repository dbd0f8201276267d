//! frame_endpoint (work in progress)
fn main() {}
