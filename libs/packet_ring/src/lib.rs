//! packet_ring (work in progress)
