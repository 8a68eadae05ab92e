//! Direct reply-to: consuming replies as a requester, and asking whether a requester is there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use super::{LazyConnection, is_hard, is_not_found, passive_declare};
use crate::config::ServerUrl;

/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How long a presence probe may take before its outcome counts as unknown.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Names the broker confirmed within the last [`PRESENCE_MEMORY`]: a requester sending
    /// requests one after another on its channel is asked about once a second, not once a
    /// request. Only confirmations are remembered: a name that is gone or unknown is asked again.
    present: Mutex<HashMap<String, Instant>>,
}

/// How long a confirmed name counts as present without asking again. A requester that leaves
/// within it loses its reply: the VM is handed out and deleted after `WARMER_MAX_HANDOUT_AGE`.
pub const PRESENCE_MEMORY: Duration = Duration::from_secs(1);
/// Names remembered at most; the memory is cleared of expired names when it is full.
const REMEMBERED_NAMES: usize = 10_000;

impl Prober {
    pub fn new(url: ServerUrl, name: String) -> Self {
        Self {
            connection: LazyConnection::new(url, name),
            idle: Mutex::default(),
            present: Mutex::default(),
        }
    }

    /// Whether `reply_to` (a direct reply-to name) has a requester; at most [`PROBE_TIMEOUT`].
    pub async fn probe(&self, reply_to: &str) -> Presence {
        let remembered = self
            .present
            .lock()
            .ok()
            .and_then(|present| present.get(reply_to).copied());
        if remembered.is_some_and(|at| at.elapsed() < PRESENCE_MEMORY) {
            return Presence::Here;
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.probe_once_or_twice(reply_to)).await {
            Ok(Presence::Here) => {
                if let Ok(mut present) = self.present.lock() {
                    if present.len() >= REMEMBERED_NAMES {
                        present.retain(|_, at| at.elapsed() < PRESENCE_MEMORY);
                    }
                    present.insert(reply_to.to_string(), Instant::now());
                }
                Presence::Here
            }
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

    /// Closes the probe channels, then their connection.
    pub async fn close(&self) {
        super::close_idle(&self.idle).await;
        self.connection.close().await;
    }
}
