//! What the reconciler reads and writes: one consistent view of everything that accounts for a
//! VM, the suspects (`<ns>:_suspects`) and the safety brake (`<ns>:_brake`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::Context as _;
use redis::AsyncCommands;

use super::{Lease, Orphan, PoolEntry, Store};
use crate::pool::{PoolName, parse_target};

/// A warmed VM in a pool list, as a reconcile pass sees it. `Debug` leaves the stored entry
/// (and its key) out.
#[derive(Clone, PartialEq)]
pub struct WarmedVm {
    /// The entry exactly as stored (needed to remove it atomically).
    pub raw: String,
    /// Empty when the entry cannot be read.
    pub name: String,
    pub zone: String,
    pub booted_at: Option<u64>,
}

impl WarmedVm {
    fn read(raw: String) -> Self {
        let entry = serde_json::from_str::<PoolEntry>(&raw).ok();
        WarmedVm {
            name: entry.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
            zone: entry.as_ref().map(|e| e.zone.clone()).unwrap_or_default(),
            booted_at: entry.and_then(|e| e.booted_at),
            raw,
        }
    }
}

impl fmt::Debug for WarmedVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmedVm")
            .field("name", &self.name)
            .field("zone", &self.zone)
            .field("booted_at", &self.booted_at)
            .finish_non_exhaustive()
    }
}

/// Everything in Redis that accounts for a VM, read in one `MULTI`.
#[derive(Debug, Default)]
pub struct RedisView {
    /// Pools with a readable target.
    pub targets: BTreeMap<String, u64>,
    /// Pool lists, including lists whose pool has no target any more.
    pub pools: BTreeMap<String, Vec<WarmedVm>>,
    /// Unexpired boot reservations, per pool.
    pub booting: BTreeMap<String, Vec<String>>,
    pub leases: Vec<Lease>,
    /// Recorded orphans, and those a deleter has claimed.
    pub orphans: Vec<Orphan>,
    pub suspects: BTreeSet<String>,
    pub brake: bool,
    /// Pools with a refill hint pending → since when (ms).
    pub hints: BTreeMap<String, u64>,
}

impl Store {
    /// Reads every pool list and boot reservation (of pools with a target, and of pools without
    /// one that still have a list or reservations), the leases, the orphans, the suspects and
    /// the brake, atomically; `now` (ms) decides which reservations are unexpired.
    pub async fn reconcile_view(&self, now: u64) -> anyhow::Result<RedisView> {
        let names = &self.names;
        let targets: BTreeMap<String, u64> = self
            .targets()
            .await
            .context("reading pool targets")?
            .into_iter()
            .filter(|(pool, _)| pool.parse::<PoolName>().is_ok())
            .filter_map(|(pool, target)| Some((pool, parse_target(&target)?)))
            .collect();
        let mut pools: Vec<String> = targets.keys().cloned().collect();
        let prefix = names.pool_key_prefix();
        let booting_prefix = names.booting_key_prefix();
        for pattern in [format!("{prefix}*:*"), format!("{booting_prefix}*")] {
            let pattern = &pattern;
            let keys: Vec<String> = self
                .call(|mut conn| async move {
                    let mut keys = Vec::new();
                    let mut found: redis::AsyncIter<String> = conn.scan_match(pattern).await?;
                    while let Some(key) = futures_lite::StreamExt::next(&mut found).await {
                        keys.push(key?);
                    }
                    Ok(keys)
                })
                .await
                .context("scanning pool keys")?;
            for key in keys {
                let pool = key
                    .strip_prefix(&booting_prefix)
                    .or_else(|| key.strip_prefix(&prefix))
                    .unwrap_or_default();
                if pool.parse::<PoolName>().is_ok() && !pools.iter().any(|p| p == pool) {
                    pools.push(pool.to_string());
                }
            }
        }

        let mut pipe = redis::pipe();
        pipe.atomic();
        for pool in &pools {
            pipe.lrange(format!("{prefix}{pool}"), 0, -1);
            pipe.zrangebyscore(format!("{booting_prefix}{pool}"), now, "+inf");
        }
        pipe.hvals(names.leases())
            .lrange(names.orphaned(), 0, -1)
            .zrange(names.deleting(), 0, -1)
            .smembers(names.suspects())
            .exists(names.brake())
            .zrange_withscores(names.hints(), 0, -1);
        let pipe = &pipe;
        let mut values: Vec<redis::Value> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading the snapshot")?;
        let tail = values.split_off(pools.len() * 2);
        let mut view = RedisView {
            targets,
            ..RedisView::default()
        };
        for (pool, pair) in pools.iter().zip(values.chunks(2)) {
            let entries: Vec<String> = redis::from_redis_value_ref(&pair[0])?;
            let booting: Vec<String> = redis::from_redis_value_ref(&pair[1])?;
            view.pools.insert(
                pool.clone(),
                entries.into_iter().map(WarmedVm::read).collect(),
            );
            if !booting.is_empty() {
                view.booting.insert(pool.clone(), booting);
            }
        }
        let leases: Vec<String> = redis::from_redis_value_ref(&tail[0])?;
        view.leases = leases
            .iter()
            .filter_map(|raw| serde_json::from_str(raw).ok())
            .collect();
        let mut orphans: Vec<String> = redis::from_redis_value_ref(&tail[1])?;
        let claimed: Vec<String> = redis::from_redis_value_ref(&tail[2])?;
        orphans.extend(claimed);
        view.orphans = orphans.into_iter().map(Orphan::parse).collect();
        view.suspects = redis::from_redis_value_ref(&tail[3])?;
        view.brake = redis::from_redis_value_ref(&tail[4])?;
        let hints: Vec<(String, f64)> = redis::from_redis_value_ref(&tail[5])?;
        view.hints = hints.into_iter().map(|(p, at)| (p, at as u64)).collect();
        Ok(view)
    }

    /// Adds cloud VMs found unaccounted to the suspects.
    pub async fn mark_suspects(&self, vms: &[String]) -> redis::RedisResult<()> {
        if vms.is_empty() {
            return Ok(());
        }
        let key = &self.names.suspects();
        self.call(|mut conn| async move { conn.sadd(key, vms).await })
            .await
    }

    /// Removes VMs from the suspects (accounted for, gone, or recorded for deletion).
    pub async fn unmark_suspects(&self, vms: &[&String]) -> redis::RedisResult<()> {
        if vms.is_empty() {
            return Ok(());
        }
        let key = &self.names.suspects();
        self.call(|mut conn| async move { conn.srem(key, vms).await })
            .await
    }

    /// Engages the safety brake, recording how many VMs are unaccounted.
    pub async fn engage_brake(&self, unaccounted: u64) -> redis::RedisResult<()> {
        let key = &self.names.brake();
        self.call(|mut conn| async move { conn.set(key, unaccounted).await })
            .await
    }

    /// Releases the safety brake.
    pub async fn release_brake(&self) -> redis::RedisResult<()> {
        let key = &self.names.brake();
        self.call(|mut conn| async move { conn.del(key).await })
            .await
    }
}
