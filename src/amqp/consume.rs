//! The consume loop every consumer runs, and the supervisor that reconnects it.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use backon::BackoffBuilder;
use futures_lite::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

/// How long in-flight work may take after shutdown (Heroku kills 30 s after SIGTERM).
pub const DRAIN: Duration = Duration::from_secs(25);

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
    let new_backoff = || crate::retry::broker().build();
    let mut backoff = new_backoff();
    loop {
        let started = Instant::now();
        let result = session().await;
        if shutdown.is_triggered() {
            return result.or_else(|error| {
                tracing::warn!(error = %crate::telemetry::report(&error), "{what}: stopped while degraded");
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
            error = %crate::telemetry::report(&error),
            retry_in = ?delay,
            "{what}: degraded, reconnecting"
        );
        if !shutdown.sleep(delay).await {
            return Ok(());
        }
    }
}
