//! RabbitMQ transport, written once: connections, publishing with confirms, the consume loop
//! every consumer runs, and direct reply-to. What is declared, and why, is the
//! [topology](crate::topology)'s business.
//!
//! - [`consume`]: handlers never touch acks; they return a [`Disposition`] and the loop acks,
//!   dead-letters or requeues. It stops on shutdown with `basic.cancel`, waits up to [`DRAIN`]
//!   for in-flight handlers, and closes the channel so anything unfinished is requeued. A broken
//!   connection ends the session with an error; [`supervise`] reconnects with backoff, and the
//!   broker redelivers whatever was unacknowledged.
//! - [`Publisher`] (events, never returned) and [`Courier`] (replies and commands, `mandatory`,
//!   one publish per channel at a time so that a return is pinned on its own message).
//! - [`Prober`]: whether a direct reply-to requester is there, on a connection of its own.

mod consume;
mod publish;
mod reply_to;

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::anyhow;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::ServerUrl;

pub use consume::{DRAIN, Disposition, Incoming, consume, supervise};
pub use publish::{Courier, Published, Publisher, json_properties};
pub use reply_to::{DIRECT_REPLY_TO, Presence, Prober, consume_direct_replies};

/// How long one broker address may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the next connection of this process starts in the list of broker addresses: each
/// connection starts one further, so a process's connections spread over a cluster's nodes and
/// a reconnect tries another node first.
static NEXT_ADDRESS: AtomicUsize = AtomicUsize::new(0);

/// Connects to RabbitMQ, naming the connection so operators can find it. `url` may list several
/// brokers (the nodes of a cluster): they are tried in turn, from one further than the last
/// connection of this process started, each for at most [`CONNECT_TIMEOUT`], and the first that
/// answers is used.
pub async fn connect(url: &ServerUrl, name: &str) -> anyhow::Result<Connection> {
    let addresses = url.addresses();
    let first = NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed);
    let mut errors = Vec::new();
    for i in 0..addresses.len() {
        let address = &addresses[(first + i) % addresses.len()];
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(address.expose(), properties),
        )
        .await;
        match connected {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => errors.push(format!("{address}: {error}")),
            Err(_) => errors.push(format!("{address}: timed out")),
        }
    }
    Err(anyhow!("connecting to RabbitMQ: {}", errors.join("; ")))
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

/// Closes every channel kept idle in `idle`, waiting for each: a channel dropped instead closes
/// itself in the background, racing its connection's close (lapin then logs an ERROR).
pub async fn close_idle(idle: &std::sync::Mutex<Vec<Channel>>) {
    let channels: Vec<Channel> = idle
        .lock()
        .map(|mut idle| idle.drain(..).collect())
        .unwrap_or_default();
    for channel in channels {
        let _ = channel.close(200, "bye".into()).await;
    }
}

/// Declares `queue` passively: its counts if it exists; NOT_FOUND, which
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

/// Whether the broker closed the connection (a hard error), not just a channel.
fn is_hard(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Hard(_))
    )
}

/// Whether the broker answered NOT_FOUND (no such queue or reply-to).
pub fn is_not_found(error: &lapin::Error) -> bool {
    is_soft(error, AMQPSoftError::NOTFOUND)
}

/// Whether the broker closed the channel with this soft error.
pub fn is_soft(error: &lapin::Error, soft: AMQPSoftError) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(soft)
    )
}
