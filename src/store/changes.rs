//! Changes operators make: the pools as `warmer apply` diffs them (`<ns>:poolconfigs`,
//! `<ns>:_policies`), applied all or nothing (`apply.lua`), and the history of every change
//! (`<ns>:_history`, newest first, the last [`HISTORY_LIMIT`]).

use std::collections::BTreeMap;

use anyhow::Context as _;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::pool::PoolName;
use crate::pools_file::{Change, Spec, Stored};

/// Entries the history keeps; older ones are dropped.
pub const HISTORY_LIMIT: usize = 10_000;

/// One change, as `warmer history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix seconds.
    pub at: u64,
    /// Who: `user@host` of a CLI, the dyno, or the HTTP API's token.
    pub who: String,
    /// The command: `apply -f pools.toml`, `pool set`, `brake release`, …
    pub command: String,
    /// The pool changed, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// What changed, in words.
    pub change: String,
}

impl HistoryEntry {
    /// A change made now by whoever runs this process (see [`crate::process::actor`]).
    pub fn now(command: &str, pool: Option<&str>, change: String) -> HistoryEntry {
        HistoryEntry {
            at: crate::clock::now_secs(),
            who: crate::process::actor(),
            command: command.into(),
            pool: pool.map(str::to_string),
            change,
        }
    }
}

/// What `apply.lua` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Every change made.
    Done,
    /// Nothing made: this pool changed since the diff was taken.
    Changed(String),
    /// Nothing made: this pool takes part in the rollover (from, to) in progress.
    Rolling {
        pool: String,
        from: String,
        to: String,
    },
}

impl Store {
    /// Every pool as `poolconfigs` and `_policies` hold it (pools with a policy but no target
    /// included), keyed by the names that are pool names.
    pub async fn stored_pools(&self) -> anyhow::Result<BTreeMap<PoolName, Stored>> {
        let n = &self.names;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hgetall(n.pool_configs())
            .hgetall(n.policies());
        let pipe = &pipe;
        let (targets, policies): (BTreeMap<String, String>, BTreeMap<String, String>) = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading the pools")?;
        let mut pools: BTreeMap<PoolName, Stored> = BTreeMap::new();
        for (name, target) in targets {
            if let Ok(pool) = name.parse() {
                pools.entry(pool).or_default().target = Some(target);
            }
        }
        for (name, policy) in policies {
            if let Ok(pool) = name.parse() {
                pools.entry(pool).or_default().policy = Some(policy);
            }
        }
        Ok(pools)
    }

    /// Makes `changes` and records `history`, all or nothing (see `apply.lua`). Not repeated
    /// on a dropped connection: a second run would find the pools changed.
    pub async fn apply(
        &self,
        changes: &[Change],
        history: &[HistoryEntry],
    ) -> anyhow::Result<Applied> {
        let n = &self.names;
        let mut invocation = self.scripts.apply.prepare_invoke();
        invocation
            .key(n.pool_configs())
            .key(n.policies())
            .key(n.sizing())
            .key(n.rollovers())
            .key(n.orphaned())
            .key(n.metrics())
            .key(n.history())
            .arg(HISTORY_LIMIT)
            .arg(history.len());
        for entry in history {
            invocation.arg(serde_json::to_string(entry)?);
        }
        for change in changes {
            invocation
                .key(n.pool(&change.pool))
                .key(n.pool_metrics(&change.pool));
            let (target, policy) = match &change.after {
                None => ("-".to_string(), "=".to_string()),
                Some(Spec::Static(target)) => {
                    let policy = if change.before.policy.is_some() {
                        "-"
                    } else {
                        "="
                    };
                    (target.to_string(), policy.to_string())
                }
                Some(Spec::Sized(policy)) => {
                    // A new pool starts at its minimum; the sizer's first pass sets its target.
                    let target = match change.before.target {
                        None => policy.min.to_string(),
                        Some(_) => "=".into(),
                    };
                    (target, serde_json::to_string(policy)?)
                }
            };
            invocation
                .arg(change.pool.to_string())
                .arg(change.before.target.as_deref().unwrap_or(""))
                .arg(change.before.policy.as_deref().unwrap_or(""))
                .arg(target)
                .arg(policy);
        }
        let answer: Vec<String> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .context("applying the changes")?;
        let field = |i: usize| answer.get(i).cloned().unwrap_or_default();
        Ok(match field(0).as_str() {
            "ok" => Applied::Done,
            "changed" => Applied::Changed(field(1)),
            "rolling" => Applied::Rolling {
                pool: field(1),
                from: field(2),
                to: field(3),
            },
            other => anyhow::bail!("apply.lua answered `{other}`"),
        })
    }

    /// Records one change made now by whoever runs this process; if that fails, the line to
    /// print saying so (the change itself stands).
    pub async fn record_change(
        &self,
        command: &str,
        pool: Option<&str>,
        change: String,
    ) -> Option<String> {
        let entry = HistoryEntry::now(command, pool, change);
        let error = self.record(&[entry]).await.err()?;
        Some(format!(
            "(not recorded in the history: {})\n",
            crate::telemetry::report(&error)
        ))
    }

    /// Records changes made by other means than [`Store::apply`] in the history.
    pub async fn record(&self, entries: &[HistoryEntry]) -> anyhow::Result<()> {
        let key = &self.names.history();
        let json = entries
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(key, json)
            .ignore()
            .ltrim(key, 0, HISTORY_LIMIT as isize - 1)
            .ignore();
        let pipe = &pipe;
        self.call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
            .context("recording the change in the history")
    }

    /// The newest `limit` entries of the history, newest first; an entry that cannot be read
    /// is shown as such rather than hidden.
    pub async fn history(&self, limit: usize) -> anyhow::Result<Vec<HistoryEntry>> {
        let key = &self.names.history();
        let stop = limit.clamp(1, HISTORY_LIMIT) as isize - 1;
        let raw: Vec<String> = self
            .call(|mut conn| async move { conn.lrange(key, 0, stop).await })
            .await
            .context("reading the history")?;
        Ok(raw
            .into_iter()
            .map(|json| {
                serde_json::from_str(&json).unwrap_or_else(|error| HistoryEntry {
                    at: 0,
                    who: "?".into(),
                    command: "?".into(),
                    pool: None,
                    change: format!("unreadable entry ({error}): {json}"),
                })
            })
            .collect())
    }
}
