//! travis-ci/warmer's HTTP API on `warmer web`: on when `WARMER_AUTH_TOKENS` is set; how long a
//! client waits for its answer, and how much one token may ask for.

use std::time::Duration;

use super::parse::{duration, number};

/// `WARMER_HTTP_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpApiConfig {
    /// How long a client waits for `POST /request-instance` (the travis worker's
    /// `WARMER_TIMEOUT`, 5 s by default): an answer finished later reached nobody, so its VM
    /// is never counted handed out.
    pub timeout: Duration,
    /// Checkouts per minute one token may ask for (a burst of a tenth of it at once).
    pub per_minute: u32,
    /// Checkouts one token may have in flight at once.
    pub concurrency: u32,
}

impl HttpApiConfig {
    /// From `WARMER_HTTP_TIMEOUT`, `WARMER_HTTP_CHECKOUTS_PER_MINUTE` and
    /// `WARMER_HTTP_CONCURRENCY`.
    pub(super) fn read(
        timeout: Option<String>,
        per_minute: Option<String>,
        concurrency: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(HttpApiConfig {
            timeout: duration("WARMER_HTTP_TIMEOUT", timeout, 5)?,
            per_minute: number("WARMER_HTTP_CHECKOUTS_PER_MINUTE", per_minute, 600)?,
            concurrency: number("WARMER_HTTP_CONCURRENCY", concurrency, 32)?,
        })
    }
}
