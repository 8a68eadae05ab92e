//! Deleting the VMs recorded in `orphaned`, as fast as the cloud's rate limits allow: shared by
//! the refill consumer (prompt deletion of what it trims or fails to boot) and the reconciler
//! (everything else).
//!
//! A [`Deleter`] claims records (`claim_orphans.lua`), so deleters in several processes never
//! delete the same VM at once, and deletes their VMs with as many calls in flight as
//! Compute Engine takes: [`Pace`] adds one call per window of successes and halves after a rate
//! limit (once per window), and pauses until the limit's `Retry-After`, the next minute for a
//! per-minute quota, or a quarter of a second. A record is forgotten only once its VM is gone (404 counts);
//! a deletion that fails otherwise keeps its claim until the claim expires, so it is tried again
//! a few minutes later, never in a tight loop. Claims a deleter did not start when it stops go
//! back to `orphaned` at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::cloud::{Cloud, DeleteError, gce::until_next_minute};
use crate::events::{Event, Events};
use crate::store::{Orphan, Store, now_ms};

/// Deletions in flight at first, and at most.
const START_IN_FLIGHT: f64 = 8.0;
const MAX_IN_FLIGHT: f64 = 64.0;
/// How long a claim protects a record from other deleters: a failed deletion is retried after it.
pub const CLAIM_TTL: Duration = Duration::from_secs(300);
/// The pause after a rate limit that says nothing of when to come back.
const RATE_LIMIT_PAUSE: Duration = Duration::from_millis(250);

/// How many deletions may be in flight, learnt from the cloud's answers (additive increase,
/// multiplicative decrease), and whether a rate limit asks to wait. Pure.
#[derive(Debug, Clone)]
pub struct Pace {
    limit: f64,
    /// Bumped on each decrease: a rate limit answering a call started before the last decrease
    /// has been counted already.
    window: u64,
    resume_at: Option<Instant>,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            limit: START_IN_FLIGHT,
            window: 0,
            resume_at: None,
        }
    }
}

impl Pace {
    /// Calls that may be in flight now (0 while paused).
    pub fn allowed(&self, now: Instant) -> usize {
        match self.resume_at {
            Some(at) if at > now => 0,
            _ => self.limit as usize,
        }
    }

    /// The window a call starts in.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// How long to wait before starting calls again, if paused.
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.resume_at
            .filter(|at| *at > now)
            .map(|at| at.duration_since(now))
    }

    /// A call succeeded: about one more in flight per window of successes.
    pub fn succeeded(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit).min(MAX_IN_FLIGHT);
    }

    /// A call started in `window` was refused for the rate: half as many in flight (once per
    /// window), and none until `pause` has passed.
    pub fn rate_limited(&mut self, window: u64, now: Instant, pause: Duration) {
        if window == self.window {
            self.limit = (self.limit / 2.0).max(1.0);
            self.window += 1;
        }
        let resume = now + pause;
        self.resume_at = Some(self.resume_at.map_or(resume, |at| at.max(resume)));
    }
}

/// Deletes claimed orphans and announces each deletion; keeps its [`Pace`] between drains.
pub struct Deleter {
    store: Store,
    cloud: Cloud,
    pace: Pace,
}

/// How one deletion ended.
enum Ended {
    Deleted(Orphan),
    RateLimited(Orphan, u64, Duration),
    /// Why, for the summary line.
    Failed(String),
}

impl Deleter {
    pub fn new(store: Store, cloud: Cloud) -> Self {
        Self {
            store,
            cloud,
            pace: Pace::default(),
        }
    }

    /// Deletes recorded orphans until none is left or `deadline` passes, announcing each on
    /// `events`; returns how many were deleted. Calls in flight at the deadline are waited for;
    /// unstarted claims are released. Logs one line for the whole drain (a bulk deletion is tens
    /// of thousands of VMs), and one for its failures.
    pub async fn drain(&mut self, events: &Events, deadline: Instant) -> usize {
        let mut waiting: VecDeque<Orphan> = VecDeque::new();
        let mut calls: JoinSet<Ended> = JoinSet::new();
        let mut exhausted = false;
        let (mut deleted, mut failed) = (0, 0);
        let mut last_error = None;
        loop {
            let now = Instant::now();
            let open = now < deadline;
            let allowed = self.pace.allowed(now);
            if open && !exhausted && waiting.len() < allowed {
                let want = (2 * allowed).max(16);
                let expires = now_ms() + CLAIM_TTL.as_millis() as u64;
                match self.store.claim_orphans(want, expires).await {
                    Ok(claimed) => {
                        exhausted = claimed.len() < want;
                        waiting.extend(claimed);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "claiming orphans failed; retried later");
                        exhausted = true;
                    }
                }
            }
            while open && calls.len() < allowed {
                let Some(orphan) = waiting.pop_front() else {
                    break;
                };
                let (cloud, window) = (self.cloud.clone(), self.pace.window());
                calls.spawn(async move { delete(&cloud, orphan, window).await });
            }
            if calls.is_empty() && (!open || (waiting.is_empty() && exhausted)) {
                break;
            }
            let ended = match self.pace.paused_for(now) {
                Some(pause) if open && calls.is_empty() => {
                    tokio::time::sleep(pause.min(deadline.saturating_duration_since(now))).await;
                    continue;
                }
                _ => calls.join_next().await,
            };
            match ended {
                Some(Ok(Ended::Deleted(orphan))) => {
                    self.pace.succeeded();
                    deleted += 1;
                    self.forget(orphan, events).await;
                }
                Some(Ok(Ended::RateLimited(orphan, window, pause))) => {
                    self.pace.rate_limited(window, Instant::now(), pause);
                    waiting.push_front(orphan);
                }
                Some(Ok(Ended::Failed(error))) => {
                    failed += 1;
                    last_error = Some(error);
                }
                Some(Err(_)) | None => {}
            }
        }
        if let Err(error) = self.store.release_orphans(waiting.make_contiguous()).await {
            tracing::warn!(%error, "releasing unstarted claims failed; they expire");
        }
        if deleted > 0 {
            tracing::info!(deleted, "count#warmer.deletions" = deleted, "deleted VMs");
        }
        if let Some(last_error) = last_error {
            tracing::warn!(
                failed,
                last_error,
                "count#warmer.deletions.failed" = failed,
                "deletions failed; each is tried again once its claim expires"
            );
        }
        deleted
    }

    async fn forget(&self, orphan: Orphan, events: &Events) {
        let name = orphan.name().unwrap_or_default().to_string();
        if let Err(error) = self.store.forget_orphan(&orphan).await {
            tracing::warn!(%error, vm = %name, "deleted, but the claim stays until it expires; deleting again is harmless");
        }
        let reason = orphan.record.reason;
        tracing::debug!(vm = %name, %reason, "VM deleted");
        events
            .emit(Event::InstanceDeleted {
                instance: name,
                zone: orphan.record.zone,
                reason,
            })
            .await;
    }
}

/// One deletion, started in `window` of the pace.
async fn delete(cloud: &Cloud, orphan: Orphan, window: u64) -> Ended {
    let name = orphan.name().unwrap_or_default().to_string();
    match cloud.delete(&name, orphan.record.zone.as_deref()).await {
        Ok(()) => Ended::Deleted(orphan),
        Err(DeleteError::RateLimited {
            retry_after,
            per_minute,
        }) => {
            let pause = retry_after.unwrap_or(if per_minute {
                until_next_minute()
            } else {
                RATE_LIMIT_PAUSE
            });
            Ended::RateLimited(orphan, window, pause)
        }
        Err(DeleteError::Failed(error)) => {
            let error = format!("{name}: {}", crate::telemetry::report(&error));
            tracing::debug!(%error, "deleting an orphan failed");
            Ended::Failed(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_grows_with_successes_halves_once_per_window_and_pauses() {
        let now = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.allowed(now), 8);
        for _ in 0..9 {
            pace.succeeded();
        }
        assert_eq!(
            pace.allowed(now),
            9,
            "about one more per window of successes"
        );

        // Eight calls of the same window refused at once: one halving, not eight.
        let window = pace.window();
        for _ in 0..8 {
            pace.rate_limited(window, now, Duration::from_secs(2));
        }
        assert_eq!(pace.allowed(now), 0, "paused");
        assert_eq!(pace.paused_for(now), Some(Duration::from_secs(2)));
        let later = now + Duration::from_secs(3);
        assert_eq!(pace.allowed(later), 4);
        // A refusal in the next window halves again, never below one.
        for _ in 0..10 {
            let window = pace.window();
            pace.rate_limited(window, later, Duration::ZERO);
        }
        assert_eq!(pace.allowed(later), 1);
        for _ in 0..10_000 {
            pace.succeeded();
        }
        assert_eq!(pace.allowed(later), MAX_IN_FLIGHT as usize);
    }
}
