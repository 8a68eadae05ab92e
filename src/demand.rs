//! Demand as `checkout.lua` records it and the sizer reads it: arrivals (checkouts and misses)
//! counted per [`BUCKET_SECS`] bucket, one Redis hash per pool and UTC day.

use std::collections::BTreeMap;

/// Width of a demand bucket, in seconds.
pub const BUCKET_SECS: u64 = 10;
const DAY: u64 = 86_400;

/// Arrivals per bucket, keyed by the bucket's start (Unix seconds, a multiple of the width).
pub type Demand = BTreeMap<u64, u32>;

/// The window of the arrival rate `/metrics` shows (seconds).
pub const RATE_SECS: u64 = 900;

/// Arrivals per minute over the [`RATE_SECS`] up to `now` (Unix seconds), to a tenth.
pub fn per_minute(demand: &Demand, now: u64) -> f64 {
    let from = now.saturating_sub(RATE_SECS);
    let arrivals: u64 = demand.range(from..=now).map(|(_, n)| u64::from(*n)).sum();
    (arrivals as f64 * 60.0 / RATE_SECS as f64 * 10.0).round() / 10.0
}

/// The UTC day of `now_ms`, as in a demand key's name.
pub fn day(now_ms: u64) -> u64 {
    crate::clock::secs(now_ms) / DAY
}

/// The bucket of `now_ms` within its day, as in a demand hash's field.
pub fn bucket(now_ms: u64) -> u64 {
    crate::clock::secs(now_ms) % DAY / BUCKET_SECS
}
