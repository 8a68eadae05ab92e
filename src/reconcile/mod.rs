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
mod points;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::amqp::Publisher;
use crate::clock::{Clock, secs};
use crate::cloud::{CHECKED_OUT_AT, COOLED, Cloud, CloudVm, DEPLOYMENT, Owner, label_value, owner};
use crate::context::Context;
use crate::deletion::{Deleter, Listed};
use crate::events::{Event, Events};
use crate::names::Names;
use crate::pool::PoolName;
use crate::process::ProcessType;
use crate::refill_message::{FillCommand, RefillMessage};
use crate::shutdown::Shutdown;
use crate::sizing::sizer::{self, Sizer};
use crate::topology;
use plan::LeasedVm;
pub use plan::{Limits, Plan, Snapshot};

/// What a pass publishes through: events, and fills for pools left short.
pub struct Broker {
    events: Events,
    fills: Publisher,
}

impl Broker {
    /// Channels of `connection` for events (unconfirmed) and fills (confirmed).
    pub async fn open(connection: &lapin::Connection, names: &Names) -> anyhow::Result<Self> {
        let events = Events::new(names.clone());
        events.attach(connection.create_channel().await?);
        let fills = Publisher::open(connection).await?;
        Ok(Self { events, fills })
    }

    /// [`Broker::open`], the notable events also kept in Redis (see `store::event_log`).
    pub async fn open_for(connection: &lapin::Connection, ctx: &Context) -> anyhow::Result<Self> {
        let mut broker = Self::open(connection, &ctx.names).await?;
        broker.events = broker.events.with_log(ctx.store.event_log());
        Ok(broker)
    }

    /// Closes its channels.
    pub async fn close(&self) {
        if let Some(channel) = self.events.detach() {
            let _ = channel.close(200, "bye".into()).await;
        }
        let _ = self.fills.channel().close(200, "bye".into()).await;
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub plan: Plan,
    pub deleted: usize,
    pub evicted: usize,
    pub elapsed: Duration,
    /// What the snapshot held: VMs in the cloud, warmed VMs in the pools, orphan records.
    pub cloud_vms: usize,
    pub warmed: usize,
    pub orphans: usize,
    /// What the sizer did first.
    pub sizing: sizer::Report,
}

/// Per-VM steps of a pass that failed, by step: logged in one line per step, each retried next
/// pass.
#[derive(Default)]
struct Failures(BTreeMap<&'static str, (usize, String)>);

impl Failures {
    fn add(&mut self, step: &'static str, vm: &str, error: &anyhow::Error) {
        let entry = self.0.entry(step).or_default();
        entry.0 += 1;
        entry.1 = format!("{vm}: {}", crate::telemetry::report(error));
    }

    fn log(&self) {
        for (step, (failed, last_error)) in &self.0 {
            tracing::warn!(failed, last_error, "{step} failed; retried next pass");
        }
    }
}

/// A pass's evictions per pool: (VM name, zone, reason).
type Evictions<'p> = BTreeMap<&'p str, Vec<(&'p str, &'p str, &'p str)>>;

/// One reconciler process.
pub struct Reconciler {
    ctx: Context,
    cloud: Cloud,
    owner: String,
    deleter: tokio::sync::Mutex<Deleter>,
    sizer: Sizer,
    clock: Clock,
    /// The minute (Unix minutes) of the last pools' points recorded.
    pointed: std::sync::Mutex<Option<u64>>,
}

/// Reconciles Redis with the cloud the configuration names until `shutdown`, while this
/// process holds the reconciler's lock.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let cloud = Cloud::from_config(&ctx.config, &ctx.store).await?;
    Reconciler::new(ctx, cloud).run(shutdown).await
}

/// This process's name as the reconciler lock's owner, for `warmer status`: the host (the dyno
/// on Heroku, where the hostname is a random id), the pid, and an id of its own.
fn lock_owner() -> String {
    let host = crate::process::host();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{host} pid {} ({})", std::process::id(), &id[..8])
}

impl Reconciler {
    pub fn new(ctx: Context, cloud: Cloud) -> Self {
        Self {
            deleter: tokio::sync::Mutex::new(Deleter::new(ctx.store.clone(), cloud.clone())),
            sizer: Sizer::new(ctx.config.max_vms),
            ctx,
            cloud,
            owner: lock_owner(),
            clock: Clock::system(),
            pointed: std::sync::Mutex::default(),
        }
    }

    /// Decides by `clock` instead of the system's (tests): the whole pass, sizing and snapshot.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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

    /// Reconciles every interval while holding the lock, until `shutdown` (see [`run`]). RabbitMQ is needed
    /// only for events and fills: while it is away, passes go on without them.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let interval = self.ctx.config.reconcile_interval;
        let mut broker: Option<(lapin::Connection, Broker)> = None;
        let mut active = false;
        let mut failures = 0;
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
                                tracing::warn!(error = %crate::telemetry::report(&error), "RabbitMQ unreachable: this pass publishes no events or fills");
                                None
                            }
                        };
                    }
                    self.logged_pass(broker.as_ref().map(|(_, b)| b), &mut failures)
                        .await;
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
        if let Some((connection, broker)) = broker {
            broker.close().await;
            let _ = connection.close(200, "bye".into()).await;
        }
        Ok(())
    }

    async fn connect_broker(&self) -> anyhow::Result<(lapin::Connection, Broker)> {
        let connection = self.ctx.amqp(ProcessType::Reconcile).await?;
        // A pass needs none of it: what cannot be declared now is tried again next connection.
        for (what, error) in topology::declare_each(&connection, &self.ctx.names)
            .await
            .failed
        {
            tracing::warn!(%what, error = %crate::telemetry::report(&error), "cannot be declared now");
        }
        let broker = Broker::open_for(&connection, &self.ctx).await?;
        Ok((connection, broker))
    }

    /// Runs a pass and logs it in one line: every pass, so that the logs show the reconciler is
    /// alive; a failed one at ERROR (with how many in a row), and the first success after
    /// failures says so. `failures` counts the failed passes in a row.
    async fn logged_pass(&self, broker: Option<&Broker>, failures: &mut u32) {
        match self.pass(broker).await {
            Ok(report) => {
                if *failures > 0 {
                    tracing::info!(
                        failures = *failures,
                        "reconcile recovered after {failures} failed passes"
                    );
                }
                *failures = 0;
                tracing::info!(
                    deleted = report.deleted,
                    evicted = report.evicted,
                    marked = report.plan.mark.len(),
                    labelled = report.plan.label.len(),
                    fills = report.plan.fill.len(),
                    unaccounted = report.plan.unaccounted,
                    "measure#warmer.reconcile.duration" =
                        format!("{}ms", report.elapsed.as_millis()),
                    "count#warmer.reconcile.deleted" = report.deleted,
                    "count#warmer.reconcile.evicted" = report.evicted,
                    "count#warmer.sizing.changed" = report.sizing.changed.len(),
                    "sample#warmer.cloud_vms" = report.cloud_vms,
                    "sample#warmer.warmed" = report.warmed,
                    "sample#warmer.orphaned" = report.orphans,
                    "reconciled"
                );
            }
            Err(error) => {
                *failures += 1;
                tracing::error!(
                    error = %crate::telemetry::report(&error),
                    failures = *failures,
                    "count#warmer.reconcile.failed" = 1,
                    "reconcile pass failed"
                )
            }
        }
    }

    /// One pass: snapshot, decide, apply. Events and fills need the `broker`.
    /// Its result, duration and time are recorded (`warmer_reconcile_*`).
    pub async fn pass(&self, broker: Option<&Broker>) -> anyhow::Result<Report> {
        let started = Instant::now();
        // Every decision of the pass sees this one time.
        let now = self.clock.now_ms();
        let report = self.unrecorded_pass(broker, now).await;
        let recorded = self
            .ctx
            .store
            .record_reconcile_pass(report.is_ok(), started.elapsed(), now)
            .await;
        if let Err(error) = recorded {
            tracing::warn!(%error, "the reconcile pass could not be recorded in the metrics");
        }
        if report.is_ok() {
            self.record_points(now).await;
        }
        report
    }

    /// Records the pools' points of `now`'s minute, unless this reconciler did already.
    async fn record_points(&self, now: u64) {
        let minute = secs(now) / 60;
        let done = *self
            .pointed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if done == Some(minute) {
            return;
        }
        match points::sample(&self.ctx.store, minute).await {
            Ok(_) => {
                *self
                    .pointed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(minute)
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "the pools' points of this minute were not recorded")
            }
        }
    }

    async fn unrecorded_pass(&self, broker: Option<&Broker>, now: u64) -> anyhow::Result<Report> {
        let started = Instant::now();
        // Targets first: the plan below fills pools raised and evicts the surplus of pools
        // lowered. A failed sizing leaves targets as they were; reconciling goes on.
        let unconnected = self.ctx.events();
        let events = broker.map_or(&unconnected, |b| &b.events);
        let sizing = self.sizer.step(&self.ctx.store, events, secs(now)).await;
        let sizing = match sizing {
            Ok(sizing) => sizing,
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "sizing failed; targets unchanged this pass");
                sizer::Report::default()
            }
        };
        let snapshot = self.snapshot(now).await?;
        let plan = plan::decide(&snapshot, self.limits());
        // The snapshot may have taken a while: act only if this process still holds the lock.
        if !self.ctx.store.lock(&self.owner, self.lock_ttl()).await? {
            anyhow::bail!("lost the reconciler lock before applying");
        }
        // What the cloud showed as this deployment's: deleted without another lookup.
        let listed: Listed = snapshot
            .cloud
            .iter()
            .filter(|vm| owner(vm, self.ctx.names.namespace()) == Owner::Us)
            .map(|vm| (vm.name.clone(), vm.zone.clone()))
            .collect();
        let mut report = self.apply(plan, broker, events, &listed, now).await?;
        report.elapsed = started.elapsed();
        report.cloud_vms = snapshot.cloud.len();
        report.warmed = snapshot.pools.values().map(Vec::len).sum();
        report.orphans = snapshot.orphans.len();
        report.sizing = sizing;
        Ok(report)
    }

    /// Reads Redis in one step (a consistent view) as of `now` (ms), then lists the cloud.
    pub async fn snapshot(&self, now: u64) -> anyhow::Result<Snapshot> {
        let view = self.ctx.store.reconcile_view(now).await?;
        // Read after the brake: a release between the two reads is seen here, so a pass that
        // saw the brake off cannot engage it again for the VMs released.
        let released = self.ctx.store.brake_released().await?;
        let leases = view
            .leases
            .into_iter()
            .map(|lease| LeasedVm {
                identity: lease.identity,
                name: lease.vm,
                pool: lease.pool,
                handed: lease.handed,
                at: secs(lease.at),
                deadline: lease.deadline.map(secs),
            })
            .collect();
        let cloud = self
            .cloud
            .list(self.ctx.names.namespace())
            .await
            .context("listing the cloud's VMs")?;
        Ok(Snapshot {
            now: secs(now),
            targets: view.targets,
            pools: view.pools,
            booting: view.booting,
            leases,
            orphans: view.orphans,
            suspects: view.suspects,
            brake_on: view.brake,
            released,
            hints: view.hints,
            cloud,
        })
    }

    /// Applies `plan`; `events` is the broker's, or one that drops them when there is none.
    async fn apply(
        &self,
        plan: Plan,
        broker: Option<&Broker>,
        events: &Events,
        listed: &Listed,
        now: u64,
    ) -> anyhow::Result<Report> {
        let store = &self.ctx.store;
        let mut report = Report::default();
        let mut failures = Failures::default();

        // Every eviction of the pass, per pool: the plan's, and those the lookups decide.
        let mut evictions: Evictions = BTreeMap::new();
        for eviction in &plan.evict {
            let vm = &eviction.vm;
            evictions.entry(&eviction.pool).or_default().push((
                &vm.name,
                &vm.zone,
                eviction.reason,
            ));
        }
        self.verify(&plan.verify, &mut evictions, &mut failures)
            .await;
        // Evicted VMs are now orphans, deleted below with the rest; direct deletions join them.
        report.evicted = self.evict(&evictions, events).await?;
        store.record_orphans(&plan.delete).await?;
        let forgotten = store.forget_leases(&plan.forget_leases).await?;
        if forgotten > 0 {
            tracing::debug!(forgotten, "leases forgotten: their handed-out VMs are gone");
        }
        if !plan.mark.is_empty() {
            store.mark_suspects(&plan.mark).await?;
            // One line however many: the first few names, and the count.
            let first = &plan.mark[..plan.mark.len().min(10)];
            if plan.holding {
                tracing::warn!(
                    unaccounted = plan.mark.len(),
                    ?first,
                    "unaccounted VMs: kept while the safety brake holds (`warmer brake` lists them)"
                );
            } else {
                tracing::warn!(
                    unaccounted = plan.mark.len(),
                    ?first,
                    "unaccounted VMs: deleted next pass unless accounted for by then"
                );
            }
        }
        let confirmed = plan.delete.iter().filter_map(|r| r.name.as_ref());
        let unmark: Vec<&String> = plan.unmark.iter().chain(confirmed).collect();
        store.unmark_suspects(&unmark).await?;
        // Deletion goes as fast as the cloud takes, until the next pass is due at the latest.
        let deadline = Instant::now() + self.ctx.config.reconcile_interval;
        report.deleted = self
            .deleter
            .lock()
            .await
            .drain(events, deadline, listed)
            .await;
        for (vm, checked_out_at) in &plan.label {
            let labels = [
                (COOLED.0, COOLED.1.to_string()),
                (CHECKED_OUT_AT, checked_out_at.to_string()),
            ];
            if let Err(error) = self.cloud.set_labels(vm, &labels).await {
                failures.add("labelling handed-out VMs", &vm.name, &error);
            }
        }
        failures.log();
        // The brake first: a fill published before a release would find boots still held.
        if let Some(engage) = plan.brake {
            self.brake(engage, plan.unaccounted, events, secs(now))
                .await?;
        }
        if let Some(broker) = broker {
            self.send_fills(&plan.fill, broker, now).await?;
        }
        report.plan = plan;
        Ok(report)
    }

    /// Looks the pool entries the listing did not show up in the cloud, a few at a time: gone,
    /// foreign or stopped ones join `evictions`; travis-ci/warmer's are adopted.
    async fn verify<'p>(
        &self,
        verify: &'p [(String, crate::store::reconcile::WarmedVm)],
        evictions: &mut Evictions<'p>,
        failures: &mut Failures,
    ) {
        let names = &self.ctx.names;
        let mut lookups = tokio::task::JoinSet::new();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        for (index, (_, vm)) in verify.iter().enumerate() {
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
            verify.iter().map(|_| None).collect();
        while let Some(Ok((index, found))) = lookups.join_next().await {
            found_vms[index] = Some(found);
        }
        // Lines per kind, not per VM (a migration adopts thousands).
        let mut adopted = Vec::new();
        for ((pool, vm), found) in verify.iter().zip(found_vms) {
            let found = match found.unwrap_or_else(|| Err(anyhow::anyhow!("lookup task failed"))) {
                Ok(found) => found,
                Err(error) => {
                    failures.add("looking VMs up", &vm.name, &error);
                    continue;
                }
            };
            let reason = match found {
                None => "gone",
                Some(found) => match owner(&found, names.namespace()) {
                    // Whoever's it is, it is not to be handed to a job unless it is ours.
                    Owner::Other => "foreign",
                    _ if found.status != "RUNNING" => "not_running",
                    // Labelled ours after the listing was taken.
                    Owner::Us => continue,
                    // Booted by travis-ci/warmer, whose Redis this deployment took over: adopt it.
                    Owner::TravisCiWarmer => {
                        let labels = [(DEPLOYMENT, label_value(names.namespace()))];
                        match self.cloud.set_labels(&found, &labels).await {
                            Ok(()) => adopted.push(vm.name.as_str()),
                            Err(error) => failures.add("adopting VMs", &vm.name, &error),
                        }
                        continue;
                    }
                },
            };
            evictions
                .entry(pool)
                .or_default()
                .push((&vm.name, &vm.zone, reason));
        }
        if !adopted.is_empty() {
            let first = &adopted[..adopted.len().min(10)];
            tracing::info!(
                adopted = adopted.len(),
                ?first,
                "adopted travis-ci/warmer's VMs (labelled warmth=warmed, without a warmer label): labelled with this deployment's"
            );
        }
    }

    /// Takes the evicted VMs out of their pools into orphaned (those a checkout took meanwhile
    /// stay handed out) and says how many. One line for the pass, not one per VM: a mass
    /// eviction is tens of thousands.
    async fn evict(&self, evictions: &Evictions<'_>, events: &Events) -> anyhow::Result<usize> {
        let mut evicted = 0;
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for (pool, vms) in evictions {
            for name in self.ctx.store.evict(pool, vms).await? {
                let Some((_, zone, reason)) = vms.iter().find(|(n, ..)| *n == name) else {
                    continue;
                };
                evicted += 1;
                *by_reason.entry(reason).or_default() += 1;
                tracing::debug!(%pool, vm = %name, reason, "evicted");
                events
                    .emit(Event::InstanceEvicted {
                        pool: pool.to_string(),
                        instance: name,
                        zone: zone.to_string(),
                        reason: reason.to_string(),
                    })
                    .await;
            }
        }
        if evicted > 0 {
            tracing::info!(
                evicted,
                ?by_reason,
                "count#warmer.evictions" = evicted,
                "evicted warmed VMs"
            );
        }
        Ok(evicted)
    }

    /// Engages (`engage`) or releases the safety brake, with its line and event.
    async fn brake(
        &self,
        engage: bool,
        unaccounted: u64,
        events: &Events,
        now: u64,
    ) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        let threshold = self.ctx.config.orphan_threshold;
        if engage {
            store.engage_brake(unaccounted, threshold, now).await?;
            tracing::error!(
                unaccounted,
                threshold,
                "safety brake ON: boots and deletion of unaccounted VMs paused while they exceed WARMER_ORPHAN_THRESHOLD; `warmer brake` lists them, `warmer brake release --yes` releases it"
            );
            events
                .emit(Event::BrakeEngaged {
                    unaccounted,
                    threshold,
                })
                .await;
        } else {
            store.release_brake().await?;
            tracing::warn!(unaccounted, "safety brake released");
            events.emit(Event::BrakeReleased { unaccounted }).await;
        }
        Ok(())
    }

    /// Sends a fill for each pool of `pools`, coalesced with checkouts' hints (a checkout
    /// meanwhile sends none of its own), as warmer's own user: the broker vouches for the
    /// sender, no operator token is lent.
    async fn send_fills(&self, pools: &[String], broker: &Broker, now: u64) -> anyhow::Result<()> {
        self.ctx.store.set_hints(pools, now).await?;
        let sender = self.ctx.config.amqp_user();
        for name in pools {
            // A fill is of one pool or of every pool: never of every pool by mistake.
            let Ok(pool) = name.parse::<PoolName>() else {
                tracing::warn!(pool = %name.escape_debug(), "not a pool name: no fill sent");
                continue;
            };
            let fill = RefillMessage::Fill(FillCommand {
                pool: Some(pool),
                signer: None,
            });
            if let Err(error) = fill.send(&broker.fills, &self.ctx.names, &sender).await {
                tracing::warn!(error = %crate::telemetry::report(&error), pool = %name, "fill not published");
            }
        }
        Ok(())
    }
}
