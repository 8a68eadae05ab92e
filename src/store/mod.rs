//! Redis: the one owner of warmer's data layout and record formats. Nothing outside this
//! module issues a Redis command.
//!
//! | key (`<ns>` = `WARMER_REDIS_NAMESPACE`) | type | held by | meaning |
//! |---|---|---|---|
//! | `<ns>:poolconfigs` | hash | [`pools`] | pool → target (legacy, decimal string) |
//! | `<ns>:<pool>` | list | [`pools`] | warmed VMs as [`PoolEntry`] JSON, oldest at the head (legacy) |
//! | `<ns>:orphaned` | list | [`orphans`] | [`OrphanRecord`]s: VMs to delete (legacy, `reason` added) |
//! | `<ns>:_deleting` | zset | [`orphans`] | records a deleter claimed → when the claim expires (ms) |
//! | `<ns>:_refused` | list | [`orphans`] | orphan records warmer refused to act on (a name that is not a Compute Engine name, a VM that is not this deployment's), with `refused` and `at`; the last 1,000 |
//! | `<ns>:_leases` | hash | [`leases`] | request identity → [`Lease`] |
//! | `<ns>:_lease_deadlines` | zset | [`leases`] | request identity → when its lease is swept (ms) |
//! | `<ns>:_lease_keys` | zset | [`leases`] | handed-out leases still holding the VM's SSH key → when it is removed (the request's deadline, ms) |
//! | `<ns>:_booting:<pool>` | zset | [`boots`] | VM name → when its boot reservation expires (ms) |
//! | `<ns>:_brake` | string | [`reconcile`] | present while the safety brake holds every boot: why ([`reconcile::BrakeState`] JSON) |
//! | `<ns>:_brake_released` | set | [`reconcile`] | unaccounted VMs an operator released the brake for, deleted by the next pass; expires after a day |
//! | `<ns>:_fleet_capped` | string | [`boots`] | present (the fleet's size) while `WARMER_MAX_VMS` holds boots back |
//! | `<ns>:_suspects` | set | [`reconcile`] | cloud VMs the last reconcile pass found unaccounted |
//! | `<ns>:_reconciler` | string | [`lock`] | owner of the active reconciler's lock |
//! | `<ns>:_hints` | zset | [`leases`] | pools whose refill hint is pending → when it was recorded (ms): at most one hint per pool in flight |
//! | `<ns>:_scratch` | list | [`pools`] | `evict.lua`'s scratch space, empty between its runs |
//! | `<ns>:_metrics` | hash | [`metrics`] | counters and histogram buckets of no pool in particular |
//! | `<ns>:_metrics:<pool>` | hash | [`metrics`] | the pool's counters (checkouts, boots, evictions) |
//! | `<ns>:_local_cloud` | hash | [`local_cloud`] | `WARMER_PROVIDER=local`: the simulated VMs |
//! | `<ns>:_policies` | hash | [`sizing`] | pool → its sizing policy (JSON) |
//! | `<ns>:_sizing` | hash | [`sizing`] | pool → the sizer's last decision (target, reason, when) |
//! | `<ns>:_demand:<day>:<pool>` | hash | [`sizing`] | the pool's hits (`h:<bucket>`) and misses (`m:<bucket>`) per 10 s of a UTC day; expires after 9 days |
//! | `<ns>:_boot_times:<pool>` | list | [`sizing`] | the pool's last 20 boot durations (ms); expires after 9 days |
//! | `<ns>:_rollovers` | hash | [`sizing`] | pool rolled from → its [`Rollover`] |
//! | `<ns>:_points:<resolution>:<pool>` | string | [`points`] | the pool's points, `<resolution>` `1m` (a point per minute for 48 h) or `10m` (per 10 minutes for 15 days): rings of 25-byte slots (139.5 KB per pool in Redis); expire 16 days after the last write |
//! | `<ns>:_events` | list | [`event_log`] | the events an operator must know (rollovers, the brake, the fleet cap, failed boots, restarted dynos) as JSON, newest first; the last 1,000 |
//! | `<ns>:_history` | list | [`changes`] | every change operators made ([`changes::HistoryEntry`] JSON), newest first; the last 10,000 |
//!
//! Key names are built by [`Names`]. Every step that must be atomic is a Lua script in
//! `scripts/`, loaded once behind `scripts/prelude.lua` (the orphan record, written once), whose
//! header states its keys, arguments and invariant; each answers with an enum here.
//!
//! Failures: `ConnectionManager` reconnects in the background and a command that hit a dropped
//! connection returns its error, so [`Store::call`] runs it once more (a server that closed an
//! idle connection, a failover); every command and script passed through it is safe to repeat.
//! Other errors go to the caller, which decides whether to retry.

pub mod boots;
pub mod changes;
pub mod error;
pub mod event_log;
pub mod leases;
pub mod local_cloud;
pub mod lock;
pub mod metrics;
pub mod orphans;
pub mod points;
pub mod pools;
pub mod reconcile;
pub mod records;
pub mod settler;
pub mod sizing;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ServerUrl;
use crate::names::Names;

pub use boots::{Capped, Finished};
pub use error::{Error, Result};
pub use leases::{Checkout, Delivery, Disposal, GiveBack, Settled, Swept, ToSettle};
pub use records::{Lease, LeaseState, Orphan, OrphanRecord, PoolEntry};
pub use settler::Settler;

/// Redis with warmer's layout.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    names: Names,
    scripts: &'static Scripts,
}

/// Every Lua script, each behind the shared prelude.
struct Scripts {
    checkout: redis::Script,
    settle: redis::Script,
    give_back: redis::Script,
    sweep_leases: redis::Script,
    delete_pool: redis::Script,
    reserve_boots: redis::Script,
    finish_boot: redis::Script,
    abandon_boot: redis::Script,
    trim_pool: redis::Script,
    evict: redis::Script,
    claim_orphans: redis::Script,
    reconcile_view: redis::Script,
    pool_heads: redis::Script,
    release_orphans: redis::Script,
    forget_orphan: redis::Script,
    refuse_orphan: redis::Script,
    forget_leases: redis::Script,
    lock: redis::Script,
    unlock: redis::Script,
    set_policy: redis::Script,
    size_pools: redis::Script,
    start_rollover: redis::Script,
    finish_rollover: redis::Script,
    postpone_rollovers: redis::Script,
    apply: redis::Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let script = |body: &str| {
            redis::Script::new(&format!("{}{body}", include_str!("scripts/prelude.lua")))
        };
        Scripts {
            checkout: script(include_str!("scripts/checkout.lua")),
            settle: script(include_str!("scripts/settle.lua")),
            give_back: script(include_str!("scripts/give_back.lua")),
            sweep_leases: script(include_str!("scripts/sweep_leases.lua")),
            delete_pool: script(include_str!("scripts/delete_pool.lua")),
            reserve_boots: script(include_str!("scripts/reserve_boots.lua")),
            finish_boot: script(include_str!("scripts/finish_boot.lua")),
            abandon_boot: script(include_str!("scripts/abandon_boot.lua")),
            trim_pool: script(include_str!("scripts/trim_pool.lua")),
            evict: script(include_str!("scripts/evict.lua")),
            claim_orphans: script(include_str!("scripts/claim_orphans.lua")),
            reconcile_view: script(include_str!("scripts/reconcile_view.lua")),
            pool_heads: script(include_str!("scripts/pool_heads.lua")),
            release_orphans: script(include_str!("scripts/release_orphans.lua")),
            forget_orphan: script(include_str!("scripts/forget_orphan.lua")),
            refuse_orphan: script(include_str!("scripts/refuse_orphan.lua")),
            forget_leases: script(include_str!("scripts/forget_leases.lua")),
            lock: script(include_str!("scripts/lock.lua")),
            unlock: script(include_str!("scripts/unlock.lua")),
            set_policy: script(include_str!("scripts/set_policy.lua")),
            size_pools: script(include_str!("scripts/size_pools.lua")),
            start_rollover: script(include_str!("scripts/start_rollover.lua")),
            finish_rollover: script(include_str!("scripts/finish_rollover.lua")),
            postpone_rollovers: script(include_str!("scripts/postpone_rollovers.lua")),
            apply: script(include_str!("scripts/apply.lua")),
        }
    })
}

impl Store {
    /// Connects (waiting at most 10 s for the first connection); a `rediss://` server's
    /// certificate is verified against `ca_pem` (PEM certificates) if given, else against the
    /// usual roots (unless the URL ends in `#insecure`).
    pub async fn connect(
        url: &ServerUrl,
        ca_pem: Option<&[u8]>,
        names: Names,
    ) -> anyhow::Result<Self> {
        let (client, config) = client(url, ca_pem)?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to Redis at {url} timed out"))?
        .with_context(|| format!("connecting to Redis at {url}"))?;
        Ok(Self {
            conn,
            names,
            scripts: scripts(),
        })
    }

    /// As [`Self::connect`], but connecting on first use: for `warmer web`, which answers
    /// `/health` (503, naming Redis) while Redis is away.
    pub fn connect_lazily(
        url: &ServerUrl,
        ca_pem: Option<&[u8]>,
        names: Names,
    ) -> anyhow::Result<Self> {
        let (client, config) = client(url, ca_pem)?;
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .with_context(|| format!("setting up the connection to Redis at {url}"))?;
        Ok(Self {
            conn,
            names,
            scripts: scripts(),
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<()> {
        self.call(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await
    }

    /// Runs `command`, and once more if the connection had been dropped (a server-side idle
    /// close, a failover): the manager reconnects, and every command passed here is safe to
    /// repeat (each script is idempotent; see its header).
    async fn call<T, F, Fut>(&self, command: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match command(self.conn.clone()).await {
            Err(error) if error.is_connection_dropped() => {
                tracing::debug!(%error, "Redis connection dropped; trying once more");
                Ok(command(self.conn.clone()).await?)
            }
            result => Ok(result?),
        }
    }

    /// Runs a script (see [`Self::call`]).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }
}

/// Runs `step` — a store call, safe to repeat — again while Redis is unavailable, each try's
/// wait for an answer included, all within `budget`: so a Redis that stalls gets the caller an
/// answer (an error) in time. For a request whose requester waits.
pub async fn within<T, F, Fut>(budget: Duration, step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    use backon::Retryable;
    let tries = step
        .retry(crate::retry::redis(budget))
        .when(Error::is_unavailable)
        .notify(|error, delay| tracing::warn!(%error, ?delay, "Redis unavailable; retrying"));
    tokio::time::timeout(budget, tries)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "Redis did not answer within {budget:?}"
            )))
        })
}

/// An error for a script that answered something this code does not know.
fn unexpected(script: &str, answer: impl std::fmt::Debug) -> Error {
    Error::Other(format!("{script}: unexpected answer {answer:?}"))
}

/// The client and connection settings for `url`; a `rediss://` server's certificate is
/// verified against `ca_pem` if given.
fn client(
    url: &ServerUrl,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<(redis::Client, ConnectionManagerConfig)> {
    let client = match ca_pem {
        None => redis::Client::open(url.expose()),
        Some(ca) => redis::Client::build_with_tls(
            url.expose(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
    }
    .with_context(|| format!("WARMER_REDIS_URL {url} is not a valid Redis URL"))?;
    let config = ConnectionManagerConfig::new()
        // The default 500 ms response timeout fails slow scripts on a busy server.
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok((client, config))
}

/// A Redis value read as `T`, or why it could not be.
fn read<T: redis::FromRedisValue>(value: redis::Value) -> Result<T> {
    redis::from_redis_value(value).map_err(|e| Error::Other(format!("an answer: {e}")))
}

#[cfg(test)]
mod tests {
    /// Every key `names.rs` builds, as the table above writes it (`<ns>:` then the rest, a
    /// `{…}` in the format string as `<…>`, a key prefix followed by `<pool>`).
    fn keys_built_in_names_rs() -> Vec<String> {
        let source = include_str!("../names.rs");
        let mut keys = Vec::new();
        for format in source.split("format!(\"").skip(1) {
            let Some(format) = format.split('"').next() else {
                continue;
            };
            // Queue names are `{prefix}.…`; a key built from another key prefix is that prefix's.
            let Some(rest) = format.strip_prefix("{}:") else {
                continue;
            };
            let mut key = format!("<ns>:{rest}").replace("{}", "<pool>");
            for part in ["day", "pool", "resolution"] {
                key = key.replace(&format!("{{{part}}}"), &format!("<{part}>"));
            }
            if key.ends_with(':') {
                key.push_str("<pool>");
            }
            keys.push(key);
        }
        keys
    }

    #[test]
    fn every_key_names_rs_builds_is_in_the_key_table() {
        let table = include_str!("mod.rs");
        let keys = keys_built_in_names_rs();
        assert!(keys.len() > 20, "{keys:?}");
        for key in keys {
            assert!(
                table.contains(&format!("//! | `{key}` |")),
                "{key} is built in names.rs but missing from store/mod.rs's key table"
            );
        }
    }
}
