//! What the benchmarks share: the local servers, the travis-shaped request, a fresh
//! deployment's names, waiting for a consumer, and removing a deployment's queues and keys.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Connection};
use redis::AsyncCommands;
use warmer::amqp::DIRECT_REPLY_TO;
use warmer::names::Names;
use warmer::store::now_ms;

pub const AMQP_URL: &str = "amqp://127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const POOL: &str = "bench-image:n1-standard-2";
/// The travis worker's request for [`POOL`].
pub const REQUEST: &[u8] = br#"{"site":"org","zone":"us-central1-c","image_name":"https://www.googleapis.com/compute/v1/projects/p/global/images/bench-image","machine_type":"https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-c/machineTypes/n1-standard-2","public_ip":false}"#;

/// A numeric setting from the environment, else `default`.
pub fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A prefix and namespace of its own for one measured deployment.
pub fn fresh_prefix() -> String {
    format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Sends one [`REQUEST`] to `queue` over direct reply-to (`replies` consumes it on `channel`),
/// with a fresh `timestamp` or none, and waits at most `patience` for a VM in reply. Returns when
/// the request was sent and when its reply came.
pub async fn check_out(
    channel: &Channel,
    replies: &mut lapin::Consumer,
    queue: &str,
    with_timestamp: bool,
    patience: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    let id = uuid::Uuid::new_v4().to_string();
    let mut properties = BasicProperties::default()
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_correlation_id(id.as_str().into())
        .with_message_id(id.as_str().into());
    if with_timestamp {
        properties = properties.with_timestamp(now_ms() / 1000);
    }
    let sent = Instant::now();
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            REQUEST,
            properties,
        )
        .await?;
    let reply = tokio::time::timeout(patience, replies.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("reply stream ended"))??;
    let replied = Instant::now();
    anyhow::ensure!(
        reply.data.starts_with(br#"{"name""#),
        "unexpected reply {}",
        String::from_utf8_lossy(&reply.data)
    );
    Ok((sent, replied))
}

/// Waits (at most 10 s) until `queue` has a consumer.
pub async fn wait_for_consumer(amqp: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = amqp.create_channel().await?;
    for _ in 0..1000 {
        if warmer::amqp::passive_declare(&channel, queue)
            .await?
            .consumer_count()
            > 0
        {
            let _ = channel.close(200, "ok".into()).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("no consumer on {queue}")
}

/// Removes a deployment's queues, events exchange and Redis keys.
pub async fn remove_deployment(
    amqp: &Connection,
    names: &Names,
    redis: &mut redis::aio::ConnectionManager,
) -> anyhow::Result<()> {
    let channel = amqp.create_channel().await?;
    for queue in [
        names.checkout_queue(),
        names.refill_queue(),
        names.dead_letter_queue(),
    ] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            names.events_exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    let _ = channel.close(200, "ok".into()).await;
    let keys: Vec<String> = redis.keys(format!("{}:*", names.namespace())).await?;
    if !keys.is_empty() {
        let _: () = redis.del(keys).await?;
    }
    Ok(())
}

/// A connection of the bench's own to the local Redis, to seed and clean up.
pub async fn redis() -> anyhow::Result<redis::aio::ConnectionManager> {
    Ok(redis::aio::ConnectionManager::new(redis::Client::open(REDIS_URL)?).await?)
}
