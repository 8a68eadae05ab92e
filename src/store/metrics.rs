//! Counters (`<ns>:_metrics`, `<ns>:_metrics:<pool>`): what the processes add themselves, and
//! what `/metrics` reads. The field grammar and the families are in `crate::metrics`; most
//! counts are added by the Lua script that makes the change they count.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::Result;
use super::Store;
use crate::metrics::{self, Counters};

impl Store {
    /// Adds 1 to the counter `field` of no pool (a figure with no Redis step of its own, e.g. a
    /// bad request). Best effort: not repeated after a dropped connection, so a count is lost
    /// rather than doubled, and a failure is only logged.
    pub async fn count(&self, field: String) {
        let key = self.names.metrics();
        let counted: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg(&key)
            .arg(&field)
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(error) = counted {
            tracing::debug!(%error, field, "a count was lost");
        }
    }

    /// Records a reconcile pass: its result and, when it succeeded, its duration and time (ms),
    /// in one transaction.
    pub async fn record_reconcile_pass(
        &self,
        succeeded: bool,
        elapsed: Duration,
        now_ms: u64,
    ) -> Result<()> {
        let key = self.names.metrics();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let result = if succeeded { "ok" } else { "failed" };
        pipe.hincr(&key, metrics::RECONCILE_PASSES.field(&[result]), 1)
            .ignore();
        if succeeded {
            for (field, by) in metrics::RECONCILE_SECONDS.observation(&[], elapsed) {
                pipe.hincr(&key, field, by).ignore();
            }
            pipe.hset(&key, metrics::RECONCILE_LAST_SUCCESS.field(&[]), now_ms)
                .ignore();
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    /// The counters of no pool and of each of `pools`, in one round trip.
    /// When the last reconcile pass succeeded (ms), if one ever did.
    pub async fn last_reconcile(&self) -> Result<Option<u64>> {
        let (key, field) = (
            &self.names.metrics(),
            &metrics::RECONCILE_LAST_SUCCESS.field(&[]),
        );
        let at: Option<String> = self
            .call(|mut conn| async move { conn.hget(key, field).await })
            .await?;
        Ok(at.and_then(|at| at.parse().ok()))
    }

    pub async fn counters(&self, pools: &[&str]) -> Result<Counters> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.names.metrics());
        let prefix = self.names.pool_metrics_key_prefix();
        for pool in pools {
            pipe.hgetall(format!("{prefix}{pool}"));
        }
        // Redis's clock, the one the VM-seconds are integrated by.
        pipe.cmd("TIME");
        let pipe = &pipe;
        let mut values: Vec<redis::Value> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        let (secs, micros): (u64, u64) = super::read(values.pop().unwrap_or(redis::Value::Nil))?;
        let hashes: Vec<HashMap<String, String>> =
            values.into_iter().map(super::read).collect::<Result<_>>()?;
        let owners = std::iter::once(None).chain(pools.iter().map(|p| Some(*p)));
        let mut counters = Counters::from_hashes(owners.zip(hashes));
        counters.1 = secs * 1000 + micros / 1000;
        Ok(counters)
    }
}
