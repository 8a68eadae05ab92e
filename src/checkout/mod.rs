//! `warmer checkout`: the checkout RPC consumer (SPEC §3.1–§3.3, §4 guarantees 1, 2, 3, 5, 6).
//!
//! A request names a pool; [`Checkout::handle`] takes the pool's oldest VM into a *lease* keyed
//! by the request's identity (`checkout.lua`), replies, and only once the broker has confirmed
//! the reply marks the lease handed out and acks the request. Every failure between those steps
//! is covered by redelivery: a request that comes again finds its lease and gets the same VM.
//! A reply that provably reached nobody (returned, nacked, or a direct-reply-to requester that
//! has gone) gives the VM back to the head of its pool; a lease left pending past the request's
//! deadline (fate unknown) becomes an orphan to delete.
//!
//! Runs until SIGTERM: stops consuming, finishes in-flight requests within 25 s, exits 0. A lost
//! broker connection is retried forever with backoff; Redis errors are retried within the
//! request's budget, then answered `internal` and dead-lettered.

pub mod reply;
pub mod request;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::json;

use crate::amqp::{self, DIRECT_REPLY_TO, Disposition, Incoming, Published, Publisher};
use crate::context::Context;
use crate::pool::{PoolEntry, PoolName, short_zone};
use crate::shutdown::Shutdown;
use crate::store::{self, Disposal, GiveBack, Store, now_ms};
use reply::Code;

/// Requests handled at once per process.
pub const PREFETCH: u16 = 64;
/// A lease not settled this long after its request's deadline is given up as an orphan.
pub const LEASE_GRACE_MS: u64 = 5 * 60 * 1000;
/// How often expired leases are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A request this old (by its `timestamp`, whole seconds) may have outlived its requester.
const FRESH_SECS: u64 = 1;

/// What happened to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A VM was popped and its reply confirmed.
    HandedOut { pool: String, vm: String },
    /// A redelivered request got the VM of its lease again.
    HandedOutAgain { pool: String, vm: String },
    /// Answered with an error reply of this code.
    Refused(Code),
    /// No `reply_to`: dead-lettered, nothing popped.
    NoReplyTo,
    /// The deadline had passed: nothing popped.
    Expired,
    /// The requester was gone: its VM (if any) went back to the head of the pool.
    RequesterGone,
    /// A pending lease outlived its request's deadline: the VM was recorded as an orphan.
    Orphaned { vm: String },
    /// The reply could not be published; the request is requeued (its lease keeps the VM).
    ReplyFailed,
}

impl Outcome {
    /// What the consume loop does with the request.
    pub fn disposition(&self) -> Disposition {
        match self {
            Outcome::NoReplyTo | Outcome::Refused(Code::Internal) => Disposition::DeadLetter,
            Outcome::ReplyFailed => Disposition::Requeue,
            _ => Disposition::Ack,
        }
    }
}

/// The checkout consumer's state for one broker connection.
pub struct Checkout {
    store: Store,
    ctx: Context,
    publisher: Publisher,
    connection: Arc<Connection>,
    /// Channels for direct reply-to presence checks, reused while they stay open.
    probes: Mutex<Vec<Channel>>,
}

/// Consumes checkout requests until `shutdown`, reconnecting to RabbitMQ when needed.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_leases(ctx.store.clone(), shutdown.clone()));
    let result = amqp::supervise("checkout", &shutdown, || async {
        let connection = Arc::new(ctx.amqp("checkout").await?);
        let channel = connection.create_channel().await?;
        amqp::declare_topology(&channel, &ctx.names).await?;
        let checkout = Arc::new(Checkout {
            store: ctx.store.clone(),
            publisher: Publisher::open(&connection).await?,
            ctx: ctx.clone(),
            connection: connection.clone(),
            probes: Mutex::default(),
        });
        let result = amqp::consume(
            &channel,
            &ctx.names.checkout_queue(),
            PREFETCH,
            &shutdown,
            |message| {
                let checkout = checkout.clone();
                async move { checkout.handle(message).await.disposition() }
            },
        )
        .await;
        checkout.close_channels().await;
        let _ = connection.close(200, "bye".into()).await;
        result
    })
    .await;
    sweeper.abort();
    result
}

/// Turns expired leases into orphans every few seconds (see `sweep_leases.lua`).
async fn sweep_leases(store: Store, shutdown: Shutdown) {
    while shutdown.sleep(SWEEP_EVERY).await {
        match store.sweep_leases(now_ms()).await {
            Ok((0, 0)) => {}
            Ok((pending, handed)) => tracing::warn!(
                pending,
                handed,
                "leases expired: VMs of unanswered requests and of handouts older than WARMER_MAX_HANDOUT_AGE recorded in orphaned"
            ),
            Err(error) => tracing::warn!(%error, "sweeping leases failed; retrying later"),
        }
    }
}

impl Checkout {
    /// Closes this session's channels (before the connection, so lapin has nothing left to
    /// close behind our back).
    async fn close_channels(&self) {
        let probes: Vec<Channel> = self
            .probes
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default();
        for channel in probes.iter().chain([self.publisher.channel()]) {
            let _ = channel.close(200, "bye".into()).await;
        }
    }

    /// Serves one request and says what happened.
    pub async fn handle(&self, message: Incoming) -> Outcome {
        let received = now_ms();
        let props = &message.properties;
        let Some(reply_to) = props.reply_to().clone() else {
            tracing::warn!(
                bytes = message.data.len(),
                "checkout request without reply_to: dead-lettered, nothing popped"
            );
            return Outcome::NoReplyTo;
        };
        let reply_to = reply_to.as_str();
        let parsed = request::identity(props)
            .ok_or_else(|| {
                "a request needs a correlation_id or a message_id, unique per request".to_string()
            })
            .and_then(|identity| Ok((identity, request::parse(&message.data)?)));
        let (identity, request) = match parsed {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::info!(%why, "bad checkout request");
                return self
                    .refuse(
                        reply_to,
                        props,
                        Code::BadRequest,
                        format!("bad request: {why}"),
                    )
                    .await;
            }
        };
        let pool = &request.pool;
        let deadline = request::deadline(props, received);
        let give_up_at = deadline
            .max(received + request::DEFAULT_BUDGET_MS)
            .saturating_add(LEASE_GRACE_MS);

        let found = (|| self.store.checkout(&identity, pool, received, deadline, give_up_at))
            .retry(redis_retry(deadline))
            .when(is_transient)
            .notify(|error, delay| {
                tracing::warn!(%error, ?delay, "Redis unavailable during checkout; retrying")
            })
            .await;
        let (entry, again) = match found {
            Ok(store::Checkout::Popped(entry)) => (entry, false),
            Ok(store::Checkout::Leased(entry)) => (entry, true),
            Ok(store::Checkout::Expired) => {
                tracing::info!(%pool, "request past its deadline: nothing popped");
                return Outcome::Expired;
            }
            Ok(store::Checkout::Orphaned(entry)) => {
                let vm = serde_json::from_str::<PoolEntry>(&entry).map_or(entry, |e| e.name);
                tracing::warn!(%pool, %vm, "request redelivered past its deadline: VM recorded as orphan");
                self.event("instance.orphaned", json!({"pool": pool.to_string(), "instance": vm, "reason": "checkout_unsettled"})).await;
                return Outcome::Orphaned { vm };
            }
            Ok(store::Checkout::NoPool) => {
                return self
                    .refuse(
                        reply_to,
                        props,
                        Code::NoPool,
                        format!("no config found for pool {pool}"),
                    )
                    .await;
            }
            Ok(store::Checkout::Empty) => {
                let outcome = self
                    .refuse(
                        reply_to,
                        props,
                        Code::PoolEmpty,
                        format!("no instance available in pool {pool}"),
                    )
                    .await;
                self.event("pool.empty", json!({"pool": pool.to_string()}))
                    .await;
                return outcome;
            }
            Err(error) => {
                tracing::error!(%error, %pool, "checkout failed in Redis");
                return self
                    .refuse(
                        reply_to,
                        props,
                        Code::Internal,
                        format!("internal: Redis failed during checkout: {error}"),
                    )
                    .await;
            }
        };

        // A VM popped by this delivery whose reply cannot reach anyone goes back to the head of
        // its pool. One leased by an earlier delivery may already have been replied to (that
        // consumer died before acking): its fate is unknown, so it is deleted, never reused.
        let gone = if again {
            Disposal::Orphan("reply_unknown")
        } else {
            Disposal::Head
        };
        if self
            .requester_gone(reply_to, props, &message, received)
            .await
        {
            return self.give_back(&identity, pool, gone).await;
        }
        let vm = match serde_json::from_str::<PoolEntry>(&entry) {
            Ok(vm) => vm,
            Err(error) => {
                tracing::error!(%error, %pool, "unreadable pool entry: recorded as orphan");
                self.give_back(&identity, pool, Disposal::Orphan("unusable_entry"))
                    .await;
                return self
                    .refuse(
                        reply_to,
                        props,
                        Code::Internal,
                        format!("internal: an entry of pool {pool} is not readable"),
                    )
                    .await;
            }
        };
        let body = match serde_json::to_vec(&reply::Vm::from(&vm)) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "serializing a reply");
                return Outcome::ReplyFailed;
            }
        };
        match self.reply(reply_to, props, &body).await {
            Ok(Published::Routed) => {}
            Ok(Published::NotRouted) => {
                tracing::info!(%pool, vm = %vm.name, "reply not routable: requester gone");
                return self.give_back(&identity, pool, gone).await;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), %pool, vm = %vm.name, "reply not confirmed; the request will be redelivered and get the same VM");
                return Outcome::ReplyFailed;
            }
        }

        // The reply reached the broker: from here the request is never requeued (a redelivery
        // could find the requester gone and orphan a VM in use). Settling is retried for as
        // long as the lease is guaranteed to stay pending.
        let keep_until = now_ms() + self.ctx.config.max_handout_age.as_millis() as u64;
        let budget = give_up_at.saturating_sub(now_ms() + 1_000);
        let settled = (|| self.store.settle(&identity, keep_until))
            .retry(
                ExponentialBuilder::default()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .with_total_delay(Some(Duration::from_millis(budget)))
                    .without_max_times(),
            )
            .when(is_transient)
            .await;
        match settled {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(%pool, vm = %vm.name, "lease was swept before its reply was confirmed; the VM is recorded as an orphan although it was handed out")
            }
            Err(error) => {
                tracing::error!(%error, %pool, vm = %vm.name, "handed out, but the lease could not be settled: it will be swept into orphaned")
            }
        }
        self.event(
            "pool.dropped",
            json!({"pool": pool.to_string(), "instance": vm.name, "zone": short_zone(&vm.zone)}),
        )
        .await;
        tracing::info!(%pool, vm = %vm.name, again, wait_ms = now_ms().saturating_sub(received), "checked out");
        let pool = pool.to_string();
        if again {
            Outcome::HandedOutAgain { pool, vm: vm.name }
        } else {
            Outcome::HandedOut { pool, vm: vm.name }
        }
    }

    /// For requests that may have waited (redelivered, or no fresh `timestamp`), checks that a
    /// direct-reply-to requester is still connected. Ordinary reply queues are checked by the
    /// mandatory flag on the reply instead.
    async fn requester_gone(
        &self,
        reply_to: &str,
        props: &BasicProperties,
        message: &Incoming,
        now: u64,
    ) -> bool {
        if !reply_to.starts_with(DIRECT_REPLY_TO) {
            return false;
        }
        let fresh = props
            .timestamp()
            // A timestamp from the future (a skewed clock) proves nothing.
            .is_some_and(|sent| {
                sent <= now / 1000 + 1 && now / 1000 - sent.min(now / 1000) <= FRESH_SECS
            });
        if fresh && !message.redelivered {
            return false;
        }
        // A failed passive declare closes its channel: probe on channels kept only while they
        // succeed, so the common case costs one round trip.
        let idle = self.probes.lock().ok().and_then(|mut idle| idle.pop());
        let channel = match idle {
            Some(channel) if channel.status().connected() => channel,
            _ => match self.connection.create_channel().await {
                Ok(channel) => channel,
                Err(_) => return false,
            },
        };
        match amqp::passive_declare(&channel, reply_to).await {
            Ok(_) => {
                if let Ok(mut idle) = self.probes.lock() {
                    idle.push(channel);
                }
                false
            }
            Err(error) => {
                // Only the broker's "no such reply-to" proves the requester gone; any other error
                // (our own connection failing) proves nothing: carry on and let the reply tell.
                let gone = amqp::is_not_found(&error);
                if gone {
                    tracing::info!(%error, "direct reply-to requester is gone");
                } else {
                    tracing::warn!(%error, "presence probe failed; replying anyway");
                }
                gone
            }
        }
    }

    async fn give_back(&self, identity: &str, pool: &PoolName, disposal: Disposal) -> Outcome {
        let outcome = (|| self.store.give_back(identity, pool, disposal))
            .retry(redis_retry(now_ms() + 10_000))
            .when(is_transient)
            .await;
        let (instance, key, reason) = match outcome {
            Ok((GiveBack::Head, vm)) => (vm, "instance.returned", "requester_gone".to_string()),
            Ok((GiveBack::Orphaned(reason), vm)) => (vm, "instance.orphaned", reason),
            Ok((GiveBack::NothingPending, _)) => return Outcome::RequesterGone,
            // The lease stays pending and is swept into orphaned after its deadline.
            Err(error) => {
                tracing::error!(%error, %pool, "could not give a VM back");
                return Outcome::RequesterGone;
            }
        };
        tracing::info!(%pool, %instance, key, %reason, "VM given back: no reply of this delivery reached anyone");
        let body = json!({"pool": pool.to_string(), "instance": instance, "reason": reason});
        self.event(key, body).await;
        Outcome::RequesterGone
    }

    async fn refuse(
        &self,
        reply_to: &str,
        props: &BasicProperties,
        code: Code,
        text: String,
    ) -> Outcome {
        let body = serde_json::to_vec(&reply::Error::new(code, text)).unwrap_or_default();
        match self.reply(reply_to, props, &body).await {
            Ok(_) => Outcome::Refused(code),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), ?code, "error reply not confirmed; requeued");
                Outcome::ReplyFailed
            }
        }
    }

    async fn reply(
        &self,
        reply_to: &str,
        request: &BasicProperties,
        body: &[u8],
    ) -> anyhow::Result<Published> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_timestamp(now_ms() / 1000);
        if let Some(correlation_id) = request.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        // Direct reply-to and `mandatory` do not mix (a delivered reply can come back as
        // NO_ROUTE), so only ordinary reply queues use it.
        let mandatory = !reply_to.starts_with(DIRECT_REPLY_TO);
        self.publisher
            .publish("", reply_to, body, properties, mandatory)
            .await
            .context("publishing the reply")
    }

    async fn event(&self, routing_key: &str, body: serde_json::Value) {
        if let Err(error) = self
            .publisher
            .event(&self.ctx.names, routing_key, &body)
            .await
        {
            tracing::warn!(error = %format!("{error:#}"), routing_key, "event not published");
        }
    }
}

/// Retries transient Redis errors until `deadline` (ms since epoch), at least one second.
fn redis_retry(deadline: u64) -> ExponentialBuilder {
    let budget = deadline.saturating_sub(now_ms()).clamp(1_000, 10_000);
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(Duration::from_millis(budget)))
        .without_max_times()
}

fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}
