//! Boot reservations (`<ns>:_booting:<pool>`): a slot held for each VM being booted, so that
//! `ready + booting <= target` whatever the number of refill processes.

use std::time::Duration;

use super::{PoolEntry, Result, Store, unexpected};
use crate::clock::now_ms;
use crate::metrics;
use crate::pool::PoolName;

/// What [`Store::reserve_boots`] found and took (see `reserve_boots.lua`).
#[derive(Debug, PartialEq)]
pub struct Reservation {
    /// `None` when the pool does not exist.
    pub target: Option<u64>,
    pub ready: u64,
    pub booting: u64,
    pub braked: bool,
    /// The fleet cap cut the reservation short.
    pub capped: Capped,
    /// Names whose boot slots were reserved.
    pub names: Vec<String>,
}

/// Whether the fleet cap (`WARMER_MAX_VMS`) cut a reservation short (see `reserve_boots.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    No,
    /// Yes, and the fleet was at the cap already.
    Still,
    /// Yes, and it is the first reservation the cap cut since it was last not reached.
    Newly,
}

/// Where a booted VM went (see `finish_boot.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Into its pool.
    Ready,
    /// To orphaned: its reservation had expired (the reconciler may have deleted it).
    Expired,
    /// To orphaned: its pool was deleted while it booted.
    NoPool,
    /// To orphaned: the pool no longer wants it (its target was lowered).
    Surplus,
}

impl Store {
    /// Reserves up to `names.len()` boot slots for `pool`, never taking the fleet past
    /// `max_vms` (see `reserve_boots.lua`).
    pub async fn reserve_boots(
        &self,
        pool: &PoolName,
        names: &[String],
        expires_at: u64,
        max_vms: u32,
    ) -> Result<Reservation> {
        let n = &self.names;
        let mut invocation = self.scripts.reserve_boots.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.booting(pool))
            .key(n.orphaned())
            .key(n.brake())
            .key(n.leases())
            .key(n.fleet_capped())
            .key(n.pool_metrics(pool))
            .arg(pool.to_string())
            .arg(now_ms())
            .arg(expires_at)
            .arg(max_vms)
            .arg(n.pool_key_prefix())
            .arg(n.booting_key_prefix());
        for name in names {
            invocation.arg(name);
        }
        let reply: Vec<redis::Value> = self.invoke(&invocation).await?;
        let number = |i: usize| -> Result<i64> {
            match reply.get(i) {
                Some(value) => super::read(value.clone()),
                None => Err(unexpected("reserve_boots.lua", &reply)),
            }
        };
        Ok(Reservation {
            target: u64::try_from(number(0)?).ok(),
            ready: number(1)?.max(0) as u64,
            booting: number(2)?.max(0) as u64,
            braked: number(3)? == 1,
            capped: match number(4)? {
                0 => Capped::No,
                2 => Capped::Newly,
                _ => Capped::Still,
            },
            names: reply
                .iter()
                .skip(5)
                .map(|v| super::read::<String>(v.clone()))
                .collect::<Result<_>>()?,
        })
    }

    /// Pushes a booted VM into its pool and frees its slot, or records it as an orphan; counts
    /// the boot and its duration, `took` (see `finish_boot.lua`).
    pub async fn finish_boot(
        &self,
        pool: &PoolName,
        entry: &PoolEntry,
        took: Duration,
    ) -> anyhow::Result<Finished> {
        let n = &self.names;
        let mut invocation = self.scripts.finish_boot.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.booting(pool))
            .key(n.orphaned())
            .key(n.pool_metrics(pool))
            .key(n.metrics())
            .key(n.boot_times(&pool.to_string()))
            .arg(pool.to_string())
            .arg(&entry.name)
            .arg(serde_json::to_string(entry)?)
            .arg(&entry.zone)
            .arg(now_ms())
            .arg(metrics::BOOT_DURATION.index(took))
            .arg(took.as_millis() as u64);
        let outcome: String = self.invoke(&invocation).await?;
        Ok(match outcome.as_str() {
            "ready" => Finished::Ready,
            "expired" => Finished::Expired,
            "no_pool" => Finished::NoPool,
            "surplus" => Finished::Surplus,
            other => return Err(unexpected("finish_boot.lua", other).into()),
        })
    }

    /// Frees a failed boot's slot and counts the failure as `result`; with a `reason`, its VM
    /// may exist and is recorded as an orphan (see `abandon_boot.lua`). Returns whether the
    /// reservation was still held.
    pub async fn abandon_boot(
        &self,
        pool: &PoolName,
        name: &str,
        zone: Option<&str>,
        reason: Option<&str>,
        result: &str,
    ) -> Result<bool> {
        let mut invocation = self.scripts.abandon_boot.prepare_invoke();
        invocation
            .key(self.names.booting(pool))
            .key(self.names.orphaned())
            .key(self.names.pool_metrics(pool))
            .arg(name)
            .arg(zone.unwrap_or(""))
            .arg(reason.unwrap_or(""))
            .arg(result);
        let held: i64 = self.invoke(&invocation).await?;
        Ok(held == 1)
    }
}
