//! The process types: what `warmer <command>` runs for good, a Procfile line each, and the name
//! the logs, the connection names, HireFire and the autoscaler know it by.

use std::fmt;

/// Checkout requests one checkout process handles at once (its channel's prefetch): also what
/// one checkout dyno takes on, for scaling.
pub const CHECKOUT_PREFETCH: u16 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcessType {
    Checkout,
    Refill,
    Reconcile,
    Web,
    Autoscale,
    Watchdog,
    /// Every process of the local provider in one (`warmer dev`).
    Dev,
}

impl ProcessType {
    /// The consumer types: those scaled by the depth of what they consume.
    pub const CONSUMERS: [ProcessType; 2] = [ProcessType::Checkout, ProcessType::Refill];

    pub fn name(self) -> &'static str {
        match self {
            ProcessType::Checkout => "checkout",
            ProcessType::Refill => "refill",
            ProcessType::Reconcile => "reconcile",
            ProcessType::Web => "web",
            ProcessType::Autoscale => "autoscale",
            ProcessType::Watchdog => "watchdog",
            ProcessType::Dev => "dev",
        }
    }
}

impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who runs this process, for the history of changes: the dyno on Heroku, else `user@host`.
pub fn actor() -> String {
    if let Ok(dyno) = std::env::var("DYNO") {
        return format!("dyno {dyno}");
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}
