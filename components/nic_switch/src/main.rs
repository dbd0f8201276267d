//! nic_switch (work in progress)
fn main() {}
