//! Publishing with confirms: [`Publisher`] for events and [`Courier`] for replies and commands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::DIRECT_REPLY_TO;

/// How long to wait for a publisher confirm before the outcome counts as unknown.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

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
/// to say. Replies and commands, whose returns matter, go through a `Courier`.
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
///
/// Publishes that are not `mandatory` (direct reply-to) can never be returned, so they share one
/// confirm channel, many in flight, whose confirms the broker acknowledges in batches; that
/// channel carries nothing else, so no return can ever surface on it either.
pub struct Courier {
    connection: Arc<Connection>,
    idle: Mutex<Vec<Channel>>,
    /// The channel of publishes that cannot be returned, opened on first use.
    unreturnable: tokio::sync::Mutex<Option<Channel>>,
}

impl Courier {
    pub fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            idle: Mutex::default(),
            unreturnable: tokio::sync::Mutex::default(),
        }
    }

    /// The shared channel for publishes that cannot be returned, (re)opened when needed.
    async fn unreturnable_channel(&self) -> anyhow::Result<Channel> {
        let mut shared = self.unreturnable.lock().await;
        if let Some(channel) = shared.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = confirm_channel(&self.connection).await?;
        *shared = Some(channel.clone());
        Ok(channel)
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
        if !mandatory {
            let channel = self.unreturnable_channel().await?;
            return match publish_confirmed(&channel, "", queue, body, properties, false).await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Published::Routed),
                Confirmation::Ack(Some(_)) => Err(anyhow!(
                    "a message returned on a channel of unreturnable publishes"
                )),
                Confirmation::Nack(_) => Err(anyhow!("the broker nacked the message")),
            };
        }
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

    /// Closes the idle channels and the shared one.
    pub async fn close(&self) {
        if let Some(channel) = self.unreturnable.lock().await.take() {
            let _ = channel.close(200, "bye".into()).await;
        }
        super::close_idle(&self.idle).await;
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

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}
