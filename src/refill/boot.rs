//! Booting one pool up to its target, one VM at a time per slot, and deleting orphans.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::Refill;
use crate::cloud::{BootError, VmSpec};
use crate::pool::{PoolEntry, PoolName};
use crate::store::now_ms;

/// A new VM's name, `travis-job-<uuid>` like travis-ci/warmer's.
fn vm_name() -> String {
    format!("travis-job-{}", uuid::Uuid::new_v4())
}

impl Refill {
    /// Brings `pool` toward its target: trims a surplus, then starts as many boots as the
    /// deficit and this process's free boot slots allow. Returns the number started.
    pub async fn refill_pool(self: &Arc<Self>, pool: &PoolName) -> anyhow::Result<usize> {
        let store = &self.ctx.store;
        let trimmed = store.trim_pool(pool).await.context("trimming")?;
        if trimmed > 0 {
            tracing::info!(%pool, trimmed, "target lowered: surplus VMs recorded for deletion");
        }
        if self.shutdown.is_triggered() {
            return Ok(0);
        }
        let free = self.permits.available_permits();
        let Ok(mut permits) = self
            .permits
            .clone()
            .try_acquire_many_owned(free.max(1) as u32)
        else {
            return Ok(0); // every slot is busy; finishing boots look at the pool again
        };
        let names: Vec<String> = (0..permits.num_permits()).map(|_| vm_name()).collect();
        let expires_at = now_ms() + self.cloud.boot_budget().as_millis() as u64;
        let reservation = store
            .reserve_boots(pool, &names, expires_at)
            .await
            .context("reserving boot slots")?;
        if reservation.braked {
            tracing::warn!(%pool, "safety brake on: no boots");
        }
        let started = reservation.names.len();
        if started > 0 {
            tracing::info!(
                %pool,
                target = reservation.target,
                ready = reservation.ready,
                booting = reservation.booting,
                starting = started,
                "refilling"
            );
        }
        for name in reservation.names {
            let Some(permit) = permits.split(1) else {
                break;
            };
            let refill = self.clone();
            let pool = pool.clone();
            tokio::spawn(async move { refill.boot(pool, name, permit).await });
        }
        Ok(started)
    }

    /// Boots one reserved VM and puts it in its pool, or accounts for it if that fails.
    async fn boot(self: Arc<Self>, pool: PoolName, name: String, permit: OwnedSemaphorePermit) {
        let started = Instant::now();
        let result = self.boot_vm(&pool, &name).await;
        let store = &self.ctx.store;
        let success = match result {
            Ok(entry) => match store.finish_boot(&pool, &entry).await {
                Ok(outcome) if outcome == "ready" => {
                    let boot_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(%pool, vm = %name, zone = %entry.zone, boot_ms, "VM ready");
                    self.event(
                        "instance.booted",
                        json!({"pool": pool.to_string(), "instance": name, "zone": entry.zone, "boot_ms": boot_ms}),
                    )
                    .await;
                    true
                }
                Ok(reason) => {
                    tracing::info!(%pool, vm = %name, %reason, "booted VM not needed any more: deleting it");
                    false
                }
                Err(error) => {
                    // The reservation expires and records the VM as an orphan.
                    tracing::error!(error = %format!("{error:#}"), %pool, vm = %name, "could not add a booted VM to its pool");
                    false
                }
            },
            Err(error) => {
                let (zone, reason) = match &error {
                    BootError::Halfway { zone, .. } => (Some(zone.as_str()), Some("boot_failed")),
                    _ => (None, None),
                };
                let kind = match &error {
                    BootError::Quota(_) => "quota",
                    BootError::NotCreated(_) => "not_created",
                    BootError::Halfway { .. } => "halfway",
                };
                if matches!(error, BootError::Quota(_)) {
                    tracing::error!(%error, %pool, "boot stopped: quota exceeded; raise the quota or lower the target");
                } else {
                    tracing::warn!(%error, %pool, vm = %name, "boot failed");
                }
                if let Err(e) = store.abandon_boot(&pool, &name, zone, reason).await {
                    tracing::error!(error = %e, %pool, vm = %name, "could not release a boot slot; it expires");
                }
                self.event(
                    "boot.failed",
                    json!({"pool": pool.to_string(), "instance": name, "kind": kind, "error": error.to_string()}),
                )
                .await;
                if reason.is_some() {
                    self.event(
                        "instance.orphaned",
                        json!({"pool": pool.to_string(), "instance": name, "zone": zone, "reason": "boot_failed"}),
                    )
                    .await;
                }
                false
            }
        };
        drop(permit);
        self.delete_orphans().await;
        // A pool fills up by itself: after a success, look at it again. After a failure, wait
        // for the next event or fill command rather than hammer a failing cloud.
        if success {
            self.clone().refill_later(pool);
        }
    }

    /// Looks at `pool` again in a task of its own (boxed: a boot refills, a refill boots).
    fn refill_later(self: Arc<Self>, pool: PoolName) {
        let again: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            if let Err(error) = self.refill_pool(&pool).await {
                tracing::warn!(error = %format!("{error:#}"), %pool, "refill after a boot failed");
            }
        });
        tokio::spawn(again);
    }

    async fn boot_vm(&self, pool: &PoolName, name: &str) -> Result<PoolEntry, BootError> {
        let keys = self
            .keys
            .take()
            .await
            .map_err(|e| BootError::NotCreated(format!("generating the SSH key: {e:#}")))?;
        let spec = VmSpec {
            name: name.to_string(),
            pool: pool.clone(),
            ssh_public_key: keys.public_openssh,
            namespace: self.ctx.names.namespace().to_string(),
        };
        let booted = self.cloud.boot(&spec).await?;
        Ok(PoolEntry {
            name: name.to_string(),
            zone: booted.zone,
            ip: Some(booted.ip),
            public_ip: booted.public_ip,
            ssh_private_key: keys.private_pem,
            booted_at: Some(now_ms() / 1000),
            extra: Default::default(),
        })
    }

    /// Deletes the VMs recorded in `orphaned` and announces each deletion.
    pub async fn delete_orphans(&self) {
        for deleted in crate::deletion::delete_orphans(&self.ctx.store, &self.cloud, 50).await {
            self.event(
                "instance.deleted",
                json!({"instance": deleted.name, "zone": deleted.zone, "reason": deleted.reason}),
            )
            .await;
        }
    }
}
