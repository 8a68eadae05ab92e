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
//!
//! A record says only a name (and perhaps a zone), and anyone who can write to Redis can write
//! one, so a record is never taken at its word: its name and zone must be Compute Engine names,
//! and the VM must be this deployment's as the cloud shows it — in the listing the reconciler
//! took this pass (a label filter), or else looked up first (`instances.get`, in each zone of
//! the region when the record has none): labelled `warmer=<namespace>`, or travis-ci/warmer's
//! own (`warmth=warmed` and no `warmer` label; see [`crate::cloud::owner`]). Anything else is
//! *refused*: never deleted, moved to `<ns>:_refused` for an operator, logged and counted. A
//! name the cloud does not know is already gone.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::cloud::{Cloud, DeleteError, Owner, gce::until_next_minute, owner};
use crate::events::{Event, Events};
use crate::pool::{is_gce_name, resource_name};
use crate::store::{Orphan, Store};

/// VMs the cloud listed with this deployment's label, name → zone: deleting one of them needs
/// no lookup first.
pub type Listed = HashMap<String, String>;

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
    /// This deployment's namespace: its VMs' `warmer` label.
    namespace: String,
}

/// How one deletion ended.
enum Ended {
    /// Deleted, or gone already.
    Deleted(Orphan),
    RateLimited(Orphan, u64, Duration),
    /// Not this deployment's to delete: why (`invalid_name`, `foreign`).
    Refused(Orphan, &'static str),
    /// Why, for the summary line.
    Failed(String),
}

impl Deleter {
    pub fn new(store: Store, cloud: Cloud) -> Self {
        Self {
            namespace: store.names().namespace().to_string(),
            store,
            cloud,
            pace: Pace::default(),
        }
    }

    /// Deletes recorded orphans until none is left or `deadline` passes, announcing each on
    /// `events`; returns how many were deleted. `listed`: VMs the cloud has just listed with
    /// this deployment's label (the reconciler's pass), deleted without a lookup. Calls in
    /// flight at the deadline are waited for; unstarted claims are released. Logs one line for
    /// the whole drain (a bulk deletion is tens of thousands of VMs), one for its failures and
    /// one for its refusals.
    pub async fn drain(&mut self, events: &Events, deadline: Instant, listed: &Listed) -> usize {
        let mut waiting: VecDeque<Orphan> = VecDeque::new();
        let mut calls: JoinSet<Ended> = JoinSet::new();
        let mut exhausted = false;
        let (mut deleted, mut failed) = (0, 0);
        let mut last_error = None;
        let mut refused: Vec<(String, &'static str)> = Vec::new();
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
                let listed_zone = orphan.name().and_then(|name| listed.get(name)).cloned();
                let namespace = self.namespace.clone();
                calls.spawn(async move {
                    delete(&cloud, &namespace, orphan, listed_zone, window).await
                });
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
                Some(Ok(Ended::Refused(orphan, why))) => {
                    if let Err(error) = self.store.refuse_orphan(&orphan, why).await {
                        tracing::warn!(%error, "recording a refused orphan failed; it is looked at again once its claim expires");
                    }
                    let name = orphan.name().unwrap_or_default();
                    refused.push((name.chars().take(80).collect(), why));
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
        if !refused.is_empty() {
            let first = &refused[..refused.len().min(10)];
            tracing::warn!(
                refused = refused.len(),
                ?first,
                "count#warmer.deletions.refused" = refused.len(),
                "orphan records refused: not this deployment's VMs, or not Compute Engine names; nothing deleted (kept in <ns>:_refused)"
            );
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

/// One deletion, started in `window` of the pace: the record checked, the VM found to be this
/// deployment's (`listed_zone`: listed with its label this pass), then deleted.
async fn delete(
    cloud: &Cloud,
    namespace: &str,
    orphan: Orphan,
    listed_zone: Option<String>,
    window: u64,
) -> Ended {
    let name = orphan.name().unwrap_or_default().to_string();
    // A zone is a name, or a zone's URL as travis-ci/warmer wrote it.
    let zone = orphan
        .record
        .zone
        .as_deref()
        .map(|zone| resource_name(zone, "zones"))
        .transpose();
    let zone = match zone {
        Ok(zone) if is_gce_name(&name) => zone,
        _ => return Ended::Refused(orphan, "invalid_name"),
    };
    let zone = match listed_zone {
        Some(zone) => zone,
        None => match cloud.find(&name, zone).await {
            Ok(None) => return Ended::Deleted(orphan),
            Ok(Some(vm)) => match owner(&vm, namespace) {
                Owner::Us | Owner::TravisCiWarmer => vm.zone,
                Owner::Other => return Ended::Refused(orphan, "foreign"),
            },
            Err(error) => return ended_by(error, orphan, window, &name),
        },
    };
    match cloud.delete(&name, &zone).await {
        Ok(()) => Ended::Deleted(orphan),
        Err(error) => ended_by(error, orphan, window, &name),
    }
}

/// What a failed call means for the deletion of `orphan` (named `name`).
fn ended_by(error: DeleteError, orphan: Orphan, window: u64, name: &str) -> Ended {
    match error {
        DeleteError::RateLimited {
            retry_after,
            per_minute,
        } => {
            let pause = retry_after.unwrap_or(if per_minute {
                until_next_minute()
            } else {
                RATE_LIMIT_PAUSE
            });
            Ended::RateLimited(orphan, window, pause)
        }
        DeleteError::Failed(error) => {
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
