//! The sizer: one step of the active reconciler's pass. It reads every policy, the demand and
//! boot times of the pools that size from demand, decides each pool's target with the pure
//! [`plan::decide`], writes the targets that changed (with why) to `poolconfigs`, and moves
//! rollovers along (completes or aborts them with [`plan::judge`]). The reconcile pass that
//! follows publishes fills for pools now below target and evicts surplus of pools lowered.
//!
//! While the safety brake holds, it changes nothing, and rollovers in progress have their
//! deadlines moved later by the time it held (from this sizer's previous step: a reconciler
//! that takes over under the brake gives back the time from its own first step).
//!
//! During a rollover the new pool is sized like the old one, from both pools' demand (workers
//! may move to the new image before it is at target), and at least at the old pool's target.
//! For 9 days after a rollover completed, the new pool's demand includes the old pool's, so
//! last week's history is not lost with the image name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::plan::{self, Verdict};
use crate::events::{Event, Events};
use crate::policy::Policy;
use crate::store::Store;
use crate::store::sizing::Decision;
use crate::store::sizing::{DayDemand, Rollover, RolloverState, SizingView};

/// How long a finished rollover is kept: as long as the demand it lends its new pool.
const FINISHED_KEPT_SECS: u64 = 9 * DAY;
const DAY: u64 = 86_400;

/// A pool's demand and its recent boot durations (ms, newest first).
#[derive(Debug, Clone, Default)]
struct History {
    demand: plan::Demand,
    boot_ms: Vec<u64>,
}

/// The active reconciler's sizer. It keeps the demand of past days it has read (a day's
/// demand no longer changes once the day is over), so that a pass reads only today's.
#[derive(Debug)]
pub struct Sizer {
    past: Mutex<BTreeMap<(String, u64), Arc<DayDemand>>>,
    /// When this sizer last ran (Unix seconds).
    last_step: Mutex<Option<u64>>,
    /// `WARMER_MAX_VMS`: no target goes above it, whatever a stored policy says.
    fleet_cap: u32,
}

impl Sizer {
    /// A sizer whose targets never exceed `fleet_cap`.
    pub fn new(fleet_cap: u32) -> Self {
        Self {
            past: Mutex::default(),
            last_step: Mutex::default(),
            fleet_cap,
        }
    }
}

/// What one sizing step did.
#[derive(Debug, Default)]
pub struct Report {
    /// The brake held: nothing was looked at.
    pub frozen: bool,
    /// Pools whose target or reason changed: (pool, target before, decision).
    pub changed: Vec<(String, Option<u64>, Decision)>,
    /// Rollovers finished: (from, to, verdict).
    pub finished: Vec<(String, String, Verdict)>,
}

impl Sizer {
    /// Sizes every pool with a policy and moves rollovers along, at `now` (Unix seconds).
    pub async fn step(&self, store: &Store, events: &Events, now: u64) -> anyhow::Result<Report> {
        let view = store.sizing_view().await?;
        let since = self
            .last_step
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(now);
        if view.brake {
            // Nothing boots under the brake: rollovers get the time back.
            if let Some(since) = since.filter(|since| *since < now) {
                store.postpone_rollovers(now - since).await?;
            }
            return Ok(Report {
                frozen: true,
                ..Report::default()
            });
        }
        for (pool, policy) in &view.policies {
            if let Err(error) = policy {
                tracing::warn!(%pool, %error, "unreadable policy: the pool keeps its target");
            }
        }
        let rolling: BTreeMap<&str, &str> = view
            .rollovers
            .iter()
            .filter(|(_, r)| r.state == RolloverState::Rolling)
            .map(|(from, r)| (r.to.as_str(), from.as_str()))
            .collect();
        let histories = self
            .histories(store, &demand_read(&view, &rolling), now)
            .await?;
        let decided = decide_all(&view, &rolling, &histories, now, self.fleet_cap);
        let changed: Vec<(String, Option<u64>, Decision)> = decided
            .iter()
            .filter_map(|(pool, decision)| {
                let before = view.targets.get(pool).copied();
                let reason = view.decisions.get(pool).map(|d| d.reason.as_str());
                let same = before == Some(u64::from(decision.target))
                    && reason == Some(decision.reason.as_str());
                (!same).then(|| (pool.clone(), before, decision.clone()))
            })
            .collect();
        // Written when anything but its time differs: the demand and boot time `/metrics` shows
        // stay current; only a new target or reason is news (`changed`).
        let writes: Vec<(&String, &Decision)> = decided
            .iter()
            .filter(|(pool, decision)| {
                view.decisions.get(*pool).is_none_or(|stored| {
                    Decision {
                        at: decision.at,
                        ..stored.clone()
                    } != **decision
                })
            })
            .collect();
        store.apply_decisions(&writes).await?;
        for (pool, before, decision) in &changed {
            let target = decision.target;
            let reason = &decision.reason;
            // Only a new target is news; a new reason for the same one is recorded quietly.
            match before {
                Some(before) if *before == u64::from(target) => {
                    tracing::debug!(%pool, target, reason, "sizing reason changed, target kept")
                }
                Some(before) => tracing::info!(%pool, before, target, reason, "sized"),
                None => tracing::info!(%pool, target, reason, "sized (no target before)"),
            }
        }
        let finished = move_rollovers(store, events, &view, &decided, now).await?;
        Ok(Report {
            frozen: false,
            changed,
            finished,
        })
    }

    /// The demand [`plan::decide`] reads at `now` and the boot times of `pools`: past days from
    /// memory once read, the rest from Redis.
    async fn histories(
        &self,
        store: &Store,
        pools: &BTreeSet<String>,
        now: u64,
    ) -> anyhow::Result<BTreeMap<String, History>> {
        let (from, to) = plan::window(now);
        let days: Vec<u64> = (from / DAY..=to.saturating_sub(1) / DAY).collect();
        // Over a minute ago: a checkout that took its time still counted in its own day.
        let is_over = |day: u64| (day + 1) * DAY + 60 <= now;
        let wanted: Vec<(String, u64)> = {
            let mut past = self.past.lock().unwrap_or_else(|e| e.into_inner());
            past.retain(|(pool, day), _| pools.contains(pool) && days.contains(day));
            pools
                .iter()
                .flat_map(|pool| days.iter().map(move |day| (pool.clone(), *day)))
                .filter(|key| !past.contains_key(key))
                .collect()
        };
        let pool_list: Vec<String> = pools.iter().cloned().collect();
        let (read, boots) = store.histories(&wanted, &pool_list).await?;
        let mut past = self.past.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh: BTreeMap<(String, u64), Arc<DayDemand>> = BTreeMap::new();
        for (key, demand) in wanted.into_iter().zip(read) {
            let demand = Arc::new(demand);
            if is_over(key.1) {
                past.insert(key.clone(), demand.clone());
            }
            fresh.insert(key, demand);
        }
        let mut histories = BTreeMap::new();
        for (pool, boot_ms) in pool_list.into_iter().zip(boots) {
            let mut history = History {
                boot_ms,
                ..History::default()
            };
            for day in &days {
                let key = (pool.clone(), *day);
                if let Some(demand) = fresh.get(&key).or_else(|| past.get(&key)) {
                    history.demand.extend(demand.iter().copied());
                }
            }
            histories.insert(pool, history);
        }
        Ok(histories)
    }
}

/// The pool whose policy sizes `pool`: during a rollover the new pool is sized as the old one.
fn policy_of<'a>(
    view: &'a SizingView,
    rolling: &BTreeMap<&str, &str>,
    pool: &str,
) -> Option<&'a Policy> {
    let owner = rolling.get(pool).copied().unwrap_or(pool);
    view.policies.get(owner)?.as_ref().ok()
}

/// Pools whose demand counts for `pool`: its own, and that of pools rolled (or rolling) into
/// it.
fn demand_sources<'a>(view: &'a SizingView, pool: &'a str) -> impl Iterator<Item = &'a str> {
    std::iter::once(pool).chain(
        view.rollovers
            .iter()
            .filter(move |(_, r)| r.to == pool && r.state != RolloverState::Aborted)
            .map(|(from, _)| from.as_str()),
    )
}

/// Pools whose demand and boot times must be read: the sources of every adaptive pool.
fn demand_read(view: &SizingView, rolling: &BTreeMap<&str, &str>) -> BTreeSet<String> {
    view.targets
        .keys()
        .filter(|pool| policy_of(view, rolling, pool).is_some_and(|p| p.adaptive))
        .flat_map(|pool| demand_sources(view, pool))
        .map(String::from)
        .collect()
}

/// Every sized pool's decision: pools with a policy, then the new pools of rollovers (which
/// follow their old pool's new target).
fn decide_all(
    view: &SizingView,
    rolling: &BTreeMap<&str, &str>,
    histories: &BTreeMap<String, History>,
    now: u64,
    fleet_cap: u32,
) -> BTreeMap<String, Decision> {
    let decide = |pool: &str, policy: &Policy| {
        let policy = &policy.capped(fleet_cap);
        let mut demand = plan::Demand::new();
        let mut boot_ms = Vec::new();
        for source in demand_sources(view, pool) {
            if let Some(history) = histories.get(source) {
                for (at, n) in &history.demand {
                    *demand.entry(*at).or_default() += n;
                }
                if boot_ms.is_empty() {
                    boot_ms.clone_from(&history.boot_ms);
                }
            }
        }
        let boot_secs = plan::boot_secs(&boot_ms);
        let (target, reason) = plan::decide(policy, &demand, boot_secs, now);
        let mut decision = Decision::new(target, reason.label(), now);
        if policy.adaptive {
            decision.boot_secs = Some(boot_secs);
            decision.per_minute = Some(crate::demand::per_minute(&demand, now));
        }
        decision
    };
    let mut decided: BTreeMap<String, Decision> = BTreeMap::new();
    for pool in view.targets.keys() {
        if rolling.contains_key(pool.as_str()) {
            continue;
        }
        if let Some(Ok(policy)) = view.policies.get(pool) {
            decided.insert(pool.clone(), decide(pool, policy));
        }
    }
    for (to, from) in rolling {
        if !view.targets.contains_key(*to) {
            continue;
        }
        let from_target = decided.get(*from).map(|d| d.target).or_else(|| {
            let target = *view.targets.get(*from)?;
            u32::try_from(target).ok()
        });
        let own = policy_of(view, rolling, to).map(|policy| decide(to, policy).target);
        let target = own.max(from_target).unwrap_or(0);
        decided.insert(to.to_string(), Decision::new(target, "rollover", now));
    }
    decided
}

/// Completes or aborts each rollover in progress, and forgets long-finished ones.
async fn move_rollovers(
    store: &Store,
    events: &Events,
    view: &SizingView,
    decided: &BTreeMap<String, Decision>,
    now: u64,
) -> anyhow::Result<Vec<(String, String, Verdict)>> {
    let in_progress: Vec<(&String, &Rollover)> = view
        .rollovers
        .iter()
        .filter(|(_, r)| r.state == RolloverState::Rolling)
        .collect();
    let tos: Vec<&str> = in_progress.iter().map(|(_, r)| r.to.as_str()).collect();
    let progress = store.progress(&tos).await?;
    let mut finished = Vec::new();
    for ((from, rollover), progress) in in_progress.into_iter().zip(progress) {
        let to = &rollover.to;
        let verdict = match decided.get(to) {
            _ if !view.targets.contains_key(from) => Verdict::Abort(format!("{from} was deleted")),
            None => Verdict::Abort(format!("{to} was deleted")),
            Some(decision) => plan::judge(
                progress.ready,
                decision.target,
                progress.failed.saturating_sub(rollover.failed_before),
                progress.booted.saturating_sub(rollover.ready_before),
                now,
                rollover.deadline,
            ),
        };
        let (state, reason) = match &verdict {
            Verdict::Continue => continue,
            Verdict::Complete => (RolloverState::Completed, ""),
            Verdict::Abort(reason) => (RolloverState::Aborted, reason.as_str()),
        };
        if !store.finish_rollover(from, state, now, reason).await? {
            continue;
        }
        let (from, to) = (from.clone(), to.clone());
        match &verdict {
            Verdict::Abort(reason) => {
                tracing::warn!(%from, %to, reason, "rollover aborted: {from} is left as it was");
                events
                    .emit(Event::RolloverAborted {
                        from: from.clone(),
                        to: to.clone(),
                        reason: reason.clone(),
                    })
                    .await;
            }
            _ => {
                tracing::info!(%from, %to, "rollover completed: {from} goes to target 0");
                events
                    .emit(Event::RolloverCompleted {
                        from: from.clone(),
                        to: to.clone(),
                    })
                    .await;
            }
        }
        finished.push((from, to, verdict));
    }
    let forgotten: Vec<&str> = view
        .rollovers
        .iter()
        .filter(|(_, r)| {
            r.finished_at
                .is_some_and(|at| at + FINISHED_KEPT_SECS < now)
        })
        .map(|(from, _)| from.as_str())
        .collect();
    store.forget_rollovers(&forgotten).await?;
    Ok(finished)
}
