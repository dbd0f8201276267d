//! fragnet (work in progress)
fn main() {}
