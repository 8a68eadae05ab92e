//! The messages warmer sends besides replies: events on `<prefix>.events` and the fill command.
//!
//! Every event is a variant of [`Event`], which knows its routing key and its JSON body; adding
//! an event is adding a variant. [`Events`] publishes them best effort (a failure is logged, the
//! caller carries on): events tell outside listeners what happened, and the refill queue's only
//! bound events (`pool.dropped`, `pool.empty`) are hints that the reconciler backs up.

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::amqp::{Publisher, json_properties};
use crate::names::Names;
use crate::pool::PoolName;
use crate::store::now_ms;

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
    /// `brake.engaged`: unaccounted VMs exceed the threshold; boots stop (reconcile).
    BrakeEngaged { unaccounted: u64, threshold: u64 },
    /// `brake.released`: unaccounted VMs are back at or below the threshold (reconcile).
    BrakeReleased { unaccounted: u64 },
}

impl Event {
    /// The events the refill queue is bound to: hints that a pool may need VMs.
    pub const REFILL_HINTS: [&'static str; 2] = ["pool.dropped", "pool.empty"];

    /// The routing key on `<prefix>.events`.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::PoolDropped { .. } => Self::REFILL_HINTS[0],
            Event::PoolEmpty { .. } => Self::REFILL_HINTS[1],
            Event::InstanceReturned { .. } => "instance.returned",
            Event::InstanceOrphaned { .. } => "instance.orphaned",
            Event::InstanceBooted { .. } => "instance.booted",
            Event::BootFailed { .. } => "boot.failed",
            Event::InstanceDeleted { .. } => "instance.deleted",
            Event::InstanceEvicted { .. } => "instance.evicted",
            Event::BrakeEngaged { .. } => "brake.engaged",
            Event::BrakeReleased { .. } => "brake.released",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Publishes events through the current broker session's publisher, if there is one.
#[derive(Clone)]
pub struct Events {
    names: Names,
    publisher: Arc<RwLock<Option<Publisher>>>,
}

impl Events {
    /// No publisher yet: events are dropped (and logged) until [`Self::attach`].
    pub fn new(names: Names) -> Self {
        Self {
            names,
            publisher: Arc::default(),
        }
    }

    /// Publishes through `publisher` from now on.
    pub fn attach(&self, publisher: Publisher) {
        if let Ok(mut current) = self.publisher.write() {
            *current = Some(publisher);
        }
    }

    /// Stops publishing; returns the publisher, to close its channel.
    pub fn detach(&self) -> Option<Publisher> {
        self.publisher.write().ok().and_then(|mut p| p.take())
    }

    /// Publishes `event`; a failure is logged, never returned.
    pub async fn emit(&self, event: Event) {
        let key = event.routing_key();
        let publisher = self.publisher.read().ok().and_then(|p| p.clone());
        let Some(publisher) = publisher else {
            // Whoever runs without a broker (a reconcile pass while RabbitMQ is away) says so.
            tracing::debug!(key, "no broker connection: event not published");
            return;
        };
        let properties = json_properties().with_timestamp(now_ms() / 1000);
        let exchange = self.names.events_exchange();
        if let Err(error) = publisher
            .publish(&exchange, key, &event.body(), properties)
            .await
        {
            tracing::warn!(error = %crate::telemetry::report(&error), key, "event not published");
        }
    }
}

/// An operator's fill command for the refill queue: `{"command":"fill"}` for every pool, with
/// `"pool"` for one, with `"token"` when `WARMER_AUTH_TOKENS` is set. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct FillCommand {
    pub pool: Option<PoolName>,
    pub token: Option<String>,
}

impl FillCommand {
    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let mut command = serde_json::json!({"command": "fill"});
        if let Some(pool) = &self.pool {
            command["pool"] = pool.to_string().into();
        }
        if let Some(token) = &self.token {
            command["token"] = token.as_str().into();
        }
        command.to_string().into_bytes()
    }
}

impl std::fmt::Debug for FillCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillCommand")
            .field("pool", &self.pool)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
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
    fn a_fill_command_reads_as_the_refill_consumer_expects_and_hides_its_token() {
        let command = FillCommand {
            pool: Some("img:n1-standard-1".parse().unwrap()),
            token: Some("s3cret".into()),
        };
        let parsed =
            crate::refill::command::parse(&command.body(), &[crate::config::Secret::new("s3cret")]);
        assert_eq!(
            parsed,
            Ok(crate::refill::command::Work::Pool(
                "img:n1-standard-1".parse().unwrap()
            ))
        );
        assert!(!format!("{command:?}").contains("s3cret"));
        let all = FillCommand {
            pool: None,
            token: None,
        };
        assert_eq!(all.body(), br#"{"command":"fill"}"#);
    }
}
