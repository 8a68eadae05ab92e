//! Clients of the app under test: a CI worker's requester and an event listener.

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;
use warmer::Names;

use crate::within;

/// A CI worker: one channel consuming its replies (direct reply-to, or an ordinary queue of its
/// own), sending requests and matching replies.
pub struct Requester {
    pub channel: Channel,
    replies: lapin::Consumer,
    checkout_queue: String,
    /// Where replies come back: direct reply-to or this requester's own queue.
    pub reply_to: lapin::types::ShortString,
}

impl Requester {
    pub async fn new(amqp: &Connection, names: &Names) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        let replies = warmer::consume_direct_replies(&channel).await.unwrap();
        Requester {
            channel,
            replies,
            checkout_queue: names.checkout_queue(),
            reply_to: warmer::DIRECT_REPLY_TO.into(),
        }
    }

    /// A requester whose replies come to an exclusive, server-named queue of its own.
    pub async fn with_reply_queue(amqp: &Connection, names: &Names) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        let (queue, replies) = exclusive_queue(&channel).await;
        Requester {
            channel,
            replies,
            checkout_queue: names.checkout_queue(),
            reply_to: queue,
        }
    }

    /// Properties of a fresh request to this requester's reply address.
    pub fn fresh_properties(&self) -> BasicProperties {
        Self::properties().with_reply_to(self.reply_to.clone())
    }

    /// Properties of a fresh request: direct reply-to, a new correlation id, a timestamp.
    pub fn properties() -> BasicProperties {
        BasicProperties::default()
            .with_reply_to(warmer::DIRECT_REPLY_TO.into())
            .with_correlation_id(uuid::Uuid::new_v4().to_string().as_str().into())
            .with_timestamp(warmer::now_ms() / 1000)
    }

    /// Sends `body` and returns the reply.
    pub async fn send(&mut self, body: &[u8]) -> Value {
        self.send_with(body, self.fresh_properties()).await
    }

    /// Publishes a request with `properties` (without waiting for a reply).
    pub async fn publish(&self, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                "".into(),
                self.checkout_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
    }

    /// Publishes the travis request with `properties` (a fresh correlation id among them), without
    /// waiting for its reply; returns the correlation id to wait for it with
    /// [`Self::reply_to`].
    pub async fn publish_travis_request(&self, properties: BasicProperties) -> String {
        let correlation = properties
            .correlation_id()
            .clone()
            .expect("a correlation id")
            .to_string();
        self.publish(crate::TRAVIS_REQUEST.as_bytes(), properties)
            .await;
        correlation
    }

    /// Sends `body` with `properties` and returns the reply with the same correlation id.
    pub async fn send_with(&mut self, body: &[u8], properties: BasicProperties) -> Value {
        let correlation = properties.correlation_id().clone().expect("correlation id");
        self.publish(body, properties).await;
        self.reply_to(correlation.as_str()).await
    }

    /// The raw reply stream.
    pub fn replies_mut(&mut self) -> &mut lapin::Consumer {
        &mut self.replies
    }

    /// Waits for the reply carrying `correlation`.
    pub async fn reply_to(&mut self, correlation: &str) -> Value {
        within("a checkout reply", async {
            loop {
                let delivery = self.replies.next().await.expect("reply stream").unwrap();
                if delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str())
                    == Some(correlation)
                {
                    assert_eq!(
                        delivery
                            .properties
                            .content_type()
                            .as_ref()
                            .map(|c| c.as_str()),
                        Some("application/json")
                    );
                    return serde_json::from_slice(&delivery.data).expect("reply is JSON");
                }
            }
        })
        .await
    }
}

/// Events of one routing key, from an exclusive queue bound to the events exchange.
pub struct Listener {
    consumer: lapin::Consumer,
}

impl Listener {
    pub(crate) async fn bind(amqp: &Connection, exchange: &str, routing_key: &str) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        let (queue, consumer) = exclusive_queue(&channel).await;
        channel
            .queue_bind(
                queue,
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Listener { consumer }
    }

    /// The next event's body.
    pub async fn next(&mut self) -> Value {
        within("an event", async {
            let delivery = self.consumer.next().await.expect("event stream").unwrap();
            serde_json::from_slice(&delivery.data).expect("event is JSON")
        })
        .await
    }

    /// The next `n` events' bodies.
    pub async fn take(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }
}

/// A server-named queue that lives as long as `channel`, and a no-ack consumer of it.
pub(crate) async fn exclusive_queue(channel: &Channel) -> (ShortString, lapin::Consumer) {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
        .expect("a queue");
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .expect("consuming it");
    (queue.name().clone(), consumer)
}
