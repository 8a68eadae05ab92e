//! The watchdog's decisions: a pure function of what the log stream said and when, so every
//! rule is unit-tested here. No I/O.
//!
//! - A watched dyno is restarted when its memory reaches the threshold (a fraction of its quota,
//!   or megabytes), or on `R14` (it swaps). `R15` is Heroku's own kill: nothing to do.
//! - Never the same dyno twice within the restart window.
//! - Never two dynos of one process type at once: after a restart, the others of its type wait
//!   until the restarted dyno reports again (its replacement is up) or [`ROLLING_TIMEOUT_MS`]
//!   passes, so a leak common to a whole type is rolled through it one dyno at a time.

use std::collections::HashMap;

use super::logline::{Sighting, process_type};
use crate::config::Threshold;

/// A sample this long after a restart comes from the replacement (the old process may still
/// report while it drains for up to 30 s).
pub const SETTLED_MS: u64 = 30_000;
/// A restarted dyno that never reports again (scaled down, crashed) holds its type this long.
pub const ROLLING_TIMEOUT_MS: u64 = 5 * 60_000;

/// Why a dyno is (or would be) restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Memory,
    R14,
}

impl Reason {
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Memory => "memory",
            Reason::R14 => "r14",
        }
    }
}

/// What to do about a sighting.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Nothing,
    Restart(Reason),
    /// Restarted this long ago (ms), within the window.
    HeldByWindow(Reason, u64),
    /// Another dyno of its type is restarting.
    HeldByRolling(Reason, String),
}

/// What the watchdog remembers between sightings.
#[derive(Debug)]
pub struct Watch {
    threshold: Threshold,
    window_ms: u64,
    watched: Vec<String>,
    /// Dyno → when it was last restarted (ms).
    restarted: HashMap<String, u64>,
    /// Process type → the dyno restarting and since when (ms).
    rolling: HashMap<String, (String, u64)>,
}

impl Watch {
    pub fn new(threshold: Threshold, window_ms: u64, watched: Vec<String>) -> Self {
        Self {
            threshold,
            window_ms,
            watched,
            restarted: HashMap::new(),
            rolling: HashMap::new(),
        }
    }

    /// Whether the dyno's process type is watched.
    pub fn watches(&self, dyno: &str) -> bool {
        let process = process_type(dyno);
        self.watched.iter().any(|w| w == process)
    }

    pub fn decide(&mut self, sighting: &Sighting, now_ms: u64) -> Decision {
        let dyno = sighting.dyno();
        if !self.watches(dyno) {
            return Decision::Nothing;
        }
        let process = process_type(dyno);
        if let Some((restarting, since)) = self.rolling.get(process) {
            let back = restarting == dyno
                && matches!(sighting, Sighting::Memory { .. })
                && now_ms.saturating_sub(*since) >= SETTLED_MS;
            if back || now_ms.saturating_sub(*since) >= ROLLING_TIMEOUT_MS {
                self.rolling.remove(process);
            }
        }
        let reason = match sighting {
            Sighting::Memory {
                total_mb, quota_mb, ..
            } => self
                .threshold
                .reached(*total_mb, *quota_mb)
                .then_some(Reason::Memory),
            Sighting::R14 { .. } => Some(Reason::R14),
            Sighting::R15 { .. } => None,
        };
        let Some(reason) = reason else {
            return Decision::Nothing;
        };
        if let Some(at) = self.restarted.get(dyno) {
            let ago = now_ms.saturating_sub(*at);
            if ago < self.window_ms {
                return Decision::HeldByWindow(reason, ago);
            }
        }
        if let Some((other, _)) = self.rolling.get(process) {
            return Decision::HeldByRolling(reason, other.clone());
        }
        Decision::Restart(reason)
    }

    /// Records a restart the API accepted.
    pub fn restarted(&mut self, dyno: &str, now_ms: u64) {
        self.restarted.insert(dyno.to_string(), now_ms);
        self.rolling
            .insert(process_type(dyno).to_string(), (dyno.to_string(), now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn memory(dyno: &str, total_mb: f64) -> Sighting {
        Sighting::Memory {
            dyno: dyno.into(),
            total_mb,
            quota_mb: Some(512.0),
        }
    }

    fn watch() -> Watch {
        Watch::new(
            Threshold::Fraction(0.9),
            30 * MINUTE,
            vec!["web".into(), "checkout".into()],
        )
    }

    #[test]
    fn thresholds_parse_as_fractions_or_megabytes() {
        assert_eq!(Threshold::parse("90%"), Some(Threshold::Fraction(0.9)));
        assert_eq!(Threshold::parse("400MB"), Some(Threshold::Megabytes(400.0)));
        assert_eq!(Threshold::parse(" 400 "), Some(Threshold::Megabytes(400.0)));
        assert_eq!(Threshold::parse("1GB"), Some(Threshold::Megabytes(1024.0)));
        for bad in ["", "0%", "101%", "-5MB", "lots", "NaN", "inf", "90 percent"] {
            assert_eq!(Threshold::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_dyno_over_the_threshold_is_restarted_once_within_its_window() {
        let mut watch = watch();
        assert_eq!(watch.decide(&memory("web.1", 400.0), 0), Decision::Nothing);
        assert_eq!(
            watch.decide(&memory("web.1", 470.0), MINUTE),
            Decision::Restart(Reason::Memory)
        );
        watch.restarted("web.1", MINUTE);
        assert_eq!(
            watch.decide(&memory("web.1", 500.0), 10 * MINUTE),
            Decision::HeldByWindow(Reason::Memory, 9 * MINUTE)
        );
        assert_eq!(
            watch.decide(&memory("web.1", 500.0), 31 * MINUTE),
            Decision::Restart(Reason::Memory),
            "the window is over"
        );
    }

    #[test]
    fn never_two_dynos_of_one_type_at_once() {
        let mut watch = watch();
        watch.restarted("web.1", 0);
        assert_eq!(
            watch.decide(&memory("web.2", 500.0), 10_000),
            Decision::HeldByRolling(Reason::Memory, "web.1".into())
        );
        // Another type is not held.
        assert_eq!(
            watch.decide(&memory("checkout.1", 500.0), 10_000),
            Decision::Restart(Reason::Memory)
        );
        // The old web.1 reports while it drains: still rolling.
        assert_eq!(
            watch.decide(&memory("web.1", 100.0), 20_000),
            Decision::Nothing
        );
        assert!(matches!(
            watch.decide(&memory("web.2", 500.0), 25_000),
            Decision::HeldByRolling(..)
        ));
        // Its replacement reports: web.2's turn.
        assert_eq!(
            watch.decide(&memory("web.1", 40.0), 45_000),
            Decision::Nothing
        );
        assert_eq!(
            watch.decide(&memory("web.2", 500.0), 46_000),
            Decision::Restart(Reason::Memory)
        );
    }

    #[test]
    fn a_restarted_dyno_that_never_reports_releases_its_type_after_the_timeout() {
        let mut watch = watch();
        watch.restarted("web.1", 0);
        assert!(matches!(
            watch.decide(&memory("web.2", 500.0), ROLLING_TIMEOUT_MS - 1),
            Decision::HeldByRolling(..)
        ));
        assert_eq!(
            watch.decide(&memory("web.2", 500.0), ROLLING_TIMEOUT_MS),
            Decision::Restart(Reason::Memory)
        );
    }

    #[test]
    fn r14_restarts_r15_does_not_and_unwatched_types_are_left_alone() {
        let mut watch = watch();
        assert_eq!(
            watch.decide(
                &Sighting::R14 {
                    dyno: "web.3".into()
                },
                0
            ),
            Decision::Restart(Reason::R14)
        );
        assert_eq!(
            watch.decide(
                &Sighting::R15 {
                    dyno: "web.3".into()
                },
                0
            ),
            Decision::Nothing
        );
        assert_eq!(
            watch.decide(&memory("run.1234", 999.0), 0),
            Decision::Nothing
        );
        assert_eq!(
            watch.decide(&memory("refill.1", 999.0), 0),
            Decision::Nothing
        );
    }

    #[test]
    fn a_fraction_needs_the_quota_and_megabytes_do_not() {
        let no_quota = Sighting::Memory {
            dyno: "web.1".into(),
            total_mb: 600.0,
            quota_mb: None,
        };
        assert_eq!(watch().decide(&no_quota, 0), Decision::Nothing);
        let mut absolute = Watch::new(Threshold::Megabytes(400.0), MINUTE, vec!["web".into()]);
        assert_eq!(
            absolute.decide(&no_quota, 0),
            Decision::Restart(Reason::Memory)
        );
        assert_eq!(
            absolute.decide(&memory("web.2", 399.0), 0),
            Decision::Nothing
        );
    }
}
