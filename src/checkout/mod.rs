//! `warmer checkout`: the checkout RPC consumer (guarantees 1, 2, 3, 5 and 6 of docs/design.md).
//!
//! A request names a pool; [`Checkout::handle`] takes the pool's oldest VM into a *lease* keyed
//! by the request's identity (`checkout.lua`), replies, and only once the broker has confirmed
//! the reply marks the lease handed out and acks the request. Every failure between those steps
//! is covered by redelivery: a request that comes again finds its lease and gets the same VM.
//! A reply that provably reached nobody (returned as unroutable, or to a direct-reply-to name
//! that the broker, asked while the VM is popped, does not know) gives the VM back to the head
//! of its pool; a reply whose outcome is unknown requeues the request, whose redelivery sends the
//! same VM again; a lease left pending past the request's deadline (fate unknown) becomes an
//! orphan to delete.
//!
//! Runs until SIGTERM: stops consuming, finishes in-flight requests within 25 s, exits 0. A lost
//! broker connection is retried forever with backoff; Redis errors are retried within the
//! request's budget, then answered `internal` and dead-lettered.

pub mod http;
pub mod reply;
pub mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use lapin::BasicProperties;

use crate::amqp::{
    self, Courier, DIRECT_REPLY_TO, Disposition, Incoming, Presence, Prober, Published, Publisher,
};
use crate::clock::{now_ms, now_secs};
use crate::context::Context;
use crate::events::{Event, Events};
use crate::metrics::CheckoutOutcome;
use crate::pool::{PoolName, short_zone};
use crate::process::ProcessType;
use crate::refill_message::RefillMessage;
use crate::shutdown::Shutdown;
use crate::store::PoolEntry;
use crate::store::{self, Disposal, GiveBack, Settled, Settler, Store, Swept, ToSettle};
use crate::topology;
use reply::Code;

/// Requests handled at once per process.
pub const PREFETCH: u16 = crate::process::CHECKOUT_PREFETCH;
/// A lease not settled this long after its request's deadline is given up as an orphan.
pub const LEASE_GRACE: Duration = Duration::from_secs(5 * 60);
/// How often expired leases are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

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
    /// The reply's outcome is unknown; the request is requeued (its lease keeps the VM, so the
    /// redelivery sends the same VM to the same request).
    ReplyFailed,
}

impl Outcome {
    /// Its name in `warmer_checkouts_total` and in the summary line.
    pub fn label(&self) -> CheckoutOutcome {
        match self {
            Outcome::HandedOut { .. } | Outcome::HandedOutAgain { .. } => {
                CheckoutOutcome::HandedOut
            }
            Outcome::Refused(Code::NoPool) => CheckoutOutcome::NoPool,
            Outcome::Refused(Code::PoolEmpty) => CheckoutOutcome::PoolEmpty,
            Outcome::Refused(Code::BadRequest) => CheckoutOutcome::BadRequest,
            Outcome::Refused(Code::Internal) => CheckoutOutcome::Internal,
            Outcome::NoReplyTo => CheckoutOutcome::NoReplyTo,
            Outcome::Expired => CheckoutOutcome::Expired,
            Outcome::RequesterGone => CheckoutOutcome::RequesterGone,
            Outcome::Orphaned { .. } => CheckoutOutcome::Unsettled,
            Outcome::ReplyFailed => CheckoutOutcome::ReplyFailed,
        }
    }

    /// Whether the process counts this outcome in Redis itself: the others are counted by the
    /// script that decided them, or are not final (a requeued request is counted when it is
    /// served again).
    fn counted_here(&self) -> bool {
        matches!(
            self,
            Outcome::Refused(Code::BadRequest | Code::Internal) | Outcome::NoReplyTo
        )
    }

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
    events: Events,
    replies: Courier,
    /// Refill hints, confirmed.
    hints: Publisher,
    /// Asks whether direct reply-to requesters are there, on a connection of its own.
    prober: Arc<Prober>,
    /// Settles leases in batches.
    settler: Settler,
    /// This process's outcomes since the last summary line.
    tally: Arc<Tally>,
}

/// Consumes checkout requests until `shutdown`, reconnecting to RabbitMQ when needed.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_leases(ctx.store.clone(), shutdown.clone()));
    let prober = Arc::new(Prober::new(
        ctx.config.amqp_url.clone(),
        format!("{}.checkout.probe", ctx.names.prefix()),
    ));
    let settler = Settler::start(ctx.store.clone());
    let tally = Arc::new(Tally::default());
    let summary = tokio::spawn(tally.clone().summarize(shutdown.clone()));
    let result = amqp::supervise(ProcessType::Checkout.name(), &shutdown, || async {
        let connection = Arc::new(ctx.amqp(ProcessType::Checkout).await?);
        topology::declare_for(
            &connection,
            &ctx.names,
            &ctx.names.checkout_queue(),
            &shutdown,
        )
        .await?;
        let channel = connection.create_channel().await?;
        let events = ctx.events();
        events.attach(connection.create_channel().await?);
        let checkout = Arc::new(Checkout {
            store: ctx.store.clone(),
            events,
            replies: Courier::new(connection.clone()),
            hints: Publisher::open(&connection).await?,
            ctx: ctx.clone(),
            prober: prober.clone(),
            settler: settler.clone(),
            tally: tally.clone(),
        });
        let result = amqp::consume(
            &channel,
            &ctx.names.checkout_queue(),
            PREFETCH,
            &shutdown,
            |message| {
                let checkout = checkout.clone();
                async move {
                    let outcome = checkout.handle(message).await;
                    checkout.count(&outcome);
                    outcome.disposition()
                }
            },
        )
        .await;
        checkout.close_channels().await;
        let _ = connection.close(200, "bye".into()).await;
        result
    })
    .await;
    sweeper.abort();
    summary.abort();
    tally.log();
    prober.close().await;
    result
}

/// Turns expired leases into orphans every few seconds (see `sweep_leases.lua`).
pub(crate) async fn sweep_leases(store: Store, shutdown: Shutdown) {
    while shutdown.sleep(SWEEP_EVERY).await {
        match store.sweep_leases(now_ms()).await {
            Ok(Swept {
                pending: 0,
                handed: 0,
                ..
            }) => {}
            Ok(Swept {
                pending, handed, ..
            }) => tracing::warn!(
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
        if let Some(channel) = self.events.detach() {
            let _ = channel.close(200, "bye".into()).await;
        }
        let _ = self.hints.channel().close(200, "bye".into()).await;
        self.replies.close().await;
    }

    /// Counts a request's outcome: in the summary line, and in Redis if no script did.
    fn count(&self, outcome: &Outcome) {
        self.tally.add(outcome);
        if outcome.counted_here() {
            let (store, field) = (self.store.clone(), outcome.label().field());
            tokio::spawn(async move { store.count(field).await });
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
        let (identity, request, deadline) = match read(&message, received) {
            Ok(read) => read,
            Err(why) => {
                tracing::debug!(%why, "bad checkout request");
                let presence = self.presence(reply_to).await;
                let to = Requester {
                    reply_to,
                    props,
                    presence,
                };
                return self
                    .refuse(&to, Code::BadRequest, format!("bad request: {why}"))
                    .await;
            }
        };
        let pool = &request.pool;
        let give_up_at = deadline
            .max(received + request::DEFAULT_BUDGET_MS)
            .saturating_add(crate::clock::ms(LEASE_GRACE));

        // Whether a direct-reply-to requester is there is asked at the same time as the pop, so
        // it adds no latency; nothing is ever published to a name the broker does not confirm.
        // A name nobody owns (a requester that left, or a forged name) pops nothing for good:
        // the VM goes straight back to the head.
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let delivery = store::Delivery {
            identity: &identity,
            nonce: &nonce,
            redelivered: message.redelivered,
            now: received,
            deadline,
            give_up_at,
        };
        let (found, presence) = tokio::join!(self.pop(delivery, pool), self.presence(reply_to));
        let to = Requester {
            reply_to,
            props,
            presence,
        };
        let (entry, again) = match self.taken(found, pool, &to).await {
            Ok(taken) => taken,
            Err(outcome) => return outcome,
        };

        // A VM popped by this delivery whose reply cannot reach anyone goes back to the head of
        // its pool. One leased by an earlier delivery may already have been replied to (that
        // consumer died before acking): its fate is unknown, so it is deleted, never reused.
        let gone = if again {
            Disposal::Orphan("reply_unknown")
        } else {
            Disposal::Head
        };
        let (vm, body) = match self.vm_reply(&entry, &identity, pool, &to).await {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        };
        match self.reply(&to, &body).await {
            Ok(Published::Routed) => {}
            Ok(Published::NotRouted) => {
                tracing::debug!(%pool, vm = %vm.name, "the reply cannot reach anyone: requester gone");
                let outcome = Some(CheckoutOutcome::RequesterGone);
                return self.give_back(&identity, pool, gone, outcome).await;
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), %pool, vm = %vm.name, "reply not confirmed; the request will be redelivered and get the same VM");
                return Outcome::ReplyFailed;
            }
        }
        let wait = Duration::from_millis(now_ms().saturating_sub(received));
        handed_out(
            &self.settler,
            &self.events,
            ToSettle {
                identity,
                pool: pool.clone(),
                keep_until: now_ms() + self.ctx.config.max_handout_age.as_millis() as u64,
                deadline,
                wait,
            },
            give_up_at,
            &vm,
        )
        .await;
        tracing::debug!(%pool, vm = %vm.name, again, wait_ms = wait.as_millis() as u64, "checked out");
        let pool = pool.to_string();
        if again {
            Outcome::HandedOutAgain { pool, vm: vm.name }
        } else {
            Outcome::HandedOut { pool, vm: vm.name }
        }
    }

    /// What the pop found: the entry to send and whether an earlier delivery leased it, or the
    /// request's outcome when there is nothing to send.
    async fn taken(
        &self,
        found: store::Result<store::Checkout>,
        pool: &PoolName,
        to: &Requester<'_>,
    ) -> Result<(String, bool), Outcome> {
        let (code, text) = match found {
            Ok(store::Checkout::Popped { entry, hint }) => {
                if hint {
                    self.hint(pool);
                }
                return Ok((entry, false));
            }
            Ok(store::Checkout::Leased(entry)) => return Ok((entry, true)),
            Ok(store::Checkout::Expired) => {
                tracing::debug!(%pool, "request past its deadline: nothing popped");
                return Err(Outcome::Expired);
            }
            Ok(store::Checkout::Late) => {
                tracing::debug!(%pool, "repeat of a handed-out request past its deadline: nothing sent");
                return Err(Outcome::Expired);
            }
            Ok(store::Checkout::Orphaned(entry)) => {
                let vm = serde_json::from_str::<PoolEntry>(&entry).map_or(entry, |e| e.name);
                tracing::warn!(%pool, %vm, "request redelivered past its deadline: VM recorded as orphan");
                self.events
                    .emit(Event::InstanceOrphaned {
                        pool: pool.to_string(),
                        instance: vm.clone(),
                        zone: None,
                        reason: "checkout_unsettled".into(),
                    })
                    .await;
                return Err(Outcome::Orphaned { vm });
            }
            Ok(store::Checkout::Replayed) => {
                tracing::warn!(%pool, "a request reused the message_id or correlation_id of another request to the same reply address without being a redelivery: nothing popped");
                (Code::BadRequest, "bad request: this message_id (or correlation_id) was already used by another request; each request needs its own".into())
            }
            Ok(store::Checkout::NoPool) => {
                (Code::NoPool, format!("no config found for pool {pool}"))
            }
            Ok(store::Checkout::Empty { hint }) => {
                let outcome = self
                    .refuse(
                        to,
                        Code::PoolEmpty,
                        format!("no instance available in pool {pool}"),
                    )
                    .await;
                self.events
                    .emit(Event::PoolEmpty {
                        pool: pool.to_string(),
                    })
                    .await;
                if hint {
                    self.hint(pool);
                }
                return Err(outcome);
            }
            Err(error) => {
                tracing::error!(%error, %pool, "checkout failed in Redis");
                (
                    Code::Internal,
                    format!("internal: Redis failed during checkout: {error}"),
                )
            }
        };
        Err(self.refuse(to, code, text).await)
    }

    /// The VM of `entry` and its reply's body, or the request's outcome when the entry cannot
    /// be read (the VM is recorded as an orphan) or the reply cannot be written.
    async fn vm_reply(
        &self,
        entry: &str,
        identity: &str,
        pool: &PoolName,
        to: &Requester<'_>,
    ) -> Result<(PoolEntry, Vec<u8>), Outcome> {
        let vm = match serde_json::from_str::<PoolEntry>(entry) {
            Ok(vm) => vm,
            Err(error) => {
                tracing::error!(%error, %pool, "unreadable pool entry: recorded as orphan");
                self.give_back(identity, pool, Disposal::Orphan("unusable_entry"), None)
                    .await;
                let text = format!("internal: an entry of pool {pool} is not readable");
                return Err(self.refuse(to, Code::Internal, text).await);
            }
        };
        let body = match serde_json::to_vec(&reply::Vm::from(&vm)) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "serializing a reply");
                return Err(Outcome::ReplyFailed);
            }
        };
        Ok((vm, body))
    }

    /// Takes the pool's oldest VM into this request's lease, retrying transient Redis errors;
    /// the whole step, every try included, ends within the request's budget (1–10 s) whatever
    /// Redis does, so a stalled Redis gets the request an `internal` reply in time.
    async fn pop(
        &self,
        delivery: store::Delivery<'_>,
        pool: &PoolName,
    ) -> store::Result<store::Checkout> {
        store::within(budget_until(delivery.deadline), || {
            self.store.checkout(delivery, pool)
        })
        .await
    }

    /// Sends the refill hint `checkout.lua` recorded for `pool` (see [`send_hint`]).
    fn hint(&self, pool: &PoolName) {
        send_hint(&self.ctx, Some(self.hints.clone()), pool);
    }

    /// Whether a direct-reply-to requester is there (see [`Prober`]); ordinary reply queues
    /// are checked by the `mandatory` flag on the reply instead.
    async fn presence(&self, reply_to: &str) -> Presence {
        if reply_to.starts_with(DIRECT_REPLY_TO) {
            self.prober.probe(reply_to).await
        } else {
            Presence::Here
        }
    }

    /// Gives a pending lease's VM back (see [`give_back`]).
    async fn give_back(
        &self,
        identity: &str,
        pool: &PoolName,
        disposal: Disposal,
        outcome: Option<CheckoutOutcome>,
    ) -> Outcome {
        give_back(&self.store, &self.events, identity, pool, disposal, outcome).await;
        Outcome::RequesterGone
    }

    /// Answers `to` with an error reply.
    async fn refuse(&self, to: &Requester<'_>, code: Code, text: String) -> Outcome {
        let body = serde_json::to_vec(&reply::Error::new(code, text)).unwrap_or_default();
        match self.reply(to, &body).await {
            Ok(_) => Outcome::Refused(code),
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), ?code, "error reply not confirmed; requeued");
                Outcome::ReplyFailed
            }
        }
    }

    /// Publishes a reply, unless the requester is known to be gone (then it counts as not
    /// routed) or its direct reply-to name could not be checked (then the outcome is unknown:
    /// a name the broker cannot resolve would take this connection down).
    async fn reply(&self, to: &Requester<'_>, body: &[u8]) -> anyhow::Result<Published> {
        match to.presence {
            Presence::Here => {}
            Presence::Gone => return Ok(Published::NotRouted),
            Presence::Unknown => {
                anyhow::bail!("the direct reply-to requester could not be checked: not replying")
            }
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_timestamp(now_secs());
        if let Some(correlation_id) = to.props.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        self.replies
            .publish(to.reply_to, body, properties)
            .await
            .context("publishing the reply")
    }
}

/// Records a VM whose answer reached its requester as handed out. From here the request is
/// never requeued (a redelivery could find the requester gone and orphan a VM in use), so
/// settling is retried for as long as the lease is guaranteed to stay pending (until
/// `give_up_at`, less a second).
pub(crate) async fn handed_out(
    settler: &Settler,
    events: &Events,
    lease: ToSettle,
    give_up_at: u64,
    vm: &PoolEntry,
) {
    let pool = lease.pool.clone();
    let budget = give_up_at.saturating_sub(now_ms() + 1_000);
    let settled = store::within(Duration::from_millis(budget), || {
        settler.settle(lease.clone())
    })
    .await;
    match settled {
        Ok(Settled::Now | Settled::Already) => {}
        Ok(Settled::Swept) => {
            tracing::error!(%pool, vm = %vm.name, "lease was swept before its reply was confirmed; the VM is recorded as an orphan although it was handed out")
        }
        Err(error) => {
            tracing::error!(%error, %pool, vm = %vm.name, "handed out, but the lease could not be settled: it will be swept into orphaned")
        }
    }
    events
        .emit(Event::PoolDropped {
            pool: pool.to_string(),
            instance: vm.name.clone(),
            zone: short_zone(&vm.zone).to_string(),
        })
        .await;
}

/// Sends the refill hint `checkout.lua` recorded for `pool` on `hints`, off the request's
/// path; if it cannot be sent (or there is no publisher), clears it, so the next checkout
/// records and sends it again.
pub(crate) fn send_hint(ctx: &Context, hints: Option<Publisher>, pool: &PoolName) {
    let (store, names, pool) = (ctx.store.clone(), ctx.names.clone(), pool.clone());
    let sender = ctx.config.amqp_user();
    tokio::spawn(async move {
        let hint = RefillMessage::Hint(pool.clone());
        let sent = match hints {
            Some(hints) => hint.send(&hints, &names, &sender).await,
            None => Err(anyhow::anyhow!("no broker connection")),
        };
        if let Err(error) = sent {
            tracing::warn!(error = %crate::telemetry::report(&error), %pool, "refill hint not sent; the next checkout sends it");
            if let Err(error) = store.clear_hint(&pool).await {
                tracing::warn!(%error, %pool, "refill hint not cleared; the reconciler sends a fill once it is stale");
            }
        }
    });
}

/// Gives a pending lease's VM back (see [`Store::give_back`]): to the head of its pool, or to
/// orphaned; counts the request's `outcome` if it is final, and tells the events exchange.
pub(crate) async fn give_back(
    store: &Store,
    events: &Events,
    identity: &str,
    pool: &PoolName,
    disposal: Disposal,
    outcome: Option<CheckoutOutcome>,
) {
    let given = store::within(Duration::from_secs(10), || {
        store.give_back(identity, pool, disposal, outcome)
    })
    .await;
    let pool = pool.to_string();
    let event = match given {
        Ok((GiveBack::Head, instance)) => Event::InstanceReturned {
            pool,
            instance,
            reason: "requester_gone".into(),
        },
        Ok((GiveBack::Orphaned(reason), instance)) => Event::InstanceOrphaned {
            pool,
            instance,
            zone: None,
            reason,
        },
        Ok((GiveBack::NothingPending, _)) => return,
        // The lease stays pending and is swept into orphaned after its deadline.
        Err(error) => {
            tracing::error!(%error, %pool, "could not give a VM back");
            return;
        }
    };
    tracing::debug!(?event, "VM given back: no answer with it reached anyone");
    events.emit(event).await;
}

/// Where a request's replies go: its reply address, its properties (the correlation id), and
/// whether a direct reply-to requester is there.
struct Requester<'a> {
    reply_to: &'a str,
    props: &'a BasicProperties,
    presence: Presence,
}

/// A request's identity, body and deadline, or what is wrong with it.
fn read(
    message: &Incoming,
    received: u64,
) -> Result<(String, request::CheckoutRequest, u64), String> {
    let props = &message.properties;
    let identity = request::identity(props).ok_or_else(|| {
        "a request needs a correlation_id or a message_id, unique per request".to_string()
    })?;
    let request = request::parse(&message.data)?;
    let deadline = request::deadline(props, received)?;
    Ok((identity, request, deadline))
}

/// How often the process logs its outcomes.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The process's outcomes since the last summary: one log line a minute with l2met `count#`
/// keys instead of a line per request.
#[derive(Default)]
struct Tally([AtomicU64; CheckoutOutcome::ALL.len()]);

impl Tally {
    fn add(&self, outcome: &Outcome) {
        self.0[outcome.label() as usize].fetch_add(1, Ordering::Relaxed);
    }

    async fn summarize(self: Arc<Self>, shutdown: Shutdown) {
        while shutdown.sleep(SUMMARY_EVERY).await {
            self.log();
        }
    }

    /// Logs the outcomes since the last call, if there were any, and starts again from zero.
    /// (A log field's name is fixed where it is written: the test below holds these names to
    /// [`CheckoutOutcome::label`].)
    fn log(&self) {
        let n: Vec<u64> = self
            .0
            .iter()
            .map(|n| n.swap(0, Ordering::Relaxed))
            .collect();
        if n.iter().all(|n| *n == 0) {
            return;
        }
        use CheckoutOutcome::*;
        let n = |outcome: CheckoutOutcome| n[outcome as usize];
        tracing::info!(
            "count#warmer.checkouts.handed_out" = n(HandedOut),
            "count#warmer.checkouts.pool_empty" = n(PoolEmpty),
            "count#warmer.checkouts.no_pool" = n(NoPool),
            "count#warmer.checkouts.expired" = n(Expired),
            "count#warmer.checkouts.requester_gone" = n(RequesterGone),
            "count#warmer.checkouts.unsettled" = n(Unsettled),
            "count#warmer.checkouts.bad_request" = n(BadRequest),
            "count#warmer.checkouts.no_reply_to" = n(NoReplyTo),
            "count#warmer.checkouts.internal" = n(Internal),
            "count#warmer.checkouts.reply_failed" = n(ReplyFailed),
            "checkouts since the last summary"
        );
    }
}

/// The time a request may spend waiting on Redis: until its deadline, at least 1 s, at most
/// 10 s.
fn budget_until(deadline: u64) -> Duration {
    Duration::from_millis(deadline.saturating_sub(now_ms()).clamp(1_000, 10_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Captured;

    #[test]
    fn the_summary_line_counts_each_outcome_under_its_label() {
        let tally = Tally::default();
        for (i, outcome) in CheckoutOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "ALL is in declaration order");
            tally.0[i].fetch_add(i as u64 + 1, Ordering::Relaxed);
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(crate::telemetry::Logfmt)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tally.log());
        let line = captured.text();
        for (i, outcome) in CheckoutOutcome::ALL.into_iter().enumerate() {
            // An expired lease is counted by the sweep, not by a request's consumer.
            let logged = outcome != CheckoutOutcome::LeaseExpired;
            let field = format!("count#warmer.checkouts.{}={}", outcome.label(), i + 1);
            assert_eq!(line.contains(&field), logged, "{field} in {line}");
        }
    }
}
