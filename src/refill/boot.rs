//! Booting pools up to their targets, sharing this process's boot slots between them, and
//! deleting orphans.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::OwnedSemaphorePermit;

use super::Refill;
use crate::clock::{now_ms, now_secs};
use crate::cloud::{BootError, VmSpec};
use crate::deletion::{Deleter, Listed};
use crate::events::Event;
use crate::pool::PoolName;
use crate::shutdown::Shutdown;
use crate::store::PoolEntry;
use crate::store::{Capped, Finished};

/// How long one drain of the refill process's deleter runs before it looks at shutdown again.
const DELETION_SLICE: std::time::Duration = std::time::Duration::from_secs(60);

/// A new VM's name, `travis-job-<uuid>` like travis-ci/warmer's.
fn vm_name() -> String {
    format!("travis-job-{}", uuid::Uuid::new_v4())
}

impl Refill {
    /// Trims a surplus of `pool` (its target was lowered), then puts it among the pools that
    /// want boots; [`Self::dispatch`] starts them.
    pub async fn want(&self, pool: &PoolName) -> anyhow::Result<()> {
        let trimmed = self.ctx.store.trim_pool(pool).await.context("trimming")?;
        if trimmed > 0 {
            tracing::info!(%pool, trimmed, "target lowered: surplus VMs recorded for deletion");
        }
        self.queue(pool);
        Ok(())
    }

    /// Adds `pool` at the back of the pools that want boots, unless it is there already.
    fn queue(&self, pool: &PoolName) {
        if let Ok(mut wanting) = self.wanting.lock()
            && !wanting.contains(pool)
        {
            wanting.push_back(pool.clone());
        }
    }

    /// Stops looking at `pool` until a message (or a successful boot) names it again.
    fn unqueue(&self, pool: &PoolName) {
        if let Ok(mut wanting) = self.wanting.lock() {
            wanting.retain(|p| p != pool);
        }
    }

    /// Starts boots while this process has free boot slots and pools want VMs, one slot at a
    /// time, round-robin: the pool at the front gets one reservation (`reserve_boots.lua`, so
    /// `ready + booting <= target` across processes) and goes to the back while it still gets
    /// one. So pools short at the same moment share the slots, and a slot that frees serves
    /// whichever pool waits longest. Returns the number of boots started.
    pub async fn dispatch(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut started = 0;
        while !self.shutdown.is_triggered() {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break; // every slot is busy: a finishing boot dispatches again
            };
            let next = self.wanting.lock().ok().and_then(|mut w| w.pop_front());
            let Some(pool) = next else {
                break;
            };
            let expires_at = now_ms() + self.cloud.boot_budget().as_millis() as u64;
            let reservation = match self
                .ctx
                .store
                .reserve_boots(&pool, &[vm_name()], expires_at, self.ctx.config.max_vms)
                .await
            {
                Ok(reservation) => reservation,
                Err(error) => {
                    self.queue(&pool);
                    return Err(error).context("reserving a boot slot");
                }
            };
            if reservation.braked {
                tracing::warn!(%pool, "safety brake on: no boots");
            }
            match reservation.capped {
                Capped::No => {}
                Capped::Still => {
                    tracing::debug!(%pool, "fleet at WARMER_MAX_VMS: no boot");
                }
                Capped::Newly => {
                    let max = self.ctx.config.max_vms;
                    tracing::warn!(
                        %pool,
                        max,
                        "the fleet reached WARMER_MAX_VMS: boots wait until VMs are deleted or handed-out VMs are gone (raise WARMER_MAX_VMS if this is the fleet you want)"
                    );
                    self.events
                        .emit(Event::FleetCapped {
                            pool: pool.to_string(),
                            max,
                        })
                        .await;
                }
            }
            // None: the pool is at its target (or braked, or gone); the permit is freed.
            let Some(name) = reservation.names.into_iter().next() else {
                continue;
            };
            tracing::info!(
                %pool,
                target = reservation.target,
                ready = reservation.ready,
                booting = reservation.booting,
                vm = %name,
                "booting"
            );
            self.queue(&pool);
            started += 1;
            tokio::spawn(self.clone().boot(pool, name, permit));
        }
        Ok(started)
    }

    /// Boots one reserved VM and puts it in its pool, or accounts for it if that fails.
    async fn boot(self: Arc<Self>, pool: PoolName, name: String, permit: OwnedSemaphorePermit) {
        let started = Instant::now();
        let result = self.boot_vm(&pool, &name).await;
        let store = &self.ctx.store;
        let success = match result {
            Ok(entry) => match store.finish_boot(&pool, &entry, started.elapsed()).await {
                Ok(Finished::Ready) => {
                    let boot_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(
                        %pool,
                        vm = %name,
                        zone = %entry.zone,
                        "count#warmer.boots.ready" = 1,
                        "measure#warmer.boot.duration" = format!("{boot_ms}ms"),
                        "VM ready"
                    );
                    self.events
                        .emit(Event::InstanceBooted {
                            pool: pool.to_string(),
                            instance: name,
                            zone: entry.zone,
                            boot_ms,
                        })
                        .await;
                    true
                }
                Ok(outcome) => {
                    tracing::info!(%pool, vm = %name, ?outcome, "count#warmer.boots.unneeded" = 1, "booted VM not needed any more: deleting it");
                    false
                }
                Err(error) => {
                    // The reservation expires and records the VM as an orphan.
                    tracing::error!(error = %crate::telemetry::report(&error), %pool, vm = %name, "could not add a booted VM to its pool");
                    false
                }
            },
            Err(error) => {
                let zone = error.zone();
                // Only a boot that failed halfway may have left a VM behind.
                let reason = matches!(error, BootError::Halfway { .. }).then_some("boot_failed");
                if matches!(error, BootError::Quota { .. }) {
                    tracing::error!(%error, %pool, "count#warmer.boots.failed" = 1, "boot stopped: quota exceeded; raise the quota or lower the target");
                } else {
                    tracing::warn!(%error, %pool, vm = %name, "count#warmer.boots.failed" = 1, "boot failed");
                }
                let result = format!("failed_{}", error.kind());
                if let Err(e) = store
                    .abandon_boot(&pool, &name, zone, reason, &result)
                    .await
                {
                    tracing::error!(error = %e, %pool, vm = %name, "could not release a boot slot; it expires");
                }
                self.events
                    .emit(Event::BootFailed {
                        pool: pool.to_string(),
                        instance: name.clone(),
                        kind: error.kind(),
                        error: error.to_string(),
                    })
                    .await;
                if let Some(reason) = reason {
                    self.events
                        .emit(Event::InstanceOrphaned {
                            pool: pool.to_string(),
                            instance: name,
                            zone: zone.map(String::from),
                            reason: reason.into(),
                        })
                        .await;
                }
                false
            }
        };
        drop(permit);
        self.deletions.notify_one();
        // A pool fills up by itself: after a success, it is looked at again. After a failure, it
        // waits for the next event or fill command rather than hammer a failing cloud. Either
        // way the freed slot goes to whichever pool waits.
        if success {
            self.queue(&pool);
        } else {
            self.unqueue(&pool);
        }
        self.dispatch_later();
    }

    /// Dispatches in a task of its own (boxed: a boot dispatches, a dispatch boots).
    fn dispatch_later(self: Arc<Self>) {
        let again: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            if let Err(error) = self.dispatch().await {
                tracing::warn!(error = %crate::telemetry::report(&error), "starting boots after a boot failed");
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
            booted_at: Some(now_secs()),
            extra: Default::default(),
        })
    }

    /// Deletes the VMs recorded in `orphaned` whenever woken (after each message and each
    /// boot), as fast as the cloud takes, until `shutdown`.
    pub(super) async fn delete_orphans(self: Arc<Self>, shutdown: Shutdown) {
        let mut deleter = Deleter::new(self.ctx.store.clone(), self.cloud.clone());
        // Refill lists nothing: each VM is looked up before it is deleted.
        let listed = Listed::new();
        loop {
            tokio::select! {
                _ = self.deletions.notified() => {}
                _ = shutdown.wait() => return,
            }
            let slice = Instant::now() + DELETION_SLICE;
            tokio::select! {
                _ = deleter.drain(&self.events, slice, &listed) => {}
                // Claims of calls cut short expire and go back to orphaned.
                _ = shutdown.wait() => return,
            }
            if Instant::now() >= slice {
                self.deletions.notify_one(); // more may wait: go on
            }
        }
    }
}
