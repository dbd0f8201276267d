//! fragnet (work in progress)
