//! ip_stack (work in progress)
fn main() {}
