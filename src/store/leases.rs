//! Leases (`<ns>:_leases`, `<ns>:_lease_deadlines`): the VM popped for a request, from the pop
//! to its handout, and the sweep of those whose time is up.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::{Lease, PoolEntry, Result, Store, unexpected};
use crate::demand;
use crate::metrics::{self, CheckoutOutcome, CheckoutOutcome::*};
use crate::pool::PoolName;

/// What [`Store::checkout`] found for a request (see `checkout.lua`).
#[derive(Debug, PartialEq)]
pub enum Checkout {
    /// A VM was taken from the pool for this request (its entry, as stored); `hint`: no refill
    /// hint was pending for the pool, one must be sent (see `checkout.lua`).
    Popped {
        entry: String,
        hint: bool,
    },
    /// This request already holds a lease (a redelivery): the same VM again.
    Leased(String),
    /// Another delivery reused this request's identity without being a redelivery: nothing
    /// was taken, nothing is sent.
    Replayed,
    /// A repeat of a request whose VM was handed out and whose deadline has passed: nothing is
    /// sent again.
    Late,
    /// This request's lease was pending past its deadline: the VM was recorded for deletion.
    Orphaned(String),
    /// The request's deadline has passed; nothing was taken.
    Expired,
    NoPool,
    /// The pool has no warmed VM; `hint` as for [`Checkout::Popped`].
    Empty {
        hint: bool,
    },
}

/// What [`Store::settle`] did (see `settle.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The lease is handed out now.
    Now,
    /// It already was (a repeated settle).
    Already,
    /// The lease is gone: it was swept before its reply was confirmed.
    Swept,
}

/// One delivery of a checkout request, as `checkout.lua` judges it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The request's identity (see `checkout::request::identity`).
    pub identity: &'a str,
    /// Unique per delivery: a retry of this delivery's own step finds its lease as its own.
    pub nonce: &'a str,
    /// The broker's flag: only a redelivery may be given a lease another delivery made.
    pub redelivered: bool,
    /// Now, the request's deadline, and when an unsettled lease is given up (ms).
    pub now: u64,
    pub deadline: u64,
    pub give_up_at: u64,
}

/// A lease whose reply the broker confirmed (see [`Store::settle`]).
#[derive(Debug, Clone)]
pub struct ToSettle {
    pub identity: String,
    pub pool: PoolName,
    /// When its handed-out record is swept (ms).
    pub keep_until: u64,
    /// The request's deadline (ms): no redelivery gets the VM after it, so its key leaves the
    /// lease then.
    pub deadline: u64,
    /// From the request's delivery to its reply's confirmation.
    pub wait: Duration,
}

/// Where a pending lease's VM should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Back to the head of its pool: its reply provably reached nobody.
    Head,
    /// To orphaned, for this reason: it must not be handed out again.
    Orphan(&'static str),
}

/// Where a given-back VM went (see `give_back.lua`).
#[derive(Debug, PartialEq)]
pub enum GiveBack {
    Head,
    /// Recorded in orphaned, for this reason.
    Orphaned(String),
    NothingPending,
}

/// What one [`Store::sweep_leases`] recorded for deletion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Leases still pending at their deadline.
    pub pending: u64,
    /// Handed-out leases past `WARMER_MAX_HANDOUT_AGE`.
    pub handed: u64,
    /// Handed-out leases past their request's deadline whose SSH key was removed.
    pub stripped: u64,
}

/// Leases swept per script call, so one call never blocks Redis for long.
const SWEEP_BATCH: u64 = 100;

impl Store {
    /// Takes the oldest VM of `pool` for one delivery of a request (see `checkout.lua`).
    pub async fn checkout(&self, delivery: Delivery<'_>, pool: &PoolName) -> Result<Checkout> {
        let n = &self.names;
        let now = delivery.now;
        let mut invocation = self.scripts.checkout.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.leases())
            .key(n.lease_deadlines())
            .key(n.orphaned())
            .key(n.hints())
            .key(n.pool_metrics(pool))
            .key(n.metrics())
            .key(n.demand(demand::day(now), &pool.to_string()))
            .arg(delivery.identity)
            .arg(pool.to_string())
            .arg(now)
            .arg(delivery.deadline)
            .arg(delivery.give_up_at)
            .arg(demand::bucket(now))
            .arg(delivery.nonce)
            .arg(u8::from(delivery.redelivered));
        for counted_here in [Unsettled, Expired, NoPool, PoolEmpty] {
            invocation.arg(counted_here.field());
        }
        let reply: Vec<String> = self.invoke(&invocation).await?;
        let mut reply = reply.into_iter();
        Ok(
            match (reply.next().as_deref(), reply.next(), reply.next()) {
                (Some("popped"), Some(entry), Some(hint)) => Checkout::Popped {
                    entry,
                    hint: hint == "1",
                },
                (Some("lease"), Some(e), _) => Checkout::Leased(e),
                (Some("replayed"), ..) => Checkout::Replayed,
                (Some("late"), ..) => Checkout::Late,
                (Some("orphaned"), Some(e), _) => Checkout::Orphaned(e),
                (Some("expired"), ..) => Checkout::Expired,
                (Some("no_pool"), ..) => Checkout::NoPool,
                (Some("empty"), Some(hint), _) => Checkout::Empty { hint: hint == "1" },
                (other, ..) => return Err(unexpected("checkout.lua", other)),
            },
        )
    }

    /// Marks leases handed out, each to be swept at its `keep_until`, and counts them with
    /// their checkout wait (see `settle.lua`): one call for a batch of requests.
    pub async fn settle(&self, leases: &[ToSettle]) -> Result<Vec<Settled>> {
        let mut invocation = self.scripts.settle.prepare_invoke();
        invocation
            .key(self.names.leases())
            .key(self.names.lease_deadlines())
            .key(self.names.metrics())
            .key(self.names.lease_keys())
            .arg(HandedOut.field())
            .arg(metrics::CHECKOUT_WAIT_SECONDS.key());
        // Each pool's metrics hash once, at its index in KEYS (Lua counts from 1; four before).
        let mut pools: Vec<&PoolName> = Vec::new();
        for lease in leases {
            let index = match pools.iter().position(|p| *p == &lease.pool) {
                Some(index) => index,
                None => {
                    invocation.key(self.names.pool_metrics(&lease.pool));
                    pools.push(&lease.pool);
                    pools.len() - 1
                }
            };
            invocation
                .arg(&lease.identity)
                .arg(lease.keep_until)
                .arg(index + 5)
                .arg(metrics::CHECKOUT_WAIT.index(lease.wait))
                .arg(lease.wait.as_millis() as u64)
                .arg(lease.deadline);
        }
        let answers: Vec<i64> = self.invoke(&invocation).await?;
        if answers.len() != leases.len() {
            return Err(unexpected("settle.lua", answers));
        }
        answers
            .into_iter()
            .map(|answer| match answer {
                1 => Ok(Settled::Now),
                2 => Ok(Settled::Already),
                0 => Ok(Settled::Swept),
                other => Err(unexpected("settle.lua", other)),
            })
            .collect()
    }

    /// Clears `pool`'s pending refill hint (one was recorded but could not be sent).
    pub async fn clear_hint(&self, pool: &PoolName) -> Result<()> {
        let (key, pool) = (&self.names.hints(), &pool.to_string());
        self.call(|mut conn| async move { conn.zrem(key, pool).await })
            .await
    }

    /// Records refill hints as pending for `pools` since `now` (ms): the reconciler's fills.
    pub async fn set_hints(&self, pools: &[String], now: u64) -> Result<()> {
        if pools.is_empty() {
            return Ok(());
        }
        let key = &self.names.hints();
        let members: Vec<(u64, &String)> = pools.iter().map(|p| (now, p)).collect();
        let members = &members;
        self.call(|mut conn| async move { conn.zadd_multiple(key, members).await })
            .await
    }

    /// Returns a pending lease's VM to the head of its pool, or records it as an orphan, and
    /// counts the request's `outcome` if there is one (see `give_back.lua`). Also returns the
    /// VM's name.
    pub async fn give_back(
        &self,
        identity: &str,
        pool: &PoolName,
        disposal: Disposal,
        outcome: Option<CheckoutOutcome>,
    ) -> Result<(GiveBack, String)> {
        let n = &self.names;
        let mut invocation = self.scripts.give_back.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.pool(pool))
            .key(n.leases())
            .key(n.lease_deadlines())
            .key(n.orphaned())
            .key(n.booting(pool))
            .key(n.pool_metrics(pool))
            .arg(identity)
            .arg(pool.to_string())
            .arg(match disposal {
                Disposal::Head => "head",
                Disposal::Orphan(reason) => reason,
            })
            .arg(outcome.map(CheckoutOutcome::field).unwrap_or_default());
        let reply: Vec<String> = self.invoke(&invocation).await?;
        let mut reply = reply.into_iter();
        let (outcome, entry, reason) = (reply.next(), reply.next(), reply.next());
        let outcome = match outcome.as_deref() {
            Some("head") => GiveBack::Head,
            Some("orphaned") => GiveBack::Orphaned(reason.unwrap_or_default()),
            Some("none") => GiveBack::NothingPending,
            other => return Err(unexpected("give_back.lua", other)),
        };
        let name = entry
            .map(|e| serde_json::from_str::<PoolEntry>(&e).map_or(e, |vm| vm.name))
            .unwrap_or_default();
        Ok((outcome, name))
    }

    /// Turns every lease whose time is up into an orphan (see `sweep_leases.lua`).
    pub async fn sweep_leases(&self, now: u64) -> Result<Swept> {
        let mut swept = Swept::default();
        loop {
            let mut invocation = self.scripts.sweep_leases.prepare_invoke();
            invocation
                .key(self.names.leases())
                .key(self.names.lease_deadlines())
                .key(self.names.orphaned())
                .key(self.names.metrics())
                .key(self.names.lease_keys())
                .arg(now)
                .arg(SWEEP_BATCH)
                .arg(self.names.pool_metrics_key_prefix())
                .arg(LeaseExpired.field());
            let (pending, handed, stripped): (u64, u64, u64) = self.invoke(&invocation).await?;
            swept.pending += pending;
            swept.handed += handed;
            swept.stripped += stripped;
            if pending + handed < SWEEP_BATCH && stripped < SWEEP_BATCH {
                return Ok(swept);
            }
        }
    }

    /// Every lease, by request identity; an unreadable one is left out.
    pub async fn leases_by_identity(&self) -> Result<HashMap<String, Lease>> {
        let key = &self.names.leases();
        let raw: HashMap<String, String> = self
            .call(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(identity, lease)| Some((identity, serde_json::from_str(&lease).ok()?)))
            .collect())
    }

    /// Every readable lease.
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        Ok(self.leases_by_identity().await?.into_values().collect())
    }
}
