//! Redis: pools, targets, leases and orphans (SPEC §2), the one client every process uses.
//!
//! Each step that must be atomic is a Lua script in `src/scripts/`, whose header states its keys,
//! arguments and invariant. `ConnectionManager` reconnects in the background; a command that hit
//! a dropped connection returns its error and the caller decides whether to retry (every script
//! here is idempotent per request identity, so retrying is safe).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ServerUrl;
use crate::names::Names;
use crate::pool::{PoolEntry, PoolName};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What [`Store::checkout`] found for a request.
#[derive(Debug, PartialEq)]
pub enum Checkout {
    /// A VM was taken from the pool for this request (raw pool entry).
    Popped(String),
    /// This request already holds a lease (a redelivery): the same VM again.
    Leased(String),
    /// This request's lease was pending past its deadline: the VM was recorded for deletion.
    Orphaned(String),
    /// The request's deadline has passed; nothing was taken.
    Expired,
    NoPool,
    Empty,
}

/// Where a pending lease's VM should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Back to the head of its pool: its reply provably reached nobody.
    Head,
    /// To orphaned, for this reason: it must not be handed out again.
    Orphan(&'static str),
}

/// Where a given-back VM went.
#[derive(Debug, PartialEq)]
pub enum GiveBack {
    Head,
    /// Recorded in orphaned, for this reason.
    Orphaned(String),
    NothingPending,
}

/// One pool's state for `warmer status`.
#[derive(Debug)]
pub struct PoolStatus {
    pub pool: String,
    pub target: String,
    pub ready: u64,
    pub booting: u64,
    pub handed_out: u64,
    pub oldest: Option<PoolEntry>,
}

/// What [`Store::reserve_boots`] found and took.
#[derive(Debug, PartialEq)]
pub struct Reservation {
    /// `None` when the pool does not exist.
    pub target: Option<u64>,
    pub ready: u64,
    pub booting: u64,
    pub braked: bool,
    /// Names whose boot slots were reserved.
    pub names: Vec<String>,
}

/// A VM recorded in `orphaned`, as stored (`raw`) and as read.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub raw: String,
    pub name: Option<String>,
    pub zone: Option<String>,
    pub reason: String,
}

impl Orphan {
    /// Reads a record: `{"name","zone"}` (legacy) or with a `reason`.
    pub fn parse(raw: String) -> Self {
        let value: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
        let text = |field: &str| value[field].as_str().map(String::from);
        Orphan {
            name: text("name"),
            zone: text("zone"),
            reason: text("reason").unwrap_or_else(|| "orphaned".into()),
            raw,
        }
    }
}

/// Redis with warmer's layout.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    names: Names,
    scripts: &'static Scripts,
}

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
    lock: redis::Script,
    unlock: redis::Script,
    evict: redis::Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        checkout: redis::Script::new(include_str!("scripts/checkout.lua")),
        settle: redis::Script::new(include_str!("scripts/settle.lua")),
        give_back: redis::Script::new(include_str!("scripts/give_back.lua")),
        sweep_leases: redis::Script::new(include_str!("scripts/sweep_leases.lua")),
        delete_pool: redis::Script::new(include_str!("scripts/delete_pool.lua")),
        reserve_boots: redis::Script::new(include_str!("scripts/reserve_boots.lua")),
        finish_boot: redis::Script::new(include_str!("scripts/finish_boot.lua")),
        abandon_boot: redis::Script::new(include_str!("scripts/abandon_boot.lua")),
        trim_pool: redis::Script::new(include_str!("scripts/trim_pool.lua")),
        lock: redis::Script::new(include_str!("scripts/lock.lua")),
        unlock: redis::Script::new(include_str!("scripts/unlock.lua")),
        evict: redis::Script::new(include_str!("scripts/evict.lua")),
    })
}

impl Store {
    /// Connects (waiting at most 10 s for the first connection).
    pub async fn connect(url: &ServerUrl, names: Names) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose())
            .with_context(|| format!("WARMER_REDIS_URL {url} is not a valid Redis URL"))?;
        let config = ConnectionManagerConfig::new()
            // The default 500 ms response timeout fails slow scripts on a busy server.
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
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

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Runs `command`, and once more if the connection had been dropped (a server-side idle
    /// close, a failover): the manager reconnects, and every command passed here is safe to
    /// repeat (each script is idempotent; see its header).
    async fn call<T, F, Fut>(&self, command: F) -> redis::RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match command(self.conn.clone()).await {
            Err(error) if error.is_connection_dropped() => {
                tracing::debug!(%error, "Redis connection dropped; trying once more");
                command(self.conn.clone()).await
            }
            result => result,
        }
    }

    /// Runs a script (see [`Self::call`]).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        self.call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// A connection for commands the store does not wrap (tests, status).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Takes the oldest VM of `pool` for the request `identity` (see `checkout.lua`).
    pub async fn checkout(
        &self,
        identity: &str,
        pool: &PoolName,
        now: u64,
        deadline: u64,
        give_up_at: u64,
    ) -> redis::RedisResult<Checkout> {
        let n = &self.names;
        let mut invocation = self.scripts.checkout.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.leases())
            .key(n.lease_deadlines())
            .key(n.orphaned())
            .arg(identity)
            .arg(pool.to_string())
            .arg(now)
            .arg(deadline)
            .arg(give_up_at);
        let reply: Vec<String> = self.invoke(&invocation).await?;
        let mut reply = reply.into_iter();
        let outcome = reply.next().unwrap_or_default();
        let entry = reply.next();
        Ok(match (outcome.as_str(), entry) {
            ("popped", Some(e)) => Checkout::Popped(e),
            ("lease", Some(e)) => Checkout::Leased(e),
            ("orphaned", Some(e)) => Checkout::Orphaned(e),
            ("expired", _) => Checkout::Expired,
            ("no_pool", _) => Checkout::NoPool,
            ("empty", _) => Checkout::Empty,
            (other, _) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "unexpected reply from checkout.lua",
                    other.to_string(),
                )));
            }
        })
    }

    /// Marks a lease handed out; returns false when the lease was already swept.
    pub async fn settle(&self, identity: &str, keep_until: u64) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.settle.prepare_invoke();
        invocation
            .key(self.names.leases())
            .key(self.names.lease_deadlines())
            .arg(identity)
            .arg(now_ms())
            .arg(keep_until);
        let settled: i64 = self.invoke(&invocation).await?;
        Ok(settled != 0)
    }

    /// Returns a pending lease's VM to the head of its pool, or records it as an orphan (see
    /// `give_back.lua`). Also returns the VM's name.
    pub async fn give_back(
        &self,
        identity: &str,
        pool: &PoolName,
        disposal: Disposal,
    ) -> redis::RedisResult<(GiveBack, String)> {
        let n = &self.names;
        let mut invocation = self.scripts.give_back.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.leases())
            .key(n.lease_deadlines())
            .key(n.orphaned())
            .key(n.booting(pool))
            .arg(identity)
            .arg(pool.to_string())
            .arg(match disposal {
                Disposal::Head => "head",
                Disposal::Orphan(reason) => reason,
            });
        let reply: Vec<String> = self.invoke(&invocation).await?;
        let mut reply = reply.into_iter();
        let (outcome, entry, reason) = (reply.next(), reply.next(), reply.next());
        let outcome = match outcome.as_deref() {
            Some("head") => GiveBack::Head,
            Some("orphaned") => GiveBack::Orphaned(reason.unwrap_or_default()),
            _ => GiveBack::NothingPending,
        };
        let name = entry
            .map(|e| serde_json::from_str::<PoolEntry>(&e).map_or(e, |vm| vm.name))
            .unwrap_or_default();
        Ok((outcome, name))
    }

    /// Turns leases whose time is up into orphans; returns (pending, handed) counts.
    pub async fn sweep_leases(&self, now: u64) -> redis::RedisResult<(u64, u64)> {
        let (mut pending, mut handed) = (0, 0);
        loop {
            let mut invocation = self.scripts.sweep_leases.prepare_invoke();
            invocation
                .key(self.names.leases())
                .key(self.names.lease_deadlines())
                .key(self.names.orphaned())
                .arg(now)
                .arg(100);
            let (p, h): (u64, u64) = self.invoke(&invocation).await?;
            pending += p;
            handed += h;
            if p + h < 100 {
                return Ok((pending, handed));
            }
        }
    }

    /// Pool name → target, as stored (legacy values are decimal strings).
    pub async fn targets(&self) -> redis::RedisResult<BTreeMap<String, String>> {
        let key = &self.names.pool_configs();
        self.call(|mut conn| async move { conn.hgetall(key).await })
            .await
    }

    /// Sets a pool's target (creating the pool).
    pub async fn set_target(&self, pool: &PoolName, target: u32) -> redis::RedisResult<()> {
        let (key, pool) = (&self.names.pool_configs(), &pool.to_string());
        self.call(|mut conn| async move { conn.hset(key, pool, target).await })
            .await
    }

    /// Deletes a pool; its warmed VMs are recorded as orphans. `None` if it did not exist. Not
    /// repeated on a dropped connection: a second run would report the pool as missing.
    pub async fn delete_pool(&self, pool: &PoolName) -> redis::RedisResult<Option<u64>> {
        let moved: i64 = self
            .scripts
            .delete_pool
            .key(self.names.pool_configs())
            .key(self.names.pool(pool))
            .key(self.names.orphaned())
            .arg(pool.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(u64::try_from(moved).ok())
    }

    /// Target, ready and booting counts and the oldest entry of every pool (handed-out counts
    /// left at 0), and whether the safety brake is on: a few hundred bytes per pool, cheap enough
    /// for a loop.
    pub async fn levels(&self) -> anyhow::Result<(Vec<PoolStatus>, bool)> {
        let targets = self.targets().await.context("reading pool targets")?;
        let mut pipe = redis::pipe();
        for pool in targets.keys() {
            let key = format!("{}{}", self.names.pool_key_prefix(), pool);
            pipe.llen(&key).lindex(&key, 0);
            pipe.zcount(
                format!("{}{pool}", self.names.booting_key_prefix()),
                now_ms(),
                "+inf",
            );
        }
        // An empty pipeline is refused by the client.
        let rows: Vec<(u64, Option<String>, u64)> = if targets.is_empty() {
            Vec::new()
        } else {
            let pipe = &pipe;
            self.call(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await
                .context("reading pools")?
        };
        let brake = &self.names.brake();
        let brake: bool = self
            .call(|mut conn| async move { conn.exists(brake).await })
            .await
            .context("reading the brake")?;
        let pools = targets
            .into_iter()
            .zip(rows)
            .map(|((pool, target), (ready, oldest, booting))| PoolStatus {
                handed_out: 0,
                pool,
                target,
                ready,
                booting,
                oldest: oldest.and_then(|e| serde_json::from_str(&e).ok()),
            })
            .collect();
        Ok((pools, brake))
    }

    /// [`Self::levels`] with handed-out counts. These need every lease, each holding its VM's
    /// entry (about 2 kB), so this is for `warmer status` and `/metrics`, not for tight loops.
    pub async fn status(&self) -> anyhow::Result<(Vec<PoolStatus>, bool)> {
        let (mut pools, brake) = self.levels().await?;
        let key = &self.names.leases();
        let leases: BTreeMap<String, String> = self
            .call(|mut conn| async move { conn.hgetall(key).await })
            .await
            .context("reading leases")?;
        let mut handed: BTreeMap<String, u64> = BTreeMap::new();
        for lease in leases.values() {
            let lease: serde_json::Value = serde_json::from_str(lease).unwrap_or_default();
            if lease["state"] == "handed"
                && let Some(pool) = lease["pool"].as_str()
            {
                *handed.entry(pool.to_string()).or_default() += 1;
            }
        }
        for pool in &mut pools {
            pool.handed_out = handed.get(&pool.pool).copied().unwrap_or(0);
        }
        Ok((pools, brake))
    }

    /// Reserves up to `names.len()` boot slots for `pool` (see `reserve_boots.lua`).
    pub async fn reserve_boots(
        &self,
        pool: &PoolName,
        names: &[String],
        expires_at: u64,
    ) -> redis::RedisResult<Reservation> {
        let n = &self.names;
        let mut invocation = self.scripts.reserve_boots.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.booting(pool))
            .key(n.orphaned())
            .key(n.brake())
            .arg(pool.to_string())
            .arg(now_ms())
            .arg(expires_at);
        for name in names {
            invocation.arg(name);
        }
        let reply: Vec<redis::Value> = self.invoke(&invocation).await?;
        let number = |i: usize| -> i64 {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                .unwrap_or(0)
        };
        Ok(Reservation {
            target: u64::try_from(number(0)).ok(),
            ready: number(1).max(0) as u64,
            booting: number(2).max(0) as u64,
            braked: number(3) == 1,
            names: reply
                .iter()
                .skip(4)
                .filter_map(|v| redis::from_redis_value_ref::<String>(v).ok())
                .collect(),
        })
    }

    /// Pushes a booted VM into its pool and frees its slot; returns "ready" or why it was
    /// recorded as an orphan instead (see `finish_boot.lua`).
    pub async fn finish_boot(&self, pool: &PoolName, entry: &PoolEntry) -> anyhow::Result<String> {
        let n = &self.names;
        let mut invocation = self.scripts.finish_boot.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.booting(pool))
            .key(n.orphaned())
            .arg(pool.to_string())
            .arg(&entry.name)
            .arg(serde_json::to_string(entry)?)
            .arg(&entry.zone)
            .arg(now_ms());
        Ok(self.invoke(&invocation).await?)
    }

    /// Frees a failed boot's slot; with a `reason`, its VM may exist and is recorded as an
    /// orphan.
    pub async fn abandon_boot(
        &self,
        pool: &PoolName,
        name: &str,
        zone: Option<&str>,
        reason: Option<&str>,
    ) -> redis::RedisResult<()> {
        let mut invocation = self.scripts.abandon_boot.prepare_invoke();
        invocation
            .key(self.names.booting(pool))
            .key(self.names.orphaned())
            .arg(name)
            .arg(zone.unwrap_or(""))
            .arg(reason.unwrap_or(""));
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Moves a pool's surplus warmed VMs to orphaned; returns how many.
    pub async fn trim_pool(&self, pool: &PoolName) -> redis::RedisResult<u64> {
        let n = &self.names;
        let mut invocation = self.scripts.trim_pool.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.booting(pool))
            .key(n.orphaned())
            .arg(pool.to_string());
        self.invoke(&invocation).await
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        self.call(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await
    }

    /// How many VMs wait in `orphaned` for deletion.
    pub async fn orphan_count(&self) -> redis::RedisResult<u64> {
        let key = &self.names.orphaned();
        self.call(|mut conn| async move { conn.llen(key).await })
            .await
    }

    /// The first `limit` entries of `orphaned`.
    pub async fn orphans(&self, limit: isize) -> redis::RedisResult<Vec<Orphan>> {
        let key = &self.names.orphaned();
        let raw: Vec<String> = self
            .call(|mut conn| async move { conn.lrange(key, 0, limit - 1).await })
            .await?;
        Ok(raw.into_iter().map(Orphan::parse).collect())
    }

    /// Removes one orphan record once its VM is deleted.
    pub async fn forget_orphan(&self, orphan: &Orphan) -> redis::RedisResult<()> {
        let (key, raw) = (&self.names.orphaned(), &orphan.raw);
        let _: i64 = self
            .call(|mut conn| async move { conn.lrem(key, 1, raw).await })
            .await?;
        Ok(())
    }

    /// Takes or renews the reconciler lock for `owner`; true while `owner` holds it.
    pub async fn lock(&self, owner: &str, ttl: Duration) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.lock.prepare_invoke();
        invocation
            .key(self.names.reconciler_lock())
            .arg(owner)
            .arg(ttl.as_millis() as u64);
        let held: i64 = self.invoke(&invocation).await?;
        Ok(held == 1)
    }

    /// Releases the reconciler lock if `owner` holds it.
    pub async fn unlock(&self, owner: &str) -> redis::RedisResult<()> {
        let mut invocation = self.scripts.unlock.prepare_invoke();
        invocation.key(self.names.reconciler_lock()).arg(owner);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Moves one pool entry to orphaned (see `evict.lua`); false if it was no longer there.
    pub async fn evict(
        &self,
        pool_key: &str,
        raw: &str,
        name: &str,
        zone: &str,
        reason: &str,
    ) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.evict.prepare_invoke();
        invocation
            .key(pool_key)
            .key(self.names.orphaned())
            .arg(raw)
            .arg(name)
            .arg(zone)
            .arg(reason);
        let evicted: i64 = self.invoke(&invocation).await?;
        Ok(evicted == 1)
    }
}
