//! RabbitMQ transport, written once: connection, topology (SPEC §3), publishing with confirms,
//! and the consume loop every consumer runs.
//!
//! Handlers never touch acks: they return a [`Disposition`] and the loop acks, dead-letters or
//! requeues. The loop stops on shutdown with `basic.cancel`, waits up to [`DRAIN`] for in-flight
//! handlers, and closes the channel so anything unfinished is requeued. A broken connection ends
//! the session with an error; [`supervise`] reconnects with backoff, and the broker redelivers
//! whatever was unacknowledged.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use backon::BackoffBuilder;
use futures_lite::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::task::JoinSet;

use crate::config::ServerUrl;
use crate::names::Names;
use crate::shutdown::Shutdown;

/// How long in-flight work may take after shutdown (Heroku kills 30 s after SIGTERM).
pub const DRAIN: Duration = Duration::from_secs(25);
/// How long to wait for a publisher confirm before the outcome counts as unknown.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries of one message before it is dead-lettered instead of redelivered again.
pub const DELIVERY_LIMIT: i64 = 5;
/// How long a presence probe may take before its outcome counts as unknown.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What the consume loop does with a message once its handler is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Processed (including "answered with an error").
    Ack,
    /// Cannot be processed: to the dead-letter queue, kept for inspection.
    DeadLetter,
    /// Not processed now: back to the queue, redelivered later (up to the delivery limit).
    Requeue,
}

/// A delivered message, as handlers see it.
#[derive(Debug)]
pub struct Incoming {
    pub data: Vec<u8>,
    pub properties: BasicProperties,
    pub redelivered: bool,
}

/// Connects to RabbitMQ, naming the connection so operators can find it.
pub async fn connect(url: &ServerUrl, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url.expose(), properties),
    )
    .await
    .map_err(|_| anyhow!("connecting to RabbitMQ at {url} timed out"))?
    .with_context(|| format!("connecting to RabbitMQ at {url}"))
}

fn quorum_queue_arguments(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(names.dead_letter_queue().as_str().into()),
    );
    args
}

/// Declares every queue, exchange and binding of SPEC §3 (idempotent).
pub async fn declare_topology(channel: &Channel, names: &Names) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            names.dead_letter_queue().as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await
        .context("declaring the dead-letter queue")?;
    for queue in [names.checkout_queue(), names.refill_queue()] {
        channel
            .queue_declare(
                queue.as_str().into(),
                durable,
                quorum_queue_arguments(names),
            )
            .await
            .with_context(|| format!("declaring queue {queue}"))?;
    }
    channel
        .exchange_declare(
            names.events_exchange().as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the events exchange")?;
    for key in ["pool.dropped", "pool.empty"] {
        channel
            .queue_bind(
                names.refill_queue().as_str().into(),
                names.events_exchange().as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding {} to {key}", names.refill_queue()))?;
    }
    Ok(())
}

/// What the broker said about a message published through a [`Courier`].
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Confirmed, and (for mandatory publishes) routed to a queue.
    Routed,
    /// Returned as unroutable (NO_ROUTE): provably delivered to nobody.
    NotRouted,
}

/// A channel in confirm mode for events and commands, shared by every task of a process. Its
/// publishes are never `mandatory`, so the broker never returns one: a confirm says all there is
/// to say. Replies and commands, whose returns matter, go through a [`Courier`].
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> anyhow::Result<Self> {
        Ok(Self {
            channel: confirm_channel(connection).await?,
        })
    }

    /// Publishes (not mandatory) and waits for the broker's confirm. An error means the outcome
    /// is unknown.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        match publish_confirmed(
            &self.channel,
            exchange,
            routing_key,
            body,
            properties,
            false,
        )
        .await?
        {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => bail!("the broker refused the message (nack)"),
        }
    }

    /// Publishes a JSON event to the events exchange.
    pub async fn event(
        &self,
        names: &Names,
        routing_key: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(body)?;
        let properties = json_properties().with_timestamp(crate::store::now_ms() / 1000);
        self.publish(&names.events_exchange(), routing_key, &body, properties)
            .await
            .with_context(|| format!("publishing event {routing_key}"))
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// Publishes to a queue by name (the default exchange), `mandatory`, so that a message the
/// broker returns as unroutable is always pinned on its own publish: what checkout replies and
/// operator commands go through.
///
/// lapin attaches a `basic.return` to whichever pending confirm of the channel completes next
/// (with a `multiple` ack, in `HashMap` order), so on a channel with several publishes in flight
/// a return proves nothing about any one of them. Here every channel carries **one publish at a
/// time**: the broker sends a message's `basic.return` before its `basic.ack`, so the only
/// return a confirm can carry is that publish's own. Each message also gets a unique `message_id`,
/// checked against the returned message: a return that is not ours (which the discipline rules
/// out) is never read as "not routed" but as an unknown outcome. A channel whose publish ended
/// in an error or a timeout is closed, never reused, so nothing late can surface on it.
pub struct Courier {
    connection: Arc<Connection>,
    idle: Mutex<Vec<Channel>>,
}

impl Courier {
    pub fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            idle: Mutex::default(),
        }
    }

    /// Publishes to `queue`, `mandatory` unless it is direct reply-to. An error means the outcome
    /// is unknown: the message may or may not have reached the queue.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<Published> {
        // Direct reply-to and `mandatory` do not mix (a delivered reply can come back as
        // NO_ROUTE), so only ordinary queues use it.
        let mandatory = !queue.starts_with(DIRECT_REPLY_TO);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let properties = properties.with_message_id(id.as_str().into());
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let channel = match idle {
            Some(channel) if channel.status().connected() => channel,
            _ => confirm_channel(&self.connection).await?,
        };
        let confirmed = publish_confirmed(&channel, "", queue, body, properties, mandatory).await;
        let published = match confirmed {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(Published::Routed),
            Ok(Confirmation::Ack(Some(returned))) => {
                let ours = returned.delivery.properties.message_id().as_ref()
                    == Some(&id.as_str().into())
                    && returned.delivery.routing_key.as_str() == queue;
                if ours && returned.reply_code == NO_ROUTE {
                    Ok(Published::NotRouted)
                } else {
                    Err(anyhow!(
                        "a returned message that is not this one (code {}): outcome unknown",
                        returned.reply_code
                    ))
                }
            }
            // The broker failed to take the message: it may or may not have been delivered.
            Ok(Confirmation::Nack(_)) => Err(anyhow!("the broker nacked the message")),
            Err(error) => Err(error),
        };
        if published.is_ok() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(channel);
            }
        } else {
            // Its state is unknown (a confirm may still come): never reuse it.
            tokio::spawn(async move {
                let _ = channel.close(200, "reply outcome unknown".into()).await;
            });
        }
        published
    }

    /// Closes the idle channels.
    pub async fn close(&self) {
        let idle: Vec<Channel> = self
            .idle
            .lock()
            .map(|mut idle| idle.drain(..).collect())
            .unwrap_or_default();
        for channel in idle {
            let _ = channel.close(200, "bye".into()).await;
        }
    }
}

/// AMQP reply code of a message returned as unroutable.
const NO_ROUTE: u16 = 312;

async fn confirm_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a publishing channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    Ok(channel)
}

/// Publishes on `channel` and waits at most [`CONFIRM_TIMEOUT`] for the broker's confirm.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> anyhow::Result<Confirmation> {
    let routing_key =
        ShortString::try_new(routing_key).map_err(|_| anyhow!("routing key too long"))?;
    let confirm = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key,
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await
    };
    tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| anyhow!("no publisher confirm within {CONFIRM_TIMEOUT:?}"))?
        .context("publishing")
}

/// The consumer process types and the queue each consumes: what HireFire and
/// `warmer autoscale` scale by.
pub fn consumer_queues(names: &Names) -> [(&'static str, String); 2] {
    [
        ("checkout", names.checkout_queue()),
        ("refill", names.refill_queue()),
    ]
}

/// One consumer queue's state; `None` when the queue does not exist (not declared yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub process: &'static str,
    pub queue: String,
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
}

/// A connection opened on first use and reopened once lost, for work that is not consuming
/// (queue depths, presence probes) and must not take a consumer's connection down with it.
pub struct LazyConnection {
    url: ServerUrl,
    name: String,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl LazyConnection {
    /// `name` names the connection in RabbitMQ.
    pub fn new(url: ServerUrl, name: String) -> Self {
        Self {
            url,
            name,
            connection: tokio::sync::Mutex::default(),
        }
    }

    /// The open connection, connecting (again) if there is none.
    pub async fn get(&self) -> anyhow::Result<Arc<Connection>> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let connection = Arc::new(connect(&self.url, &self.name).await?);
        *guard = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the connection (closing it in the background), so that the next [`Self::get`]
    /// opens a new one: for a connection that failed or stopped answering.
    pub async fn reset(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            tokio::spawn(async move {
                let closing = connection.close(200, "reset".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
            });
        }
    }

    /// Closes the connection, waiting at most 2 s for the broker (a dead link never answers).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if let Some(connection) = self.connection.lock().await.take() {
                let _ = connection.close(200, "bye".into()).await;
            }
        })
        .await;
    }
}

/// Reads the depths of the consumer queues on a connection of its own. Declares nothing.
pub struct QueueMonitor {
    connection: LazyConnection,
    names: Names,
    timeout: Duration,
}

impl QueueMonitor {
    /// `name` names the connection in RabbitMQ; [`Self::depths`] takes at most `timeout`.
    pub fn new(url: ServerUrl, name: String, names: Names, timeout: Duration) -> Self {
        Self {
            connection: LazyConnection::new(url, name),
            names,
            timeout,
        }
    }

    /// Ready messages and consumers of every consumer queue, by passive declare. A failure
    /// drops the connection, so a hung one does not fail every later call.
    pub async fn depths(&self) -> anyhow::Result<Vec<QueueDepth>> {
        let depths = tokio::time::timeout(self.timeout, async {
            let connection = self.connection.get().await?;
            let queues = consumer_queues(&self.names);
            let mut depths = Vec::with_capacity(queues.len());
            for (process, queue) in queues {
                let depth = queue_depth(&connection, &queue).await?;
                depths.push(QueueDepth {
                    process,
                    queue,
                    ready: depth.map(|d| d.0),
                    consumers: depth.map(|d| d.1),
                });
            }
            Ok(depths)
        })
        .await
        .map_err(|_| anyhow!("reading queue depths from RabbitMQ timed out"))
        .and_then(|depths| depths);
        if depths.is_err() {
            self.connection.reset().await;
        }
        depths
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.connection.close().await;
    }
}

/// Whether a direct reply-to requester is still connected, as the broker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The broker knows the name: a reply to it reaches its requester.
    Here,
    /// The broker does not know the name, or cannot resolve it: nobody can receive a reply,
    /// and a reply must not be sent.
    Gone,
    /// The probe itself failed (our connection): proves nothing either way.
    Unknown,
}

/// Asks the broker whether a direct reply-to name belongs to a connected requester, by a
/// passive declare of the name: it succeeds while the requester's channel is open.
///
/// Probes run on a connection of their own because a name that does not decode to a live
/// broker process (a forged `amq.rabbitmq.reply-to.<…>`) makes RabbitMQ close the *connection*
/// with INTERNAL_ERROR, for a declare as for a publish; on a consumer's connection that would
/// requeue every request in flight. A probe that loses its connection this way is tried once
/// more on a fresh one: if the name kills that one too, the name is what the broker cannot
/// resolve, and no reply may ever be published to it.
pub struct Prober {
    connection: LazyConnection,
    /// Channels kept while their probes succeed (a failed passive declare closes its channel).
    idle: Mutex<Vec<Channel>>,
}

impl Prober {
    pub fn new(url: ServerUrl, name: String) -> Self {
        Self {
            connection: LazyConnection::new(url, name),
            idle: Mutex::default(),
        }
    }

    /// Whether `reply_to` (a direct reply-to name) has a requester; at most [`PROBE_TIMEOUT`].
    pub async fn probe(&self, reply_to: &str) -> Presence {
        match tokio::time::timeout(PROBE_TIMEOUT, self.probe_once_or_twice(reply_to)).await {
            Ok(presence) => presence,
            Err(_) => {
                tracing::warn!("presence probe timed out; reconnecting");
                self.connection.reset().await;
                Presence::Unknown
            }
        }
    }

    async fn probe_once_or_twice(&self, reply_to: &str) -> Presence {
        for attempt in 0..2 {
            let Ok(connection) = self.connection.get().await else {
                return Presence::Unknown;
            };
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let channel = match idle {
                Some(channel) if channel.status().connected() => channel,
                _ => match connection.create_channel().await {
                    Ok(channel) => channel,
                    Err(_) => return Presence::Unknown,
                },
            };
            match passive_declare(&channel, reply_to).await {
                Ok(_) => {
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(channel);
                    }
                    return Presence::Here;
                }
                Err(error) if is_not_found(&error) => return Presence::Gone,
                // The broker closed the whole connection: because of this name, or of another
                // probe's on the same connection. A fresh connection tells them apart.
                Err(error) if is_hard(&error) && attempt == 0 => {
                    tracing::debug!(%error, "a probe's connection was closed; probing again");
                }
                Err(error) if is_hard(&error) => {
                    tracing::warn!(%error, "the broker cannot resolve a direct reply-to name");
                    return Presence::Gone;
                }
                Err(error) => {
                    tracing::warn!(%error, "presence probe failed");
                    return Presence::Unknown;
                }
            }
        }
        Presence::Unknown
    }

    /// Closes the probe connection.
    pub async fn close(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        self.connection.close().await;
    }
}

/// Declares `queue` passively: its counts if it exists; NOT_FOUND (see [`is_not_found`]), which
/// also closes `channel`, if it does not.
pub async fn passive_declare(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
}

/// (ready messages, consumers) of `queue`, or `None` when it does not exist, each on its own
/// channel.
async fn queue_depth(connection: &Connection, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    match passive_declare(&channel, queue).await {
        Ok(q) => {
            let _ = channel.close(200, "ok".into()).await;
            Ok(Some((q.message_count(), q.consumer_count())))
        }
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(anyhow!(error).context(format!("declaring {queue}"))),
    }
}

/// Whether the broker closed the connection (a hard error), not just a channel.
fn is_hard(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Hard(_))
    )
}

/// Whether the broker answered NOT_FOUND (no such queue or reply-to).
pub fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// Starts consuming direct reply-to on `channel`, as a requester must before it publishes a
/// request with `reply_to` = [`DIRECT_REPLY_TO`] (no-ack: the broker requires it).
pub async fn consume_direct_replies(channel: &Channel) -> lapin::Result<lapin::Consumer> {
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Consumes `queue` until shutdown (returns `Ok`) or until the connection fails (returns `Err`).
///
/// Each delivery runs `handler` in its own task, at most `prefetch` at a time; its
/// [`Disposition`] decides the ack. On shutdown: cancel, drain for up to [`DRAIN`], close.
pub async fn consume<H, F>(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    shutdown: &Shutdown,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Incoming) -> F,
    F: Future<Output = Disposition> + Send + 'static,
{
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("setting prefetch")?;
    let tag = format!("{queue}.{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))?;
    tracing::info!(queue, prefetch, "consuming");

    let mut tasks = JoinSet::new();
    let ended = loop {
        tokio::select! {
            _ = shutdown.wait() => break Ok(()),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let acker = delivery.acker;
                    let work = handler(Incoming {
                        data: delivery.data,
                        properties: delivery.properties,
                        redelivered: delivery.redelivered,
                    });
                    tasks.spawn(async move {
                        let disposition = work.await;
                        let settled = match disposition {
                            Disposition::Ack => acker.ack(Default::default()).await,
                            Disposition::DeadLetter => {
                                acker.reject(BasicRejectOptions { requeue: false }).await
                            }
                            Disposition::Requeue => {
                                acker
                                    .nack(BasicNackOptions { requeue: true, multiple: false })
                                    .await
                            }
                        };
                        if let Err(error) = settled {
                            // The channel is gone: the broker redelivers the message.
                            tracing::warn!(%error, ?disposition, "could not settle a delivery");
                        }
                    });
                }
                Some(Err(error)) => break Err(anyhow!(error).context(format!("consuming {queue}"))),
                None => break Err(anyhow!("the broker cancelled the consumer of {queue}")),
            }
        }
    };

    if ended.is_ok() {
        if let Err(error) = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(%error, "cancelling the consumer");
        }
        let in_flight = tasks.len();
        let deadline = Instant::now() + DRAIN;
        while !tasks.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, tasks.join_next()).await.is_err() {
                tracing::warn!(
                    unfinished = tasks.len(),
                    "in-flight work did not finish in time; it is requeued"
                );
                break;
            }
        }
        tracing::info!(queue, in_flight, "stopped consuming");
    }
    tasks.abort_all();
    let _ = channel.close(200, "OK".into()).await;
    ended
}

/// Runs `session` (connect, declare, consume) until it returns `Ok` (a clean shutdown),
/// reconnecting with exponential backoff when it fails.
pub async fn supervise<S, F>(what: &str, shutdown: &Shutdown, mut session: S) -> anyhow::Result<()>
where
    S: FnMut() -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        let started = Instant::now();
        let result = session().await;
        if shutdown.is_triggered() {
            return result.or_else(|error| {
                tracing::warn!(error = %format!("{error:#}"), "{what}: stopped while degraded");
                Ok(())
            });
        }
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if started.elapsed() > Duration::from_secs(60) {
            backoff = new_backoff();
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        tracing::error!(
            error = %format!("{error:#}"),
            retry_in = ?delay,
            "{what}: degraded, reconnecting"
        );
        if !shutdown.sleep(delay).await {
            return Ok(());
        }
    }
}
