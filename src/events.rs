//! The events warmer publishes on `<prefix>.events`.
//!
//! Every event is a variant of [`Event`], which knows its routing key and its JSON body; adding
//! an event is adding a variant. [`Events`] publishes them transient and unconfirmed, best
//! effort (a failure is logged, the caller carries on): they tell outside listeners what
//! happened, and nothing of warmer's depends on them. What the refill consumer must hear goes to
//! its queue instead (`refill_message.rs`).

use std::sync::{Arc, RwLock};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use serde::Serialize;

use crate::clock::now_secs;
use crate::names::Names;

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

    /// Whether it is kept in the bounded log of what an operator must know (`<ns>:_events`):
    /// rollovers, the brake, the fleet cap, failed boots, restarted dynos.
    pub fn is_notable(&self) -> bool {
        matches!(
            self,
            Event::BootFailed { .. }
                | Event::FleetCapped { .. }
                | Event::BrakeEngaged { .. }
                | Event::BrakeReleased { .. }
                | Event::DynoRestarted { .. }
                | Event::RolloverStarted { .. }
                | Event::RolloverCompleted { .. }
                | Event::RolloverAborted { .. }
        )
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
    /// Where notable events are kept too, whether or not a broker takes them.
    log: Option<Log>,
}

/// Keeps a notable event (its routing key and JSON body) in the store's bounded log; called
/// without waiting for it.
pub type Log = Arc<dyn Fn(&'static str, Vec<u8>) + Send + Sync>;

impl Events {
    /// No channel yet: events are dropped (logged at debug) until [`Self::attach`].
    pub fn new(names: Names) -> Self {
        Self {
            names,
            channel: Arc::default(),
            log: None,
        }
    }

    /// Keeps notable events in `log` as well.
    pub fn with_log(mut self, log: Log) -> Self {
        self.log = Some(log);
        self
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
        if let Some(log) = self.log.as_ref().filter(|_| event.is_notable()) {
            log(key, event.body());
        }
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
}
