//! The one place that builds every AMQP name and Redis key (docs/protocol.md).
//!
//! Everything is derived from `WARMER_AMQP_PREFIX` and `WARMER_REDIS_NAMESPACE`, so a test (or a
//! second deployment on the same servers) isolates itself by choosing other values. Keys that
//! warmer adds to the legacy layout start with `_` after the namespace: a pool name is
//! `<image>:<machine_type>[:public]` made of GCE names, which never start with `_`, so these keys
//! cannot collide with a pool's list.

use crate::pool::PoolName;

/// Queue, exchange and key names of one deployment.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    namespace: String,
}

impl Names {
    pub fn new(amqp_prefix: &str, redis_namespace: &str) -> Self {
        Self {
            prefix: amqp_prefix.to_string(),
            namespace: redis_namespace.to_string(),
        }
    }

    /// The AMQP prefix (also used to name connections).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    // --- AMQP -------------------------------------------------------------------------------

    /// Durable quorum queue of checkout requests.
    pub fn checkout_queue(&self) -> String {
        format!("{}.checkout", self.prefix)
    }

    /// Durable topic exchange of everything that happened.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Durable quorum queue of refill work (events and fill commands).
    pub fn refill_queue(&self) -> String {
        format!("{}.refill", self.prefix)
    }

    /// Durable queue where requests and commands that cannot be processed are kept.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    // --- Redis (legacy travis-ci/warmer keys) -----------------------------------------------

    /// Hash: pool name → target size.
    pub fn pool_configs(&self) -> String {
        format!("{}:poolconfigs", self.namespace)
    }

    /// List: warmed VMs of a pool, oldest at the head.
    pub fn pool(&self, pool: &PoolName) -> String {
        format!("{}:{}", self.namespace, pool)
    }

    /// The prefix of every pool list; a pool's key is this followed by its name.
    pub fn pool_key_prefix(&self) -> String {
        format!("{}:", self.namespace)
    }

    /// List: `{"name","zone"}` of VMs to delete.
    pub fn orphaned(&self) -> String {
        format!("{}:orphaned", self.namespace)
    }

    // --- Redis (warmer's own keys) ----------------------------------------------------------

    /// List: scratch space of `evict.lua`, empty between its runs.
    pub fn scratch(&self) -> String {
        format!("{}:_scratch", self.namespace)
    }

    /// Sorted set: orphan records a deleter has claimed → when the claim expires (ms).
    pub fn deleting(&self) -> String {
        format!("{}:_deleting", self.namespace)
    }

    /// List: orphan records refused (an invalid name, a VM that is not this deployment's).
    pub fn refused(&self) -> String {
        format!("{}:_refused", self.namespace)
    }

    /// Hash: request identity → lease (the VM popped for it, pending or handed out).
    pub fn leases(&self) -> String {
        format!("{}:_leases", self.namespace)
    }

    /// Sorted set: request identity → when its lease must be looked at again (ms since epoch).
    pub fn lease_deadlines(&self) -> String {
        format!("{}:_lease_deadlines", self.namespace)
    }

    /// Sorted set: handed-out leases whose entry still holds the VM's SSH key → when the key
    /// leaves Redis (the request's deadline, ms).
    pub fn lease_keys(&self) -> String {
        format!("{}:_lease_keys", self.namespace)
    }

    /// Sorted set: names of the pool's VMs being booted → when the reservation expires (ms).
    pub fn booting(&self, pool: &PoolName) -> String {
        format!("{}{}", self.booting_key_prefix(), pool)
    }

    /// The prefix of every pool's boot reservations; a pool's key is this followed by its name.
    pub fn booting_key_prefix(&self) -> String {
        format!("{}:_booting:", self.namespace)
    }

    /// String: present while the safety brake holds every boot.
    pub fn brake(&self) -> String {
        format!("{}:_brake", self.namespace)
    }

    /// Set: unaccounted VMs an operator released the safety brake for (`warmer brake release`),
    /// deleted by the next pass unless accounted for; expires after a day.
    pub fn brake_released(&self) -> String {
        format!("{}:_brake_released", self.namespace)
    }

    /// String: present (the fleet's size) while the fleet cap holds boots back.
    pub fn fleet_capped(&self) -> String {
        format!("{}:_fleet_capped", self.namespace)
    }

    /// String: the owner id of the active reconciler (expires unless renewed).
    pub fn reconciler_lock(&self) -> String {
        format!("{}:_reconciler", self.namespace)
    }

    /// Sorted set: pools with a refill hint pending → when it was sent (ms).
    pub fn hints(&self) -> String {
        format!("{}:_hints", self.namespace)
    }

    /// Hash: counters and histogram buckets of no pool in particular (see `store::metrics`).
    pub fn metrics(&self) -> String {
        format!("{}:_metrics", self.namespace)
    }

    /// Hash: the pool's counters (see `store::metrics`).
    pub fn pool_metrics(&self, pool: &PoolName) -> String {
        format!("{}{}", self.pool_metrics_key_prefix(), pool)
    }

    /// The prefix of every pool's counters; a pool's key is this followed by its name.
    pub fn pool_metrics_key_prefix(&self) -> String {
        format!("{}:_metrics:", self.namespace)
    }

    /// Hash: the simulated cloud of `WARMER_PROVIDER=local`, VM name → its zone and labels.
    pub fn local_cloud(&self) -> String {
        format!("{}:_local_cloud", self.namespace)
    }

    /// Set: cloud VMs found unaccounted by the last reconcile pass (deleted if still so).
    pub fn suspects(&self) -> String {
        format!("{}:_suspects", self.namespace)
    }

    // --- Redis (sizing) ---------------------------------------------------------------------

    /// Hash: pool → its sizing policy (JSON, see `sizing::policy`).
    pub fn policies(&self) -> String {
        format!("{}:_policies", self.namespace)
    }

    /// Hash: pool → the sizer's last decision (JSON: target, reason, when).
    pub fn sizing(&self) -> String {
        format!("{}:_sizing", self.namespace)
    }

    /// Hash: the pool's arrivals on one UTC day (`day` = Unix seconds / 86400), per demand
    /// bucket: `h:<bucket>` checkouts that got a VM, `m:<bucket>` misses; expires after 9 days.
    pub fn demand(&self, day: u64, pool: &str) -> String {
        format!("{}:_demand:{day}:{pool}", self.namespace)
    }

    /// List: the pool's last boot durations (ms), newest first; expires after 9 days.
    pub fn boot_times(&self, pool: &str) -> String {
        format!("{}:_boot_times:{pool}", self.namespace)
    }

    /// String: the pool's points at one resolution (`1m`, `10m`), a ring of fixed-size slots.
    pub fn points(&self, resolution: &str, pool: &PoolName) -> String {
        format!("{}:_points:{resolution}:{pool}", self.namespace)
    }

    /// List: the events an operator must know (JSON), newest first; bounded.
    pub fn event_log(&self) -> String {
        format!("{}:_events", self.namespace)
    }

    /// List: every change operators made (JSON), newest first; bounded.
    pub fn history(&self) -> String {
        format!("{}:_history", self.namespace)
    }

    /// Hash: pool rolled from → its rollover (JSON, see `store::sizing::Rollover`).
    pub fn rollovers(&self) -> String {
        format!("{}:_rollovers", self.namespace)
    }
}
