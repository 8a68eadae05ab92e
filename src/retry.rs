//! How warmer retries, in one place: one backoff policy per kind of dependency (backon), used
//! wherever that dependency is retried. What counts as worth retrying stays with each caller,
//! which knows its errors.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Redis, within a request's `budget`: from 50 ms doubling to 1 s, jittered, until `budget` is
/// spent (a request's answer must not wait longer than its requester does).
pub fn redis(budget: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(budget))
        .without_max_times()
}

/// A broker session (connect, declare, consume): from 250 ms doubling to 30 s, jittered,
/// forever; a supervisor starts it again after a session that lasted.
pub fn broker() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
}

/// A Compute Engine call (rate limits, 5xx, transport): from 200 ms doubling to 20 s, jittered,
/// at most 2 minutes in all (a `Retry-After` or a per-minute quota adjusts a delay).
pub fn compute_engine() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_total_delay(Some(Duration::from_secs(120)))
        .without_max_times()
}

/// Following the Heroku logs again after a failure: from 1 s doubling to 60 s, forever (a
/// `Retry-After` asks for longer).
pub fn heroku_logs() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times()
}
