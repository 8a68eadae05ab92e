//! Orphans (`<ns>:orphaned`): VMs that may exist in the cloud but belong to no pool, recorded
//! until their deletion is confirmed.

use redis::AsyncCommands;

use super::{Orphan, OrphanRecord, Store};

impl Store {
    /// How many VMs wait in `orphaned` for deletion.
    pub async fn orphan_count(&self) -> redis::RedisResult<u64> {
        let key = &self.names.orphaned();
        self.call(|mut conn| async move { conn.llen(key).await })
            .await
    }

    /// The first `limit` records of `orphaned`.
    pub async fn orphans(&self, limit: isize) -> redis::RedisResult<Vec<Orphan>> {
        let key = &self.names.orphaned();
        let raw: Vec<String> = self
            .call(|mut conn| async move { conn.lrange(key, 0, limit - 1).await })
            .await?;
        Ok(raw.into_iter().map(Orphan::parse).collect())
    }

    /// Records VMs for deletion.
    pub async fn record_orphans(&self, records: &[OrphanRecord]) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let raw: Vec<String> = records
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        let (key, raw) = (&self.names.orphaned(), &raw);
        // Repeated after a dropped connection, a VM may be recorded twice: deleting it twice is
        // harmless (a missing VM counts as deleted).
        let _: () = self
            .call(|mut conn| async move { conn.rpush(key, raw).await })
            .await?;
        Ok(())
    }

    /// Removes one record once its VM is deleted.
    pub async fn forget_orphan(&self, orphan: &Orphan) -> redis::RedisResult<()> {
        let (key, raw) = (&self.names.orphaned(), &orphan.raw);
        let _: i64 = self
            .call(|mut conn| async move { conn.lrem(key, 1, raw).await })
            .await?;
        Ok(())
    }
}
