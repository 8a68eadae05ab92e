//! Deleting the VMs recorded in `orphaned`: shared by the refill consumer (prompt deletion of
//! what it trims or fails to boot) and the reconciler (everything else).

use crate::cloud::Cloud;
use crate::store::Store;

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
    let mut deleted = Vec::new();
    for orphan in orphans {
        let Some(name) = &orphan.name else {
            tracing::error!(
                entry = %orphan.raw.chars().take(200).collect::<String>(),
                "unreadable orphan record left for an operator"
            );
            continue;
        };
        match cloud.delete(name, orphan.zone.as_deref()).await {
            Ok(()) => {
                if let Err(error) = store.forget_orphan(&orphan).await {
                    tracing::warn!(%error, vm = %name, "deleted, but the orphan record stays; deleting again is harmless");
                }
                tracing::info!(vm = %name, reason = %orphan.reason, "VM deleted");
                deleted.push(Deleted {
                    name: name.clone(),
                    zone: orphan.zone.clone(),
                    reason: orphan.reason.clone(),
                });
            }
            Err(error) => tracing::warn!(
                error = %format!("{error:#}"),
                vm = %name,
                "deleting an orphan failed; retried later"
            ),
        }
    }
    deleted
}
