//! `warmer autoscale`'s settings: how often it looks, and each process type's bounds.

use anyhow::bail;

use super::parse::number;

/// How `warmer autoscale` scales one process type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleLimits {
    pub min: u32,
    pub max: u32,
    /// The backlog one dyno takes on (heroku-proc-scalar's `COUNT_BOUNDARY`); `None`: the
    /// type's own (checkout's prefetch, refill's boot concurrency).
    pub per_dyno: Option<u32>,
}

/// `WARMER_AUTOSCALE_<PROCESS>_MIN`, `_MAX` and `_PER_DYNO`: min defaults to 1 and may not go
/// below `lowest`; max defaults to `default_max` (`WARMER_AUTOSCALE_MAX`).
pub(super) fn scale_limits(
    process: &str,
    lowest: u32,
    default_max: u32,
    [min, max, per_dyno]: [Option<String>; 3],
) -> anyhow::Result<ScaleLimits> {
    let var = |suffix: &str| format!("WARMER_AUTOSCALE_{process}_{suffix}");
    let min = match min {
        None => 1,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= lowest => n,
            _ if lowest > 0 => bail!(
                "{} must be a whole number of at least {lowest}, got `{v}` (at 0, a request would wait for the next check and a dyno's start)",
                var("MIN")
            ),
            _ => bail!("{} must be a whole number, got `{v}`", var("MIN")),
        },
    };
    let max = number(&var("MAX"), max, default_max)?;
    if min > max {
        bail!("{} ({min}) is above {} ({max})", var("MIN"), var("MAX"));
    }
    let per_dyno = per_dyno
        .map(|v| number(&var("PER_DYNO"), Some(v), 1))
        .transpose()?;
    Ok(ScaleLimits { min, max, per_dyno })
}
