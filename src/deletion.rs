//! Deleting the VMs recorded in `orphaned`: shared by the refill consumer (prompt deletion of
//! what it trims or fails to boot) and the reconciler (everything else).

use crate::cloud::Cloud;
use crate::store::Store;

/// Deletions in flight at once.
const PARALLEL_DELETES: usize = 16;

/// A VM deleted in the cloud and forgotten in `orphaned`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub name: String,
    pub zone: Option<String>,
    pub reason: String,
}

/// Deletes up to `limit` VMs listed in `orphaned` (a VM already gone counts as deleted) and
/// removes their records. Failures stay recorded for the next attempt.
pub async fn delete_orphans(store: &Store, cloud: &Cloud, limit: isize) -> Vec<Deleted> {
    let orphans = match store.orphans(limit).await {
        Ok(orphans) => orphans,
        Err(error) => {
            tracing::warn!(%error, "reading orphans failed");
            return Vec::new();
        }
    };
    // Deletions are independent HTTP calls: run a few at once.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_DELETES));
    let mut tasks = tokio::task::JoinSet::new();
    for orphan in orphans {
        let Some(name) = orphan.name.clone().filter(|n| !n.is_empty()) else {
            // Never log the record: an unreadable pool entry may carry an SSH key.
            tracing::error!(
                bytes = orphan.raw.len(),
                "unreadable orphan record left for an operator (LRANGE <namespace>:orphaned)"
            );
            continue;
        };
        let (store, cloud, slots) = (store.clone(), cloud.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            if let Err(error) = cloud.delete(&name, orphan.zone.as_deref()).await {
                tracing::warn!(
                    error = %format!("{error:#}"),
                    vm = %name,
                    "deleting an orphan failed; retried later"
                );
                return None;
            }
            if let Err(error) = store.forget_orphan(&orphan).await {
                tracing::warn!(%error, vm = %name, "deleted, but the orphan record stays; deleting again is harmless");
            }
            tracing::info!(vm = %name, reason = %orphan.reason, "VM deleted");
            Some(Deleted {
                name,
                zone: orphan.zone,
                reason: orphan.reason,
            })
        });
    }
    let mut deleted = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(vm)) = done {
            deleted.push(vm);
        }
    }
    deleted
}
