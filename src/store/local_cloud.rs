//! The simulated cloud of `WARMER_PROVIDER=local` (`<ns>:_local_cloud`): VM name → its record
//! as JSON, and a counter of addresses under a field no VM name can take. Plain hash commands,
//! each safe to repeat after a dropped connection.

use std::collections::BTreeMap;

use redis::AsyncCommands;

use super::Result;
use super::Store;

/// The address counter's field (not a VM name: those are Compute Engine names).
const NEXT_ADDRESS: &str = "#next_address";

impl Store {
    /// A fresh address number for a simulated VM.
    pub async fn local_address(&self) -> Result<u32> {
        let key = &self.names.local_cloud();
        self.call(|mut conn| async move { conn.hincr(key, NEXT_ADDRESS, 1).await })
            .await
    }

    /// Writes a simulated VM's record.
    pub async fn local_put(&self, name: &str, record: &str) -> Result<()> {
        let key = &self.names.local_cloud();
        self.call(|mut conn| async move { conn.hset(key, name, record).await })
            .await
    }

    pub async fn local_remove(&self, name: &str) -> Result<()> {
        let key = &self.names.local_cloud();
        self.call(|mut conn| async move { conn.hdel(key, name).await })
            .await
    }

    pub async fn local_get(&self, name: &str) -> Result<Option<String>> {
        let key = &self.names.local_cloud();
        self.call(|mut conn| async move { conn.hget(key, name).await })
            .await
    }

    /// Every simulated VM's record, by name.
    pub async fn local_all(&self) -> Result<BTreeMap<String, String>> {
        let key = &self.names.local_cloud();
        let mut all: BTreeMap<String, String> = self
            .call(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        all.remove(NEXT_ADDRESS);
        Ok(all)
    }
}
