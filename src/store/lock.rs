//! The reconciler's lock (`<ns>:_reconciler`): at most one active reconciler.

use std::time::Duration;

use redis::AsyncCommands;

use super::Result;
use super::Store;

impl Store {
    /// Takes or renews the reconciler lock for `owner` (see `lock.lua`); true while `owner`
    /// holds it.
    pub async fn lock(&self, owner: &str, ttl: Duration) -> Result<bool> {
        let mut invocation = self.scripts.lock.prepare_invoke();
        invocation
            .key(self.names.reconciler_lock())
            .arg(owner)
            .arg(ttl.as_millis() as u64);
        let held: i64 = self.invoke(&invocation).await?;
        Ok(held == 1)
    }

    /// Who holds the reconciler lock, if anyone does.
    pub async fn reconciler(&self) -> Result<Option<String>> {
        let key = &self.names.reconciler_lock();
        self.call(|mut conn| async move { conn.get(key).await })
            .await
    }

    /// Releases the reconciler lock if `owner` holds it (see `unlock.lua`).
    pub async fn unlock(&self, owner: &str) -> Result<()> {
        let mut invocation = self.scripts.unlock.prepare_invoke();
        invocation.key(self.names.reconciler_lock()).arg(owner);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }
}
