//! The messages warmer sends besides replies: events on `<prefix>.events`, and refill messages
//! (hints and fill commands) on `<prefix>.refill`.
//!
//! Every event is a variant of [`Event`], which knows its routing key and its JSON body; adding
//! an event is adding a variant. [`Events`] publishes them transient and unconfirmed, best
//! effort (a failure is logged, the caller carries on): they tell outside listeners what
//! happened, and nothing of warmer's depends on them. What the refill consumer must hear goes to
//! its queue as a [`RefillMessage`], persistent and confirmed: a hint when a pool may want VMs
//! (coalesced in Redis to one pending per pool), or a fill command.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use serde::Serialize;

use crate::amqp::{Publisher, json_properties};
use crate::clock::{now_ms, now_secs};
use crate::config::Secret;
use crate::names::Names;
use crate::pool::PoolName;

/// Something that happened, as published to `<prefix>.events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// `pool.dropped`: a VM was handed out (checkout, after its reply was confirmed).
    PoolDropped {
        pool: String,
        instance: String,
        zone: String,
    },
    /// `pool.empty`: a request found its pool empty (checkout).
    PoolEmpty { pool: String },
    /// `instance.returned`: a requester was gone; its VM went back to the head (checkout).
    InstanceReturned {
        pool: String,
        instance: String,
        reason: String,
    },
    /// `instance.orphaned`: a VM was recorded for deletion by checkout or refill.
    InstanceOrphaned {
        pool: String,
        instance: String,
        zone: Option<String>,
        reason: String,
    },
    /// `instance.booted`: a VM joined its pool (refill).
    InstanceBooted {
        pool: String,
        instance: String,
        zone: String,
        boot_ms: u64,
    },
    /// `boot.failed`: a boot failed (refill); `kind` is `quota`, `not_created` or `halfway`.
    BootFailed {
        pool: String,
        instance: String,
        kind: &'static str,
        error: String,
    },
    /// `instance.deleted`: a VM recorded in orphaned was deleted (refill, reconcile).
    InstanceDeleted {
        instance: String,
        zone: Option<String>,
        reason: String,
    },
    /// `instance.evicted`: a warmed VM was taken out of its pool for deletion (reconcile).
    InstanceEvicted {
        pool: String,
        instance: String,
        zone: String,
        reason: String,
    },
    /// `fleet.capped`: a boot `pool` wanted was not started because the fleet is at
    /// `WARMER_MAX_VMS` (`max`); said once until a reservation finds room again (refill).
    FleetCapped { pool: String, max: u32 },
    /// `brake.engaged`: unaccounted VMs exceed the threshold; boots stop (reconcile).
    BrakeEngaged { unaccounted: u64, threshold: u64 },
    /// `brake.released`: unaccounted VMs are back at or below the threshold (reconcile).
    BrakeReleased { unaccounted: u64 },
    /// `dyno.memory`: a watched dyno's memory, from Heroku's runtime metrics (watchdog).
    DynoMemory {
        dyno: String,
        process_type: String,
        size: f64,
        quota: Option<f64>,
        units: &'static str,
    },
    /// `dyno.restarted`: the watchdog restarted a dyno; `reason` is `memory` or `r14`.
    DynoRestarted { dyno: String, reason: &'static str },
    /// `rollover.started`: `to` boots to take over from `from` (`warmer pool rollover`).
    RolloverStarted { from: String, to: String },
    /// `rollover.completed`: `to` reached its target; `from` went to target 0 (reconcile).
    RolloverCompleted { from: String, to: String },
    /// `rollover.aborted`: `to` could not boot; it went to target 0, `from` is as it was
    /// (reconcile).
    RolloverAborted {
        from: String,
        to: String,
        reason: String,
    },
}

impl Event {
    /// The routing keys the refill queue was bound to before hints went to it directly: unbound
    /// when the topology is declared.
    pub const FORMER_REFILL_BINDINGS: [&'static str; 2] = ["pool.dropped", "pool.empty"];

    /// The routing key on `<prefix>.events`.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::PoolDropped { .. } => Self::FORMER_REFILL_BINDINGS[0],
            Event::PoolEmpty { .. } => Self::FORMER_REFILL_BINDINGS[1],
            Event::InstanceReturned { .. } => "instance.returned",
            Event::InstanceOrphaned { .. } => "instance.orphaned",
            Event::InstanceBooted { .. } => "instance.booted",
            Event::BootFailed { .. } => "boot.failed",
            Event::InstanceDeleted { .. } => "instance.deleted",
            Event::InstanceEvicted { .. } => "instance.evicted",
            Event::FleetCapped { .. } => "fleet.capped",
            Event::BrakeEngaged { .. } => "brake.engaged",
            Event::BrakeReleased { .. } => "brake.released",
            Event::DynoMemory { .. } => "dyno.memory",
            Event::DynoRestarted { .. } => "dyno.restarted",
            Event::RolloverStarted { .. } => "rollover.started",
            Event::RolloverCompleted { .. } => "rollover.completed",
            Event::RolloverAborted { .. } => "rollover.aborted",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Publishes events on the current broker session's channel, if there is one: transient and
/// without confirms, so an event costs the broker no disk write and the caller no round trip.
#[derive(Clone)]
pub struct Events {
    names: Names,
    channel: Arc<RwLock<Option<Channel>>>,
}

impl Events {
    /// No channel yet: events are dropped (logged at debug) until [`Self::attach`].
    pub fn new(names: Names) -> Self {
        Self {
            names,
            channel: Arc::default(),
        }
    }

    /// Publishes on `channel` (one without confirms) from now on.
    pub fn attach(&self, channel: Channel) {
        if let Ok(mut current) = self.channel.write() {
            *current = Some(channel);
        }
    }

    /// Stops publishing; returns the channel, to close it.
    pub fn detach(&self) -> Option<Channel> {
        self.channel.write().ok().and_then(|mut c| c.take())
    }

    /// Publishes `event`; a failure is logged, never returned.
    pub async fn emit(&self, event: Event) {
        let key = event.routing_key();
        let channel = self.channel.read().ok().and_then(|c| c.clone());
        let Some(channel) = channel else {
            // Whoever runs without a broker (a reconcile pass while RabbitMQ is away) says so.
            tracing::debug!(key, "no broker connection: event not published");
            return;
        };
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_timestamp(now_secs());
        let published = channel
            .basic_publish(
                self.names.events_exchange().as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                &event.body(),
                properties,
            )
            .await;
        if let Err(error) = published {
            tracing::warn!(%error, key, "event not published");
        }
    }
}

/// How long a fill command may wait in the refill queue: after that the reconciler has sent
/// another for any pool still short, so an old one is dead-lettered (as `expired`) unread.
pub const FILL_TTL: Duration = Duration::from_secs(600);

/// What the refill consumer reads from its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefillMessage {
    /// `{"pool":…}`: the pool may want VMs (a checkout took one, or found none). Coalesced: at
    /// most one is pending per pool (`<ns>:_hints`).
    Hint(PoolName),
    /// An operator's or the reconciler's fill command.
    Fill(FillCommand),
}

impl RefillMessage {
    /// The JSON body (a fill signed now, if it has a signer).
    pub fn body(&self) -> Vec<u8> {
        match self {
            RefillMessage::Hint(pool) => serde_json::json!({"pool": pool.to_string()})
                .to_string()
                .into_bytes(),
            RefillMessage::Fill(command) => command.body(now_ms()),
        }
    }

    /// Persistent JSON from the broker user `sender` (the `user_id` the broker vouches for);
    /// a fill expires after [`FILL_TTL`].
    pub fn properties(&self, sender: &str) -> BasicProperties {
        let properties = json_properties().with_user_id(sender.into());
        match self {
            RefillMessage::Hint(_) => properties,
            RefillMessage::Fill(_) => {
                properties.with_expiration(FILL_TTL.as_millis().to_string().as_str().into())
            }
        }
    }

    /// Publishes to the refill queue as the broker user `sender` (the publisher's connection's)
    /// and waits for the broker's confirm.
    pub async fn send(
        &self,
        publisher: &Publisher,
        names: &Names,
        sender: &str,
    ) -> anyhow::Result<()> {
        publisher
            .publish(
                "",
                &names.refill_queue(),
                &self.body(),
                self.properties(sender),
            )
            .await
    }
}

/// A fill command for the refill queue: `{"command":"fill"}` for every pool, with `"pool"` for
/// one. An operator's is signed with a token (`"issued_at"`, `"signature"`; see [`crate::auth`]):
/// the token itself is never in the message. `Debug` hides the signer.
#[derive(Clone, PartialEq, Eq)]
pub struct FillCommand {
    pub pool: Option<PoolName>,
    /// The operator token that signs it; `None` for warmer's own processes, whose broker user
    /// vouches for them.
    pub signer: Option<Secret>,
}

impl FillCommand {
    /// The JSON body, signed as issued at `now` (ms) if there is a signer.
    pub fn body(&self, now: u64) -> Vec<u8> {
        let mut command = serde_json::json!({"command": "fill"});
        if let Some(pool) = &self.pool {
            command["pool"] = pool.to_string().into();
        }
        if let Some(signature) = self
            .signer
            .as_ref()
            .and_then(|token| crate::auth::sign_fill(token, self.pool.as_ref(), now))
        {
            command["issued_at"] = now.into();
            command["signature"] = signature.into();
        }
        command.to_string().into_bytes()
    }
}

impl std::fmt::Debug for FillCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillCommand")
            .field("pool", &self.pool)
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_routing_key_and_a_flat_json_body() {
        let event = Event::PoolDropped {
            pool: "img:n1-standard-1".into(),
            instance: "vm".into(),
            zone: "z".into(),
        };
        assert_eq!(event.routing_key(), "pool.dropped");
        let body: serde_json::Value = serde_json::from_slice(&event.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"pool": "img:n1-standard-1", "instance": "vm", "zone": "z"})
        );
        let deleted = Event::InstanceDeleted {
            instance: "vm".into(),
            zone: None,
            reason: "surplus".into(),
        };
        assert_eq!(
            String::from_utf8(deleted.body()).unwrap(),
            r#"{"instance":"vm","zone":null,"reason":"surplus"}"#
        );
    }

    #[test]
    fn a_signed_fill_reads_as_the_refill_consumer_expects_and_never_holds_its_token() {
        let token = Secret::new("s3cret");
        let command = FillCommand {
            pool: Some("img:n1-standard-1".parse().unwrap()),
            signer: Some(token.clone()),
        };
        let now = 1_800_000_000_000;
        let body = command.body(now);
        let from = crate::refill::command::From::Other;
        let parsed = crate::refill::command::parse(&body, &[token], from, now);
        assert_eq!(
            parsed,
            Ok(crate::refill::command::Work::Pool(
                "img:n1-standard-1".parse().unwrap()
            ))
        );
        assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
        assert!(!format!("{command:?}").contains("s3cret"));
        let all = FillCommand {
            pool: None,
            signer: None,
        };
        assert_eq!(all.body(now), br#"{"command":"fill"}"#);
    }
}
