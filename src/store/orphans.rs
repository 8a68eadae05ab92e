//! Orphans (`<ns>:orphaned`): VMs that may exist in the cloud but belong to no pool, recorded
//! until their deletion is confirmed; a deleter claims records (`<ns>:_deleting`) while it
//! deletes their VMs, so that deleters in several processes share the work.

use crate::clock::now_ms;
use redis::AsyncCommands;

use super::{Orphan, OrphanRecord, Result, Store};

/// Refused orphan records kept for an operator; beyond, the oldest go.
pub const REFUSED_KEPT: u64 = 1_000;

impl Store {
    /// How many VMs wait for deletion (recorded, or claimed by a deleter).
    pub async fn orphan_count(&self) -> Result<u64> {
        let (list, claims) = (&self.names.orphaned(), &self.names.deleting());
        let (recorded, claimed): (u64, u64) = self
            .call(|mut conn| async move {
                redis::pipe()
                    .llen(list)
                    .zcard(claims)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(recorded + claimed)
    }

    /// Claims up to `limit` records to delete their VMs, each until `expires_at` (ms); returns
    /// the expired claims of others to orphaned first (see `claim_orphans.lua`).
    pub async fn claim_orphans(&self, limit: usize, expires_at: u64) -> Result<Vec<Orphan>> {
        let mut invocation = self.scripts.claim_orphans.prepare_invoke();
        invocation
            .key(self.names.orphaned())
            .key(self.names.deleting())
            .arg(now_ms())
            .arg(expires_at)
            .arg(limit);
        let raw: Vec<String> = self.invoke(&invocation).await?;
        Ok(raw.into_iter().map(Orphan::parse).collect())
    }

    /// Gives claimed records back to orphaned (see `release_orphans.lua`).
    pub async fn release_orphans(&self, orphans: &[Orphan]) -> Result<()> {
        if orphans.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.release_orphans.prepare_invoke();
        invocation
            .key(self.names.orphaned())
            .key(self.names.deleting());
        for orphan in orphans {
            invocation.arg(&orphan.raw);
        }
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Records VMs for deletion.
    pub async fn record_orphans(&self, records: &[OrphanRecord]) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let raw: Vec<String> = records
            .iter()
            .map(serde_json::to_string)
            .collect::<std::result::Result<_, _>>()?;
        let (key, raw) = (&self.names.orphaned(), &raw);
        // Repeated after a dropped connection, a VM may be recorded twice: deleting it twice is
        // harmless (a missing VM counts as deleted).
        let _: () = self
            .call(|mut conn| async move { conn.rpush(key, raw).await })
            .await?;
        Ok(())
    }

    /// Takes a claimed record off the deleters' hands for good, `why` (`invalid_name`,
    /// `foreign`): it goes to `<ns>:_refused` (the last [`REFUSED_KEPT`]) and is counted (see
    /// `refuse_orphan.lua`).
    pub async fn refuse_orphan(&self, orphan: &Orphan, why: &str) -> Result<()> {
        let mut invocation = self.scripts.refuse_orphan.prepare_invoke();
        invocation
            .key(self.names.deleting())
            .key(self.names.refused())
            .key(self.names.metrics())
            .arg(&orphan.raw)
            .arg(why)
            .arg(now_ms())
            .arg(REFUSED_KEPT);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Refused records, oldest first, as stored (see [`Self::refuse_orphan`]).
    pub async fn refused(&self) -> Result<Vec<String>> {
        let key = &self.names.refused();
        self.call(|mut conn| async move { conn.lrange(key, 0, -1).await })
            .await
    }

    /// Forgets a claimed record once its VM is deleted, counting the deletion (see
    /// `forget_orphan.lua`).
    pub async fn forget_orphan(&self, orphan: &Orphan) -> Result<()> {
        let mut invocation = self.scripts.forget_orphan.prepare_invoke();
        invocation
            .key(self.names.deleting())
            .key(self.names.metrics())
            .arg(&orphan.raw)
            .arg(&orphan.record.reason);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }
}
