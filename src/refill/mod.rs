//! `warmer refill`: keeps every pool at its target (guarantee 4, "no overshoot").
//!
//! Messages on the refill queue are hints: whatever they say, [`Refill::want`] trims the pool's
//! surplus and queues the pool, and [`Refill::dispatch`] hands this process's free boot slots
//! (`WARMER_BOOT_CONCURRENCY`) to the queued pools one at a time, round-robin, reserving each
//! atomically (`reserve_boots.lua`) so that `ready + booting <= target` however many refill
//! processes run. Each boot finishes with `finish_boot.lua`; its freed slot goes to the pool
//! that waits longest, and a pool whose boot succeeded is queued again, so pools fill up without
//! further messages. VMs recorded in `orphaned` are deleted as they appear.
//!
//! On SIGTERM it stops consuming and waits up to 25 s for boots in flight; a boot cut short
//! keeps its reservation until it expires, when its VM is recorded as an orphan and deleted.

mod boot;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use anyhow::Context as _;

use crate::amqp::{self, Disposition, Incoming, Publisher};
use crate::clock::now_ms;
use crate::cloud::Cloud;
use crate::config::Secret;
use crate::context::Context;
use crate::events::Events;
use crate::pool::PoolName;
use crate::process::ProcessType;
use crate::refill_message::{self, FillCommand, RefillMessage};
use crate::shutdown::Shutdown;
use crate::sshkey::KeyStock;
use crate::topology;

/// Refill messages handled at once per process.
pub const PREFETCH: u16 = 16;

/// What happened to one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pools were looked at; `boots` boots started.
    Refilled { pools: usize, boots: usize },
    /// Not a valid hint or command, or not from someone who may send it: dead-lettered.
    Rejected(String),
    /// Rejected, and it carried a token: a copy without it was dead-lettered instead (acked).
    RejectedRedacted(String),
    /// Redis failed: requeued for another try.
    Failed,
    /// Redis failed on a message that carried a token: a fill of warmer's own for the same
    /// work was queued instead, so that the token does not stay in the queue (acked).
    Requeued,
}

impl Outcome {
    pub fn disposition(&self) -> Disposition {
        match self {
            Outcome::Refilled { .. } | Outcome::RejectedRedacted(_) | Outcome::Requeued => {
                Disposition::Ack
            }
            Outcome::Rejected(_) => Disposition::DeadLetter,
            Outcome::Failed => Disposition::Requeue,
        }
    }
}

/// The refill consumer's state, shared by its message handlers and boot tasks.
pub struct Refill {
    ctx: Context,
    cloud: Cloud,
    permits: Arc<Semaphore>,
    /// Pools that may want boots, in the order they get the next free slot; each at most once.
    wanting: Mutex<VecDeque<PoolName>>,
    keys: KeyStock,
    /// Events, through the current broker session's channel.
    events: Events,
    /// The current broker session's confirmed publisher: dead letters without a token, fills
    /// of warmer's own.
    publisher: std::sync::RwLock<Option<Publisher>>,
    /// Wakes the deleter (see [`Refill::delete_orphans`]).
    deletions: tokio::sync::Notify,
    shutdown: Shutdown,
}

impl Refill {
    /// Fails when the provider is `gce` and WARMER_SSH_KEY_PASSPHRASE is not set.
    pub fn new(ctx: Context, cloud: Cloud, shutdown: Shutdown) -> anyhow::Result<Arc<Self>> {
        let passphrase = match (&ctx.config.ssh_key_passphrase, &cloud) {
            (Some(passphrase), _) => passphrase.clone(),
            (None, Cloud::Gce(_)) => {
                anyhow::bail!("WARMER_SSH_KEY_PASSPHRASE must be set for WARMER_PROVIDER=gce")
            }
            (None, Cloud::Local(_)) => {
                tracing::warn!(
                    "WARMER_SSH_KEY_PASSPHRASE is not set: keys are encrypted with `warmer` (local provider only)"
                );
                Secret::new("warmer")
            }
        };
        let concurrency = ctx.config.boot_concurrency;
        Ok(Arc::new(Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            wanting: Mutex::default(),
            keys: KeyStock::new(passphrase, concurrency),
            events: ctx.events(),
            publisher: std::sync::RwLock::default(),
            deletions: tokio::sync::Notify::new(),
            ctx,
            cloud,
            shutdown,
        }))
    }

    /// Handles one refill message.
    pub async fn handle(self: &Arc<Self>, message: Incoming) -> Outcome {
        let own = self.ctx.config.amqp_user();
        let from = match message.properties.user_id() {
            Some(user) if user.as_str() == own => refill_message::From::Warmer,
            _ => refill_message::From::Other,
        };
        let tokens = &self.ctx.config.auth_tokens;
        let work = match refill_message::parse(&message.data, tokens, from, now_ms()) {
            Ok(work) => work,
            Err(why) => {
                tracing::warn!(%why, "refill message rejected: dead-lettered");
                return match refill_message::redacted(&message.data) {
                    None => Outcome::Rejected(why),
                    Some(redacted) => self.dead_letter(&message, redacted, why).await,
                };
            }
        };
        match self.refill(&work).await {
            Ok(outcome) => outcome,
            Err(error) if refill_message::carries_token(&message.data) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "refill failed; queued again as a fill of warmer's own");
                self.queue_again(work).await
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "refill failed; requeued");
                Outcome::Failed
            }
        }
    }

    /// Trims and queues the pools `work` names, then starts what boots it can.
    async fn refill(self: &Arc<Self>, work: &RefillMessage) -> anyhow::Result<Outcome> {
        let pools = match work.pool() {
            Some(pool) => vec![pool.clone()],
            None => self
                .ctx
                .store
                .targets()
                .await
                .context("reading pool targets")?
                .into_keys()
                .collect(),
        };
        for pool in &pools {
            self.want(pool)
                .await
                .with_context(|| format!("refilling {pool}"))?;
        }
        let boots = self.dispatch().await?;
        self.deletions.notify_one();
        Ok(Outcome::Refilled {
            pools: pools.len(),
            boots,
        })
    }

    /// Dead-letters `redacted` (a rejected message's body without its token) in place of the
    /// message, which is acked; if that cannot be published, the message is requeued.
    async fn dead_letter(&self, message: &Incoming, redacted: Vec<u8>, why: String) -> Outcome {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "x-warmer-rejected".into(),
            lapin::types::AMQPValue::LongString(why.as_str().into()),
        );
        let properties = message.properties.clone().with_headers(headers);
        match self
            .publish(&self.ctx.names.dead_letter_queue(), &redacted, properties)
            .await
        {
            Ok(()) => Outcome::RejectedRedacted(why),
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "the dead letter without its token was not published; requeued");
                Outcome::Failed
            }
        }
    }

    /// Queues `work` again as a fill of warmer's own (no token), acking the message that
    /// carried a token; if that cannot be published, the message is requeued.
    async fn queue_again(&self, work: RefillMessage) -> Outcome {
        let fill = RefillMessage::Fill(FillCommand {
            pool: work.pool().cloned(),
            signer: None,
        });
        let sender = self.ctx.config.amqp_user();
        match self
            .publish(
                &self.ctx.names.refill_queue(),
                &fill.body(),
                fill.properties(&sender),
            )
            .await
        {
            Ok(()) => Outcome::Requeued,
            Err(_) => Outcome::Failed,
        }
    }

    /// Publishes to `queue` on this broker session, confirmed.
    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> anyhow::Result<()> {
        let publisher = self.publisher.read().ok().and_then(|p| p.clone());
        let Some(publisher) = publisher else {
            anyhow::bail!("no broker session");
        };
        publisher.publish("", queue, body, properties).await
    }

    /// Waits until every boot in flight has finished, at most `limit`.
    pub async fn wait_for_boots(&self, limit: Duration) -> bool {
        let all = self.ctx.config.boot_concurrency as u32;
        tokio::time::timeout(limit, self.permits.acquire_many(all))
            .await
            .is_ok()
    }
}

/// Resolves once the broker connection is gone.
async fn connection_lost(connection: &lapin::Connection) {
    while connection.status().connected() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Consumes the refill queue until `shutdown`, then waits for boots in flight, booting on the
/// cloud the configuration names.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let cloud = Cloud::from_config(&ctx.config, &ctx.store).await?;
    run_on(ctx, cloud, shutdown).await
}

/// [`run`] on `cloud`.
pub async fn run_on(ctx: Context, cloud: Cloud, shutdown: Shutdown) -> anyhow::Result<()> {
    let refill = Refill::new(ctx.clone(), cloud, shutdown.clone())?;
    let deleter = tokio::spawn(refill.clone().delete_orphans(shutdown.clone()));
    refill.deletions.notify_one(); // what an earlier process left
    let result = amqp::supervise(ProcessType::Refill.name(), &shutdown, || async {
        let connection = Arc::new(ctx.amqp(ProcessType::Refill).await?);
        topology::declare_for(&connection, &ctx.names, &ctx.names.refill_queue(), &shutdown)
            .await?;
        let channel = connection.create_channel().await?;
        refill.events.attach(connection.create_channel().await?);
        let publisher = Publisher::open(&connection).await?;
        if let Ok(mut session) = refill.publisher.write() {
            *session = Some(publisher.clone());
        }
        let queue = ctx.names.refill_queue();
        let consuming = amqp::consume(
            &channel,
            &queue,
            PREFETCH,
            &shutdown,
            |message| {
                let refill = refill.clone();
                async move { refill.handle(message).await.disposition() }
            },
        );
        // Boots in flight get the same 25 s as the messages being handled, not 25 s more.
        let (result, ()) = tokio::join!(consuming, async {
            tokio::select! {
                _ = shutdown.wait() => {
                    if !refill.wait_for_boots(amqp::DRAIN).await {
                        tracing::warn!("boots still in flight at shutdown: their reservations expire and their VMs are deleted");
                    }
                }
                _ = connection_lost(&connection) => {}
            }
        });
        if let Some(events) = refill.events.detach() {
            let _ = events.close(200, "bye".into()).await;
        }
        if let Some(publisher) = refill.publisher.write().ok().and_then(|mut p| p.take()) {
            let _ = publisher.channel().close(200, "bye".into()).await;
        }
        let _ = connection.close(200, "bye".into()).await;
        result
    })
    .await;
    let _ = deleter.await;
    result
}
