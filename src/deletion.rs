//! Deleting the VMs recorded in `orphaned`: shared by the refill consumer (prompt deletion of
//! what it trims or fails to boot) and the reconciler (everything else).

use crate::cloud::Cloud;
use crate::events::{Event, Events};
use crate::store::Store;

/// Deletions in flight at once.
const PARALLEL_DELETES: usize = 16;

/// Deletes up to `limit` VMs listed in `orphaned` (a VM already gone counts as deleted), removes
/// their records and announces each deletion; returns how many were deleted. Failures stay
/// recorded for the next attempt.
pub async fn delete_orphans(store: &Store, cloud: &Cloud, events: &Events, limit: isize) -> usize {
    let orphans = match store.orphans(limit).await {
        Ok(orphans) => orphans,
        Err(error) => {
            tracing::warn!(%error, "reading orphans failed");
            return 0;
        }
    };
    // Deletions are independent HTTP calls: run a few at once.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_DELETES));
    let mut tasks = tokio::task::JoinSet::new();
    for orphan in orphans {
        let Some(name) = orphan.name().map(String::from) else {
            // Never log the record: an unreadable pool entry may carry an SSH key.
            tracing::error!(
                bytes = orphan.raw.len(),
                "unreadable orphan record left for an operator (LRANGE <namespace>:orphaned)"
            );
            continue;
        };
        let (store, cloud, events, slots) =
            (store.clone(), cloud.clone(), events.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            let zone = orphan.record.zone.clone();
            if let Err(error) = cloud.delete(&name, zone.as_deref()).await {
                tracing::warn!(
                    error = %crate::telemetry::report(&error),
                    vm = %name,
                    "deleting an orphan failed; retried later"
                );
                return None;
            }
            if let Err(error) = store.forget_orphan(&orphan).await {
                tracing::warn!(%error, vm = %name, "deleted, but the orphan record stays; deleting again is harmless");
            }
            let reason = orphan.record.reason;
            tracing::info!(vm = %name, %reason, "VM deleted");
            events
                .emit(Event::InstanceDeleted {
                    instance: name,
                    zone,
                    reason,
                })
                .await;
            Some(())
        });
    }
    let mut deleted = 0;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(())) = done {
            deleted += 1;
        }
    }
    deleted
}
