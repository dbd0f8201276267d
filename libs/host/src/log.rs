//! Logging: one `[name] level: message` line per call on stderr.
//!
//! The threshold comes from `FRAGNET_LOG` (`error`, `warn`, `info` (the
//! default), `debug`, `trace`, or `off`), read once. The name is set with
//! [`init`] (components use their `FRAGNET_NAME`); before that, the
//! executable's name is used. Use the macros [`error!`](crate::error),
//! [`warn!`](crate::warn), [`info!`](crate::info) and [`debug!`](crate::debug):
//!
//! ```
//! fragnet_host::log::init("kv0_stack");
//! fragnet_host::info!("link up on {}", "nic");
//! ```

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Severity of a log line; lower is more severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

static NAME: OnceLock<String> = OnceLock::new();
/// 0 = not read yet; otherwise threshold + 1 (so `off` is 1).
static THRESHOLD: AtomicU8 = AtomicU8::new(0);

/// Parses a `FRAGNET_LOG` value into a threshold (0 = off).
pub fn parse_level(s: &str) -> Option<u8> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "0" => 0,
        "error" | "1" => 1,
        "warn" | "warning" | "2" => 2,
        "info" | "3" | "" => 3,
        "debug" | "4" => 4,
        "trace" | "5" => 5,
        _ => return None,
    })
}

fn threshold() -> u8 {
    let t = THRESHOLD.load(Ordering::Relaxed);
    if t != 0 {
        return t - 1;
    }
    let level = std::env::var("FRAGNET_LOG")
        .ok()
        .and_then(|v| parse_level(&v))
        .unwrap_or(Level::Info as u8);
    THRESHOLD.store(level + 1, Ordering::Relaxed);
    level
}

/// Sets the name printed in front of every line (first call wins).
pub fn init(name: &str) {
    let _ = NAME.set(name.to_string());
    let _ = threshold();
}

/// Overrides the threshold read from `FRAGNET_LOG`.
pub fn set_level(level: Option<Level>) {
    THRESHOLD.store(level.map_or(0, |l| l as u8) + 1, Ordering::Relaxed);
}

/// Whether lines of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= threshold()
}

fn name() -> &'static str {
    NAME.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "fragnet".to_string())
    })
}

/// Writes one line (used by the macros).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    // Format into one buffer so the line reaches stderr in one write and
    // lines of processes sharing the terminal do not interleave.
    let line = format!("[{}] {}: {}\n", name(), level.as_str(), args);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs at error level: `fragnet_host::error!("…", …)`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("debug"), Some(4));
        assert_eq!(parse_level("OFF"), Some(0));
        assert_eq!(parse_level("Warn"), Some(2));
        assert_eq!(parse_level("loud"), None);
    }
}
