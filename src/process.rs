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

/// The host this process runs on, as operators know it: the dyno on Heroku (where the
/// hostname is a random id), else the hostname.
pub fn host() -> String {
    std::env::var("DYNO")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Who runs this process, for the history of changes: the dyno on Heroku, else `user@host`.
pub fn actor() -> String {
    if let Ok(dyno) = std::env::var("DYNO") {
        return format!("dyno {dyno}");
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(user_of_uid)
        .unwrap_or_else(|| "unknown".into());
    format!("{user}@{}", host())
}

/// The name of this process's user from `/etc/passwd` (where `USER` is not set: a container,
/// `sudo -E`, cron), or `uid <n>`; `None` where `/proc` is not Linux's.
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_string())
    });
    Some(name.unwrap_or_else(|| format!("uid {uid}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn whoever_runs_a_command_is_named_even_without_user_in_the_environment() {
        if cfg!(target_os = "linux") {
            let user = super::user_of_uid().expect("a uid in /proc/self/status");
            assert!(!user.is_empty() && !user.contains(':'), "{user}");
        }
        assert!(super::actor().contains('@') || super::actor().starts_with("dyno "));
    }
}
