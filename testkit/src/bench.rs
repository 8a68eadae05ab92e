//! What the benchmarks share besides the app: settings from the environment, medians, a fresh
//! deployment's names, one checkout as a worker does it, and waiting for a consumer.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use warmer::DIRECT_REPLY_TO;

use crate::redis_url;
use warmer::now_ms;

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

/// A fresh deployment on the local servers, with names of its own and `vars`: its context.
pub async fn context(
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<warmer::Context> {
    let prefix = fresh_prefix();
    let names = [
        ("WARMER_AMQP_PREFIX", &prefix),
        ("WARMER_REDIS_NAMESPACE", &prefix),
    ];
    let vars = names
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain(vars)
        .collect();
    warmer::Context::new(warmer::Config::from_vars(vars)?).await
}

/// A fresh deployment with the simulated cloud.
pub async fn local_context() -> anyhow::Result<warmer::Context> {
    context([("WARMER_PROVIDER".to_string(), "local".to_string())]).await
}

/// `(name, value)` pairs as owned strings, for [`context`].
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
        if warmer::passive_declare(&channel, queue)
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

/// A connection of the bench's own to the local Redis, to seed and clean up.
pub async fn redis() -> anyhow::Result<redis::aio::ConnectionManager> {
    // Seeding and removing tens of thousands of entries outlasts the client's default 500 ms.
    let patient = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    let client = redis::Client::open(redis_url())?;
    Ok(redis::aio::ConnectionManager::new_with_config(client, patient).await?)
}
