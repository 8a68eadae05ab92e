//! `warmer watchdog`'s settings: when a dyno's memory is too much, how long between two restarts
//! of a dyno, and which process types it watches.

use std::time::Duration;

use anyhow::bail;

use super::parse::{duration, list};

/// `WARMER_WATCHDOG_*`.
#[derive(Clone, Debug)]
pub struct WatchdogConfig {
    pub threshold: Threshold,
    pub restart_window: Duration,
    /// Process types watched.
    pub dynos: Vec<String>,
}

/// The process types `warmer watchdog` watches unless told otherwise: warmer's own.
const WATCHED_BY_DEFAULT: &str = "checkout,refill,reconcile,web,autoscale";

impl WatchdogConfig {
    /// From `WARMER_WATCHDOG_THRESHOLD`, `_RESTART_WINDOW` and `_DYNOS`.
    pub(super) fn read(
        threshold: Option<String>,
        restart_window: Option<String>,
        dynos: Option<String>,
    ) -> anyhow::Result<Self> {
        let threshold = match threshold {
            None => Threshold::Fraction(0.9),
            Some(value) => Threshold::parse(&value).ok_or_else(|| {
                anyhow::anyhow!(
                    "WARMER_WATCHDOG_THRESHOLD must be a share of the dyno's quota such as `90%` or megabytes such as `400MB`, got `{value}`"
                )
            })?,
        };
        let dynos = list(dynos.as_deref().unwrap_or(WATCHED_BY_DEFAULT));
        if let Some(bad) = dynos.iter().find(|d| {
            !d.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        }) {
            bail!(
                "WARMER_WATCHDOG_DYNOS must list process types (lowercase, as in the Procfile), got `{bad}`"
            );
        }
        Ok(WatchdogConfig {
            threshold,
            restart_window: duration("WARMER_WATCHDOG_RESTART_WINDOW", restart_window, 30 * 60)?,
            dynos,
        })
    }
}

/// When a dyno's memory is too much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Of the dyno's quota (`90%`).
    Fraction(f64),
    /// Absolute (`400MB`).
    Megabytes(f64),
}

impl Threshold {
    /// `90%` or `400MB` (`MB` may be omitted; `GB` allowed).
    pub fn parse(value: &str) -> Option<Threshold> {
        let value = value.trim();
        if let Some(percent) = value.strip_suffix('%') {
            let percent: f64 = percent.trim().parse().ok()?;
            return (percent > 0.0 && percent <= 100.0)
                .then(|| Threshold::Fraction(percent / 100.0));
        }
        let (number, factor) = if let Some(gb) = value.strip_suffix("GB") {
            (gb, 1024.0)
        } else {
            (value.strip_suffix("MB").unwrap_or(value), 1.0)
        };
        let megabytes: f64 = number.trim().parse().ok()?;
        (megabytes.is_finite() && megabytes > 0.0)
            .then_some(Threshold::Megabytes(megabytes * factor))
    }

    /// Whether `total_mb` reaches it; a fraction needs the quota.
    pub fn reached(&self, total_mb: f64, quota_mb: Option<f64>) -> bool {
        match *self {
            Threshold::Fraction(fraction) => quota_mb.is_some_and(|q| total_mb >= fraction * q),
            Threshold::Megabytes(megabytes) => total_mb >= megabytes,
        }
    }
}
