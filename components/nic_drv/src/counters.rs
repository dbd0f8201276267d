//! Named counters of the driver: frames and bytes per direction, drops per
//! reason. Reported by the `stats` control verb as `key value` lines.

/// Why the driver dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The destination channel had no free buffer (client too slow).
    ChannelFull,
    /// Longer than the destination's buffers.
    TooLong,
    /// Shorter than an Ethernet header.
    Malformed,
    /// The TAP device's queue was full (write returned EAGAIN).
    TapFull,
    /// Another error writing to the TAP device.
    TapError,
    /// The other end is not connected (no client channel, or the wire's
    /// far side is gone).
    LinkDown,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::ChannelFull,
        DropReason::TooLong,
        DropReason::Malformed,
        DropReason::TapFull,
        DropReason::TapError,
        DropReason::LinkDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::ChannelFull => "channel_full",
            DropReason::TooLong => "too_long",
            DropReason::Malformed => "malformed",
            DropReason::TapFull => "tap_full",
            DropReason::TapError => "tap_error",
            DropReason::LinkDown => "link_down",
        }
    }
}

/// Counters of one direction of the driver.
#[derive(Debug, Default, Clone)]
pub struct Direction {
    pub frames: u64,
    pub bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Direction {
    #[inline]
    pub fn pass(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len as u64;
    }

    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Appends `<prefix>_frames`, `<prefix>_bytes` and
    /// `<prefix>_drop_<reason>` lines.
    pub fn report(&self, prefix: &str, out: &mut String) {
        out.push_str(&format!(
            "{prefix}_frames {}\n{prefix}_bytes {}\n",
            self.frames, self.bytes
        ));
        for r in DropReason::ALL {
            out.push_str(&format!("{prefix}_drop_{} {}\n", r.name(), self.dropped(r)));
        }
    }
}
