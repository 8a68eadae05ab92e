//! What warmer declares on RabbitMQ, and the consumer queues HireFire and the autoscaler watch.
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `<prefix>.checkout` | durable quorum queue | checkout requests |
//! | `<prefix>.refill` | durable quorum queue, bound to `<prefix>.events` for [`Event::REFILL_HINTS`] | refill hints: events and fill commands |
//! | `<prefix>.events` | durable topic exchange | [`Event`]s |
//! | `<prefix>.dead` | durable queue | dead letters |
//!
//! Both quorum queues redeliver a message at most [`DELIVERY_LIMIT`] times, then dead-letter it
//! to `<prefix>.dead` through the default exchange. Every consuming process declares all of it,
//! idempotently; `web` and `autoscale` only read queue depths ([`QueueMonitor`]).

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use crate::amqp::{LazyConnection, is_not_found, passive_declare};
use crate::config::ServerUrl;
use crate::events::Event;
use crate::names::Names;

/// Deliveries of one message before it is dead-lettered instead of redelivered again.
pub const DELIVERY_LIMIT: i64 = 5;

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

/// Declares every queue, exchange and binding (idempotent).
pub async fn declare(channel: &Channel, names: &Names) -> anyhow::Result<()> {
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
    for key in Event::REFILL_HINTS {
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
