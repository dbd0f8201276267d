//! nic_drv (work in progress)
fn main() {}
