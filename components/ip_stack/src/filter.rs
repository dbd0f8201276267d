//! The packet filter hook points of the stack.
//!
//! `input` runs on every IP packet that passed classification, before
//! smoltcp delivers it to a socket; `output` on every frame smoltcp built,
//! before it is queued on the NIC channel. With no ruleset loaded (the only
//! state until the `nft_filter` library is linked in) both are a single
//! branch on `None`.

/// A filter's decision on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    // Produced once a ruleset can be loaded (nft_filter).
    #[allow(dead_code)]
    Drop,
}

/// The stack's filter slot. `ruleset` will hold the compiled `nft_filter`
/// program (swapped at a batch boundary by the `nft` control verb).
#[derive(Default)]
pub struct Filter {
    ruleset: Option<()>,
}

impl Filter {
    /// Input hook: `frame` is a whole Ethernet frame addressed to us.
    #[inline]
    pub fn input(&mut self, frame: &[u8]) -> Verdict {
        match self.ruleset {
            None => Verdict::Accept,
            Some(()) => {
                let _ = frame;
                Verdict::Accept
            }
        }
    }

    /// Output hook: `frame` is a whole Ethernet frame about to be sent.
    #[inline]
    pub fn output(&mut self, frame: &[u8]) -> Verdict {
        match self.ruleset {
            None => Verdict::Accept,
            Some(()) => {
                let _ = frame;
                Verdict::Accept
            }
        }
    }

    /// The `nft` control verb; answered once the filter library lands.
    pub fn control(&mut self, _body: &str) -> String {
        "error\nnot supported yet".to_string()
    }
}
