//! What the reconciler reads and writes: one consistent view of everything that accounts for a
//! VM, the suspects (`<ns>:_suspects`) and the safety brake (`<ns>:_brake`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use redis::AsyncCommands;

use super::{Orphan, Result, Store};
use crate::pool::PoolName;

/// A warmed VM in a pool list, as a reconcile pass sees it: no more than it decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmedVm {
    /// Empty when the entry cannot be read.
    pub name: String,
    pub zone: String,
    pub booted_at: Option<u64>,
}

/// A lease, as a reconcile pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The request's identity, the lease's key.
    pub identity: String,
    pub handed: bool,
    pub pool: String,
    /// When its VM was popped (ms).
    pub at: u64,
    /// Its request's deadline (ms), unless the lease is an older warmer's.
    pub deadline: Option<u64>,
    pub vm: String,
}

/// Everything in Redis that accounts for a VM, read in one step (`reconcile_view.lua`): names,
/// zones and times, never an SSH key.
#[derive(Debug, Default)]
pub struct RedisView {
    /// Pools with a readable target.
    pub targets: BTreeMap<String, u64>,
    /// Pool lists, including lists whose pool has no target any more.
    pub pools: BTreeMap<String, Vec<WarmedVm>>,
    /// Unexpired boot reservations, per pool.
    pub booting: BTreeMap<String, Vec<String>>,
    pub leases: Vec<LeaseView>,
    /// Recorded orphans, and those a deleter has claimed.
    pub orphans: Vec<Orphan>,
    pub suspects: BTreeSet<String>,
    pub brake: bool,
    /// Pools with a refill hint pending → since when (ms).
    pub hints: BTreeMap<String, u64>,
}

/// How long the VMs an operator released the brake for are remembered (seconds): the next
/// passes delete them well within it.
const RELEASED_TTL_SECS: i64 = 86_400;

/// Why the safety brake holds (`<ns>:_brake`, JSON; an older warmer stored the count alone).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrakeState {
    /// Unaccounted VMs when it was engaged.
    pub unaccounted: u64,
    /// `WARMER_ORPHAN_THRESHOLD` then.
    pub threshold: Option<u64>,
    /// When it was engaged (Unix seconds).
    pub since: Option<u64>,
}

impl BrakeState {
    fn parse(stored: &str) -> BrakeState {
        serde_json::from_str(stored).unwrap_or_else(|_| BrakeState {
            unaccounted: stored.trim().parse().unwrap_or(0),
            threshold: None,
            since: None,
        })
    }
}

impl Store {
    /// Reads every pool list and boot reservation (of pools with a target, and of pools without
    /// one that still have a list or reservations), the leases, the orphans, the suspects, the
    /// brake and the hints, atomically (`reconcile_view.lua`); `now` (ms) decides which
    /// reservations are unexpired.
    pub async fn reconcile_view(&self, now: u64) -> anyhow::Result<RedisView> {
        let names = &self.names;
        let targets: BTreeMap<String, u64> = self
            .targets()
            .await
            .context("reading pool targets")?
            .into_iter()
            .map(|(pool, target)| (pool.to_string(), target))
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

        let mut invocation = self.scripts.reconcile_view.prepare_invoke();
        invocation
            .key(names.leases())
            .key(names.orphaned())
            .key(names.deleting())
            .key(names.suspects())
            .key(names.brake())
            .key(names.hints());
        for pool in &pools {
            invocation.key(format!("{prefix}{pool}"));
        }
        for pool in &pools {
            invocation.key(format!("{booting_prefix}{pool}"));
        }
        invocation.arg(now).arg(pools.len());
        let parts: Vec<redis::Value> = self
            .invoke(&invocation)
            .await
            .context("reading the snapshot")?;
        let [
            leases,
            orphans,
            claimed,
            suspects,
            brake,
            hints,
            lists,
            booting,
        ] = <[redis::Value; 8]>::try_from(parts)
            .map_err(|parts| super::unexpected("reconcile_view.lua", parts.len()))?;
        let mut view = RedisView {
            targets,
            ..RedisView::default()
        };
        let leases: Vec<String> = super::read(leases)?;
        view.leases = leases
            .chunks_exact(6)
            .map(|lease| LeaseView {
                identity: lease[0].clone(),
                handed: lease[1] == "handed",
                pool: lease[2].clone(),
                at: lease[3].parse().unwrap_or(0),
                deadline: lease[4].parse().ok(),
                vm: lease[5].clone(),
            })
            .collect();
        let mut orphans: Vec<String> = super::read(orphans)?;
        orphans.extend(super::read::<Vec<String>>(claimed)?);
        view.orphans = orphans.into_iter().map(Orphan::parse).collect();
        view.suspects = super::read(suspects)?;
        view.brake = super::read(brake)?;
        let hints: Vec<(String, f64)> = super::read(hints)?;
        view.hints = hints.into_iter().map(|(p, at)| (p, at as u64)).collect();
        let lists: Vec<Vec<String>> = super::read(lists)?;
        let booting: Vec<Vec<String>> = super::read(booting)?;
        for ((pool, fields), booting) in pools.iter().zip(lists).zip(booting) {
            let vms = fields
                .chunks_exact(3)
                .map(|vm| WarmedVm {
                    name: vm[0].clone(),
                    zone: vm[1].clone(),
                    booted_at: vm[2].parse().ok(),
                })
                .collect();
            view.pools.insert(pool.clone(), vms);
            if !booting.is_empty() {
                view.booting.insert(pool.clone(), booting);
            }
        }
        Ok(view)
    }

    /// Forgets handed-out leases, given as (identity, VM name), whose VM is gone (see
    /// `forget_leases.lua`); returns how many.
    pub async fn forget_leases(&self, leases: &[(String, String)]) -> Result<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.scripts.forget_leases.prepare_invoke();
        invocation
            .key(self.names.leases())
            .key(self.names.lease_deadlines())
            .key(self.names.lease_keys())
            .arg(self.names.pool_metrics_key_prefix());
        for (identity, vm) in leases {
            invocation.arg(identity).arg(vm);
        }
        self.invoke(&invocation).await
    }

    /// Adds cloud VMs found unaccounted to the suspects.
    pub async fn mark_suspects(&self, vms: &[String]) -> Result<()> {
        if vms.is_empty() {
            return Ok(());
        }
        let key = &self.names.suspects();
        self.call(|mut conn| async move { conn.sadd(key, vms).await })
            .await
    }

    /// Removes VMs from the suspects (accounted for, gone, or recorded for deletion).
    pub async fn unmark_suspects(&self, vms: &[&String]) -> Result<()> {
        if vms.is_empty() {
            return Ok(());
        }
        let key = &self.names.suspects();
        self.call(|mut conn| async move { conn.srem(key, vms).await })
            .await
    }

    /// Engages the safety brake, recording why: how many VMs are unaccounted, over which
    /// threshold, since when (Unix seconds).
    pub async fn engage_brake(&self, unaccounted: u64, threshold: u64, now: u64) -> Result<()> {
        let key = &self.names.brake();
        let state = BrakeState {
            unaccounted,
            threshold: Some(threshold),
            since: Some(now),
        };
        let json = &serde_json::to_string(&state).unwrap_or_default();
        self.call(|mut conn| async move { conn.set(key, json).await })
            .await
    }

    /// Why the safety brake holds, if it is on.
    pub async fn brake_state(&self) -> Result<Option<BrakeState>> {
        let key = &self.names.brake();
        let state: Option<String> = self
            .call(|mut conn| async move { conn.get(key).await })
            .await?;
        Ok(state.map(|state| BrakeState::parse(&state)))
    }

    /// The unaccounted VMs of the last pass (the suspects), sorted.
    pub async fn suspects(&self) -> Result<Vec<String>> {
        let key = &self.names.suspects();
        let mut suspects: Vec<String> = self
            .call(|mut conn| async move { conn.smembers(key).await })
            .await?;
        suspects.sort();
        Ok(suspects)
    }

    /// An operator releases the brake for `vms` (the suspects they looked at): these no longer
    /// hold it and are deleted by the next pass unless accounted for by then; the brake is
    /// off at once, so boots resume. Returns whether it was on.
    pub async fn release_brake_for(&self, vms: &[String]) -> Result<bool> {
        let (brake, released) = (&self.names.brake(), &self.names.brake_released());
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !vms.is_empty() {
            pipe.sadd(released, vms)
                .ignore()
                .expire(released, RELEASED_TTL_SECS)
                .ignore();
        }
        pipe.del(brake);
        let pipe = &pipe;
        let (deleted,): (u64,) = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(deleted == 1)
    }

    /// The VMs an operator released the brake for (see [`Store::release_brake_for`]).
    pub async fn brake_released(&self) -> Result<BTreeSet<String>> {
        let key = &self.names.brake_released();
        self.call(|mut conn| async move { conn.smembers(key).await })
            .await
    }

    /// Releases the safety brake.
    pub async fn release_brake(&self) -> Result<()> {
        let key = &self.names.brake();
        self.call(|mut conn| async move { conn.del(key).await })
            .await
    }
}
