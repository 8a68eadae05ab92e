//! `warmer reconcile`: the cloud is the source of truth. Every `WARMER_RECONCILE_INTERVAL` the
//! active reconciler takes a [`Snapshot`] (Redis atomically, then the cloud's VMs carrying this
//! deployment's label), decides a [`Plan`] with the pure [`plan::decide`], and applies it:
//! orphans deleted, unaccounted VMs marked then deleted, dead/stale/surplus VMs evicted,
//! handed-out VMs labelled and deleted past `WARMER_MAX_HANDOUT_AGE`, fills published for pools
//! left below target, and the safety brake set or released.
//!
//! At most one reconciler is active: a Redis lock with expiry (`lock.lua`) of 3 × the interval
//! (at least 3 s), renewed by its holder before each pass; another instance asks for it every
//! tenth of an interval, so it takes over within 3.1 × the interval after the holder's last
//! renewal when the holder dies. On SIGTERM it finishes its pass, releases the lock and exits.

pub mod plan;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::AsyncCommands;
use serde_json::json;

use crate::amqp::{self, Publisher};
use crate::cloud::{CHECKED_OUT_AT, COOLED, Cloud, CloudVm, DEPLOYMENT, label_value};
use crate::context::Context;
use crate::pool::{PoolEntry, PoolName};
use crate::shutdown::Shutdown;
use crate::store::now_ms;
use plan::{LeasedVm, ReadyVm};
pub use plan::{Limits, Plan, Snapshot};

/// What a pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub plan: Plan,
    pub deleted: usize,
    pub evicted: usize,
    pub elapsed: Duration,
}

/// One reconciler process.
pub struct Reconciler {
    ctx: Context,
    cloud: Cloud,
    owner: String,
}

impl Reconciler {
    pub fn new(ctx: Context, cloud: Cloud) -> Self {
        Self {
            ctx,
            cloud,
            owner: format!("reconciler-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// This process's lock owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn lock_ttl(&self) -> Duration {
        (self.ctx.config.reconcile_interval * 3).max(Duration::from_secs(3))
    }

    fn limits(&self) -> Limits {
        let config = &self.ctx.config;
        Limits {
            max_vm_age_secs: config.max_vm_age.as_secs(),
            max_handout_age_secs: config.max_handout_age.as_secs(),
            orphan_threshold: config.orphan_threshold,
        }
    }

    /// Reconciles every interval while holding the lock, until `shutdown`. RabbitMQ is needed
    /// only for events and fills: while it is away, passes go on without them.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let interval = self.ctx.config.reconcile_interval;
        let mut broker: Option<(lapin::Connection, Publisher)> = None;
        let mut active = false;
        loop {
            match self.ctx.store.lock(&self.owner, self.lock_ttl()).await {
                Ok(true) => {
                    if !active {
                        tracing::info!(owner = %self.owner, "active reconciler");
                        active = true;
                    }
                    if broker.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                        broker = match self.connect_broker().await {
                            Ok(broker) => Some(broker),
                            Err(error) => {
                                tracing::warn!(error = %format!("{error:#}"), "RabbitMQ unreachable: this pass publishes no events or fills");
                                None
                            }
                        };
                    }
                    self.logged_pass(broker.as_ref().map(|(_, p)| p)).await;
                }
                Ok(false) => {
                    if active {
                        tracing::warn!("lost the reconciler lock: standing by");
                    }
                    active = false;
                }
                Err(error) => tracing::warn!(%error, "cannot reach Redis for the reconciler lock"),
            }
            // A standby asks for the lock ten times an interval, so it takes over at most a
            // tenth of an interval after the holder's lock expired.
            let pause = if active { interval } else { interval / 10 };
            if !shutdown.sleep(pause).await {
                break;
            }
        }
        let _ = self.ctx.store.unlock(&self.owner).await;
        if let Some((connection, publisher)) = broker {
            let _ = publisher.channel().close(200, "bye".into()).await;
            let _ = connection.close(200, "bye".into()).await;
        }
        Ok(())
    }

    async fn connect_broker(&self) -> anyhow::Result<(lapin::Connection, Publisher)> {
        let connection = self.ctx.amqp("reconcile").await?;
        let channel = connection.create_channel().await?;
        amqp::declare_topology(&channel, &self.ctx.names).await?;
        let _ = channel.close(200, "declared".into()).await;
        let publisher = Publisher::open(&connection).await?;
        Ok((connection, publisher))
    }

    async fn logged_pass(&self, publisher: Option<&Publisher>) {
        match self.pass(publisher).await {
            Ok(report) if !report.plan.is_idle() => tracing::info!(
                deleted = report.deleted,
                evicted = report.evicted,
                marked = report.plan.mark.len(),
                labelled = report.plan.label.len(),
                fills = report.plan.fill.len(),
                unaccounted = report.plan.unaccounted,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "reconciled"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "reconcile pass failed"),
        }
    }

    /// One pass: snapshot, decide, apply. Events and fills need `publisher`.
    pub async fn pass(&self, publisher: Option<&Publisher>) -> anyhow::Result<Report> {
        let started = Instant::now();
        let snapshot = self.snapshot().await?;
        let plan = plan::decide(&snapshot, self.limits());
        // The snapshot may have taken a while: act only if this process still holds the lock.
        if !self.ctx.store.lock(&self.owner, self.lock_ttl()).await? {
            anyhow::bail!("lost the reconciler lock before applying");
        }
        let mut report = self.apply(plan, publisher).await?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Reads Redis in one MULTI (a consistent view), then lists the cloud.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let names = &self.ctx.names;
        let store = &self.ctx.store;
        let mut redis = store.connection();
        let targets: BTreeMap<String, u64> = store
            .targets()
            .await?
            .into_iter()
            .filter(|(pool, _)| pool.parse::<PoolName>().is_ok())
            .filter_map(|(pool, target)| Some((pool, crate::pool::parse_target(&target)?)))
            .collect();
        // Pool lists, including those whose target was removed behind warmer's back.
        let mut pools: Vec<String> = targets.keys().cloned().collect();
        let prefix = names.pool_key_prefix();
        // Lists and boot reservations of pools whose target is gone are read too.
        let booting_prefix = names.booting_key_prefix();
        let mut found = Vec::new();
        for pattern in [format!("{prefix}*:*"), format!("{booting_prefix}*")] {
            let mut keys: redis::AsyncIter<String> = redis
                .scan_match(pattern)
                .await
                .context("scanning pool keys")?;
            while let Some(key) = futures_lite::StreamExt::next(&mut keys).await {
                found.push(key?);
            }
        }
        for key in found {
            let pool = key
                .strip_prefix(&booting_prefix)
                .or_else(|| key.strip_prefix(&prefix))
                .unwrap_or_default();
            if !pool.starts_with('_')
                && pool.parse::<PoolName>().is_ok()
                && !pools.iter().any(|p| p == pool)
            {
                pools.push(pool.to_string());
            }
        }

        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for pool in &pools {
            pipe.lrange(format!("{prefix}{pool}"), 0, -1);
            pipe.zrangebyscore(format!("{booting_prefix}{pool}"), now, "+inf");
        }
        pipe.hgetall(names.leases())
            .lrange(names.orphaned(), 0, -1)
            .smembers(names.suspects())
            .exists(names.brake());
        let mut values: Vec<redis::Value> = pipe
            .query_async(&mut redis)
            .await
            .context("reading the snapshot")?;
        let tail = values.split_off(pools.len() * 2);
        let mut snapshot = Snapshot {
            now: now / 1000,
            targets,
            ..Snapshot::default()
        };
        for (pool, pair) in pools.iter().zip(values.chunks(2)) {
            let entries: Vec<String> = redis::from_redis_value_ref(&pair[0])?;
            let booting: Vec<String> = redis::from_redis_value_ref(&pair[1])?;
            let ready = entries
                .into_iter()
                .map(|raw| {
                    let entry = serde_json::from_str::<PoolEntry>(&raw).ok();
                    ReadyVm {
                        name: entry.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
                        zone: entry.as_ref().map(|e| e.zone.clone()).unwrap_or_default(),
                        booted_at: entry.and_then(|e| e.booted_at),
                        raw,
                    }
                })
                .collect();
            snapshot.pools.insert(pool.clone(), ready);
            if !booting.is_empty() {
                snapshot.booting.insert(pool.clone(), booting);
            }
        }
        let leases: BTreeMap<String, String> = redis::from_redis_value_ref(&tail[0])?;
        snapshot.leases = leases.values().filter_map(|raw| parse_lease(raw)).collect();
        let orphans: Vec<String> = redis::from_redis_value_ref(&tail[1])?;
        snapshot.orphans = orphans
            .into_iter()
            .map(crate::store::Orphan::parse)
            .collect();
        snapshot.suspects = redis::from_redis_value_ref(&tail[2])?;
        snapshot.brake_on = redis::from_redis_value_ref(&tail[3])?;
        snapshot.cloud = self
            .cloud
            .list(names.namespace())
            .await
            .context("listing the cloud's VMs")?;
        Ok(snapshot)
    }

    async fn apply(&self, plan: Plan, publisher: Option<&Publisher>) -> anyhow::Result<Report> {
        let store = &self.ctx.store;
        let names = &self.ctx.names;
        let mut report = Report::default();
        let event = |key: &'static str, body: serde_json::Value| async move {
            if let Some(publisher) = publisher
                && let Err(error) = publisher.event(names, key, &body).await
            {
                tracing::warn!(error = %format!("{error:#}"), key, "event not published");
            }
        };

        for eviction in &plan.evict {
            let key = format!("{}{}", names.pool_key_prefix(), eviction.pool);
            let vm = &eviction.vm;
            if store
                .evict(&key, &vm.raw, &vm.name, &vm.zone, eviction.reason)
                .await?
            {
                report.evicted += 1;
                tracing::info!(pool = %eviction.pool, vm = %vm.name, reason = eviction.reason, "evicted");
                event("instance.evicted", json!({"pool": eviction.pool, "instance": vm.name, "zone": vm.zone, "reason": eviction.reason})).await;
            }
        }
        // Evicted VMs are now orphans, deleted below with the rest; direct deletions join them.
        // Look the unlisted VMs up a few at a time.
        let mut lookups = tokio::task::JoinSet::new();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        for (index, (_, vm)) in plan.verify.iter().enumerate() {
            let (cloud, slots, name, zone) = (
                self.cloud.clone(),
                slots.clone(),
                vm.name.clone(),
                vm.zone.clone(),
            );
            lookups.spawn(async move {
                let _slot = slots.acquire_owned().await;
                (index, cloud.get(&name, &zone).await)
            });
        }
        let mut found_vms: Vec<Option<anyhow::Result<Option<CloudVm>>>> =
            plan.verify.iter().map(|_| None).collect();
        while let Some(Ok((index, found))) = lookups.join_next().await {
            found_vms[index] = Some(found);
        }
        for ((pool, vm), found) in plan.verify.iter().zip(found_vms) {
            let found = match found.unwrap_or_else(|| Err(anyhow::anyhow!("lookup task failed"))) {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), vm = %vm.name, "cannot look a VM up; retried next pass");
                    continue;
                }
            };
            let reason = match found {
                None => "gone",
                Some(found) if found.status != "RUNNING" => "not_running",
                Some(found) => {
                    // A VM this deployment did not label (booted by travis-ci/warmer): adopt it.
                    let labels = [
                        (DEPLOYMENT, label_value(names.namespace())),
                        ("warmth", "warmed".to_string()),
                    ];
                    match self.cloud.set_labels(&found, &labels).await {
                        Ok(()) => {
                            tracing::info!(%pool, vm = %vm.name, "adopted a VM without this deployment's label")
                        }
                        Err(error) => {
                            tracing::warn!(error = %format!("{error:#}"), vm = %vm.name, "adopting failed; retried next pass")
                        }
                    }
                    continue;
                }
            };
            let key = format!("{}{}", names.pool_key_prefix(), pool);
            if store
                .evict(&key, &vm.raw, &vm.name, &vm.zone, reason)
                .await?
            {
                report.evicted += 1;
                tracing::info!(%pool, vm = %vm.name, reason, "evicted");
                event(
                    "instance.evicted",
                    json!({"pool": pool, "instance": vm.name, "zone": vm.zone, "reason": reason}),
                )
                .await;
            }
        }
        for (name, zone, reason) in &plan.delete {
            let record = json!({"name": name, "zone": zone, "reason": reason}).to_string();
            let _: () = store.connection().rpush(names.orphaned(), record).await?;
        }
        let mut redis = store.connection();
        if !plan.mark.is_empty() {
            let _: () = redis.sadd(names.suspects(), &plan.mark).await?;
            tracing::warn!(vms = ?plan.mark, "unaccounted VMs: deleted next pass unless accounted for by then");
        }
        let confirmed: Vec<&String> = plan.delete.iter().map(|(name, _, _)| name).collect();
        let unmark: Vec<&String> = plan.unmark.iter().chain(confirmed).collect();
        if !unmark.is_empty() {
            let _: () = redis.srem(names.suspects(), unmark).await?;
        }
        for deleted in crate::deletion::delete_orphans(store, &self.cloud, 500).await {
            report.deleted += 1;
            event(
                "instance.deleted",
                json!({"instance": deleted.name, "zone": deleted.zone, "reason": deleted.reason}),
            )
            .await;
        }
        for (vm, checked_out_at) in &plan.label {
            let labels = [
                (COOLED.0, COOLED.1.to_string()),
                (CHECKED_OUT_AT, checked_out_at.to_string()),
            ];
            if let Err(error) = self.cloud.set_labels(vm, &labels).await {
                tracing::warn!(error = %format!("{error:#}"), vm = %vm.name, "labelling failed; retried next pass");
            }
        }
        if let Some(publisher) = publisher {
            for pool in &plan.fill {
                let command = json!({"command": "fill", "pool": pool, "token": self.ctx.config.auth_tokens.first().map(|t| t.expose())});
                let body = serde_json::to_vec(&command)?;
                if let Err(error) = publisher
                    .publish("", &names.refill_queue(), &body, amqp::json_properties())
                    .await
                {
                    tracing::warn!(error = %format!("{error:#}"), %pool, "fill not published");
                }
            }
        }
        match plan.brake {
            Some(true) => {
                let _: () = redis.set(names.brake(), plan.unaccounted).await?;
                tracing::error!(
                    unaccounted = plan.unaccounted,
                    threshold = self.ctx.config.orphan_threshold,
                    "safety brake ON: boots paused while unaccounted VMs exceed WARMER_ORPHAN_THRESHOLD"
                );
                event("brake.engaged", json!({"unaccounted": plan.unaccounted, "threshold": self.ctx.config.orphan_threshold})).await;
            }
            Some(false) => {
                let _: () = redis.del(names.brake()).await?;
                tracing::warn!(unaccounted = plan.unaccounted, "safety brake released");
                event("brake.released", json!({"unaccounted": plan.unaccounted})).await;
            }
            None => {}
        }
        report.plan = plan;
        Ok(report)
    }
}

fn parse_lease(raw: &str) -> Option<LeasedVm> {
    let lease: serde_json::Value = serde_json::from_str(raw).ok()?;
    let entry: PoolEntry = serde_json::from_str(lease["entry"].as_str()?).ok()?;
    Some(LeasedVm {
        name: entry.name,
        pool: lease["pool"].as_str()?.to_string(),
        handed: lease["state"] == "handed",
        at: lease["at"].as_u64().unwrap_or(0) / 1000,
    })
}
