//! Sizing: policies (`<ns>:_policies`), the sizer's decisions (`<ns>:_sizing`), demand
//! (`<ns>:_demand:<day>:<pool>`, written by `checkout.lua`), boot times
//! (`<ns>:_boot_times:<pool>`, written by `finish_boot.lua`) and rollovers (`<ns>:_rollovers`).

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{Store, unexpected};
use crate::demand::BUCKET_SECS;
use crate::policy::Policy;
use crate::pool::PoolName;

const DAY: u64 = 86_400;
/// Demand hashes and boot-time lists read per round trip.
const HISTORY_BATCH: usize = 32;

/// The sizer's last decision for a pool, as `warmer status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub target: u32,
    /// `min`, `schedule`, `demand`, `history`, `max` or `rollover`.
    pub reason: String,
    /// When it was decided (Unix seconds).
    pub at: u64,
    /// The boot time it planned for (seconds; adaptive pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_secs: Option<u64>,
    /// Arrivals per minute over the last [`crate::demand::RATE_SECS`] (adaptive pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<f64>,
}

impl Decision {
    /// A decision without measured demand (a pool sized by its bounds or schedules alone).
    pub fn new(target: u32, reason: &str, at: u64) -> Decision {
        Decision {
            target,
            reason: reason.into(),
            at,
            boot_secs: None,
            per_minute: None,
        }
    }
}

/// Where a rollover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloverState {
    Rolling,
    Completed,
    Aborted,
}

/// A rollover, keyed by the pool it rolls from (written by `start_rollover.lua` and
/// `finish_rollover.lua`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollover {
    pub to: String,
    pub state: RolloverState,
    /// Unix seconds.
    pub started_at: u64,
    /// Aborted if `to` is not at its target by then (Unix seconds).
    pub deadline: u64,
    /// `to`'s failed and ready boots before it started.
    pub failed_before: u64,
    pub ready_before: u64,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// How `to` of a rollover in progress is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Warmed VMs in its pool.
    pub ready: u64,
    /// Its boots that failed, and that made it into the pool, since it was created.
    pub failed: u64,
    pub booted: u64,
}

/// What `start_rollover.lua` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRollover {
    /// Started; `to` has this target.
    Started(u32),
    NoTarget,
    /// This pool already takes part in a rollover in progress.
    Rolling(String),
    /// `to` has this target already.
    ToHasTarget(String),
}

/// Everything the sizer decides on besides demand, read in one round trip.
#[derive(Debug, Default)]
pub struct SizingView {
    /// Pool → target, of the pools `poolconfigs` holds a number for.
    pub targets: BTreeMap<String, u64>,
    /// Pool → its policy, or why what is stored cannot be read.
    pub policies: BTreeMap<String, Result<Policy, String>>,
    pub decisions: BTreeMap<String, Decision>,
    /// Pool rolled from → its rollover (unreadable records are left out).
    pub rollovers: BTreeMap<String, Rollover>,
    pub brake: bool,
}

/// A decision's reason as one of [`crate::metrics::TARGET_REASONS`] the sizer gives (`invalid`
/// for anything else a writer of Redis put there).
fn reason_of(stored: &str) -> &'static str {
    crate::metrics::TARGET_REASONS
        .into_iter()
        .skip(3)
        .find(|r| *r == stored)
        .unwrap_or("invalid")
}

impl SizingView {
    /// Why `pool`'s target is what it is: one of [`crate::metrics::TARGET_REASONS`].
    pub fn why(&self, pool: &str) -> &'static str {
        match (self.policies.get(pool), self.decisions.get(pool)) {
            (Some(Ok(_)), Some(decision)) => reason_of(&decision.reason),
            (Some(Ok(_)), None) => "pending",
            (Some(Err(_)), _) => "invalid",
            (None, _) => "static",
        }
    }

    /// The rollovers, for `/metrics`.
    fn rollover_samples(&self) -> Vec<crate::metrics::RolloverSample> {
        self.rollovers
            .iter()
            .map(|(from, r)| crate::metrics::RolloverSample {
                from: from.clone(),
                to: r.to.clone(),
                state: match r.state {
                    RolloverState::Rolling => "rolling",
                    RolloverState::Completed => "completed",
                    RolloverState::Aborted => "aborted",
                },
            })
            .collect()
    }
}

/// One pool's arrivals on one UTC day: (bucket start, arrivals), in time order.
pub type DayDemand = Vec<(u64, u32)>;

impl Store {
    /// How each pool with a policy is sized, and the rollovers, for `/metrics`: its policy's
    /// bounds only (a scrape of 10,000 sized pools parses no schedule), the sizer's last
    /// decision, in one MULTI.
    pub async fn sizing_samples(
        &self,
    ) -> anyhow::Result<(
        BTreeMap<String, crate::metrics::PoolSizing>,
        Vec<crate::metrics::RolloverSample>,
    )> {
        /// What `/metrics` reads of a stored policy.
        #[derive(Deserialize)]
        struct Bounds {
            min: u32,
            max: u32,
        }
        let n = &self.names;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hgetall(n.policies())
            .hgetall(n.sizing())
            .hgetall(n.rollovers());
        let pipe = &pipe;
        #[allow(clippy::type_complexity)]
        let (policies, decisions, rollovers): (
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
        ) = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading the pools' sizing")?;
        let decisions: BTreeMap<String, Decision> = parsed(decisions);
        let samples = policies
            .into_iter()
            .map(|(pool, json)| {
                let bounds = serde_json::from_str::<Bounds>(&json)
                    .ok()
                    .filter(|b| b.min <= b.max);
                let decision = decisions.get(&pool).filter(|_| bounds.is_some());
                let reason = match (&bounds, decision) {
                    (None, _) => "invalid",
                    (Some(_), None) => "pending",
                    (Some(_), Some(decision)) => reason_of(&decision.reason),
                };
                let sizing = crate::metrics::PoolSizing {
                    min: bounds.as_ref().map(|b| b.min),
                    max: bounds.as_ref().map(|b| b.max),
                    reason,
                    per_minute: decision.and_then(|d| d.per_minute),
                    boot_secs: decision.and_then(|d| d.boot_secs),
                };
                (pool, sizing)
            })
            .collect();
        let view = SizingView {
            rollovers: parsed(rollovers),
            ..SizingView::default()
        };
        Ok((samples, view.rollover_samples()))
    }

    /// Targets, policies, decisions, rollovers and the brake, in one MULTI.
    pub async fn sizing_view(&self) -> anyhow::Result<SizingView> {
        let n = &self.names;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hgetall(n.pool_configs())
            .hgetall(n.policies())
            .hgetall(n.sizing())
            .hgetall(n.rollovers())
            .exists(n.brake());
        let pipe = &pipe;
        #[allow(clippy::type_complexity)]
        let (targets, policies, decisions, rollovers, brake): (
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            bool,
        ) = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading policies and targets")?;
        let policies = policies
            .into_iter()
            .map(|(pool, json)| {
                let policy = serde_json::from_str::<Policy>(&json)
                    .map_err(|error| error.to_string())
                    .and_then(|policy| policy.validate().map(|()| policy));
                (pool, policy)
            })
            .collect();
        Ok(SizingView {
            targets: targets
                .into_iter()
                .filter_map(|(pool, target)| Some((pool, crate::pool::parse_target(&target)?)))
                .collect(),
            policies,
            decisions: parsed(decisions),
            rollovers: parsed(rollovers),
            brake,
        })
    }

    /// The demand of each `(pool, day)` (UTC day: Unix seconds / 86400) as (bucket start,
    /// arrivals) in time order, and each pool's recent boot times (ms, newest first). Pipelined
    /// [`HISTORY_BATCH`] keys at a time: a day of a busy pool is up to 17,280 fields, and a
    /// reconciler starting with many adaptive pools reads a week of each.
    pub async fn histories(
        &self,
        days: &[(String, u64)],
        pools: &[String],
    ) -> anyhow::Result<(Vec<DayDemand>, Vec<Vec<u64>>)> {
        let mut demand = Vec::with_capacity(days.len());
        for batch in days.chunks(HISTORY_BATCH) {
            let mut pipe = redis::pipe();
            for (pool, day) in batch {
                pipe.hgetall(self.names.demand(*day, pool));
            }
            let hashes: Vec<BTreeMap<String, u32>> = self.query(&pipe).await?;
            for ((_, day), buckets) in batch.iter().zip(hashes) {
                let mut arrivals: BTreeMap<u64, u32> = BTreeMap::new();
                for (field, n) in buckets {
                    let bucket = field
                        .split_once(':')
                        .and_then(|(_, b)| b.parse::<u64>().ok());
                    if let Some(bucket) = bucket.filter(|b| b * BUCKET_SECS < DAY) {
                        *arrivals
                            .entry(day * DAY + bucket * BUCKET_SECS)
                            .or_default() += n;
                    }
                }
                demand.push(arrivals.into_iter().collect());
            }
        }
        let mut boots = Vec::with_capacity(pools.len());
        for batch in pools.chunks(HISTORY_BATCH) {
            let mut pipe = redis::pipe();
            for pool in batch {
                pipe.lrange(self.names.boot_times(pool), 0, -1);
            }
            boots.extend(self.query::<Vec<Vec<u64>>>(&pipe).await?);
        }
        Ok((demand, boots))
    }

    /// Runs a pipeline of reads (see [`Store::call`]).
    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> anyhow::Result<T> {
        self.call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading demand and boot times")
    }

    /// Replaces `pool`'s policy, or removes it (`None`); `false` if the pool does not exist
    /// (see `set_policy.lua`).
    pub async fn set_policy(
        &self,
        pool: &PoolName,
        policy: Option<&Policy>,
    ) -> anyhow::Result<bool> {
        let json = match policy {
            Some(policy) => serde_json::to_string(policy)?,
            None => String::new(),
        };
        let n = &self.names;
        let mut invocation = self.scripts.set_policy.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.policies())
            .key(n.sizing())
            .arg(pool.to_string())
            .arg(json);
        let set: i64 = self.invoke(&invocation).await?;
        Ok(set == 1)
    }

    /// Writes the sizer's targets, each `(pool, decision)`, to pools that still exist (see
    /// `size_pools.lua`).
    pub async fn apply_decisions(&self, decisions: &[(&String, &Decision)]) -> anyhow::Result<()> {
        if decisions.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.size_pools.prepare_invoke();
        invocation
            .key(self.names.pool_configs())
            .key(self.names.sizing());
        for (pool, decision) in decisions {
            invocation
                .arg(pool)
                .arg(decision.target)
                .arg(serde_json::to_string(decision)?);
        }
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Starts a rollover from `from` to `to` (see `start_rollover.lua`).
    pub async fn start_rollover(
        &self,
        from: &PoolName,
        to: &PoolName,
        now: u64,
        deadline: u64,
    ) -> anyhow::Result<StartRollover> {
        let n = &self.names;
        let mut invocation = self.scripts.start_rollover.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.policies())
            .key(n.rollovers())
            .key(n.pool_metrics(to))
            .arg(from.to_string())
            .arg(to.to_string())
            .arg(now)
            .arg(deadline);
        let answer: Vec<String> = self.invoke(&invocation).await?;
        let mut answer = answer.into_iter();
        Ok(match (answer.next().as_deref(), answer.next()) {
            (Some("started"), Some(target)) => {
                StartRollover::Started(target.parse().unwrap_or_default())
            }
            (Some("no_target"), None) => StartRollover::NoTarget,
            (Some("rolling"), Some(pool)) => StartRollover::Rolling(pool),
            (Some("to_has_target"), Some(target)) => StartRollover::ToHasTarget(target),
            other => return Err(unexpected("start_rollover.lua", other).into()),
        })
    }

    /// Ends the rollover from `from` as `completed` or `aborted` (with a reason); `false` if it
    /// was not in progress (see `finish_rollover.lua`).
    pub async fn finish_rollover(
        &self,
        from: &str,
        state: RolloverState,
        now: u64,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let state = match state {
            RolloverState::Completed => "completed",
            RolloverState::Aborted => "aborted",
            RolloverState::Rolling => anyhow::bail!("a rollover cannot finish as rolling"),
        };
        let n = &self.names;
        let mut invocation = self.scripts.finish_rollover.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.policies())
            .key(n.rollovers())
            .key(n.sizing())
            .arg(from)
            .arg(state)
            .arg(now)
            .arg(reason);
        let finished: i64 = self.invoke(&invocation).await?;
        Ok(finished == 1)
    }

    /// Moves the deadline of every rollover in progress `secs` later (see
    /// `postpone_rollovers.lua`).
    pub async fn postpone_rollovers(&self, secs: u64) -> anyhow::Result<()> {
        let mut invocation = self.scripts.postpone_rollovers.prepare_invoke();
        invocation.key(self.names.rollovers()).arg(secs);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Forgets finished rollovers (their `to` no longer reads `from`'s demand).
    pub async fn forget_rollovers(&self, froms: &[&str]) -> anyhow::Result<()> {
        if froms.is_empty() {
            return Ok(());
        }
        let key = &self.names.rollovers();
        self.call(|mut conn| async move {
            redis::cmd("HDEL")
                .arg(key)
                .arg(froms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// How `to` of each rollover in progress is doing: its pool's length and its boot counters.
    pub async fn progress(&self, pools: &[&str]) -> anyhow::Result<Vec<Progress>> {
        if pools.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for pool in pools {
            pipe.llen(format!("{}{pool}", self.names.pool_key_prefix()));
            pipe.hgetall(format!("{}{pool}", self.names.pool_metrics_key_prefix()));
        }
        let pipe = &pipe;
        let values: Vec<redis::Value> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading rollover progress")?;
        let mut progress = Vec::new();
        for pair in values.chunks(2) {
            let ready: u64 = redis::from_redis_value(pair[0].clone()).unwrap_or_default();
            let counters: BTreeMap<String, u64> =
                redis::from_redis_value(pair[1].clone()).unwrap_or_default();
            let mut p = Progress {
                ready,
                ..Progress::default()
            };
            for (field, n) in counters {
                let mut parts = field.split('|');
                if parts.next() != Some("boots") {
                    continue;
                }
                match parts.nth(1) {
                    Some("ready") => p.booted += n,
                    Some(result) if result.starts_with("failed") => p.failed += n,
                    _ => {}
                }
            }
            progress.push(p);
        }
        Ok(progress)
    }
}

/// The values of a hash of JSON records that parse; the others are left out.
fn parsed<T: serde::de::DeserializeOwned>(hash: BTreeMap<String, String>) -> BTreeMap<String, T> {
    hash.into_iter()
        .filter_map(|(key, json)| Some((key, serde_json::from_str(&json).ok()?)))
        .collect()
}
