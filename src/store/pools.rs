//! Pools: targets (`<ns>:poolconfigs`), warmed VMs (`<ns>:<pool>`), their levels, trimming and
//! eviction.

use std::collections::BTreeMap;

use anyhow::Context as _;
use redis::AsyncCommands;

use super::Result;
use super::Store;
use crate::clock::now_ms;
use crate::pool::{PoolLevel, PoolName, PoolStatus, parse_target};

impl Store {
    /// Every pool and its target: what `poolconfigs` holds that is a pool name and a number
    /// (read as travis-ci/warmer and Lua's `tonumber` do: `3.0` is 3); anything else there is
    /// no pool warmer serves.
    pub async fn targets(&self) -> Result<BTreeMap<PoolName, u64>> {
        Ok(self
            .raw_targets()
            .await?
            .into_iter()
            .filter_map(|(pool, target)| Some((pool.parse().ok()?, parse_target(&target)?)))
            .collect())
    }

    /// Pool name → target, as stored, for what shows pools as they are (levels, status).
    pub(super) async fn raw_targets(&self) -> Result<BTreeMap<String, String>> {
        let key = &self.names.pool_configs();
        self.call(|mut conn| async move { conn.hgetall(key).await })
            .await
    }

    /// Sets a pool's target (creating the pool).
    pub async fn set_target(&self, pool: &PoolName, target: u32) -> Result<()> {
        let (key, pool) = (&self.names.pool_configs(), &pool.to_string());
        self.call(|mut conn| async move { conn.hset(key, pool, target).await })
            .await
    }

    /// Deletes a pool; its warmed VMs are recorded as orphans (see `delete_pool.lua`). `None` if
    /// it did not exist. Not repeated on a dropped connection: a second run would report the
    /// pool as missing.
    pub async fn delete_pool(&self, pool: &PoolName) -> Result<Option<u64>> {
        let n = &self.names;
        let mut invocation = self.scripts.delete_pool.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.orphaned())
            .key(n.pool_metrics(pool))
            .key(n.metrics())
            .key(n.policies())
            .key(n.sizing())
            .arg(pool.to_string());
        let moved: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(u64::try_from(moved).ok())
    }

    /// Every pool's target, ready and booting counts, and whether the safety brake is on: a few
    /// dozen bytes per pool, cheap enough for a loop.
    pub async fn levels(&self) -> anyhow::Result<(Vec<PoolLevel>, bool)> {
        let targets = self.raw_targets().await.context("reading pool targets")?;
        let now = now_ms();
        let mut pipe = redis::pipe();
        for pool in targets.keys() {
            pipe.llen(format!("{}{pool}", self.names.pool_key_prefix()));
            pipe.zcount(
                format!("{}{pool}", self.names.booting_key_prefix()),
                now,
                "+inf",
            );
        }
        pipe.exists(self.names.brake());
        let pipe = &pipe;
        let mut values: Vec<redis::Value> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading pool levels")?;
        let brake: bool = match values.pop() {
            Some(value) => super::read(value)?,
            None => false,
        };
        let counts: Vec<u64> = values.into_iter().map(super::read).collect::<Result<_>>()?;
        let levels = targets
            .into_iter()
            .zip(counts.chunks(2))
            .map(|((pool, target), counts)| PoolLevel {
                pool,
                target,
                ready: counts[0],
                booting: counts[1],
            })
            .collect();
        Ok((levels, brake))
    }

    /// [`Self::levels`] with each pool's oldest VM's age and handed-out count, read without a
    /// key (`pool_heads.lua`); it reads every lease in Redis, so it is for `warmer status` and
    /// `/metrics`, not for tight loops.
    pub async fn status(&self) -> anyhow::Result<(Vec<PoolStatus>, bool)> {
        let (levels, brake) = self.levels().await?;
        let prefix = self.names.pool_key_prefix();
        let mut invocation = self.scripts.pool_heads.prepare_invoke();
        invocation.key(self.names.leases());
        for level in &levels {
            invocation
                .key(format!("{prefix}{}", level.pool))
                .arg(&level.pool);
        }
        let (heads, handed): (Vec<String>, Vec<u64>) = self
            .invoke(&invocation)
            .await
            .context("reading the oldest VMs and the leases")?;
        let pools = levels
            .into_iter()
            .zip(heads.into_iter().zip(handed))
            .map(|(level, (head, handed_out))| PoolStatus {
                level,
                handed_out,
                oldest_booted_at: (head != "-").then(|| head.parse().ok()),
            })
            .collect();
        Ok((pools, brake))
    }

    /// Clears the pool's refill hint and moves its surplus warmed VMs to orphaned (see
    /// `trim_pool.lua`); returns how many.
    pub async fn trim_pool(&self, pool: &PoolName) -> Result<u64> {
        let n = &self.names;
        let mut invocation = self.scripts.trim_pool.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.booting(pool))
            .key(n.orphaned())
            .key(n.hints())
            .key(n.pool_metrics(pool))
            .arg(pool.to_string());
        self.invoke(&invocation).await
    }

    /// Moves warmed VMs of `pool` to orphaned, each `(name, zone, reason)`; the name `""` stands
    /// for every entry that cannot be read (see `evict.lua`). Returns the names evicted: a VM a
    /// checkout took meanwhile is not among them.
    pub async fn evict(&self, pool: &str, vms: &[(&str, &str, &str)]) -> Result<Vec<String>> {
        if vms.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.evict.prepare_invoke();
        invocation
            .key(format!("{}{pool}", self.names.pool_key_prefix()))
            .key(self.names.orphaned())
            .key(self.names.scratch())
            .key(format!("{}{pool}", self.names.pool_metrics_key_prefix()));
        for (name, zone, reason) in vms {
            invocation.arg(name).arg(zone).arg(reason);
        }
        self.invoke(&invocation).await
    }
}
