//! RabbitMQ transport, written once: connection, topology (SPEC §3), publishing with confirms,
//! and the consume loop every consumer runs.
//!
//! Handlers never touch acks: they return a [`Disposition`] and the loop acks, dead-letters or
//! requeues. The loop stops on shutdown with `basic.cancel`, waits up to [`DRAIN`] for in-flight
//! handlers, and closes the channel so anything unfinished is requeued. A broken connection ends
//! the session with an error; [`supervise`] reconnects with backoff, and the broker redelivers
//! whatever was unacknowledged.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
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

/// What the broker said about a published message.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Confirmed, and (for mandatory publishes) routed to a queue.
    Routed,
    /// Confirmed but returned as unroutable (mandatory), or refused by the broker (nack).
    NotRouted,
}

/// A channel in confirm mode, shared by every task of a process.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> anyhow::Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("opening the publishing channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Self { channel })
    }

    /// Publishes and waits for the broker's confirm. An error means the outcome is unknown.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> anyhow::Result<Published> {
        let routing_key =
            ShortString::try_new(routing_key).map_err(|_| anyhow!("routing key too long"))?;
        let confirm = async {
            self.channel
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
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| anyhow!("no publisher confirm within {CONFIRM_TIMEOUT:?}"))?
            .context("publishing")?;
        Ok(match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Published::Routed,
            Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => Published::NotRouted,
        })
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
        self.publish(
            &names.events_exchange(),
            routing_key,
            &body,
            properties,
            false,
        )
        .await
        .with_context(|| format!("publishing event {routing_key}"))
        .map(|_| ())
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
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

/// Reads the depths of the consumer queues on one connection, opened on first use and reopened
/// when lost. Declares nothing.
pub struct QueueMonitor {
    url: ServerUrl,
    name: String,
    names: Names,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl QueueMonitor {
    /// `name` names the connection in RabbitMQ; [`Self::depths`] takes at most `timeout`,
    /// waiting for another call included.
    pub fn new(url: ServerUrl, name: String, names: Names, timeout: Duration) -> Self {
        Self {
            url,
            name,
            names,
            timeout,
            connection: tokio::sync::Mutex::default(),
        }
    }

    /// Ready messages and consumers of every consumer queue, by passive declare.
    pub async fn depths(&self) -> anyhow::Result<Vec<QueueDepth>> {
        tokio::time::timeout(self.timeout, async {
            let mut guard = self.connection.lock().await;
            let connection = match guard.take() {
                Some(connection) if connection.status().connected() => connection,
                _ => connect(&self.url, &self.name).await?,
            };
            let queues = consumer_queues(&self.names);
            let mut depths = Vec::with_capacity(queues.len());
            for (process, queue) in queues {
                let depth = queue_depth(&connection, &queue).await;
                let depth = match depth {
                    Ok(depth) => depth,
                    Err(error) => {
                        let _ = connection.close(200, "bye".into()).await;
                        return Err(error);
                    }
                };
                depths.push(QueueDepth {
                    process,
                    queue,
                    ready: depth.map(|d| d.0),
                    consumers: depth.map(|d| d.1),
                });
            }
            *guard = Some(connection);
            Ok(depths)
        })
        .await
        .map_err(|_| anyhow!("reading queue depths from RabbitMQ timed out"))?
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
