//! Time, owned here: the system's clock, or one a test sets. A process decides with one `now`
//! read from its [`Clock`] (a reconcile pass sizes, snapshots and applies with the same one).
//! Times stored in Redis and sent in messages are milliseconds since the Unix epoch; labels,
//! pool entries and policies use seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by the system's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch, by the system's clock.
pub fn now_secs() -> u64 {
    secs(now_ms())
}

/// Milliseconds in `duration`, for times kept as milliseconds.
pub fn ms(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// Whole seconds in a time or a span kept as milliseconds: the one place milliseconds become
/// seconds.
pub fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Seconds with their fraction in a span kept as milliseconds (as `/metrics` writes them).
pub fn secs_f64(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A clock: the system's, or a manual one that says what a test sets it to.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that says `at` (Unix seconds) until it is [`Self::set`].
    pub fn manual(at: u64) -> Self {
        Clock(Some(Arc::new(AtomicU64::new(at * 1000))))
    }

    /// Sets a manual clock to `at` (Unix seconds); the system's is not set.
    pub fn set(&self, at: u64) {
        if let Some(clock) = &self.0 {
            clock.store(at * 1000, Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.0
            .as_ref()
            .map_or_else(now_ms, |clock| clock.load(Ordering::SeqCst))
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        secs(self.now_ms())
    }
}
