//! fragnet_host (work in progress)
