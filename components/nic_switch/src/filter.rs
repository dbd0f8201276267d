//! The filter hook: the `bridge` family `forward` hook of nftables.
//!
//! [`Filter::forward`] is called once per frame and egress port, after the
//! MAC lookup and before the copy. Today it passes everything: the
//! `nft_filter` library (bridge family, forward hook) is being built
//! separately and will be wired in here, with the ruleset swapped in
//! between rounds by the `nft` control verb (which answers
//! `error\nnot supported yet` until then).

use crate::mac_table::PortId;

/// The filter's decision for one frame on one egress port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the frame.
    Pass,
    /// Drop it (counted as `drop_filtered` on the egress port).
    Drop,
}

/// The switch's ruleset (none yet: everything passes).
#[derive(Debug, Default)]
pub struct Filter {}

impl Filter {
    /// The verdict for `frame` travelling from port `ingress` to `egress`.
    #[inline]
    pub fn forward(&mut self, frame: &[u8], ingress: PortId, egress: PortId) -> Verdict {
        let _ = (frame, ingress, egress);
        Verdict::Pass
    }
}
